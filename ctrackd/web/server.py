"""The HTTP side: the website asks for a visitor's number and promo code here.

Off unless the config has a `web:` section. Endpoints:
- `GET  /ctrack.js`                       the snippet (docs/snippet.md)
- `POST /v1/sessions`                     visit in, {session_id, number, code, ...} out
- `POST /v1/sessions/{id}/heartbeat`      keeps the number held; 404 when gone
- `GET  /healthz`                         liveness for a load balancer

It faces the internet (behind nginx with TLS, see docs/install.md), so:
CORS only for the configured site origins, a token bucket per client
address, a bound on the body, JSON errors with clear messages and never a
traceback, and nothing of a session leaves the server but its id, number and code.
The plan (`DynamicPlan`) is pure and synchronous: handlers call it on the
event loop, no awaits in between, so no locks are needed.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web

from ctrackd.attribution.dynamic import DynamicPlan
from ctrackd.attribution.sessions import VisitError, normalise_visit
from ctrackd.configdynamic import WebConfig
from ctrackd.web.ratelimit import RateLimiter

log = structlog.get_logger("ctrackd.web")

SNIPPET = Path(__file__).resolve().parent / "static" / "ctrack.js"
#: seconds a request body may take to arrive; seconds an idle keep-alive connection stays
BODY_SECONDS = 5.0
KEEPALIVE_SECONDS = 15.0
#: seconds between two warnings that the promo codes ran out (one per request would flood)
EXHAUSTED_LOG_SECONDS = 60.0
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(status: int, message: str, **headers: str) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


class WebServer:
    def __init__(self, config: WebConfig, plan: Callable[[], DynamicPlan | None], *,
                 clock: Callable[[], float] = time.time) -> None:
        self._config = config
        self._plan = plan
        self._clock = clock
        self._origins = frozenset(config.origins)
        self._limiter = RateLimiter(per_minute=config.rate_limit.per_minute,
                                    burst=config.rate_limit.burst)
        self._snippet = SNIPPET.read_bytes()  # read once: served from memory
        self._runner: web.AppRunner | None = None
        self.address: tuple[str, int] | None = None
        self._exhausted_logged = (0, -EXHAUSTED_LOG_SECONDS)  # (count, when) at the last warning

    # -- lifecycle -----------------------------------------------------------

    async def start(self) -> tuple[str, int]:
        app = web.Application(client_max_size=self._config.max_body_bytes,
                              middlewares=[self._guard])
        app.router.add_get("/ctrack.js", self._get_snippet)
        app.router.add_get("/healthz", self._get_health)
        app.router.add_post("/v1/sessions", self._post_session)
        app.router.add_post("/v1/sessions/{session_id}/heartbeat", self._post_heartbeat)
        app.router.add_route("OPTIONS", "/v1/{tail:.*}", self._preflight)
        # keepalive_timeout: an idle visitor's connection is closed soon, so
        # sockets (shared with the AGI listener) are not held by the idle.
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False,
                                     keepalive_timeout=KEEPALIVE_SECONDS)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._config.host, self._config.port)
        await site.start()
        server = site._server  # aiohttp keeps the bound socket here; port 0 needs it
        sockname = server.sockets[0].getsockname() if server and server.sockets else (
            self._config.host, self._config.port)
        self.address = (sockname[0], sockname[1])
        log.info("web_server_started", host=self.address[0], port=self.address[1],
                 origins=list(self._origins))
        return self.address

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
            log.info("web_server_stopped", refused_by_rate_limit=self._limiter.refused)

    # -- the guard around every request ------------------------------------

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Rate limit, CORS and the one error boundary of the HTTP side."""
        wait = self._limiter.allow(self._client(request), self._clock())
        if wait:
            return self._cors(request, _error(429, "too many requests",
                                              **{"Retry-After": str(max(1, round(wait)))}))
        try:
            response = await handler(request)
        except web.HTTPRequestEntityTooLarge:
            response = _error(413, f"body larger than {self._config.max_body_bytes} bytes")
        except web.HTTPMethodNotAllowed:
            response = _error(405, "method not allowed")
        except web.HTTPNotFound:
            response = _error(404, "not found")
        except web.HTTPException as exc:
            response = _error(exc.status, exc.reason)
        except ConnectionError:  # the visitor left mid-request: nobody to answer
            raise
        except Exception:  # a bug of ours: logged, and the page keeps its office number
            log.exception("web_request_failed", path=request.path)
            response = _error(500, "internal error")
        response.headers["X-Content-Type-Options"] = "nosniff"
        return self._cors(request, response)

    def _client(self, request: web.Request) -> str:
        if self._config.trust_forwarded:
            forwarded = request.headers.get("X-Forwarded-For", "")
            if forwarded:
                return forwarded.split(",")[0].strip()[:64]
        return request.remote or "?"

    def _cors(self, request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if origin and origin in self._origins:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Vary"] = "Origin"
        return response

    def _origin_refused(self, request: web.Request) -> web.Response | None:
        """Browsers send Origin on cross-site POSTs: an unknown site gets nothing."""
        origin = request.headers.get("Origin")
        if origin is not None and origin not in self._origins:
            return _error(403, "origin not allowed")
        return None

    # -- handlers ------------------------------------------------------------

    async def _preflight(self, request: web.Request) -> web.Response:
        refused = self._origin_refused(request)
        if refused is not None:
            return refused
        return web.Response(status=204, headers={
            "Access-Control-Allow-Methods": "POST", "Access-Control-Allow-Headers": "Content-Type",
            "Access-Control-Max-Age": "600"})

    async def _get_snippet(self, request: web.Request) -> web.Response:
        return web.Response(body=self._snippet, content_type="application/javascript",
                            charset="utf-8", headers={"Cache-Control": "public, max-age=300"})

    async def _get_health(self, request: web.Request) -> web.Response:
        plan = self._plan()
        health: dict[str, Any] = {"status": "ok", "sessions": len(plan.sessions) if plan else 0}
        if plan is not None and plan.promo is not None:
            health["promo_codes"] = {"reserved": len(plan.promo), "space": plan.promo.capacity,
                                     "exhausted": plan.promo.exhausted}
        return web.json_response(health)

    async def _post_session(self, request: web.Request) -> web.Response:
        refused = self._origin_refused(request)
        if refused is not None:
            return refused
        plan = self._plan()
        if plan is None:
            return _error(503, "dynamic tracking is not configured")
        body = await self._json_body(request)
        if isinstance(body, web.Response):
            return body
        try:
            visit = normalise_visit(body)
        except VisitError as exc:
            return _error(400, str(exc))
        session, lease = plan.start_session(visit, self._clock())
        answer: dict[str, Any] = {
            "session_id": session.session_id,
            "number": lease.number if lease else None,
            "visit_number": session.visit_number,
            "heartbeat_seconds": self._config.heartbeat_seconds,
            "replace": list(self._config.replace),
        }
        if session.promo_code is not None:
            answer["code"] = session.promo_code
        elif plan.promo is not None:
            self._warn_exhausted(plan.promo.exhausted, len(plan.promo))
        return web.json_response(answer)

    def _warn_exhausted(self, count: int, reserved: int) -> None:
        """Sessions went without a code: promo.length is too short for the traffic
        (docs/promo.md). Said at most once a minute, with the running count."""
        last_count, last_time = self._exhausted_logged
        now = self._clock()
        if count > last_count and now - last_time >= EXHAUSTED_LOG_SECONDS:
            self._exhausted_logged = (count, now)
            log.warning("promo_codes_exhausted", sessions_without_code=count,
                        codes_reserved=reserved)

    async def _post_heartbeat(self, request: web.Request) -> web.Response:
        refused = self._origin_refused(request)
        if refused is not None:
            return refused
        plan = self._plan()
        session_id = request.match_info["session_id"]
        if plan is None or len(session_id) > 64 or not plan.heartbeat(session_id, self._clock()):
            return _error(404, "no such session: ask for a number again")
        return web.json_response({"ok": True})

    async def _json_body(self, request: web.Request) -> dict[str, Any] | web.Response:
        if request.content_type != "application/json":
            return _error(415, "send JSON (Content-Type: application/json)")
        try:
            async with asyncio.timeout(BODY_SECONDS):  # a body trickled in holds a socket
                raw = await request.read()
        except TimeoutError:
            return _error(408, f"the body did not arrive within {BODY_SECONDS:g} s")
        try:
            body = json.loads(raw)
        except (UnicodeDecodeError, ValueError, RecursionError):  # "[[[[..." too deep
            return _error(400, "the body is not valid JSON")
        if not isinstance(body, dict):
            return _error(400, "the body must be a JSON object")
        return body
