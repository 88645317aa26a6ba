"""AmiConnection against FakeAmi over real TCP: what the daemon relies on.

Order and completeness of events (Cyrillic split across reads included),
markers in the same queue, reconnect with a growing capped backoff, the
liveness watchdog, action timeouts, list actions, login failures.
Timings are scaled down (tens of milliseconds) so the file runs in seconds.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import structlog
from panoramisk.message import Message
from structlog.testing import capture_logs

from ctrackd.ami.connection import AmiActionError, AmiConnection, AmiLinkEvent, AmiNotConnected
from tests.simulator.ami_server import FakeAmi, encode_message, read_capture

CAPTURE_14 = "ami/14-cyrillic-callerid-and-ctrack-channel.txt"
CAPTURE_16 = "ami/16-reconnect-snapshot-coreshowchannels-status.txt"
Connect = Callable[..., Awaitable[tuple[AmiConnection, "asyncio.Queue[Any]"]]]


@pytest.fixture
async def connect(ami: FakeAmi) -> AsyncIterator[Connect]:
    made: list[AmiConnection] = []

    async def make(**options: Any) -> tuple[AmiConnection, asyncio.Queue[Any]]:
        queue: asyncio.Queue[Any] = asyncio.Queue()
        made.append(conn := AmiConnection(**({
            "host": "127.0.0.1", "port": ami.port, "username": "ctrackd", "secret": "secret",
            "queue": queue, "action_timeout": 0.3, "reconnect_initial": 0.05,
            "reconnect_max": 0.2} | options)))
        await conn.start()
        return conn, queue

    yield make
    for conn in made:
        await conn.stop()


async def connected(connect: Connect, **options: Any) -> tuple[AmiConnection, asyncio.Queue[Any]]:
    """Connect; return once the marker and the two login events were consumed."""
    conn, queue = await connect(**options)
    await next_marker(queue)
    await eventually(lambda: queue.qsize() == 2)
    drain(queue)  # FullyBooted, SuccessfulAuth
    return conn, queue


async def next_marker(queue: asyncio.Queue[Any], timeout: float = 3.0) -> AmiLinkEvent:
    """The next link marker, skipping events."""
    async with asyncio.timeout(timeout):
        while not isinstance(item := await queue.get(), AmiLinkEvent):
            pass
    return item


async def eventually(check: Callable[[], bool], timeout: float = 3.0) -> None:
    async with asyncio.timeout(timeout):  # polls: the conditions are plain attributes
        while not check():
            await asyncio.sleep(0.005)


def drain(queue: asyncio.Queue[Any]) -> list[Any]:
    return [queue.get_nowait() for _ in range(queue.qsize())]


def as_message_dict(headers: list[tuple[str, str]]) -> dict[str, Any]:
    """Headers as panoramisk gives them: a repeated header is a list."""
    values: dict[str, list[str]] = {}
    for key, value in headers:
        values.setdefault(key, []).append(value)
    return {key: found[0] if len(found) == 1 else found for key, found in values.items()}


async def test_login_with_events_mask_then_marker_before_login_events(
        ami: FakeAmi, connect: Connect) -> None:
    conn, queue = await connect()
    first = await asyncio.wait_for(queue.get(), 3)
    assert first == AmiLinkEvent("connected", first.ts, None)
    rest = [await asyncio.wait_for(queue.get(), 1) for _ in range(2)]  # came in the same read
    assert [m["Event"] for m in rest] == ["FullyBooted", "SuccessfulAuth"]
    assert conn.connected and conn.reconnects == 0 and conn.events_received == 2
    login = ami.actions[0]
    assert (login["Action"], login["Username"], login["Events"]) == (
        "Login", "ctrackd", "system,call,cdr,user,dtmf")


async def test_capture_14_one_byte_per_read_arrives_whole_and_in_order(
        ami: FakeAmi, connect: Connect, captures: Path) -> None:
    _, queue = await connected(connect)
    expected = read_capture(captures / CAPTURE_14, skip_login=True)
    await ami.emit_raw(b"".join(encode_message(m) for m in expected), chunk=1)
    got = [await asyncio.wait_for(queue.get(), 3) for _ in expected]
    # panoramisk adds a `content` key (a response body) to every message
    assert [{k: v for k, v in m.items() if k != "content"} for m in got] == [
        as_message_dict(m) for m in expected]
    assert got[0]["CallerIDName"] == "Иван Петров"
    assert "CTRACK_CHANNEL=Яндекс.Директ" in got[-2]["ChanVariable"]  # inbound leg's Hangup
    assert queue.empty()


async def test_start_while_asterisk_is_down_then_it_comes_up(
        ami: FakeAmi, connect: Connect) -> None:
    await ami.pause_listening()
    with capture_logs() as logs:
        conn, queue = await connect()  # must not raise
        await eventually(lambda: any(e["event"] == "ami_unreachable" for e in logs))
        assert not conn.connected
        started = asyncio.get_running_loop().time()
        with pytest.raises(AmiNotConnected):  # at once, not after a timeout
            await conn.action({"Action": "Ping"})
        assert asyncio.get_running_loop().time() - started < 0.05
        await ami.resume_listening()
        assert (await next_marker(queue)).kind == "connected"
    down = next(e for e in logs if e["event"] == "ami_unreachable")
    assert down["log_level"] == "warning"
    assert (down["host"], down["port"], down["attempts"]) == ("127.0.0.1", ami.port, 1)
    assert "refused" in down["error"].lower() and 0 < down["retry_in"] <= 0.05
    assert [e["event"] for e in logs if e["event"].startswith("ami_connected")] == ["ami_connected"]


async def test_drop_gives_disconnected_then_connected(ami: FakeAmi, connect: Connect) -> None:
    conn, queue = await connected(connect)
    with capture_logs() as logs:
        ami.drop_clients()
        down = await next_marker(queue)
        up = await next_marker(queue)
    assert (down.kind, up.kind) == ("disconnected", "connected")
    assert down.reason in (
        "closed_by_peer", "ConnectionResetError: [Errno 104] Connection reset by peer")
    assert down.ts <= up.ts
    assert conn.connected and conn.reconnects == 1
    events = [e["event"] for e in logs]
    assert events.index("ami_disconnected") < events.index("ami_reconnected")


async def test_shutdown_event_comes_before_the_disconnected_marker(
        ami: FakeAmi, connect: Connect) -> None:
    _, queue = await connected(connect)
    await ami.emit([("Event", "Shutdown"), ("Privilege", "system,all"),
                    ("Shutdown", "Cleanly"), ("Restart", "True")])
    shutdown = await asyncio.wait_for(queue.get(), 3)
    down = await asyncio.wait_for(queue.get(), 3)
    assert shutdown["Event"] == "Shutdown"
    assert down == AmiLinkEvent("disconnected", down.ts, "asterisk_shutdown")


async def test_backoff_grows_and_is_capped() -> None:
    loop = asyncio.get_running_loop()
    accepted: list[float] = []

    async def accept_then_close(_r: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(loop.time())  # as Asterisk does while it restarts (capture 17)
        writer.close()

    server = await asyncio.start_server(accept_then_close, "127.0.0.1", 0)
    conn = AmiConnection(host="127.0.0.1", port=server.sockets[0].getsockname()[1],
                         username="ctrackd", secret="secret", queue=asyncio.Queue(),
                         reconnect_initial=0.05, reconnect_max=0.2)
    try:
        with capture_logs() as logs:
            await conn.start()
            await eventually(lambda: len(accepted) >= 7, timeout=5)
    finally:
        await conn.stop()
        server.close()
    gaps = [b - a for a, b in zip(accepted, accepted[1:])]
    # jitter keeps every wait in [0.75, 1] x base; the slack is connect + scheduling on a
    # loaded 2-core CI machine (the lower bounds carry the doubling, the cap the upper ones)
    slack = 0.15
    for gap, base in zip(gaps, [0.05, 0.1, 0.2, 0.2, 0.2, 0.2]):
        assert 0.75 * base <= gap <= base + slack, gaps
    # loud at first, then only while the wait still doubles: quiet at the cap
    unreachable = [e for e in logs if e["event"] == "ami_unreachable"]
    assert [e["attempts"] for e in unreachable] == [1, 2, 3]
    assert all(e["retry_in"] <= 0.2 for e in unreachable)


async def test_idle_link_lives_on_pings_silent_one_is_dropped(
        ami: FakeAmi, connect: Connect) -> None:
    conn, queue = await connected(connect, ping_interval=0.1, liveness_timeout=0.5)
    await asyncio.sleep(0.8)  # no events at all: only the pings' answers keep it alive
    assert conn.connected and not any(isinstance(i, AmiLinkEvent) for i in drain(queue))
    assert sum(a["Action"] == "Ping" for a in ami.actions) >= 5
    loop = asyncio.get_running_loop()
    with capture_logs() as logs:
        ami.silent = True
        started = loop.time()
        down = await next_marker(queue)
        elapsed = loop.time() - started
    assert down.reason == "liveness_timeout" and 0.35 <= elapsed <= 0.7
    assert any(e["event"] == "ami_liveness_lost" for e in logs)
    ami.silent = False  # meanwhile each Login went unanswered: it recovers when Asterisk does
    assert (await next_marker(queue)).kind == "connected"


async def test_unanswered_action_times_out(ami: FakeAmi, connect: Connect) -> None:
    conn, queue = await connected(connect, liveness_timeout=5)
    ami.silent = True
    started = asyncio.get_running_loop().time()
    with pytest.raises(TimeoutError):
        await conn.action({"Action": "Ping"}, timeout=0.2)
    assert 0.2 <= asyncio.get_running_loop().time() - started < 0.4


async def test_link_lost_mid_action_fails_it_and_never_resends_it(
        ami: FakeAmi, connect: Connect) -> None:
    conn, queue = await connected(connect, liveness_timeout=5)
    ami.silent = True
    originate = {"Action": "Originate", "Channel": "IAX2/x"}
    pending = asyncio.create_task(conn.action(originate, timeout=5))
    await eventually(lambda: ami.actions[-1]["Action"] == "Originate")
    ami.silent = False
    ami.drop_clients()
    with pytest.raises(AmiNotConnected):
        await asyncio.wait_for(pending, 1)
    await next_marker(queue)
    await next_marker(queue)  # reconnected, FullyBooted seen: panoramisk would re-send here
    await asyncio.sleep(0.05)
    assert sum(a["Action"] == "Originate" for a in ami.actions) == 1


async def test_core_show_channels_returns_the_list(
        ami: FakeAmi, connect: Connect, captures: Path) -> None:
    channels = [m for m in read_capture(captures / CAPTURE_16)
                if m[0] == ("Event", "CoreShowChannel")]
    ami.channels_provider = lambda: channels
    conn, queue = await connected(connect)
    events = await conn.action({"Action": "CoreShowChannels"}, multi=True)
    assert [e["Event"] for e in events] == ["CoreShowChannel"] * 4 + ["CoreShowChannelsComplete"]
    assert events[-1]["ListItems"] == "4"
    assert {e["ActionID"] for e in events} == {ami.actions[-1]["ActionID"]}
    assert [e["Uniqueid"] for e in events[:-1]] == [dict(c)["Uniqueid"] for c in channels]
    assert events[1]["ConnectedLineName"] == "Мария"
    assert events[1]["BridgeId"] == ""  # an empty last header survives
    assert not any(isinstance(i, Message) and i["Event"].startswith("CoreShowChannel")
                   for i in drain(queue))
    ami.channels_provider = list
    assert [e["Event"] for e in await conn.action({"Action": "CoreShowChannels"}, multi=True)] == [
        "CoreShowChannelsComplete"]


async def test_error_answers_raise_action_error(connect: Connect) -> None:
    conn, queue = await connected(connect)
    for multi in (False, True):
        with pytest.raises(AmiActionError, match="Invalid/unknown command") as caught:
            await conn.action({"Action": "NoSuchThing"}, multi=multi, timeout=1)
        assert caught.value.response["Response"] == "Error"
    pong = await conn.action({"Action": "Ping"})
    assert pong["Ping"] == "Pong"


async def test_bad_secret_logs_login_failed_and_keeps_retrying(
        ami: FakeAmi, connect: Connect) -> None:
    with capture_logs() as logs:
        conn, queue = await connect(secret="wrong-pass-123")
        await eventually(lambda: sum(a["Action"] == "Login" for a in ami.actions) >= 3)
        assert not conn.connected and queue.empty()
        ami.secret = "wrong-pass-123"  # the admin fixes manager.conf
        assert (await next_marker(queue)).kind == "connected"
    failed = [e for e in logs if e["event"] == "ami_login_failed"]
    assert failed[0]["log_level"] == "error"
    assert (failed[0]["username"], failed[0]["error"]) == ("ctrackd", "Authentication failed")
    assert "wrong-pass-123" not in repr(logs)


async def test_stop_logs_off_and_closes(ami: FakeAmi, connect: Connect) -> None:
    conn, queue = await connected(connect)
    await conn.stop()
    assert not conn.connected
    await ami.wait_for_clients(0)
    await eventually(lambda: ami.actions[-1]["Action"] == "Logoff")
    assert [i for i in drain(queue) if isinstance(i, AmiLinkEvent)][-1].reason == "stopped"
    await conn.wait_closed()
    await conn.stop()


async def test_a_crashed_link_task_is_surfaced(ami: FakeAmi) -> None:
    seen: list[str] = []

    def explode_on_outage(_logger: Any, _method: str, event: dict[str, Any]) -> Any:
        if event["event"] == "ami_unreachable":
            raise RuntimeError("boom")
        seen.append(event["event"])
        raise structlog.DropEvent

    await ami.pause_listening()
    conn = AmiConnection(host="127.0.0.1", port=ami.port, username="ctrackd", secret="secret",
                         queue=asyncio.Queue(),
                         logger=structlog.wrap_logger(None, processors=[explode_on_outage]))
    await conn.start()
    with pytest.raises(RuntimeError, match="boom"):
        await asyncio.wait_for(conn.wait_closed(), 2)
    assert seen == ["ami_task_failed"]


def test_a_bounded_queue_is_refused() -> None:
    with pytest.raises(ValueError, match="unbounded"):
        AmiConnection(host="h", port=1, username="u", secret="s", queue=asyncio.Queue(maxsize=10))
