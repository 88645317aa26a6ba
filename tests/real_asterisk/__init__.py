"""Tests against a real Asterisk 22 (Debian's package, scripts/install-asterisk.sh).

The simulator (tests/simulator/) replays what the captures show; these tests
are the other half of the evidence: the shipped dialplan and manager snippets,
byte for byte, loaded by a real Asterisk that calls the real daemon over
FastAGI and feeds it AMI, with its own CDR as the yardstick.
"""
