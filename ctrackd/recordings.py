"""Recording retention on disk: measure, ask the planner, delete, mark the records.

Used by `ctrackd recordings prune` (recordings_command.py) and by the daemon
(`retention_task.RetentionTask`, every `recordings.retention.interval` seconds
in a worker thread: file I/O never runs on the event loop, so never on a
call's path).

Safety rules, each for a reason:
- Only files that a ctrackd record names AND that lie inside
  `recordings.dir` are ever deleted. The folder is Asterisk's; other files
  count toward its size but are never touched. A record whose path points
  elsewhere (an older `recordings.dir`) is skipped and reported.
- Symlinks are never followed: the folder is walked with `follow_symlinks=False`
  (a symlink is neither counted nor deleted), and a file is deleted through
  directory descriptors opened with O_NOFOLLOW after checking it is still the
  very file (device, inode, size, mtime) that was measured.
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
- A file that could not be measured (lstat failing: EIO, ESTALE on NFS) or
  that lies in a folder that could not be read is neither counted, deleted,
  nor marked `missing`: it is there, and a mark would hide it for good.
- An error on one file (permissions) is reported and the run goes on; an
  error marking the store stops the run (nothing more deleted unmarked).
- `should_stop` is asked once per folder the scan reads and before each
  deletion: a stop ends a long walk at once, before anything is deleted or marked.
"""

from __future__ import annotations

import errno
import os
import shutil
import sqlite3
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ctrackd.attribution.retention import (MISSING, NOT_RECORDED, Policy, Recording,
                                           plan_retention)
from ctrackd.configcalls import RetentionConfig
from ctrackd.store import queries
from ctrackd.store.recordings import RecordedCall, mark_row, recorded_calls

#: files deleted between two marks in the store (what a crash can leave unmarked)
BATCH = 50

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

    def bytes_of(self, result: str) -> int:
        return sum(f.size for f in self.files if f.result == result)

    @property
    def bytes_gone(self) -> int:
        """Bytes deleted, or in a dry run that would be: what "after" subtracts."""
        return self.bytes_of("would_delete" if self.dry_run else "deleted")

    def totals(self) -> dict[str, Any]:
        """The summary. `deleted`/`bytes_freed` count only what really went, so a
        dry run says 0 there and its figures are under `would_delete`/`bytes_would_free`."""
        return {
            "folder": self.folder, "dry_run": self.dry_run,
            "deleted": self.count("deleted"), "bytes_freed": self.bytes_of("deleted"),
            "would_delete": self.count("would_delete"),
            "bytes_would_free": self.bytes_of("would_delete"),
            "missing": self.count("missing"),
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
    scan = scan_folder(root, {rel for _, rel in located}, report.errors, should_stop)
    if scan.stopped:  # nothing measured for sure: nothing deleted, nothing marked
        report.stopped = True
        return report
    report.folder_bytes_before = scan.total
    report.free_bytes_before = shutil.disk_usage(root).free

    on_disk: list[Recording] = []
    by_call: dict[str, tuple[RecordedCall, str, _Found]] = {}
    missing: list[RecordedCall] = []
    skipped = scan.skipped()  # there perhaps, not seen: never `missing`
    for call, rel in located:
        seen = scan.found.get(rel)
        if seen is not None:
            on_disk.append(Recording(call.call_id, call.path, seen.size, call.started_at,
                                     call.ended_at, seen.mtime))
            by_call[call.call_id] = (call, rel, seen)
        elif (call.ended_at is not None and call.ended_at < now - policy.settle_seconds
              and not _within(rel, skipped)):
            missing.append(call)
    plan = plan_retention(on_disk, folder_bytes=scan.total,
                          free_bytes=report.free_bytes_before, policy=policy, now=now)
    report.foreign_bytes, report.kept, report.unmet = (plan.foreign_bytes, len(plan.kept),
                                                       plan.unmet)
    if missing and scan.files == 0:
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
    report.folder_bytes_after = report.folder_bytes_before - report.bytes_gone
    report.free_bytes_after = (report.free_bytes_before + report.bytes_gone if dry_run
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
                or (st.st_size, st.st_mtime) != (seen.size, seen.mtime)
                or now - st.st_mtime < settle):
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


@dataclass(slots=True)
class Scan:
    """What a walk of the folder found."""

    total: int = 0                 # bytes of every regular file measured
    files: int = 0                 # how many
    found: dict[str, _Found] = field(default_factory=dict)  # the wanted ones, by path
    unreadable: list[str] = field(default_factory=list)     # subfolders not listed
    unmeasured: list[str] = field(default_factory=list)     # entries lstat failed on
    stopped: bool = False          # should_stop said so: the figures are partial

    def skipped(self) -> frozenset[str]:
        """Paths the scan could not look into: the unreadable folders and the entries
        it could not measure (one of those may be a folder too)."""
        return frozenset(self.unreadable).union(self.unmeasured)


def _within(rel: str, skipped: frozenset[str]) -> bool:
    """Whether `rel` is one of `skipped` or lies under one of them."""
    if not skipped:
        return False
    parts = rel.split("/")
    return any("/".join(parts[:n]) in skipped for n in range(1, len(parts) + 1))


def scan_folder(root: str, wanted: set[str], errors: list[str],
                should_stop: Callable[[], bool] = lambda: False) -> Scan:
    """Measure every regular file under `root`; keep the `wanted` ones' figures.

    Symlinks are neither followed nor counted. Bytes are the files' sizes
    (what `ls -l` shows), which is what deleting one gives back. A folder or
    an entry that cannot be read is reported in `errors` and listed, so that
    nothing in it is taken for missing. `should_stop` is asked before each
    folder: a tree of thousands on a slow disk must not hold up a stop.
    """
    scan = Scan()
    pending = [""]
    while pending:
        if should_stop():
            scan.stopped = True
            return scan
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
                        scan.unmeasured.append(rel)
                        errors.append(f"cannot measure {entry.path}: {exc.strerror or exc}"
                                      " (neither counted nor pruned)")
                        continue
                    scan.total += st.st_size
                    scan.files += 1
                    if rel in wanted:
                        scan.found[rel] = _Found(st.st_size, st.st_mtime, st.st_dev,
                                                 st.st_ino)
        except OSError as exc:
            if not rel_dir:
                raise RetentionError(f"cannot read the recordings folder {root}:"
                                     f" {exc.strerror or exc}") from None
            scan.unreadable.append(rel_dir)
            errors.append(f"cannot read {os.path.join(root, rel_dir)}: {exc.strerror or exc}"
                          " (its files are neither counted nor pruned)")
    return scan
