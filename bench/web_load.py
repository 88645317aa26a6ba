"""The web side under load: number requests and heartbeats per second with 10k live sessions.

The daemon runs as a subprocess (one core, its own event loop) with a pool
and the web side on; this process fills it with live sessions, then sends a
mix of heartbeats and new-visitor number requests over keep-alive
connections for a fixed time. Printed: requests per second, p50/p99
latency, and the daemon's resident memory per live session (VmRSS before
and after the sessions). Nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import aiohttp

from bench.agi_latency import BIN, free_port, percentile, start_daemon

ORIGIN = "https://shop.example.com"


def write_config(folder: Path, agi_port: int, web_port: int, numbers: int) -> Path:
    pool = ", ".join(f'"+7495{i:07d}"' for i in range(numbers))
    path = folder / "web.yaml"
    path.write_text(
        f"ami: {{port: {free_port()}, username: bench, secret: bench}}\n"
        f'agi: {{listen: "127.0.0.1:{agi_port}"}}\nstore: {{path: calls.sqlite3}}\n'
        "defaults: {forward_to: PJSIP/office}\nlog: {level: warning, format: json}\n"
        f"pools:\n  site:\n    numbers: [{pool}]\n"
        f'web:\n  listen: "127.0.0.1:{web_port}"\n  origins: ["{ORIGIN}"]\n'
        '  replace: ["+74951234567"]\n  rate_limit: {per_minute: 1000000, burst: 100000}\n',
        encoding="utf-8")
    return path


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def fill(base: str, sessions: int, concurrency: int) -> list[str]:
    ids: list[str] = []
    queue = list(range(sessions))

    async def worker(http: aiohttp.ClientSession) -> None:
        while queue:
            i = queue.pop()
            async with http.post(f"{base}/v1/sessions", json={
                    "visitor_id": f"visitor-{i:08d}",
                    "page": f"https://shop.example.com/p{i % 50}?utm_source=s{i % 7}"}) as r:
                ids.append((await r.json())["session_id"])

    async with aiohttp.ClientSession(headers={"Origin": ORIGIN},
                                     connector=aiohttp.TCPConnector(limit=concurrency)) as http:
        await asyncio.gather(*(worker(http) for _ in range(concurrency)))
    return ids


async def load(base: str, ids: list[str], seconds: float, concurrency: int,
               new_share: float) -> list[float]:
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    rng = random.Random(3)
    counter = iter(range(10**9))

    async def worker(http: aiohttp.ClientSession) -> None:
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            if rng.random() < new_share:
                body = {"visitor_id": f"new-{next(counter):09d}", "page": "https://shop.example.com/"}
                async with http.post(f"{base}/v1/sessions", json=body) as r:
                    await r.read()
            else:
                async with http.post(f"{base}/v1/sessions/{rng.choice(ids)}/heartbeat",
                                     json={}) as r:
                    await r.read()
            latencies.append(time.perf_counter() - started)

    async with aiohttp.ClientSession(headers={"Origin": ORIGIN},
                                     connector=aiohttp.TCPConnector(limit=concurrency)) as http:
        await asyncio.gather(*(worker(http) for _ in range(concurrency)))
    return latencies


WRK_SCRIPT = """
local ids = {%s}
local counter = 0
wrk.headers["Origin"] = "%s"
wrk.headers["Content-Type"] = "application/json"
request = function()
  counter = counter + 1
  if math.random() < %f then
    return wrk.format("POST", "/v1/sessions", nil,
      '{"visitor_id":"wrk-' .. counter .. '","page":"https://shop.example.com/"}')
  end
  return wrk.format("POST", "/v1/sessions/" .. ids[math.random(#ids)] .. "/heartbeat", nil, "{}")
end
"""


def run_wrk(base: str, ids: list[str], seconds: float, concurrency: int, new_share: float,
            folder: Path) -> tuple[float, float, float]:
    """wrk (C, from Debian) as the client: requests/s, p50 and p99 in ms."""
    script = folder / "load.lua"
    script.write_text(WRK_SCRIPT % (",".join(json.dumps(i) for i in ids), ORIGIN, new_share))
    out = subprocess.run(["wrk", "-t1", f"-c{concurrency}", f"-d{int(seconds)}s", "--latency",
                          "-s", str(script), base], capture_output=True, text=True,
                         check=True).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))

    def pct(p: str) -> float:
        value, unit = re.search(rf"{p}%\s+([\d.]+)(us|ms|s)", out).groups()
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
    return rate, pct("50"), pct("99")


BASELINE_APP = """
import sys
from aiohttp import web

async def answer(request):
    await request.read()
    return web.json_response({"ok": True})

app = web.Application()
app.router.add_post("/{tail:.*}", answer)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
"""


def baseline(seconds: float, concurrency: int, folder: Path) -> tuple[float, float, float]:
    """The same wrk load on a bare aiohttp app answering `{"ok": true}`: what the
    framework and this machine's loopback give before ctrackd does any work."""
    port = free_port()
    app = folder / "baseline.py"
    app.write_text(BASELINE_APP, encoding="utf-8")
    proc = subprocess.Popen([str(BIN / "python"), str(app), str(port)])
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        return run_wrk(f"http://127.0.0.1:{port}", ["x"], seconds, concurrency, 0.2, folder)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=10_000)
    parser.add_argument("--numbers", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--new-share", type=float, default=0.2,
                        help="share of requests that are new visitors (the rest: heartbeats)")
    args = parser.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="ctrackd-bench-"))
    agi_port, web_port = free_port(), free_port()
    daemon = start_daemon(write_config(folder, agi_port, web_port, args.numbers), agi_port)
    base = f"http://127.0.0.1:{web_port}"
    try:
        time.sleep(0.3)
        before = rss_kib(daemon.pid)
        ids = asyncio.run(fill(base, args.sessions, args.concurrency))
        after = rss_kib(daemon.pid)
        if shutil.which("wrk"):
            client = "wrk (1 thread)"
            rate, p50, p99 = run_wrk(base, ids, args.seconds, args.concurrency, args.new_share,
                                     folder)
        else:  # `apt-get install wrk` for figures the client does not cap
            client = "aiohttp in this process (caps the rate: install wrk)"
            ms = [v * 1000 for v in asyncio.run(load(base, ids, args.seconds, args.concurrency,
                                                      args.new_share))]
            rate, p50, p99 = len(ms) / args.seconds, percentile(ms, 50), percentile(ms, 99)
    finally:
        daemon.terminate()
        daemon.wait(timeout=15)
    print(f"web side: the daemon as a subprocess, {args.sessions} live sessions on a pool of "
          f"{args.numbers}, {args.concurrency} keep-alive connections, client: {client}")
    print(f"  {rate:8.0f} requests/s ({args.new_share:.0%} new visitors, the rest heartbeats)"
          f"  p50={p50:.2f} ms  p99={p99:.2f} ms")
    print(f"  memory: {(after - before) * 1024 / max(1, len(ids)):.0f} bytes of daemon RSS per "
          f"live session ({before // 1024} -> {after // 1024} MiB)")
    if shutil.which("wrk"):
        base_rate, base_p50, base_p99 = baseline(args.seconds, args.concurrency, folder)
        print(f"  baseline, a bare aiohttp app under the same load: {base_rate:8.0f} requests/s"
              f"  p50={base_p50:.2f} ms  p99={base_p99:.2f} ms")
        print(f"  ratio ctrackd/bare: x{rate / base_rate:.2f} of the requests/s")
    print("  (goal: >= 5000 requests/s and p99 <= 10 ms on one core)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
