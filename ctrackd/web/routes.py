"""The HTTP side's routes: a request in, a reply out, whatever server carries them.

The server (`server.py`) parses HTTP and hands each complete request over as
a `Request`; `Routes.answer` applies the rules every request meets (the rate
limit, CORS, the one error boundary) and the table of endpoints, and gives
back a `Reply` with its body already encoded. The plan is pure and
synchronous, and so is this: nothing here awaits, so no request ever waits
for another and no locks are needed.

Every reply is JSON but the snippet; every error is `{"error": "..."}` with
a clear message. Replies that never change (a heartbeat's `{"ok": true}`,
the errors) are encoded once: at thousands of requests a second the
encoding is a real share of the cost (docs/web.md, "Performance").
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any

import structlog

from ctrackd.attribution.dynamic import DynamicPlan
from ctrackd.attribution.sessions import VisitError, normalise_visit
from ctrackd.configdynamic import WebConfig
from ctrackd.web.ratelimit import RateLimiter

log = structlog.get_logger("ctrackd.web")

SNIPPET = Path(__file__).resolve().parent / "static" / "ctrack.js"
JSON = "application/json; charset=utf-8"
#: seconds between two warnings that the promo codes ran out (one per request would flood)
EXHAUSTED_LOG_SECONDS = 60.0
#: the longest session id a heartbeat may name (ours are far shorter)
MAX_SESSION_ID = 64

_REASONS = {status.value: status.phrase for status in HTTPStatus}
PREFLIGHT_HEADERS = (("Access-Control-Allow-Methods", "POST"),
                     ("Access-Control-Allow-Headers", "Content-Type"),
                     ("Access-Control-Max-Age", "600"))


@dataclass(slots=True)
class Request:
    """What the routes need of an HTTP request; the server fills it in."""
    method: str
    path: str                      # percent-decoded, without the query
    client: str                    # the peer's address ("?" when unknown)
    origin: str | None = None      # the Origin header
    content_type: str = ""         # the Content-Type header as sent
    forwarded_for: str | None = None   # the X-Forwarded-For header
    body: bytes = b""
    too_large: bool = False        # the body is over web.max_body_bytes (not kept)
    late: bool = False             # the body did not arrive within the server's bound


@dataclass(frozen=True, slots=True)
class Reply:
    """A status, an encoded body and its headers; `head` is the status line and those
    headers as sent (the server adds Date, CORS and Connection)."""
    status: int
    body: bytes
    content_type: str = JSON
    headers: tuple[tuple[str, str], ...] = ()
    head: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Encoded once: the replies that never change (most of them) cost nothing more.
        lines = [f"HTTP/1.1 {self.status} {_REASONS.get(self.status, '')}",
                 f"Content-Type: {self.content_type}", f"Content-Length: {len(self.body)}",
                 "X-Content-Type-Options: nosniff"]
        lines += [f"{name}: {value}" for name, value in self.headers]
        object.__setattr__(self, "head", ("\r\n".join(lines) + "\r\n").encode("latin-1"))


def error(status: int, message: str, *headers: tuple[str, str]) -> Reply:
    return Reply(status, json.dumps({"error": message}).encode(), headers=headers)


def json_reply(value: dict[str, Any]) -> Reply:
    return Reply(200, json.dumps(value).encode())


OK = Reply(200, b'{"ok": true}')
NOT_FOUND = error(404, "not found")
NO_SESSION = error(404, "no such session: ask for a number again")
ORIGIN_REFUSED = error(403, "origin not allowed")
NOT_JSON = error(415, "send JSON (Content-Type: application/json)")
BAD_JSON = error(400, "the body is not valid JSON")
NOT_AN_OBJECT = error(400, "the body must be a JSON object")
NOT_CONFIGURED = error(503, "dynamic tracking is not configured")
INTERNAL = error(500, "internal error")


def method_not_allowed(*allowed: str) -> Reply:
    return error(405, "method not allowed", ("Allow", ", ".join(allowed)))


class Routes:
    """The endpoints (docs/web.md) and the rules around them."""

    def __init__(self, config: WebConfig, plan: Callable[[], DynamicPlan | None],
                 clock: Callable[[], float], *, body_seconds: float) -> None:
        self._config = config
        self._plan = plan
        self._clock = clock
        self.origins = frozenset(config.origins)
        self.limiter = RateLimiter(per_minute=config.rate_limit.per_minute,
                                   burst=config.rate_limit.burst)
        self._snippet = Reply(200, SNIPPET.read_bytes(),  # read once: served from memory
                              "application/javascript; charset=utf-8",
                              (("Cache-Control", "public, max-age=300"),))
        self._replace = list(config.replace)
        self._too_large = error(413, f"body larger than {config.max_body_bytes} bytes")
        self._late = error(408, f"the body did not arrive within {body_seconds:g} s")
        self._exhausted_logged = (0, -EXHAUSTED_LOG_SECONDS)  # (count, when) at the last warning

    def answer(self, request: Request) -> Reply:
        """Rate limit, then the endpoint; the one error boundary of the HTTP side.

        The server adds the Date and, for a configured site's Origin only, the
        CORS headers (`origins`).
        """
        wait = self.limiter.allow(self.client(request), self._clock())
        if wait:
            return error(429, "too many requests", ("Retry-After", str(max(1, round(wait)))))
        try:
            return self._route(request)
        except Exception:  # a bug of ours: logged, and the page keeps its office number
            log.exception("web_request_failed", path=request.path)
            return INTERNAL

    def client(self, request: Request) -> str:
        if self._config.trust_forwarded and request.forwarded_for:
            return request.forwarded_for.split(",")[0].strip()[:64]
        return request.client

    # -- the table ------------------------------------------------------------

    def _route(self, request: Request) -> Reply:
        path, method = request.path, request.method
        if path.startswith("/v1/"):
            if method == "OPTIONS":
                return self._preflight(request)
            if path == "/v1/sessions":
                if method == "POST":
                    return self._post_session(request)
                return method_not_allowed("POST", "OPTIONS")
            parts = path.split("/")  # "", "v1", "sessions", id, "heartbeat"
            if len(parts) == 5 and parts[2] == "sessions" and parts[4] == "heartbeat" and parts[3]:
                if method == "POST":
                    return self._post_heartbeat(request, parts[3])
                return method_not_allowed("POST", "OPTIONS")
            return method_not_allowed("OPTIONS")  # only the preflight knows every /v1/ path
        if path == "/ctrack.js" or path == "/healthz":
            if method == "GET" or method == "HEAD":
                return self._snippet if path == "/ctrack.js" else self._health()
            return method_not_allowed("GET", "HEAD")
        return NOT_FOUND

    # -- endpoints --------------------------------------------------------------

    def _origin_refused(self, request: Request) -> bool:
        """Browsers send Origin on cross-site POSTs: an unknown site gets nothing."""
        return request.origin is not None and request.origin not in self.origins

    def _preflight(self, request: Request) -> Reply:
        if self._origin_refused(request):
            return ORIGIN_REFUSED
        return Reply(204, b"", headers=PREFLIGHT_HEADERS)

    def _health(self) -> Reply:
        plan = self._plan()
        health: dict[str, Any] = {"status": "ok", "sessions": len(plan.sessions) if plan else 0}
        if plan is not None and plan.promo is not None:
            health["promo_codes"] = {"reserved": len(plan.promo), "space": plan.promo.capacity,
                                     "exhausted": plan.promo.exhausted}
        return json_reply(health)

    def _post_session(self, request: Request) -> Reply:
        if self._origin_refused(request):
            return ORIGIN_REFUSED
        plan = self._plan()
        if plan is None:
            return NOT_CONFIGURED
        if request.content_type.split(";", 1)[0].strip().lower() != "application/json":
            return NOT_JSON
        if request.too_large:
            return self._too_large
        if request.late:
            return self._late
        try:
            body = json.loads(request.body)
        except (UnicodeDecodeError, ValueError, RecursionError):  # "[[[[..." too deep
            return BAD_JSON
        if not isinstance(body, dict):
            return NOT_AN_OBJECT
        try:
            visit = normalise_visit(body)
        except VisitError as exc:
            return error(400, str(exc))
        session, lease = plan.start_session(visit, self._clock())
        answer: dict[str, Any] = {
            "session_id": session.session_id,
            "number": lease.number if lease else None,
            "visit_number": session.visit_number,
            "heartbeat_seconds": self._config.heartbeat_seconds,
            "replace": self._replace,
        }
        if session.promo_code is not None:
            answer["code"] = session.promo_code
        elif plan.promo is not None:
            self._warn_exhausted(plan.promo.exhausted, len(plan.promo))
        return json_reply(answer)

    def _warn_exhausted(self, count: int, reserved: int) -> None:
        """Sessions went without a code: promo.length is too short for the traffic
        (docs/promo.md). Said at most once a minute, with the running count."""
        last_count, last_time = self._exhausted_logged
        now = self._clock()
        if count > last_count and now - last_time >= EXHAUSTED_LOG_SECONDS:
            self._exhausted_logged = (count, now)
            log.warning("promo_codes_exhausted", sessions_without_code=count,
                        codes_reserved=reserved)

    def _post_heartbeat(self, request: Request, session_id: str) -> Reply:
        if self._origin_refused(request):
            return ORIGIN_REFUSED
        plan = self._plan()
        if (plan is None or len(session_id) > MAX_SESSION_ID
                or not plan.heartbeat(session_id, self._clock())):
            return NO_SESSION
        return OK
