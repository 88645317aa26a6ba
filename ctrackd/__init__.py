"""ctrackd: a call-tracking daemon for Asterisk (FastAGI attribution, AMI follow-up, SQLite store)."""

__version__ = "0.1.0"
