"""AMI events per second: the daemon's whole AMI path beside the pure core alone.

A busy PBX emits thousands of AMI events a second, most of them noise
(VarSet, Newexten). The stream here is the recorded traffic of real calls
(captures 01, 03, 05, 09: answered, busy, abandoned, ring group), copied for
N distinct calls with their uniqueids rewritten, so every call is new.

Two figures in one run:
- baseline: the same filter of unwanted events, parse (panoramisk's
  parser), translate, tracker, all in memory;
- daemon: the same bytes from a FakeAmi over TCP into an in-process daemon
  (our AMI protocol with its incremental decoder, the queue, the consumer,
  batched commits to SQLite), until every call is closed in the store.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

from panoramisk.message import Message

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ctrackd.ami.translate import translate, wanted  # noqa: E402
from ctrackd.attribution.tracker import CallTracker  # noqa: E402
from ctrackd.config import load_config  # noqa: E402
from ctrackd.daemon import Daemon  # noqa: E402
from ctrackd.logs import configure_logging  # noqa: E402
from tests.simulator.ami_server import FakeAmi, encode_message, read_capture  # noqa: E402

CAPTURES = ROOT.parent / "shared" / "asterisk-captures" / "ami"
SCENARIOS = ["01-answered-office-hangs-up", "03-busy", "05-caller-abandons-while-ringing",
             "09-ring-group-second-phone-answers"]
# uniqueids in Uniqueid/Linkedid/Dest*/ChanVariable values, never in Timestamp
_UNIQUEID = re.compile(rb"(?<!Timestamp: )(?<![^:=] )1795332\d{3}\.(\d+)(?=\r\n)")


def build_stream(copies: int) -> tuple[bytes, int, int]:
    """(bytes, messages, calls): `copies` rounds of the scenarios, ids made unique."""
    templates = []
    for name in SCENARIOS:
        messages = read_capture(CAPTURES / f"{name}.txt", skip_login=True)
        messages = [m for m in messages if dict(m).get("Event") not in ("Cdr",)]
        templates.append(b"".join(encode_message(m) for m in messages))
    chunks, count = [], 0
    for n in range(copies):
        for t, template in enumerate(templates):
            prefix = b"%d" % (2_000_000_000 + n * 10 + t)
            chunks.append(_UNIQUEID.sub(lambda m: prefix + b"." + m.group(1), template))
            count += template.count(b"\r\n\r\n")
    return b"".join(chunks), count, copies * len(templates)


def core_only(stream: bytes) -> float:
    """Seconds to parse, translate and track the whole stream in memory."""
    started = time.perf_counter()
    tracker = CallTracker()
    for block in stream.decode("utf-8").split("\r\n\r\n"):
        if not block or not wanted(block):
            continue
        message = Message.from_line(block)
        if message is not None and (event := translate(message, 0.0)) is not None:
            tracker.apply(event)
    return time.perf_counter() - started


async def through_daemon(stream: bytes, calls: int, folder: Path) -> float:
    ami = FakeAmi(username="bench", secret="bench")
    await ami.start()
    config = folder / "bench.yaml"
    config.write_text(
        f"ami: {{host: 127.0.0.1, port: {ami.port}, username: bench, secret: bench}}\n"
        'agi: {listen: "127.0.0.1:0"}\nstore: {path: calls.sqlite3}\n'
        "defaults: {forward_to: PJSIP/office}\nlog: {level: warning, format: json}\n",
        encoding="utf-8")
    daemon = Daemon(load_config(config))
    await daemon.start()
    await ami.wait_for_clients(1)
    await asyncio.sleep(0.2)  # let the first resync pass
    started = time.perf_counter()
    await ami.emit_raw(stream, chunk=65536)
    db = sqlite3.connect(daemon.config.store.path)
    while db.execute("SELECT count(*) FROM calls WHERE ended_at IS NOT NULL").fetchone()[0] < calls:
        await asyncio.sleep(0.01)
    elapsed = time.perf_counter() - started
    db.close()
    await daemon.stop()
    await ami.stop()
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=500, help="rounds of the 4 recorded calls")
    args = parser.parse_args(argv)
    configure_logging("warning", "json")
    stream, messages, calls = build_stream(args.copies)
    baseline = core_only(stream)
    with tempfile.TemporaryDirectory(prefix="ctrackd-bench-") as folder:
        daemon = asyncio.run(through_daemon(stream, calls, Path(folder)))
    print(f"AMI path: {messages} recorded events of {calls} calls ({len(stream) / 1e6:.1f} MB)")
    print(f"  core only (parse+translate+track) {messages / baseline:10.0f} events/s")
    print(f"  daemon over TCP into SQLite       {messages / daemon:10.0f} events/s "
          f"({calls / daemon:.0f} calls/s)")
    print(f"  ratio core/daemon: x{daemon / baseline:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
