"""Hooks from the durable outbox: real receivers, real scripts, a real SQLite file.

A receiver is an aiohttp server on 127.0.0.1 (port 0) that can be down
(port closed, 503), hang, or redirect; a command hook is a Python script
written to tmp_path. Backoff settings are tiny (the dispatcher's base_delay,
HookConfig.max_delay), so retries take milliseconds, and every wait is on a
condition, never on a fixed sleep.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import socket
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from structlog.testing import capture_logs

from ctrackd import cli, daemon as daemon_module
from ctrackd.attribution.plan import TargetRule
from ctrackd.attribution.records import CallProgress, CallStatus
from ctrackd.config import load_config
from ctrackd.configcalls import HookConfig
from ctrackd.daemon import Daemon
from ctrackd.hooks import outbox
from ctrackd.hooks.dispatcher import Dispatcher
from ctrackd.store import queries, schema
from ctrackd.store.judge import judge_calls
from tests.simulator.ami_server import FakeAmi, read_capture
from tests.test_daemon import agi_track, environment, mset_variables

NOW = 1_790_000_000.0
SECRET = "s3cret-key"
MISSED = {"status": "no_answer", "caller": "+79161234567", "did": "+74950000001",
          "channel": "google", "ring_seconds": 21.0, "attempts": 1}


# -- fixtures ----------------------------------------------------------------------

@pytest.fixture
def store(tmp_path: Path) -> Path:
    path = tmp_path / "calls.sqlite3"
    conn = queries.connect(path, readonly=False)
    schema.migrate(conn)
    conn.close()
    return path


def connect(path: Path) -> sqlite3.Connection:
    return queries.connect(path, readonly=False)


def add(path: Path, hooks: list[HookConfig], call_id: str, event: str = "missed",
        now: float | None = None) -> int:
    """What the judge does: enqueue inside its own transaction, then commit."""
    conn = connect(path)
    try:
        with queries.transaction(conn):
            return outbox.enqueue(conn, hooks, event, call_id, dict(MISSED, call=call_id),
                                  time.time() if now is None else now)
    finally:
        conn.close()


def rows(path: Path) -> list[dict[str, Any]]:
    conn = connect(path)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM outbox ORDER BY id")]
    finally:
        conn.close()


async def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


def settled(path: Path) -> bool:
    return all(r["delivered_at"] or r["gave_up_at"] for r in rows(path))


def verify(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """The receiver's check, exactly as docs/hooks.md tells receivers to write it."""
    timestamp = headers["X-CTrack-Timestamp"]
    expected = "sha256=" + hmac.new(secret.encode(), timestamp.encode() + b"." + body,
                                    hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, headers.get("X-CTrack-Signature", ""))


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    status: int


class Receiver:
    """A webhook receiver; `answer(n)` gives the response of the n-th request (0-based)."""

    def __init__(self, answer: Callable[[int, web.Request], web.StreamResponse] | None = None):
        self.answer = answer or (lambda n, request: web.Response(status=200))
        self.received: list[Received] = []
        self.hang: asyncio.Event | None = None   # set: requests wait for it
        self.arrived = asyncio.Event()
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def start(self, port: int = 0) -> None:
        app = web.Application()
        app.router.add_route("POST", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.hang is not None:
            self.hang.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def delivered_ids(self) -> list[str]:
        return [r.headers["X-CTrack-Delivery"] for r in self.received if 200 <= r.status < 300]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.arrived.set()
        if self.hang is not None:
            await self.hang.wait()
        response = self.answer(len(self.received), request)
        self.received.append(Received(request.path, dict(request.headers), body,
                                      response.status))
        return response


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    server = Receiver()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def dispatchers() -> AsyncIterator[list[Dispatcher]]:
    """Dispatchers a test started; stopped (and their threads joined) afterwards."""
    started: list[Dispatcher] = []
    yield started
    for dispatcher in started:
        await dispatcher.stop(0.5)


def run(dispatchers: list[Dispatcher], path: Path, hooks: list[HookConfig],
        **kwargs: Any) -> Dispatcher:
    settings = dict(poll_interval=0.05, base_delay=0.01, concurrency=4)
    dispatcher = Dispatcher(lambda: connect(path), hooks, **(settings | kwargs))
    dispatcher.start()
    dispatchers.append(dispatcher)
    return dispatcher


def script(tmp_path: Path, name: str, code: str) -> str:
    path = tmp_path / name
    path.write_text("#!/usr/bin/env python3\n" + code, encoding="utf-8")
    path.chmod(0o755)
    return str(path)


# -- the outbox's SQL --------------------------------------------------------------

def test_enqueue_one_row_per_subscribed_hook_once(store: Path) -> None:
    hooks = [HookConfig("crm", url="http://127.0.0.1:9/a"),
             HookConfig("notify", command=("/bin/true",)),
             HookConfig("ends", events=("call_end",), url="http://127.0.0.1:9/b")]
    assert add(store, hooks, "1700.1", now=NOW) == 2
    assert add(store, hooks, "1700.1", now=NOW + 5) == 0  # the judge ran again: nothing new
    assert add(store, hooks, "1700.2", now=NOW) == 2
    table = rows(store)
    assert [(r["hook"], r["call_id"]) for r in table] == [
        ("crm", "1700.1"), ("notify", "1700.1"), ("crm", "1700.2"), ("notify", "1700.2")]
    assert len({r["delivery_id"] for r in table}) == 4
    assert table[0]["delivery_id"] == outbox.delivery_id("missed", "1700.1", "crm")
    body = json.loads(table[0]["payload"])
    assert body == {"event": "missed", "delivery_id": table[0]["delivery_id"],
                    "call_id": "1700.1", "created_at": "2026-09-21T14:13:20Z",
                    "data": dict(MISSED, call="1700.1")}
    assert all(r["attempts"] == 0 and r["next_attempt_at"] == NOW for r in table)


def test_enqueue_lives_and_dies_with_the_callers_transaction(store: Path) -> None:
    hooks = [HookConfig("crm", url="http://127.0.0.1:9/a")]
    conn = connect(store)
    conn.execute("BEGIN IMMEDIATE")
    assert outbox.enqueue(conn, hooks, "missed", "1.1", MISSED, NOW) == 1
    assert conn.in_transaction  # it neither committed nor ended the caller's transaction
    conn.execute("ROLLBACK")
    assert rows(store) == []
    with pytest.raises(ValueError):  # NaN is not JSON: refused before anything is written
        with queries.transaction(conn):
            outbox.enqueue(conn, hooks, "missed", "1.2", {"ring": float("nan")}, NOW)
    conn.close()
    assert rows(store) == []


def test_retry_delay_doubles_is_capped_and_jittered() -> None:
    delays = [outbox.retry_delay(n, base=10, max_delay=3600, rand=lambda: 1.0)
              for n in (1, 2, 3, 12)]
    assert delays == [10, 20, 40, 3600]
    assert outbox.retry_delay(3, base=10, max_delay=3600, rand=lambda: 0.0) == 20  # half fixed
    assert outbox.retry_delay(10_000, base=10, max_delay=60, rand=lambda: 0.5) == 45


def test_claim_retry_give_up_and_start_over(store: Path) -> None:
    hooks = [HookConfig("crm", url="http://127.0.0.1:9/a", max_attempts=2)]
    add(store, hooks, "9.1", now=NOW)
    conn = connect(store)
    [first] = outbox.claim_due(conn, ["crm"], NOW, lease=40, limit=10)
    assert first.attempts == 1 and json.loads(first.body)["call_id"] == "9.1"
    assert outbox.claim_due(conn, ["crm"], NOW + 39, lease=40, limit=10) == []  # leased
    assert outbox.claim_due(conn, ["other"], NOW + 100, lease=40, limit=10) == []
    assert not outbox.record_failure(conn, first, "HTTP 503", NOW + 1, max_attempts=2, delay=5)
    assert outbox.next_due(conn, ["crm"]) == NOW + 6
    assert outbox.claim_due(conn, ["crm"], NOW + 5, lease=40, limit=10) == []
    [second] = outbox.claim_due(conn, ["crm"], NOW + 6, lease=40, limit=10)
    assert second.attempts == 2
    assert outbox.record_failure(conn, second, "HTTP 500", NOW + 7, max_attempts=2, delay=5)
    assert outbox.claim_due(conn, ["crm"], NOW + 10_000, lease=40, limit=10) == []
    [row] = outbox.list_outbox(conn)
    assert (row["status"], row["attempts"], row["last_error"], row["next_attempt_at"]) == (
        "failed", 2, "HTTP 500", None)
    assert outbox.retry(conn, None, NOW + 20) == [row["id"]]
    [again] = outbox.list_outbox(conn, status="pending")
    assert again["attempts"] == 0 and again["last_error"] == "HTTP 500"
    [third] = outbox.claim_due(conn, ["crm"], NOW + 20, lease=40, limit=10)
    outbox.mark_delivered(conn, third.id, NOW + 21)
    assert outbox.retry(conn, [third.id], NOW + 30) == []  # delivered is never sent again
    assert [r["status"] for r in outbox.list_outbox(conn)] == ["delivered"]
    conn.close()


# -- webhooks ----------------------------------------------------------------------

async def test_receiver_down_then_up_gets_each_event_once_signed(
        store: Path, receiver: Receiver, dispatchers: list[Dispatcher]) -> None:
    """503 for the first 7 requests (all deliveries retried), then 200: one 2xx per id."""
    receiver.answer = lambda n, request: web.Response(status=503 if n < 7 else 200)
    hooks = [HookConfig("crm", url=receiver.url(), secret=SECRET, max_delay=0.05,
                        max_attempts=50)]
    for n in range(5):
        add(store, hooks, f"1795.{n}")
    add(store, hooks, "1795.0")  # enqueued twice: still one delivery
    dispatcher = run(dispatchers, store, hooks, concurrency=2)
    dispatcher.nudge()
    await wait_for(lambda: settled(store))

    table = rows(store)
    assert all(r["delivered_at"] for r in table) and len(table) == 5
    assert sorted(receiver.delivered_ids()) == sorted(r["delivery_id"] for r in table)
    assert len(receiver.received) == 12 and sum(r["attempts"] for r in table) == 12
    for got in receiver.received:
        assert verify(SECRET, got.headers, got.body)
        assert not verify("another secret", got.headers, got.body)
        assert got.headers["Content-Type"] == "application/json"
        assert got.headers["X-CTrack-Event"] == "missed"
        body = json.loads(got.body)
        assert body["delivery_id"] == got.headers["X-CTrack-Delivery"]
        assert body["data"]["call"] == body["call_id"]
    assert any(r["last_error"] and r["last_error"].startswith("HTTP 503") for r in table)


async def test_port_closed_then_listening(store: Path, dispatchers: list[Dispatcher]) -> None:
    with socket.socket() as probe:  # a port nobody listens on (yet)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    hooks = [HookConfig("crm", url=f"http://127.0.0.1:{port}/hook", max_delay=0.05,
                        max_attempts=1000)]
    add(store, hooks, "2.1")
    run(dispatchers, store, hooks)
    await wait_for(lambda: rows(store)[0]["attempts"] >= 3)
    assert "ClientConnectorError" in rows(store)[0]["last_error"]
    late = Receiver()
    await late.start(port)
    try:
        await wait_for(lambda: settled(store))
        assert late.delivered_ids() == [rows(store)[0]["delivery_id"]]
    finally:
        await late.stop()


async def test_a_failing_receiver_is_held_not_hammered(store: Path,
                                                       dispatchers: list[Dispatcher]) -> None:
    """Events of 30 calls due at once, the CRM down: a few attempts probe it, the
    rest wait (held), and once it is up every event goes."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    hooks = [HookConfig("crm", url=f"http://127.0.0.1:{port}/hook", max_attempts=1000,
                        max_delay=0.4)]
    for n in range(30):
        add(store, hooks, f"held.{n}")
    dispatcher = run(dispatchers, store, hooks, base_delay=0.2, concurrency=2)
    await asyncio.sleep(1.0)
    tried = sum(r["attempts"] for r in rows(store))
    # Without the hold each of the 30 rows is tried at once and again after its
    # own 0.1-0.2 s backoff: 60 and more in a second.
    assert 1 <= tried <= 12, tried
    # a row's attempt is counted when claimed, the failure when the POST failed:
    # up to `concurrency` claimed attempts may still be on their way (a slow machine)
    assert tried - 2 <= dispatcher.failed_attempts <= tried
    late = Receiver()
    await late.start(port)
    try:
        await wait_for(lambda: settled(store), timeout=15)
        assert sorted(late.delivered_ids()) == sorted(r["delivery_id"] for r in rows(store))
    finally:
        await late.stop()


async def test_redirects_only_on_the_same_host(store: Path, receiver: Receiver,
                                               dispatchers: list[Dispatcher]) -> None:
    def answer(n: int, request: web.Request) -> web.Response:
        if request.path == "/moved":
            return web.Response(status=308, headers={"Location": "/final"})
        if request.path == "/away":  # same port, another host name: not followed
            return web.Response(status=307, headers={
                "Location": f"http://localhost:{receiver.port}/final"})
        return web.Response(status=204)
    receiver.answer = answer
    hooks = [HookConfig("moved", url=receiver.url("/moved")),
             HookConfig("away", url=receiver.url("/away"), max_attempts=1)]
    add(store, hooks, "3.1")
    run(dispatchers, store, hooks)
    await wait_for(lambda: settled(store))
    by_hook = {r["hook"]: r for r in rows(store)}
    assert by_hook["moved"]["delivered_at"] is not None
    assert by_hook["away"]["gave_up_at"] is not None
    assert "redirect to another host (localhost) not followed" in by_hook["away"]["last_error"]
    assert sorted(r.path for r in receiver.received) == ["/away", "/final", "/moved"]


async def test_each_outcome_logs_its_documented_line(
        store: Path, receiver: Receiver, dispatchers: list[Dispatcher]) -> None:
    """docs/hooks.md, Logs: hook_attempt_failed, hook_delivered, hook_gave_up, with context."""
    receiver.answer = lambda n, request: web.Response(
        status=503 if request.path == "/never" or n == 0 else 200)
    hooks = [HookConfig("crm", url=receiver.url("/hook"), max_delay=0.05),
             HookConfig("never", url=receiver.url("/never"), max_attempts=1)]
    with capture_logs() as logs:
        add(store, hooks, "11.1")
        run(dispatchers, store, hooks, concurrency=1)
        await wait_for(lambda: settled(store))
    events = [e for e in logs if e["event"].startswith("hook_")]
    assert not [e for e in events if e["event"] == "hook_delivery_crashed"], events
    by_name = {(e["event"], e["hook"]): e for e in events}
    assert set(by_name) == {("hook_attempt_failed", "crm"), ("hook_delivered", "crm"),
                            ("hook_gave_up", "never")}
    delivery = {r["hook"]: r["delivery_id"] for r in rows(store)}
    for (name, hook), entry in by_name.items():
        assert entry["hook_event"] == "missed" and entry["call_id"] == "11.1"
        assert entry["delivery_id"] == delivery[hook]
    assert by_name[("hook_attempt_failed", "crm")]["attempt"] == 1
    assert by_name[("hook_attempt_failed", "crm")]["error"] == "HTTP 503"
    assert by_name[("hook_delivered", "crm")]["attempt"] == 2
    assert by_name[("hook_gave_up", "never")]["log_level"] == "error"


async def test_a_store_that_cannot_be_opened_is_retried_not_fatal(
        store: Path, receiver: Receiver, dispatchers: list[Dispatcher]) -> None:
    """The daemon's connect raises StoreError (not sqlite3.Error) when the store will not open."""
    hooks = [HookConfig("crm", url=receiver.url())]
    add(store, hooks, "12.1")
    opened: list[bool] = []

    def connect_later() -> sqlite3.Connection:
        opened.append(True)
        if len(opened) < 3:
            raise schema.StoreError(f"cannot open the call store {store}: disk I/O error")
        return connect(store)
    with capture_logs() as logs:
        dispatcher = Dispatcher(connect_later, hooks, poll_interval=0.02)
        dispatcher.start()
        dispatchers.append(dispatcher)
        await wait_for(lambda: settled(store))
    assert not dispatcher.task.done() and len(receiver.delivered_ids()) == 1
    assert [e["event"] for e in logs if e["log_level"] == "error"] == [
        "hook_outbox_unreadable"] * 2


# -- command hooks ---------------------------------------------------------------

async def test_command_hook_gets_the_json_on_stdin(store: Path, tmp_path: Path,
                                                   dispatchers: list[Dispatcher]) -> None:
    seen = tmp_path / "seen.json"
    program = script(tmp_path, "record.py", f"""
import json, os, sys
record = {{"stdin": sys.stdin.read(), "argv": sys.argv[1:],
          "env": {{k: v for k, v in os.environ.items() if k.startswith("CTRACK_")}}}}
open({str(seen)!r}, "w").write(json.dumps(record))
""")
    hooks = [HookConfig("notify", command=(program, "--missed"))]
    add(store, hooks, "4.1")
    run(dispatchers, store, hooks)
    await wait_for(lambda: settled(store))
    [row] = rows(store)
    assert row["delivered_at"] is not None and row["attempts"] == 1
    record = json.loads(seen.read_text())
    assert record["stdin"] == row["payload"]
    assert record["argv"] == ["--missed"]
    assert record["env"] == {"CTRACK_EVENT": "missed", "CTRACK_DELIVERY_ID": row["delivery_id"],
                             "CTRACK_HOOK": "notify", "CTRACK_CALL_ID": "4.1"}


async def test_a_hook_that_always_fails_is_given_up_and_kept(
        store: Path, tmp_path: Path, dispatchers: list[Dispatcher]) -> None:
    counter = tmp_path / "runs"
    program = script(tmp_path, "fail.py", f"""
import sys
open({str(counter)!r}, "a").write("x")
print("crm said no", file=sys.stderr)
sys.exit(3)
""")
    hooks = [HookConfig("notify", command=(program,), max_attempts=3, max_delay=0.05)]
    add(store, hooks, "5.1")
    dispatcher = run(dispatchers, store, hooks)
    await wait_for(lambda: settled(store))
    [row] = rows(store)
    assert row["gave_up_at"] is not None and row["delivered_at"] is None
    assert row["attempts"] == 3 and counter.read_text() == "xxx"
    assert row["last_error"] == "exit status 3: crm said no"
    dispatcher.nudge()  # a given-up row is not tried again
    await asyncio.sleep(0.2)
    assert counter.read_text() == "xxx"


async def test_command_that_hangs_is_killed_at_its_timeout(
        store: Path, tmp_path: Path, dispatchers: list[Dispatcher]) -> None:
    pid_file = tmp_path / "pid"
    program = script(tmp_path, "hang.py", f"""
import os, time
open({str(pid_file)!r}, "w").write(str(os.getpid()))
time.sleep(60)
""")
    hooks = [HookConfig("notify", command=(program,), timeout=0.5, max_attempts=1)]
    add(store, hooks, "6.1")
    run(dispatchers, store, hooks)
    await wait_for(lambda: settled(store))
    [row] = rows(store)
    assert row["last_error"] == "timed out after 0.5 s (killed)"
    with pytest.raises(ProcessLookupError):  # killed and reaped, not left running
        os.kill(int(pid_file.read_text()), 0)


async def test_command_that_leaves_a_child_on_stderr_is_delivered_once(
        store: Path, tmp_path: Path, dispatchers: list[Dispatcher]) -> None:
    """Exit 0 decides, even while a background child still holds stderr open.

    The child is killed with the process group: it neither outlives the
    attempt nor makes it a timeout (which would run the command again)."""
    runs, pid_file = tmp_path / "runs", tmp_path / "child.pid"
    command = ("/bin/sh", "-c",
               f"echo x >> {runs}; sleep 30 & echo $! > {pid_file}; exit 0")
    hooks = [HookConfig("notify", command=command, timeout=3, max_attempts=3,
                        max_delay=0.05)]
    add(store, hooks, "6.2")
    run(dispatchers, store, hooks)
    await wait_for(lambda: settled(store))
    [row] = rows(store)
    assert row["delivered_at"] is not None and row["attempts"] == 1, row
    assert row["last_error"] is None and runs.read_text() == "x\n"
    child = int(pid_file.read_text())
    await wait_for(lambda: not _running(child), timeout=2)


def _running(pid: int) -> bool:
    """Alive and not a zombie (a killed child of the shell may wait for init to reap it)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


async def test_missing_program_is_a_failure_not_a_crash(
        store: Path, tmp_path: Path, dispatchers: list[Dispatcher]) -> None:
    hooks = [HookConfig("notify", command=(str(tmp_path / "nope"),), max_attempts=1)]
    add(store, hooks, "7.1")
    dispatcher = run(dispatchers, store, hooks)
    await wait_for(lambda: settled(store))
    assert rows(store)[0]["last_error"].startswith(f"cannot run {tmp_path / 'nope'}")
    assert not dispatcher.task.done()


# -- the daemon --------------------------------------------------------------------

DAEMON_CONFIG = """\
ami: {{host: 127.0.0.1, port: {ami_port}, username: ctrackd, secret: secret,
      ping_interval: 1, liveness_timeout: 5, reconnect_max: 1}}
agi: {{listen: "127.0.0.1:0"}}
store: {{path: calls.sqlite3}}
defaults: {{forward_to: IAX2/phones/100, ring_timeout: 20}}
log: {{level: warning, format: json}}
channels:
  google: {{label: Google Ads, source: google, medium: cpc}}
numbers:
  "74950000001": {{channel: google}}
hooks:
  crm: {{url: "{url}", secret: {secret}, timeout: 60, events: [missed]}}
"""


async def test_the_call_path_answers_while_a_delivery_hangs(
        tmp_path: Path, ami: FakeAmi, receiver: Receiver,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(daemon_module, "HOOK_STOP_GRACE", 0.2)
    config = tmp_path / "ctrackd.yaml"
    config.write_text(DAEMON_CONFIG.format(ami_port=ami.port, url=receiver.url(),
                                           secret=SECRET), encoding="utf-8")
    receiver.hang = asyncio.Event()
    running = Daemon(load_config(config), stop_grace=1.0)
    await running.start()
    try:
        assert running.hooks is not None
        store = running.config.store.path
        add(store, list(running.config.hooks), "8.1")
        running.nudge_hooks()
        await asyncio.wait_for(receiver.arrived.wait(), 10)  # the delivery is stuck

        commands = await agi_track(running.agi_address[1], environment("8.2", "74950000001"))
        assert mset_variables(commands[0])["CTRACK_FORWARD"] == "IAX2/phones/100"
        assert not receiver.hang.is_set() and receiver.received == []
        assert rows(store)[0]["delivered_at"] is None  # still under way

        receiver.hang.set()
        await wait_for(lambda: settled(store))
        assert receiver.delivered_ids() == [rows(store)[0]["delivery_id"]]

        # A stop while a delivery hangs: cut after the grace, handed back as due.
        receiver.hang = asyncio.Event()
        receiver.arrived.clear()
        add(store, list(running.config.hooks), "8.3")
        running.nudge_hooks()
        await asyncio.wait_for(receiver.arrived.wait(), 10)
    finally:
        await running.stop()
    cut = [r for r in rows(store) if r["call_id"] == "8.3"][0]
    assert (cut["delivered_at"], cut["gave_up_at"], cut["attempts"]) == (None, None, 0)


async def test_a_missed_call_fires_the_hook_once(
        tmp_path: Path, ami: FakeAmi, receiver: Receiver, captures: Path) -> None:
    """Capture 03 (busy) through the whole daemon: judged missed, one signed POST."""
    config = tmp_path / "ctrackd.yaml"
    config.write_text(DAEMON_CONFIG.format(ami_port=ami.port, url=receiver.url(),
                                           secret=SECRET), encoding="utf-8")
    running = Daemon(load_config(config), stop_grace=1.0)
    await running.start()
    try:
        await ami.wait_for_clients(1)
        await agi_track(running.agi_address[1], environment("1795332127.22", "74950000001"))
        for message in read_capture(captures / "ami" / "03-busy.txt", skip_login=True):
            await ami.emit(message)
        await wait_for(lambda: len(receiver.delivered_ids()) == 1)
    finally:
        await running.stop()
    [got] = receiver.received
    assert verify(SECRET, got.headers, got.body)
    body = json.loads(got.body)
    assert (body["event"], body["call_id"]) == ("missed", "1795332127.22")
    assert body["data"]["status"] == "busy" and body["data"]["caller"] == "+79161234567"
    assert body["data"]["channel"] == "google"
    [row] = rows(running.config.store.path)
    assert row["delivered_at"] is not None and row["attempts"] == 1


async def test_reload_starts_hooks_added_to_the_config(
        tmp_path: Path, ami: FakeAmi, receiver: Receiver) -> None:
    config = tmp_path / "ctrackd.yaml"
    text = DAEMON_CONFIG.format(ami_port=ami.port, url=receiver.url(), secret=SECRET)
    config.write_text(text.split("hooks:")[0], encoding="utf-8")
    running = Daemon(load_config(config), stop_grace=1.0)
    await running.start()
    try:
        assert running.hooks is None
        config.write_text(text, encoding="utf-8")
        assert running.reload()
        assert running.hooks is not None
        add(running.config.store.path, list(running.config.hooks), "9.1")
        running.nudge_hooks()
        await wait_for(lambda: len(receiver.delivered_ids()) == 1)
    finally:
        await running.stop()


# -- ctrackd hooks -------------------------------------------------------------------

CLI_CONFIG = """\
ami: {username: ctrackd, secret: s3cret}
store: {path: calls.sqlite3}
defaults: {forward_to: PJSIP/office}
hooks:
  crm: {url: "http://127.0.0.1:9/hook"}
"""


def test_hooks_command_lists_and_retries(store: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "ctrackd.yaml"
    config.write_text(CLI_CONFIG, encoding="utf-8")
    hooks = [HookConfig("crm", url="http://127.0.0.1:9/hook", max_attempts=1),
             HookConfig("gone", command=("/bin/true",))]
    add(store, hooks, "10.1", now=NOW)
    add(store, hooks, "10.2", now=NOW)
    conn = connect(store)
    for delivery in outbox.claim_due(conn, ["crm"], NOW, lease=1, limit=1):
        outbox.record_failure(conn, delivery, "HTTP 500 Internal Server Error", NOW,
                              max_attempts=1, delay=1)
    conn.close()

    assert cli.main(["hooks", "-c", str(config), "--format", "json"]) == 0
    out, err = capsys.readouterr()
    listed = json.loads(out)
    assert [(r["hook"], r["call_id"], r["status"]) for r in listed] == [
        ("gone", "10.2", "pending"), ("crm", "10.2", "pending"), ("gone", "10.1", "pending"),
        ("crm", "10.1", "failed")]
    assert listed[-1]["last_error"] == "HTTP 500 Internal Server Error"
    assert "hooks not in" in err and "gone" in err

    assert cli.main(["hooks", "-c", str(config), "--status", "failed"]) == 0
    out, _ = capsys.readouterr()
    assert out.splitlines()[0].split()[:5] == ["ID", "EVENT", "HOOK", "STATUS", "TRIES"]
    assert "HTTP 500 Internal" in out and len(out.splitlines()) == 2

    assert cli.main(["hooks", "-c", str(config), "--format", "csv", "--limit", "1"]) == 0
    out, _ = capsys.readouterr()
    assert out.splitlines()[0] == ",".join(outbox.FIELDS) and len(out.splitlines()) == 2

    assert cli.main(["hooks", "retry", "-c", str(config)]) == 1
    assert "IDs or --all-failed" in capsys.readouterr().err
    assert cli.main(["hooks", "retry", "--all-failed", "-c", str(config)]) == 0
    assert "1 delivery due now\n" == capsys.readouterr().out
    conn = connect(store)
    assert {r["status"] for r in outbox.list_outbox(conn)} == {"pending"}
    # Delivered at the next try: the error it got past stays in JSON, not in the table.
    [again] = [d for d in outbox.claim_due(conn, ["crm"], time.time(), lease=1, limit=9)
               if d.call_id == "10.1"]
    outbox.mark_delivered(conn, again.id, time.time())
    conn.close()
    assert cli.main(["hooks", "-c", str(config), "--status", "delivered"]) == 0
    line = capsys.readouterr().out.splitlines()[1]
    assert line.split()[3] == "delivered" and line.endswith("  -")
    assert cli.main(["hooks", "-c", str(config), "--status", "delivered", "--format",
                     "json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["last_error"].startswith("HTTP 500")
    assert cli.main(["hooks", "retry", "999", "-c", str(config)]) == 1
    assert "999" in capsys.readouterr().err


def test_hooks_command_without_a_store(tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "ctrackd.yaml"
    config.write_text(CLI_CONFIG, encoding="utf-8")
    assert cli.main(["hooks", "-c", str(config)]) == 1
    assert "no call store" in capsys.readouterr().err
    assert cli.main(["hooks", "retry", "1", "-c", str(config)]) == 1
    assert "no call store" in capsys.readouterr().err
    assert not (tmp_path / "calls.sqlite3").exists()


# -- docs/hooks.md says what the code does -------------------------------------------------

DOCS = Path(__file__).resolve().parent.parent / "docs" / "hooks.md"


def test_the_documented_payload_has_the_fields_a_real_one_has(store: Path) -> None:
    """The example in docs/hooks.md is a real missed event, field for field."""
    text = DOCS.read_text(encoding="utf-8")
    [example] = [e for e in (json.loads(part.split("```", 1)[0])
                             for part in text.split("```json\n")[1:]) if e["event"] == "missed"]
    conn = connect(store)
    try:
        started = NOW - 100
        queries.save_progress(conn, [_missed_call("doc.1", started)])
        hooks = [HookConfig("crm", url="http://127.0.0.1:9/a", events=("missed",))]
        judge_calls(conn, ["doc.1"], rules=lambda channel: ("default", TargetRule()), now=NOW,
                    enqueue=lambda c, e, cid, p, n: outbox.enqueue(c, hooks, e, cid, p, n))
    finally:
        conn.close()
    real = json.loads(rows(store)[0]["payload"])
    assert list(example) == list(real)
    assert list(example["data"]) == list(real["data"])
    assert example["data"]["target_rule"] == "default: not target: not answered (no_answer)"


def _missed_call(call_id: str, started: float) -> CallProgress:
    progress = CallProgress(call_id, started, CallStatus.RINGING, caller="+79161234567")
    progress.finish(CallStatus.NO_ANSWER, started + 21, "hangup")
    return progress


def test_the_documented_time_to_give_up_is_the_backoffs(store: Path) -> None:
    waits = [[outbox.retry_delay(n, base=10, max_delay=3600, rand=lambda: r)
              for n in range(1, 20)] for r in (0.0, 1.0)]  # 20 attempts: 19 waits
    low, high = (round(sum(w) / 3600, 1) for w in waits)
    assert f"default: {low} to {high} hours of waiting" in DOCS.read_text(encoding="utf-8")


# -- a long outage's backlog, one failed round, an answer before its start ---------

def test_a_round_looks_at_the_rows_it_claims_not_the_whole_backlog(store: Path) -> None:
    """Each call's events go in order; picking them must not sort every pending row."""
    hooks = [HookConfig("crm", url="http://127.0.0.1:9/h")]
    for n in range(300):
        add(store, hooks, f"b.{n}", event="call_start")
        add(store, hooks, f"b.{n}", event="call_answer")
    conn = connect(store)
    try:
        plan = " ".join(r[3] for r in conn.execute(
            "EXPLAIN QUERY PLAN " + outbox._heads("?") + " AND o.next_attempt_at <= ?"
            " ORDER BY o.next_attempt_at, o.id LIMIT ?", ["crm", time.time() + 1, 8]))
        assert "outbox_due" in plan and "outbox_pending_call" in plan, plan
        assert "TEMP B-TREE" not in plan, plan  # no sort of the backlog
        claimed = outbox.claim_due(conn, ["crm"], time.time() + 1, lease=60, limit=600)
    finally:
        conn.close()
    # only the heads: every call's start, none of the answers behind them
    assert sorted(d.event for d in claimed) == ["call_start"] * 300


async def test_one_failed_round_is_one_failure_for_the_hold(
        store: Path, dispatchers: list[Dispatcher]) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    hooks = [HookConfig("crm", url=f"http://127.0.0.1:{port}/hook", max_attempts=1000)]
    for n in range(8):
        add(store, hooks, f"r.{n}")
    dispatcher = run(dispatchers, store, hooks, base_delay=5.0, concurrency=8)
    await wait_for(lambda: dispatcher.failed_attempts == 8)
    # 8 refused at once: held for the first step of the backoff (2.5-5 s), not 2^7 of it
    assert dispatcher._failures_in_row == {"crm": 1}
    assert dispatcher._held_until["crm"] - time.time() <= 5.0


def test_an_answer_queued_before_its_start_brings_the_start_first(store: Path) -> None:
    """A crash in the daemon's START_DELAY (or a ctrackd-agi call answered later):
    the answer path queues the missing start, so the CRM still sees start, answer."""
    from ctrackd.store.judge import enqueue_answered
    hooks = [HookConfig("crm", url="http://127.0.0.1:9/h")]
    conn = connect(store)
    try:
        queries.save_progress(conn, [CallProgress(
            call_id="late.1", started_at=time.time() - 30, status=CallStatus.ANSWERED,
            answered_at=time.time() - 20, answered_by="PJSIP/101")])
        added = enqueue_answered(conn, ["late.1"], time.time(),
                                 lambda c, e, i, p, n: outbox.enqueue(c, hooks, e, i, p, n))
        claimed = outbox.claim_due(conn, ["crm"], time.time() + 1, lease=60, limit=10)
    finally:
        conn.close()
    assert added == 2
    assert [d.event for d in claimed] == ["call_start"]  # the answer waits behind it
