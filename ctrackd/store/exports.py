"""Reads for `ctrackd export`: the calls that qualify as conversions, and why the others don't.

The exporters (`ctrackd/exports/`) decide per call what a receiving system
can take; what is decided by columns alone is decided here, in SQL, so that
a store of millions of calls is counted by indexes and only the calls that
may be exported are read into Python (in start order, as an iterator, so an
export never holds them all).

A call qualifies when it has ended and is a target call (`target = 1`, the
judge's verdict), or with `all_calls` when it was answered. The others are
counted by reason: in progress, not answered, not judged yet (a verdict
comes shortly after the call ends), not a target call; and qualifying calls
older than the receiving system's window are counted without being read.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

#: the columns an exporter sees, in this order
COLUMNS = ("call_id", "started_at", "answered_at", "ended_at", "caller", "did", "channel",
           "source", "medium", "campaign", "status", "ring_seconds", "talk_seconds", "tracking",
           "first_time", "target", "session_json")

#: reasons for calls that do not qualify, as the command prints them
IN_PROGRESS = "in progress"
NOT_ANSWERED = "not answered"
NOT_JUDGED = "not judged yet"
NOT_TARGET = "not a target call"


@dataclass(frozen=True, slots=True)
class ExportCall:
    """One qualifying call, as the exporters read it."""

    call_id: str
    started_at: float
    answered_at: float | None
    ended_at: float | None
    caller: str | None
    did: str | None
    channel: str | None
    source: str | None
    medium: str | None
    campaign: str | None
    status: str
    ring_seconds: float | None
    talk_seconds: float | None
    tracking: str
    first_time: bool | None
    target: bool | None
    session: dict[str, Any] | None   # the web session's fields (utm_*, gclid, ga_client_id, ...)


def _qualifies(all_calls: bool) -> str:
    if all_calls:
        return "(ended_at IS NOT NULL AND status = 'answered')"
    return "(ended_at IS NOT NULL AND target = 1)"


def _range(since: float | None, until: float | None) -> tuple[list[str], list[float]]:
    clauses, params = [], []
    for sql, value in (("started_at >= ?", since), ("started_at < ?", until)):
        if value is not None:
            clauses.append(sql)
            params.append(value)
    return clauses, params


def left_out_counts(conn: sqlite3.Connection, *, since: float | None, until: float | None,
                    all_calls: bool) -> dict[str, int]:
    """Calls in [since, until) that do not qualify, counted per reason."""
    clauses, params = _range(since, until)
    # COALESCE: an unjudged call's `target = 1` is NULL, and NOT NULL would drop it from here
    # as from the export, so "not judged yet" could never be counted
    where = " AND ".join(clauses + [f"NOT COALESCE({_qualifies(all_calls)}, 0)"])
    rows = conn.execute(
        f"SELECT CASE WHEN ended_at IS NULL THEN '{IN_PROGRESS}'"
        f" WHEN status != 'answered' THEN '{NOT_ANSWERED}'"
        f" WHEN target IS NULL THEN '{NOT_JUDGED}' ELSE '{NOT_TARGET}' END, COUNT(*)"
        f" FROM calls WHERE {where} GROUP BY 1", params).fetchall()
    return {reason: count for reason, count in rows if count}


def count_qualifying(conn: sqlite3.Connection, *, since: float | None, until: float | None,
                     all_calls: bool) -> int:
    clauses, params = _range(since, until)
    where = " AND ".join(clauses + [_qualifies(all_calls)])
    return int(conn.execute(f"SELECT COUNT(*) FROM calls WHERE {where}", params).fetchone()[0])


def qualifying_calls(conn: sqlite3.Connection, *, since: float | None, until: float | None,
                     all_calls: bool) -> Iterator[ExportCall]:
    """The qualifying calls started in [since, until), oldest first."""
    clauses, params = _range(since, until)
    where = " AND ".join(clauses + [_qualifies(all_calls)])
    cursor = conn.execute(f"SELECT {', '.join(COLUMNS)} FROM calls WHERE {where}"
                          " ORDER BY started_at, call_id", params)
    for row in cursor:
        values = dict(zip(COLUMNS, row))
        session = values.pop("session_json")
        for name in ("first_time", "target"):
            values[name] = None if values[name] is None else bool(values[name])
        yield ExportCall(**values, session=json.loads(session) if session else None)
