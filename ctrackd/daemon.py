"""The composition root: the only module that sees every part and wires them.

Lifecycle (uvicorn's shape): `start()` returns once the FastAGI port is
bound and the store is open; `run()` waits for a stop request or for a part
that died; `stop()` stops accepting AGI connections, lets in-flight sessions
finish within a bound (and says how many it cut), then stops AMI, applies
and commits what the AMI queue still holds, and closes the store.

A background task that dies takes the daemon down loudly (exit 1, systemd
restarts it) rather than leaving it half alive. SIGHUP reloads the config:
validated first; a bad file is logged with FILE:LINE:COL and the daemon
keeps running on the old one.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import sqlite3
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

import structlog

from ctrackd.agi.routes import TrackRoute, build_routes
from ctrackd.agi.server import AgiServer
from ctrackd.ami.connection import AmiConnection
from ctrackd.ami.consumer import AmiConsumer
from ctrackd.ami.translate import wanted
from ctrackd.attribution.dynamic import DynamicPlan
from ctrackd.attribution.plan import StaticPlan
from ctrackd.attribution.events import CallAttributed, OperatorCodeKeyed, OutboundAnswered
from ctrackd.attribution.legs import LegRecord
from ctrackd.attribution.operator_codes import OperatorCodes
from ctrackd.attribution.records import Attribution, CallProgress
from ctrackd.attribution.tracker import CallTracker
from ctrackd.config import Config, ConfigError, load_config
from ctrackd.configcalls import HookConfig
from ctrackd.hooks.dispatcher import Dispatcher
from ctrackd.hooks.outbox import UPSERT as UPSERT_OUTBOX
from ctrackd.hooks.outbox import enqueue as enqueue_hook
from ctrackd.hooks.outbox import start_rows
from ctrackd.logs import configure_logging, mask_number
from ctrackd.metrics import Metrics, MetricsServer
from ctrackd.retention_task import RetentionTask
from ctrackd.store import queries
from ctrackd.store.database import Store
from ctrackd.store.schema import StoreError
from ctrackd.store.outbound import UPSERT_OUTBOUND, outbound_rows
from ctrackd.store.legs import UPSERT_LEGS, leg_rows, load_open_legs
from ctrackd.store.promo import UPSERT_PROMO, promo_params, read_attribution
from ctrackd.store.sessions import UPSERT_SESSION, load_sessions, purge_sessions, session_rows
from ctrackd.store.judge import Judged, JudgeWorker
from ctrackd.systemd import SystemdNotifier
from ctrackd.web.server import WebServer

log = structlog.get_logger("ctrackd")

#: settings a reload cannot change in a running daemon (they need a restart)
_RESTART_ONLY = ("ami", "agi", "store", "web", "metrics")
#: seconds the call_start hook rows of new calls wait, gathered, before one write
START_DELAY = 0.05
#: seconds between pool housekeeping rounds (expiry, usage written to the store)
POOL_TICK = 60.0
#: seconds between writes of changed visitor sessions (what a crash can lose; docs/promo.md)
SESSION_FLUSH = 1.0
#: sessions turned into rows between two turns of the event loop (~20 µs each): a busy
#: site changes thousands a second, and converting them at once held up every request
#: for tens of ms (the web side's p99; docs/web.md, "Performance")
FLUSH_SLICE = 25
#: seconds hook deliveries under way may take to finish when the daemon stops
HOOK_STOP_GRACE = 2.0


class SteadyClock:
    """Epoch seconds that never step: the start's wall clock plus monotonic time since.

    The web side leases numbers and the AGI side asks who held one at a
    call's start: both must read one clock that an NTP step or a bad RTC
    cannot move backwards or far ahead (a step back left pool numbers with no
    holder, a step ahead froze every hold). It may drift from the wall clock
    by NTP's slew over weeks, which a start time can bear.
    """

    def __init__(self) -> None:
        self._epoch, self._mono = time.time(), time.monotonic()

    def __call__(self) -> float:
        return self._epoch + (time.monotonic() - self._mono)


def build_dynamic(config: Config) -> DynamicPlan | None:
    """The pools, UTM rules and promo codes of the config as a live plan (None
    without pools and without the web side: no sessions at all).

    Session ids are unguessable: whoever knows one can keep its number held.
    Promo codes are drawn by the OS's CSPRNG: one visitor's code tells
    nothing of the next. A site with the web side and no pools still has
    sessions, for their promo codes.
    """
    if not config.pools and config.web is None:
        return None
    return DynamicPlan(config.pools, config.utm_rules,
                       new_session_id=lambda: secrets.token_urlsafe(16),
                       promo=config.promo if config.web is not None else None,
                       choose_code=secrets.randbelow)


class Daemon:
    def __init__(self, config: Config, *, stop_grace: float = 5.0) -> None:
        self.config = config
        self._plan: StaticPlan = config.static_plan()
        self.dynamic: DynamicPlan | None = build_dynamic(config)
        self._stop_grace = stop_grace
        self.clock = SteadyClock()
        self._run = time.time()  # this run's key in pool_usage
        self._stopping = asyncio.Event()
        self._fatal: BaseException | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self.store: Store | None = None
        self.agi: AgiServer | None = None
        self.ami: AmiConnection | None = None
        self.consumer: AmiConsumer | None = None
        self.judge: JudgeWorker | None = None
        self.tracker: CallTracker | None = None
        self.operator_codes = OperatorCodes()
        self.agi_address: tuple[str, int] | None = None
        self.web: WebServer | None = None
        self.web_address: tuple[str, int] | None = None
        self._flushing = asyncio.Lock()  # one flush at a time: rows are written in order
        self.retention: RetentionTask | None = None
        self.hooks: Dispatcher | None = None
        # One registry per daemon (tests run several in one process); None: metrics off.
        self.metrics: Metrics | None = None if config.metrics is None else Metrics(
            channels=lambda: self.config.channels,
            hooks=lambda: [h.name for h in self.config.hooks])
        self.metrics_server: MetricsServer | None = None
        self.metrics_address: tuple[str, int] | None = None
        self._background: set[asyncio.Task[None]] = set()  # call_start rows being written
        self._starts: list[Attribution] = []  # calls whose call_start rows wait (START_DELAY)
        self._answered: set[str] = set()  # open calls whose call_answer hook is queued

    # -- lifecycle -----------------------------------------------------------

    async def start(self) -> None:
        cfg = self.config
        self.store = await Store.open(cfg.store.path, synchronous=cfg.store.synchronous)
        self._watch(self.store.writer, owned=False)  # closed by store.close(), last
        self.tracker = CallTracker(region=cfg.phone_region,
                                   operator_prefix=cfg.promo.operator_prefix,
                                   code_length=cfg.promo.length)
        open_calls = await self.store.open_calls()
        # with their legs still ringing or talking: their DialEnd and hang-up count
        self.tracker.restore(open_calls, await asyncio.to_thread(load_open_legs, cfg.store.path))
        if self.dynamic is not None:  # before the web and AGI sides ask about them
            await self._restore_sessions()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        self.ami = AmiConnection(
            host=cfg.ami.host, port=cfg.ami.port, username=cfg.ami.username,
            secret=cfg.ami.secret, queue=queue, events=cfg.ami.events,
            ping_interval=cfg.ami.ping_interval, liveness_timeout=cfg.ami.liveness_timeout,
            action_timeout=cfg.ami.action_timeout, reconnect_max=cfg.ami.reconnect_max,
            wanted=wanted)
        # Judged once saved as ended: on_call_finished runs before the save.
        self.judge = JudgeWorker(cfg.store.path, synchronous=cfg.store.synchronous,
                                 rules=lambda: self.config.target_rule,
                                 enqueue=self._hook_enqueuer, after=self._judged)
        self.consumer = AmiConsumer(
            queue=queue, tracker=self.tracker, save_progress=self._save_progress,
            request_snapshot=self._request_snapshot, on_call_finished=self._call_finished,
            save_outbound=self._save_outbound, on_operator_code=self._on_operator_code,
            save_legs=self._save_legs)
        track = TrackRoute(plan=lambda: self._plan, save=self._saver(queue),
                           dynamic=lambda: self.dynamic, clock=self.clock,
                           promo=lambda: self.config.promo)
        self.agi = AgiServer(build_routes(track), host=cfg.agi.host, port=cfg.agi.port,
                             max_sessions=cfg.agi.max_sessions,
                             session_timeout=cfg.agi.session_timeout,
                             env_timeout=cfg.agi.env_timeout, metrics=self.metrics)
        self.agi_address = await self.agi.start()
        await self._start_metrics()
        if cfg.web is not None:
            self.web = WebServer(cfg.web, lambda: self.dynamic, clock=self.clock)
            self.web_address = await self.web.start()
        if self.dynamic is not None:
            self._watch(asyncio.create_task(self._pool_housekeeping(), name="pools"))
            self._watch(asyncio.create_task(self._flush_sessions_forever(), name="sessions"))
        # Always scheduled: a reload may turn retention on; off, a round does nothing.
        self.retention = RetentionTask(lambda: self.config, self.store.write, cfg.store.path)
        self._watch(asyncio.create_task(self.retention.run_forever(), name="retention"))
        if cfg.hooks:
            self._start_hooks()
        self._watch(asyncio.create_task(self.judge.run(), name="judge"))
        self._watch(asyncio.create_task(self.consumer.run(), name="ami-consumer"))
        await self.ami.start()
        self._watch(asyncio.create_task(self.ami.wait_closed(), name="ami-link"))
        log.info("daemon_started", agi=f"{self.agi_address[0]}:{self.agi_address[1]}",
                 ami=f"{cfg.ami.host}:{cfg.ami.port}", store=str(cfg.store.path),
                 open_calls=len(open_calls), numbers=len(cfg.numbers),
                 channels=len(cfg.channels))

    async def run(self) -> None:
        """Wait until a stop is requested or a part dies (then raise its error)."""
        await self._stopping.wait()
        if self._fatal is not None:
            raise self._fatal

    def request_stop(self) -> None:
        self._stopping.set()

    async def stop(self) -> None:
        self._stopping.set()  # from here on, tasks ending is expected, not fatal
        started = time.monotonic()
        if self.metrics_server is not None:  # first: a scrape reads the parts stopped below
            await self.metrics_server.stop()
        if self.web is not None:
            await self.web.stop()
        cancelled = await self.agi.stop(self._stop_grace) if self.agi else 0
        if self.hooks is not None:  # before the store closes: cut attempts are handed back
            await self.hooks.stop(HOOK_STOP_GRACE)
        if self.ami is not None:
            await self.ami.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.consumer is not None:
            await self.consumer.drain()
        if self._background:  # call_start rows of the last calls, before the store closes
            await asyncio.gather(*self._background, return_exceptions=True)
        await self._write_starts()
        try:
            if self.judge is not None:  # what the drain just saved as ended, and any cut batch
                await self.judge.drain()
        finally:  # a judge that raised must not leave the store's writer unflushed
            if self.store is not None:
                if self.dynamic is not None:
                    await self._save_pool_usage()
                    await self.flush_sessions()  # the web side is closed: nothing changes now
                await self.store.close()
        log.info("daemon_stopped", agi_sessions_cancelled=cancelled,
                 seconds=round(time.monotonic() - started, 3))

    def reload(self) -> bool:
        """Re-read the config; on any error keep the running one and say why."""
        try:
            new = load_config(self.config.source)
        except ConfigError as exc:
            log.error("config_reload_failed", error=str(exc))
            return False
        ignored = [name for name in _RESTART_ONLY
                   if getattr(new, name) != getattr(self.config, name)]
        if ignored:
            log.warning("config_needs_restart", sections=ignored)
        if (new.pools, new.utm_rules, new.promo.length, new.promo.code_ttl,
                new.promo.check_digit) != (
                self.config.pools, self.config.utm_rules, self.config.promo.length,
                self.config.promo.code_ttl, self.config.promo.check_digit):
            # A new plan forgets every lease: pages get a new number at their
            # next heartbeat, and calls in progress lose their session. Promo
            # codes pages still show are kept (never drawn again while callable).
            log.warning("pools_rebuilt", pools=[p.name for p in new.pools])
            old, self.dynamic = self.dynamic, build_dynamic(new)
            if old is not None and self.dynamic is not None:
                self.dynamic.adopt_codes(old)
        if new.log != self.config.log:
            configure_logging(new.log.level, new.log.format, show_numbers=new.log.show_numbers)
        if self.tracker is not None:
            self.tracker.region = new.phone_region
            self.tracker.operator_prefix = new.promo.operator_prefix
            self.tracker.code_length = new.promo.length
        if new.hooks != self.config.hooks:
            if self.hooks is not None:  # an emptied list leaves it idle until the next reload
                self.hooks.set_hooks(new.hooks)
            elif self.store is not None and not self._stopping.is_set():
                self._start_hooks(new.hooks)
            log.info("hooks_reloaded", hooks=[h.name for h in new.hooks])
        if new.recordings.retention != self.config.recordings.retention:
            r = new.recordings.retention
            log.info("recordings_retention_reloaded", enabled=r.enabled,
                     max_age_days=r.max_age_days, max_bytes=r.max_bytes,
                     min_free_bytes=r.min_free_bytes, interval=r.interval, dry_run=r.dry_run)
            if self.retention is not None:  # a new interval applies now, not after the old
                self.retention.reschedule()
        # What runs keeps its running settings, so the next reload still
        # warns about them until the restart.
        self.config = replace(new, **{name: getattr(self.config, name) for name in ignored})
        self._plan = self.config.static_plan()
        log.info("config_reloaded", numbers=len(new.numbers), channels=len(new.channels))
        return True

    # -- internals -------------------------------------------------------------

    def _saver(self, queue: asyncio.Queue[Any]) -> Callable[[Attribution], Awaitable[None]]:
        """The AGI route's save: the record, then word to the tracker (in AMI order).

        The tracker then knows the call even if AMI never shows it (down,
        reconnecting): a resync can judge it and nothing stays open forever.
        """
        store = self.store
        assert store is not None

        async def save(attribution: Attribution) -> None:
            try:
                await store.save_attribution(attribution)
            finally:
                if self.metrics is not None:  # the AMI side, where it ends, has no channel
                    self.metrics.call_attributed(attribution.call_id, attribution.channel)
                queue.put_nowait(CallAttributed(ts=attribution.started_at,
                                                call_id=attribution.call_id))
            if self.config.hooks:
                self._queue_start(attribution)
        return save

    def _queue_start(self, attribution: Attribution) -> None:
        """Queue the `call_start` hook rows of a call, written START_DELAY s later in one batch.

        Not in the AGI answer's commit, nor right after it: built and written
        while the session is still open, they cost each lone call 0.4-0.5 ms
        of post-dial delay (bench/agi_latency.py --only-webhooks); gathered
        and written a moment later they cost it nothing measurable, and many
        calls share one write. Nothing is lost if we crash before the write:
        judging the ended call queues a missing `call_start`
        (judge.enqueue_lifecycle). stop() writes what is still waiting.
        """
        self._starts.append(attribution)
        if len(self._starts) == 1:
            asyncio.get_running_loop().call_later(START_DELAY, self._write_starts_soon)

    def _write_starts_soon(self) -> None:
        task = asyncio.create_task(self._write_starts(), name="hook-starts")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _write_starts(self) -> None:
        starts, self._starts = self._starts, []
        if not starts or self.store is None:
            return
        try:
            now = time.time()
            rows = [row for a in starts for row in start_rows(self.config.hooks, a, now)]
            if rows:
                await self.store.write(UPSERT_OUTBOX, rows)
                self.nudge_hooks()
        except Exception as exc:  # noqa: BLE001 - the judge step queues them later
            log.error("hook_start_not_queued", calls=[a.call_id for a in starts][:20],
                      error=repr(exc))

    async def _pool_housekeeping(self) -> None:
        """Expire idle sessions (memory stays bounded at night) and persist pool usage."""
        while True:
            await asyncio.sleep(POOL_TICK)
            if self.dynamic is not None:
                self.dynamic.expire(self.clock())
            await self._save_pool_usage()
            await self.flush_sessions()
            await self._purge_sessions()

    async def _restore_sessions(self) -> None:
        """The visitor sessions and promo codes of the last run (store/sessions.py).

        A store that cannot be read here is logged, not fatal: calls must still
        be tracked, and the daemon then knows only new sessions (as before a
        restart kept any).
        """
        assert self.store is not None and self.dynamic is not None
        plan, now = self.dynamic, self.clock()
        try:
            saved = await asyncio.to_thread(load_sessions, self.store.path, now)
        except (sqlite3.Error, StoreError) as exc:
            log.error("web_sessions_restore_failed", error=repr(exc))
            return
        try:
            restored = plan.restore(saved, now)
        except Exception as exc:  # noqa: BLE001 - a bad row must not keep the daemon down
            log.error("web_sessions_restore_failed", error=repr(exc))
            return
        log.info("web_sessions_restored", sessions=restored, live=len(plan.sessions),
                 codes=len(plan.promo) if plan.promo is not None else 0)

    async def _flush_sessions_forever(self) -> None:
        while True:
            await asyncio.sleep(SESSION_FLUSH)
            await self.flush_sessions()

    async def flush_sessions(self) -> int:
        """Write the sessions changed since the last flush as one batch; how many.

        Off the request path: the web side only marks sessions dirty. A failed
        write marks them again for the next round.
        """
        async with self._flushing:
            return await self._flush_sessions()

    async def _flush_sessions(self) -> int:
        plan = self.dynamic
        if plan is None or self.store is None or not plan.dirty:
            return 0
        taken = plan.take_dirty()
        # In slices, the web side's requests in between. A session changed after
        # take_dirty() gives a row at least as new, and is marked dirty again when
        # its row must follow (a page view always, a heartbeat after resave_seconds).
        rows = session_rows(taken[:FLUSH_SLICE])
        for start in range(FLUSH_SLICE, len(taken), FLUSH_SLICE):
            await asyncio.sleep(0)
            rows += session_rows(taken[start:start + FLUSH_SLICE])
        try:
            await self.store.write(UPSERT_SESSION, rows)
        except Exception as exc:  # retried next round, never the daemon's end
            log.error("web_sessions_save_failed", sessions=len(rows), error=repr(exc))
            (self.dynamic or plan).mark_dirty(session for session, _ in taken)
            return 0
        return len(rows)

    async def _purge_sessions(self) -> None:
        """Delete the stored sessions whose code and life have both ended."""
        assert self.store is not None
        try:
            await asyncio.to_thread(purge_sessions, self.store.path, self.clock())
        except (sqlite3.Error, StoreError) as exc:  # tried again next round
            log.error("web_sessions_purge_failed", error=repr(exc))

    async def _save_pool_usage(self) -> None:
        """The current and previous usage buckets of every pool, for `ctrackd pools`."""
        assert self.store is not None
        plan, now = self.dynamic, self.clock()
        if plan is None:
            return
        rows = []
        for name, pool in plan.pools.items():
            usage = pool.usage
            if usage is None:
                continue
            for bucket in usage.snapshot(now, since=now - 2 * usage.width):
                rows.append({"pool": name, "start": bucket.start, "run": self._run,
                             "width": usage.width,
                             "held_seconds": bucket.held_seconds,
                             "demand_seconds": bucket.demand_seconds,
                             "peak_held": bucket.peak_held, "peak_demand": bucket.peak_demand,
                             "leases": bucket.leases, "overflows": bucket.overflows})
        try:
            await self.store.save_pool_usage(rows)
        except Exception as exc:  # usage figures are worth a retry, never the daemon
            log.error("pool_usage_save_failed", error=repr(exc))

    async def _save_progress(self, records: list[CallProgress]) -> None:
        """The consumer's save; once committed, the ended calls go to the judge."""
        assert self.store is not None and self.judge is not None
        await self.store.save_progress(records)
        self.judge.submit(p.call_id for p in records if p.ended_at is not None)
        if self.config.hooks:  # call_answer once per call (the outbox ignores a repeat)
            answered = [p.call_id for p in records
                        if p.answered_at is not None and p.call_id not in self._answered]
            self._answered.update(answered)
            self._answered.difference_update(p.call_id for p in records if p.ended_at)
            self.judge.submit_answered(answered)

    def _hook_enqueuer(self) -> Callable[..., int] | None:
        """The outbox's enqueue with the configured hooks bound (None: no hooks, no payloads)."""
        hooks = self.config.hooks
        if not hooks:
            return None
        return lambda conn, event, call_id, payload, now: enqueue_hook(
            conn, hooks, event, call_id, payload, now)

    def _judged(self, judged: Judged) -> None:
        if judged.hooks:
            self.nudge_hooks()

    def nudge_hooks(self) -> None:
        """Deliver now what was just enqueued (the judge calls it after its commit)."""
        if self.hooks is not None:
            self.hooks.nudge()

    def _start_hooks(self, hooks: tuple[HookConfig, ...] | None = None) -> None:
        """The hook dispatcher, on its own connection to the store (hooks/dispatcher.py)."""
        cfg = self.config
        self.hooks = Dispatcher(
            lambda: queries.connect(cfg.store.path, readonly=False,
                                    synchronous=cfg.store.synchronous),
            cfg.hooks if hooks is None else hooks, metrics=self.metrics)
        self._watch(self.hooks.start(), owned=False)  # stopped by stop(), with a grace

    async def _save_legs(self, legs: list[LegRecord]) -> None:
        """The dialled legs of tracked calls, for the operators report (store/legs.py)."""
        assert self.store is not None
        await self.store.write(UPSERT_LEGS, leg_rows(legs))

    def _call_finished(self, progress: CallProgress) -> None:
        _log_call_finished(progress)
        if self.metrics is not None:
            self.metrics.call_ended(progress.call_id, progress.status.value)

    async def _start_metrics(self) -> None:
        """The Prometheus endpoint (docs/metrics.md): what it reads, then its listener."""
        cfg, metrics = self.config.metrics, self.metrics
        if cfg is None or metrics is None:
            return
        assert self.agi is not None and self.ami is not None
        metrics.watch_agi(self.agi)
        metrics.watch_ami(self.ami)
        metrics.watch_pools(lambda: self.dynamic.pools if self.dynamic is not None else {})
        metrics.watch_outbox(self._outbox_counts)
        if not cfg.loopback:
            log.warning("metrics_not_on_loopback", host=cfg.host, port=cfg.port,
                        hint="firewall it to the Prometheus host or put auth in front")
        self.metrics_server = MetricsServer(metrics, host=cfg.host, port=cfg.port)
        self.metrics_address = await self.metrics_server.start()

    async def _outbox_counts(self) -> dict[str, int]:
        """Pending deliveries per hook, on the dispatcher's thread (none: no hooks)."""
        return await self.hooks.pending_counts() if self.hooks is not None else {}

    async def _save_outbound(self, calls: list[OutboundAnswered]) -> None:
        """Answered outbound calls: they take their number off the callback list."""
        assert self.store is not None
        await self.store.write(UPSERT_OUTBOUND, outbound_rows(calls))

    async def _on_operator_code(self, keyed: OperatorCodeKeyed) -> None:
        """The operator keyed `*` + a code: re-attribute the call in the store.

        Codes live on the plan's clock, so the lookup is at `self.clock()`
        (a moment after the key press), not at Asterisk's timestamp.
        """
        assert self.store is not None
        stored = await read_attribution(self.store.path, keyed.call_id)
        new = self.operator_codes.resolve(self._plan, self.dynamic, stored, keyed, self.clock())
        if new is None:
            log.info("operator_code_ignored", call_id=keyed.call_id, code=keyed.code,
                     reason="caller_code_matched")
            return
        await self.store.write(UPSERT_PROMO, [promo_params(new)])
        log.info("operator_code_applied", call_id=keyed.call_id, code=keyed.code,
                 status=new.promo_status.value if new.promo_status else None,
                 endpoint=keyed.endpoint, tracking=new.tracking.value, channel=new.channel,
                 session_id=new.session_id)

    async def _request_snapshot(self) -> list[Any]:
        assert self.ami is not None
        return await self.ami.action({"Action": "CoreShowChannels"}, multi=True)

    def _watch(self, task: asyncio.Task[Any], *, owned: bool = True) -> None:
        """A task whose end, unless we are stopping, takes the daemon down.

        `owned` tasks are cancelled by stop(); the others end with their owner.
        """
        if owned:
            self._tasks.append(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        if task.cancelled() or self._stopping.is_set():
            return
        error = task.exception() or RuntimeError(f"task {task.get_name()} ended")
        log.critical("daemon_task_died", task=task.get_name(), error=repr(error))
        self._fatal = error
        self._stopping.set()


def _log_call_finished(progress: CallProgress) -> None:
    """The one summary line per finished call."""
    log.info("call_finished", call_id=progress.call_id, status=progress.status.value,
             did=progress.did, caller=mask_number(progress.caller),
             answered_by=progress.answered_by, ring_seconds=progress.ring_seconds,
             talk_seconds=progress.talk_seconds, duration_seconds=progress.duration_seconds,
             reason=progress.close_reason)


async def serve(daemon: Daemon, notifier: SystemdNotifier | None = None) -> int:
    """Run a daemon with signal handling until it stops; return the exit code."""
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, daemon.request_stop)
    loop.add_signal_handler(signal.SIGHUP, lambda: _reload(daemon, notifier))
    code = 0
    try:
        await daemon.start()
        if notifier is not None:
            notifier.ready(f"AGI on {daemon.agi_address[0]}:{daemon.agi_address[1]}")
            notifier.start_watchdog()
        await daemon.run()
    except Exception as exc:
        log.critical("daemon_failed", error=repr(exc))
        code = 1
    finally:
        if notifier is not None:
            notifier.stopping()
        await daemon.stop()
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(signum)
    return code


def _reload(daemon: Daemon, notifier: SystemdNotifier | None) -> None:
    if notifier is not None:
        notifier.reloading()
    daemon.reload()
    if notifier is not None:
        notifier.ready("configuration reloaded")


def run_daemon(config_path: str) -> int:
    """`ctrackd run -c FILE`: the process entry point; returns the exit code."""
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        print(f"ctrackd: {exc}", file=sys.stderr)
        return 1
    configure_logging(config.log.level, config.log.format,
                      show_numbers=config.log.show_numbers)
    # The store is shared with the asterisk group (ctrackd-agi writes it when
    # we are down): files we create must be group-writable, as systemd's
    # UMask=0007 makes them; the same when run by hand.
    os.umask(0o007)
    notifier = SystemdNotifier() if os.environ.get("NOTIFY_SOCKET") else None
    try:
        return asyncio.run(serve(Daemon(config), notifier))
    except KeyboardInterrupt:
        return 0
