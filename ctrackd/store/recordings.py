"""The store's side of recording retention: which records still have a file, and the mark.

A record keeps its `recording_path` for ever; retention only adds when the
file went and why (`recording_deleted_at`, `recording_deleted_reason`,
migration 4), so a report can still say "this call was recorded".

The mark is one upsert statement, used by both writers: the daemon's
group-commit Store (`Store.write`) and the CLI's plain sqlite3 connection.
The row always exists (it was just read, and call rows are never deleted),
so the INSERT half never runs in practice; `WHERE ... IS NULL` keeps the
first mark when the daemon and `ctrackd recordings prune` race.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from ctrackd.store.queries import _NOW, transaction

# The partial index calls_recording holds exactly these rows, oldest first:
# the walk never touches the calls whose recording is already gone.
SELECT_ON_RECORD = """
SELECT call_id, recording_path, started_at, ended_at, answered_at
FROM calls INDEXED BY calls_recording
WHERE recording_path IS NOT NULL AND recording_deleted_at IS NULL
ORDER BY started_at, rowid
"""

MARK_DELETED = f"""
INSERT INTO calls (call_id, started_at, recording_deleted_at, recording_deleted_reason,
                   created_at, updated_at)
VALUES (:call_id, :started_at, :deleted_at, :reason, {_NOW}, {_NOW})
ON CONFLICT (call_id) DO UPDATE SET
    recording_deleted_at = excluded.recording_deleted_at,
    recording_deleted_reason = excluded.recording_deleted_reason,
    updated_at = excluded.updated_at
WHERE calls.recording_deleted_at IS NULL
"""


@dataclass(frozen=True, slots=True)
class RecordedCall:
    """A call whose record names a recording not yet marked gone."""

    call_id: str
    path: str
    started_at: float
    ended_at: float | None
    answered_at: float | None = None  # never answered: MixMonitor (option b) may write nothing


def recorded_calls(conn: sqlite3.Connection) -> Iterator[RecordedCall]:
    """Every call with a recording not marked deleted, oldest first."""
    for call_id, path, started_at, ended_at, answered_at in conn.execute(SELECT_ON_RECORD):
        yield RecordedCall(call_id, path, started_at, ended_at, answered_at)


def mark_row(call: RecordedCall, deleted_at: float, reason: str) -> dict[str, Any]:
    """The parameters of MARK_DELETED for one call."""
    return {"call_id": call.call_id, "started_at": call.started_at, "deleted_at": deleted_at,
            "reason": reason}


def mark_deleted(conn: sqlite3.Connection, rows: Sequence[dict[str, Any]]) -> None:
    """MARK_DELETED for `rows` in one short transaction (the CLI's writer)."""
    if rows:
        with transaction(conn):
            conn.executemany(MARK_DELETED, rows)


def check_writable(conn: sqlite3.Connection) -> None:
    """Raise now (sqlite3.Error) if we could not mark later: nothing is deleted unmarked."""
    with transaction(conn):
        pass


def deleted_marks(conn: sqlite3.Connection, call_ids: Iterable[str]
                  ) -> dict[str, tuple[float | None, str | None]]:
    """call_id -> (recording_deleted_at, recording_deleted_reason), for tests and reports."""
    ids = list(call_ids)
    marks: dict[str, tuple[float | None, str | None]] = {}
    for start in range(0, len(ids), 500):
        chunk = ids[start:start + 500]
        marks.update((row[0], (row[1], row[2])) for row in conn.execute(
            "SELECT call_id, recording_deleted_at, recording_deleted_reason FROM calls"
            f" WHERE call_id IN ({', '.join('?' * len(chunk))})", chunk))
    return marks
