"""Webhooks into a CRM: a call's start, answer, end and missed events, from the outbox.

The whole daemon runs in-process on real sockets: FakeAmi replays recorded
Asterisk calls (captures 01-04), a FastAGI client plays Asterisk's side of
the `track` route, and the receiver is a real aiohttp server on 127.0.0.1
that is first not there at all (connection refused), then answers 503, then
takes everything. Waits are on conditions, never fixed sleeps; the retry
delays are the config's smallest (`max_delay: 1`).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from ctrackd import cli
from ctrackd import daemon as daemon_module
from ctrackd.attribution.records import Attribution, Tracking
from ctrackd.config import load_config
from ctrackd.configcalls import HOOK_EVENTS, HookConfig
from ctrackd.daemon import Daemon
from ctrackd.hooks import events, outbox
from ctrackd.store import queries
from ctrackd.store.judge import call_payload
from tests.simulator.ami_server import FakeAmi, read_capture
from tests.test_daemon import agi_track, environment, mset_variables
from tests.test_hooks import (SECRET, Receiver, connect, rows, settled, store,  # noqa: F401
                              verify, wait_for)

CONFIG = """\
ami: {{host: 127.0.0.1, port: {ami_port}, username: ctrackd, secret: secret,
      ping_interval: 1, liveness_timeout: 5, reconnect_max: 1}}
agi: {{listen: "127.0.0.1:0"}}
store: {{path: calls.sqlite3}}
recordings: {{dir: /var/spool/asterisk/monitor}}
defaults: {{forward_to: IAX2/phones/100, ring_timeout: 20}}
log: {{level: warning, format: json}}
channels:
  google: {{label: Google Ads, source: google, medium: cpc, campaign: brand}}
  avito: {{label: Avito, source: avito, medium: classified}}
numbers:
  "74950000001": {{channel: google}}
  "74950000002": {{channel: google}}
  "74950000003": {{channel: avito}}
  "74950000004": {{channel: avito}}
hooks:
  crm: {{url: "{url}", secret: {secret}, timeout: {timeout}, max_delay: 1}}
"""

#: capture, its call id, its DID, and the events a CRM must get for it, in order
CALLS = [
    ("01-answered-office-hangs-up", "1795332111.16", "74950000001",
     ["call_start", "call_answer", "call_end"]),
    ("02-answered-caller-hangs-up", "1795332120.19", "74950000002",
     ["call_start", "call_answer", "call_end"]),
    ("03-busy", "1795332127.22", "74950000003", ["call_start", "call_end", "missed"]),
    ("04-no-answer-ring-timeout-10s", "1795332131.26", "74950000004",
     ["call_start", "call_end", "missed"]),
]


def free_port() -> int:
    """A loopback port nobody listens on (yet): connecting is refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(tmp_path: Path, ami: FakeAmi, url: str, timeout: float = 5) -> Path:
    path = tmp_path / "ctrackd.yaml"
    path.write_text(CONFIG.format(ami_port=ami.port, url=url, secret=SECRET, timeout=timeout),
                    encoding="utf-8")
    return path


@pytest.fixture
async def down_then_up() -> AsyncIterator[Receiver]:
    """A receiver whose port is closed until `start(port)`; then 503 three times, then 200."""
    server = Receiver(lambda n, request: web.Response(status=503 if n < 3 else 200))
    server.port = free_port()
    yield server
    await server.stop()


async def test_a_crm_down_then_up_gets_every_event_once_signed_in_order(
        tmp_path: Path, ami: FakeAmi, down_then_up: Receiver, captures: Path) -> None:
    receiver = down_then_up
    config = write_config(tmp_path, ami, receiver.url("/crm"))
    running = Daemon(load_config(config), stop_grace=1.0)
    await running.start()
    store_path = running.config.store.path
    try:
        await ami.wait_for_clients(1)
        for capture, call_id, did, _ in CALLS:
            commands = await agi_track(running.agi_address[1], environment(call_id, did))
            assert mset_variables(commands[0])["CTRACK_TRACKING"] == "static"
            for message in read_capture(captures / "ami" / f"{capture}.txt", skip_login=True):
                await ami.emit(message)
        expected = sum(len(c[3]) for c in CALLS)
        await wait_for(lambda: len(rows(store_path)) == expected)
        # The CRM is not there: attempts fail with the refusal, nothing is lost.
        # (an attempt counts when claimed; its error is written when it has failed)
        await wait_for(lambda: all(r["last_error"] for r in rows(store_path)
                                   if r["event"] == "call_start"))
        assert all(r["delivered_at"] is None for r in rows(store_path))
        assert all("Connect" in r["last_error"] for r in rows(store_path)
                   if r["event"] == "call_start")

        await receiver.start(receiver.port)  # up, but 503 to the first three requests
        await wait_for(lambda: settled(store_path), timeout=30)
    finally:
        await running.stop()

    stored = rows(store_path)
    assert all(r["delivered_at"] is not None for r in stored)
    assert [r.status for r in receiver.received[:3]] == [503, 503, 503]
    for got in receiver.received:  # every request signed, the refused ones included
        assert verify(SECRET, got.headers, got.body)
        assert got.headers["X-CTrack-Event"] == json.loads(got.body)["event"]
    delivered = receiver.delivered_ids()
    assert sorted(delivered) == sorted(r["delivery_id"] for r in stored)  # each exactly once
    assert len(set(delivered)) == len(delivered)

    bodies = [json.loads(r.body) for r in receiver.received if r.status == 200]
    by_call: dict[str, list[dict[str, Any]]] = {}
    for body in bodies:
        by_call.setdefault(body["call_id"], []).append(body)
    for _, call_id, _, wanted in CALLS:
        assert [b["event"] for b in by_call[call_id]] == wanted, call_id
    start, answer, end = by_call["1795332111.16"]
    assert start["data"]["status"] == "new" and start["data"]["channel"] == "google"
    assert start["data"]["answered_by"] is None and start["data"]["campaign"] == "brand"
    assert answer["data"]["status"] == "answered"
    assert answer["data"]["answered_by"] == "IAX2/phones/100"
    assert answer["data"]["answered_at"] is not None and answer["data"]["ended_at"] is None
    assert end["data"]["status"] == "answered" and end["data"]["talk_seconds"] > 0
    assert end["data"]["target"] is not None and end["data"]["target_rule"]
    busy_end, missed = by_call["1795332127.22"][1:]
    assert (busy_end["data"]["status"], missed["data"]["status"]) == ("busy", "busy")
    assert missed["data"]["attempts"] >= 1
    if os.environ.get("CTRACKD_WRITE_HOOK_EXAMPLES"):  # docs/hooks.md's examples, regenerated
        Path(os.environ["CTRACKD_WRITE_HOOK_EXAMPLES"]).write_text(
            json.dumps({"call_start": start, "call_answer": answer, "call_end": end,
                        "missed": missed}, indent=2, ensure_ascii=False), encoding="utf-8")


async def test_the_agi_answers_while_the_crm_hangs(
        tmp_path: Path, ami: FakeAmi, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(daemon_module, "HOOK_STOP_GRACE", 0.2)
    receiver = Receiver()
    receiver.hang = asyncio.Event()
    await receiver.start()
    config = write_config(tmp_path, ami, receiver.url("/crm"), timeout=60)
    running = Daemon(load_config(config), stop_grace=1.0)
    await running.start()
    try:
        await agi_track(running.agi_address[1], environment("h.1", "74950000001"))
        await asyncio.wait_for(receiver.arrived.wait(), 10)  # h.1's call_start is stuck
        for n in range(2, 6):  # the calls after it are answered all the same
            commands = await agi_track(running.agi_address[1],
                                       environment(f"h.{n}", "74950000001"))
            assert mset_variables(commands[0])["CTRACK_FORWARD"] == "IAX2/phones/100"
        assert not receiver.hang.is_set() and receiver.received == []
        # each call_start is durable a moment after its record (daemon.START_DELAY)
        await wait_for(lambda: {r["call_id"] for r in rows(running.config.store.path)} == {
            f"h.{n}" for n in range(1, 6)})
        receiver.hang.set()
        await wait_for(lambda: settled(running.config.store.path))
    finally:
        await running.stop()
    assert sorted(json.loads(r.body)["call_id"] for r in receiver.received) == [
        f"h.{n}" for n in range(1, 6)]
    await receiver.stop()


# -- the outbox: order per call, the payloads' shape ------------------------------------

HOOK = HookConfig("crm", url="http://127.0.0.1:9/crm")


def test_a_calls_events_go_in_order_even_if_queued_out_of_order(store: Path) -> None:  # noqa: F811
    conn = connect(store)
    try:
        call = {"call_id": "o.1", "status": "answered", "answered_at": "x"}
        for event in ("call_end", "call_answer", "call_start"):  # a late catch-up
            outbox.enqueue(conn, [HOOK], event, "o.1", call, 100.0)
        outbox.enqueue(conn, [HOOK], "call_start", "o.2", call, 100.0)
        taken = []
        for _ in range(4):
            [*claimed] = outbox.claim_due(conn, ["crm"], 200.0, lease=1000, limit=9)
            assert outbox.next_due(conn, ["crm"]) in (None, 1200.0)  # no spin on held rows
            taken.append(sorted((d.call_id, d.event) for d in claimed))
            for d in claimed:
                outbox.mark_delivered(conn, d.id, 200.0)
    finally:
        conn.close()
    assert taken == [[("o.1", "call_start"), ("o.2", "call_start")],
                     [("o.1", "call_answer")], [("o.1", "call_end")], []]


def test_a_given_up_event_does_not_hold_the_next_back(store: Path) -> None:  # noqa: F811
    conn = connect(store)
    try:
        for event in ("call_start", "call_end"):
            outbox.enqueue(conn, [HOOK], event, "g.1", {"call_id": "g.1"}, 100.0)
        [first] = outbox.claim_due(conn, ["crm"], 100.0, lease=1, limit=9)
        assert outbox.record_failure(conn, first, "HTTP 500", 100.0, max_attempts=1, delay=1)
        [second] = outbox.claim_due(conn, ["crm"], 100.0, lease=1, limit=9)
    finally:
        conn.close()
    assert (first.event, second.event) == ("call_start", "call_end")


def test_the_start_payload_is_the_saved_call_as_the_cli_shows_it(store: Path) -> None:  # noqa: F811
    assert events.CALL_FIELDS == queries.CALL_FIELDS
    assert events.ORDER == HOOK_EVENTS
    a = Attribution(call_id="p.1", started_at=1795332111.5, did="+74950000001",
                    caller="+79161234567", caller_name="Иван", tracking=Tracking.STATIC,
                    channel="google", source="google", medium="cpc", campaign="brand",
                    label="Google Ads", forward_to="IAX2/phones/100", ring_timeout=20,
                    recording_path="/var/spool/asterisk/monitor/ctrackd-p.1.wav",
                    session={"utm_term": "окна"})
    conn = connect(store)
    try:
        queries.save_attribution(conn, a)
        saved = call_payload(conn, "p.1")
    finally:
        conn.close()
    assert saved is not None
    live = events.view("call_start", events.call_of(a, iso=outbox.iso_utc))
    assert live == events.view("call_start", saved)  # live and caught up: the same data
    [row] = outbox.start_rows([HOOK], a, 1795332112.0)
    assert json.loads(row["payload"])["data"] == live


# -- ctrackd webhooks ----------------------------------------------------------------

CLI_CONFIG = """\
ami: {username: ctrackd, secret: s3cret}
store: {path: calls.sqlite3}
defaults: {forward_to: PJSIP/office}
hooks:
  crm: {url: "http://127.0.0.1:9/hook", max_attempts: 1}
"""


def test_webhooks_is_the_outbox_with_a_summary_per_hook(
        store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    config = tmp_path / "ctrackd.yaml"
    config.write_text(CLI_CONFIG, encoding="utf-8")
    hook = HookConfig("crm", url="http://127.0.0.1:9/hook", max_attempts=1)
    now = __import__("time").time()
    conn = connect(store)
    try:
        for n, event in enumerate(("call_start", "call_end", "missed")):
            outbox.enqueue(conn, [hook], event, f"w.{n}", {"call_id": f"w.{n}"}, now - 600)
        [start] = [d for d in outbox.claim_due(conn, ["crm"], now, lease=1, limit=1)]
        outbox.mark_delivered(conn, start.id, now)
        [end] = outbox.claim_due(conn, ["crm"], now, lease=1, limit=1)
        outbox.record_failure(conn, end, "HTTP 500", now, max_attempts=1, delay=1)
    finally:
        conn.close()
    assert cli.main(["webhooks", "-c", str(config)]) == 0
    out, err = capsys.readouterr()
    assert "crm: 1 pending (oldest 10 min), 1 delivered in the last hour, 1 failed" in err
    assert out.splitlines()[0].split()[:3] == ["ID", "EVENT", "HOOK"]
    assert len(out.splitlines()) == 4
    assert cli.main(["hooks", "-c", str(config), "--format", "json"]) == 0
    out, err = capsys.readouterr()
    assert len(json.loads(out)) == 3 and "crm: 1 pending" in err


DOCS = Path(__file__).resolve().parent.parent / "docs" / "hooks.md"


def test_each_documented_example_has_the_fields_a_real_one_has(store: Path) -> None:  # noqa: F811
    """docs/hooks.md shows one example per event: field for field what the code sends."""
    text = DOCS.read_text(encoding="utf-8")
    examples = [json.loads(part.split("```", 1)[0]) for part in text.split("```json\n")[1:]]
    documented = {e["event"]: e for e in examples if "event" in e}
    assert set(documented) == set(HOOK_EVENTS)
    a = Attribution(call_id="d.1", started_at=1795332111.5, did="+74950000001",
                    caller="+79161234567", caller_name=None, tracking=Tracking.STATIC,
                    channel="google", source="google", medium="cpc", campaign="brand",
                    label="Google Ads", forward_to="IAX2/phones/100", ring_timeout=20,
                    recording_path=None)
    call = events.call_of(a, iso=outbox.iso_utc) | {"answered_at": None}
    for event in ("call_start", "call_answer", "call_end"):
        [row] = outbox.rows([HOOK], event, "d.1", call, 1795332112.0)
        real = json.loads(row["payload"])
        assert list(documented[event]) == list(real), event
        assert list(documented[event]["data"]) == list(real["data"]), event
