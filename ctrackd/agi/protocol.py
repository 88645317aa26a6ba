"""The FastAGI wire format: the environment, one command, one reply. No routing.

Why our own: panoramisk's FastAGI server spins forever on a peer that closes
before the empty line, shifts every reply by one after an inline `HANGUP`,
reads half of a multi-line 520 and loses `?query` (see ASTERISK.md). The rules
here follow res_agi.c and the captures in `asterisk-captures/agi/`:

- the environment is `agi_name: value` lines ending with an empty line;
- each command is one line and gets one reply: `200 result=N[ (data)][ endpos=N]`,
  `510 ...`, `511 ...`, `520 ...` or a `520-` block ending with `520 End of proper usage.`;
  `100 result=0 Trying...` may come first (the real reply follows);
- Asterisk writes `HANGUP` on its own line whenever the channel hangs up, which
  can be in front of the reply to the command in flight; the reply still follows.

Lines are decoded as UTF-8 per whole line (never per TCP chunk, so a Cyrillic
character split across two reads survives); invalid bytes inside a value become
U+FFFD rather than costing the call, while a line that is not `agi_name: value`
at all is garbage and ends the session.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from urllib.parse import parse_qsl

from ctrackd.agi.commands import MAX_LINE_BYTES


class AgiProtocolError(Exception):
    """The peer broke the FastAGI protocol: EOF, timeout, oversize, garbage."""


_ENV_NAME = re.compile(r"agi_[A-Za-z0-9_]+")
_STATUS = re.compile(r"(\d{3})([ -])(.*)")
_RESULT = re.compile(r"result=(\S*)(?: (.*))?")
_ENDPOS = re.compile(r"(.*?) ?endpos=(-?\d+)")
_PAREN_FIRST = re.compile(r"\(([^)]*)\)")
_MAX_USAGE_CHARS = 65536


async def _read_line(reader: asyncio.StreamReader) -> bytes:
    """One line without its `\\n`/`\\r\\n`; AgiProtocolError on EOF or an overlong line."""
    try:
        raw = await reader.readline()
    except ValueError as exc:  # the StreamReader limit: a line longer than its buffer
        raise AgiProtocolError("line too long") from exc
    if not raw.endswith(b"\n"):
        raise AgiProtocolError("connection closed mid-dialogue")
    return raw[:-2] if raw.endswith(b"\r\n") else raw[:-1]


async def read_environment(reader: asyncio.StreamReader, *, timeout: float,
                           max_bytes: int = 16384) -> dict[str, str]:
    """Read `agi_name: value` lines up to the empty line, within `timeout` in all.

    The one deadline covers the whole environment, so a peer that trickles a
    byte at a time costs at most `timeout`; `max_bytes` bounds its memory.

    Asterisk ends lines with `\n` alone: then the rest of the environment is
    taken in one `readuntil` and split in one pass (the track route's profile
    showed 26 awaited readline() calls per call near the top). A peer that
    uses `\r\n` is read line by line.
    """
    try:
        async with asyncio.timeout(timeout):
            first = await _read_line_raw(reader)
            if first.endswith(b"\r\n") or first == b"\n":
                return await _read_env_lines(reader, first, max_bytes)
            try:
                rest = await reader.readuntil(b"\n\n")
            except asyncio.IncompleteReadError as exc:
                raise AgiProtocolError("connection closed mid-dialogue") from exc
            except asyncio.LimitOverrunError as exc:
                raise AgiProtocolError(f"environment larger than {max_bytes} bytes") from exc
            block = first + rest
            if len(block) > max_bytes:
                raise AgiProtocolError(f"environment larger than {max_bytes} bytes")
            return _parse_env_block(block[:-2].split(b"\n"))
    except TimeoutError:
        raise AgiProtocolError(f"environment not complete within {timeout:g} s") from None
    except OSError as exc:  # a reset (RST) or a dead socket: the peer is gone
        raise AgiProtocolError(f"connection lost: {exc!r}") from None


async def _read_line_raw(reader: asyncio.StreamReader) -> bytes:
    try:
        raw = await reader.readline()
    except ValueError as exc:
        raise AgiProtocolError("line too long") from exc
    if not raw.endswith(b"\n"):
        raise AgiProtocolError("connection closed mid-dialogue")
    return raw


async def _read_env_lines(reader: asyncio.StreamReader, first: bytes,
                          max_bytes: int) -> dict[str, str]:
    """The slow path, one line at a time (`\r\n` peers)."""
    lines, total = [first.rstrip(b"\r\n")], len(first)
    while lines[-1]:
        line = await _read_line(reader)
        total += len(line) + 1
        if total > max_bytes:
            raise AgiProtocolError(f"environment larger than {max_bytes} bytes")
        lines.append(line)
    return _parse_env_block(lines[:-1])


def _parse_env_block(lines: list[bytes]) -> dict[str, str]:
    env: dict[str, str] = {}
    for line in lines:
        name, value = _parse_env_line(line)
        env[name] = value
    return env


def _parse_env_line(line: bytes) -> tuple[str, str]:
    text = line.decode("utf-8", errors="replace")
    name, colon, value = text.partition(":")
    if not colon or not _ENV_NAME.fullmatch(name):
        raise AgiProtocolError(f"not an environment line: {text[:40]!r}")
    return name, value[1:] if value.startswith(" ") else value


@dataclass(frozen=True)
class AgiReply:
    """One reply. `result` stays text: GET DATA digits such as `0042` are not a number."""

    code: int
    result: str | None
    data: str | None
    endpos: int | None
    text: str  # the raw reply, all lines of a 520 block joined with "\n"

    @property
    def ok(self) -> bool:
        return self.code == 200


def parse_reply(text: str) -> AgiReply:
    """Parse a complete reply (first line = status line) into an AgiReply."""
    status = _STATUS.match(text)
    if status is None:
        raise AgiProtocolError(f"not an AGI reply: {text[:40]!r}")
    code = int(status.group(1))
    if code != 200:
        return AgiReply(code, None, None, None, text)
    found = _RESULT.fullmatch(status.group(3))
    if found is None:
        return AgiReply(code, None, None, None, text)
    data, endpos = _split_rest(found.group(2))
    return AgiReply(code, found.group(1), data, endpos, text)


def _split_rest(rest: str | None) -> tuple[str | None, int | None]:
    """`(data)`, `(data) endpos=N`, `endpos=N`, or rarer shapes (`(dtmf) digit=1 endpos=N`).

    Data may itself hold parentheses and spaces (GET FULL VARIABLE of
    `"Иван" <+7...> -> 749...`), so the whole rest in parentheses wins first.
    """
    if not rest:
        return None, None
    if rest.startswith("(") and rest.endswith(")"):
        return rest[1:-1], None
    endpos: int | None = None
    found = _ENDPOS.fullmatch(rest)
    if found is not None:
        rest, endpos = found.group(1), int(found.group(2))
        if rest.startswith("(") and rest.endswith(")"):
            return rest[1:-1], endpos
    first = _PAREN_FIRST.match(rest)
    return (first.group(1) if first else None), endpos


class AgiChannel:
    """One FastAGI connection: its environment and a strict command/reply dialogue."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 env: dict[str, str]) -> None:
        self.env = env
        self.script, self.query = _split_script(env.get("agi_network_script", ""))
        self.args = _collect_args(env)
        self.hung_up = False
        self.finished = False
        self._reader = reader
        self._writer = writer
        self._lock = asyncio.Lock()  # one command in flight, or replies would interleave
        self._broken = False

    async def command(self, line: str, *, timeout: float | None = None) -> AgiReply:
        """Send one command line and return its reply (inline HANGUPs noted and skipped)."""
        if "\n" in line or "\r" in line or "\x00" in line:
            raise ValueError("an AGI command must be one line without NUL")
        data = line.encode("utf-8")
        if len(data) > MAX_LINE_BYTES:
            raise ValueError(f"AGI command longer than {MAX_LINE_BYTES} bytes")
        if self.finished:
            raise RuntimeError("command() after finish()")
        async with self._lock:
            if self._broken:  # a reply we stopped waiting for may still arrive: no alignment
                raise AgiProtocolError("channel out of step after an earlier error")
            self._broken = True
            try:
                async with asyncio.timeout(timeout):
                    self._writer.write(data + b"\n")
                    await self._writer.drain()
                    reply = await self._read_reply()
            except TimeoutError:
                raise AgiProtocolError(f"no reply within {timeout} s to {line[:30]!r}") from None
            except ConnectionError as exc:
                raise AgiProtocolError(f"connection lost: {exc!r}") from exc
            self._broken = False
            return reply

    async def _read_reply(self) -> AgiReply:
        while True:
            line = (await _read_line(self._reader)).decode("utf-8", errors="replace")
            if line == "HANGUP":
                self.hung_up = True
            elif line.startswith("100 "):
                continue  # "100 result=0 Trying...": the real reply follows
            elif line.startswith("520-"):
                return parse_reply(await self._read_usage_block(line))
            else:
                return parse_reply(line)

    async def _read_usage_block(self, first: str) -> str:
        lines, size = [first], len(first)
        while not lines[-1].startswith("520 "):
            lines.append((await _read_line(self._reader)).decode("utf-8", errors="replace"))
            size += len(lines[-1]) + 1
            if size > _MAX_USAGE_CHARS:  # real usage texts are a few hundred bytes
                raise AgiProtocolError("520 usage block without an end")
        return "\n".join(lines)

    async def finish(self) -> None:
        """Half-close: Asterisk sees EOF at once and sets AGISTATUS=SUCCESS.

        Asterisk then writes a last `HANGUP` to us; reading that is the
        server's job (in the background), so the route is not delayed by it.
        """
        if self.finished:
            return
        self.finished = True
        if self._writer.can_write_eof() and not self._writer.is_closing():
            self._writer.write_eof()


def _split_script(raw: str) -> tuple[str, dict[str, str]]:
    """`agi_network_script` is everything after the host's `/`, query string included."""
    path, _, query = raw.partition("?")
    return path.lstrip("/"), dict(parse_qsl(query, keep_blank_values=True))


def _collect_args(env: dict[str, str]) -> list[str]:
    args: list[str] = []
    while f"agi_arg_{len(args) + 1}" in env:
        args.append(env[f"agi_arg_{len(args) + 1}"])
    return args
