"""FastAGI wire format: environments replayed from the captures (in their own
chunking and split at every byte), reply parsing, and one AgiChannel over a
real TCP connection scripted from the client side."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ctrackd.agi.protocol import AgiChannel, AgiProtocolError, parse_reply, read_environment


@dataclass(frozen=True)
class Chunk:
    t: float
    dir: str  # "in" = Asterisk -> server, "out" = server -> Asterisk
    data: bytes


def load_dialogue(path: Path) -> list[Chunk]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [Chunk(r["t"], r["dir"], base64.b64decode(r["b64"])) for r in rows]


def environment_chunks(dialogue: list[Chunk]) -> list[bytes]:
    """The `in` chunks before the first server command, as recorded."""
    chunks = []
    for chunk in dialogue:
        if chunk.dir == "out":
            break
        chunks.append(chunk.data)
    return chunks


def capture_header(path: Path) -> dict[str, str]:
    """uniqueid, channel and DID from the `.txt` header (an independent source)."""
    words = path.with_suffix(".txt").read_text().split()
    return {"uniqueid": words[words.index("uniqueid") + 1],
            "channel": words[words.index("channel") + 1],
            "did": words[words.index("DID") + 1]}


def agi_files(captures: Path) -> list[Path]:
    return sorted((captures / "agi").glob("*.jsonl"))


CAPTURE_NAMES = ["A", "B", "C", "D", "E", "F"]


def capture_path(captures: Path, letter: str) -> Path:
    (path,) = [p for p in agi_files(captures) if p.name.startswith(letter + "-")]
    return path


def check_capture_env(env: dict[str, str], path: Path) -> None:
    header = capture_header(path)
    assert env["agi_network_script"] == "track"
    assert env["agi_uniqueid"] == header["uniqueid"]
    assert env["agi_channel"] == header["channel"]
    assert env["agi_extension"] == env["agi_arg_1"] == header["did"]
    assert env["agi_arg_2"] == env["agi_callerid"] == "+79161234567"
    assert env["agi_accountcode"] == ""
    assert len(env) == 24
    expected_name = "Иван Петров" if path.name.startswith("F-") else "unknown"
    assert env["agi_calleridname"] == expected_name


async def feed_and_read(chunks: list[bytes], *, timeout: float = 1.0) -> dict[str, str]:
    """Feed chunks one by one, letting read_environment consume between them."""
    reader = asyncio.StreamReader()
    task = asyncio.ensure_future(read_environment(reader, timeout=timeout))
    for chunk in chunks:
        reader.feed_data(chunk)
        await asyncio.sleep(0)
    return await task


@pytest.mark.parametrize("letter", CAPTURE_NAMES)
async def test_environment_in_original_chunks(captures: Path, letter: str) -> None:
    path = capture_path(captures, letter)
    check_capture_env(await feed_and_read(environment_chunks(load_dialogue(path))), path)


@pytest.mark.parametrize("letter", CAPTURE_NAMES)
async def test_environment_split_at_every_byte(captures: Path, letter: str) -> None:
    path = capture_path(captures, letter)
    data = b"".join(environment_chunks(load_dialogue(path)))
    for cut in range(1, len(data)):
        check_capture_env(await feed_and_read([data[:cut], data[cut:]]), path)
    check_capture_env(await feed_and_read([bytes([b]) for b in data]), path)


async def test_environment_tolerates_crlf_and_bad_utf8_values() -> None:
    env = await feed_and_read([b"agi_network_script: x\r\nagi_calleridname: \xd0\x98\xff\r\n\r\n"])
    assert env == {"agi_network_script": "x", "agi_calleridname": "И\ufffd"}


@pytest.mark.parametrize("chunks", [
    [b"agi_network: yes\nagi_uniq"],                 # EOF before the empty line
    [b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"],          # not an AGI peer
    [b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\n\n"],  # TLS hello bytes
    [b"agi_x: " + b"a" * 20000 + b"\n\n"],           # oversize
    [b"agi_x: y\n" * 2000],                          # oversize, in many lines
])
async def test_environment_errors(chunks: list[bytes]) -> None:
    reader = asyncio.StreamReader()
    for chunk in chunks:
        reader.feed_data(chunk)
    reader.feed_eof()
    with pytest.raises(AgiProtocolError):
        await read_environment(reader, timeout=1.0)


async def test_environment_timeout_counts_the_whole_environment() -> None:
    reader = asyncio.StreamReader()

    async def trickle() -> None:
        for _ in range(100):
            reader.feed_data(b"a")
            await asyncio.sleep(0.01)

    feeder = asyncio.ensure_future(trickle())
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(AgiProtocolError, match="within"):
        await read_environment(reader, timeout=0.2)
    assert 0.15 < loop.time() - started < 0.5
    feeder.cancel()


@pytest.mark.parametrize(("text", "code", "result", "data", "endpos"), [
    ("200 result=1", 200, "1", None, None),
    ("200 result=4821", 200, "4821", None, None),
    ("200 result=0042", 200, "0042", None, None),
    ("200 result=1 ()", 200, "1", "", None),
    ("200 result=1 (1795332289.3)", 200, "1", "1795332289.3", None),
    ('200 result=1 ("Иван Петров" <+79161234567> -> 74950000014)', 200, "1",
     '"Иван Петров" <+79161234567> -> 74950000014', None),
    ("200 result=1 (a (b) c) endpos=12", 200, "1", "a (b) c", 12),
    ("200 result=1 (x) endpos=5)", 200, "1", "x) endpos=5", None),
    ("200 result=0 endpos=8000", 200, "0", None, 8000),
    ("200 result=-1 endpos=0", 200, "-1", None, 0),
    ("200 result= (timeout)", 200, "", "timeout", None),
    ("200 result=49 (dtmf) endpos=160", 200, "49", "dtmf", 160),
    ("200 result=1 (digit) digit=5 endpos=1000", 200, "1", "digit", 1000),
    ("510 Invalid or unknown command", 510, None, None, None),
    ("511 Command Not Permitted on a dead channel or intercept routine", 511, None, None, None),
    ("520 Invalid command syntax.  Proper usage not available.", 520, None, None, None),
])
def test_parse_reply(text: str, code: int, result: str | None, data: str | None,
                     endpos: int | None) -> None:
    reply = parse_reply(text)
    assert (reply.code, reply.result, reply.data, reply.endpos, reply.text) == (
        code, result, data, endpos, text)


@pytest.mark.parametrize("text", ["", "HANGUP", "hello", "20 result=1"])
def test_parse_reply_rejects_non_replies(text: str) -> None:
    with pytest.raises(AgiProtocolError):
        parse_reply(text)


# --- AgiChannel over a real TCP connection ---------------------------------

Pair = tuple[AgiChannel, asyncio.StreamReader, asyncio.StreamWriter]


@pytest.fixture
async def pair() -> AsyncIterator[Pair]:
    """A connected (channel on the server side, client reader, client writer)."""
    accepted: asyncio.Future[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = (
        asyncio.get_running_loop().create_future())
    server = await asyncio.start_server(
        lambda r, w: accepted.set_result((r, w)), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client_reader, client_writer = await asyncio.open_connection("127.0.0.1", port)
    reader, writer = await accepted
    env = {"agi_network_script": "/track?x=1&y=a%20b&flag", "agi_arg_1": "749",
           "agi_arg_2": "", "agi_arg_4": "skipped"}
    yield AgiChannel(reader, writer, env), client_reader, client_writer
    writer.close()
    client_writer.close()
    server.close()
    await server.wait_closed()


async def test_channel_script_query_args(pair: Pair) -> None:
    channel, *_ = pair
    assert channel.script == "track"
    assert channel.query == {"x": "1", "y": "a b", "flag": ""}
    assert channel.args == ["749", ""]
    assert channel.hung_up is False


async def answer(client: tuple[asyncio.StreamReader, asyncio.StreamWriter], reply: bytes) -> bytes:
    """Read one command line as Asterisk would, then write `reply` (possibly several lines)."""
    reader, writer = client
    line = await reader.readline()
    writer.write(reply)
    await writer.drain()
    return line


async def test_command_skips_100_trying_and_notes_inline_hangup(pair: Pair) -> None:
    channel, *client = pair
    task = asyncio.ensure_future(channel.command("STREAM FILE beep \"\""))
    sent = await answer(client, b"HANGUP\n100 result=0 Trying...\n200 result=0 endpos=8000\n")
    reply = await task
    assert sent == b'STREAM FILE beep ""\n'
    assert (reply.code, reply.result, reply.endpos, reply.text) == (
        200, "0", 8000, "200 result=0 endpos=8000")
    assert channel.hung_up is True


async def test_command_reads_crlf_and_multiline_520(pair: Pair) -> None:
    channel, *client = pair
    task = asyncio.ensure_future(channel.command("GET DATA"))
    await answer(client, b"520-Invalid command syntax.  Proper usage follows:\r\n")
    await asyncio.sleep(0.02)  # the rest comes later, as in capture D
    client[1].write(b"Usage text (with <markup>).\n520 End of proper usage.\n200 result=0\n")
    reply = await task
    assert reply.code == 520
    assert reply.text == ("520-Invalid command syntax.  Proper usage follows:\n"
                          "Usage text (with <markup>).\n520 End of proper usage.")
    assert (await channel.command("NOOP")).text == "200 result=0"  # still aligned


@pytest.mark.parametrize("line", ["A\nB", "A\rB", "A\x00B", "X" * 3000])
async def test_command_rejects_unsendable_lines(pair: Pair, line: str) -> None:
    channel, *_ = pair
    with pytest.raises(ValueError):
        await channel.command(line)


async def test_command_timeout_leaves_channel_refusing(pair: Pair) -> None:
    channel, client_reader, _ = pair
    with pytest.raises(AgiProtocolError, match="no reply"):
        await channel.command("ANSWER", timeout=0.05)
    assert await client_reader.readline() == b"ANSWER\n"
    with pytest.raises(AgiProtocolError, match="out of step"):
        await channel.command("NOOP")


async def test_command_eof_mid_dialogue(pair: Pair) -> None:
    channel, client_reader, client_writer = pair
    task = asyncio.ensure_future(channel.command("ANSWER"))
    await client_reader.readline()
    client_writer.write(b"200 res")
    client_writer.close()
    with pytest.raises(AgiProtocolError):
        await task


async def test_finish_half_closes_at_once(pair: Pair) -> None:
    channel, client_reader, client_writer = pair
    await channel.finish()
    assert channel.finished
    assert await asyncio.wait_for(client_reader.read(), 1.0) == b""  # Asterisk sees EOF
    with pytest.raises(RuntimeError):
        await channel.command("NOOP")
