"""Reads about callers: one card per number, one caller's history, the callback list.

A caller is a normalised number (E.164, `calls.caller`); withheld numbers
(`caller IS NULL`) are nobody in particular and never make a card, they are
counted apart. Everything goes through the (caller, started_at) index: a
card or a history is a range of it, "the caller's first call" is its first
entry.

The callback list: a missed call (MISSED_STATUSES) waits for a callback
until that caller gets through: a later answered inbound call (answered
after the missed call started), or an answered outbound call to that number
seen on AMI (`outbound_calls`, answered after it). The attempts are the
missed calls since that last contact; the wait runs from the first of them.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from ctrackd.attribution.records import MISSED_STATUSES
from ctrackd.store.queries import MISSED_SQL, SELECT_CALLS, call_from_row, iso_utc

#: where a call came from, in one word: the channel key, else the web session's
#: utm source (`utm:yandex`, a pool call no rule mapped), else the pool
#: (`pool:site`), else the dialled number (`did:+74950000001`)
TOUCH_SQL = """COALESCE(channel,
    CASE WHEN json_valid(session_json) THEN 'utm:' || json_extract(session_json,
         '$.utm_source') END,
    'pool:' || pool, 'did:' || did)"""

#: one card per caller (`ctrackd callers`, the head of `ctrackd caller`)
CARD_FIELDS = ("caller", "first_call_at", "first_touch", "last_call_at", "last_touch", "calls",
               "answered", "missed", "target_calls")
#: one line of the callback list (`ctrackd missed`)
MISSED_FIELDS = ("caller", "first_missed_at", "last_missed_at", "attempts", "waiting_seconds",
                 "last_channel", "last_call_id", "last_contact_at")


def _range(since: float | None, until: float | None, column: str = "started_at"
           ) -> tuple[str, list[Any]]:
    clauses = [(f"{column} >= ?", since), (f"{column} < ?", until)]
    used = [(sql, v) for sql, v in clauses if v is not None]
    return "".join(f" AND {sql}" for sql, _ in used), [v for _, v in used]


def list_callers(conn: sqlite3.Connection, *, since: float | None = None,
                 until: float | None = None, channel: str | None = None, min_calls: int = 1,
                 limit: int | None = None) -> list[dict[str, Any]]:
    """Cards of the numbers that called in [since, until), the latest caller first.

    calls/answered/missed/target_calls and the last touch count the calls in
    the range; the first call and the first touch are the caller's first call
    ever (acquisition does not move with the range). `channel`: only callers
    with at least one call of that channel in the range; `min_calls`: at
    least that many calls in it (2: repeat callers).
    """
    where, params = _range(since, until)
    having = ["COUNT(*) >= ?"]
    params.append(min_calls)
    if channel is not None:
        having.append("TOTAL(channel = ?) > 0")
        params.append(channel)
    last_where, last_params = _range(since, until, "l.started_at")
    sql = f"""
        WITH grouped AS (
            SELECT caller, COUNT(*) AS calls, TOTAL(status = 'answered') AS answered,
                   TOTAL(status IN ({MISSED_SQL})) AS missed, TOTAL(target = 1) AS targets,
                   MAX(started_at) AS last_call_at
            FROM calls WHERE caller IS NOT NULL{where}
            GROUP BY caller HAVING {' AND '.join(having)}
            ORDER BY last_call_at DESC, caller{' LIMIT ?' if limit else ''})
        SELECT caller, calls, answered, missed, targets, last_call_at,
               (SELECT MIN(f.started_at) FROM calls f WHERE f.caller = g.caller),
               (SELECT {TOUCH_SQL} FROM calls f WHERE f.caller = g.caller
                ORDER BY f.started_at, f.call_id LIMIT 1),
               (SELECT {TOUCH_SQL} FROM calls l WHERE l.caller = g.caller{last_where}
                ORDER BY l.started_at DESC, l.call_id DESC LIMIT 1)
        FROM grouped g ORDER BY last_call_at DESC, caller"""
    if limit:
        params.append(limit)
    rows = conn.execute(sql, params + last_params).fetchall()
    return [_card(*row) for row in rows]


def _card(caller: str, calls: int, answered: float, missed: float, targets: float,
          last_call_at: float, first_call_at: float, first_touch: str | None,
          last_touch: str | None) -> dict[str, Any]:
    return {"caller": caller, "first_call_at": iso_utc(first_call_at), "first_touch": first_touch,
            "last_call_at": iso_utc(last_call_at), "last_touch": last_touch, "calls": int(calls),
            "answered": int(answered), "missed": int(missed), "target_calls": int(targets)}


def withheld_calls(conn: sqlite3.Connection, *, since: float | None = None,
                   until: float | None = None, missed_only: bool = False,
                   channel: str | None = None) -> int:
    """Calls from withheld numbers in the range (they make no card and cannot be called back)."""
    where, params = _range(since, until)
    if channel is not None:
        where += " AND channel = ?"
        params.append(channel)
    status = f" AND status IN ({MISSED_SQL})" if missed_only else ""
    return int(conn.execute(f"SELECT COUNT(*) FROM calls WHERE caller IS NULL{where}{status}",
                            params).fetchone()[0])


def caller_history(conn: sqlite3.Connection, caller: str
                   ) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """(the card over the whole history, every call oldest first) of one number (E.164).

    Each call is a CLI call dict; `first_time` not judged yet (an open call,
    or a call stored before ctrackd judged calls) is read off the history:
    the first call is the first time, every later one a repeat.
    """
    rows = conn.execute(f"{SELECT_CALLS} WHERE caller = ? ORDER BY started_at, rowid",
                        (caller,)).fetchall()
    calls = [call_from_row(row) for row in rows]
    if not calls:
        return None, []
    for n, call in enumerate(calls):
        if call["first_time"] is None:
            call["first_time"] = n == 0
    touch = conn.execute(f"SELECT {TOUCH_SQL} FROM calls WHERE caller = ?"
                         " ORDER BY started_at, call_id", (caller,)).fetchall()
    card = {"caller": caller, "first_call_at": calls[0]["started_at"],
            "first_touch": touch[0][0], "last_call_at": calls[-1]["started_at"],
            "last_touch": touch[-1][0], "calls": len(calls),
            "answered": sum(c["status"] == "answered" for c in calls),
            "missed": sum(c["status"] in MISSED_STATUSES for c in calls),
            "target_calls": sum(c["target"] is True for c in calls)}
    return card, calls


def callback_list(conn: sqlite3.Connection, *, now: float, since: float | None = None,
                  until: float | None = None, caller: str | None = None,
                  limit: int | None = None) -> list[dict[str, Any]]:
    """The numbers still waiting for a callback, the longest waiting first.

    Only missed calls started in [since, until) count (contacts count
    whenever they happened). `caller`: one number only (the missed hook's
    attempts and wait). A contact is the latest of: an answered inbound call
    from the number (its answer time), an answered outbound call to it.
    """
    where, params = _range(since, until)
    if caller is not None:
        where += " AND caller = ?"
        params.append(caller)
    # The last contact is looked up per missed call by two correlated
    # subqueries, each a range of an index ((caller, started_at),
    # (number, answered_at)): a join of the missed calls to a per-caller CTE
    # ran as two full scans, quadratic in the store's size.
    sql = f"""
        WITH missed AS (
            SELECT call_id, caller, started_at, {TOUCH_SQL} AS touch, MAX(
                COALESCE((SELECT MAX(COALESCE(c.answered_at, c.started_at)) FROM calls c
                          WHERE c.caller = calls.caller AND c.status = 'answered'), 0),
                COALESCE((SELECT MAX(o.answered_at) FROM outbound_calls o
                          WHERE o.number = calls.caller), 0)) AS contact_at
            FROM calls
            WHERE status IN ({MISSED_SQL}) AND caller IS NOT NULL{where}),
        pending AS (
            SELECT m.*,
                   ROW_NUMBER() OVER w_desc AS recent,
                   COUNT(*) OVER (PARTITION BY m.caller) AS attempts,
                   MIN(m.started_at) OVER (PARTITION BY m.caller) AS first_missed_at
            FROM missed m
            WHERE m.started_at > m.contact_at
            WINDOW w_desc AS (PARTITION BY m.caller ORDER BY m.started_at DESC, m.call_id DESC))
        SELECT caller, first_missed_at, started_at, attempts, touch, call_id, contact_at
        FROM pending WHERE recent = 1 ORDER BY first_missed_at, caller
        {'LIMIT ?' if limit else ''}"""
    if limit:
        params.append(limit)
    return [{"caller": number, "first_missed_at": iso_utc(first), "last_missed_at": iso_utc(last),
             "attempts": int(attempts), "waiting_seconds": round(max(0.0, now - first), 1),
             "last_channel": touch, "last_call_id": call_id,
             "last_contact_at": iso_utc(contact) if contact else None}
            for number, first, last, attempts, touch, call_id, contact
            in conn.execute(sql, params).fetchall()]
