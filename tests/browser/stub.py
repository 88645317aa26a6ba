"""Loopback HTTP servers for the browser tests: a stub tracker and a site.

`StubTracker` speaks the snippet's side of the daemon's HTTP contract
(docs/snippet.md): `GET /ctrack.js`, the CORS preflight, `POST /v1/sessions`
and `POST /v1/sessions/{id}/heartbeat`. It records every request so tests can
assert what the snippet sent, and can be told to fail in the ways a real
daemon or network fails (500, bad JSON, a hang), to fail only new sessions
(a renewal that fails), or to answer odd values; with `codes` on, each
session has a promo code too, as the daemon's answers do.

`Site` serves the test pages from another port, hence another origin, as a
customer's website would; `{{SCRIPT}}` and `{{ENDPOINT}}` in a page become
the script's base URL and the endpoint the page names.

Standard library only: the daemon's own HTTP side must not be needed here.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

SNIPPET = Path(__file__).resolve().parents[2] / "ctrackd" / "web" / "static" / "ctrack.js"
PAGES = Path(__file__).resolve().parent / "pages"

OFFICE_NUMBERS = ["+74951234567", "+78125550102"]
POOL = ["+74950000101", "+74950000102", "+74950000103"]
CODES = ["4821", "0597", "3316"]  # the promo code of the first, second, third session


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: Any  # parsed JSON, or the raw text when it was not JSON


def closed_port() -> int:
    """A loopback port with nothing listening: a daemon that is down."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Server(ThreadingHTTPServer):
    # Handler threads must not keep the test process alive or block close():
    # a hanging request is released by its own event.
    daemon_threads = True
    block_on_close = False


class _Base:
    """A threaded HTTP server on 127.0.0.1 port 0; start() returns once bound."""

    def __init__(self, handler: Callable[..., BaseHTTPRequestHandler]) -> None:
        self._server = _Server(("127.0.0.1", 0), handler)
        self.port = int(self._server.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass  # a test's output is its assertions

    def send(self, status: int, body: bytes, content_type: str,
             headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)


@dataclass
class _Session:
    session_id: str
    visitor_id: str
    number: str
    visit_number: int
    code: str


@dataclass
class TrackerState:
    """What the stub answers and what it has seen; tests change the former."""

    mode: str = "ok"  # ok | error | badjson | hang | no-number (no pool fits: number null)
    codes: bool = False  # answers carry each session's promo code (`code`), as the daemon's do
    heartbeat_seconds: float = 30
    replace: list[str] = field(default_factory=lambda: list(OFFICE_NUMBERS))
    # Keys laid over every POST /v1/sessions answer: a daemon answering odd things.
    answer: dict[str, Any] = field(default_factory=dict)
    # How POST /v1/sessions alone fails (heartbeats still answer):
    # "" (it does not) | "429" | "500" | "hang" | "drop" (connection closed, no answer).
    sessions_fail: str = ""
    requests: list[Recorded] = field(default_factory=list)
    sessions: dict[str, _Session] = field(default_factory=dict)
    gone: set[str] = field(default_factory=set)  # session ids that answer 404
    released: threading.Event = field(default_factory=threading.Event)
    changed: threading.Condition = field(default_factory=threading.Condition)


class StubTracker(_Base):
    """The daemon's HTTP API as the snippet sees it; one visitor, one session.

    Like the real daemon, a visitor keeps its session (and number) across
    page views and tabs until the session is made `gone`; then the next
    `POST /v1/sessions` opens a new session with the next pool number.
    """

    def __init__(self) -> None:
        self.state = TrackerState()
        super().__init__(self._handler())

    def stop(self) -> None:
        self.state.released.set()  # let hanging requests finish
        super().stop()

    # -- what tests ask ---------------------------------------------------

    def posts(self, path_suffix: str = "") -> list[Recorded]:
        with self.state.changed:
            return [r for r in self.state.requests
                    if r.method == "POST" and r.path.endswith(path_suffix)]

    def session_posts(self) -> list[Recorded]:
        return self.posts("/v1/sessions")

    def heartbeats(self, session_id: str | None = None) -> list[Recorded]:
        return [r for r in self.posts("/heartbeat")
                if session_id is None or r.path == f"/v1/sessions/{session_id}/heartbeat"]

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        """Block until predicate() holds (it is re-checked on every request)."""
        deadline = time.monotonic() + timeout
        with self.state.changed:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"stub tracker: condition not met in {timeout} s; "
                                         f"requests: {[(r.method, r.path) for r in self.state.requests]}")
                self.state.changed.wait(left)

    def session_of(self, visitor_id: str) -> _Session:
        return next(s for s in self.state.sessions.values() if s.visitor_id == visitor_id)

    def end_session(self, session_id: str) -> None:
        with self.state.changed:
            self.state.gone.add(session_id)

    # -- the HTTP side ----------------------------------------------------

    def _handler(self) -> Callable[..., BaseHTTPRequestHandler]:
        tracker = self
        state = self.state

        class Handler(_Handler):
            def cors(self) -> dict[str, str]:
                origin = self.headers.get("Origin")
                return {"Access-Control-Allow-Origin": origin, "Vary": "Origin"} if origin else {}

            def record(self, body: Any) -> None:
                with state.changed:
                    state.requests.append(Recorded(self.command, urlsplit(self.path).path,
                                                   dict(self.headers.items()), body))
                    state.changed.notify_all()

            def do_GET(self) -> None:
                if urlsplit(self.path).path == "/ctrack.js":
                    self.send(200, SNIPPET.read_bytes(), "application/javascript; charset=utf-8")
                else:
                    self.send(404, b'{"error": "not found"}', "application/json")

            def do_OPTIONS(self) -> None:
                # The snippet posts application/json, so browsers ask first.
                self.record(None)
                self.send(204, b"", "text/plain", {
                    **self.cors(),
                    "Access-Control-Allow-Methods": "POST",
                    "Access-Control-Allow-Headers": "Content-Type",
                    "Access-Control-Max-Age": "600",
                })

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = raw.decode("utf-8", "replace")
                self.record(body)
                if state.mode == "hang":
                    state.released.wait(15)
                    return self.json(200, {"error": "too late"})
                if state.mode == "error":
                    return self.json(500, {"error": "internal error"})
                if state.mode == "badjson":
                    return self.send(200, b"<html>gateway says hi</html>", "text/html",
                                     self.cors())
                parts = urlsplit(self.path).path.strip("/").split("/")
                if parts == ["v1", "sessions"] and state.sessions_fail:
                    return self.fail_session(state.sessions_fail)
                if parts == ["v1", "sessions"] and isinstance(body, dict):
                    return self.json(200, tracker._open_session(body))
                if len(parts) == 4 and parts[:2] == ["v1", "sessions"] and parts[3] == "heartbeat":
                    if parts[2] in state.sessions and parts[2] not in state.gone:
                        return self.json(200, {})
                    return self.json(404, {"error": "no such session"})
                return self.json(404, {"error": "not found"})

            def fail_session(self, how: str) -> None:
                if how == "hang":
                    state.released.wait(15)
                    return self.json(200, {"error": "too late"})
                if how == "drop":
                    self.close_connection = True  # the socket closes unanswered
                    return None
                return self.json(int(how), {"error": "not now"})

            def json(self, status: int, data: Any) -> None:
                self.send(status, json.dumps(data).encode(), "application/json", self.cors())

        return Handler

    def _open_session(self, body: dict[str, Any]) -> dict[str, Any]:
        state = self.state
        visitor_id = str(body.get("visitor_id"))
        with state.changed:
            live = [s for s in state.sessions.values()
                    if s.visitor_id == visitor_id and s.session_id not in state.gone]
            if live:
                session = live[0]
            else:
                visits_before = body.get("visits_before")
                session = _Session(f"s{len(state.sessions) + 1}", visitor_id,
                                   POOL[len(state.sessions) % len(POOL)],
                                   (visits_before if isinstance(visits_before, int) else 0) + 1,
                                   CODES[len(state.sessions) % len(CODES)])
                state.sessions[session.session_id] = session
            number = None if state.mode == "no-number" else session.number
            code = {"code": session.code} if state.codes else {}
            return {"session_id": session.session_id, "number": number,
                    "visit_number": session.visit_number,
                    "heartbeat_seconds": state.heartbeat_seconds, "replace": state.replace,
                    **code, **state.answer}


class Site(_Base):
    """The customer's website: test pages, and a copy of the snippet for pages
    whose endpoint is elsewhere (the daemon down while the script loads)."""

    def __init__(self, script: str, endpoint: str) -> None:
        self.script = script
        self.endpoint = endpoint
        super().__init__(self._handler())

    def page(self, name: str) -> str:
        return f"{self.url}/{name}"

    def _handler(self) -> Callable[..., BaseHTTPRequestHandler]:
        site = self

        class Handler(_Handler):
            def do_GET(self) -> None:
                path = urlsplit(self.path).path
                if path == "/ctrack.js":
                    return self.send(200, SNIPPET.read_bytes(),
                                     "application/javascript; charset=utf-8")
                file = PAGES / path.lstrip("/")
                if file.suffix != ".html" or file.parent != PAGES or not file.is_file():
                    return self.send(404, b"not found", "text/plain")
                html = (file.read_text(encoding="utf-8")
                        .replace("{{SCRIPT}}", site.script)
                        .replace("{{ENDPOINT}}", site.endpoint))
                self.send(200, html.encode(), "text/html; charset=utf-8")

        return Handler
