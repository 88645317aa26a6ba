#!/usr/bin/env bash
# Install the browser the snippet's tests drive: Debian's own Chromium.
#
# Why Debian's package: this network reaches only package registries, so a
# test tool's own browser download (`playwright install`) cannot work. The
# Playwright Python wheel carries its driver; it drives /usr/bin/chromium.
#
# Idempotent and quiet: does nothing when /usr/bin/chromium is there already.
# CI runs as root on a fresh Debian machine; elsewhere sudo is used if needed.
set -euo pipefail

if [ -x /usr/bin/chromium ]; then
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

export DEBIAN_FRONTEND=noninteractive
# The package lists of a fresh machine may be empty or stale: update first.
$SUDO apt-get update -qq >/dev/null
# chromium brings its own libraries (nss, gtk, fonts-liberation...); a Latin
# and Cyrillic font keeps screenshots legible.
$SUDO apt-get install -y -qq --no-install-recommends \
    chromium fonts-liberation fonts-dejavu-core >/dev/null

/usr/bin/chromium --version
