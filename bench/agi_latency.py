"""The `track` route's latency under load, beside the ctrackd-agi stdin path on the same calls.

What Asterisk waits for is the time from its connect() to the EOF that
ends the AGI (AGISTATUS=SUCCESS): that is the post-dial delay ctrackd adds.
The daemon runs as a real subprocess (`ctrackd run`), the client here plays
Asterisk's side of FastAGI with many sessions at once; then the same calls
go through `ctrackd-agi track` as Asterisk would run it (a process per call,
environment and replies over stdin/stdout). Figures are printed, with the
ratio; nothing is asserted (timing goals are not unit tests).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(folder: Path, agi_port: int, numbers: int) -> Path:
    lines = [
        "ami: {host: 127.0.0.1, port: %d, username: bench, secret: bench}" % free_port(),
        f'agi: {{listen: "127.0.0.1:{agi_port}", max_sessions: 1024}}',
        "store: {path: calls.sqlite3}",
        "recordings: {dir: /var/spool/asterisk/monitor}",
        "defaults: {forward_to: PJSIP/office, ring_timeout: 20}",
        "log: {level: warning, format: json}",
        "channels:",
    ]
    lines += [f"  ch{i}: {{label: Channel {i}, source: s{i}, medium: cpc, campaign: c{i}}}"
              for i in range(10)]
    lines.append("numbers:")
    lines += [f'  "+7495{i:07d}": {{channel: ch{i % 10}}}' for i in range(numbers)]
    path = folder / "bench.yaml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def environment(i: int, port: int, numbers: int) -> bytes:
    """The agi_* environment Asterisk sends (shape of captures/agi/A)."""
    did = f"7495{i % numbers:07d}"
    env = {
        "agi_network": "yes", "agi_network_script": "track",
        "agi_request": f"agi://127.0.0.1:{port}/track", "agi_channel": f"PJSIP/trunk-{i:08x}",
        "agi_language": "en", "agi_type": "PJSIP", "agi_uniqueid": f"1795400000.{i}",
        "agi_version": "22.10.1", "agi_callerid": f"+7916{i:07d}", "agi_calleridname": "Иван",
        "agi_callingpres": "0", "agi_callingani2": "0", "agi_callington": "0",
        "agi_callingtns": "0", "agi_dnid": "unknown", "agi_rdnis": "unknown",
        "agi_context": "ctrackd-inbound", "agi_extension": did, "agi_priority": "12",
        "agi_enhanced": "0.0", "agi_accountcode": "", "agi_threadid": "139950245488320",
    }
    return ("".join(f"{k}: {v}\n" for k, v in env.items()) + "\n").encode()


async def fastagi_call(port: int, env: bytes) -> float:
    """One call as Asterisk makes it; returns seconds from connect to EOF."""
    started = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(env)
    while True:
        line = await reader.readline()
        if not line:
            break  # EOF: AGISTATUS=SUCCESS, the dialplan goes on
        if line.startswith(b"failure"):
            raise RuntimeError("the daemon asked for the fallback path")
        writer.write(b"200 result=0\n")
    elapsed = time.perf_counter() - started
    writer.write(b"HANGUP\n")
    writer.close()
    return elapsed


async def run_fastagi(port: int, calls: int, concurrency: int, numbers: int,
                      offset: int) -> tuple[list[float], float]:
    envs = [environment(offset + i, port, numbers) for i in range(calls)]
    latencies: list[float] = []
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for env in envs:
        queue.put_nowait(env)

    async def worker() -> None:
        while not queue.empty():
            latencies.append(await fastagi_call(port, queue.get_nowait()))

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, time.perf_counter() - started


def stdin_call(config: Path, env: bytes) -> float:
    """One call through `ctrackd-agi track` as Asterisk runs a classic AGI."""
    started = time.perf_counter()
    proc = subprocess.Popen([str(BIN / "ctrackd-agi"), "track", str(config)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    assert proc.stdin and proc.stdout
    proc.stdin.write(env)
    proc.stdin.flush()
    for line in proc.stdout:
        reply = b"200 result=0\n" if line.startswith(b"GET ") else b"200 result=1\n"
        try:
            proc.stdin.write(reply)
            proc.stdin.flush()
        except BrokenPipeError:
            break
    proc.wait()
    return time.perf_counter() - started


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(pct / 100 * (len(ordered) - 1))))]


def describe(name: str, values: list[float]) -> str:
    ms = [v * 1000 for v in values]
    return (f"{name:<34} n={len(ms):<5} p50={percentile(ms, 50):8.2f} ms  "
            f"p99={percentile(ms, 99):8.2f} ms  mean={statistics.fmean(ms):8.2f} ms")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--stdin-calls", type=int, default=200,
                        help="calls sent through the stdin path (a process each)")
    parser.add_argument("--numbers", type=int, default=50)
    args = parser.parse_args(argv)

    folder = Path(tempfile.mkdtemp(prefix="ctrackd-bench-"))
    port = free_port()
    config = write_config(folder, port, args.numbers)
    daemon = subprocess.Popen([str(BIN / "ctrackd"), "run", "-c", str(config)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if daemon.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"daemon did not start: {daemon.stderr.read().decode()}")
                time.sleep(0.05)
        asyncio.run(run_fastagi(port, 200, args.concurrency, args.numbers, 10_000_000))  # warm-up
        fast, wall = asyncio.run(run_fastagi(port, args.calls, args.concurrency, args.numbers, 0))
    finally:
        daemon.terminate()
        daemon.wait(timeout=15)
    slow = [stdin_call(config, environment(i, port, args.numbers))
            for i in range(args.stdin_calls)]
    print(f"ctrackd FastAGI `track` route, {args.calls} calls, {args.concurrency} concurrent "
          f"sessions, daemon as a subprocess on {os.cpu_count()} cores")
    print(describe("FastAGI track (connect -> EOF)", fast))
    print(f"{'':<34} throughput={args.calls / wall:8.0f} calls/s")
    print(describe("ctrackd-agi stdin (spawn -> exit)", slow))
    print(f"ratio stdin/FastAGI: p50 x{percentile(slow, 50) / percentile(fast, 50):.0f}, "
          f"p99 x{percentile(slow, 99) / percentile(fast, 99):.0f}  (goal: >= 50x; "
          f"goal p99 < 5 ms: {'met' if percentile(fast, 99) < 0.005 else 'NOT met'})")
    shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
