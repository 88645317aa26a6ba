"""`ctrackd missed`: the callback list, the longest waiting first.

One line per number whose latest missed calls (no answer, busy, abandoned,
failed) have not been followed by a contact: a later answered call from that
number, or an answered outbound call to it that AMI showed. Each line says
when the first of those missed calls came, how many attempts the caller
made since the last contact, how long they have been waiting and the
channel of their latest attempt. Withheld missed calls cannot be called
back: they are counted apart. The SQL is in `store/callers.py`.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
from typing import Any

from ctrackd import output
from ctrackd.output import Column
from ctrackd.store import callers as store


def missed_arguments(p: argparse.ArgumentParser, range_arguments: Any, format_argument: Any,
                     count: Any) -> None:
    range_arguments(p)
    p.add_argument("--limit", type=count, default=0, metavar="N",
                   help="at most N numbers, the longest waiting first (default 0 = all)")
    p.add_argument("--full-numbers", action="store_true",
                   help="show full numbers in the table (masked by default)")
    format_argument(p, "json: one array, a number to call back an object")


def print_missed(args: argparse.Namespace, conn: sqlite3.Connection, now: float,
                 width: int) -> None:
    rows = store.callback_list(conn, now=now, since=args.since, until=args.until,
                               limit=args.limit or None)
    withheld = store.withheld_calls(conn, since=args.since, until=args.until, missed_only=True)
    note = (f"{withheld} missed call{'s' if withheld != 1 else ''} from withheld numbers"
            " (cannot be called back)") if withheld else None
    if args.format != "table":
        output.write_rows(args.format, rows, store.MISSED_FIELDS)
    elif rows:
        number = output.text if args.full_numbers else output.mask_number
        sys.stdout.write(output.render_table(rows, [
            Column("caller", "NUMBER", number, min_width=8, max_width=16),
            Column("first_missed_at", "FIRST MISSED", output.local_time, min_width=11,
                   max_width=12),
            Column("attempts", "ATTEMPTS", align=">"),
            Column("waiting_seconds", "WAITING", output.waiting, ">", min_width=7),
            Column("last_missed_at", "LAST", output.local_time, min_width=11, max_width=11),
            Column("last_channel", "LAST CHANNEL", min_width=7, max_width=24),
        ], width=width))
    else:
        print("ctrackd: nobody is waiting for a callback", file=sys.stderr)
    if note and args.format == "table" and rows:  # the reader sees it under the table
        print(f"+ {note}")
    elif note:  # a script's output stays rows only
        print(f"ctrackd: note: {note}", file=sys.stderr)
