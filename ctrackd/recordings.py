"""Recording retention on disk: measure, ask the planner, delete, mark the records.

Used by `ctrackd recordings prune` (recordings_command.py) and by the daemon
(`RetentionTask`, every `recordings.retention.interval` seconds in a worker
thread: file I/O never runs on the event loop, so never on a call's path).

Safety rules, each for a reason:
- Only files that a ctrackd record names AND that lie inside
  `recordings.dir` are ever deleted. The folder is Asterisk's; other files
  count toward its size but are never touched. A record whose path points
  elsewhere (an older `recordings.dir`) is skipped and reported.
- Symlinks are never followed: the folder is walked with `follow_symlinks=False`
  (a symlink is neither counted nor deleted), and a file is deleted through
  directory descriptors opened with O_NOFOLLOW after checking it is still the
  very file (device, inode, mtime) that was measured.
- Delete, then mark, per batch of BATCH files. If the run dies between the
  two, the files of one batch are gone while their records do not say so yet;
  the next run finds them missing and marks them `missing`. The other order
  (mark, then delete) would, on a crash, leave files that the records call
  deleted: nobody would ever delete them again (we never delete a file no
  open record names), so the disk would leak and the records would lie. The
  first order loses at most one batch's reasons; the second loses space and truth.
- A file missing for a call that ended (more than the settle time ago) is
  marked `missing`, so the walk stays short; but never when the folder holds no
  files at all (an unmounted disk must not turn every record into `missing`).
- An error on one file (permissions) is reported and the run goes on; an
  error marking the store stops the run (nothing more deleted unmarked).
"""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
import sqlite3
import stat
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from ctrackd.attribution.retention import (MISSING, NOT_RECORDED, Policy, Recording,
                                           format_bytes, plan_retention)
from ctrackd.config import Config
from ctrackd.configcalls import RetentionConfig
from ctrackd.store import queries
from ctrackd.store.recordings import MARK_DELETED, RecordedCall, mark_row, recorded_calls

log = structlog.get_logger("ctrackd.recordings")

#: files deleted between two marks in the store (what a crash can leave unmarked)
BATCH = 50
#: seconds after start before the daemon's first prune (start-up stays light)
FIRST_PRUNE_DELAY = 60.0
#: seconds stop() waits for a prune to finish its batch and mark it
STOP_WAIT = 10.0
#: file lines a run logs (a dry run's first pass may list thousands)
LOG_FILES = 100

Mark = Callable[[list[dict[str, Any]]], None]


class RetentionError(Exception):
    """The run could not start (no folder, unreadable): one sentence, nothing deleted."""


@dataclass(frozen=True, slots=True)
class _Found:
    size: int
    mtime: float
    dev: int
    ino: int


@dataclass(slots=True)
class FileResult:
    """What happened to one recording: deleted, would_delete, missing, failed, changed."""

    call_id: str
    started_at: float
    path: str
    size: int
    reason: str
    result: str
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"call_id": self.call_id, "started_at": queries.iso_utc(self.started_at),
                "path": self.path, "bytes": self.size, "reason": self.reason,
                "result": self.result, "error": self.error}


@dataclass(slots=True)
class PruneReport:
    folder: str
    dry_run: bool
    policy: Policy
    folder_bytes_before: int = 0
    free_bytes_before: int = 0
    folder_bytes_after: int = 0
    free_bytes_after: int = 0
    foreign_bytes: int = 0
    files: list[FileResult] = field(default_factory=list)
    kept: int = 0                    # wanted by a limit but protected (in progress, fresh)
    outside: list[str] = field(default_factory=list)  # record paths outside the folder
    unmet: tuple[str, ...] = ()
    errors: list[str] = field(default_factory=list)
    stopped: bool = False            # the daemon stopped mid-run

    def count(self, result: str) -> int:
        return sum(1 for f in self.files if f.result == result)

    @property
    def bytes_freed(self) -> int:
        return sum(f.size for f in self.files if f.result in ("deleted", "would_delete"))

    def totals(self) -> dict[str, Any]:
        return {
            "folder": self.folder, "dry_run": self.dry_run,
            "deleted": self.count("would_delete" if self.dry_run else "deleted"),
            "bytes_freed": self.bytes_freed, "missing": self.count("missing"),
            "failed": self.count("failed") + self.count("changed"), "kept": self.kept,
            "outside_folder": len(self.outside),
            "folder_bytes_before": self.folder_bytes_before,
            "folder_bytes_after": self.folder_bytes_after,
            "other_files_bytes": self.foreign_bytes,
            "free_bytes_before": self.free_bytes_before,
            "free_bytes_after": self.free_bytes_after,
            "unmet": list(self.unmet), "errors": list(self.errors), "stopped": self.stopped,
        }


def policy_of(retention: RetentionConfig) -> Policy:
    return Policy(max_age_days=retention.max_age_days, max_bytes=retention.max_bytes,
                  min_free_bytes=retention.min_free_bytes)


def prune(conn: sqlite3.Connection, folder: str | Path, policy: Policy, *, mark: Mark,
          dry_run: bool, clock: Callable[[], float] = time.time,
          should_stop: Callable[[], bool] = lambda: False) -> PruneReport:
    """One retention run over `folder`; `conn` reads the records, `mark` writes the marks.

    Raises RetentionError when the folder cannot be read at all. In a dry
    run nothing is deleted and `mark` is never called.
    """
    configured = os.path.normpath(os.path.abspath(folder))
    if not os.path.isdir(configured):
        raise RetentionError(f"the recordings folder {configured} does not exist"
                             " (recordings.dir)")
    root = os.path.realpath(configured)
    now = clock()
    report = PruneReport(folder=configured, dry_run=dry_run, policy=policy)
    calls = list(recorded_calls(conn))
    located: list[tuple[RecordedCall, str]] = []
    for call in calls:
        rel = relative_path(call.path, configured, root)
        if rel is None:
            report.outside.append(call.path)
        else:
            located.append((call, rel))
    total, files, found, unreadable = scan_folder(root, {rel for _, rel in located},
                                                  report.errors)
    report.folder_bytes_before = total
    report.free_bytes_before = shutil.disk_usage(root).free

    on_disk: list[Recording] = []
    by_call: dict[str, tuple[RecordedCall, str, _Found]] = {}
    missing: list[RecordedCall] = []
    for call, rel in located:
        seen = found.get(rel)
        if seen is not None:
            on_disk.append(Recording(call.call_id, call.path, seen.size, call.started_at,
                                     call.ended_at, seen.mtime))
            by_call[call.call_id] = (call, rel, seen)
        elif (call.ended_at is not None and call.ended_at < now - policy.settle_seconds
              and not any(rel.startswith(d + "/") for d in unreadable)):
            missing.append(call)
    plan = plan_retention(on_disk, folder_bytes=total, free_bytes=report.free_bytes_before,
                          policy=policy, now=now)
    report.foreign_bytes, report.kept, report.unmet = (plan.foreign_bytes, len(plan.kept),
                                                       plan.unmet)
    if missing and files == 0:
        report.errors.append(f"{configured} holds no files at all (a disk not mounted?):"
                             f" {len(missing)} records whose recording is missing were left"
                             " as they are")
        missing = []

    batch = _Batch(mark, clock, report, dry_run)
    marked = True
    for call in missing:
        reason = MISSING if call.answered_at is not None else NOT_RECORDED
        report.files.append(FileResult(call.call_id, call.started_at, call.path, 0, reason,
                                       "missing"))
        batch.add(call, reason)
        if len(batch.rows) >= BATCH and not (marked := batch.flush()):
            break
    if marked and batch.flush():
        root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for deletion in plan.deletions:
                if should_stop():
                    report.stopped = True
                    break
                call, rel, seen = by_call[deletion.recording.call_id]
                result = FileResult(call.call_id, call.started_at, call.path, seen.size,
                                    deletion.reason, "would_delete")
                report.files.append(result)
                if dry_run:
                    continue
                _delete(root_fd, rel, seen, result, now, policy.settle_seconds)
                if result.result == "deleted":
                    batch.add(call, deletion.reason)
                if len(batch.rows) >= BATCH and not batch.flush():
                    break
            batch.flush()
        finally:
            os.close(root_fd)
    report.files.sort(key=lambda f: f.started_at)  # missing ones were marked first
    report.folder_bytes_after = report.folder_bytes_before - report.bytes_freed
    report.free_bytes_after = (report.free_bytes_before + report.bytes_freed if dry_run
                               else shutil.disk_usage(root).free)
    return report


class _Batch:
    """Marks waiting for their commit; a failed commit stops the run."""

    def __init__(self, mark: Mark, clock: Callable[[], float], report: PruneReport,
                 dry_run: bool) -> None:
        self.mark, self.clock, self.report, self.dry_run = mark, clock, report, dry_run
        self.rows: list[dict[str, Any]] = []

    def add(self, call: RecordedCall, reason: str) -> None:
        if not self.dry_run:
            self.rows.append(mark_row(call, self.clock(), reason))

    def flush(self) -> bool:
        """Commit the marks; False (and an error in the report) if the store refused."""
        rows, self.rows = self.rows, []
        if not rows:
            return True
        try:
            self.mark(rows)
        except Exception as exc:  # noqa: BLE001 - the report says it; the caller stops
            self.report.errors.append(
                f"could not mark {len(rows)} records in the call store ({exc}); their files"
                " are gone and the next run marks them missing; stopped here")
            return False
        return True


def _delete(root_fd: int, rel: str, seen: _Found, result: FileResult, now: float,
            settle: float) -> None:
    """Delete `rel` under the folder if it is still the file measured; set result."""
    parts = rel.split("/")
    opened: list[int] = []
    fd = root_fd
    try:
        for part in parts[:-1]:  # never through a symlink, even one made since the scan
            fd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            opened.append(fd)
        st = os.stat(parts[-1], dir_fd=fd, follow_symlinks=False)
        if (not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) != (seen.dev, seen.ino)
                or st.st_mtime != seen.mtime or now - st.st_mtime < settle):
            result.result, result.error = "changed", "changed since it was measured: kept"
            return
        os.unlink(parts[-1], dir_fd=fd)
        result.result = "deleted"
    except FileNotFoundError:  # gone meanwhile (another prune): the record says why anyway
        result.result, result.size = "deleted", 0
    except OSError as exc:
        result.result = "failed"
        result.error = f"{exc.strerror or exc}" + (
            " (the ctrackd user needs write access to the folder)"
            if exc.errno in (errno.EACCES, errno.EPERM) else "")
    finally:
        for opened_fd in opened:
            os.close(opened_fd)


def relative_path(path: str, configured: str, root: str) -> str | None:
    """`path` relative to the recordings folder, or None when it lies outside.

    A bare file name (a record written before recordings.dir was set: it is
    relative to Asterisk's monitor folder) is looked for in the folder. Any
    `..` is refused outright rather than reasoned about.
    """
    if not path or ".." in path.split("/"):
        return None
    full = os.path.normpath(path if os.path.isabs(path) else os.path.join(configured, path))
    for base in (configured, root):
        prefix = base.rstrip("/") + "/"
        if full.startswith(prefix) and len(full) > len(prefix):
            return full[len(prefix):]
    return None


def scan_folder(root: str, wanted: set[str], errors: list[str]
                ) -> tuple[int, int, dict[str, _Found], list[str]]:
    """(total bytes, file count, the wanted files found, subfolders we could not read).

    Regular files only, symlinks neither followed nor counted. Bytes are the
    files' sizes (what `ls -l` shows), which is what deleting one gives back.
    """
    total, count = 0, 0
    found: dict[str, _Found] = {}
    unreadable: list[str] = []
    pending = [""]
    while pending:
        rel_dir = pending.pop()
        try:
            with os.scandir(os.path.join(root, rel_dir) if rel_dir else root) as entries:
                for entry in entries:
                    rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            pending.append(rel)
                            continue
                        if not entry.is_file(follow_symlinks=False):
                            continue
                        st = entry.stat(follow_symlinks=False)
                    except OSError as exc:
                        errors.append(f"cannot measure {entry.path}: {exc.strerror or exc}")
                        continue
                    total += st.st_size
                    count += 1
                    if rel in wanted:
                        found[rel] = _Found(st.st_size, st.st_mtime, st.st_dev, st.st_ino)
        except OSError as exc:
            if not rel_dir:
                raise RetentionError(f"cannot read the recordings folder {root}:"
                                     f" {exc.strerror or exc}") from None
            unreadable.append(rel_dir)
            errors.append(f"cannot read {os.path.join(root, rel_dir)}: {exc.strerror or exc}"
                          " (its files are neither counted nor pruned)")
    return total, count, found, unreadable


# -- in the daemon ----------------------------------------------------------------

class RetentionTask:
    """The daemon's schedule: a prune every `interval` seconds, in a worker thread.

    The config is read at each round, so a reload (SIGHUP) can enable,
    disable or retune retention. A failed run is logged and tried again at
    the next round: retention is housekeeping, never a reason to stop taking
    calls. Marks go through the daemon's group-commit writer (`write`); the
    records are read on a read-only connection of the thread's own.
    """

    def __init__(self, config: Callable[[], Config],
                 write: Callable[[str, list[dict[str, Any]]], Awaitable[None]],
                 store_path: Path) -> None:
        self._config = config
        self._write = write
        self._store_path = store_path
        self.runs = 0  # completed runs (tests, metrics)

    async def run_forever(self) -> None:
        delay = min(self._config().recordings.retention.interval, FIRST_PRUNE_DELAY)
        while True:
            await asyncio.sleep(delay)
            await self.run_once()
            delay = self._config().recordings.retention.interval

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
        except asyncio.CancelledError:  # stopping: let the batch in hand be deleted and marked
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
        log.info("recording_would_delete" if f.result == "would_delete" else
                 f"recording_{f.result}", call_id=f.call_id, path=f.path, bytes=f.size,
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

