"""Recording retention in the daemon: a prune every `interval` seconds, off the event loop.

The run itself is `recordings.prune` (the same as `ctrackd recordings
prune`); this module only schedules it, hands it a worker thread (file I/O
never runs on the event loop, so never on a call's path), routes its marks
through the daemon's group-commit writer, and logs what it did.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import structlog

from ctrackd.aio import wait_event
from ctrackd.attribution.retention import format_bytes
from ctrackd.config import Config
from ctrackd.recordings import PruneReport, policy_of, prune
from ctrackd.store import queries
from ctrackd.store.recordings import MARK_DELETED

log = structlog.get_logger("ctrackd.recordings")

#: seconds after start before the daemon's first prune (start-up stays light)
FIRST_PRUNE_DELAY = 60.0
#: seconds stop() waits for a prune to finish its batch and mark it
STOP_WAIT = 10.0
#: file lines a run logs (a dry run's first pass may list thousands)
LOG_FILES = 100


class RetentionTask:
    """The daemon's schedule: a prune every `interval` seconds, in a worker thread.

    The config is read at each round, so a reload (SIGHUP) can enable,
    disable or retune retention; the daemon's reload calls `reschedule()` so
    that a new `interval` takes effect at once, not after the old one ran
    out (3600 s by default). A failed run is logged and tried again at the
    next round: retention is housekeeping, never a reason to stop taking
    calls. Marks go through the daemon's group-commit writer (`write`); the
    records are read on a read-only connection of the thread's own.
    """

    def __init__(self, config: Callable[[], Config],
                 write: Callable[[str, list[dict[str, Any]]], Awaitable[None]],
                 store_path: Path) -> None:
        self._config = config
        self._write = write
        self._store_path = store_path
        self._wake = asyncio.Event()
        self.runs = 0  # completed runs (tests, metrics)
        self.next_round: float | None = None  # loop time of the next round, while waiting

    def reschedule(self) -> None:
        """Measure the wait under way again with the config's interval (after a reload)."""
        self._wake.set()

    async def run_forever(self) -> None:
        loop = asyncio.get_running_loop()
        since, first = loop.time(), True  # the wait counts from the last round's end
        while True:
            self._wake.clear()
            interval = self._config().recordings.retention.interval
            self.next_round = since + (min(interval, FIRST_PRUNE_DELAY) if first else interval)
            if await wait_event(self._wake, max(0.0, self.next_round - loop.time())):
                # reloaded: the same wait, measured with the new interval
                log.info("recordings_retention_rescheduled", interval=interval,
                         next_round_in=round(max(0.0, self.next_round - loop.time()), 1))
                continue
            self.next_round = None
            await self.run_once()
            since, first = loop.time(), False

    async def run_once(self) -> PruneReport | None:
        config = self._config()
        retention, folder = config.recordings.retention, config.recordings.dir
        if not retention.enabled or folder is None:
            return None
        loop = asyncio.get_running_loop()
        stop = threading.Event()

        def mark(rows: list[dict[str, Any]]) -> None:
            asyncio.run_coroutine_threadsafe(self._write(MARK_DELETED, rows), loop).result(60)

        def work() -> PruneReport:
            conn = queries.connect(self._store_path, readonly=True)
            try:
                return prune(conn, folder, policy_of(retention), mark=mark,
                             dry_run=retention.dry_run, should_stop=stop.is_set)
            finally:
                conn.close()

        future = loop.run_in_executor(None, work)
        try:
            report = await asyncio.shield(future)
        except asyncio.CancelledError:
            # Stopping: the scan ends at its next folder, a deletion run after the batch
            # in hand is deleted and marked; either way the thread is done well within this.
            stop.set()
            await asyncio.wait([future], timeout=STOP_WAIT)
            raise
        except Exception as exc:  # noqa: BLE001 - logged; the next round tries again
            log.error("recordings_prune_failed", error=str(exc) or repr(exc),
                      folder=folder)
            return None
        self.runs += 1
        log_report(report)
        return report


def log_report(report: PruneReport) -> None:
    """A line per file (capped), one warning per problem, then the summary."""
    shown = [f for f in report.files if f.result != "changed"][:LOG_FILES]
    for f in shown:
        log.info(f"recording_{f.result}", call_id=f.call_id, path=f.path, bytes=f.size,
                 reason=f.reason, error=f.error)
    if report.outside:
        log.warning("recordings_outside_folder", count=len(report.outside),
                    example=report.outside[0], folder=report.folder)
    for problem in [*report.unmet, *report.errors][:LOG_FILES]:
        log.warning("recordings_retention_problem", problem=problem)
    totals = report.totals()
    del totals["unmet"], totals["errors"]
    log.info("recordings_pruned", **totals, more_files=max(0, len(report.files) - len(shown)),
             folder_before=format_bytes(report.folder_bytes_before),
             folder_after=format_bytes(report.folder_bytes_after),
             free_after=format_bytes(report.free_bytes_after))
