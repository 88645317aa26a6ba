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
import random
import shutil
import socket
import sqlite3
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


def write_config(folder: Path, agi_port: int, numbers: int,
                 hook_port: int | None = None) -> Path:
    """The bench's config; with `hook_port`, a webhook on all four events to a port where
    nothing listens: every call queues a call_start the CRM refuses, retried meanwhile."""
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
    if hook_port is not None:
        lines += ["hooks:", f'  crm: {{url: "http://127.0.0.1:{hook_port}/crm", secret: s}}']
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


async def stdin_call(config: Path, env: bytes) -> float:
    """One call through `ctrackd-agi track` as Asterisk runs a classic AGI (a process)."""
    started = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        str(BIN / "ctrackd-agi"), "track", str(config), stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    assert proc.stdin and proc.stdout
    proc.stdin.write(env)
    while line := await proc.stdout.readline():
        proc.stdin.write(b"200 result=0\n" if line.startswith(b"GET ") else b"200 result=1\n")
    await proc.wait()
    return time.perf_counter() - started


async def run_stdin(config: Path, port: int, calls: int, concurrency: int,
                    numbers: int) -> tuple[list[float], float]:
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for i in range(calls):
        queue.put_nowait(environment(i, port, numbers))
    latencies: list[float] = []

    async def worker() -> None:
        while not queue.empty():
            latencies.append(await stdin_call(config, queue.get_nowait()))

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, time.perf_counter() - started


async def run_open_loop(port: int, calls: int, rate: float, numbers: int) -> tuple[list[float], int]:
    """Calls arriving at `rate` per second (Poisson), whatever the answers: a busy PBX."""
    rng = random.Random(7)
    latencies: list[float] = []
    in_flight = peak = 0

    async def one(i: int) -> None:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        latencies.append(await fastagi_call(port, environment(20_000_000 + i, port, numbers)))
        in_flight -= 1

    tasks = []
    for i in range(calls):
        tasks.append(asyncio.create_task(one(i)))
        await asyncio.sleep(rng.expovariate(rate))
    await asyncio.gather(*tasks)
    return latencies, peak


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(pct / 100 * (len(ordered) - 1))))]


def describe(name: str, values: list[float]) -> str:
    ms = [v * 1000 for v in values]
    return (f"  {name:<40} n={len(ms):<5} p50={percentile(ms, 50):8.2f} ms  "
            f"p99={percentile(ms, 99):8.2f} ms")


def ratio(slow: list[float], fast: list[float]) -> str:
    return (f"  ratio stdin/FastAGI: p50 x{percentile(slow, 50) / percentile(fast, 50):.0f}, "
            f"p99 x{percentile(slow, 99) / percentile(fast, 99):.0f}")


def start_daemon(config: Path, port: int) -> subprocess.Popen[bytes]:
    daemon = subprocess.Popen([str(BIN / "ctrackd"), "run", "-c", str(config)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 15
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return daemon
        except OSError:
            if daemon.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"daemon did not start: {daemon.stderr.read().decode()}")
            time.sleep(0.05)


async def alternate(ports: list[int], calls: int, numbers: int) -> list[list[float]]:
    """One call at a time, taking turns between daemons (who goes first alternates too):
    both see the same machine noise."""
    latencies: list[list[float]] = [[] for _ in ports]
    for i in range(calls):
        order = list(enumerate(ports))
        for n, port in (order if i % 2 == 0 else order[::-1]):
            latencies[n].append(await fastagi_call(port, environment(40_000_000 + i, port,
                                                                     numbers)))
    return latencies


def compare_metrics(calls: int, numbers: int) -> None:
    """The `track` route one call at a time with and without the Prometheus endpoint
    (docs/metrics.md): two daemons side by side, calls alternating, then one scrape."""
    import urllib.request
    folders = [Path(tempfile.mkdtemp(prefix="ctrackd-bench-")) for _ in range(2)]
    ports, metrics_port = [free_port(), free_port()], free_port()
    configs = [write_config(folder, port, numbers) for folder, port in zip(folders, ports)]
    with configs[1].open("a", encoding="utf-8") as extra:
        extra.write(f'metrics: {{listen: "127.0.0.1:{metrics_port}"}}\n')
    daemons = [start_daemon(config, port) for config, port in zip(configs, ports)]
    try:
        asyncio.run(alternate(ports, 100, numbers))  # warm-up
        without, with_metrics = asyncio.run(alternate(ports, calls, numbers))
        started = time.perf_counter()
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics") as response:
            text = response.read().decode()
        scrape = time.perf_counter() - started
    finally:
        for daemon in daemons:
            daemon.terminate()
            daemon.wait(timeout=15)
        for folder in folders:
            shutil.rmtree(folder, ignore_errors=True)
    observed = next(line.split()[-1] for line in text.splitlines() if line.startswith(
        'ctrackd_agi_session_seconds_count{route="track",session="plain"}'))
    print("metrics: one call at a time, two daemons side by side, calls alternating:")
    print(describe("FastAGI track, metrics off", without))
    print(describe("FastAGI track, metrics on", with_metrics))
    print(f"  p50 difference: {(percentile(with_metrics, 50) - percentile(without, 50)) * 1e6:+.0f}"
          f" us; one scrape: {scrape * 1000:.1f} ms, {len(text)} bytes, histogram count"
          f" {float(observed):.0f}")


def compare_webhooks(calls: int, burst: int, concurrency: int, numbers: int) -> None:
    """The `track` route without hooks and with a webhook whose receiver is down
    (docs/hooks.md, "Cost on the call path"): two daemons side by side, one call at a
    time alternating between them, then a burst of `concurrency` sessions on each in
    turn. With the hook, each call's save also queues its call_start outbox row in the
    same group-commit batch, and the dispatcher retries refused POSTs meanwhile."""
    folders = [Path(tempfile.mkdtemp(prefix="ctrackd-bench-")) for _ in range(2)]
    ports = [free_port(), free_port()]
    configs = [write_config(folders[0], ports[0], numbers),
               write_config(folders[1], ports[1], numbers, hook_port=free_port())]
    for config in configs:  # each refused attempt logs a warning: a stderr pipe nobody
        # reads would fill and stall that daemon, which is the bench's artefact, not ours
        config.write_text(config.read_text(encoding="utf-8").replace(
            "log: {level: warning", "log: {level: error"), encoding="utf-8")
    daemons = [start_daemon(config, port) for config, port in zip(configs, ports)]
    bursts: list[list[float]] = [[], []]
    try:
        asyncio.run(alternate(ports, 100, numbers))  # warm-up
        plain, hooked = asyncio.run(alternate(ports, calls, numbers))
        for round_ in range(4):  # bursts in turns, who goes first alternating
            for n in ((0, 1) if round_ % 2 == 0 else (1, 0)):
                got, _ = asyncio.run(run_fastagi(ports[n], burst // 4, concurrency, numbers,
                                                 50_000_000 + round_ * burst))
                bursts[n] += got
        conn = sqlite3.connect(folders[1] / "calls.sqlite3")
        queued, tried = conn.execute("SELECT count(*), sum(attempts > 0) FROM outbox").fetchone()
        conn.close()
    finally:
        for daemon in daemons:
            daemon.terminate()
            daemon.wait(timeout=15)
        for folder in folders:
            shutil.rmtree(folder, ignore_errors=True)
    print("webhooks: a hook on all events, its receiver down (connection refused);"
          " two daemons side by side:")
    print(describe("one at a time, no hooks", plain))
    print(describe("one at a time, webhooks, receiver down", hooked))
    print(f"  p50 difference: {(percentile(hooked, 50) - percentile(plain, 50)) * 1e6:+.0f} us")
    print(describe(f"{concurrency} in flight, no hooks", bursts[0]))
    print(describe(f"{concurrency} in flight, webhooks, down", bursts[1]))
    print(f"  outbox: {queued} call_start rows queued, {tried} tried and refused meanwhile")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--rate", type=float, default=200.0,
                        help="calls per second of the open-loop run (a very busy PBX)")
    parser.add_argument("--stdin-calls", type=int, default=None,
                        help="calls through the stdin path under load (default: --calls)")
    parser.add_argument("--sequential", type=int, default=200,
                        help="calls one at a time, both paths")
    parser.add_argument("--numbers", type=int, default=50)
    parser.add_argument("--metrics-calls", type=int, default=300,
                        help="calls one at a time with and without metrics (0: skip)")
    parser.add_argument("--only-metrics", action="store_true",
                        help="run only the metrics comparison")
    parser.add_argument("--webhook-calls", type=int, default=300,
                        help="calls one at a time with and without a webhook (0: skip)")
    parser.add_argument("--only-webhooks", action="store_true",
                        help="run only the webhook comparison")
    args = parser.parse_args(argv)
    if args.only_webhooks:
        compare_webhooks(args.webhook_calls, args.calls, args.concurrency, args.numbers)
        return 0
    if args.only_metrics:
        compare_metrics(args.metrics_calls, args.numbers)
        return 0
    stdin_calls = args.calls if args.stdin_calls is None else args.stdin_calls

    folder = Path(tempfile.mkdtemp(prefix="ctrackd-bench-"))
    port = free_port()
    config = write_config(folder, port, args.numbers)
    daemon = start_daemon(config, port)
    try:
        asyncio.run(run_fastagi(port, 200, args.concurrency, args.numbers, 10_000_000))  # warm-up
        seq_fast, _ = asyncio.run(run_fastagi(port, args.sequential, 1, args.numbers, 30_000_000))
        burst_fast, wall = asyncio.run(run_fastagi(port, args.calls, args.concurrency,
                                                   args.numbers, 0))
        open_fast, peak = asyncio.run(run_open_loop(port, args.calls, args.rate, args.numbers))
    finally:
        daemon.terminate()
        daemon.wait(timeout=15)
    seq_slow, _ = asyncio.run(run_stdin(config, port, min(args.sequential, 50), 1, args.numbers))
    burst_slow, slow_wall = asyncio.run(run_stdin(config, port, stdin_calls, args.concurrency,
                                                  args.numbers))

    print(f"`track` route: daemon as a subprocess, client in this process, {os.cpu_count()} cores")
    print(f"one call at a time (post-dial delay on a quiet PBX):")
    print(describe("FastAGI track (connect -> EOF)", seq_fast))
    print(describe("ctrackd-agi stdin (spawn -> exit)", seq_slow))
    print(ratio(seq_slow, seq_fast))
    print(f"{args.concurrency} sessions always in flight (closed loop, saturation):")
    print(describe("FastAGI track", burst_fast) + f"  {args.calls / wall:.0f} calls/s")
    print(describe("ctrackd-agi stdin", burst_slow) + f"  {stdin_calls / slow_wall:.0f} calls/s")
    print(ratio(burst_slow, burst_fast))
    print(f"open loop, {args.rate:g} calls/s arriving (peak {peak} sessions at once):")
    print(describe("FastAGI track", open_fast))
    goal = percentile(burst_fast, 99) < 0.005
    print(f"goal p99 < 5 ms with {args.concurrency} concurrent sessions: "
          f"{'met' if goal else 'NOT met'}; goal >= 50x the stdin path: see the ratios")
    shutil.rmtree(folder, ignore_errors=True)
    if args.metrics_calls:
        compare_metrics(args.metrics_calls, args.numbers)
    if args.webhook_calls:
        compare_webhooks(args.webhook_calls, args.calls, args.concurrency, args.numbers)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
