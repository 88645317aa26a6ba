"""The website snippet (ctrackd/web/static/ctrack.js) in a real headless Chromium.

Debian's /usr/bin/chromium driven by Python Playwright (scripts/install-browser.sh
installs the browser); pages and a stub of the daemon's HTTP API on 127.0.0.1.
"""
