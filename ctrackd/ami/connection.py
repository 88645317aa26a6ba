"""AmiConnection: the AMI link the daemon keeps for as long as it runs.

Asterisk restarts, networks drop, peers go silent; the call tracker must
still see every event in order and know where it may have missed some. So
every event goes, unchanged, onto one queue owned by the consumer, with
link markers (`AmiLinkEvent`) in the SAME queue exactly where the link went
up or down (after "connected" the consumer resyncs with CoreShowChannels).
We reconnect forever (capped exponential backoff, jitter), log an outage
loudly once then rarely, drop a link on which nothing arrived for
`liveness_timeout` (panoramisk pings but never checks), and put a timeout
on every action.

Events are panoramisk `Message`s (case-insensitive dicts, plus a `content`
key). A repeated header such as ``ChanVariable`` is a ``list[str]`` when it
came twice or more but a plain ``str`` when it came once: left as is, the
translator normalises it.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from collections.abc import Callable
from typing import Any, Literal

import structlog
from panoramisk.actions import Action
from panoramisk.message import Message

from ctrackd.ami.protocol import AmiProtocol, LinkManager, ListAction

REPEAT_LOG_EVERY = 60.0  # repeat an outage line this often once the backoff is capped
STABLE_LINK = 10.0       # a link that lived this long was healthy: retry from scratch


@dataclass(frozen=True)
class AmiLinkEvent:
    """A marker in the event queue: the link went up or down (epoch `ts`)."""

    kind: Literal["connected", "disconnected"]
    ts: float
    reason: str | None = None


class AmiNotConnected(ConnectionError):
    """The link is down (or went down before the answer came)."""


class AmiActionError(Exception):
    """Asterisk answered an action with an error; `response` is its answer."""

    def __init__(self, action: str, response: Message) -> None:
        self.action, self.response = action, response
        super().__init__(f"AMI action {action} failed: {response.get('Message') or response}")


class _LoginRejected(Exception):
    """Asterisk refused our Login (wrong user or secret): retried anyway."""


class AmiConnection:
    """Owns one AMI session at a time and replaces it when it dies."""

    def __init__(
        self, *, host: str, port: int, username: str, secret: str,
        queue: asyncio.Queue[Any], events: str = "system,call,cdr,user,dtmf",
        ping_interval: float = 10.0, liveness_timeout: float = 30.0,
        action_timeout: float = 5.0, reconnect_initial: float = 0.5,
        reconnect_max: float = 30.0, logger: Any = None,
        wanted: Callable[[str], bool] | None = None,
    ) -> None:
        if queue.maxsize > 0:
            # put_nowait() on a full queue would raise inside data_received:
            # events would be lost. Backpressure is not worth that risk here.
            raise ValueError("the AMI event queue must be unbounded (maxsize=0)")
        self.host, self.port, self.username = host, port, username
        self._secret, self._queue, self._events_mask = secret, queue, events
        self._ping_interval, self._liveness_timeout = ping_interval, liveness_timeout
        self._action_timeout = action_timeout
        self._reconnect_initial, self._reconnect_max = reconnect_initial, reconnect_max
        self._log = logger or structlog.get_logger("ctrackd.ami")
        # `wanted(raw_message_text)`: False drops an event before it is parsed.
        self._wanted = wanted
        self._manager: LinkManager | None = None
        self._task: asyncio.Task[None] | None = None
        self._lost: asyncio.Future[str] | None = None
        self._pending: set[asyncio.Future[Any]] = set()
        self._login_id: str | None = None
        self._connected = self._stopping = self._ever_connected = False
        self._down_since = time.time()
        self.reconnects = 0        # links that came back after the first
        self.events_received = 0   # events put on the queue (markers not counted)

    @property
    def connected(self) -> bool:
        """True between a successful login and the loss of that link."""
        return self._connected

    @property
    def events_dropped(self) -> int:
        """Events the prefilter (`wanted`) dropped unparsed, over every link (metrics)."""
        return self._manager.skipped if self._manager is not None else 0

    async def start(self) -> None:
        """Return at once; connecting (and retrying) goes on in a task."""
        if self._task is not None:
            raise RuntimeError("AmiConnection already started")
        self._manager = LinkManager(
            host=self.host, port=self.port, on_event=self._on_event,
            on_lost=self._on_lost, before_message=self._before_message, slog=self._log,
            wanted=self._wanted)
        self._down_since = time.time()
        self._task = asyncio.create_task(self._run(), name="ami-link")
        self._task.add_done_callback(self._on_task_done)

    async def stop(self) -> None:
        """Log off, close the link, end the task. Idempotent."""
        task = self._task
        if task is None or task.done():
            return
        if self._connected and self._manager is not None and self._manager.protocol:
            self._manager.protocol.send({"Action": "Logoff"})  # courtesy; no wait
        self._stopping = True
        task.cancel()
        await asyncio.wait({task})

    async def wait_closed(self) -> None:
        """Return after stop(); raise the error that killed the link task.

        The daemon awaits this next to its other tasks: a link task that
        dies must take the daemon down loudly, not leave it half alive.
        """
        if self._task is not None:
            await asyncio.wait({self._task})
            if not self._task.cancelled() and (exc := self._task.exception()) is not None:
                raise exc

    async def action(
        self, action: dict[str, Any], *, multi: bool = False, timeout: float | None = None,
    ) -> Any:
        """Send one action and return its response `Message`.

        With `multi=True` (list actions such as CoreShowChannels) return the
        events of the list, the closing ``...Complete`` event included; the
        leading ``Response: Success`` is not part of it. Raises
        `AmiNotConnected` at once when the link is down, `AmiActionError` on
        an error answer, `TimeoutError` after `timeout` (`action_timeout`).
        """
        manager = self._manager
        if not self._connected or manager is None or manager.protocol is None:
            raise AmiNotConnected(f"AMI link to {self.host}:{self.port} is down")
        name = str(action.get("Action", "?"))
        # panoramisk mutates the action (ActionID): give it a copy.
        future = manager.send_action(ListAction(dict(action)) if multi else dict(action),
                                     as_list=None if multi else False)
        result = await self._await_answer(future, timeout)
        if isinstance(result, Message):  # a single answer (an error, for a list)
            if not result.success:
                raise AmiActionError(name, result)
            return result
        return list(result[1:])  # [Response, event, ..., ...Complete]

    async def _await_answer(self, future: asyncio.Future[Any], timeout: float | None) -> Any:
        self._pending.add(future)
        try:
            # Not wait_for(): on 3.11 it swallows a cancel (stop()) that
            # arrives when the answer is already there.
            async with asyncio.timeout(timeout or self._action_timeout):
                return await future
        finally:
            self._pending.discard(future)

    # -- callbacks from the protocol (synchronous, inside data_received) --

    def _on_event(self, _manager: Any, message: Message) -> None:
        # Trivial on purpose: an exception here would reach data_received,
        # and a coroutine would be scheduled out of order by panoramisk.
        self.events_received += 1
        self._queue.put_nowait(message)

    def _before_message(self, message: Message) -> None:
        # The login answer is handled right here, not when the awaiting
        # coroutine resumes: FullyBooted may follow in the same TCP read,
        # and "connected" must come before it in the queue.
        if self._login_id is None or message.action_id != self._login_id:
            return
        self._login_id = None
        if not message.success:
            return
        self._connected = True
        where = {"host": self.host, "port": self.port}
        if self._ever_connected:
            self.reconnects += 1
            self._log.info("ami_reconnected", **where, reconnects=self.reconnects,
                           down_for=round(time.time() - self._down_since, 1))
        else:
            self._ever_connected = True
            self._log.info("ami_connected", **where, username=self.username)
        self._queue.put_nowait(AmiLinkEvent("connected", time.time()))

    def _on_lost(self, reason: str) -> None:
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(reason)
        for future in self._pending:
            if not future.done():
                future.set_exception(AmiNotConnected(f"AMI link lost: {reason}"))

    def _on_task_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self._log.error("ami_task_failed", host=self.host, port=self.port,
                            exc_info=task.exception())

    # -- the link task --

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        base = self._reconnect_initial
        failures = 0  # failed attempts in the current outage
        logged_base, logged_at = 0.0, 0.0
        while True:
            started = loop.time()
            try:
                reason = await self._session()
            except (OSError, TimeoutError, AmiNotConnected, _LoginRejected) as exc:
                failures += 1
                delay = base * random.uniform(0.75, 1.0)
                # Loud once, then while the backoff doubles, then once a minute.
                quiet_for = loop.time() - logged_at
                if failures == 1 or base != logged_base or quiet_for >= REPEAT_LOG_EVERY:
                    self._log_failure(exc, failures, delay)
                    logged_base, logged_at = base, loop.time()
            else:
                failures = 0
                self._down_since = time.time()
                if loop.time() - started >= STABLE_LINK:
                    base = self._reconnect_initial
                delay = base * random.uniform(0.75, 1.0)
                self._log.warning("ami_disconnected", host=self.host, port=self.port,
                                  reason=reason, retry_in=round(delay, 2))
            await asyncio.sleep(delay)
            base = min(base * 2, self._reconnect_max)

    def _log_failure(self, exc: Exception, failures: int, delay: float) -> None:
        ours = isinstance(exc, (TimeoutError, AmiNotConnected, _LoginRejected)) and str(exc)
        fields: dict[str, Any] = {  # error: our words, or "ConnectionRefusedError: ..."
            "host": self.host, "port": self.port,
            "error": str(exc) if ours else f"{type(exc).__name__}: {exc}".removesuffix(": "),
            "attempts": failures, "retry_in": round(delay, 2),
            "down_for": round(time.time() - self._down_since, 1)}
        if isinstance(exc, _LoginRejected):  # never the secret, only who we were
            self._log.error("ami_login_failed", username=self.username, **fields)
        else:
            self._log.warning("ami_unreachable", **fields)

    async def _session(self) -> str:
        """Connect, log in, watch. Returns why a logged-in link ended; raises
        when it never got that far."""
        manager = self._manager
        assert manager is not None
        lost = self._lost = asyncio.get_running_loop().create_future()
        try:
            try:
                async with asyncio.timeout(self._action_timeout):
                    protocol = await manager.open()
            except TimeoutError:
                raise TimeoutError("connect timed out") from None
            await self._login(manager, lost)
            return await self._watch(manager, protocol, lost)
        finally:
            manager.drop("stopped" if self._stopping else "closed_locally")  # no-op if gone
            self._login_id = None
            if self._connected:
                self._connected = False
                reason = lost.result() if lost.done() else "closed_locally"
                self._queue.put_nowait(AmiLinkEvent("disconnected", time.time(), reason))

    async def _login(self, manager: LinkManager, lost: asyncio.Future[str]) -> None:
        if lost.done():  # closed between accept and now (capture 17 shows it)
            raise AmiNotConnected(f"closed before login: {lost.result()}")
        login = Action({"Action": "Login", "Username": self.username,
                        "Secret": self._secret, "Events": self._events_mask}, as_list=False)
        self._login_id = login.action_id
        try:
            answer = await self._await_answer(manager.send_action(login, as_list=False), None)
        except TimeoutError:
            raise TimeoutError("no answer to Login") from None
        if not answer.success:
            raise _LoginRejected(answer.get("Message") or "login rejected")

    async def _watch(self, manager: LinkManager, protocol: AmiProtocol,
                     lost: asyncio.Future[str]) -> str:
        """Ping, and drop the link when nothing at all came for too long."""
        loop = asyncio.get_running_loop()
        next_ping = loop.time() + self._ping_interval
        while not lost.done():
            now = loop.time()
            deadline = protocol.last_received + self._liveness_timeout
            if now >= deadline:
                self._log.warning("ami_liveness_lost", host=self.host, port=self.port,
                                  silent_for=round(now - protocol.last_received, 2))
                manager.drop("liveness_timeout")
                break
            if now >= next_ping:
                # Fire and forget: any answer (or event) refreshes liveness.
                manager.send_action({"Action": "Ping"}, as_list=False)
                next_ping = now + self._ping_interval
            await asyncio.wait({lost}, timeout=min(next_ping, deadline) - now)
        return lost.result()
