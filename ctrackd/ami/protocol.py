"""panoramisk's AMI protocol and Manager, adapted to a link we own.

panoramisk 1.4 parses AMI well and matches responses to actions, but some of
its behaviour loses data or hides faults (see shared/ASTERISK.md). This
module keeps its parsing and its action bookkeeping and replaces the rest:

- bytes are decoded with an incremental UTF-8 decoder, so a character split
  across two TCP reads (``Яндекс``) survives;
- a message is only trimmed of CR/LF, so an empty header at the end of a
  message (``BridgeId: ``) is kept as ``""`` instead of being dropped;
- one bad message is logged and skipped instead of killing the connection;
- reconnecting, pinging and re-sending unanswered actions are switched off:
  ``AmiConnection`` does all of that itself, with backoff and timeouts.

Nothing here knows about queues or markers: it calls back its owner.
"""

from __future__ import annotations

import asyncio
import codecs
from collections.abc import Callable
from typing import Any

from panoramisk.actions import Action
from panoramisk.ami_protocol import AMIProtocol
from panoramisk.manager import Manager
from panoramisk.message import Message

EOM = "\r\n\r\n"
BANNER = "Asterisk Call Manager/"
# A peer that never ends a message must not grow our buffer forever.
MAX_BUFFERED_CHARS = 1 << 20


class AmiProtocol(AMIProtocol):
    """One TCP connection to Asterisk; created by `LinkManager.open`."""

    def __init__(self, manager: LinkManager) -> None:
        super().__init__()
        self._manager = manager

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        # Wired here, not after create_connection() returns as panoramisk
        # does: the banner can arrive before the awaiting coroutine resumes.
        manager = self._manager
        self.factory = manager
        self.log = manager.log
        self.config = manager.config
        self.encoding = "utf-8"  # actions may carry Cyrillic too
        manager.protocol = self
        manager.responses = self.responses
        # "replace", not panoramisk's "ignore": a bad byte shows as U+FFFD.
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._buffer = ""
        self.last_received = asyncio.get_running_loop().time()

    def data_received(self, data: bytes) -> None:  # type: ignore[override]
        # Any byte proves the peer alive: the watchdog reads this.
        self.last_received = asyncio.get_running_loop().time()
        self._buffer += self._decoder.decode(data)
        if self.version is None and self._buffer.startswith(BANNER) and "\r\n" in self._buffer:
            self.version = self._buffer.partition("\r\n")[0][len(BANNER):]
        *messages, self._buffer = self._buffer.split(EOM)
        for raw in messages:
            self._handle_raw(raw)
        if len(self._buffer) > MAX_BUFFERED_CHARS:
            self._manager.slog.error("ami_message_too_long", chars=len(self._buffer))
            self._manager.drop("message_too_long")

    def _handle_raw(self, raw: str) -> None:
        # Most of a busy PBX's events mean nothing to the owner: the profile
        # of the AMI path had panoramisk's Message.from_line at 75 % of the
        # time, so an event the owner does not want is dropped before it is
        # parsed. Anything with an ActionID (answers to our actions) is kept.
        wanted = self._manager.wanted
        if (wanted is not None and raw.startswith("Event: ") and "\r\nActionID: " not in raw
                and not wanted(raw)):
            self._manager.skipped += 1
            return
        # One boundary per message: a message panoramisk cannot digest is
        # logged and skipped; the rest of the chunk is still delivered.
        try:
            message = Message.from_line(raw.strip("\r\n"))
            if message is not None:
                self._manager.before_message(message)
                self.handle_message(message)
        except Exception:
            # only the first line (Event: X): the rest may hold caller numbers
            first_line = raw.strip().partition("\r\n")[0][:80]
            self._manager.slog.exception("ami_message_failed", first_line=first_line)

    def connection_lost(self, exc: BaseException | Message | None) -> None:
        # panoramisk calls this itself with the Shutdown event as `exc`.
        if not self.closed:
            self.close()
            self._manager.link_lost(exc)


class ListAction(Action):
    """An action whose answer is a list of events (CoreShowChannels, Status).

    panoramisk guesses "list or not" from the first answer's wording
    (EventList, "will follow", ...), and one of its guesses raises KeyError
    inside data_received. Ours is simpler: a successful first answer opens a
    list that the first ``...Complete`` event closes; an error answer is
    the whole answer, so an error never leaves the caller waiting.
    """

    @property
    def multi(self) -> bool:
        return bool(self.responses[0].success)


def describe_loss(exc: BaseException | Message | None) -> str:
    """A short reason for a lost link, for markers and logs."""
    if exc is None:
        return "closed_by_peer"
    if isinstance(exc, Message):
        return "asterisk_shutdown"
    return f"{type(exc).__name__}: {exc}"


class LinkManager(Manager):
    """A panoramisk Manager whose connect/retry/ping machinery is unused.

    `open()` makes one connection; when it is lost, `on_lost(reason)` is
    called once and nothing is scheduled: the owner decides when to retry.
    """

    def __init__(
        self,
        *,
        host: str,
        port: int,
        on_event: Callable[[Manager, Message], None],
        on_lost: Callable[[str], None],
        before_message: Callable[[Message], None],
        slog: Any,
        wanted: Callable[[str], bool] | None = None,
    ) -> None:
        super().__init__(
            host=host, port=port, encoding="utf-8",
            loop=asyncio.get_running_loop(),
            protocol_factory=lambda: AmiProtocol(self),
        )
        # panoramisk re-sends unanswered actions on the next FullyBooted. An
        # action whose caller was told it failed must never run later (think
        # Originate): AmiConnection fails every pending future on a loss, which
        # panoramisk would skip, and this hook and that list go too.
        self.callbacks.clear()
        self.patterns.clear()
        self.register_event("*", on_event)
        self.before_message = before_message
        self.slog = slog
        self.wanted = wanted
        self.skipped = 0  # events dropped unparsed by `wanted`
        self._on_lost = on_lost

    async def open(self) -> AmiProtocol:
        """Connect once (no retry); raises OSError like create_connection."""
        assert self.loop is not None
        _, protocol = await self.loop.create_connection(
            self.config["protocol_factory"], self.config["host"], self.config["port"])
        self._connected = True
        return protocol  # type: ignore[return-value]

    def link_lost(self, exc: BaseException | Message | None) -> None:
        # Replaces Manager.connection_lost, which would schedule its own
        # reconnect every 2 s.
        self._connected = False
        self.awaiting_actions.clear()
        self._on_lost(describe_loss(exc))

    def drop(self, reason: str) -> None:
        """Abort the connection now (dead peer: do not wait for a flush)."""
        protocol = self.protocol
        if protocol is None or protocol.closed:
            return
        protocol.close()
        protocol.transport.abort()
        self._connected = False
        self.awaiting_actions.clear()
        self._on_lost(reason)
