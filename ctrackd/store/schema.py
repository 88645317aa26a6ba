"""The store's schema, as an append-only list of migrations.

A call store outlives many ctrackd versions, so the schema only ever moves
forward by numbered steps: a released migration is never edited, a change is a
new entry at the end. The version lives in `PRAGMA user_version` (in the file
header, transactional, no extra table). Each step runs in its own transaction
that re-reads the version once it holds the write lock, so the daemon and the
fallback AGI script starting at the same moment cannot apply a step twice.
A database written by a newer ctrackd is refused rather than guessed at.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator


class StoreError(Exception):
    """A store problem the admin can act on; str() is the whole message."""


class SchemaTooNewError(StoreError):
    pass


#: (version, SQL script). Append only: never edit a step that has shipped.
MIGRATIONS: list[tuple[int, str]] = [
    (1, """
    -- One row per call. The attribution half is written by the AGI side, the
    -- progress half by the AMI side; created_at/updated_at by whoever writes.
    CREATE TABLE calls (
        call_id          TEXT PRIMARY KEY NOT NULL,
        started_at       REAL NOT NULL,          -- epoch seconds UTC
        -- attribution
        did              TEXT,
        caller           TEXT,
        caller_name      TEXT,
        tracking         TEXT NOT NULL DEFAULT 'untracked',
        channel          TEXT,
        source           TEXT,
        medium           TEXT,
        campaign         TEXT,
        label            TEXT,
        forward_to       TEXT,                   -- NULL while only AMI has seen the call
        ring_timeout     INTEGER,
        recording_path   TEXT,
        note             TEXT,
        -- progress
        status           TEXT NOT NULL DEFAULT 'new',
        answered_at      REAL,
        answered_by      TEXT,
        ended_at         REAL,
        ring_seconds     REAL,
        talk_seconds     REAL,
        duration_seconds REAL,
        hangup_cause     INTEGER,
        hangup_cause_txt TEXT,
        dial_status      TEXT,
        close_reason     TEXT,
        created_at       REAL NOT NULL,
        updated_at       REAL NOT NULL
    );
    -- The CLI filters, each with started_at so "newest first" needs no sort.
    CREATE INDEX calls_started_at ON calls (started_at);
    CREATE INDEX calls_status ON calls (status, started_at);
    CREATE INDEX calls_channel ON calls (channel, started_at);
    CREATE INDEX calls_caller ON calls (caller, started_at);
    -- Unique callers per channel in a report: COUNT(DISTINCT) read off an
    -- index instead of sorting millions of rows.
    CREATE INDEX calls_channel_caller ON calls (channel, caller, started_at);
    -- Open calls: what the tracker reloads at start; tiny next to the table.
    CREATE INDEX calls_open ON calls (started_at) WHERE ended_at IS NULL;
    -- `ctrackd calls --follow` polls for what changed in the last seconds.
    CREATE INDEX calls_updated_at ON calls (updated_at);
    """),
    (2, """
    -- Dynamic tracking: the pool a call's number belongs to, the web session
    -- that held it and how sure that is; the session's fields as JSON.
    ALTER TABLE calls ADD COLUMN pool TEXT;
    ALTER TABLE calls ADD COLUMN session_id TEXT;
    ALTER TABLE calls ADD COLUMN confidence TEXT;
    ALTER TABLE calls ADD COLUMN session_json TEXT;
    -- `ctrackd pools`: the share of exact calls per pool and period.
    CREATE INDEX calls_pool ON calls (pool, started_at) WHERE pool IS NOT NULL;
    -- Pool usage, one row per pool and time bucket (the daemon upserts the
    -- bucket in progress every minute), read by `ctrackd pools`.
    CREATE TABLE pool_usage (
        pool           TEXT NOT NULL,
        start          REAL NOT NULL,            -- bucket start, epoch seconds
        width          REAL NOT NULL,            -- seconds
        held_seconds   REAL NOT NULL,
        demand_seconds REAL NOT NULL,
        peak_held      INTEGER NOT NULL,
        peak_demand    INTEGER NOT NULL,
        leases         INTEGER NOT NULL,
        overflows      INTEGER NOT NULL,
        PRIMARY KEY (pool, start)
    );
    """),
    (3, """
    -- Each daemon run writes its own rows: a restart within a bucket must
    -- not overwrite the first run's figures with its own from zero.
    CREATE TABLE pool_usage_runs (
        pool           TEXT NOT NULL,
        start          REAL NOT NULL,
        run            REAL NOT NULL,            -- the daemon's start, epoch seconds
        width          REAL NOT NULL,
        held_seconds   REAL NOT NULL,
        demand_seconds REAL NOT NULL,
        peak_held      INTEGER NOT NULL,
        peak_demand    INTEGER NOT NULL,
        leases         INTEGER NOT NULL,
        overflows      INTEGER NOT NULL,
        PRIMARY KEY (pool, start, run)
    );
    INSERT INTO pool_usage_runs SELECT pool, start, 0, width, held_seconds, demand_seconds,
        peak_held, peak_demand, leases, overflows FROM pool_usage;
    DROP TABLE pool_usage;
    ALTER TABLE pool_usage_runs RENAME TO pool_usage;
    """),
    (4, """
    -- Promo codes: the digits keyed, who keyed them (caller, operator) and
    -- what they gave (matched, unknown, skipped, no_input, pending).
    ALTER TABLE calls ADD COLUMN promo_code TEXT;
    ALTER TABLE calls ADD COLUMN promo_entry TEXT;
    ALTER TABLE calls ADD COLUMN promo_status TEXT;
    -- Callers and target calls, judged once the call has ended: 1/0, NULL
    -- while open or for a withheld number; the rule that decided, in words.
    ALTER TABLE calls ADD COLUMN first_time INTEGER;
    ALTER TABLE calls ADD COLUMN previous_call_at REAL;
    ALTER TABLE calls ADD COLUMN target INTEGER;
    ALTER TABLE calls ADD COLUMN target_rule TEXT;
    -- Recording retention: the file is gone, when and why (the path stays).
    ALTER TABLE calls ADD COLUMN recording_deleted_at REAL;
    ALTER TABLE calls ADD COLUMN recording_deleted_reason TEXT;
    -- Reports count target calls per channel without touching other rows.
    CREATE INDEX calls_target ON calls (channel, started_at) WHERE target = 1;
    -- Retention walks the recordings still on disk, oldest first.
    CREATE INDEX calls_recording ON calls (started_at)
        WHERE recording_path IS NOT NULL AND recording_deleted_at IS NULL;
    -- Answered outbound calls seen on AMI (an office phone calling a number
    -- back): they take that number off the callback list.
    CREATE TABLE outbound_calls (
        uniqueid     TEXT PRIMARY KEY NOT NULL,  -- the dialling channel's Uniqueid
        number       TEXT NOT NULL,              -- E.164 (or bare digits) of who was called
        answered_at  REAL NOT NULL,
        endpoint     TEXT                        -- the office phone that called
    );
    CREATE INDEX outbound_calls_number ON outbound_calls (number, answered_at);
    -- The durable outbox of hooks (webhooks, commands): an event is written
    -- here in the same step that decides it, then delivered and retried by
    -- the daemon; a receiver that is down loses nothing.
    CREATE TABLE outbox (
        id              INTEGER PRIMARY KEY,
        delivery_id     TEXT NOT NULL UNIQUE,    -- stable across retries: receivers dedupe on it
        event           TEXT NOT NULL,           -- missed, ...
        hook            TEXT NOT NULL,           -- which configured hook (its name)
        call_id         TEXT,
        payload         TEXT NOT NULL,           -- JSON body
        created_at      REAL NOT NULL,
        attempts        INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL,
        last_error      TEXT,
        delivered_at    REAL,
        gave_up_at      REAL
    );
    CREATE INDEX outbox_due ON outbox (next_attempt_at)
        WHERE delivered_at IS NULL AND gave_up_at IS NULL;
    """),
    (5, """
    -- Visitor sessions and the promo codes they hold, kept over a restart
    -- (the daemon writes changed ones in batches, reads them back at start).
    -- A row is kept until reserved_until: the end of its code's reservation,
    -- else of the session's life, with a margin for heartbeats not yet written.
    CREATE TABLE web_sessions (
        session_id     TEXT PRIMARY KEY NOT NULL,
        visitor_id     TEXT NOT NULL,
        promo_code     TEXT,                     -- NULL: none (off, or none was free)
        created_at     REAL NOT NULL,            -- epoch seconds
        last_seen      REAL NOT NULL,
        reserved_until REAL NOT NULL,
        data_json      TEXT NOT NULL             -- the rest of the session (UTM, pages, lease)
    );
    -- The start-up load and the housekeeping purge read by reserved_until.
    CREATE INDEX web_sessions_reserved_until ON web_sessions (reserved_until);
    """),
    (6, """
    -- Ad spend, per day and whatever the ad system reports it by (config or
    -- `ctrackd spend import FILE`). A NULL key means "any": a channel's
    -- monthly budget spread over days has only day + channel. Re-importing
    -- the same day and keys replaces the amount (the unique index).
    CREATE TABLE spend (
        id            INTEGER PRIMARY KEY,
        day           TEXT NOT NULL,             -- ISO date, in the report's time zone
        channel       TEXT,
        source        TEXT,
        medium        TEXT,
        campaign      TEXT,
        term          TEXT,
        amount        REAL NOT NULL,
        currency      TEXT,
        origin        TEXT NOT NULL,             -- "config" or the imported file's name
        imported_at   REAL NOT NULL
    );
    CREATE UNIQUE INDEX spend_key ON spend (day, IFNULL(channel, ''), IFNULL(source, ''),
        IFNULL(medium, ''), IFNULL(campaign, ''), IFNULL(term, ''));
    -- Every leg that rang for a call (the operators report: offered, answered,
    -- missed while it rang, time to answer), written by the AMI side.
    CREATE TABLE call_legs (
        call_id       TEXT NOT NULL,
        leg           TEXT NOT NULL,             -- the dialled channel's Uniqueid
        endpoint      TEXT NOT NULL,             -- e.g. PJSIP/101 (tracker.endpoint_of)
        rang_at       REAL NOT NULL,             -- DialBegin
        answered_at   REAL,
        ended_at      REAL,
        outcome       TEXT,                      -- answer, noanswer, busy, cancel, ...
        PRIMARY KEY (call_id, leg)
    );
    CREATE INDEX call_legs_endpoint ON call_legs (endpoint, rang_at);
    """),
    (7, """
    -- The hooks' dispatcher sends a call's events in order: "is an earlier
    -- event of this call still pending for this hook?" is a lookup here, not
    -- a sort of the whole backlog each round (a CRM down for an evening left
    -- 30 000 rows: 150 ms a round, quadratic to drain).
    CREATE INDEX outbox_pending_call ON outbox (hook, call_id)
        WHERE delivered_at IS NULL AND gave_up_at IS NULL;
    """),
]

LATEST_VERSION = MIGRATIONS[-1][0]


def schema_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the database up to LATEST_VERSION; return the version it is at now.

    Each step is one transaction: a crash or a failing statement leaves the
    database at the previous version, never half-migrated.
    """
    _refuse_newer(schema_version(conn))
    saved_isolation = conn.isolation_level
    conn.isolation_level = None  # we issue BEGIN/COMMIT ourselves
    try:
        for version, script in MIGRATIONS:
            if schema_version(conn) >= version:
                continue
            conn.execute("BEGIN IMMEDIATE")
            try:
                # Another process may have migrated while we waited for the lock.
                current = schema_version(conn)
                _refuse_newer(current)
                if current < version:
                    for statement in _statements(script):
                        conn.execute(statement)
                    conn.execute(f"PRAGMA user_version = {int(version)}")
                conn.execute("COMMIT")
            except Exception:
                conn.execute("ROLLBACK")
                raise
    finally:
        conn.isolation_level = saved_isolation
    return schema_version(conn)


def require_current(conn: sqlite3.Connection, path: object) -> None:
    """For readers (the CLI), which never migrate: say plainly why the file will not do."""
    version = schema_version(conn)
    if version == 0:
        raise StoreError(f"{path} is not a ctrackd call store (empty or another database)")
    _refuse_newer(version)
    if version < LATEST_VERSION:
        raise StoreError(f"the call store {path} has schema version {version}, this ctrackd needs"
                         f" {LATEST_VERSION}: start the daemon once to migrate it")


def _refuse_newer(version: int) -> None:
    if version > LATEST_VERSION:
        raise SchemaTooNewError(
            f"the call store has schema version {version}, newer than this ctrackd knows"
            f" ({LATEST_VERSION}): upgrade ctrackd (downgrading the store is not supported)")


def _statements(script: str) -> Iterator[str]:
    """Split a script into statements; sqlite3.complete_statement keeps a trigger body whole.

    executescript() would be simpler but COMMITs any open transaction first,
    which would break the one-transaction-per-step guarantee.
    """
    pending = ""
    for piece in script.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if _strip_comments(pending).strip(" \n\t;"):
                yield pending
            pending = ""
    if _strip_comments(pending).strip(" \n\t;"):
        raise ValueError(f"incomplete SQL statement in a migration: {pending!r}")


def _strip_comments(sql: str) -> str:
    return "\n".join(line.split("--", 1)[0] for line in sql.splitlines())
