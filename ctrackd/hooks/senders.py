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
#: seconds a command's stderr may stay open after it exited (a background child holds it)
STDERR_GRACE = 0.5
#: seconds between looks at whether a command has exited
EXIT_POLL = 0.02
#: seconds to wait for a killed command's exit and pipes to be collected
REAP_SECONDS = 2.0


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
    own process group, killed whole when the attempt ends (exit, timeout, or
    the daemon stopping): a child it left behind cannot hold the attempt
    open, nor outlive it.

    The program's exit decides, not the end of its stderr: a background
    child (`sleep 30 &`) keeps stderr open after the program exited 0, and
    waiting for it would turn a delivered event into a timeout, and so into a
    retry that runs the command's side effect again.
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
    tail = bytearray()  # filled as stderr comes: what was read survives a cut read
    assert process.stderr is not None
    reader = asyncio.create_task(_read_tail(process.stderr, tail))
    try:
        async with asyncio.timeout(hook.timeout):
            await _feed(process, delivery.body)
            code = await _exited(process)
        await asyncio.wait({reader}, timeout=STDERR_GRACE)  # its last words, briefly
    except TimeoutError:
        return _timed_out(hook, killed=True)
    finally:
        _kill_group(process.pid)  # always: whatever it left running goes with it
        reader.cancel()
        await _reap(process)
    if code == 0:
        return None
    summary = f"exit status {code}" if code > 0 else f"killed by signal {-code}"
    said = bytes(tail).decode("utf-8", errors="replace").strip()
    return Failure(summary, summary + (f": {said}" if said else ""))


async def _feed(process: asyncio.subprocess.Process, body: bytes) -> None:
    """Write the body to stdin and close it."""
    assert process.stdin is not None
    try:
        process.stdin.write(body)
        await process.stdin.drain()
    except (BrokenPipeError, ConnectionResetError):
        pass  # a program that ignores its stdin may still do its job
    finally:
        process.stdin.close()


async def _read_tail(stream: asyncio.StreamReader, tail: bytearray) -> None:
    """Read stderr to its end, keeping its last DETAIL_BYTES in `tail`."""
    while chunk := await stream.read(4096):
        tail += chunk
        del tail[:-DETAIL_BYTES]


async def _exited(process: asyncio.subprocess.Process) -> int:
    """The exit status, once the program has ended.

    Not `process.wait()`: that returns only when stdin/stderr are closed
    too, which a background child of the program may delay for as long as
    it runs. `returncode` is set the moment the exit is seen.
    """
    while process.returncode is None:
        await asyncio.sleep(EXIT_POLL)
    return process.returncode


async def _reap(process: asyncio.subprocess.Process) -> None:
    """After the group's kill: let the exit and the pipes' end be collected.

    Bounded: a descendant that left the group (setsid) may hold stderr open,
    and it is not this attempt's to wait for.
    """
    waiter = asyncio.ensure_future(process.wait())
    done, _ = await asyncio.wait({waiter}, timeout=REAP_SECONDS)
    if not done:
        waiter.cancel()


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _timed_out(hook: HookConfig, *, killed: bool = False) -> Failure:
    summary = f"timed out after {hook.timeout:g} s"
    return Failure(summary, summary + (" (killed)" if killed else ""))
