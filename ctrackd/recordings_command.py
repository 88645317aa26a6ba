"""`ctrackd recordings prune [--dry-run]`: recording retention by hand.

The same run as the daemon's schedule (ctrackd/recordings.py), with the
config's limits or, for a one-off run, `--max-age-days`, `--max-size`,
`--min-free` (each replaces that one limit; the others stay as configured).
Prints what it deleted (or would delete) and the totals. Exit 0 when the
run went through, even if a limit could not be met (it says why); exit 1
with a sentence when there is nothing to prune with (no folder, no limit),
the store cannot be written, or a file could not be deleted.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ctrackd import output
from ctrackd.attribution.retention import format_bytes, plural
from ctrackd.configcalls import SIZE_EXPECTED, parse_size
from ctrackd.output import Column
from ctrackd.store import queries
from ctrackd.store.recordings import check_writable, mark_deleted
from ctrackd.store.schema import StoreError, require_current

if TYPE_CHECKING:
    from ctrackd.recordings import PruneReport

FORMATS = ("table", "json")


def recordings_arguments(p: argparse.ArgumentParser) -> None:
    actions = p.add_subparsers(title="actions", metavar="ACTION", dest="action",
                               required=True)
    pr = actions.add_parser(
        "prune", help="delete recordings past the retention limits, oldest first",
        description="Delete ctrackd's recordings past recordings.retention's limits, oldest"
                    " first; never one of a call in progress or a file still being written;"
                    " never a file no call record names. Each record keeps its path and says"
                    " when and why its recording went.")
    # SUPPRESS: given here or before the action (`recordings -c F prune`), both work.
    pr.add_argument("-c", "--config", default=argparse.SUPPRESS, metavar="FILE",
                    help="the config file (as before the action)")
    pr.add_argument("--dry-run", action="store_true",
                    help="only say what would be deleted; delete and mark nothing")
    pr.add_argument("--max-age-days", type=_days, metavar="DAYS",
                    help="this run only: delete recordings of calls older than DAYS")
    pr.add_argument("--max-size", type=_size, metavar="SIZE",
                    help="this run only: keep the folder under SIZE (500M, 20G, 1T)")
    pr.add_argument("--min-free", type=_size, metavar="SIZE",
                    help="this run only: keep SIZE free on the folder's disk")
    pr.add_argument("--format", choices=FORMATS, default="table",
                    help="table (80 columns, local times, then the totals) or json (one"
                         " object: the totals and `files`)")


def recordings_command(args: argparse.Namespace, config: Any, width: int) -> int:
    if args.action != "prune":  # argparse allows only the actions above
        raise AssertionError(args.action)
    folder = config.recordings.dir
    if folder is None:
        return _fail(f"{args.config} sets no recordings.dir: ctrackd does not know where the"
                     " recordings are")
    retention = config.recordings.retention
    overrides = {name: value for name, value in (
        ("max_age_days", args.max_age_days), ("max_bytes", args.max_size),
        ("min_free_bytes", args.min_free)) if value is not None}
    retention = replace(retention, **overrides)
    if not retention.enabled:
        return _fail(f"retention is not configured in {args.config} (recordings.retention)"
                     " and no --max-age-days, --max-size or --min-free was given: nothing"
                     " to prune")
    from ctrackd.recordings import RetentionError  # structlog and the rest: only when run
    try:
        report = _run(config.store.path, folder, retention, args.dry_run)
    except RetentionError as exc:
        return _fail(str(exc))
    if args.format == "json":
        sys.stdout.write(_json(report))
    else:
        sys.stdout.write(_table(report, width))
    for error in report.errors:
        print(f"ctrackd: {error}", file=sys.stderr)
    for f in report.files:
        if f.result == "failed":
            print(f"ctrackd: cannot delete {f.path}: {f.error}", file=sys.stderr)
    # The run went on past these; the exit code still tells a script that it must look.
    return 1 if report.errors or report.count("failed") else 0


def _run(store_path: Any, folder: str, retention: Any, dry_run: bool) -> PruneReport:
    from ctrackd.recordings import policy_of, prune
    if not os.path.isfile(store_path):
        raise StoreError(f"no call store at {store_path}: has the daemon run yet?")
    try:
        conn = queries.connect(store_path, readonly=dry_run)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open the call store {store_path}: {exc}") from None
    try:
        require_current(conn, store_path)
        if not dry_run:
            try:
                check_writable(conn)
            except sqlite3.Error as exc:  # before anything is deleted, not after
                raise StoreError(f"cannot write the call store {store_path} ({exc}): nothing"
                                 " deleted") from None
        return prune(conn, folder, policy_of(retention), mark=lambda rows: mark_deleted(
            conn, rows), dry_run=dry_run, clock=time.time)
    finally:
        conn.close()


def _json(report: PruneReport) -> str:
    """One object: the totals, then `files` (each: call_id, started_at, path, bytes,
    reason, result, error)."""
    body = report.totals()
    body["files"] = [f.as_dict() for f in report.files]
    return json.dumps(body, ensure_ascii=False, indent=2) + "\n"


def _table(report: PruneReport, width: int) -> str:
    # Missing files only in the totals: a first run may find thousands (unanswered calls).
    rows = [dict(f.as_dict(), file=os.path.basename(f.path),
                 result=f.result.replace("_", " ")) for f in report.files
            if f.result != "missing"]
    # The file name is the row's only identifier: never cut (the other columns give
    # way, and a name longer than the room left makes the line longer instead).
    name = max([len(row["file"]) for row in rows], default=0)
    text = output.render_table(rows, [
        Column("started_at", "CALL", output.local_time, min_width=11, max_width=11),
        Column("bytes", "SIZE", _size_cell, ">", min_width=6, max_width=10),
        Column("result", "RESULT", min_width=7, max_width=12),
        Column("reason", "REASON", min_width=6, max_width=40),
        Column("file", "FILE", min_width=name, max_width=name),
    ], width=width) if rows else ""
    t = report.totals()
    count, freed = ((t["would_delete"], t["bytes_would_free"]) if report.dry_run
                    else (t["deleted"], t["bytes_freed"]))
    verb = "dry run: would delete" if report.dry_run else "deleted"
    lines = [
        f"{verb} {plural(count, 'recording')}, {format_bytes(freed)}"
        + (f"; {plural(t['missing'], 'missing file')}"
           f"{' to mark' if report.dry_run else ' marked'}" if t["missing"] else ""),
        f"folder {report.folder}: {format_bytes(report.folder_bytes_before)} ->"
        f" {format_bytes(report.folder_bytes_after)}"
        + (f" ({format_bytes(report.foreign_bytes)} other files, never deleted)"
           if report.foreign_bytes else ""),
        f"free space: {format_bytes(report.free_bytes_before)} ->"
        f" {format_bytes(report.free_bytes_after)}",
    ]
    if report.kept:
        lines.append(f"kept {plural(report.kept, 'recording')} a limit wanted gone (calls in"
                     " progress or files still being written)")
    if report.outside:
        lines.append(f"skipped {plural(len(report.outside), 'record')} whose recording lies"
                     f" outside the folder (e.g. {report.outside[0]})")
    lines += [f"limit not met: {sentence}" for sentence in report.unmet]
    return text + "\n".join(lines) + "\n"


def _size_cell(n: int | None) -> str:
    return "-" if not n else format_bytes(n)


def _fail(sentence: str) -> int:
    print(f"ctrackd: {sentence}", file=sys.stderr)
    return 1


def _days(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= 36500:
        raise argparse.ArgumentTypeError(f"expected a number of days above 0, found {text!r}")
    return value


def _size(text: str) -> int:
    value = parse_size(text)
    if value is None or value <= 0:
        raise argparse.ArgumentTypeError(f"expected {SIZE_EXPECTED}, found {text!r}")
    return value
