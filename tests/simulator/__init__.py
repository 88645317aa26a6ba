"""An Asterisk simulator for tests and benchmarks.

It plays Asterisk's side of both protocols (an AMI server, a FastAGI client)
in the shapes recorded from a real Asterisk in ../shared/asterisk-captures/,
and follows the project's own dialplan (asterisk-dialplan/extensions_ctrackd.conf).
"""
