"""One attempt at one delivery: a signed JSON POST, or a command with the JSON on stdin.

Each sender returns None when the receiver took the event, or a `Failure`:
a short `summary` fit for the log (no response bodies, no stderr: those may
echo a caller's number) and a longer `detail` kept in the outbox row for the
admin. Neither raises for anything the other side did; the whole attempt is
bounded by the hook's `timeout`.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import signal
from dataclasses import dataclass

import aiohttp
from yarl import URL

from ctrackd import __version__
from ctrackd.configcalls import HookConfig
from ctrackd.hooks.outbox import MAX_ERROR_CHARS, Delivery

#: same-host redirects followed per attempt (an http -> https move, a trailing slash)
MAX_REDIRECTS = 3
_REDIRECTS = {301, 302, 307, 308}  # 303 means "GET something else": not a delivery
#: bytes of a response body or of a command's stderr kept as the error's detail
DETAIL_BYTES = 300


@dataclass(frozen=True, slots=True)
class Failure:
    summary: str    # for the log: "HTTP 503", "exit status 1", "timed out after 10 s"
    detail: str     # for the outbox row: the summary and what the receiver said


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """Hex HMAC-SHA256 of `timestamp + "." + body`, keyed with the hook's secret.

    The timestamp is signed with the body so a captured request cannot be
    replayed later with a fresh X-CTrack-Timestamp (docs/hooks.md).
    """
    message = timestamp.encode("ascii") + b"." + body
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def headers(delivery: Delivery, secret: str | None, timestamp: str) -> dict[str, str]:
    out = {"Content-Type": "application/json", "User-Agent": f"ctrackd/{__version__}",
           "X-CTrack-Event": delivery.event, "X-CTrack-Delivery": delivery.delivery_id,
           "X-CTrack-Timestamp": timestamp}
    if secret:
        out["X-CTrack-Signature"] = "sha256=" + sign(secret, timestamp, delivery.body)
    return out


async def post_json(session: aiohttp.ClientSession, hook: HookConfig, delivery: Delivery,
                    timestamp: str) -> Failure | None:
    """POST the body; any 2xx is delivered, anything else is a failure to retry.

    Redirects are followed by hand, and only on the same host without a
    downgrade to http: a receiver's redirect must not send a signed event
    (and its caller's number) anywhere the admin did not configure.
    """
    assert hook.url is not None
    url = URL(hook.url)
    sent = headers(delivery, hook.secret, timestamp)
    try:
        async with asyncio.timeout(hook.timeout):
            for _ in range(MAX_REDIRECTS + 1):
                async with session.post(url, data=delivery.body, headers=sent,
                                        allow_redirects=False) as response:
                    if 200 <= response.status < 300:
                        return None
                    location = response.headers.get("Location")
                    if response.status in _REDIRECTS and location:
                        target = url.join(URL(location))
                        if target.host != url.host or (url.scheme, target.scheme) == (
                                "https", "http"):
                            summary = f"HTTP {response.status}: redirect to another host"
                            return Failure(summary, f"{summary} ({target.host}) not followed")
                        url = target
                        continue
                    text = await response.content.read(DETAIL_BYTES)
                    summary = f"HTTP {response.status}"
                    said = text.decode("utf-8", errors="replace").strip()
                    return Failure(summary, f"{summary} {response.reason or ''}".rstrip()
                                   + (f": {said}" if said else ""))
            return Failure("too many redirects", f"more than {MAX_REDIRECTS} redirects")
    except TimeoutError:
        return _timed_out(hook)
    except aiohttp.ClientError as exc:
        summary = type(exc).__name__  # ClientConnectorError: refused, unreachable, DNS
        return Failure(summary, f"{summary}: {exc}"[:MAX_ERROR_CHARS])


async def run_command(hook: HookConfig, delivery: Delivery) -> Failure | None:
    """Run the hook's program (no shell) with the JSON on stdin; exit status 0 is delivered.

    It gets CTRACK_EVENT, CTRACK_DELIVERY_ID, CTRACK_HOOK (and CTRACK_CALL_ID
    when there is a call) on top of the daemon's environment. It runs in its
    own process group: on timeout (or when the daemon stops) the whole group
    is killed, so a child it left behind cannot hold the attempt open.
    """
    assert hook.command is not None
    env = dict(os.environ, CTRACK_EVENT=delivery.event, CTRACK_DELIVERY_ID=delivery.delivery_id,
               CTRACK_HOOK=delivery.hook)
    if delivery.call_id is not None:
        env["CTRACK_CALL_ID"] = delivery.call_id
    try:
        process = await asyncio.create_subprocess_exec(
            *hook.command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE, env=env, start_new_session=True)
    except OSError as exc:  # missing program, not executable: the admin may fix it
        summary = f"cannot run {hook.command[0]}"
        return Failure(summary, f"{summary}: {exc.strerror or exc}")
    try:
        async with asyncio.timeout(hook.timeout):
            stderr = await _feed(process, delivery.body)
            code = await process.wait()
    except TimeoutError:
        return _timed_out(hook, killed=True)
    finally:
        if process.returncode is None:  # timed out or cancelled: nothing may outlive it
            _kill_group(process.pid)
            await process.wait()
    if code == 0:
        return None
    summary = f"exit status {code}" if code > 0 else f"killed by signal {-code}"
    said = stderr.decode("utf-8", errors="replace").strip()
    return Failure(summary, summary + (f": {said}" if said else ""))


async def _feed(process: asyncio.subprocess.Process, body: bytes) -> bytes:
    """Write the body to stdin, close it, and read stderr to its end (keeping the tail)."""
    assert process.stdin is not None and process.stderr is not None
    try:
        process.stdin.write(body)
        await process.stdin.drain()
    except (BrokenPipeError, ConnectionResetError):
        pass  # a program that ignores its stdin may still do its job
    finally:
        process.stdin.close()
    tail = b""
    while chunk := await process.stderr.read(4096):
        tail = (tail + chunk)[-DETAIL_BYTES:]
    return tail


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _timed_out(hook: HookConfig, *, killed: bool = False) -> Failure:
    summary = f"timed out after {hook.timeout:g} s"
    return Failure(summary, summary + (" (killed)" if killed else ""))
