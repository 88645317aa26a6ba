"""The HTTP side: the website asks for a visitor's number and promo code here.

Off unless the config has a `web:` section. Endpoints (routes.py):
- `GET  /ctrack.js`                       the snippet (docs/snippet.md)
- `POST /v1/sessions`                     visit in, {session_id, number, code, ...} out
- `POST /v1/sessions/{id}/heartbeat`      keeps the number held; 404 when gone
- `GET  /healthz`                         liveness for a load balancer

It faces the internet (behind nginx with TLS, see docs/install.md), so:
CORS only for the configured site origins, a token bucket per client
address, bounds on the URL, the headers, the body and the time a request
may take, JSON errors with clear messages and never a traceback, and
nothing of a session leaves the server but its id, number and code.

This module is the listener and its lifecycle; a connection's HTTP is
connection.py (httptools), what a request gets is routes.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import structlog

from ctrackd.attribution.dynamic import DynamicPlan
from ctrackd.configdynamic import WebConfig
from ctrackd.web.connection import Connection
from ctrackd.web.routes import Routes

log = structlog.get_logger("ctrackd.web")

#: seconds a request (headers and body) may take to arrive; seconds an idle
#: keep-alive connection stays (an idle visitor's socket is soon given back)
BODY_SECONDS = 5.0
KEEPALIVE_SECONDS = 15.0
#: seconds between two rounds of the sweeper that enforces both
SWEEP_SECONDS = 1.0
#: seconds the replies already written get to reach their clients at stop
STOP_SECONDS = 1.0


class WebServer:
    def __init__(self, config: WebConfig, plan: Callable[[], DynamicPlan | None], *,
                 clock: Callable[[], float] = time.time) -> None:
        self._config = config
        self.routes = Routes(config, plan, clock, body_seconds=BODY_SECONDS)
        self.max_body_bytes = config.max_body_bytes
        #: the CORS headers of a reply to each configured site, encoded once
        self.cors_lines = {origin: f"Access-Control-Allow-Origin: {origin}\r\nVary: Origin\r\n"
                           .encode("latin-1") for origin in self.routes.origins}
        self.connections: set[Connection] = set()
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.address: tuple[str, int] | None = None

    def now(self) -> float:
        """The loop's monotonic clock (timeouts; the plan has its own clock)."""
        assert self._loop is not None
        return self._loop.time()

    # -- lifecycle -----------------------------------------------------------

    async def start(self) -> tuple[str, int]:
        """Bind (port 0: any free port) and return once connections are accepted."""
        self._loop = asyncio.get_running_loop()
        self._server = await self._loop.create_server(
            lambda: Connection(self), self._config.host, self._config.port)
        sockname = self._server.sockets[0].getsockname()
        self.address = (sockname[0], sockname[1])
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="web-sweeper")
        log.info("web_server_started", host=self.address[0], port=self.address[1],
                 origins=sorted(self.routes.origins))
        return self.address

    async def stop(self) -> None:
        """Stop accepting, close every connection (the replies written go out first)."""
        if self._server is None:
            return
        self._server.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        for connection in list(self.connections):
            connection.close()
        # A client that reads nothing keeps its replies unsent, and close() waits for
        # them: such connections are cut after STOP_SECONDS.
        deadline = self.now() + STOP_SECONDS
        while self.connections and self.now() < deadline:
            await asyncio.sleep(0.01)
        for connection in list(self.connections):
            connection.abort()
        await self._server.wait_closed()
        self._server = self._sweeper = None
        log.info("web_server_stopped", refused_by_rate_limit=self.routes.limiter.refused)

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_SECONDS)
            now = self.now()
            for connection in list(self.connections):
                connection.check(now, BODY_SECONDS, KEEPALIVE_SECONDS)
