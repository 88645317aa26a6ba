"""The operators report (`ctrackd report --by operator`) and missed calls per hour of day
(`--by operator-hour`), read from `call_legs` joined to `calls`. docs/operators.md.

Per answering endpoint (one row each, as `tracker.endpoint_of` names it):
- offered: calls for which the endpoint rang (a call that rang it twice, a
  queue's retry, counts once);
- answered: the calls it answered (a transfer target that took the call counts
  too, so the column can exceed the calls whose `answered_by` it is; a call
  transferred back to a phone that answered it before counts twice);
- rang_not_answered: offered - answered (a ring-group loser whose colleague
  answered is one of them: not a loss for the business);
- missed: of those, the calls that were missed as a whole (status busy,
  no_answer, abandoned, failed): "missed while it rang";
- avg_answer_seconds: from its leg's DialBegin to its answer, calls it answered;
- avg_talk_seconds: its own leg's talk (after a transfer, its part only);
- target, target_share: target calls among the calls it answered (0..1).

The total row counts each call once (a ring group's call offered to three
phones is one call offered), so the endpoints' rows do not add up to it.

Fast on millions of calls: one pass over the legs joined to their calls,
grouped per endpoint (see `_LEGS`); the total comes from the same pass.
"""

from __future__ import annotations

import sqlite3
from datetime import datetime, tzinfo
from typing import Any

from ctrackd.store.queries import MISSED_SQL

#: the fields of an operator row (JSON/CSV), in this order
OPERATOR_FIELDS = ("endpoint", "offered", "answered", "rang_not_answered", "missed",
                   "avg_answer_seconds", "avg_talk_seconds", "target", "target_share",
                   "is_total")
#: the fields of an hour row
HOUR_FIELDS = ("hour", "calls", "answered", "missed", "missed_while_rang", "missed_unrung",
               "missed_rate", "is_total")

# One pass over the legs. A call that rang the same phone twice (a queue's
# retries) is offered to it once: only the phone's first leg in the call
# counts as an offer (a primary-key probe per leg; grouping per (endpoint,
# call) instead sorted every leg and took 4x as long on a million calls).
# The total counts each call once, on the first leg of the call. `LIMIT -1`
# keeps SQLite from inlining the subquery: each probe then runs once per leg,
# not once per aggregate that reads it (14 s instead of 9 s on a million, loaded).
_FIRST_OF_ENDPOINT = """(SELECT MIN(d.rowid)
     FROM call_legs d INDEXED BY sqlite_autoindex_call_legs_1
     WHERE d.call_id = l.call_id AND d.endpoint = l.endpoint) = l.rowid"""
_FIRST_OF_CALL = """(SELECT MIN(d.rowid) FROM call_legs d INDEXED BY sqlite_autoindex_call_legs_1
     WHERE d.call_id = l.call_id) = l.rowid"""
_ANSWER = "l.outcome = 'answer'"
_TALKED = f"{_ANSWER} AND l.ended_at IS NOT NULL"

_LEGS = f"""
SELECT l.endpoint, {_FIRST_OF_ENDPOINT} AS offer, {_FIRST_OF_CALL} AS call_first,
       {_ANSWER} AS answered, c.status IN ({MISSED_SQL}) AS call_missed,
       c.status = 'answered' AS call_answered, c.target = 1 AS target,
       CASE WHEN {_ANSWER} THEN l.answered_at - l.rang_at END AS to_answer,
       CASE WHEN {_TALKED} THEN MAX(l.ended_at - l.answered_at, 0) END AS talk
FROM call_legs l {{legs_index}} CROSS JOIN calls c ON c.call_id = l.call_id
{{where}}
LIMIT -1
"""

_BY_ENDPOINT = """
SELECT endpoint, TOTAL(offer), TOTAL(answered), TOTAL(offer AND call_missed),
       TOTAL(to_answer), COUNT(to_answer), TOTAL(talk), COUNT(talk), TOTAL(answered AND target),
       TOTAL(call_first), TOTAL(call_first AND call_answered),
       TOTAL(call_first AND call_missed), TOTAL(call_first AND call_answered AND target)
FROM legs GROUP BY endpoint
"""


def operator_report(conn: sqlite3.Connection, *, since: float | None = None,
                    until: float | None = None) -> list[dict[str, Any]]:
    """One row per endpoint that rang for calls started in [since, until), then the total.

    Without a range the legs are read in the endpoint index's order (no sort
    at all); with one, from the calls in range (calls_started_at) by key.
    """
    where, params = _range("c.started_at", since, until)
    index = "" if where else "INDEXED BY call_legs_endpoint"
    sql = "WITH legs AS (" + _LEGS.format(legs_index=index, where=where) + ")" + _BY_ENDPOINT
    grouped = conn.execute(sql, params).fetchall()
    rows = [_operator_row(row[0], row[1:9], is_total=False) for row in grouped]
    rows.sort(key=lambda r: (-r["offered"], r["endpoint"]))
    calls, answered, missed, target = (sum(row[i] for row in grouped) for i in range(9, 13))
    legs = [sum(row[i] for row in grouped) for i in range(4, 8)]
    total = _operator_row(None, (calls, answered, missed, *legs, target), is_total=True)
    return rows + [total]


def _operator_row(endpoint: str | None, sums: Any, *, is_total: bool) -> dict[str, Any]:
    offered, answered, missed, to_answer, answers, talk, talks, target = sums
    offered, answered, missed, target = int(offered), int(answered), int(missed), int(target)
    return {"endpoint": endpoint, "offered": offered, "answered": answered,
            # a phone answering the same call twice (transferred back) is one offer
            "rang_not_answered": max(offered - answered, 0), "missed": missed,
            "avg_answer_seconds": round(to_answer / answers, 1) if answers else None,
            "avg_talk_seconds": round(talk / talks, 1) if talks else None,
            "target": target, "target_share": round(target / answered, 3) if answered else None,
            "is_total": is_total}


# Quarter hours: every time zone's offset is a multiple of 15 minutes, so each
# quarter of UTC time falls into one local hour (DST included, per quarter).
_QUARTER = 900

_BY_QUARTER = f"""
SELECT CAST(c.started_at / {_QUARTER} AS INTEGER) AS quarter, COUNT(*),
       TOTAL(c.status = 'answered'), TOTAL(c.status IN ({MISSED_SQL})),
       TOTAL(c.status IN ({MISSED_SQL})
             AND EXISTS (SELECT 1 FROM call_legs l WHERE l.call_id = c.call_id))
FROM calls c {{where}}
GROUP BY quarter
"""


def missed_by_hour(conn: sqlite3.Connection, *, since: float | None = None,
                   until: float | None = None, tz: tzinfo | None = None) -> list[dict[str, Any]]:
    """Calls and missed calls per hour of day (00..23, in `tz`; None: local time), then the total.

    `missed_while_rang`: missed calls for which some phone rang (a leg);
    `missed_unrung`: missed before any phone rang (unreachable phones, a caller
    who hung up during the greeting, calls closed by ctrackd-agi with no leg).
    """
    where, params = _range("c.started_at", since, until)
    hours = [[0, 0.0, 0.0, 0.0] for _ in range(24)]
    for quarter, *sums in conn.execute(_BY_QUARTER.format(where=where), params):
        hour = datetime.fromtimestamp(quarter * _QUARTER, tz).hour
        for i, value in enumerate(sums):
            hours[hour][i] += value
    rows = [_hour_row(f"{hour:02d}", sums, is_total=False) for hour, sums in enumerate(hours)]
    total = [sum(sums[i] for sums in hours) for i in range(4)]
    return rows + [_hour_row(None, total, is_total=True)]


def _hour_row(hour: str | None, sums: Any, *, is_total: bool) -> dict[str, Any]:
    calls, answered, missed, rang = (int(value) for value in sums)
    return {"hour": hour, "calls": calls, "answered": answered, "missed": missed,
            "missed_while_rang": rang, "missed_unrung": missed - rang,
            "missed_rate": round(missed / calls, 3) if calls else None, "is_total": is_total}


def _range(column: str, since: float | None, until: float | None) -> tuple[str, list[float]]:
    clauses = [(f"{column} {op} ?", v) for op, v in ((">=", since), ("<", until))
               if v is not None]
    if not clauses:
        return "", []
    return "WHERE " + " AND ".join(sql for sql, _ in clauses), [v for _, v in clauses]
