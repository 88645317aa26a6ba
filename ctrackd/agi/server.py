"""AgiServer: the asyncio FastAGI listener, its route table, its bounds.

Every call waits on this server before it rings, so a bad peer or a broken
route must cost only its own session, and whenever we cannot answer properly
Asterisk must learn it at once and take the dialplan's fallback path. The tool
for that is res_agi.c `run_agi()`: a line beginning with `failure` sets
AGISTATUS=FAILURE; EOF (our half-close) sets AGISTATUS=SUCCESS.

One error boundary per connection: an exception in a route is logged with its
script and uniqueid and the server goes on serving. Bounds: `max_sessions`
(extras are refused at once, never queued), `env_timeout` (a peer that
trickles the environment), `session_timeout` (a route that hangs; a route
that talks to the caller, such as a promo line's prompt, may ask for more for
one session through its `session_limit(channel)`). After a
session we half-close and read until Asterisk's final `HANGUP` and EOF in the
background, bounded, so the socket closes cleanly instead of with a reset.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import structlog

from ctrackd.agi.protocol import AgiChannel, AgiProtocolError, read_environment
from ctrackd.metrics import Metrics

Route = Callable[[AgiChannel], Awaitable[None]]

_FAILURE = b"failure\n"
_DRAIN_SECONDS = 2.0  # Asterisk answers our EOF with HANGUP + EOF within milliseconds
_CHUNK = 4096


@dataclass
class AgiCounters:
    served: int = 0     # the route returned normally
    failed: int = 0     # bad environment, unknown script, route error or timeout
    rejected: int = 0   # over max_sessions (or arriving during stop)


@dataclass
class _Session:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    channel: AgiChannel | None = None
    log: Any = None

    @property
    def finished(self) -> bool:
        return self.channel is not None and self.channel.finished


class AgiServer:
    """FastAGI on host:port; `routes` maps a script name (`track`) to a coroutine."""

    def __init__(self, routes: Mapping[str, Route], *, host: str, port: int,
                 max_sessions: int = 256, session_timeout: float = 10.0,
                 env_timeout: float = 2.0, logger: Any = None,
                 metrics: Metrics | None = None) -> None:
        self._routes = dict(routes)
        self._host, self._port = host, port
        self._max_sessions = max_sessions
        self._session_timeout = session_timeout
        self._env_timeout = env_timeout
        self._log = logger if logger is not None else structlog.get_logger("ctrackd.agi")
        self.counters = AgiCounters()
        self._metrics = metrics  # the latency histogram; the counters above are read at scrape
        self._server: asyncio.Server | None = None
        self._sessions: set[asyncio.Task[Any]] = set()
        self._drains: set[asyncio.Task[None]] = set()
        self._stopping = False

    @property
    def active(self) -> int:
        """Sessions in progress (not counting background drains)."""
        return len(self._sessions)

    async def start(self) -> tuple[str, int]:
        """Bind and listen; returns (host, port) once connections are accepted."""
        self._server = await asyncio.start_server(self._on_connect, self._host, self._port)
        host, port = self._server.sockets[0].getsockname()[:2]
        self._log.info("agi_server_started", host=host, port=port)
        return host, port

    async def stop(self, grace: float = 5.0) -> int:
        """Stop accepting, let sessions finish within `grace`, cancel the rest.

        Returns how many sessions were cancelled. Background drains also get
        what is left of `grace` and are then cut (they only wait for EOF).
        """
        if self._server is None:
            return 0
        self._stopping = True
        self._server.close()
        deadline = asyncio.get_running_loop().time() + grace
        cancelled = await _finish_within(set(self._sessions), deadline)
        drains_cut = await _finish_within(set(self._drains), deadline)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):  # 3.12+ waits for every connection here
                await self._server.wait_closed()
        self._server = None
        self._log.info("agi_server_stopped", sessions_cancelled=cancelled,
                       drains_cancelled=drains_cut, **vars(self.counters))
        return cancelled

    async def _on_connect(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        session = _Session(reader, writer, log=self._log)
        if self._stopping or len(self._sessions) >= self._max_sessions:
            self.counters.rejected += 1
            self._log.warning("agi_session_rejected", active=len(self._sessions),
                              max_sessions=self._max_sessions, stopping=self._stopping)
            self._end(session, failure=True)
            return
        # The session runs in a task of its own that stop() may cancel. The
        # connection's task (asyncio's) must not end cancelled: Python 3.11's
        # StreamReaderProtocol then prints a CancelledError traceback.
        task = asyncio.create_task(self._serve(session))
        self._sessions.add(task)
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            outer = asyncio.current_task()
            if outer is not None and outer.cancelling():
                task.cancel()  # the connection itself is cancelled (loop shutdown): pass it on
                _abandon(session)
                raise
            _abandon(session)  # stop() ran out of grace: fallback path, then let it through
        finally:
            self._sessions.discard(task)

    async def _serve(self, session: _Session) -> None:
        started = asyncio.get_running_loop().time()
        try:
            env = await read_environment(session.reader, timeout=min(
                self._env_timeout, self._session_timeout))
        except AgiProtocolError as exc:
            self._fail(session, "agi_environment_invalid", error=str(exc))
            return
        channel = session.channel = AgiChannel(session.reader, session.writer, env)
        session.log = self._log.bind(script=channel.script, uniqueid=env.get("agi_uniqueid"))
        route = self._routes.get(channel.script)
        if route is None:
            self._fail(session, "agi_route_unknown")
            return
        # Most sessions are a few round trips; a route that holds the caller in
        # a dialogue (a promo line) says how long this session may take.
        session_limit = getattr(route, "session_limit", None)
        wanted = session_limit(channel) if session_limit is not None else None
        seconds = max(wanted or 0.0, self._session_timeout)
        await self._run_route(session, route, started + seconds, seconds)
        if self._metrics is not None:  # a dialogue (promo line) apart: it waits on the caller
            self._metrics.agi_session(channel.script, wanted is not None,
                                      asyncio.get_running_loop().time() - started)

    async def _run_route(self, session: _Session, route: Route, deadline: float,
                         seconds: float) -> None:
        assert session.channel is not None
        timeout = asyncio.timeout_at(deadline)
        try:
            async with timeout:
                await route(session.channel)
        except TimeoutError:
            if timeout.expired():
                self._fail(session, "agi_session_timed_out", seconds=seconds)
            else:
                self._fail(session, "agi_session_failed", exc_info=True)
        except Exception:
            self._fail(session, "agi_session_failed", exc_info=True)
        else:
            self.counters.served += 1
            session.log.debug("agi_session_served", hung_up=session.channel.hung_up)
            self._end(session, failure=False)

    def _fail(self, session: _Session, event: str, **context: Any) -> None:
        """Count and log a failed session; Asterisk gets `failure` unless we already finished."""
        self.counters.failed += 1
        level = session.log.error if event == "agi_session_failed" else session.log.warning
        level(event, answered=session.finished, **context)
        self._end(session, failure=True)

    def _end(self, session: _Session, *, failure: bool) -> None:
        """Half-close (after `failure` if asked and still possible); drain in the background."""
        writer = session.writer
        if not session.finished and not writer.is_closing():
            try:
                if failure:
                    writer.write(_FAILURE)
                if writer.can_write_eof():
                    writer.write_eof()
            except OSError:
                pass  # the peer is already gone (ENOTCONN): nobody left to tell
        task = asyncio.create_task(_drain_and_close(session.reader, writer))
        self._drains.add(task)
        task.add_done_callback(self._drains.discard)


async def _drain_and_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Read until Asterisk's EOF (after its final HANGUP), bounded, then close."""
    try:
        async with asyncio.timeout(_DRAIN_SECONDS):
            while await reader.read(_CHUNK):
                pass
            writer.close()
            await writer.wait_closed()
    except (TimeoutError, OSError):
        pass  # a peer that never lets go, or resets: nothing left to tell it
    finally:
        writer.transport.abort()  # a no-op once closed; cuts a peer that never let go


def _abandon(session: _Session) -> None:
    """On cancellation: tell Asterisk `failure` if we still can, and close."""
    writer = session.writer
    if not session.finished and not writer.is_closing():
        writer.write(_FAILURE)
    writer.close()
    session.log.warning("agi_session_cancelled", answered=session.finished)


async def _finish_within(tasks: set[asyncio.Task[Any]], deadline: float) -> int:
    """Wait for `tasks` until `deadline` (loop time), cancel the rest; return how many."""
    if not tasks:
        return 0
    remaining = max(0.0, deadline - asyncio.get_running_loop().time())
    _, pending = await asyncio.wait(tasks, timeout=remaining)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    return len(pending)
