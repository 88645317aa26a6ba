"""The store's SQL, written once, and the synchronous side that uses it.

The daemon (`database.py`, aiosqlite) and the short-lived processes (the CLI
reading, the fallback `ctrackd-agi` writing while the daemon is down) must
write exactly the same rows, so the statements and the row <-> dataclass
mapping live here and nowhere else. Plain sqlite3: a CLI run or a fallback
AGI call is one short transaction, an event loop would only add start-up time.

Reads from the CLI go through a read-only connection: with WAL they never
block the daemon's writes, and a typo in a path cannot create an empty store.
"""

from __future__ import annotations

import bisect
import json
import re
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import fields
from functools import lru_cache
from datetime import date, datetime, timedelta, timezone, tzinfo
from pathlib import Path
from typing import Any, Literal

from ctrackd.attribution.records import MISSED_STATUSES, Attribution, CallProgress, CallStatus
from ctrackd.store.schema import StoreError, require_current

#: seconds a statement waits for a lock before "database is locked"
BUSY_TIMEOUT = 5.0
SYNCHRONOUS_MODES = ("off", "normal", "full", "extra")

# The writer's clock, epoch seconds with ms precision (SQLite 3.40 has no unixepoch('subsec')).
_NOW = "((julianday('now') - 2440587.5) * 86400.0)"
#: the same, for statements written elsewhere (`updated_at` always comes from the writer)
WRITER_NOW = _NOW

# Attribution wins for did/caller when it has them (it normalised them);
# started_at is the earliest either side saw (the AMI side's Newchannel, or
# the fallback script's CDR start; never a later event of a call the tracker
# joined mid-way), so both arrival orders end in the same row.
UPSERT_ATTRIBUTION = f"""
INSERT INTO calls (call_id, started_at, did, caller, caller_name, tracking, channel, source,
                   medium, campaign, label, forward_to, ring_timeout, recording_path, note,
                   pool, session_id, confidence, session_json, promo_code, promo_entry,
                   promo_status, created_at, updated_at)
VALUES (:call_id, :started_at, :did, :caller, :caller_name, :tracking, :channel, :source,
        :medium, :campaign, :label, :forward_to, :ring_timeout, :recording_path, :note,
        :pool, :session_id, :confidence, :session_json, :promo_code, :promo_entry,
        :promo_status, {_NOW}, {_NOW})
ON CONFLICT (call_id) DO UPDATE SET
    started_at = COALESCE(calls.started_at, excluded.started_at),
    did = COALESCE(excluded.did, calls.did), caller = COALESCE(excluded.caller, calls.caller),
    caller_name = excluded.caller_name, tracking = excluded.tracking,
    channel = excluded.channel, source = excluded.source, medium = excluded.medium,
    campaign = excluded.campaign, label = excluded.label, forward_to = excluded.forward_to,
    ring_timeout = excluded.ring_timeout, recording_path = excluded.recording_path,
    note = excluded.note, pool = excluded.pool, session_id = excluded.session_id,
    confidence = excluded.confidence, session_json = excluded.session_json,
    promo_code = excluded.promo_code, promo_entry = excluded.promo_entry,
    promo_status = excluded.promo_status, updated_at = excluded.updated_at
"""

UPSERT_PROGRESS = f"""
INSERT INTO calls (call_id, started_at, status, did, caller, answered_at, answered_by, ended_at,
                   ring_seconds, talk_seconds, duration_seconds, hangup_cause, hangup_cause_txt,
                   dial_status, close_reason, created_at, updated_at)
VALUES (:call_id, :started_at, :status, :did, :caller, :answered_at, :answered_by, :ended_at,
        :ring_seconds, :talk_seconds, :duration_seconds, :hangup_cause, :hangup_cause_txt,
        :dial_status, :close_reason, {_NOW}, {_NOW})
ON CONFLICT (call_id) DO UPDATE SET
    started_at = min(calls.started_at, excluded.started_at), status = excluded.status,
    did = COALESCE(calls.did, excluded.did), caller = COALESCE(calls.caller, excluded.caller),
    answered_at = excluded.answered_at, answered_by = excluded.answered_by,
    ended_at = excluded.ended_at, ring_seconds = excluded.ring_seconds,
    talk_seconds = excluded.talk_seconds, duration_seconds = excluded.duration_seconds,
    hangup_cause = excluded.hangup_cause, hangup_cause_txt = excluded.hangup_cause_txt,
    dial_status = excluded.dial_status, close_reason = excluded.close_reason,
    updated_at = excluded.updated_at
"""

def multi_row(statement: str, rows: Sequence[dict[str, Any]]) -> tuple[str, list[Any]]:
    """One `INSERT ... VALUES (...), (...) ON CONFLICT ...` for many rows of an upsert.

    A single statement is a single implicit transaction: the daemon's writer
    commits a whole batch in one round trip to its SQLite thread, instead of
    BEGIN / executemany / COMMIT (three; the track route's profile showed the
    hops costing more than the write itself).
    """
    sql, names = _multi_row_sql(statement, len(rows))
    return sql, [row[name] for row in rows for name in names]


@lru_cache(maxsize=64)
def _multi_row_sql(statement: str, count: int) -> tuple[str, tuple[str, ...]]:
    head, _, rest = statement.partition("VALUES (")
    values, _, tail = rest.partition(")\nON CONFLICT")
    names = tuple(re.findall(r":(\w+)", values))
    row = "(" + re.sub(r":\w+", "?", values) + ")"
    return f"{head}VALUES {', '.join([row] * count)}\nON CONFLICT{tail}", names


#: rows per multi-row statement: SQLite allows 32766 variables per statement
MAX_ROWS_PER_STATEMENT = 500

# A pool's usage bucket: each daemon run rewrites its bucket in progress each minute.
UPSERT_POOL_USAGE = """
INSERT INTO pool_usage (pool, start, run, width, held_seconds, demand_seconds, peak_held,
                        peak_demand, leases, overflows)
VALUES (:pool, :start, :run, :width, :held_seconds, :demand_seconds, :peak_held, :peak_demand,
        :leases, :overflows)
ON CONFLICT (pool, start, run) DO UPDATE SET
    width = excluded.width, held_seconds = excluded.held_seconds,
    demand_seconds = excluded.demand_seconds, peak_held = excluded.peak_held,
    peak_demand = excluded.peak_demand, leases = excluded.leases, overflows = excluded.overflows
"""

# Nobody rewrites a closed call: not the fallback hang-up handler after the
# daemon closed it, nor the daemon after the handler did (the daemon only
# joined it mid-way then, the handler saw it whole).
UPSERT_PROGRESS_IF_OPEN = UPSERT_PROGRESS + "WHERE calls.ended_at IS NULL\n"

PROGRESS_FIELDS = tuple(f.name for f in fields(CallProgress))
SELECT_PROGRESS = f"SELECT {', '.join(PROGRESS_FIELDS)} FROM calls"
SELECT_OPEN_PROGRESS = SELECT_PROGRESS + " WHERE ended_at IS NULL ORDER BY started_at"

#: the fields of a call as the CLI prints it (JSON/CSV), in this order
CALL_FIELDS = ("call_id", "started_at", "did", "caller", "channel", "source", "medium", "campaign",
               "status", "ring_seconds", "talk_seconds", "duration_seconds", "answered_by",
               "hangup_cause", "recording", "tracking", "label", "caller_name", "forward_to",
               "ended_at", "note", "close_reason", "pool", "confidence", "session",
               "first_time", "target", "target_rule", "promo_code", "promo_entry",
               "promo_status", "recording_deleted_at", "recording_deleted_reason")
_CALL_COLUMNS = tuple(f for f in CALL_FIELDS if f not in ("recording", "session")) + (
    "recording_path", "answered_at", "session_json")
#: every column a call dict needs; add `WHERE ...` (`call_from_row` reads the rows)
SELECT_CALLS = f"SELECT {', '.join(_CALL_COLUMNS)} FROM calls"

#: what `list_calls(status=...)` accepts
STATUS_FILTERS = tuple(s.value for s in CallStatus) + ("missed", "open")
MISSED_SQL = ", ".join(f"'{s.value}'" for s in sorted(MISSED_STATUSES))


def pragmas(synchronous: str = "normal", *, readonly: bool = False,
            busy_timeout: float = BUSY_TIMEOUT) -> list[str]:
    """The per-connection settings, shared by sqlite3 and aiosqlite connections."""
    if synchronous not in SYNCHRONOUS_MODES:
        raise ValueError(f"synchronous must be one of {', '.join(SYNCHRONOUS_MODES)}")
    common = [f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}", "PRAGMA foreign_keys = ON"]
    if readonly:
        return common + ["PRAGMA query_only = ON"]
    # WAL: readers (CLI, reports) never wait for the daemon, nor it for them.
    return ["PRAGMA journal_mode = WAL", f"PRAGMA synchronous = {synchronous.upper()}"] + common


def connect(path: str | Path, *, readonly: bool, synchronous: str = "normal",
            busy_timeout: float = BUSY_TIMEOUT) -> sqlite3.Connection:
    """Open the store in autocommit mode (writers here use explicit short transactions).

    A writer must call `schema.migrate(conn)` once before writing; a reader's
    schema version is checked here, so the CLI fails with a sentence.
    """
    path = Path(path)
    if readonly and not path.is_file():
        raise StoreError(f"no call store at {path}: has the daemon run yet?")
    try:
        if readonly:
            uri = f"{path.resolve().as_uri()}?mode=ro"
            conn = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=busy_timeout)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(path, isolation_level=None, timeout=busy_timeout)
    except (sqlite3.Error, OSError) as exc:
        raise StoreError(f"cannot open the call store {path}: {exc}") from exc
    ready = False
    try:
        for pragma in pragmas(synchronous, readonly=readonly, busy_timeout=busy_timeout):
            conn.execute(pragma)
        if readonly:
            require_current(conn, path)
        ready = True
    finally:
        if not ready:  # whatever stopped us (even a cancel), no connection leaks
            conn.close()
    return conn


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    # IMMEDIATE takes the write lock up front: a deferred transaction that
    # reads first could fail mid-way with SQLITE_BUSY instead of waiting.
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except Exception:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def attribution_params(a: Attribution) -> dict[str, Any]:
    params = {f.name: getattr(a, f.name) for f in fields(Attribution) if f.name != "session"}
    params["tracking"] = a.tracking.value
    params["promo_entry"] = a.promo_entry.value if a.promo_entry else None
    params["promo_status"] = a.promo_status.value if a.promo_status else None
    params["session_json"] = (json.dumps(dict(a.session), ensure_ascii=False)
                              if a.session is not None else None)
    return params


def progress_params(p: CallProgress) -> dict[str, Any]:
    params = {name: getattr(p, name) for name in PROGRESS_FIELDS}
    params["status"] = p.status.value
    return params


def progress_from_row(row: Sequence[Any]) -> CallProgress:
    values = dict(zip(PROGRESS_FIELDS, row))
    values["status"] = _status(values["status"])
    return CallProgress(**values)


def call_from_row(row: Sequence[Any]) -> dict[str, Any]:
    """A row of `SELECT_CALLS` as the CLI's call dict (CALL_FIELDS, ISO times)."""
    values = dict(zip(_CALL_COLUMNS, row))
    answered = values["answered_at"] is not None or values["status"] == CallStatus.ANSWERED
    # A recording retention deleted is no file to open: null, and the reason says why.
    kept = values["recording_deleted_at"] is None
    values["recording"] = values["recording_path"] if answered and kept else None
    values["session"] = json.loads(values["session_json"]) if values["session_json"] else None
    for name in ("started_at", "ended_at", "recording_deleted_at"):
        values[name] = iso_utc(values[name])
    for name in ("first_time", "target"):  # 1/0/NULL in SQLite, true/false/null in JSON
        values[name] = None if values[name] is None else bool(values[name])
    return {name: values[name] for name in CALL_FIELDS}


def iso_utc(ts: float | None) -> str | None:
    """`2026-11-22T07:21:51Z`: seconds precision everywhere the CLI shows a time."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def save_attribution(conn: sqlite3.Connection, a: Attribution) -> None:
    with transaction(conn):
        conn.execute(UPSERT_ATTRIBUTION, attribution_params(a))


def save_progress(conn: sqlite3.Connection, progresses: Iterable[CallProgress], *,
                  only_if_open: bool = False) -> None:
    rows = [progress_params(p) for p in progresses]
    if rows:
        with transaction(conn):
            conn.executemany(UPSERT_PROGRESS_IF_OPEN if only_if_open else UPSERT_PROGRESS, rows)


def get_progress(conn: sqlite3.Connection, call_id: str) -> CallProgress | None:
    row = conn.execute(SELECT_PROGRESS + " WHERE call_id = ?", (call_id,)).fetchone()
    return progress_from_row(row) if row else None


def list_calls(conn: sqlite3.Connection, *, since: float | None = None,
               until: float | None = None, status: str | None = None,
               channel: str | None = None, caller: str | None = None,
               limit: int | None = None, after_rowid: int | None = None,
               changed_since: float | None = None) -> list[dict[str, Any]]:
    """Calls started in [since, until), newest first, as CLI dicts.

    `status` is a CallStatus value, `missed` (MISSED_STATUSES) or `open` (not
    ended). `caller` must already be normalised (E.164). With `after_rowid`
    and/or `changed_since`, only rows inserted after that rowid or updated
    after that time (`ctrackd calls --follow`).
    """
    polling = after_rowid is not None or changed_since is not None
    # When polling, the rowid/updated_at indexes must drive the query; a unary
    # `+` keeps SQLite from walking a whole status or channel instead.
    p = "+" if polling else ""
    clauses: list[str] = []
    params: list[Any] = []
    for sql, value in ((f"{p}started_at >= ?", since), (f"{p}started_at < ?", until),
                       (f"{p}channel = ?", channel), (f"{p}caller = ?", caller)):
        if value is not None:
            clauses.append(sql)
            params.append(value)
    if status == "missed":
        clauses.append(f"{p}status IN ({MISSED_SQL})")
    elif status == "open":
        clauses.append(f"{p}ended_at IS NULL")
    elif status is not None:
        if status not in STATUS_FILTERS:
            raise ValueError(f"unknown status {status!r}: expected one of "
                             + ", ".join(STATUS_FILTERS))
        clauses.append(f"{p}status = ?")
        params.append(status)
    changes = [(sql, v) for sql, v in (("rowid > ?", after_rowid),
                                       ("updated_at > ?", changed_since)) if v is not None]
    if changes:
        clauses.append("(" + " OR ".join(sql for sql, _ in changes) + ")")
        params.extend(v for _, v in changes)
    sql = SELECT_CALLS + (" WHERE " + " AND ".join(clauses) if clauses else "")
    sql += " ORDER BY started_at DESC, rowid DESC"
    if limit:
        sql += " LIMIT ?"
        params.append(limit)
    return [call_from_row(row) for row in conn.execute(sql, params)]


def change_marks(conn: sqlite3.Connection) -> tuple[int, float]:
    """(highest rowid, latest updated_at): where a `--follow` poll starts from."""
    rowid, updated = conn.execute("SELECT MAX(rowid), MAX(updated_at) FROM calls").fetchone()
    return int(rowid or 0), float(updated or 0.0)


# Sums, not averages, so that the total row adds the groups up in Python
# instead of scanning the table a second time.
_SUMS = f"""COUNT(calls.rowid), TOTAL(status = 'answered'), TOTAL(status IN ({MISSED_SQL})),
    TOTAL(ring_seconds), COUNT(ring_seconds),
    TOTAL(CASE WHEN status = 'answered' THEN talk_seconds END),
    COUNT(CASE WHEN status = 'answered' THEN talk_seconds END)"""


def report(conn: sqlite3.Connection, *, since: float | None = None, until: float | None = None,
           by: Literal["channel", "day"] = "channel",
           tz: tzinfo | None = None) -> list[dict[str, Any]]:
    """Per-channel or per-day figures for calls started in [since, until), then a total row.

    Each row: `<by>` (channel key or ISO day), calls, answered, missed
    (MISSED_STATUSES), target (calls judged target calls), unique_callers
    (withheld numbers not counted), answer_rate (answered / calls, 0..1),
    avg_ring_seconds (ended calls), avg_talk_seconds (answered calls),
    is_total. Days are calendar days in `tz` (None: this machine's local
    time, DST included). SQLite aggregates; unique callers come from the
    (channel, caller) and (caller) indexes, because COUNT(DISTINCT) over the
    rows is what costs on millions of calls; target calls from the partial
    index calls_target (a third of the time reading `target` off every row took).
    """
    where, params = _range(since, until)
    targets: dict[Any, int]
    if by == "channel":
        # (channel, started_at) visits each channel's rows about in table
        # order; left alone, SQLite may walk (channel, caller) and jump all
        # over the table (2x slower on a million calls).
        groups = conn.execute(
            f"SELECT channel, {_SUMS} FROM calls INDEXED BY calls_channel{where}"
            " GROUP BY channel ORDER BY COUNT(*) DESC, channel", params).fetchall()
        unique = dict(conn.execute(f"SELECT channel, COUNT(DISTINCT caller) FROM calls{where}"
                                   " GROUP BY channel", params).fetchall())
        grouped = [(*row, unique[row[0]]) for row in groups]
        targets = dict(conn.execute(
            f"SELECT channel, COUNT(*) FROM calls INDEXED BY calls_target{where}"
            f"{' AND' if where else ' WHERE'} target = 1 GROUP BY channel", params).fetchall())
    elif by == "day":
        # Days as one JSON parameter: a LEFT JOIN keeps the days without calls.
        days = _days(conn, since, until, tz)
        grouped = conn.execute(
            "WITH days(day, lo, hi) AS (SELECT json_extract(value, '$[0]'),"
            " json_extract(value, '$[1]'), json_extract(value, '$[2]') FROM json_each(?))"
            f" SELECT day, {_SUMS}, COUNT(DISTINCT caller) FROM days LEFT JOIN calls"
            " ON calls.started_at >= days.lo AND calls.started_at < days.hi"
            " GROUP BY day ORDER BY day", (json.dumps(days),)).fetchall()
        targets = _targets_by_day(conn, where, params, days)
    else:
        raise ValueError(f"report by {by!r}: expected channel or day")
    callers = " AND ".join([where.removeprefix(" WHERE ") or "1", "caller IS NOT NULL"])
    unique_total = conn.execute(f"SELECT COUNT(*) FROM (SELECT DISTINCT caller FROM calls"
                                f" WHERE {callers})", params).fetchone()[0]
    sums = [sum(row[i] for row in grouped) for i in range(1, 8)]
    rows = [_figures(by, row[0], row[1:8], targets.get(row[0], 0), row[8], is_total=False)
            for row in grouped]
    return rows + [_figures(by, None, sums, sum(r["target"] for r in rows), unique_total,
                            is_total=True)]


def _targets_by_day(conn: sqlite3.Connection, where: str, params: list[float],
                    days: list[tuple[str, float, float]]) -> dict[Any, int]:
    """Target calls per day: their start times off the partial index, counted into the days."""
    counts: dict[Any, int] = {}
    if not days:
        return counts
    starts = [lo for _, lo, _ in days]
    for (started_at,) in conn.execute(
            f"SELECT started_at FROM calls INDEXED BY calls_target{where}"
            f"{' AND' if where else ' WHERE'} target = 1", params):
        i = bisect.bisect_right(starts, started_at) - 1
        if i >= 0 and started_at < days[i][2]:
            counts[days[i][0]] = counts.get(days[i][0], 0) + 1
    return counts


def _range(since: float | None, until: float | None) -> tuple[str, list[float]]:
    clauses = [(sql, v) for sql, v in (("started_at >= ?", since), ("started_at < ?", until))
               if v is not None]
    if not clauses:
        return "", []
    return " WHERE " + " AND ".join(sql for sql, _ in clauses), [v for _, v in clauses]


def _days(conn: sqlite3.Connection, since: float | None, until: float | None,
          tz: tzinfo | None) -> list[tuple[str, float, float]]:
    """[(ISO day, start, end)] in `tz`, clipped to the range and to the calls there are."""
    where, params = _range(since, until)
    first, last = conn.execute(f"SELECT MIN(started_at), MAX(started_at) FROM calls{where}",
                               params).fetchone()
    if first is None:
        return []
    lo = since if since is not None else first
    hi = until if until is not None else last + 1
    day = datetime.fromtimestamp(first, tz).date()
    last_day = datetime.fromtimestamp(last, tz).date()
    days = []
    while day <= last_day:
        next_day = day + timedelta(days=1)
        days.append((day.isoformat(), max(_day_start(day, tz), lo),
                     min(_day_start(next_day, tz), hi)))
        day = next_day
    return days


def _day_start(day: date, tz: tzinfo | None) -> float:
    # A naive datetime's timestamp() goes through mktime: local time, DST right.
    return datetime(day.year, day.month, day.day, tzinfo=tz).timestamp()


def _figures(by: str, key: Any, sums: Sequence[float], target: int, unique_callers: int, *,
             is_total: bool) -> dict[str, Any]:
    calls, answered, missed, ring, rings, talk, talks = sums
    calls, answered, missed = int(calls), int(answered), int(missed)
    return {by: key, "calls": calls, "answered": answered, "missed": missed,
            "target": int(target), "unique_callers": unique_callers,
            "answer_rate": round(answered / calls, 3) if calls else None,
            "avg_ring_seconds": round(ring / rings, 1) if rings else None,
            "avg_talk_seconds": round(talk / talks, 1) if talks else None, "is_total": is_total}


def _status(value: str) -> CallStatus:
    try:
        return CallStatus(value)
    except ValueError:  # written by a newer ctrackd: still a call, just not a state we know
        return CallStatus.UNKNOWN
