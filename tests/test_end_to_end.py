"""End to end on the Asterisk simulator: the project's dialplan, the daemon, the store.

The simulator runs `[ctrackd-inbound]` for each call: it asks the daemon
over real FastAGI, emits the AMI events a real Asterisk 22 emits (shapes of
../shared/asterisk-captures), runs `ctrackd-agi` as a real stdin AGI process
on the fallback path, and computes Asterisk's own CDR for each call. Every
record in the SQLite store is compared with that CDR: status, channel,
answering endpoint, ring and talk seconds within 1 s, recording.
"""

from __future__ import annotations

import asyncio
import sqlite3
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from ctrackd.config import load_config
from ctrackd.daemon import Daemon
from tests.simulator.ami_server import FakeAmi
from tests.simulator.pbx import SimCall, SimulatedAsterisk
from tests.simulator.phones import Caller, Phone, QueueMember

CTRACKD_AGI = str(Path(sys.executable).parent / "ctrackd-agi")

CONFIG = """\
ami: {{host: 127.0.0.1, port: {ami_port}, username: ctrackd, secret: secret,
      ping_interval: 1, liveness_timeout: 5, reconnect_max: 0.5}}
agi: {{listen: "127.0.0.1:0"}}
store: {{path: calls.sqlite3}}
recordings: {{dir: /var/spool/asterisk/monitor}}
defaults: {{forward_to: IAX2/phones/100, ring_timeout: 1}}
log: {{level: warning, format: json}}
channels:
  google: {{label: Google Ads, source: google, medium: cpc, campaign: brand}}
  yandex: {{label: Яндекс.Директ, source: yandex, medium: cpc, forward_to: IAX2/phones/101}}
  group: {{label: Ring group, forward_to: IAX2/phones/100&IAX2/phones/101}}
  queue: {{label: Sales queue, forward_to: Queue(sales)}}
numbers:
  "+74950000001": {{channel: google}}
  "+74950000002": {{channel: yandex}}
  "+74950000009": {{channel: group}}
  "+74950000010": {{channel: queue}}
"""

QUICK = Phone(answer_after=0.3, talk=0.8)


class Setup:
    def __init__(self, folder: Path, ami: FakeAmi, config: str = CONFIG) -> None:
        self.config_path = folder / "ctrackd.yaml"
        self.config_path.write_text(config.format(ami_port=ami.port), encoding="utf-8")
        self.ami = ami
        self.daemon: Daemon | None = None

    async def start_daemon(self) -> Daemon:
        self.daemon = Daemon(load_config(self.config_path), stop_grace=1.0)
        await self.daemon.start()
        await self.ami.wait_for_clients(1)
        return self.daemon

    async def stop_daemon(self) -> None:
        assert self.daemon is not None
        await self.daemon.stop()
        self.daemon = None

    def simulator(self, agi_port: int, **kwargs: Any) -> SimulatedAsterisk:
        return SimulatedAsterisk(
            ("127.0.0.1", agi_port), self.ami, fallback_agi_cmd=[CTRACKD_AGI],
            globals={"CTRACKD_CONFIG": str(self.config_path),
                     "CTRACKD_FALLBACK": "IAX2/phones/100"}, **kwargs)

    def record(self, call_id: str) -> dict[str, Any]:
        conn = sqlite3.connect(load_config(self.config_path).store.path)
        conn.row_factory = sqlite3.Row
        try:
            row = conn.execute("SELECT * FROM calls WHERE call_id = ?", (call_id,)).fetchone()
        finally:
            conn.close()
        assert row is not None, f"no record for {call_id}"
        return dict(row)

    async def finished(self, call_id: str, timeout: float = 5.0) -> dict[str, Any]:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            try:
                record = self.record(call_id)
                if record["ended_at"] is not None:
                    return record
            except AssertionError:
                pass
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"call {call_id} not finished in the store")
            await asyncio.sleep(0.02)


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[Setup]:
    ami = FakeAmi(username="ctrackd", secret="secret")
    await ami.start()
    ready = Setup(tmp_path, ami)
    yield ready
    if ready.daemon is not None:
        await ready.stop_daemon()
    await ami.stop()


def assert_matches_cdr(record: dict[str, Any], call: SimCall) -> None:
    """ring/talk/duration within 1 s of what Asterisk's CDR says for the same call."""
    rows = call.cdr_rows
    start = min(row.start for row in rows)
    end = max(row.end for row in rows)
    billsec = max(row.billsec for row in rows)
    assert abs(record["duration_seconds"] - (end - start)) <= 1.0
    assert abs(record["talk_seconds"] - billsec) <= 1.0
    assert abs(record["ring_seconds"] - (end - start - billsec)) <= 1.0


@pytest.mark.parametrize("did, phone, caller, status, channel, answered_by", [
    ("74950000001", QUICK, Caller("+79161234567", "Иван Петров"), "answered", "google",
     "IAX2/phones/100"),
    ("84950000002", Phone(answer_after=0.2, talk=None), Caller("89161234567",
     hold_after_answer=0.6), "answered", "yandex", "IAX2/phones/101"),   # the caller hangs up
    ("74950000001", Phone(busy=True), Caller("+79161234567"), "busy", "google", None),
    ("+74950000002", Phone(never_answers=True), Caller("+79161234567"), "no_answer", "yandex",
     None),
    ("74950000001", Phone(never_answers=True), Caller("+79161234567", hangup_after=0.5),
     "abandoned", "google", None),
    ("74950000002", Phone(congestion=True), Caller("+79161234567"), "failed", "yandex", None),
    ("74950000001", Phone(unavailable=True), Caller("+79161234567"), "failed", "google", None),
])
async def test_static_calls_are_recorded_like_asterisk_saw_them(
        setup: Setup, did: str, phone: Phone, caller: Caller, status: str, channel: str,
        answered_by: str | None) -> None:
    daemon = await setup.start_daemon()
    sim = setup.simulator(daemon.agi_address[1], default_phone=phone)
    call = await sim.call(did, caller)
    assert call.agi_status == "SUCCESS"
    record = await setup.finished(call.call_id)

    assert (record["status"], record["channel"], record["tracking"]) == (status, channel, "static")
    assert record["answered_by"] == answered_by == call.answered_by
    assert record["caller"] == "+79161234567"
    assert record["did"] == "+7495000000" + did[-1]
    assert_matches_cdr(record, call)
    if status == "answered":
        assert call.recorded
        assert record["recording_path"] == f"/var/spool/asterisk/monitor/{call.recording}"
    label = {"google": "Google Ads", "yandex": "Яндекс.Директ"}[channel]
    name = f" {caller.name}" if caller.name else ""
    assert call.variables["CTRACK_CALLERID_NAME"] == f"[{label}]{name}"


async def test_ring_group_and_queue_first_answer_wins(setup: Setup) -> None:
    daemon = await setup.start_daemon()
    sim = setup.simulator(
        daemon.agi_address[1],
        phones={"IAX2/phones/100": Phone(never_answers=True),
                "IAX2/phones/101": Phone(answer_after=0.3, talk=0.5)},
        queues={"sales": [QueueMember("IAX2/phones/100", "Office 100"),
                          QueueMember("IAX2/phones/101", "Office 101")]})
    group, queue = await asyncio.gather(sim.call("74950000009", Caller("+79161234567")),
                                        sim.call("74950000010", Caller("+79161110001")))
    for call in (group, queue):
        record = await setup.finished(call.call_id)
        assert (record["status"], record["answered_by"]) == ("answered", "IAX2/phones/101")
        assert_matches_cdr(record, call)


async def test_many_calls_at_once(setup: Setup) -> None:
    daemon = await setup.start_daemon()
    sim = setup.simulator(daemon.agi_address[1],
                          phones={"IAX2/phones/100": Phone(answer_after=0.2, talk=0.3),
                                  "IAX2/phones/101": Phone(busy=True)})
    calls = await asyncio.gather(*(
        sim.call("7495000000" + ("1" if i % 2 else "2"), Caller(f"+7916{i:07d}"))
        for i in range(60)))
    for i, call in enumerate(calls):
        record = await setup.finished(call.call_id)
        assert record["status"] == ("answered" if i % 2 else "busy")
        assert record["caller"] == f"+7916{i:07d}"
    assert daemon.tracker.open_calls == 0


async def test_daemon_down_the_call_still_reaches_the_office_as_fallback(setup: Setup) -> None:
    """No daemon at all: AGI FAILURE, ctrackd-agi attributes and its hang-up handler completes."""
    sim = setup.simulator(1, default_phone=QUICK)      # nothing listens on port 1
    call = await sim.call("74950000002", Caller("+79161234567"))
    assert (call.agi_status, call.fallback_status, call.hangup_handler_status) == (
        "FAILURE", "SUCCESS", "SUCCESS")
    assert call.dial_status == "ANSWER" and call.answered_by == "IAX2/phones/101"
    record = setup.record(call.call_id)
    assert (record["tracking"], record["channel"], record["status"]) == (
        "fallback", "yandex", "answered")
    assert record["answered_by"] == "IAX2/phones/101"
    assert record["close_reason"] == "fallback_handler"
    assert_matches_cdr(record, call)


async def test_daemon_restarted_in_the_middle_of_a_call(setup: Setup) -> None:
    daemon = await setup.start_daemon()
    sim = setup.simulator(daemon.agi_address[1],
                          default_phone=Phone(answer_after=0.3, talk=2.0))
    running = asyncio.create_task(sim.call("74950000001", Caller("+79161234567")))
    await asyncio.sleep(1.0)                 # answered and talking
    await setup.stop_daemon()
    await asyncio.sleep(0.3)                 # nobody is listening for a while
    await setup.start_daemon()               # same store: picks up the open call
    call = await running
    record = await setup.finished(call.call_id)
    assert (record["status"], record["answered_by"]) == ("answered", "IAX2/phones/100")
    assert record["close_reason"] == "hangup"
    assert_matches_cdr(record, call)


async def test_call_ended_while_the_daemon_was_down_is_closed_on_start(setup: Setup) -> None:
    daemon = await setup.start_daemon()
    sim = setup.simulator(daemon.agi_address[1],
                          default_phone=Phone(answer_after=0.2, talk=0.6))
    running = asyncio.create_task(sim.call("74950000001", Caller("+79161234567")))
    await asyncio.sleep(0.5)
    await setup.stop_daemon()
    call = await running                     # hung up while nobody watched
    await setup.start_daemon()
    record = await setup.finished(call.call_id)
    assert (record["status"], record["close_reason"]) == ("answered", "gone_after_reconnect")


async def test_daemon_down_a_queue_call_answered_is_recorded_answered(setup: Setup) -> None:
    """Queue() sets no DIALSTATUS: the hang-up handler reads the CDR's disposition."""
    sim = setup.simulator(
        1, phones={"IAX2/phones/100": Phone(answer_after=0.3, talk=0.6)},
        queues={"sales": [QueueMember("IAX2/phones/100", "Office 100")]})
    call = await sim.call("74950000010", Caller("+79161234567"))
    assert call.agi_status == "FAILURE" and call.hangup_handler_status == "SUCCESS"
    record = setup.record(call.call_id)
    assert (record["tracking"], record["status"], record["channel"]) == (
        "fallback", "answered", "queue")
    assert_matches_cdr(record, call)
