"""The snippet against the real daemon: three visitors, a pool of two, calls, `ctrackd pools`.

As a new user would try it: the example config plus a pool of two numbers
and the web side; three visitors with different UTM tags open the site in a
real Chromium (three profiles); the first two see different pool numbers, the
third triggers the overflow policy; Asterisk then asks about a call to each
number and the records and `ctrackd pools` say who called and how sure.
"""

from __future__ import annotations

import json
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import BrowserContext, expect

from tests.browser.stub import Site
from tests.test_daemon import environment

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "config" / "ctrackd.example.yaml"
OFFICE = "+7 (495) 123-45-67"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on {port}")


def track(port: int, uniqueid: str, number: str) -> None:
    """Asterisk's side of one FastAGI `track` session (blocking: Playwright owns the loop)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(environment(uniqueid, number))
        replies = conn.makefile("rb")
        while replies.readline():
            conn.sendall(b"200 result=0\n")


@pytest.fixture
def daemon_and_site(tmp_path: Path) -> Iterator[tuple[Path, int, Site, subprocess.Popen[bytes]]]:
    web_port, agi_port = free_port(), free_port()
    site = Site(script=f"http://127.0.0.1:{web_port}", endpoint=f"http://127.0.0.1:{web_port}")
    site.start()
    config = tmp_path / "ctrackd.yaml"
    config.write_text(
        EXAMPLE.read_text(encoding="utf-8")
        .replace("port: 5038", f"port: {free_port()}")        # no Asterisk here: AMI retries
        .replace('listen: "127.0.0.1:4573"', f'listen: "127.0.0.1:{agi_port}"')
        .replace("path: ../var/ctrackd.sqlite3", "path: calls.sqlite3")
        + f"""
pools:
  site:
    numbers: ["+74950000101", "+74950000102"]
    overflow: shared
utm_rules:
  - {{source: yandex, channel: yandex-direct}}
web:
  listen: "127.0.0.1:{web_port}"
  origins: ["{site.url}"]
  replace: ["{OFFICE}"]
""", encoding="utf-8")
    proc = subprocess.Popen([sys.executable, "-m", "ctrackd", "run", "-c", str(config)],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for_port(web_port, proc)
        wait_for_port(agi_port, proc)
        yield config, agi_port, site, proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=15)
        site.stop()


VISITORS = [
    ("?utm_source=google&utm_medium=cpc&utm_campaign=brand&gclid=g-1", "google"),
    ("?utm_source=yandex&utm_medium=cpc&utm_campaign=winter&yclid=y-1", "yandex"),
    ("?utm_source=vk&utm_medium=social", "vk"),
]


def test_three_visitors_on_a_pool_of_two(
        daemon_and_site: tuple[Path, int, Site, subprocess.Popen[bytes]],
        browser_context_factory: Callable[[], BrowserContext], screenshot_dir: Path) -> None:
    config, agi_port, site, daemon = daemon_and_site
    shown = []
    for query, _ in VISITORS:
        page = browser_context_factory().new_page()
        page.goto(site.page("numbers.html") + query)
        header = page.locator("#header-tel")
        expect(header).not_to_have_text(OFFICE)            # swapped by the real daemon
        shown.append("+" + "".join(ch for ch in header.get_attribute("href") if ch.isdigit()))
    page.screenshot(path=str(screenshot_dir / "real-daemon.png"), full_page=True)
    first, second, third = shown
    assert first != second and {first, second} == {"+74950000101", "+74950000102"}
    assert third in (first, second)                       # overflow: shared

    for n, number in enumerate(shown):
        track(agi_port, f"8.{n}", number[1:])
    conn = sqlite3.connect(config.parent / "calls.sqlite3")
    conn.row_factory = sqlite3.Row
    records = {r["call_id"]: dict(r) for r in conn.execute("SELECT * FROM calls")}
    conn.close()
    for n, (_, source) in enumerate(VISITORS):
        record, session = records[f"8.{n}"], json.loads(records[f"8.{n}"]["session_json"])
        assert (record["tracking"], record["pool"]) == ("dynamic", "site")
        if shown[n] == third:     # both calls on the shared number name its latest holder
            assert (record["confidence"], session["utm_source"]) == ("shared", "vk")
        else:
            assert (record["confidence"], session["utm_source"]) == ("exact", source)
    exact = [records[f"8.{n}"] for n in range(3) if shown[n] != third]
    if json.loads(exact[0]["session_json"])["utm_source"] == "yandex":
        assert exact[0]["channel"] == "yandex-direct"     # by the UTM rule

    daemon.terminate()  # SIGTERM: it saves the pools' usage as it stops
    assert daemon.wait(timeout=15) == 0
    pools = subprocess.run([sys.executable, "-m", "ctrackd", "pools", "-c", str(config),
                            "--format", "json"], cwd=ROOT, capture_output=True, text=True)
    assert pools.returncode == 0, pools.stderr
    (pool,) = json.loads(pools.stdout)
    assert (pool["pool"], pool["size"], pool["calls"], pool["overflows"]) == ("site", 2, 3, 1)
    assert (pool["peak_held"], pool["peak_demand"]) == (2, 3)
    assert pool["exact_share"] == pytest.approx(1 / 3, abs=0.001)
