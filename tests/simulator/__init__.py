"""An Asterisk simulator for tests and benchmarks.

It plays Asterisk's side of both protocols (an AMI server, a FastAGI client)
in the shapes recorded from a real Asterisk in ../shared/asterisk-captures/,
and follows the project's own dialplan (asterisk-dialplan/extensions_ctrackd.conf):
dialplan.py the inbound flow, gosub.py the subroutines Dial/Queue run on the
called channels (pre-dial SIP headers, the whisper), phones.py the parties
(callers keying GET DATA answers, operators keying codes), outbound.py an
office phone calling out (no capture has one: built from documented fields).
"""
