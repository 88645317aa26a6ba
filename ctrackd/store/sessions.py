"""Visitor sessions in the store (table `web_sessions`): kept over a restart of the daemon.

The plan holds sessions in memory (attribution/dynamic.py); this module
turns them into rows and back. The daemon writes the rows through
`Store.write(UPSERT_SESSION, rows)` in batches (never on a request's path)
and reads them back with `load_sessions` at start, before the web and AGI
sides open. The few columns the reads need (ids, code, times) are columns;
the rest of a session (UTM tags, click ids, pages, its last lease) is one
JSON object, so a new session field needs no migration.

`load_sessions` and `purge_sessions` use a connection of their own in a
worker thread, as the JudgeWorker does: a DELETE is not an upsert the
group-commit writer takes, and neither belongs on the event loop.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import structlog

from ctrackd.attribution.sessions import VisitorSession
from ctrackd.store import queries

log = structlog.get_logger("ctrackd.store")

UPSERT_SESSION = """
INSERT INTO web_sessions (session_id, visitor_id, promo_code, created_at, last_seen,
                          reserved_until, data_json)
VALUES (:session_id, :visitor_id, :promo_code, :created_at, :last_seen, :reserved_until,
        :data_json)
ON CONFLICT (session_id) DO UPDATE SET
    visitor_id = excluded.visitor_id, promo_code = excluded.promo_code,
    created_at = excluded.created_at, last_seen = excluded.last_seen,
    reserved_until = excluded.reserved_until, data_json = excluded.data_json
"""

SELECT_SESSIONS = """
SELECT session_id, visitor_id, promo_code, created_at, last_seen, reserved_until, data_json
FROM web_sessions WHERE reserved_until > ? ORDER BY last_seen
"""
DELETE_EXPIRED = "DELETE FROM web_sessions WHERE reserved_until <= ?"

#: fields with a column of their own, and the one kept only in memory
_COLUMNS = frozenset({"session_id", "visitor_id", "promo_code", "created_at", "last_seen"})
_NOT_STORED = frozenset({"saved_seen"})
_JSON_FIELDS = {f.name: f for f in dataclasses.fields(VisitorSession)
                if f.name not in _COLUMNS | _NOT_STORED}


def session_rows(taken: Iterable[tuple[VisitorSession, float]]) -> list[dict[str, Any]]:
    """`DynamicPlan.take_dirty()` -> rows for `UPSERT_SESSION` (call before any await)."""
    return [{"session_id": s.session_id, "visitor_id": s.visitor_id,
             "promo_code": s.promo_code, "created_at": s.created_at, "last_seen": s.last_seen,
             "reserved_until": until,
             "data_json": json.dumps({name: _plain(getattr(s, name)) for name in _JSON_FIELDS},
                                     ensure_ascii=False, separators=(",", ":"))}
            for s, until in taken]


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, list) else value  # pages: a copy, not the live list


def session_from_row(row: tuple[Any, ...]) -> tuple[VisitorSession, float]:
    """A row -> (session, reserved_until). The columns always make a session: a
    `data_json` this version cannot read (damaged, or from a newer ctrackd with
    fields of other types) costs the details, never the code's reservation."""
    session_id, visitor_id, promo_code, created_at, last_seen, until, data_json = row
    session = VisitorSession(session_id=session_id, visitor_id=visitor_id,
                             created_at=created_at, last_seen=last_seen, promo_code=promo_code)
    try:
        data = json.loads(data_json)
        if not isinstance(data, dict):
            raise TypeError("data_json is not an object")
        details = {name: data[name] for name in _JSON_FIELDS if name in data}
        wrong = sorted(name for name, value in details.items()
                       if not _FIELD_TYPES[name](value))
        for name in wrong:  # a field of the wrong type would fail later, on a request
            del details[name]
        if wrong:
            log.warning("web_session_details_dropped", session_id=session_id, fields=wrong)
        session = dataclasses.replace(session, **details)
    except (ValueError, TypeError, AttributeError) as exc:
        log.warning("web_session_details_unreadable", session_id=session_id, error=repr(exc))
    return session, until


def _text_or_none(value: Any) -> bool:
    return value is None or isinstance(value, str)


#: the type check of each data_json field: a row is trusted for nothing (a
#: newer ctrackd, a hand edit, a damaged file)
_FIELD_TYPES: dict[str, Any] = {
    name: (
        (lambda v: isinstance(v, list) and all(isinstance(p, str) for p in v))
        if name == "pages" else
        (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1)
        if name == "visit_number" else
        (lambda v: isinstance(v, bool)) if name in ("shared", "overflow") else
        _text_or_none)
    for name in _JSON_FIELDS}


def load_sessions(path: str | Path, now: float) -> list[tuple[VisitorSession, float]]:
    """Drop the rows whose reservation has ended, then read the others (oldest seen first)."""
    conn = queries.connect(path, readonly=False)
    try:
        conn.execute(DELETE_EXPIRED, (now,))
        rows = conn.execute(SELECT_SESSIONS, (now,)).fetchall()
    finally:
        conn.close()
    return [session_from_row(tuple(row)) for row in rows]


def purge_sessions(path: str | Path, now: float) -> int:
    """Delete the rows whose reservation has ended (the daemon's housekeeping); how many."""
    conn = queries.connect(path, readonly=False)
    try:
        return conn.execute(DELETE_EXPIRED, (now,)).rowcount
    finally:
        conn.close()
