"""Judging ended calls: first time or repeat, target or not, and the missed-call hook.

Runs off the call path: the daemon hands the ids of the calls the AMI side
has just saved as ended to `JudgeWorker` (a task that batches them and
judges each batch in a thread, with its own connection); the fallback
hang-up handler judges its own call right after closing it. Both end in
`judge_calls`: short write transactions (one per JUDGE_CHUNK calls, so the
AGI route's saves never wait long behind a big batch) that read the calls
and each caller's previous call through the (caller, started_at) index,
write the verdicts (`attribution.targets.judge_call`) and, in the same
transaction, queue the missed-call hook (the outbox), so a verdict and its
hook are never one without the other. Whatever failed to be judged (a
dropped batch, the fallback script's judge, a call closed after a crash) is
found again by the daemon's sweep, every SWEEP_INTERVAL seconds.

Out-of-order arrival: a call can reach the store after a later call of the
same caller was judged (a record written late by the fallback script, a
call AMI alone saw after a reconnect). Judging a call therefore also
re-judges the caller's next call when that one is judged already: only its
`previous_call_at` can change (the calls after it have a nearer previous
call), so the verdicts end the same whatever order the calls arrive in.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from ctrackd.aio import wait_event
from ctrackd.attribution.plan import TargetRule
from ctrackd.attribution.records import MISSED_STATUSES, CallStatus
from ctrackd.attribution.targets import Verdict, judge_call
from ctrackd.store import queries
from ctrackd.store.callers import callback_list
from ctrackd.store.schema import StoreError

log = structlog.get_logger("ctrackd.judge")

#: `Config.target_rule`: channel key -> (rule name, rule)
Rules = Callable[[str | None], tuple[str, TargetRule]]
#: `ctrackd.hooks.outbox.enqueue` with the configured hooks bound:
#: (conn, event, call_id, payload, now) -> deliveries queued. The store does
#: not import the hooks package (adapters stay apart); the roots bind it.
EnqueueHook = Callable[[sqlite3.Connection, str, str | None, Mapping[str, Any], float], int]

#: how far back the daemon's sweep looks for ended calls nobody judged, by
#: the time their row was last written (a batch dropped after its retries,
#: the fallback script's judge failing, a crash between the save and the
#: judging, a long call closed at the restart). Short on purpose: the sweep
#: fires missed-call hooks, and the first start after the upgrade to schema 4
#: finds every older call unjudged.
SWEEP_SECONDS = 3600.0
#: seconds between two sweeps while the daemon runs (the first is at start)
SWEEP_INTERVAL = 300.0
#: a call that ENDED longer ago than this before the sweep's window is never
#: swept, even if its row was written lately (retention deleting an old
#: recording, an operator's code): its missed-call hook would be news of a
#: call made days ago
SWEEP_MAX_ENDED_AGE = 86400.0
#: calls judged per write transaction: a batch of thousands (a backlog after
#: an outage) commits in steps and never holds SQLite's write lock for long
JUDGE_CHUNK = 200

_SELECT = ("SELECT call_id, caller, channel, status, talk_seconds, started_at, target,"
           " previous_call_at FROM calls")
_UPDATE = f"""UPDATE calls SET first_time = :first_time, previous_call_at = :previous_call_at,
    target = :target, target_rule = :target_rule, updated_at = {queries.WRITER_NOW}
    WHERE call_id = :call_id"""


@dataclass(frozen=True, slots=True)
class Judged:
    calls: int = 0        # calls given a verdict (re-judged neighbours included)
    targets: int = 0      # of which target calls
    hooks: int = 0        # hook deliveries queued


def judge_calls(conn: sqlite3.Connection, call_ids: Iterable[str], *, rules: Rules,
                now: float, enqueue: EnqueueHook | None = None) -> Judged:
    """Judge the ended calls among `call_ids`; open or unknown ids are skipped.

    One transaction per JUDGE_CHUNK ids (each chunk's verdicts and hooks
    together): judging is idempotent, so after a failure half-way the
    caller simply judges the whole batch again. `conn`: a writer connection
    from `queries.connect` (autocommit). `enqueue`: None when no hook is
    configured (no payload is even built).
    """
    ids = list(dict.fromkeys(call_ids))
    judged = targets = hooks = 0
    for start in range(0, len(ids), JUDGE_CHUNK):
        with queries.transaction(conn):
            part = _judge_chunk(conn, ids[start:start + JUDGE_CHUNK], rules, now, enqueue)
        judged, targets, hooks = (judged + part.calls, targets + part.targets,
                                  hooks + part.hooks)
    return Judged(judged, targets, hooks)


def _judge_chunk(conn: sqlite3.Connection, ids: list[str], rules: Rules, now: float,
                 enqueue: EnqueueHook | None) -> Judged:
    judged = targets = hooks = 0
    rows = conn.execute(f"{_SELECT} WHERE call_id IN ({', '.join('?' * len(ids))})"
                        " AND ended_at IS NOT NULL", ids).fetchall()
    for row in sorted(rows, key=lambda r: (r[5], r[0])):
        call_id, caller, status = row[0], row[1], _status(row[3])
        previous = _previous_call_at(conn, caller, row[5], call_id)
        verdict = _verdict(rules, row, previous)
        _write(conn, call_id, verdict)
        judged, targets = judged + 1, targets + verdict.target
        if caller is not None:
            fixed = _rejudge_next(conn, rules, caller, row[5], call_id)
            judged, targets = judged + fixed[0], targets + fixed[1]
        if enqueue is not None:
            hooks += enqueue_lifecycle(conn, call_id, now, enqueue)
        if (enqueue is not None and status in MISSED_STATUSES
                and not _got_through(conn, caller, row[5])):
            hooks += enqueue(conn, "missed", call_id, missed_payload(conn, call_id, caller,
                                                                     now), now)
    return Judged(judged, targets, hooks)


def enqueue_lifecycle(conn: sqlite3.Connection, call_id: str, now: float,
                      enqueue: EnqueueHook) -> int:
    """`call_end` for a judged call, after the `call_start` and `call_answer` it should
    have had: those are queued live (the AGI route's save, the answer), and added here
    only if missing (the outbox ignores a delivery it has), so a call recorded by
    ctrackd-agi, or an answer lost to a crash, still reaches the hooks whole.
    Each event's `data` is cut to its moment by the hooks' enqueue (events.view)."""
    call = call_payload(conn, call_id)
    if call is None:
        return 0
    added = enqueue(conn, "call_start", call_id, call, now)
    if call["answered_at"] is not None:
        added += enqueue(conn, "call_answer", call_id, call, now)
    return added + enqueue(conn, "call_end", call_id, call, now)


def enqueue_answered(conn: sqlite3.Connection, call_ids: Iterable[str], now: float,
                     enqueue: EnqueueHook) -> int:
    """`call_answer` for calls just saved as answered (the daemon's answer path), in
    one transaction; the row as it is now is what `ctrackd calls` shows at the answer.

    Its `call_start` first, when missing (a crash in the daemon's START_DELAY, a
    call recorded by ctrackd-agi): the outbox orders only what is pending at
    once, and an answer delivered before its start was queued could not be
    put back in order. A start that exists is ignored (same delivery id)."""
    added = 0
    with queries.transaction(conn):
        for call_id in dict.fromkeys(call_ids):
            call = call_payload(conn, call_id)
            if call is not None and call["answered_at"] is not None:
                added += enqueue(conn, "call_start", call_id, call, now)
                added += enqueue(conn, "call_answer", call_id, call, now)
    return added


def call_payload(conn: sqlite3.Connection, call_id: str) -> dict[str, Any] | None:
    """The call as `ctrackd calls --format json` shows it, plus `answered_at` (ISO UTC)."""
    row = conn.execute(f"{queries.SELECT_CALLS} WHERE call_id = ?", (call_id,)).fetchone()
    if row is None:
        return None
    call = queries.call_from_row(row)
    answered_at = conn.execute("SELECT answered_at FROM calls WHERE call_id = ?",
                               (call_id,)).fetchone()[0]
    call["answered_at"] = queries.iso_utc(answered_at)
    return call


def _got_through(conn: sqlite3.Connection, caller: str | None, started_at: float) -> bool:
    """Whether the caller was reached after this missed call (an answered call either way).

    Then there is no callback to ask for: a call judged late (the sweep, a
    retried batch) must not ask for one. The same contact as the callback
    list's (`store.callers`), through the same two indexes. A withheld
    caller can never be reached: always False.
    """
    if caller is None:
        return False
    return conn.execute(
        "SELECT EXISTS (SELECT 1 FROM calls WHERE caller = :caller AND status = 'answered'"
        "  AND COALESCE(answered_at, started_at) >= :since)"
        " OR EXISTS (SELECT 1 FROM outbound_calls WHERE number = :caller"
        "  AND answered_at >= :since)", {"caller": caller, "since": started_at}).fetchone()[0] == 1


def missed_payload(conn: sqlite3.Connection, call_id: str, caller: str | None,
                   now: float) -> dict[str, Any]:
    """The call as `ctrackd calls --format json` shows it, plus what a callback needs:
    `attempts` (missed calls from the number since the last contact) and
    `waiting_since` (the first of them); both null for a withheld number."""
    row = conn.execute(f"{queries.SELECT_CALLS} WHERE call_id = ?", (call_id,)).fetchone()
    payload = queries.call_from_row(row)
    pending = callback_list(conn, now=now, caller=caller) if caller is not None else []
    payload["attempts"] = pending[0]["attempts"] if pending else None
    payload["waiting_since"] = pending[0]["first_missed_at"] if pending else None
    return payload


def unjudged_calls(conn: sqlite3.Connection, since: float) -> list[str]:
    """Ended calls without a verdict whose row was written after `since` (the daemon's sweep).

    By `updated_at` (its index), not `started_at`: a call longer than the
    window, or closed at a restart, was written lately however long ago it
    began. A call that ended SWEEP_MAX_ENDED_AGE before the window is left
    alone (see there).
    """
    return [r[0] for r in conn.execute(
        "SELECT call_id FROM calls INDEXED BY calls_updated_at WHERE updated_at >= ?"
        " AND ended_at >= ? AND target IS NULL ORDER BY started_at",
        (since, since - SWEEP_MAX_ENDED_AGE))]


def _previous_call_at(conn: sqlite3.Connection, caller: str | None, started_at: float,
                      call_id: str) -> float | None:
    """When this caller's latest earlier call started (open calls count: they are calls).

    Ties on started_at go by call_id, so of two calls in the same instant
    exactly one is the first.
    """
    if caller is None:
        return None
    for other_id, other_start in conn.execute(
            "SELECT call_id, started_at FROM calls WHERE caller = ? AND started_at <= ?"
            " ORDER BY started_at DESC, call_id DESC LIMIT 8", (caller, started_at)):
        if other_start < started_at or other_id < call_id:
            return float(other_start)
    return None


def _rejudge_next(conn: sqlite3.Connection, rules: Rules, caller: str, started_at: float,
                  call_id: str) -> tuple[int, int]:
    """Re-judge the caller's next call if it was judged without knowing of this one."""
    for row in conn.execute(f"{_SELECT} WHERE caller = ? AND started_at >= ?"
                            " ORDER BY started_at, call_id LIMIT 8",
                            (caller, started_at)).fetchall():
        if (row[5], row[0]) <= (started_at, call_id):
            continue
        if row[6] is None:
            return 0, 0  # not judged yet (open): it will see this call when it is
        previous = _previous_call_at(conn, caller, row[5], row[0])
        if previous == row[7]:
            return 0, 0  # judged knowing of this call: nothing to change
        verdict = _verdict(rules, row, previous)
        _write(conn, row[0], verdict)
        return 1, int(verdict.target)
    return 0, 0


def _verdict(rules: Rules, row: Sequence[Any], previous: float | None) -> Verdict:
    _, caller, channel, status, talk, started_at = row[:6]
    name, rule = rules(channel)
    return judge_call(name, rule, status=_status(status), talk_seconds=talk,
                      started_at=started_at, previous_call_at=previous,
                      caller_known=caller is not None)


def _write(conn: sqlite3.Connection, call_id: str, verdict: Verdict) -> None:
    conn.execute(_UPDATE, {
        "call_id": call_id, "target": int(verdict.target),
        "first_time": None if verdict.first_time is None else int(verdict.first_time),
        "previous_call_at": verdict.previous_call_at, "target_rule": verdict.target_rule})


def _status(value: str) -> CallStatus:
    try:
        return CallStatus(value)
    except ValueError:
        return CallStatus.UNKNOWN


class JudgeWorker:
    """The daemon's judge: ids in (`submit`), verdicts out in batches, off the event loop.

    `rules` and `enqueue` are asked afresh for each batch: a reload's new
    target rules and hooks apply to the next call judged.

    Each batch runs `judge_calls` in a worker thread on a connection of its
    own (WAL, busy timeout), so the group-commit writer and the AGI path
    never wait for it. A batch that fails is retried (`retries` times, a
    `retry_delay` apart) and then logged with its ids and dropped: a verdict
    can always be recomputed (the sweep, at start and every `sweep_interval`
    seconds, judges what is left), a call record is never touched by a
    failure here. A store that cannot even be opened (StoreError) is one
    more such failure: the daemon keeps taking calls meanwhile.
    """

    def __init__(self, path: str | Path, *, rules: Callable[[], Rules],
                 enqueue: Callable[[], EnqueueHook | None], synchronous: str = "normal",
                 after: Callable[[Judged], None] | None = None,
                 clock: Callable[[], float] = time.time, retry_delay: float = 5.0,
                 retries: int = 3, sweep_interval: float = SWEEP_INTERVAL) -> None:
        self._path = Path(path)
        self._rules = rules
        self._enqueue = enqueue
        self._after = after  # told of each committed batch (the daemon nudges the hooks)
        self._synchronous = synchronous
        self._clock = clock
        self._retry_delay = retry_delay
        self._retries = retries
        self._sweep_interval = sweep_interval
        self._queued: dict[str, None] = {}   # ordered set: ids waiting for the next batch
        self._answered: dict[str, None] = {}  # ids whose call_answer hook is to be queued
        self._inflight: list[str] = []
        self._wakeup = asyncio.Event()
        self.judged = 0          # verdicts written (tests, metrics)
        self.failed_batches = 0

    def submit(self, call_ids: Iterable[str]) -> None:
        added = False
        for call_id in call_ids:
            self._queued[call_id] = None
            added = True
        if added:
            self._wakeup.set()

    def submit_answered(self, call_ids: Iterable[str]) -> None:
        """Calls just saved as answered: their `call_answer` hook is queued with the next
        batch (off the consumer's path; a batch lost here is caught up at judging)."""
        for call_id in call_ids:
            self._answered[call_id] = None
        if self._answered:
            self._wakeup.set()

    async def run(self, *, sweep: bool = True) -> None:
        """Judge forever (until cancelled); with `sweep`, also the recent calls nobody
        judged: at start, then every `sweep_interval` seconds."""
        loop = asyncio.get_running_loop()
        next_sweep = loop.time()
        while True:
            if sweep and loop.time() >= next_sweep:
                await self._sweep()
                next_sweep = loop.time() + self._sweep_interval
            timeout = max(0.0, next_sweep - loop.time()) if sweep else None
            if not await wait_event(self._wakeup, timeout):
                continue
            self._wakeup.clear()
            await self._judge_queued()

    async def _sweep(self) -> None:
        try:
            found = await asyncio.to_thread(self._unjudged)
        except (sqlite3.Error, OSError, StoreError) as exc:  # next time, then
            log.warning("calls_judge_sweep_failed", error=repr(exc))
            return
        found = [c for c in found if c not in self._queued and c not in self._inflight]
        if found:  # not the ids on their way already: those are news, not leftovers
            log.info("calls_judge_swept", calls=len(found))
            self.submit(found)

    async def drain(self) -> None:
        """Judge what is queued or was cut mid-batch: the daemon's last act before closing."""
        self._queued = dict.fromkeys([*self._inflight, *self._queued])
        self._inflight = []
        if self._queued or self._answered:
            await self._judge_queued(retries=0)

    async def _judge_queued(self, retries: int | None = None) -> None:
        batch = self._inflight = list(self._queued)
        answered, self._queued, self._answered = list(self._answered), {}, {}
        attempts = 1 + (self._retries if retries is None else retries)
        for attempt in range(attempts):
            try:
                result = await asyncio.to_thread(self._judge, batch, answered)
            except (sqlite3.Error, OSError, StoreError) as exc:
                self.failed_batches += 1
                last = attempt == attempts - 1
                log.error("calls_judge_failed", error=repr(exc), calls=len(batch),
                          retry_in=None if last else self._retry_delay,
                          call_ids=batch[:20] if last else None)
                if not last:
                    await asyncio.sleep(self._retry_delay)
                continue
            self.judged += result.calls
            log.debug("calls_judged", calls=result.calls, targets=result.targets,
                      hooks=result.hooks)
            if self._after is not None:
                self._after(result)
            break
        self._inflight = []

    def _connect(self) -> sqlite3.Connection:
        return queries.connect(self._path, readonly=False, synchronous=self._synchronous)

    def _judge(self, batch: list[str], answered: Sequence[str] = ()) -> Judged:
        conn = self._connect()
        try:
            enqueue, now = self._enqueue(), self._clock()
            early = enqueue_answered(conn, answered, now, enqueue) if enqueue and answered else 0
            judged = judge_calls(conn, batch, rules=self._rules(), now=now, enqueue=enqueue)
            return Judged(judged.calls, judged.targets, judged.hooks + early)
        finally:
            conn.close()

    def _unjudged(self) -> list[str]:
        conn = self._connect()
        try:
            return unjudged_calls(conn, self._clock() - SWEEP_SECONDS)
        finally:
            conn.close()
