#!/usr/bin/env bash
# Install a real Asterisk for tests/real_asterisk/: Debian's own package, in a
# root folder of its own (var/asterisk-root, or $CTRACKD_ASTERISK_ROOT).
#
# Why a separate root: Debian 12, the machines' system, has no asterisk package
# any more; Debian unstable ("sid") has Asterisk 22 (the version the captures in
# ../shared/asterisk-captures/ were recorded on). Installing sid's binaries into
# the system would drag its C library in and upgrade half the machine, so
# debootstrap builds a minimal sid tree beside it instead. The tests start
# Asterisk inside it with `unshare -m` + `chroot` (tests/real_asterisk/harness.py),
# sharing the machine's loopback network: the daemon under test talks FastAGI
# and AMI to it over real TCP, as on a PBX.
#
# Idempotent: does nothing when the root has a working asterisk already. Needs
# root (CI runs as root); elsewhere sudo is used. Any failure (no network, sid
# broken that day) leaves no half-built root behind and exits non-zero; the
# real-Asterisk tests then skip and say why, the rest of the suite still runs.
set -euo pipefail

ROOT="${CTRACKD_ASTERISK_ROOT:-$(cd "$(dirname "$0")/.." && pwd)/var/asterisk-root}"
MIRROR="http://deb.debian.org/debian"

if [ -x "$ROOT/usr/sbin/asterisk" ] && chroot "$ROOT" /usr/sbin/asterisk -V >/dev/null 2>&1; then
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
if ! command -v debootstrap >/dev/null; then
    $SUDO apt-get update -qq >/dev/null
    $SUDO apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
fi

partial="$ROOT.partial"
$SUDO rm -rf "$partial"
mkdir -p "$(dirname "$ROOT")"
# minbase + asterisk and its modules (PJSIP, AGI, MixMonitor, cdr_csv are in
# asterisk-modules); no sounds: the test phones play a tone (Milliwatt).
if ! $SUDO debootstrap --variant=minbase --include=asterisk,asterisk-modules \
        sid "$partial" "$MIRROR" >"$(dirname "$ROOT")/asterisk-root.log" 2>&1; then
    $SUDO rm -rf "$partial"
    echo "install-asterisk: debootstrap failed, see $(dirname "$ROOT")/asterisk-root.log" >&2
    exit 1
fi
$SUDO rm -rf "$ROOT"
$SUDO mv "$partial" "$ROOT"
chroot "$ROOT" /usr/sbin/asterisk -V
