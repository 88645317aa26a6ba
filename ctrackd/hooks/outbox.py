"""The outbox table (migration 4): plain-sqlite3 functions, no event loop.

A row is one delivery: one event for one configured hook. It is written in
the same transaction that decides the event (`enqueue`, called from the
caller's transaction), so the decision and the promise to tell the hook are
committed together or not at all. The dispatcher then claims due rows,
delivers them, and marks each delivered, due again later (exponential
backoff with jitter), or given up after the hook's `max_attempts`; a given-up
row is kept with its last error for `ctrackd hooks` (and `hooks retry`).

Row states, from the columns: pending (`delivered_at` and `gave_up_at` NULL;
due at `next_attempt_at`), delivered, failed (given up). `attempts` counts
the attempts started: a claim adds one before the delivery is tried, so an
attempt cut short by a crash still counts (at-least-once; receivers dedupe on
the delivery id).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from ctrackd.attribution.records import Attribution
from ctrackd.configcalls import HookConfig
from ctrackd.hooks import events

STATUSES = ("pending", "delivered", "failed")
#: how much of an error text a row keeps (a receiver's body, a script's stderr)
MAX_ERROR_CHARS = 500

_STATUS_SQL = ("CASE WHEN delivered_at IS NOT NULL THEN 'delivered'"
               " WHEN gave_up_at IS NOT NULL THEN 'failed' ELSE 'pending' END")
_PENDING = "delivered_at IS NULL AND gave_up_at IS NULL"


def _event_rank(column: str = "event") -> str:
    """SQL: a row's place in events.ORDER (a call's events go to a hook in that order)."""
    return (f"CASE {column} " + " ".join(f"WHEN '{e}' THEN {i}" for i, e in enumerate(events.ORDER))
            + f" ELSE {len(events.ORDER)} END")


_EVENT_RANK = _event_rank()

_INSERT = """
INSERT OR IGNORE INTO outbox (delivery_id, event, hook, call_id, payload, created_at,
                              attempts, next_attempt_at)
VALUES (:delivery_id, :event, :hook, :call_id, :payload, :created_at, 0, :created_at)
"""
#: the same row as an upsert of the shape the daemon's group-commit writer takes
#: (`Store.write(UPSERT, rows(...))`): the AGI route's `call_start` rides in the
#: batch that commits the call's record, and costs that save no commit of its own
UPSERT = """
INSERT INTO outbox (delivery_id, event, hook, call_id, payload, created_at, attempts,
                    next_attempt_at)
VALUES (:delivery_id, :event, :hook, :call_id, :payload, :created_at, 0, :created_at)
ON CONFLICT (delivery_id) DO NOTHING
"""

FIELDS = ("id", "delivery_id", "event", "hook", "call_id", "status", "created_at", "attempts",
          "next_attempt_at", "last_error", "delivered_at", "gave_up_at")


@dataclass(frozen=True, slots=True)
class Delivery:
    """A claimed row: what the dispatcher sends, and how many attempts it makes with this one."""

    id: int
    delivery_id: str
    event: str
    hook: str
    call_id: str | None
    body: bytes           # the JSON body exactly as stored (signed and sent as is)
    attempts: int         # including the attempt this claim starts


def delivery_id(event: str, call_id: str | None, hook: str) -> str:
    """The id receivers dedupe on: the same for every retry of one event to one hook.

    Derived from (event, call_id, hook), so enqueueing the same event twice
    (a judge that runs again after a restart) adds nothing. An event without a
    call gets a random id: there is nothing to recognise a repeat by.
    """
    if call_id is None:
        return uuid.uuid4().hex
    key = "\x1f".join((event, call_id, hook)).encode("utf-8")
    return hashlib.sha256(key).hexdigest()[:32]


def body(event: str, delivery: str, call_id: str | None, payload: Mapping[str, Any],
         now: float) -> str:
    """The JSON every hook receives: an envelope around the event's own `data`.

    Fixed at enqueue time and stored, so every retry sends the same bytes.
    NaN and infinities are refused (they are not JSON).
    """
    return json.dumps({"event": event, "delivery_id": delivery, "call_id": call_id,
                       "created_at": iso_utc(now), "data": dict(payload)},
                      ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def enqueue(conn: sqlite3.Connection, hooks: Sequence[HookConfig], event: str,
            call_id: str | None, payload: Mapping[str, Any], now: float) -> int:
    """One pending row per hook subscribed to `event`; returns how many rows were added.

    Runs inside the caller's transaction and neither begins nor commits one:
    the event is durable exactly when the caller's decision is. A delivery
    that exists already (same event, call and hook) is left as it is.
    Raises TypeError/ValueError, before writing anything, when the payload
    is not JSON.
    """
    added = 0
    for row in rows(hooks, event, call_id, payload, now):
        added += conn.execute(_INSERT, row).rowcount
    return added


def rows(hooks: Sequence[HookConfig], event: str, call_id: str | None,
         payload: Mapping[str, Any], now: float) -> list[dict[str, Any]]:
    """The outbox rows of one event (`UPSERT`'s or enqueue's parameters), one per hook
    subscribed to it. The call events' `data` is `events.view(event, payload)`: the
    call as it was at that moment, however late the row is written."""
    data = None
    out = []
    for hook in hooks:
        if event not in hook.events:
            continue
        if data is None:  # no subscriber, no JSON built
            data = events.view(event, payload)
        ident = delivery_id(event, call_id, hook.name)
        out.append({"delivery_id": ident, "event": event, "hook": hook.name,
                    "call_id": call_id, "payload": body(event, ident, call_id, data, now),
                    "created_at": now})
    return out


def start_rows(hooks: Sequence[HookConfig], attribution: Attribution,
               now: float) -> list[dict[str, Any]]:
    """`call_start` rows for a call the AGI route is saving (`UPSERT`'s parameters)."""
    if not any(events.CALL_START in h.events for h in hooks):
        return []
    call = events.call_of(attribution, iso=iso_utc)
    return rows(hooks, events.CALL_START, attribution.call_id, call, now)


def claim_due(conn: sqlite3.Connection, hooks: Sequence[str], now: float, *, lease: float,
              limit: int) -> list[Delivery]:
    """Take up to `limit` due rows of these hooks, oldest due first, and count the attempt.

    A read, then one UPDATE ... RETURNING of those rows that are still due (one
    dispatcher claims from a store; `hooks retry` may touch rows meanwhile, and
    the re-check keeps that safe): the claimed rows become due
    again only after `lease` seconds (longer than any attempt may take), so
    a claim that a crash interrupted is retried then, and never twice at once.
    Rows of a hook no longer configured stay pending, untouched.
    """
    if not hooks or limit <= 0:
        return []
    marks = ", ".join("?" for _ in hooks)
    # Only the first pending row of each (hook, call) may go: a call's events reach a
    # hook one after the other, in their natural order (events.ORDER, then id), even
    # when retries with jitter would have sent an end before its start. A row claimed
    # and under way is still pending, so the next waits for its outcome; a given-up
    # row no longer holds the others back. Rows without a call are each their own.
    # The choice is a plain read (WAL: it holds no lock), the claim an UPDATE by primary
    # key that re-checks the row: the daemon's store writer (the AGI route's saves)
    # never waits for SQLite's write lock while a long backlog is sorted.
    ids = [r[0] for r in conn.execute(
        f"{_heads(marks)} AND o.next_attempt_at <= ? ORDER BY o.next_attempt_at, o.id LIMIT ?",
        [*hooks, now, limit])]
    if not ids:
        return []
    found = conn.execute(
        f"UPDATE outbox SET attempts = attempts + 1, next_attempt_at = ?"
        f" WHERE id IN ({', '.join('?' for _ in ids)}) AND {_PENDING} AND next_attempt_at <= ?"
        f" RETURNING id, delivery_id, event, hook, call_id, payload, attempts",
        [now + lease, *ids, now]).fetchall()
    claimed = [Delivery(id=r[0], delivery_id=r[1], event=r[2], hook=r[3], call_id=r[4],
                        body=r[5].encode("utf-8"), attempts=r[6]) for r in found]
    return sorted(claimed, key=lambda d: d.id)


def next_due(conn: sqlite3.Connection, hooks: Sequence[str]) -> float | None:
    """When the next pending row of these hooks that may go is due (None: none)."""
    if not hooks:
        return None
    marks = ", ".join("?" for _ in hooks)
    # of the rows claim_due may take: one held back behind its call's earlier event
    # is "due" by its time, but waking for it would only spin
    row = conn.execute(f"{_heads(marks, 'o.next_attempt_at')}"
                       " ORDER BY o.next_attempt_at LIMIT 1", list(hooks)).fetchone()
    return row[0] if row else None


def _heads(marks: str, columns: str = "o.id") -> str:
    """The pending rows of `hook IN (marks)` that may go now or at their time: no
    earlier event of the same call is pending for that hook (events.ORDER, then id).

    Walked in `next_attempt_at` order on the partial index `outbox_due`, each row
    checked by a lookup on `outbox_pending_call` (migration 7): a round costs
    the rows it looks at, not a sort of the whole backlog. The caller appends
    the due condition, the ORDER BY and the LIMIT.
    """
    rank_o, rank_e = _event_rank("o.event"), _event_rank("e.event")
    return (f"SELECT {columns} FROM outbox AS o INDEXED BY outbox_due"
            f" WHERE o.delivered_at IS NULL AND o.gave_up_at IS NULL AND o.hook IN ({marks})"
            f" AND (o.call_id IS NULL OR NOT EXISTS (SELECT 1 FROM outbox AS e"
            f" INDEXED BY outbox_pending_call WHERE e.hook = o.hook AND e.call_id = o.call_id"
            f" AND e.delivered_at IS NULL AND e.gave_up_at IS NULL"
            f" AND ({rank_e} < {rank_o} OR ({rank_e} = {rank_o} AND e.id < o.id))))")


def pending_hooks(conn: sqlite3.Connection) -> list[str]:
    """The hooks with pending rows (`ctrackd hooks` names those no longer configured)."""
    rows = conn.execute(f"SELECT DISTINCT hook FROM outbox WHERE {_PENDING} ORDER BY hook")
    return [r[0] for r in rows]


def mark_delivered(conn: sqlite3.Connection, row_id: int, now: float) -> None:
    conn.execute(f"UPDATE outbox SET delivered_at = ? WHERE id = ? AND {_PENDING}",
                 (now, row_id))


def retry_delay(attempts: int, *, base: float, max_delay: float,
                rand: Callable[[], float]) -> float:
    """Seconds before the next attempt after `attempts` failed ones.

    base * 2^(attempts-1), capped at `max_delay`, then "equal jitter" (half
    of it fixed, half random): deliveries that failed together (a receiver
    that was down) do not all come back in the same second, and none
    retries much sooner than planned.
    """
    delay = min(max_delay, base * 2.0 ** max(0, min(attempts - 1, 60)))
    return delay / 2 + rand() * delay / 2


def record_failure(conn: sqlite3.Connection, delivery: Delivery, error: str, now: float, *,
                   max_attempts: int, delay: float) -> bool:
    """Keep the error; due again in `delay` seconds, or given up. True when given up.

    A given-up row stays in the table (with its last error) for the admin.
    """
    error = error[:MAX_ERROR_CHARS]
    if delivery.attempts >= max_attempts:
        conn.execute(f"UPDATE outbox SET gave_up_at = ?, last_error = ? WHERE id = ?"
                     f" AND {_PENDING}", (now, error, delivery.id))
        return True
    conn.execute(f"UPDATE outbox SET next_attempt_at = ?, last_error = ? WHERE id = ?"
                 f" AND {_PENDING}", (now + delay, error, delivery.id))
    return False


def release(conn: sqlite3.Connection, row_ids: Sequence[int], now: float) -> None:
    """Claims whose attempt was cut short (the daemon stopping): due now, attempt not counted."""
    for row_id in row_ids:
        conn.execute(f"UPDATE outbox SET attempts = max(0, attempts - 1), next_attempt_at = ?"
                     f" WHERE id = ? AND {_PENDING}", (now, row_id))


def retry(conn: sqlite3.Connection, row_ids: Sequence[int] | None, now: float) -> list[int]:
    """Make rows due now; given-up rows start over with no attempts. Returns the ids changed.

    `row_ids=None`: every given-up row. Delivered rows are never sent again.
    """
    if row_ids is None:
        where, params = "gave_up_at IS NOT NULL AND delivered_at IS NULL", []
    else:
        if not row_ids:
            return []
        where = (f"delivered_at IS NULL AND id IN ({', '.join('?' for _ in row_ids)})")
        params = list(row_ids)
    rows = conn.execute(
        f"UPDATE outbox SET next_attempt_at = ?,"
        f" attempts = CASE WHEN gave_up_at IS NULL THEN attempts ELSE 0 END,"
        f" gave_up_at = NULL WHERE {where} RETURNING id", [now, *params]).fetchall()
    return sorted(r[0] for r in rows)


def list_outbox(conn: sqlite3.Connection, *, status: str | None = None,
                hook: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
    """Rows for `ctrackd hooks`, newest first (FIELDS; times ISO 8601 UTC)."""
    if status is not None and status not in STATUSES:
        raise ValueError(f"status must be one of {', '.join(STATUSES)}")
    clauses, params = [], []
    if status is not None:
        clauses.append(f"{_STATUS_SQL} = ?")
        params.append(status)
    if hook is not None:
        clauses.append("hook = ?")
        params.append(hook)
    where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
    params.append(limit if limit else -1)
    rows = conn.execute(
        f"SELECT id, delivery_id, event, hook, call_id, {_STATUS_SQL}, created_at, attempts,"
        f" next_attempt_at, last_error, delivered_at, gave_up_at FROM outbox{where}"
        f" ORDER BY id DESC LIMIT ?", params).fetchall()
    out = []
    for row in rows:
        item = dict(zip(FIELDS, row))
        if item["status"] != "pending":
            item["next_attempt_at"] = None  # nothing is due for a finished row
        for key in ("created_at", "next_attempt_at", "delivered_at", "gave_up_at"):
            item[key] = iso_utc(item[key])
        out.append(item)
    return out


def summary(conn: sqlite3.Connection, now: float,
            hooks: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Per hook: pending rows, when the oldest pending one was queued (epoch), rows
    delivered in the last hour, given-up rows. Every hook in `hooks` (the configured
    ones) has a line, even with no rows; hooks with rows but no longer configured too."""
    found = {r[0]: r for r in conn.execute(
        f"SELECT hook, sum({_PENDING}), min(CASE WHEN {_PENDING} THEN created_at END),"
        f" sum(delivered_at >= ?), sum(gave_up_at IS NOT NULL AND delivered_at IS NULL)"
        f" FROM outbox GROUP BY hook", (now - 3600,))}
    return [{"hook": name, "pending": int(r[1] or 0), "oldest_pending_at": r[2],
             "delivered_last_hour": int(r[3] or 0), "failed": int(r[4] or 0)}
            for name in [*hooks, *sorted(set(found) - set(hooks))]
            for r in [found.get(name, (name, 0, None, 0, 0))]]


def iso_utc(ts: float | None) -> str | None:
    """`2026-11-22T07:21:51Z`, as the CLI shows every time."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
