"""FakeAmi: Asterisk's side of AMI, over real TCP, for tests and the simulator.

The faults our AMI client must survive live in the bytes: CRLF framing, a
UTF-8 character split across two reads, a peer that goes silent, a socket
closed mid-stream, a port that refuses connections for a while. A mock
cannot show any of that, so this is a small real server that answers in
the shapes recorded from Asterisk 22 in shared/asterisk-captures/ami/
(banner, Login, FullyBooted, SuccessfulAuth, Ping, CoreShowChannels,
Logoff, errors) and lets a test push events, raw bytes or silence.

It does not apply the Login ``Events:`` mask: whatever is emitted reaches
every logged-in client (the mask is recorded in `actions` for tests).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BANNER = "Asterisk Call Manager/11.0.0\r\n"
Pairs = Sequence[tuple[str, str]]
Headers = Pairs | Mapping[str, Any]
ChannelsProvider = Callable[[], list[list[tuple[str, str]]]]
_LOGIN_NOISE = {"FullyBooted", "SuccessfulAuth"}


def encode_message(headers: Headers) -> bytes:
    """One AMI message: ``Key: value`` lines, CRLF, an empty line.

    A Mapping value that is a list or tuple becomes a repeated header.
    """
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    lines = []
    for key, value in pairs:
        values = value if isinstance(value, (list, tuple)) else [value]
        lines.extend(f"{key}: {item}\r\n" for item in values)
    return ("".join(lines) + "\r\n").encode("utf-8")


def read_capture(path: str | Path, *, skip_login: bool = False) -> list[list[tuple[str, str]]]:
    """The messages of a raw capture (.txt), headers in order, repeats kept.

    Banner lines are dropped (capture 17 has two). With `skip_login`, the
    login answer, FullyBooted and SuccessfulAuth go too: FakeAmi sends its
    own when a client logs in.
    """
    text = Path(path).read_bytes().decode("utf-8")
    messages = []
    for block in text.split("\r\n\r\n"):
        lines = [line for line in block.split("\r\n")
                 if line and not line.startswith("Asterisk Call Manager/")]
        if not lines:
            continue
        headers = [(key, value) for key, _, value in (line.partition(": ") for line in lines)]
        if skip_login and _is_login_noise(headers):
            continue
        messages.append(headers)
    return messages


def _is_login_noise(headers: Pairs) -> bool:
    found = dict(headers)
    return (found.get("Event") in _LOGIN_NOISE
            or found.get("Message") == "Authentication accepted")


def _get(message: Mapping[str, Any], name: str) -> Any:
    """Header lookup ignoring case, as Asterisk does."""
    return next((v for k, v in message.items() if k.lower() == name.lower()), None)


async def _read_message(reader: asyncio.StreamReader) -> dict[str, Any] | None:
    """The next action (a repeated header becomes a list), None at EOF."""
    message: dict[str, Any] = {}
    while line := await reader.readline():
        text = line.decode("utf-8", "replace").rstrip("\r\n")
        if not text:
            if message:
                return message
            continue
        key, _, value = text.partition(":")
        key, value = key.strip(), value.strip()
        if key in message:
            old = message[key]
            message[key] = [*old, value] if isinstance(old, list) else [old, value]
        else:
            message[key] = value
    return None


def _tv(now: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}+0000"


@dataclass(eq=False)
class _Client:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # one message at a time
    logged_in: bool = False


class FakeAmi:
    """A fake Asterisk manager interface. See the module docstring."""

    def __init__(self, *, username: str = "ctrackd", secret: str = "secret",
                 host: str = "127.0.0.1", port: int = 0, fully_booted: bool = True) -> None:
        self.username, self.secret, self.host, self.port = username, secret, host, port
        self.fully_booted = fully_booted
        self.actions: list[dict[str, Any]] = []   # every action received, Secret masked
        self.silent = False                       # read everything, answer nothing
        self.channels_provider: ChannelsProvider = list
        self._server: asyncio.AbstractServer | None = None
        self._conns: set[_Client] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._booted_at = time.time()
        self._handlers: dict[str, Callable[[_Client, dict[str, Any]], Awaitable[bool]]] = {
            "login": self._on_login, "logoff": self._on_logoff,
            "ping": self._on_ping, "coreshowchannels": self._on_core_show_channels,
        }

    @property
    def clients(self) -> int:
        """Clients logged in now."""
        return sum(client.logged_in for client in self._conns)

    # -- lifecycle ---------------------------------------------------------

    async def start(self) -> int:
        """Listen; return the bound port once connections are accepted."""
        self._booted_at = time.time()
        await self.resume_listening()
        return self.port

    async def stop(self) -> None:
        self.drop_clients()
        await self.pause_listening()
        if self._tasks:  # they end on the EOF that drop_clients() caused
            await asyncio.wait(self._tasks, timeout=2)

    async def pause_listening(self) -> None:
        """Close the listening socket: new connections are refused."""
        if self._server is not None:
            self._server.close()  # not wait_closed(): on 3.12 it waits for clients
            self._server = None

    async def resume_listening(self) -> None:
        """Accept again, on the same port."""
        if self._server is None:
            self._server = await asyncio.start_server(self._serve, self.host, self.port)
            self.port = self._server.sockets[0].getsockname()[1]

    def drop_clients(self) -> None:
        """Close every connection abruptly, as a crashing Asterisk does."""
        for client in list(self._conns):
            client.logged_in = False
            client.writer.transport.abort()
        self._conns.clear()

    async def wait_for_clients(self, n: int, timeout: float = 5.0) -> None:
        """Wait until exactly `n` clients are logged in; TimeoutError if not."""
        async with asyncio.timeout(timeout):
            while self.clients != n:
                await asyncio.sleep(0.005)

    # -- what a test pushes ------------------------------------------------

    async def emit(self, headers: Headers) -> None:
        """Send one message to every logged-in client."""
        await self.emit_raw(encode_message(headers))

    async def emit_raw(self, data: bytes, *, chunk: int | None = None) -> None:
        """Send bytes as they are, optionally `chunk` bytes per write."""
        size = chunk or len(data) or 1
        for client in [c for c in self._conns if c.logged_in]:
            try:
                async with client.lock:
                    for start in range(0, len(data), size):
                        if client.writer.transport.is_closing():
                            break  # dropped meanwhile
                        client.writer.write(data[start:start + size])
                        await client.writer.drain()
                        if chunk:
                            # Two loop turns, so that a client in this loop
                            # reads this piece alone (after one, its read is
                            # queued behind us and would get the next too).
                            await asyncio.sleep(0)
                            await asyncio.sleep(0)
            except ConnectionError:
                client.logged_in = False

    # -- one client --------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        client = _Client(reader, writer)
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(client)
        self._tasks.add(task)
        try:
            writer.write(BANNER.encode())
            while (message := await _read_message(reader)) is not None:
                self.actions.append({k: ("********" if k.lower() == "secret" else v)
                                     for k, v in message.items()})
                if not self.silent and not await self._answer(client, message):
                    break
        except ConnectionError:
            pass
        finally:
            client.logged_in = False
            self._conns.discard(client)
            self._tasks.discard(task)
            writer.close()  # flushes an answer (Goodbye, Authentication failed) first

    async def _answer(self, client: _Client, message: dict[str, Any]) -> bool:
        """Answer one action; False closes the connection."""
        name = str(_get(message, "Action") or "")
        handler = self._handlers.get(name.lower())
        if not client.logged_in and name.lower() not in ("login", "logoff"):
            await self._send(client, self._response(message, "Error", Message="Permission denied"))
            return True
        if handler is None:
            await self._send(client, self._response(message, "Error", Message=(
                f"Invalid/unknown command: {name}."
                " Use Action: ListCommands to show available commands.")))
            return True
        return await handler(client, message)

    async def _send(self, client: _Client, *messages: Headers) -> None:
        async with client.lock:
            client.writer.write(b"".join(encode_message(m) for m in messages))
            await client.writer.drain()

    @staticmethod
    def _response(message: dict[str, Any], status: str, **headers: str) -> Pairs:
        action_id = _get(message, "ActionID")
        return [("Response", status), *([("ActionID", action_id)] if action_id else []),
                *headers.items()]

    # -- actions (the shapes of the captures) ------------------------------

    async def _on_login(self, client: _Client, message: dict[str, Any]) -> bool:
        if _get(message, "Username") != self.username or _get(message, "Secret") != self.secret:
            await self._send(client, self._response(message, "Error",
                                                    Message="Authentication failed"))
            return False  # Asterisk hangs up after a failed login
        now = time.time()
        replies: list[Headers] = [
            self._response(message, "Success", Message="Authentication accepted")]
        if self.fully_booted:
            uptime = str(int(now - self._booted_at))
            replies.append([("Event", "FullyBooted"), ("Privilege", "system,all"),
                            ("Uptime", uptime), ("LastReload", uptime),
                            ("Status", "Fully Booted")])
        local = client.writer.get_extra_info("sockname")
        peer = client.writer.get_extra_info("peername")
        replies.append([
            ("Event", "SuccessfulAuth"), ("Privilege", "security,all"), ("Timestamp", f"{now:.6f}"),
            ("EventTV", _tv(now)), ("Severity", "Informational"), ("Service", "AMI"),
            ("EventVersion", "1"), ("AccountID", self.username), ("SessionID", hex(id(client))),
            ("LocalAddress", f"IPV4/TCP/{local[0]}/{local[1]}"),
            ("RemoteAddress", f"IPV4/TCP/{peer[0]}/{peer[1]}"), ("UsingPassword", "0"),
            ("SessionTV", _tv(now))])
        client.logged_in = True
        await self._send(client, *replies)  # one write, as Asterisk's come in one read
        return True

    async def _on_logoff(self, client: _Client, message: dict[str, Any]) -> bool:
        await self._send(client, self._response(message, "Goodbye",
                                                Message="Thanks for all the fish."))
        return False

    async def _on_ping(self, client: _Client, message: dict[str, Any]) -> bool:
        await self._send(client, self._response(message, "Success", Ping="Pong",
                                                Timestamp=f"{time.time():.6f}"))
        return True

    async def _on_core_show_channels(self, client: _Client, message: dict[str, Any]) -> bool:
        action_id = _get(message, "ActionID")
        tag = [("ActionID", action_id)] if action_id else []
        channels = [[("Event", "CoreShowChannel"), *tag,
                     *[(k, v) for k, v in channel if k.lower() not in ("event", "actionid")]]
                    for channel in self.channels_provider()]
        await self._send(
            client,
            self._response(message, "Success", EventList="start", Message="Channels will follow"),
            *channels,
            [("Event", "CoreShowChannelsComplete"), *tag, ("EventList", "Complete"),
             ("ListItems", str(len(channels)))])
        return True
