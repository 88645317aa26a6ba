"""The Prometheus endpoint, scraped over real TCP after real traffic (docs/metrics.md).

The whole daemon in-process: FastAGI sessions as Asterisk sends them, the
recorded AMI streams of those calls through FakeAmi, visitors asking the web
side for pool numbers, a hook whose receiver is down; then GET /metrics and
the exposition parsed by the official client's own parser.
"""

from __future__ import annotations

import asyncio
import socket
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ctrackd.config import ConfigError, load_config
from ctrackd.daemon import Daemon
from ctrackd.metrics import TABLE, Metrics
from tests.simulator.ami_server import FakeAmi, read_capture
from tests.test_daemon import CONFIG, agi_track, environment
from tests.test_dynamic_e2e import POOLS, VISITORS

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def dead_port() -> int:
    """A loopback port nothing listens on: the hook receiver that is down."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def config_text(ami_port: int, *, metrics: bool = True) -> str:
    text = CONFIG.format(ami_port=ami_port) + POOLS + (
        f'hooks:\n  crm: {{url: "http://127.0.0.1:{dead_port()}/hook", timeout: 1,'
        f' events: [missed]}}\n')
    return text + ('metrics: {listen: "127.0.0.1:0"}\n' if metrics else "")


async def scrape(daemon: Daemon, accept: str | None = None) -> tuple[Samples, str]:
    host, port = daemon.metrics_address
    headers = {"Accept": accept} if accept else {}
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://{host}:{port}/metrics", headers=headers) as response:
            assert response.status == 200
            text = await response.text()
            content_type = response.headers["Content-Type"]
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples, content_type


def pending(daemon: Daemon) -> int:
    conn = sqlite3.connect(daemon.config.store.path)
    try:
        return conn.execute("SELECT count(*) FROM outbox WHERE delivered_at IS NULL"
                            " AND gave_up_at IS NULL").fetchone()[0]
    finally:
        conn.close()


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


async def wait_for_sample(daemon: Daemon, check, timeout: float = 8.0) -> Samples:
    """Scrape until `check(samples)` holds (the consumer and the judge run behind the AMI)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        samples, _ = await scrape(daemon)
        if check(samples):
            return samples
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"metrics not reached in time: {sorted(samples)[:80]}")
        await asyncio.sleep(0.05)


@pytest.fixture
async def daemon(tmp_path: Path, ami: FakeAmi) -> AsyncIterator[Daemon]:
    path = tmp_path / "ctrackd.yaml"
    path.write_text(config_text(ami.port), encoding="utf-8")
    running = Daemon(load_config(path), stop_grace=1.0)
    await running.start()
    await ami.wait_for_clients(1)
    yield running
    await running.stop()


async def test_scrape_after_real_traffic(daemon: Daemon, ami: FakeAmi, captures: Path) -> None:
    samples, content_type = await scrape(daemon)
    assert content_type.startswith("text/plain; version=0.0.4")
    assert value(samples, "ctrackd_agi_session_seconds_count", route="track",
                 session="plain") is None  # no session yet: no series
    assert value(samples, "ctrackd_ami_connected") == 1
    assert value(samples, "process_resident_memory_bytes") > 0   # the client's basics
    assert any(name == "python_info" for name, _ in samples)

    # Two tracked calls (captures 01 and 03) and one the AGI never saw (capture 02)
    await agi_track(daemon.agi_address[1], environment("1795332111.16", "74950000001"))
    await agi_track(daemon.agi_address[1], environment("1795332127.22", "74950000003"))
    samples, _ = await scrape(daemon)
    assert value(samples, "ctrackd_agi_session_seconds_count", route="track",
                 session="plain") == 2
    assert 0 < value(samples, "ctrackd_agi_session_seconds_sum", route="track",
                     session="plain") < 5
    assert value(samples, "ctrackd_agi_sessions_total", outcome="served") == 2
    assert value(samples, "ctrackd_agi_sessions_total", outcome="failed") == 0
    assert value(samples, "ctrackd_calls_total", status="answered", channel="google") is None

    events = {"parsed": value(samples, "ctrackd_ami_events_total", result="parsed"),
              "dropped": value(samples, "ctrackd_ami_events_total", result="dropped")}
    replayed = 0
    for name in ("01-answered-office-hangs-up", "03-busy", "02-answered-caller-hangs-up"):
        for message in read_capture(captures / "ami" / f"{name}.txt", skip_login=True):
            await ami.emit(message)
            replayed += 1
    samples = await wait_for_sample(daemon, lambda s: value(
        s, "ctrackd_calls_total", status="answered", channel="none") == 1)
    assert value(samples, "ctrackd_calls_total", status="answered", channel="google") == 1
    assert value(samples, "ctrackd_calls_total", status="busy", channel="avito") == 1
    parsed = value(samples, "ctrackd_ami_events_total", result="parsed") - events["parsed"]
    dropped = value(samples, "ctrackd_ami_events_total", result="dropped") - events["dropped"]
    assert parsed > 0 and dropped > 0   # the prefilter drops the noise of a real stream
    assert parsed + dropped == replayed

    # The busy call is a missed call: its hook row waits, the receiver being down
    samples = await wait_for_sample(daemon, lambda s: (
        value(s, "ctrackd_hook_outbox_pending", hook="crm") or 0) > 0
        and value(s, "ctrackd_hook_attempts_total", hook="crm", outcome="failed"))
    assert value(samples, "ctrackd_hook_outbox_pending", hook="crm") == 1 == pending(daemon)
    assert value(samples, "ctrackd_hook_attempts_total", hook="crm", outcome="delivered") \
        is None

    # Three visitors, a pool of two: both numbers held, one overflow
    host, port = daemon.web_address
    async with aiohttp.ClientSession(headers={"Origin": "https://shop.example.com"}) as http:
        for visitor, page in VISITORS:
            async with http.post(f"http://{host}:{port}/v1/sessions", json={
                    "visitor_id": visitor, "page": page}) as response:
                assert response.status == 200
    samples, _ = await scrape(daemon)
    assert value(samples, "ctrackd_pool_size", pool="site") == 2
    assert value(samples, "ctrackd_pool_numbers_held", pool="site") == 2
    assert value(samples, "ctrackd_pool_utilisation", pool="site") == 1.0
    assert value(samples, "ctrackd_pool_overflows_total", pool="site") == 1

    # The AMI link drops and stays down, then comes back
    assert value(samples, "ctrackd_ami_reconnects_total") == 0
    await ami.pause_listening()
    ami.drop_clients()
    samples = await wait_for_sample(daemon, lambda s: value(s, "ctrackd_ami_connected") == 0)
    assert value(samples, "ctrackd_ami_reconnects_total") == 0
    await ami.resume_listening()
    samples = await wait_for_sample(daemon, lambda s: value(s, "ctrackd_ami_connected") == 1)
    assert value(samples, "ctrackd_ami_reconnects_total") == 1


async def test_openmetrics_when_asked(daemon: Daemon) -> None:
    samples, content_type = await scrape(
        daemon, accept="application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert value(samples, "ctrackd_ami_connected") == 1


async def test_every_table_entry_is_exposed(daemon: Daemon) -> None:
    await agi_track(daemon.agi_address[1], environment("9.1", "74950000001"))
    daemon.metrics.call_ended("9.1", "answered")
    daemon.metrics.hook_attempt("crm", "delivered")
    samples, _ = await scrape(daemon)
    names = {name for name, _ in samples}
    suffix = {"counter": "_total", "gauge": "", "histogram": "_count"}
    missing = [s.name for s in TABLE if s.name + suffix[s.kind] not in names]
    assert missing == []


async def test_unknown_script_is_no_route_label(daemon: Daemon) -> None:
    """Script names come from Asterisk: only the route table's names become labels."""
    env = environment("9.2", "74950000001").replace(b"agi_network_script: track",
                                                      b"agi_network_script: nosuch")
    await agi_track(daemon.agi_address[1], env)
    samples, _ = await scrape(daemon)
    assert value(samples, "ctrackd_agi_sessions_total", outcome="failed") == 1
    routes = {dict(labels).get("route") for name, labels in samples
              if name.startswith("ctrackd_agi_session_seconds")}
    assert routes <= {"track"}


async def test_metrics_are_off_by_default(tmp_path: Path, ami: FakeAmi) -> None:
    path = tmp_path / "ctrackd.yaml"
    path.write_text(config_text(ami.port, metrics=False), encoding="utf-8")
    running = Daemon(load_config(path), stop_grace=1.0)
    await running.start()
    try:
        assert running.metrics is None and running.metrics_address is None
        await agi_track(running.agi_address[1], environment("9.3", "74950000001"))
    finally:
        await running.stop()


def test_each_daemon_has_its_own_registry() -> None:
    first, second = Metrics(), Metrics()
    first.agi_session("track", False, 0.003)
    first.agi_session("track", True, 12.0)   # a promo dialogue: its own series
    assert first.registry.get_sample_value(
        "ctrackd_agi_session_seconds_count", {"route": "track", "session": "plain"}) == 1
    assert first.registry.get_sample_value(
        "ctrackd_agi_session_seconds_count", {"route": "track", "session": "dialog"}) == 1
    assert second.registry.get_sample_value(
        "ctrackd_agi_session_seconds_count", {"route": "track", "session": "plain"}) is None


def test_channel_labels_stay_bounded() -> None:
    metrics = Metrics(channels=lambda: {"google"})
    metrics.call_attributed("a", "google")
    metrics.call_attributed("b", "removed-by-a-reload")
    for call_id in ("a", "b", "c"):
        metrics.call_ended(call_id, "answered")
    get = metrics.registry.get_sample_value
    assert get("ctrackd_calls_total", {"status": "answered", "channel": "google"}) == 1
    assert get("ctrackd_calls_total", {"status": "answered", "channel": "none"}) == 2


@pytest.mark.parametrize("section, message", [
    ('metrics: {listen: "9273"}', "metrics.listen: expected HOST:PORT such as 127.0.0.1:4573,"
                                  " found '9273'"),
    ("metrics: {port: 9273}", "metrics.port: expected one of the keys listen, found unknown"
                              " key 'port'"),
    ("metrics: on", "metrics: expected a mapping, found 'on'"),
])
def test_bad_metrics_section(tmp_path: Path, section: str, message: str) -> None:
    path = tmp_path / "ctrackd.yaml"
    text = CONFIG.format(ami_port=5038)
    path.write_text(text + section + "\n", encoding="utf-8")
    line = text.count("\n") + 1
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert str(error.value).startswith(f"{path}:{line}:")
    assert str(error.value).endswith(message)


def test_default_listen(tmp_path: Path) -> None:
    path = tmp_path / "ctrackd.yaml"
    path.write_text(CONFIG.format(ami_port=5038) + "metrics: {}\n", encoding="utf-8")
    config = load_config(path).metrics
    assert (config.host, config.port, config.loopback) == ("127.0.0.1", 9273, True)


async def test_a_taken_metrics_port_stops_the_start(tmp_path: Path, ami: FakeAmi) -> None:
    """Loud, like the AGI port: a daemon an admin asked metrics of does not run without."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        path = tmp_path / "ctrackd.yaml"
        path.write_text(config_text(ami.port, metrics=False)
                        + f'metrics: {{listen: "127.0.0.1:{port}"}}\n', encoding="utf-8")
        running = Daemon(load_config(path), stop_grace=1.0)
        try:
            with pytest.raises(OSError):
                await running.start()
        finally:
            await running.stop()
