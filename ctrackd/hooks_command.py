"""`ctrackd hooks`: the hook outbox, and `ctrackd hooks retry` for given-up deliveries.

What an admin asks when a CRM says it never heard of a missed call: was the
event sent, when is the next try, what did the receiver answer, was it
given up. Listing reads the store read-only like `ctrackd calls`; `retry`
is the one write (short, its own transaction): the daemon picks the rows up
at its next look at the outbox, within seconds.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ctrackd import output
from ctrackd.hooks import outbox
from ctrackd.output import Column


def hooks_arguments(p: argparse.ArgumentParser, count: Callable[[str], int],
                    format_argument: Callable[[argparse.ArgumentParser, str], None]) -> None:
    p.add_argument("action", nargs="?", choices=("list", "retry"), default="list",
                   help="list (default) the deliveries, newest first; or retry given-up"
                        " deliveries (IDs, or --all-failed): due now, attempts start over")
    p.add_argument("ids", nargs="*", type=count, metavar="ID", help="outbox ids, for retry")
    p.add_argument("--all-failed", action="store_true",
                   help="with retry: every given-up delivery")
    p.add_argument("--status", choices=outbox.STATUSES,
                   help="only deliveries in this state: pending (waiting for an attempt),"
                        " delivered, failed (given up after max_attempts)")
    p.add_argument("--hook", metavar="NAME", help="only this hook's deliveries")
    p.add_argument("--limit", type=count, default=50, metavar="N",
                   help="at most N deliveries, the newest (default 50, 0 = all)")
    format_argument(p, "json: one array, a delivery an object")


def hooks_command(args: argparse.Namespace) -> int:
    from ctrackd import cli  # the CLI's shared pieces (config, store access, output)

    config = cli.load_config(args.config)
    if args.action == "retry":
        return _retry(args, config, cli)
    if args.ids or args.all_failed:
        raise cli.CliError("IDs and --all-failed go with `ctrackd hooks retry`")
    with cli._reading(config.store.path) as conn:
        rows = outbox.list_outbox(conn, status=args.status, hook=args.hook,
                                  limit=args.limit or None)
        configured = {h.name for h in config.hooks}
        orphans = [h for h in outbox.pending_hooks(conn) if h not in configured]
        now = time.time()
        summary = outbox.summary(conn, now, hooks=[h.name for h in config.hooks])
    # On stderr: the rows on stdout stay one JSON array or one CSV table for scripts.
    for item in summary:
        if args.hook is None or item["hook"] == args.hook:
            print(summary_line(item, now), file=sys.stderr)
    if orphans:
        print(f"ctrackd: note: pending deliveries for hooks not in {args.config}:"
              f" {', '.join(orphans)} (they wait until the hook is configured again)",
              file=sys.stderr)
    if not rows and args.format == "table":
        print("ctrackd: no hook deliveries match", file=sys.stderr)
        return 0
    if args.format == "table":
        for row in rows:
            row["when"] = {"pending": row["next_attempt_at"], "delivered": row["delivered_at"],
                           "failed": row["gave_up_at"]}[row["status"]]
            if row["status"] == "delivered":  # an error it got past is history, not news
                row["last_error"] = None
    cli._print(args.format, rows, COLUMNS, outbox.FIELDS)
    return 0


def summary_line(item: dict[str, Any], now: float) -> str:
    """`crm: 3 pending (oldest 2 h), 41 delivered in the last hour, 0 failed`: what an
    admin asks first when a CRM says it is missing calls."""
    oldest = item["oldest_pending_at"]
    age = f" (oldest {_age(now - oldest)})" if oldest is not None else ""
    return (f"{item['hook']}: {item['pending']} pending{age}, {item['delivered_last_hour']}"
            f" delivered in the last hour, {item['failed']} failed")


def _age(seconds: float) -> str:
    seconds = max(0.0, seconds)
    for unit, size, limit in (("s", 1, 90), ("min", 60, 90 * 60), ("h", 3600, 48 * 3600)):
        if seconds < limit:
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds / 86400:.0f} days"


COLUMNS = [
    Column("id", "ID", align=">", max_width=7),
    Column("event", "EVENT", min_width=6, max_width=10),
    Column("hook", "HOOK", min_width=6, max_width=16),
    Column("status", "STATUS", min_width=9, max_width=9),
    Column("attempts", "TRIES", align=">"),
    Column("when", "DUE/DONE", output.local_time, min_width=11, max_width=11),
    Column("last_error", "LAST ERROR", min_width=10, max_width=60),
]


def _retry(args: argparse.Namespace, config: Any, cli: Any) -> int:
    if bool(args.ids) == args.all_failed:
        raise cli.CliError("hooks retry needs outbox IDs or --all-failed (one of the two)")
    path = config.store.path
    with _writing(path, cli) as conn:
        changed = outbox.retry(conn, None if args.all_failed else args.ids, time.time())
    missing = sorted(set(args.ids) - set(changed))
    if missing:
        print(f"ctrackd: not retried (no such delivery, or delivered already):"
              f" {', '.join(map(str, missing))}", file=sys.stderr)
    print(f"{len(changed)} {'delivery' if len(changed) == 1 else 'deliveries'} due now" + (
        "" if changed else " (nothing to retry)"))
    return 1 if missing else 0


@contextmanager
def _writing(path: Path, cli: Any) -> Iterator[sqlite3.Connection]:
    """A short read-write connection to an existing, current store (retry's one UPDATE)."""
    from ctrackd.store import queries
    from ctrackd.store.schema import require_current

    if not path.is_file():  # a typo in the config's path must not create an empty store
        raise cli.CliError(f"no call store at {path}: has the daemon run yet?")
    try:
        conn = queries.connect(path, readonly=False, busy_timeout=cli.LOCK_WAIT)
        try:
            require_current(conn, path)
            yield conn
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise cli.CliError(f"cannot update the call store {path}: {exc}") from None
