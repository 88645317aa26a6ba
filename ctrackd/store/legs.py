"""The dialled legs of tracked calls in `call_legs` (migration 6): the operators report's input.

The daemon writes the tracker's leg records (`attribution/legs.py`) through
`Store.write(UPSERT_LEGS, leg_rows(...))`, group-committed with the calls'
progress. A leg is written when it starts ringing and again when it gets
its outcome and when it ends; what a row has is never taken back
(COALESCE keeps the first answer, end and outcome): a record written twice,
or by the fallback hang-up handler and the daemon both, stays the first one.

After a restart the daemon takes back the legs still ringing or talking of
the calls it restores (`load_open_legs`), so their DialEnd and hang-up are
not lost. Legs that began while the daemon was down are not recorded (the
call record still says who answered).

The fallback hang-up handler (ctrackd-agi, when the daemon was down) knows
only the answering leg: `fallback_leg` writes that one, and only when the
call has no legs at all (the daemon saw it otherwise, and its legs are whole).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from ctrackd.attribution.legs import LegRecord
from ctrackd.store import queries

UPSERT_LEGS = """
INSERT INTO call_legs (call_id, leg, endpoint, rang_at, answered_at, ended_at, outcome)
VALUES (:call_id, :leg, :endpoint, :rang_at, :answered_at, :ended_at, :outcome)
ON CONFLICT (call_id, leg) DO UPDATE SET
    answered_at = COALESCE(call_legs.answered_at, excluded.answered_at),
    ended_at = COALESCE(call_legs.ended_at, excluded.ended_at),
    outcome = COALESCE(call_legs.outcome, excluded.outcome)
"""

_FIELDS = ("call_id", "leg", "endpoint", "rang_at", "answered_at", "ended_at", "outcome")

SELECT_OPEN_LEGS = f"""
SELECT {', '.join('l.' + f for f in _FIELDS)}
FROM calls INDEXED BY calls_open JOIN call_legs l ON l.call_id = calls.call_id
WHERE calls.ended_at IS NULL AND l.ended_at IS NULL
ORDER BY l.rang_at
"""

# The handler's one leg, unless the call has legs already (written by the daemon).
INSERT_FALLBACK_LEG = """
INSERT INTO call_legs (call_id, leg, endpoint, rang_at, answered_at, ended_at, outcome)
SELECT :call_id, :leg, :endpoint, :rang_at, :answered_at, :ended_at, 'answer'
WHERE NOT EXISTS (SELECT 1 FROM call_legs WHERE call_id = :call_id)
"""


def leg_params(record: LegRecord) -> dict[str, Any]:
    return {name: getattr(record, name) for name in _FIELDS}


def leg_rows(records: list[LegRecord]) -> list[dict[str, Any]]:
    """The rows for `Store.write(UPSERT_LEGS, ...)`."""
    return [leg_params(record) for record in records]


def open_legs(conn: sqlite3.Connection) -> list[LegRecord]:
    """The legs not ended yet of the calls not ended yet (the calls_open index: a few rows)."""
    return [LegRecord(*row) for row in conn.execute(SELECT_OPEN_LEGS)]


def load_open_legs(path: str | Path) -> list[LegRecord]:
    """`open_legs` on a connection of its own (the daemon runs it in a thread at start)."""
    conn = queries.connect(path, readonly=True)
    try:
        return open_legs(conn)
    finally:
        conn.close()


def fallback_leg(conn: sqlite3.Connection, *, call_id: str, leg: str, endpoint: str,
                 rang_at: float, answered_at: float, ended_at: float) -> bool:
    """The answering leg the fallback handler knows of; False when the call had legs."""
    with queries.transaction(conn):
        cursor = conn.execute(INSERT_FALLBACK_LEG, {
            "call_id": call_id, "leg": leg, "endpoint": endpoint, "rang_at": rang_at,
            "answered_at": answered_at, "ended_at": ended_at})
    return cursor.rowcount > 0
