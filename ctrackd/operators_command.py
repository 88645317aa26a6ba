"""`ctrackd report --by operator` and `--by operator-hour`: the operators report.

Kept apart from the channel/campaign report (cli.py `report_command`): its
rows are endpoints (or hours of day) read from `call_legs`, not calls, and
its columns are its own. `report_command` hands these two groupings here
(`run_operators`); cli.py adds them to the `--by` choices. The SQL
and the meaning of each column: store/operators.py, docs/operators.md.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
from typing import Any

from ctrackd import output, progress
from ctrackd.output import Column
from ctrackd.store import operators as store

#: the `--by` values this module answers (cli.py lists them beside report_command's)
GROUPINGS = ("operator", "operator-hour")
GROUPINGS_HELP = ("operator: one row per phone (endpoint): offered, answered, missed while it"
                  " rang, time to answer; operator-hour: missed calls per hour of day")


def run_operators(args: argparse.Namespace, conn: sqlite3.Connection, width: int) -> None:
    """Print the operators report (`--by operator`) or missed calls per hour (`operator-hour`)."""
    if args.by == "operator":
        with progress.timing(conn, "report by operator"):  # seconds on a million calls
            rows = store.operator_report(conn, since=args.since, until=args.until)
        fields, columns = store.OPERATOR_FIELDS, _operator_columns()
        key = "endpoint"
    else:
        with progress.timing(conn, "report by operator-hour"):
            rows = store.missed_by_hour(conn, since=args.since, until=args.until)
        fields, columns = store.HOUR_FIELDS, _hour_columns()
        key = "hour"
    if output.write_rows(args.format, rows, fields):
        return
    if args.by == "operator" and len(rows) == 1:
        print("ctrackd: no phone rang for a tracked call in this period (call_legs is empty"
              " for it: see docs/operators.md)", file=sys.stderr)
    for row in rows:
        row[key] = "TOTAL" if row["is_total"] else row[key]
    sys.stdout.write(output.render_table(rows[:-1], columns, width=width, footer=rows[-1:]))


def _operator_columns() -> list[Column]:
    return [
        Column("endpoint", "ENDPOINT", min_width=8, max_width=24),
        Column("offered", "OFFERED", align=">"),
        Column("answered", "ANSWERED", align=">"),
        Column("rang_not_answered", "NOT ANS", align=">"),
        Column("missed", "MISSED", align=">"),
        Column("avg_answer_seconds", "TO ANSWER", output.duration, ">"),
        Column("avg_talk_seconds", "AVG TALK", output.duration, ">"),
        Column("target_share", "TARGET", output.percent, ">"),
    ]


def _hour_columns() -> list[Column]:
    return [
        Column("hour", "HOUR", min_width=5),
        Column("calls", "CALLS", align=">"),
        Column("answered", "ANSWERED", align=">"),
        Column("missed", "MISSED", align=">"),
        Column("missed_while_rang", "RANG", align=">"),
        Column("missed_unrung", "UNRUNG", align=">"),
        Column("missed_rate", "MISSED %", output.percent, ">"),
    ]
