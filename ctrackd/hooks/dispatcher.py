"""The daemon's hook task: deliver due outbox rows, retry with backoff, give up in the end.

It wakes on `nudge()` (the step that enqueued an event calls it right after
its commit) or every `poll_interval` seconds, and sooner when a retry is due
before that. It claims at most `concurrency` rows at a time, so a backlog
after a long outage drains steadily instead of opening a thousand
connections or processes at once.

Database work goes through the dispatcher's OWN sqlite3 connection, on ONE
dedicated thread (a single-worker executor: an sqlite3 connection belongs
to the thread that opened it, and one thread also serialises our statements
without a lock). Not `Store.write`: that takes only upserts and no reads, and
its group commit carries the AGI route's saves, which our bookkeeping has no
business joining. Our statements are single-row autocommit UPDATEs that hold
SQLite's write lock for microseconds, so the store's writer never waits on
them in any way that matters, and nothing here runs on the event loop's
thread.

Delivery is at-least-once: a crash (or a lost response) between a delivery
and its mark sends the event again later, with the same X-CTrack-Delivery,
on which receivers dedupe. A claimed row is due again only after its lease
(longer than any attempt), and `stop()` hands back the claims of attempts it
cut short, so nothing claimed is stranded.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, TypeVar

import aiohttp
import structlog

from ctrackd.aio import wait_event
from ctrackd.configcalls import HookConfig
from ctrackd.hooks import outbox
from ctrackd.hooks.outbox import Delivery
from ctrackd.hooks.senders import Failure, post_json, run_command
from ctrackd.metrics import Metrics

log = structlog.get_logger("ctrackd.hooks")

#: seconds a claim outlives the longest attempt before the row is due again (crash recovery)
LEASE_MARGIN = 30.0
T = TypeVar("T")


class OutboxUnavailable(sqlite3.Error):
    """`connect` failed: the store cannot be opened now (the daemon's connect raises
    StoreError, which this package may not import: adapters stay apart). Handled
    like any database error: logged, and tried again at the next look."""


class Dispatcher:
    """`start()` it in the daemon, `nudge()` it after enqueueing, `await stop(grace)` it."""

    def __init__(self, connect: Callable[[], sqlite3.Connection], hooks: Sequence[HookConfig],
                 *, poll_interval: float = 5.0, concurrency: int = 8, base_delay: float = 10.0,
                 clock: Callable[[], float] = time.time,
                 rand: Callable[[], float] = random.random,
                 metrics: Metrics | None = None) -> None:
        self._connect = connect
        self._metrics = metrics
        self._hooks = {h.name: h for h in hooks}
        self._poll = poll_interval
        self._concurrency = concurrency
        self._base_delay = base_delay
        self._clock = clock
        self._rand = rand
        self._wake = asyncio.Event()
        self._closing = False
        self._stopped = False
        self._inflight: dict[asyncio.Task[None], Delivery] = {}
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ctrackd-hooks")
        self._conn: sqlite3.Connection | None = None
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self.delivered = 0  # counters for tests and a future status line
        self.failed_attempts = 0
        # Per hook, while its receiver keeps failing: no new claims until then
        # (see _hold); the failures in a row give the hold's backoff.
        self._held_until: dict[str, float] = {}
        self._failures_in_row: dict[str, int] = {}

    @property
    def task(self) -> asyncio.Task[None]:
        """The loop: it ends only through stop(); the daemon treats any other end as fatal."""
        assert self._task is not None, "start() first"
        return self._task

    def start(self) -> asyncio.Task[None]:
        """Begin delivering (synchronous: a config reload may start one from a signal handler)."""
        self._task = asyncio.create_task(self._run(), name="hooks")
        return self._task

    def nudge(self) -> None:
        """Look at the outbox now (call on the event loop's thread, after the commit)."""
        self._wake.set()

    def set_hooks(self, hooks: Sequence[HookConfig]) -> None:
        """A reload's hooks; attempts under way finish with the settings they started with."""
        self._hooks = {h.name: h for h in hooks}
        self._wake.set()

    async def stop(self, grace: float) -> int:
        """Claim nothing more, give attempts under way `grace` seconds, cut the rest.

        Returns how many were cut; their rows are due again at the next start
        (the attempt is not counted). A second call does nothing.
        """
        if self._stopped:
            return 0
        self._stopped = self._closing = True
        self._wake.set()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        cut: list[Delivery] = []
        if self._inflight:
            _, late = await asyncio.wait(list(self._inflight), timeout=grace)
            cut = [self._inflight[t] for t in late]
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        try:
            if cut:
                await self._db(outbox.release, [d.id for d in cut], self._clock())
                log.warning("hook_deliveries_cut", count=len(cut),
                            delivery_ids=[d.delivery_id for d in cut])
        except sqlite3.Error as exc:  # they come back after their lease instead
            log.error("hook_release_failed", error=repr(exc))
        finally:
            if self._session is not None:
                await self._session.close()
            await self._db(_close, None)
            self._executor.shutdown(wait=True)
        return len(cut)

    # -- the loop --------------------------------------------------------------

    async def _run(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self._concurrency))
        while not self._closing:
            self._wake.clear()
            wait = self._poll
            try:
                wait = await self._claim_and_start()
            except sqlite3.Error as exc:  # locked for long, disk trouble: try again later
                log.error("hook_outbox_unreadable", error=repr(exc))
            if not self._closing:
                await wait_event(self._wake, wait)

    async def _claim_and_start(self) -> float:
        """Start the due deliveries there is room for; return seconds until the next look."""
        now = self._clock()
        held = [until for name, until in self._held_until.items()
                if until > now and name in self._hooks]
        hooks = {name: h for name, h in self._hooks.items()
                 if self._held_until.get(name, 0.0) <= now}
        free = self._concurrency - len(self._inflight)
        if not hooks or free <= 0:  # a finishing attempt or a hold's end wakes us
            return min([self._poll, *(until - now for until in held)])
        lease = max(h.timeout for h in hooks.values()) + LEASE_MARGIN
        claimed, due = await self._db(_round, tuple(hooks), now, lease, free)
        busy = {d.id for d in self._inflight.values()}
        for delivery in claimed:
            hook = hooks.get(delivery.hook)
            if hook is None or delivery.id in busy:  # an admin's `retry` of a row under way
                continue
            task = asyncio.create_task(self._deliver(delivery, hook),
                                       name=f"hook-{delivery.hook}-{delivery.id}")
            self._inflight[task] = delivery
            task.add_done_callback(self._finished)
        wait = min([self._poll, *(until - now for until in held)])
        if len(self._inflight) >= self._concurrency or due is None:
            return wait
        return min(wait, max(0.0, due - self._clock()))

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._inflight.pop(task, None)
        if not task.cancelled() and task.exception() is not None:
            log.error("hook_delivery_crashed", error=repr(task.exception()))
        self._wake.set()  # a slot is free: a backlog goes on

    async def _deliver(self, delivery: Delivery, hook: HookConfig) -> None:
        """One attempt and its mark. Errors of the attempt are failures, never raised."""
        # `hook_event`, not `event`: that name is structlog's own (the log line's name)
        context = dict(hook=hook.name, hook_event=delivery.event,
                       delivery_id=delivery.delivery_id, call_id=delivery.call_id,
                       attempt=delivery.attempts)
        try:
            if hook.url is not None:
                assert self._session is not None
                failure = await post_json(self._session, hook, delivery,
                                          str(int(self._clock())))
            else:
                failure = await run_command(hook, delivery)
        except Exception as exc:  # noqa: BLE001 - a bug of ours is one failed attempt
            failure = Failure(f"internal error: {type(exc).__name__}", repr(exc))
        now = self._clock()
        try:
            self._hold(hook.name, failed=failure is not None, now=now)
            if failure is None:
                await self._db(outbox.mark_delivered, delivery.id, now)
                self.delivered += 1
                if self._metrics is not None:
                    self._metrics.hook_attempt(hook.name, "delivered")
                log.info("hook_delivered", **context)
                return
            self.failed_attempts += 1
            delay = outbox.retry_delay(delivery.attempts, base=self._base_delay,
                                       max_delay=hook.max_delay, rand=self._rand)
            gave_up = await self._db(partial(outbox.record_failure, max_attempts=hook.max_attempts,
                                             delay=delay), delivery, failure.detail, now)
        except sqlite3.Error as exc:  # the row comes back after its lease: sent again
            log.error("hook_mark_failed", error=repr(exc), **context)
            return
        if self._metrics is not None:
            self._metrics.hook_attempt(hook.name, "gave_up" if gave_up else "failed")
        if gave_up:
            log.error("hook_gave_up", error=failure.summary, **context)
        else:
            log.warning("hook_attempt_failed", error=failure.summary,
                        retry_in=round(delay, 3), **context)

    def _hold(self, hook: str, *, failed: bool, now: float) -> None:
        """A receiver that fails is left alone for a while, as a whole.

        Each row has its own backoff, but new events (a `call_start` per
        call) are due at once: without a hold, a CRM that is down would cost
        an attempt, two writes and a log line per call, all competing with
        the call path for the CPU and SQLite's write lock. While held, the
        hook's rows wait (nothing is lost); the first attempt after the hold
        is the probe, and a success ends the hold.
        """
        if not failed:
            self._failures_in_row.pop(hook, None)
            self._held_until.pop(hook, None)
            return
        if self._held_until.get(hook, 0.0) > now:
            # The other attempts of the round that set this hold (they ran at once):
            # one failed round is one failure, not `concurrency` of them.
            return
        count = self._failures_in_row.get(hook, 0) + 1
        self._failures_in_row[hook] = count
        max_delay = self._hooks[hook].max_delay if hook in self._hooks else 3600.0
        self._held_until[hook] = now + outbox.retry_delay(
            count, base=min(self._base_delay, 5.0), max_delay=min(max_delay, 300.0),
            rand=self._rand)

    async def pending_counts(self) -> dict[str, int]:
        """Pending deliveries per hook (the metrics' outbox depth), on our thread."""
        return await self._db(_pending_counts)

    async def _db(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(conn, *args)` on the dispatcher's thread and connection."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, partial(self._on_thread, fn, args))

    def _on_thread(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        if fn is _close:
            conn, self._conn = self._conn, None
            return fn(conn)
        if self._conn is None:
            try:
                self._conn = self._connect()
            except sqlite3.Error:
                raise
            except Exception as exc:  # noqa: BLE001 - whatever it is, there is no connection
                raise OutboxUnavailable(str(exc)) from exc
        return fn(self._conn, *args)


def _round(conn: sqlite3.Connection, hooks: tuple[str, ...], now: float, lease: float,
           limit: int) -> tuple[list[Delivery], float | None]:
    """One thread hop: claim what is due, and learn when the next row will be."""
    claimed = outbox.claim_due(conn, hooks, now, lease=lease, limit=limit)
    return claimed, outbox.next_due(conn, hooks)


def _pending_counts(conn: sqlite3.Connection) -> dict[str, int]:
    """A COUNT over the partial index `outbox_due`: it holds the pending rows only,
    so a scrape costs the backlog's size, never the table's."""
    rows = conn.execute("SELECT hook, count(*) FROM outbox INDEXED BY outbox_due"
                        " WHERE delivered_at IS NULL AND gave_up_at IS NULL GROUP BY hook")
    return {hook: count for hook, count in rows}


def _close(conn: sqlite3.Connection | None, *_: Any) -> None:
    if conn is not None:
        conn.close()
