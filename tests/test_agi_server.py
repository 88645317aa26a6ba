"""AgiServer over real TCP: captured dialogues replayed by a scripted client,
routing, the `failure` fallback signal, bounds, and stop()."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from ctrackd.agi.protocol import AgiChannel, AgiReply
from ctrackd.agi.server import AgiServer, Route
from tests.test_agi_protocol import (Chunk, capture_path, check_capture_env, environment_chunks,
                                     load_dialogue)

ENV = (b"agi_network: yes\nagi_network_script: track\nagi_uniqueid: 1795332111.16\n"
       b"agi_callerid: +79161234567\nagi_arg_1: 74950000001\n\n")

StartServer = Callable[..., Awaitable[tuple[AgiServer, int]]]


@pytest.fixture
async def start_server() -> AsyncIterator[StartServer]:
    servers: list[AgiServer] = []

    async def start(routes: dict[str, Route], **options: Any) -> tuple[AgiServer, int]:
        server = AgiServer(routes, host="127.0.0.1", port=0, **options)
        servers.append(server)
        _, port = await server.start()
        return server, port

    yield start
    for server in servers:
        await server.stop(grace=0.5)


Connect = Callable[..., Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]


@pytest.fixture
async def connect() -> AsyncIterator[Connect]:
    """Open a client connection (playing Asterisk) and send `env`; closed at teardown."""
    writers: list[asyncio.StreamWriter] = []

    async def open_session(port: int, env: bytes = ENV) -> tuple[asyncio.StreamReader,
                                                                  asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writers.append(writer)
        writer.write(env)
        await writer.drain()
        return reader, writer

    yield open_session
    for writer in writers:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def outcome(reader: asyncio.StreamReader, timeout: float = 2.0) -> bytes:
    """Everything the server writes until it half-closes (what Asterisk would read)."""
    return await asyncio.wait_for(reader.read(), timeout)


async def wait_until(predicate: Callable[[], bool], timeout: float = 2.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


async def done(channel: AgiChannel) -> None:
    return None


# --- captured environments and dialogues -----------------------------------

@pytest.mark.parametrize("bytewise", [False, True], ids=["chunks", "bytewise"])
@pytest.mark.parametrize("letter", ["A", "B", "C", "D", "E", "F"])
async def test_captured_environment_is_routed(captures: Path, start_server: StartServer,
                                              connect: Connect, letter: str,
                                              bytewise: bool) -> None:
    path = capture_path(captures, letter)
    seen: list[AgiChannel] = []

    async def track(channel: AgiChannel) -> None:
        seen.append(channel)

    server, port = await start_server({"track": track})
    reader, writer = await connect(port, b"")
    chunks = environment_chunks(load_dialogue(path))
    for chunk in ([bytes([b]) for b in b"".join(chunks)] if bytewise else chunks):
        writer.write(chunk)
        await writer.drain()
    assert await outcome(reader) == b""  # EOF, no failure: AGISTATUS=SUCCESS
    (channel,) = seen
    check_capture_env(channel.env, path)
    assert channel.script == "track" and channel.query == {}
    assert channel.args == [channel.env["agi_extension"], "+79161234567"]
    assert server.counters.served == 1


def split_replies(body: list[Chunk]) -> list[str]:
    """The reply text to each server command: the `in` bytes up to the next command."""
    replies: list[str] = []
    for chunk in body:
        if chunk.dir == "out":
            replies.append("")
        elif replies:
            replies[-1] += chunk.data.decode()
    return ["\n".join(line for line in r.splitlines() if line != "HANGUP") for r in replies]


async def replay_client(port: int, dialogue: list[Chunk]) -> None:
    """Play Asterisk: send what it sent, check each command line we get, answer in time."""
    *body, last = dialogue
    assert last.data == b"HANGUP\n"  # written by Asterisk after our half-close
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    previous = 0.0
    for chunk in body:
        if chunk.dir == "out":
            assert await asyncio.wait_for(reader.readline(), 2.0) == chunk.data
        else:
            await asyncio.sleep(min(chunk.t - previous, 0.05))  # keep late chunks late
            writer.write(chunk.data)
            await writer.drain()
        previous = chunk.t
    assert await outcome(reader) == b""
    writer.write(last.data)
    writer.close()
    await writer.wait_closed()


async def run_capture(captures: Path, start_server: StartServer,
                      letter: str) -> tuple[list[AgiReply], list[bool], list[str]]:
    dialogue = load_dialogue(capture_path(captures, letter))
    commands = [c.data.decode().rstrip("\n") for c in dialogue if c.dir == "out"]
    replies: list[AgiReply] = []
    hung_up: list[bool] = []

    async def track(channel: AgiChannel) -> None:
        for line in commands:
            replies.append(await channel.command(line))
            hung_up.append(channel.hung_up)

    server, port = await start_server({"track": track})
    await replay_client(port, dialogue)
    assert server.counters.served == 1
    expected = split_replies(dialogue[len(environment_chunks(dialogue)):-1])
    assert [r.text for r in replies] == expected
    return replies, hung_up, expected


async def test_capture_c_inline_hangup_then_511(captures: Path, start_server: StartServer) -> None:
    replies, hung_up, _ = await run_capture(captures, start_server, "C")
    assert [r.code for r in replies] == [200, 511, 511, 200, 200]
    assert hung_up == [False, True, True, True, True]
    assert (replies[3].result, replies[3].data) == ("1", "1795332289.3")


async def test_capture_d_510_and_multiline_520(captures: Path, start_server: StartServer) -> None:
    replies, hung_up, _ = await run_capture(captures, start_server, "D")
    assert [r.code for r in replies] == [510, 520, 520, 200, 200, 200, 200, 200]
    assert replies[2].text.splitlines() == [
        "520-Invalid command syntax.  Proper usage follows:",
        "Stream the given <replaceable>file</replaceable>, and receive DTMF data.",
        "Returns the digits received from the channel at the other end.",
        "520 End of proper usage."]
    assert replies[3].text == "200 result=0"  # NOOP's own reply: still aligned
    assert not any(hung_up)


async def test_capture_b_get_data(captures: Path, start_server: StartServer) -> None:
    replies, _, _ = await run_capture(captures, start_server, "B")
    assert (replies[1].code, replies[1].result, replies[1].data) == (200, "4821", None)


async def test_capture_e_get_variable(captures: Path, start_server: StartServer) -> None:
    replies, _, _ = await run_capture(captures, start_server, "E")
    assert [(r.result, r.data) for r in replies[:4]] == [
        ("0", None), ("1", "1795332303.8"), ("1", "+79161234567"), ("1", "")]


async def test_capture_f_cyrillic(captures: Path, start_server: StartServer) -> None:
    replies, _, _ = await run_capture(captures, start_server, "F")
    assert replies[0].data == "Иван Петров"
    assert replies[1].data == '"Иван Петров" <+79161234567> -> 74950000014'


async def test_capture_a_track_request(captures: Path, start_server: StartServer) -> None:
    replies, _, _ = await run_capture(captures, start_server, "A")
    assert [r.result for r in replies] == ["1", "1", "1", "0"]  # EXEC returns 0


# --- routing and the failure signal ----------------------------------------

async def test_query_string_routes_to_script(start_server: StartServer, connect: Connect) -> None:
    seen: list[AgiChannel] = []

    async def track(channel: AgiChannel) -> None:
        seen.append(channel)

    _, port = await start_server({"track": track})
    reader, _ = await connect(port, ENV.replace(b"script: track", b"script: track?x=1&y=2"))
    assert await outcome(reader) == b""
    assert (seen[0].script, seen[0].query) == ("track", {"x": "1", "y": "2"})


async def test_unknown_script_gets_failure(start_server: StartServer, connect: Connect) -> None:
    server, port = await start_server({"track": done})
    with capture_logs() as logs:
        reader, _ = await connect(port, ENV.replace(b"track", b"nope"))
        assert await outcome(reader) == b"failure\n"
    assert server.counters.failed == 1
    assert [e["event"] for e in logs if e["log_level"] != "debug"] == ["agi_route_unknown"]
    assert logs[0]["script"] == "nope" and logs[0]["uniqueid"] == "1795332111.16"


async def test_route_error_gets_failure_and_server_goes_on(start_server: StartServer,
                                                           connect: Connect) -> None:
    calls = 0

    async def flaky(channel: AgiChannel) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("boom")

    server, port = await start_server({"track": flaky})
    with capture_logs() as logs:
        reader, _ = await connect(port)
        assert await outcome(reader) == b"failure\n"
        reader, _ = await connect(port)
        assert await outcome(reader) == b""
    (failed,) = [e for e in logs if e["event"] == "agi_session_failed"]
    assert (failed["script"], failed["uniqueid"], failed["log_level"]) == (
        "track", "1795332111.16", "error")
    assert failed["exc_info"] is True
    assert (server.counters.failed, server.counters.served) == (1, 1)
    assert "+79161234567" not in repr([e for e in logs if e["log_level"] != "debug"])


async def test_error_after_finish_sends_no_failure(start_server: StartServer,
                                                   connect: Connect) -> None:
    async def late_error(channel: AgiChannel) -> None:
        await channel.finish()
        raise RuntimeError("after the answer")

    server, port = await start_server({"track": late_error})
    reader, _ = await connect(port)
    assert await outcome(reader) == b""  # Asterisk already has its SUCCESS
    await wait_until(lambda: server.counters.failed == 1)


async def test_finish_answers_asterisk_before_the_route_returns(start_server: StartServer,
                                                                connect: Connect) -> None:
    finished = asyncio.Event()
    release = asyncio.Event()

    async def track(channel: AgiChannel) -> None:
        await channel.finish()
        finished.set()
        await release.wait()

    server, port = await start_server({"track": track})
    reader, writer = await connect(port)
    assert await outcome(reader, 1.0) == b""  # EOF while the route still runs
    assert finished.is_set() and server.active == 1
    writer.write(b"HANGUP\n")  # Asterisk's last word, drained by the server
    writer.close()
    release.set()
    await wait_until(lambda: server.counters.served == 1)


# --- bad peers and bounds ----------------------------------------------------

async def test_peer_closing_before_empty_line_costs_only_itself(start_server: StartServer,
                                                                connect: Connect) -> None:
    server, port = await start_server({"track": done})
    _, early = await connect(port, b"agi_network: yes\nagi_netw")
    early.close()
    loop = asyncio.get_running_loop()
    started = loop.time()
    reader, _ = await connect(port)
    assert await outcome(reader) == b""
    assert loop.time() - started < 0.5
    await wait_until(lambda: server.counters.failed == 1)


async def test_garbage_gets_failure(start_server: StartServer, connect: Connect) -> None:
    server, port = await start_server({"track": done})
    reader, _ = await connect(port, b"GET / HTTP/1.0\r\n\r\n")
    assert await outcome(reader) == b"failure\n"
    assert server.counters.failed == 1


async def test_trickling_peer_is_cut_at_env_timeout(start_server: StartServer,
                                                    connect: Connect) -> None:
    server, port = await start_server({"track": done}, env_timeout=0.3)
    reader, writer = await connect(port, b"")

    async def trickle() -> None:
        for byte in ENV:
            writer.write(bytes([byte]))
            await asyncio.sleep(0.05)

    trickler = asyncio.ensure_future(trickle())
    loop = asyncio.get_running_loop()
    started = loop.time()
    other, _ = await connect(port)  # the loop stays responsive meanwhile
    assert await outcome(other) == b""
    assert loop.time() - started < 0.25
    assert await outcome(reader) == b"failure\n"
    assert 0.25 < loop.time() - started < 1.0
    trickler.cancel()
    assert (server.counters.failed, server.counters.served) == (1, 1)


async def test_max_sessions_rejects_extras_at_once(start_server: StartServer,
                                                   connect: Connect) -> None:
    release = asyncio.Event()

    async def slow(channel: AgiChannel) -> None:
        await release.wait()

    server, port = await start_server({"track": slow}, max_sessions=1)
    first, _ = await connect(port)
    await wait_until(lambda: server.active == 1)
    extra, _ = await connect(port, b"")  # sends nothing yet
    assert await outcome(extra, 0.5) == b"failure\n"
    release.set()
    assert await outcome(first) == b""
    assert (server.counters.rejected, server.counters.served) == (1, 1)


async def test_session_timeout_gets_failure(start_server: StartServer, connect: Connect) -> None:
    async def hang(channel: AgiChannel) -> None:
        await asyncio.sleep(30)

    server, port = await start_server({"track": hang}, session_timeout=0.3)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with capture_logs() as logs:
        reader, _ = await connect(port)
        assert await outcome(reader) == b"failure\n"
    assert 0.25 < loop.time() - started < 1.0
    assert "agi_session_timed_out" in [e["event"] for e in logs]
    assert server.counters.failed == 1


# --- stop --------------------------------------------------------------------

async def test_stop_cancels_sessions_past_the_grace(start_server: StartServer,
                                                    connect: Connect) -> None:
    async def hang(channel: AgiChannel) -> None:
        await asyncio.sleep(30)

    server, port = await start_server({"track": hang})
    reader, _ = await connect(port)
    await wait_until(lambda: server.active == 1)
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await server.stop(grace=0.2) == 1
    assert loop.time() - started < 1.5
    assert await outcome(reader) == b"failure\n"
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)


async def test_stop_lets_sessions_finish_within_the_grace(start_server: StartServer,
                                                          connect: Connect) -> None:
    async def brief(channel: AgiChannel) -> None:
        await asyncio.sleep(0.2)

    server, port = await start_server({"track": brief})
    reader, writer = await connect(port)
    await wait_until(lambda: server.active == 1)
    stopping = asyncio.ensure_future(server.stop(grace=2.0))
    assert await outcome(reader) == b""  # answered normally, during the stop
    writer.close()  # as Asterisk does, so the background drain ends at once
    assert await asyncio.wait_for(stopping, 1.0) == 0
    assert server.counters.served == 1


async def test_peer_gone_before_the_environment_logs_no_traceback() -> None:
    """A port probe (connect, close at once) is one warning, not an error with a traceback."""
    from structlog.testing import capture_logs

    async def route(channel: AgiChannel) -> None:  # pragma: no cover - never reached
        raise AssertionError

    loop = asyncio.get_running_loop()
    unhandled: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: unhandled.append(context))
    server = AgiServer({"track": route}, host="127.0.0.1", port=0)
    _, port = await server.start()
    with capture_logs() as logs:
        for _ in range(20):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.transport.abort()  # RST: the socket is gone before we answer
        await asyncio.sleep(0.3)
    await server.stop(0.5)
    loop.set_exception_handler(None)
    assert unhandled == []
    assert logs and all(entry["log_level"] == "warning" for entry in logs), logs
    assert not any("exc_info" in entry or "exception" in entry for entry in logs)
