"""One HTTP/1.1 connection of the web side: bytes in, `Routes` asked, bytes out.

The parsing is httptools' (llhttp, the parser of Node.js): request line,
headers, Content-Length and chunked bodies, keep-alive, pipelining and
upgrades are its job. This module keeps what the routes need of each
request, bounds it (URL, headers, body) and writes the reply.

Why not a framework: every endpoint answers synchronously (the plan is pure,
`Routes.answer` never awaits), so a request is answered the moment its last
byte is parsed, in order, with no task, no future and no timer, and the
replies of one read go out in one write. Under the load of a busy site
aiohttp's machinery around the same routes took twice the CPU and missed
the p99 goal (docs/web.md, "Performance").

Time bounds are checked by the server's sweeper once a second (`check`),
not by a timer per request: a request not complete within `body_seconds`
of its first byte gets its 408 (or, headers still incomplete, the close),
an idle keep-alive connection is closed after `keepalive_seconds`.
"""

from __future__ import annotations

import asyncio
import time
from email.utils import formatdate
from typing import TYPE_CHECKING, cast
from urllib.parse import unquote

import httptools
import structlog

from ctrackd.web.routes import INTERNAL, Reply, Request, error

if TYPE_CHECKING:
    from ctrackd.web.server import WebServer

log = structlog.get_logger("ctrackd.web")

#: longest request target and sum of header lines accepted (aiohttp's and nginx's 8 KiB lines)
MAX_URL_BYTES = 8190
MAX_HEADER_BYTES = 16384
#: seconds a refused client's remaining bytes are read and dropped before the close
LINGER_SECONDS = 2.0
#: replies waiting for a client that pipelines more than it reads: past this, it is cut off
#: (one read of 256 KiB of `GET /ctrack.js` would otherwise ask for 100+ MiB of replies)
MAX_UNSENT_BYTES = 1 << 20

_WANTED = {b"origin": "origin", b"content-type": "content_type",
           b"x-forwarded-for": "forwarded_for", b"content-length": "length",
           b"expect": "expect"}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_BAD_REQUEST = error(400, "not a valid HTTP request")
_URL_TOO_LONG = error(414, f"the URL is longer than {MAX_URL_BYTES} bytes")
_HEADERS_TOO_LARGE = error(431, f"the headers are larger than {MAX_HEADER_BYTES} bytes")
_NO_UPGRADE = error(400, "protocol upgrades are not served here")


class _Refused(Exception):
    """Raised in a parser callback to stop parsing: the connection gets `reply` (if any)
    and ends."""

    def __init__(self, reply: Reply | None) -> None:
        self.reply = reply


class _Clock:
    """The Date header, formatted once a second rather than once a reply."""

    def __init__(self) -> None:
        self._second = -1
        self._line = b""

    def date_line(self) -> bytes:
        now = time.time()
        if int(now) != self._second:
            self._second = int(now)
            self._line = b"Date: " + formatdate(now, usegmt=True).encode() + b"\r\n"
        return self._line


DATE = _Clock()


class Connection(asyncio.Protocol):
    """One client connection; `WebServer` creates one per accepted socket."""

    def __init__(self, server: WebServer) -> None:
        self._server = server
        self._routes = server.routes
        self._max_body = server.max_body_bytes
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._peer = "?"
        self._out: list[bytes] = []
        self._writing_paused = False
        self._closing = False
        self._linger_until = 0.0
        # the request being parsed
        self._started: float | None = None   # loop time of its first byte; None: between requests
        self._idle_since = 0.0
        self._url = b""
        self._header_bytes = 0
        self._head_bytes = 0   # bytes read in later reads while its headers were incomplete
        self._fields: dict[str, bytes] = {}
        self._request: Request | None = None   # set once the headers are complete
        self._chunks: list[bytes] = []
        self._size = 0
        self._answered = False   # replied before its end (a body too large): the rest is dropped

    # -- asyncio.Protocol ----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        peer = transport.get_extra_info("peername")
        self._peer = str(peer[0]) if isinstance(peer, tuple) and peer else "?"
        self._idle_since = self._server.now()
        self._server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.connections.discard(self)
        self._transport = None

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        if self._started is not None and self._request is None:
            # Headers still incomplete: httptools keeps a header's pieces until its
            # end, so the bound is on the bytes that came in, not on what it handed us.
            self._head_bytes += len(data)
            if self._head_bytes > MAX_URL_BYTES + MAX_HEADER_BYTES:
                self._finish(_HEADERS_TOO_LARGE)
                return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, _Refused):
                self._finish(cause.reply)
            else:  # a bug of ours: logged, this connection ends, the others go on
                log.error("web_connection_failed", peer=self._peer, exc_info=cause or exc)
                self._finish(INTERNAL)
        except httptools.HttpParserUpgrade:
            # llhttp stops at an upgrade (WebSocket, CONNECT). A request it
            # completed was answered; anything else is refused.
            self._finish(None if self._started is None else _NO_UPGRADE)
        except httptools.HttpParserError:
            self._finish(_BAD_REQUEST)
        if self._out:
            self._flush()
        # One clock reading per read, not per request: when the request under
        # way began, or since when the connection is idle.
        if self._started is None:
            self._idle_since = self._server.now()
        elif self._started < 0:
            self._started = self._server.now()

    def eof_received(self) -> bool | None:
        return None  # the client is done sending: asyncio closes once our replies are out

    def pause_writing(self) -> None:
        # The client does not read its replies (a pipelining flood): stop reading
        # its requests until the buffer drains, so memory stays bounded.
        self._writing_paused = True
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        if self._transport is not None:
            self._transport.resume_reading()

    # -- httptools callbacks ---------------------------------------------------------

    def on_message_begin(self) -> None:
        self._started = -1.0  # timed at the end of this read (one clock call per read, not per request)
        self._url = b""
        self._header_bytes = 0
        self._head_bytes = 0
        self._fields = {}
        self._request = None
        self._chunks = []
        self._size = 0
        self._answered = False

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > MAX_URL_BYTES:
            raise _Refused(_URL_TOO_LONG)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value) + 4
        if self._header_bytes > MAX_HEADER_BYTES:
            raise _Refused(_HEADERS_TOO_LARGE)
        field = _WANTED.get(name.lower())
        if field is not None and field not in self._fields:  # the first of repeated ones
            self._fields[field] = value

    def on_headers_complete(self) -> None:
        fields = self._fields
        origin, content_type = fields.get("origin"), fields.get("content_type")
        forwarded = fields.get("forwarded_for")
        self._request = request = Request(
            self._parser.get_method().decode("ascii", "replace"), _path(self._url), self._peer,
            origin.decode("latin-1") if origin is not None else None,
            content_type.decode("latin-1") if content_type is not None else "",
            forwarded.decode("latin-1") if forwarded is not None else None)
        length = fields.get("length", b"")
        expects = fields.get("expect", b"").lower() == b"100-continue"
        if length.isdigit() and int(length) > self._max_body:
            request.too_large = True
            self._answer_now(request)
            if expects:  # the client waits for our word before sending the body: it has it
                raise _Refused(None)
        elif expects:
            self._out.append(_CONTINUE)

    def on_body(self, body: bytes) -> None:
        if self._answered:
            return
        self._size += len(body)
        if self._size > self._max_body:
            assert self._request is not None
            self._request.too_large = True
            self._chunks = []
            self._answer_now(self._request)
        else:
            self._chunks.append(body)

    def on_message_complete(self) -> None:
        request = self._request
        assert request is not None
        if self._out and self._unsent() > MAX_UNSENT_BYTES:
            raise _Refused(None)
        keep_alive = self._parser.should_keep_alive() and not self._parser.should_upgrade()
        if not self._answered:
            chunks = self._chunks
            if chunks:
                request.body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            self._reply(request, self._routes.answer(request), keep_alive)
        self._started = None
        self._request = None
        if not keep_alive:
            raise _Refused(None)  # stop parsing: what follows is not ours to answer

    # -- replies -------------------------------------------------------------------

    def _answer_now(self, request: Request) -> None:
        """Before the body's end (it is too large): the reply now, the rest of it dropped."""
        self._answered = True
        self._reply(request, self._routes.answer(request), self._parser.should_keep_alive())

    def _reply(self, request: Request, reply: Reply, keep_alive: bool) -> None:
        parts = [reply.head, DATE.date_line()]
        if request.origin is not None:
            cors = self._server.cors_lines.get(request.origin)  # only the configured sites
            if cors is not None:
                parts.append(cors)
        if not keep_alive:
            parts.append(b"Connection: close\r\n")
        elif self._parser.get_http_version() == "1.0":
            parts.append(b"Connection: keep-alive\r\n")
        parts.append(b"\r\n")
        if request.method != "HEAD":
            parts.append(reply.body)
        self._out.append(b"".join(parts))

    def _unsent(self) -> int:
        buffered = self._transport.get_write_buffer_size() if self._transport else 0
        return buffered + sum(len(part) for part in self._out)

    def _flush(self) -> None:
        out, self._out = self._out, []
        if self._transport is not None:
            self._transport.write(out[0] if len(out) == 1 else b"".join(out))

    def _finish(self, reply: Reply | None) -> None:
        """The last reply (if any), then the end of the connection.

        A lingering close, as nginx does: our reply and our FIN go out, what the
        client still sends (the rest of a refused request) is read and dropped
        until it closes too or `LINGER_SECONDS` pass. Closing with its bytes
        unread would make the kernel answer with a reset, and the client could
        lose the reply that says what was wrong.
        """
        if reply is not None:
            request = self._request or Request("GET", "/", self._peer)
            self._reply(request, reply, keep_alive=False)
        self._closing = True
        self._started = None
        if self._transport is None:
            return
        self._flush()
        if self._transport.can_write_eof():
            self._transport.write_eof()
            self._linger_until = self._server.now() + LINGER_SECONDS
            if self._writing_paused:
                self._transport.resume_reading()  # keep draining what it sends
        else:
            self._transport.close()

    def close(self) -> None:
        """The daemon stops (or the connection was idle too long): it ends now."""
        self._closing = True
        if self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        """Cut it now, whatever is unsent (a client that reads nothing, at stop)."""
        self._closing = True
        if self._transport is not None:
            self._transport.abort()

    # -- the server's sweeper, once a second -------------------------------------------

    def check(self, now: float, body_seconds: float, keepalive_seconds: float) -> None:
        """Answer a request whose body is late, close a connection idle too long."""
        if self._transport is None:
            return
        if self._closing:
            if now > self._linger_until:  # the client neither reads nor closes
                self.abort()
            return
        started = self._started
        if started is None:
            if now - self._idle_since > keepalive_seconds:
                self.close()
        elif 0 <= started < now - body_seconds:
            request = self._request
            if request is None or self._answered:  # headers still incomplete: nothing to answer
                self._finish(None)
                return
            request.late = True
            self._finish(self._routes.answer(request))


def _path(url: bytes) -> str:
    """The path of a request target, percent-decoded as aiohttp and uvicorn do."""
    if url[:1] == b"/":
        raw = url.split(b"?", 1)[0].split(b"#", 1)[0]
    else:  # absolute-form ("http://host/path"), as proxies send
        try:
            raw = httptools.parse_url(url).path or b"/"
        except httptools.HttpParserInvalidURLError:
            raw = b"/"
    path = raw.decode("latin-1")
    return unquote(path) if "%" in path else path
