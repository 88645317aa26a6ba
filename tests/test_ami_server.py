"""FakeAmi, checked byte for byte with a plain TCP client against the captures.

The AMI client's tests are only as good as this server's likeness to
Asterisk, so its answers are compared with the recorded ones (header names,
order, values), and its fault switches (silence, drops, refused connects)
are shown to do what they say.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from panoramisk import Manager
from panoramisk.message import Message

from tests.simulator.ami_server import BANNER, FakeAmi, encode_message, read_capture

CAPTURE_14 = "ami/14-cyrillic-callerid-and-ctrack-channel.txt"
CAPTURE_16 = "ami/16-reconnect-snapshot-coreshowchannels-status.txt"
CAPTURE_17 = "ami/17-pbx-core-restart-now-during-call.txt"
Pairs = list[tuple[str, str]]


class RawClient:
    """The least a client can be: write actions, read CRLF messages."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> RawClient:
        client = cls(*await asyncio.open_connection("127.0.0.1", port))
        assert await client.reader.readexactly(len(BANNER)) == BANNER.encode()
        return client

    async def send(self, headers: Pairs) -> None:
        self.writer.write(encode_message(headers))
        await self.writer.drain()

    async def read(self, timeout: float = 2.0) -> Pairs | None:
        """The next message, None at EOF."""
        async with asyncio.timeout(timeout):
            try:
                raw = await self.reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError as exc:
                assert exc.partial == b""
                return None
        lines = raw.decode("utf-8").removesuffix("\r\n\r\n").split("\r\n")
        return [(k, v) for k, _, v in (line.partition(": ") for line in lines)]

    async def login(self, secret: str = "secret", action_id: str = "a1") -> Pairs | None:
        await self.send([("Action", "Login"), ("ActionID", action_id), ("Username", "ctrackd"),
                         ("Secret", secret), ("Events", "system,call")])
        return await self.read()

    def close(self) -> None:
        self.writer.close()


@pytest.fixture
async def client(ami: FakeAmi) -> AsyncIterator[RawClient]:
    raw = await RawClient.open(ami.port)
    yield raw
    raw.close()


def keys(message: Pairs | None) -> list[str]:
    assert message is not None
    return [key for key, _ in message]


def login_messages(captures: Path) -> dict[str, Pairs]:
    first = read_capture(captures / CAPTURE_14)[:3]
    return {dict(m).get("Event", "Response"): m for m in first}


async def test_login_answers_in_the_shape_of_the_capture(
        ami: FakeAmi, client: RawClient, captures: Path) -> None:
    recorded = login_messages(captures)
    assert await client.login(action_id="rec-1") == [
        ("Response", "Success"), ("ActionID", "rec-1"), ("Message", "Authentication accepted")]
    booted, auth = await client.read(), await client.read()
    assert keys(booted) == keys(recorded["FullyBooted"])
    assert dict(booted or [])["Status"] == "Fully Booted"
    assert keys(auth) == keys(recorded["SuccessfulAuth"])
    assert dict(auth or [])["AccountID"] == "ctrackd"
    assert ami.clients == 1
    assert ami.actions == [{"Action": "Login", "ActionID": "rec-1", "Username": "ctrackd",
                            "Secret": "********", "Events": "system,call"}]


async def eventually(check: Callable[[], bool], timeout: float = 3.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.005)


async def test_fully_booted_can_be_left_out() -> None:
    server = FakeAmi(fully_booted=False)
    raw = await RawClient.open(await server.start())
    try:
        await raw.login()
        assert dict(await raw.read() or [])["Event"] == "SuccessfulAuth"
    finally:
        raw.close()
        await server.stop()


async def test_wrong_secret_is_refused_then_closed(ami: FakeAmi, client: RawClient) -> None:
    assert await client.login(secret="nope") == [
        ("Response", "Error"), ("ActionID", "a1"), ("Message", "Authentication failed")]
    assert await client.read() is None
    assert ami.clients == 0


async def test_actions_before_login_are_denied(client: RawClient) -> None:
    await client.send([("Action", "Ping"), ("ActionID", "p0")])
    assert await client.read() == [("Response", "Error"), ("ActionID", "p0"),
                                   ("Message", "Permission denied")]


async def test_ping_unknown_and_logoff(client: RawClient) -> None:
    await client.login()
    await client.read(), await client.read()
    await client.send([("action", "PING"), ("actionid", "p1")])  # case does not matter
    pong = await client.read()
    assert keys(pong) == ["Response", "ActionID", "Ping", "Timestamp"]
    assert dict(pong or [])["Ping"] == "Pong" and float(dict(pong or [])["Timestamp"]) > 0
    await client.send([("Action", "Frobnicate"), ("ActionID", "x")])
    assert await client.read() == [("Response", "Error"), ("ActionID", "x"), ("Message", (
        "Invalid/unknown command: Frobnicate."
        " Use Action: ListCommands to show available commands."))]
    await client.send([("Action", "Logoff"), ("ActionID", "bye")])
    assert await client.read() == [("Response", "Goodbye"), ("ActionID", "bye"),
                                   ("Message", "Thanks for all the fish.")]
    assert await client.read() is None


async def test_core_show_channels_matches_capture_16(
        ami: FakeAmi, client: RawClient, captures: Path) -> None:
    recorded = read_capture(captures / CAPTURE_16, skip_login=True)
    action_id = dict(recorded[0])["ActionID"]
    answer = [m for m in recorded if dict(m).get("ActionID") == action_id]
    ami.channels_provider = lambda: [m for m in answer if m[0] == ("Event", "CoreShowChannel")]
    await client.login()
    await client.read(), await client.read()
    await client.send([("Action", "CoreShowChannels"), ("ActionID", action_id)])
    got = [await client.read() for _ in answer]
    assert got == answer  # response, 4 channels, Complete with ListItems: 4
    assert dict(answer[-1])["ListItems"] == "4"


async def test_emit_reaches_logged_in_clients_only(ami: FakeAmi, client: RawClient) -> None:
    stranger = await RawClient.open(ami.port)
    try:
        await client.login()
        await client.read(), await client.read()
        await ami.emit({"Event": "Newchannel", "ChanVariable": ["A=1", "B=Яндекс"]})
        await ami.emit([("Event", "UserEvent"), ("X", "1"), ("X", "2")])
        expected = ("Event: Newchannel\r\nChanVariable: A=1\r\nChanVariable: B=Яндекс\r\n\r\n"
                    "Event: UserEvent\r\nX: 1\r\nX: 2\r\n\r\n").encode()
        assert await client.reader.readexactly(len(expected)) == expected
        with pytest.raises(TimeoutError):
            await stranger.read(timeout=0.1)
    finally:
        stranger.close()


async def test_emit_raw_in_chunks_delivers_the_same_bytes(ami: FakeAmi, client: RawClient) -> None:
    await client.login()
    await client.read(), await client.read()
    data = "Event: X\r\nName: Иван Петров\r\n\r\n".encode()
    await ami.emit_raw(data, chunk=3)
    assert await client.reader.readexactly(len(data)) == data


async def test_fake_ami_chunks_break_stock_panoramisk(ami: FakeAmi, captures: Path) -> None:
    """One byte per chunk does split characters: panoramisk's own protocol
    loses them (the condition test_ami_connection's capture-14 test needs)."""
    newchannel = read_capture(captures / CAPTURE_14, skip_login=True)[0]
    seen: list[Message] = []
    manager = Manager(host="127.0.0.1", port=ami.port, username="ctrackd", secret="secret",
                      ping_delay=60, reconnect_timeout=60)
    manager.register_event("Newchannel", lambda _m, event: seen.append(event))
    await manager.connect()
    try:
        await ami.wait_for_clients(1)
        await ami.emit_raw(encode_message(newchannel), chunk=1)
        await eventually(lambda: bool(seen))
        assert seen[0]["CallerIDName"] != "Иван Петров"
    finally:
        manager.close()


async def test_drop_clients_closes_every_connection(ami: FakeAmi, client: RawClient) -> None:
    await client.login()
    await ami.wait_for_clients(1)
    ami.drop_clients()
    assert ami.clients == 0
    with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
        while True:  # what was sent before the drop, then EOF or a reset
            await client.reader.readexactly(1)


async def test_silent_server_reads_but_never_answers(ami: FakeAmi, client: RawClient) -> None:
    await client.login()
    await client.read(), await client.read()
    ami.silent = True
    await client.send([("Action", "Ping"), ("ActionID", "p2")])
    with pytest.raises(TimeoutError):
        await client.read(timeout=0.2)
    assert ami.actions[-1] == {"Action": "Ping", "ActionID": "p2"}


async def test_pause_refuses_and_resume_accepts_on_the_same_port(
        ami: FakeAmi, client: RawClient) -> None:
    await client.login()
    port = ami.port
    await ami.pause_listening()
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", port)
    assert ami.clients == 1  # who was in stays in
    await ami.resume_listening()
    assert ami.port == port
    second = await RawClient.open(port)
    assert (await second.login() or [])[0] == ("Response", "Success")
    await ami.wait_for_clients(2)
    second.close()


async def test_wait_for_clients_times_out(ami: FakeAmi) -> None:
    with pytest.raises(TimeoutError):
        await ami.wait_for_clients(1, timeout=0.05)


def test_read_capture_gives_back_the_exact_bytes(captures: Path) -> None:
    for name in (CAPTURE_14, CAPTURE_16):
        raw = (captures / name).read_bytes()
        messages = read_capture(captures / name)
        assert BANNER.encode() + b"".join(encode_message(m) for m in messages) == raw
    first = read_capture(captures / CAPTURE_14)[0]
    assert first[:3] == [("Response", "Success"), ("ActionID", "rec-690d2116"),
                         ("Message", "Authentication accepted")]
    newchannel = read_capture(captures / CAPTURE_14, skip_login=True)[0]
    assert [v for k, v in newchannel if k == "ChanVariable"] == [
        "CTRACK_CALL_ID=", "CTRACK_CHANNEL="]


def test_read_capture_skips_every_login(captures: Path) -> None:
    # 17 holds two connections, hence two banners and two logins
    everything = read_capture(captures / CAPTURE_17)
    replay = read_capture(captures / CAPTURE_17, skip_login=True)
    assert len(everything) - len(replay) == 6
    assert not any(dict(m).get("Event") in ("FullyBooted", "SuccessfulAuth") for m in replay)
    assert sum(dict(m).get("Event") == "Shutdown" for m in replay) == 1
