"""`ctrackd report --by GROUPING`: calls, target calls, cost, cost per call, revenue and ROI.

    ctrackd report --by campaign --since -30d
    ctrackd report --by keyword --since 2026-11-01 --until 2026-11-30 --format csv

One explicit table, GROUPINGS: a grouping's name, its help, how a group's
key reads in the table, and (for reports that are not about calls, such as
the operators') its own `run`. Adding a grouping is one entry there.

Money columns (docs/reports.md) come when the config or the store has
spend (`spend:` budgets, `ctrackd spend import`) or a value (`exports.value`,
`exports.values`): cost, cost per call, cost per target call, revenue (the
value of the target calls) and ROI ((revenue - cost) / cost). JSON and CSV
always carry those fields (null when unknown); the table shows them instead
of the ring and talk times when there is money to show, so that it still
fits 80 columns. Notes (spend no group took, hours without cost) go to
stderr: a pipe gets the rows alone.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ctrackd import output, progress
from ctrackd.output import Column
from ctrackd.store import reports, spend

BASE_FIELDS = ("calls", "answered", "missed", "target", "unique_callers", "answer_rate",
               "avg_ring_seconds", "avg_talk_seconds")


class ReportError(Exception):
    """A sentence for the admin (the CLI prints it and exits 1)."""


@dataclass(frozen=True)
class Grouping:
    help: str
    title: str                                   # the key column's title in the table
    label: Callable[[Any], str] = output.text    # a group's key as a table cell
    #: a report of its own (args, config, conn, width) -> exit code; None: calls and money
    run: Callable[[argparse.Namespace, Any, sqlite3.Connection, int], int] | None = None


def _hour(value: Any) -> str:
    return f"{value:02d}:00" if isinstance(value, int) else output.text(value)


GROUPINGS: dict[str, Grouping] = {
    "channel": Grouping("the channel (its config key)", "CHANNEL"),
    "source": Grouping("utm_source, or the channel's source", "SOURCE"),
    "medium": Grouping("utm_medium, or the channel's medium", "MEDIUM"),
    "campaign": Grouping("the channel and its utm_campaign (or the channel's campaign)",
                         "CAMPAIGN"),
    "keyword": Grouping("the web session's utm_term (pool and promo calls)", "KEYWORD"),
    "day": Grouping("local calendar day", "DAY"),
    "hour": Grouping("local hour of day, 00-23 (no cost: spend is per day)", "HOUR", _hour),
    "weekday": Grouping("local weekday, Mon-Sun", "WEEKDAY"),
}


def by_help() -> str:
    return "; ".join(f"{name}: {g.help}" for name, g in GROUPINGS.items()) + " (default: channel)"


def run_report(args: argparse.Namespace, config: Any, conn: sqlite3.Connection, width: int, *,
               now: float | None = None) -> int:
    grouping = GROUPINGS[args.by]
    if grouping.run is not None:
        return grouping.run(args, config, conn, width)
    by = args.by
    with progress.timing(conn, f"report by {by}"):
        rows = reports.report(conn, by=by, since=args.since, until=args.until)
        money = build_money(conn, config, args.since, args.until,
                            now=time.time() if now is None else now)
        targets = (reports.target_channels(conn, by=by, since=args.since, until=args.until)
                   if money.has_values else {})
    rows, unsplit = reports.with_money(rows, by, money, targets)
    rows = reports.key_fields(rows, by)  # by campaign: channel and campaign
    keys = reports.KEY_FIELDS.get(by, (by,))
    fields = (*keys, *BASE_FIELDS, *reports.MONEY_FIELDS, "is_total")
    notes = _notes(by, rows[-1], unsplit, money)
    if not output.write_rows(args.format, rows, fields):
        for row in rows:  # None is a group of its own (calls without that key)
            cells = ["(none)" if row[key] is None else grouping.label(row[key]) for key in keys]
            # by campaign one cell `campaign (channel)`: two columns would not fit 80, and
            # a narrow cell cuts the channel, not the campaign
            row[by] = "TOTAL" if row["is_total"] else (
                f"{cells[1]} ({cells[0]})" if len(cells) == 2 else cells[0])
        columns = _money_columns(by, grouping) if money.has_spend or money.has_values \
            else _call_columns(by, grouping)
        sys.stdout.write(output.render_table(rows[:-1], columns, width=width,
                                             footer=rows[-1:]))
    for note in notes:
        print(f"ctrackd: note: {note}", file=sys.stderr)
    return 0


def build_money(conn: sqlite3.Connection, config: Any, since: float | None,
                until: float | None, *, now: float) -> reports.Money:
    """The spend rows over the report's days, their share inside the range, and the values."""
    first_spend, _ = spend.stored_days(conn)
    first_call = None
    if since is None:
        first_call = conn.execute("SELECT MIN(started_at) FROM calls").fetchone()[0]
    first, last, coverage = reports.spend_days(since, until, None, first_call=first_call,
                                               first_spend=first_spend, now=now)
    values = config.exports
    currency = config.spend.currency or values.currency
    rows = spend.spend_rows(conn, config.spend, first, last, currency)
    has_values = values.value is not None or bool(values.channel_values)
    found = reports.currencies(r for r in rows if coverage.get(r.day))
    if has_values and values.currency:
        found.add(values.currency)
    if len(found) > 1:
        raise ReportError(f"spend and values in {' and '.join(sorted(found))}: a report adds"
                          " one currency only (import each file with its currency, and set"
                          " spend.currency / exports.currency alike)")
    return reports.Money(spend=rows, coverage=coverage,
                         has_spend=bool(config.spend.budgets) or first_spend is not None,
                         value_for=values.value_for, has_values=has_values,
                         currency=next(iter(found), currency))


def _notes(by: str, total: dict[str, Any], unsplit: float, money: reports.Money) -> list[str]:
    notes = []
    if by == "hour" and money.has_spend:
        notes.append("spend is per day, so hours have no cost; the total has all of it")
    elif unsplit > 0.005 and by in reports.SPEND_KEY:
        key = reports.SPEND_KEY[by]
        notes.append(f"{unsplit:,.2f} of spend names no {key} (a budget or row for a channel"
                     f" as a whole): it counts in the total only")
    return notes


def _money(value: Any) -> str:
    """Whole currency units with thin spaces in the table (JSON/CSV keep the cents)."""
    return "-" if value is None else f"{value:,.0f}".replace(",", " ")


def _roi(value: Any) -> str:
    return "-" if value is None else f"{value:+.0%}"


def _call_columns(by: str, grouping: Grouping) -> list[Column]:
    return [
        Column(by, grouping.title, min_width=8, max_width=24),
        Column("calls", "CALLS", align=">"),
        Column("answered", "ANSWERED", align=">"),
        Column("missed", "MISSED", align=">"),
        Column("target", "TARGET", align=">"),
        Column("unique_callers", "UNIQUE", align=">"),
        Column("answer_rate", "RATE", output.percent, ">"),
        Column("avg_ring_seconds", "AVG RING", output.duration, ">"),
        Column("avg_talk_seconds", "AVG TALK", output.duration, ">"),
    ]


def _money_columns(by: str, grouping: Grouping) -> list[Column]:
    return [
        Column(by, grouping.title, min_width=8, max_width=24),
        Column("calls", "CALLS", align=">"),
        Column("target", "TARGET", align=">"),
        Column("cost", "COST", _money, ">", min_width=9),
        Column("cost_per_call", "PER CALL", _money, ">"),
        Column("cost_per_target", "PER TARGET", _money, ">"),
        Column("revenue", "REVENUE", _money, ">", min_width=10),
        Column("roi", "ROI", _roi, ">", min_width=6),
    ]
