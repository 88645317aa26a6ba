"""A real Asterisk for the tests: configured, started, called, read back.

Asterisk 22 from Debian sid lives in its own root folder (scripts/install-asterisk.sh
says why). `RealAsterisk.start()` runs it there with `unshare -m` (a private mount
namespace, gone with the process: nothing to clean up on the machine) and `chroot`,
after binding in the few host folders both sides must see at the same paths: the
test's folder (configs, recordings, CDR, the store that ctrackd-agi writes on the
fallback path), this checkout and the Python that runs ctrackd-agi.

What the PBX is made of, all on 127.0.0.1:
- the trunk: AMI `Originate` of `Local/<DID>@from-trunk`. The ;2 half is the
  inbound call running the shipped [ctrackd-inbound] (through the admin's
  `Goto`, as docs/install.md says); the ;1 half is the caller, who waits while
  the call lasts, or hangs up when the Originate's timeout runs out (a caller
  who gives up ringing).
- the office phones: PJSIP endpoints 101 and 102 whose contact is a second
  PJSIP transport of the same Asterisk, so every Dial is a real SIP INVITE,
  180, 200/486, BYE over UDP. The [phones] context on that side plays the
  phone; the caller's number picks what it does (`caller()` below).
- CDR: cdr_csv's Master.csv, Asterisk's own account of every call.

The shipped snippets are copied byte for byte; only the admin's globals and
the include lines around them are ours.
"""

from __future__ import annotations

import asyncio
import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ctrackd.ami.connection import AmiConnection

REPO = Path(__file__).resolve().parents[2]
DIALPLAN = REPO / "asterisk-dialplan"
ROOT = Path(os.environ.get("CTRACKD_ASTERISK_ROOT", REPO / "var" / "asterisk-root"))
ASTERISK = "/usr/sbin/asterisk"


def unavailable() -> str | None:
    """Why a real Asterisk cannot run here, or None when it can."""
    if not (ROOT / ASTERISK.lstrip("/")).exists():
        return (f"no Asterisk root at {ROOT}: `bash scripts/install-asterisk.sh` builds it"
                f" (make test runs it)")
    if os.geteuid() != 0:
        return "a real Asterisk here needs root (unshare -m, chroot)"
    if shutil.which("unshare") is None:
        return "unshare (util-linux) is missing"
    return None


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# What the phone does is read off the caller's number, last three digits RTB:
# ring R seconds, then B = 1 answer and talk T seconds (the phone hangs up),
# 2 busy (SIP 486), 3 ring until cancelled, 4 a ring group's race: phone 101
# rings on, any other phone answers as with 1. `caller(1, ring=2, talk=3)` -> ...231.
ANSWER, BUSY, NO_ANSWER, ONLY_102_ANSWERS = 1, 2, 3, 4


def caller(serial: int, *, ring: int = 1, talk: int = 1, behaviour: int = ANSWER) -> str:
    """A caller number (E.164) that makes the phones behave as asked."""
    return f"+7916{serial:04d}{ring}{talk}{behaviour}"


PHONES = """\
[phones]
; The office phones' side of the SIP calls Dial sends to PJSIP/101 or /102.
; It reports what the phone would show (the caller-ID name ctrackd set, the
; X-CTrack-* headers of the INVITE) and does what the last three digits of
; the caller's number say (harness.py).
exten => _X.,1,UserEvent(PhoneRings,Phone: ${EXTEN},Shown: ${CALLERID(name)},From: ${CALLERID(num)},XChannel: ${PJSIP_HEADER(read,X-CTrack-Channel)},XCampaign: ${PJSIP_HEADER(read,X-CTrack-Campaign)})
 same => n,Set(RING=${CALLERID(num):-3:1})
 same => n,Set(TALK=${CALLERID(num):-2:1})
 same => n,Set(DO=${CALLERID(num):-1:1})
 same => n,GotoIf($["${DO}" = "2"]?busy)
 same => n,Ringing()
 same => n,GotoIf($["${DO}" = "3"]?forever)
 same => n,GotoIf($["${DO}" = "4" & "${EXTEN}" = "101"]?forever)
 same => n,Wait(${RING})
 same => n,Answer()
 same => n,Set(TIMEOUT(absolute)=${TALK})
; a tone, so that MixMonitor has audio to write
 same => n,Milliwatt()
 same => n,Hangup()
 same => n(busy),Busy(10)
 same => n(forever),Wait(300)
"""

#: A queue of both phones, ringing all at once (the admin's queues.conf).
QUEUES = """\
[general]
[sales]
strategy = ringall
timeout = 30
retry = 1
member => PJSIP/101
member => PJSIP/102
"""

#: A whisper sound ctrackd's config can name (`custom/ctrackd-test-whisper`):
#: written into the root's sounds, where Playback looks (docs/install.md).
WHISPER = "custom/ctrackd-test-whisper"


def write_whisper(seconds: float = 0.5) -> None:
    """A 8 kHz 16-bit mono tone, the format Asterisk plays without transcoding."""
    import math
    import wave
    path = ROOT / "usr/share/asterisk/sounds" / f"{WHISPER}.wav"
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = b"".join(int(8000 * math.sin(2 * math.pi * 440 * n / 8000)).to_bytes(
        2, "little", signed=True) for n in range(int(8000 * seconds)))
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(8000)
        out.writeframes(frames)


def extensions_conf(agi_port: int, config: Path) -> str:
    fallback = Path(sys.executable).parent / "ctrackd-agi"
    return f"""\
[general]
static = yes
writeprotect = yes

[globals]
CTRACKD_AGI=agi://127.0.0.1:{agi_port}
CTRACKD_FALLBACK=PJSIP/101
CTRACKD_FALLBACK_AGI={fallback}
CTRACKD_CONFIG={config}

#include extensions_ctrackd.conf

[from-trunk]
; the admin's trunk context, as docs/install.md shows it
exten => _X.,1,Goto(ctrackd-inbound,${{EXTEN}},1)
exten => _+X.,1,Goto(ctrackd-inbound,${{EXTEN}},1)

[caller]
; the ;1 half of the originated Local channel: the caller, listening
exten => s,1,Wait(600)

{PHONES}"""


def pjsip_conf(trunk_port: int, phone_port: int) -> str:
    phones = "".join(f"""
[{n}]
type = endpoint
context = nowhere
transport = pbx
disallow = all
allow = ulaw
direct_media = no
aors = {n}

[{n}]
type = aor
contact = sip:{n}@127.0.0.1:{phone_port}
""" for n in (101, 102))
    return f"""\
[pbx]
type = transport
protocol = udp
bind = 127.0.0.1:{trunk_port}

[phoneside]
type = transport
protocol = udp
bind = 127.0.0.1:{phone_port}
{phones}
; every INVITE from 127.0.0.1 is the PBX calling a phone: the phones' side
[phones]
type = endpoint
context = phones
transport = phoneside
disallow = all
allow = ulaw
direct_media = no

[phones]
type = identify
endpoint = phones
match = 127.0.0.1
"""


@dataclass(frozen=True)
class Cdr:
    """One row of cdr_csv's Master.csv (the columns it writes with loguniqueid)."""
    src: str
    dst: str
    channel: str
    dstchannel: str
    lastapp: str
    duration: int
    billsec: int
    disposition: str
    uniqueid: str
    start: float            # epoch seconds, whole (cdr_csv writes UTC to the second)
    end: float
    answer: float | None


def _cdr_time(text: str) -> float | None:
    if not text:
        return None
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc).timestamp()


CDR_COLUMNS = ("accountcode", "src", "dst", "dcontext", "clid", "channel", "dstchannel",
               "lastapp", "lastdata", "start", "answer", "end", "duration", "billsec",
               "disposition", "amaflags", "uniqueid", "userfield")


class RealAsterisk:
    """One Asterisk process in its own folder; `start()`, calls, `stop()`."""

    def __init__(self, folder: Path, *, agi_port: int, ctrackd_config: Path) -> None:
        self.folder = folder
        self.etc = folder / "etc"
        self.monitor = folder / "spool" / "monitor"
        self.ami_port, self.harness_secret = free_port(), "harness-secret"
        self.trunk_port = free_port(socket.SOCK_DGRAM)
        self.phone_port = free_port(socket.SOCK_DGRAM)
        self.agi_port, self.ctrackd_config = agi_port, ctrackd_config
        self.proc: subprocess.Popen[bytes] | None = None
        self.events: asyncio.Queue[Any] = asyncio.Queue()
        self.ami: AmiConnection | None = None
        self._serial = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._write_config()

    def _write_config(self) -> None:
        for sub in ("etc", "spool/monitor", "run", "log/cdr-csv", "db"):
            (self.folder / sub).mkdir(parents=True, exist_ok=True)
        f = self.folder
        files = {
            "asterisk.conf": f"""\
[directories]
astetcdir => {self.etc}
astmoddir => /usr/lib/x86_64-linux-gnu/asterisk/modules
astvarlibdir => /var/lib/asterisk
astdbdir => {f}/db
astkeydir => {f}/db
astdatadir => /usr/share/asterisk
astagidir => /usr/share/asterisk/agi-bin
astspooldir => {f}/spool
astrundir => {f}/run
astlogdir => {f}/log
astsbindir => /usr/sbin
[options]
documentation_language = en_US
""",
            # Everything the package has, as a stock install loads it.
            "modules.conf": "[modules]\nautoload = yes\n",
            "logger.conf": "[logfiles]\nmessages.log => notice,warning,error,verbose(3)\n",
            # cdr_csv reads its [csv] section from cdr.conf; unanswered calls too.
            "cdr.conf": "[general]\nenable = yes\nunanswered = yes\ncongestion = yes\n"
                        "[csv]\nusegmtime = yes\nloguniqueid = yes\nloguserfield = yes\n"
                        "accountlogs = no\n",
            "rtp.conf": "[general]\nrtpstart = 30000\nrtpend = 31000\n",
            # The admin's manager.conf: their [general], then the shipped include
            # at the end as the snippet asks; plus a login for the test itself.
            "manager.conf": f"""\
[general]
enabled = yes
port = {self.ami_port}
bindaddr = 127.0.0.1

[harness]
secret = {self.harness_secret}
deny = 0.0.0.0/0.0.0.0
permit = 127.0.0.1/255.255.255.255
read = all
write = all

#include manager_ctrackd.conf
""",
            "extensions.conf": extensions_conf(self.agi_port, self.ctrackd_config),
            "pjsip.conf": pjsip_conf(self.trunk_port, self.phone_port),
            "queues.conf": QUEUES,
        }
        for name, text in files.items():
            (self.etc / name).write_text(text, encoding="utf-8")
        for name in ("extensions_ctrackd.conf", "manager_ctrackd.conf"):
            shutil.copyfile(DIALPLAN / name, self.etc / name)  # unchanged

    def _mounts(self) -> list[Path]:
        """Host folders Asterisk must see at the same path inside its root."""
        python = Path(os.path.realpath(sys.base_prefix))
        # What ctrackd-agi imports: the installed package, wherever it is (outside
        # pytest's rootdir, which puts this checkout's ctrackd first on the path).
        installed = Path(subprocess.run(
            [sys.executable, "-c", "import ctrackd; print(ctrackd.__file__)"], cwd="/",
            capture_output=True, text=True, check=True).stdout.strip()).resolve().parents[1]
        return sorted({self.folder.resolve(), REPO, installed, Path(sys.prefix).resolve(),
                       python})

    async def start(self, timeout: float = 30.0) -> None:
        lines = ["set -e", f'R="{ROOT}"',
                 'mount --bind /proc "$R/proc"', 'mount --bind /dev "$R/dev"']
        for path in self._mounts():
            lines += [f'mkdir -p "$R{path}"', f'mount --bind "{path}" "$R{path}"']
        lines.append(f'exec chroot "$R" {ASTERISK} -C {self.etc}/asterisk.conf -f -n')
        log = (self.folder / "log" / "console.log").open("wb")
        self.proc = subprocess.Popen(
            ["unshare", "-m", "--propagation", "private", "sh", "-c", "\n".join(lines)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        self.ami = AmiConnection(host="127.0.0.1", port=self.ami_port, username="harness",
                                 secret=self.harness_secret, queue=self.events,
                                 events="on", reconnect_initial=0.2, reconnect_max=0.5)
        await self.ami.start()
        deadline = time.monotonic() + timeout
        while not await self._booted():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                await self.stop()  # never left running after the test
                raise RuntimeError(f"Asterisk did not start: {self.log_tail()}")
            await asyncio.sleep(0.2)

    async def _booted(self) -> bool:
        try:
            reply = await self.command("core show sysinfo")
        except Exception:  # not up yet: refused, not logged in
            return False
        return "System Statistics" in reply

    async def command(self, text: str) -> str:
        """A CLI command through AMI; its output."""
        assert self.ami is not None
        message = await self.ami.action({"Action": "Command", "Command": text}, timeout=10)
        output = message.get("Output", "")
        return "\n".join(output) if isinstance(output, list) else str(output)

    async def originate(self, did: str, number: str, name: str, *,
                        hang_up_after: float | None = None) -> None:
        """A call from `name <number>` to `did` on the trunk. With `hang_up_after`,
        the caller hangs up after that many seconds, answered or not, as the
        carrier's side does (capture 05: a Hangup with cause 16, normal clearing)."""
        assert self.ami is not None
        self._serial += 1
        caller_id = f"caller-{self._serial}"
        await self.ami.action({
            "Action": "Originate", "Channel": f"Local/{did}@from-trunk/n",
            "Context": "caller", "Exten": "s", "Priority": "1", "ChannelId": caller_id,
            "CallerID": f'"{name}" <{number}>', "Timeout": "60000", "Async": "true"},
            timeout=10)
        if hang_up_after is not None:
            self._tasks.add(asyncio.create_task(self._hang_up(caller_id, hang_up_after)))

    async def _hang_up(self, uniqueid: str, after: float) -> None:
        assert self.ami is not None
        await asyncio.sleep(after)
        listed = await self.ami.action({"Action": "CoreShowChannels"}, multi=True, timeout=10)
        (channel,) = [e["Channel"] for e in listed if e.get("Uniqueid") == uniqueid]
        await self.ami.action({"Action": "Hangup", "Channel": channel, "Cause": "16"},
                              timeout=10)

    def cdr(self) -> list[Cdr]:
        path = self.folder / "log" / "cdr-csv" / "Master.csv"
        if not path.exists():
            return []
        with path.open(encoding="utf-8", newline="") as f:
            rows = [dict(zip(CDR_COLUMNS, row)) for row in csv.reader(f)]
        return [Cdr(src=r["src"], dst=r["dst"], channel=r["channel"],
                    dstchannel=r["dstchannel"], lastapp=r["lastapp"],
                    duration=int(r["duration"]), billsec=int(r["billsec"]),
                    disposition=r["disposition"], uniqueid=r["uniqueid"],
                    start=_cdr_time(r["start"]) or 0.0, end=_cdr_time(r["end"]) or 0.0,
                    answer=_cdr_time(r["answer"])) for r in rows]

    def log_tail(self, lines: int = 40) -> str:
        path = self.folder / "log" / "messages.log"
        text = path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    async def stop(self) -> None:
        """Stop Asterisk (always), then raise what a hang-up task of the test hit."""
        failed = [t.exception() for t in self._tasks
                  if t.done() and not t.cancelled() and t.exception() is not None]
        for task in self._tasks:
            task.cancel()
        if self.ami is not None:
            try:
                await self.command("core stop now")
            except Exception:  # already gone, or not up yet: the signal below
                pass
            await self.ami.stop()
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.send_signal(signal.SIGKILL)
                self.proc.wait(timeout=10)
        if failed:
            raise failed[0]  # type: ignore[misc]


class Ctrackd:
    """The daemon as the admin runs it (`ctrackd run -c FILE`), JSON log lines to a file."""

    def __init__(self, config: Path) -> None:
        self.config = config
        self.log = config.parent / "ctrackd.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs = 0

    def start(self, timeout: float = 20.0) -> None:
        """Start and return once it is logged in to Asterisk's AMI (so it follows calls)."""
        self.runs += 1
        marker = f"--- run {self.runs}\n"
        with self.log.open("a", encoding="utf-8") as f:
            f.write(marker)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ctrackd", "run", "-c", str(self.config)], cwd=REPO,
            stdin=subprocess.DEVNULL, stdout=self.log.open("ab"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            text = self.log.read_text(encoding="utf-8", errors="replace")
            if '"ami_resynced"' in text.rsplit(marker, 1)[-1]:
                return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop(signal.SIGKILL)  # never left running after the test
                raise RuntimeError(f"ctrackd did not come up: {text[-3000:]}")
            time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """SIGTERM: as systemd stops it; SIGKILL: a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=20)

    def problems(self) -> list[str]:
        """Log lines that must never appear on these ordinary calls: errors, tracebacks."""
        text = self.log.read_text(encoding="utf-8", errors="replace")
        return [line for line in text.splitlines()
                if '"level": "error"' in line or '"level": "critical"' in line
                or "Traceback" in line]

    async def calls(self) -> dict[str, dict[str, Any]]:
        """`ctrackd calls --format json`, what the admin reads, by call_id. Awaited, so
        the test's own AMI link keeps reading events meanwhile."""
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "ctrackd", "calls", "-c", str(self.config), "--since",
            "-1d", "--limit", "0", "--format", "json", cwd=REPO,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, err.decode()
        return {c["call_id"]: c for c in json.loads(out)}

    async def wait_ended(self, count: int, timeout: float = 60.0) -> dict[str, dict[str, Any]]:
        """The calls once `count` of them have ended (read through the CLI)."""
        deadline = time.monotonic() + timeout
        while True:
            calls = await self.calls()
            if sum(c["ended_at"] is not None for c in calls.values()) >= count:
                return calls
            if time.monotonic() > deadline:
                raise AssertionError(f"{count} ended calls expected, the store has: {calls}")
            await asyncio.sleep(0.5)
