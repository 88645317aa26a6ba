"""ctrackd: a call-tracking daemon for Asterisk.

FastAGI attribution, AMI follow-up, a SQLite store, and a web side for number pools.
"""

__version__ = "0.1.0"
