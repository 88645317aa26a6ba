"""Judging ended calls: first time or repeat, target or not, and the missed-call hook.

Runs off the call path: the daemon hands the ids of the calls the AMI side
has just saved as ended to `JudgeWorker` (a task that batches them and
judges each batch in a thread, with its own connection); the fallback
hang-up handler judges its own call right after closing it. Both end in
`judge_calls`: one short write transaction that reads the calls and each
caller's previous call through the (caller, started_at) index, writes the
verdicts (`attribution.targets.judge_call`) and, in the same transaction,
queues the missed-call hook (the outbox), so a verdict and its hook are
never one without the other.

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

from ctrackd.attribution.plan import TargetRule
from ctrackd.attribution.records import MISSED_STATUSES, CallStatus
from ctrackd.attribution.targets import Verdict, judge_call
from ctrackd.store import queries
from ctrackd.store.callers import callback_list

log = structlog.get_logger("ctrackd.judge")

#: `Config.target_rule`: channel key -> (rule name, rule)
Rules = Callable[[str | None], tuple[str, TargetRule]]
#: `ctrackd.hooks.outbox.enqueue` with the configured hooks bound:
#: (conn, event, call_id, payload, now) -> deliveries queued. The store does
#: not import the hooks package (adapters stay apart); the roots bind it.
EnqueueHook = Callable[[sqlite3.Connection, str, str | None, Mapping[str, Any], float], int]

#: how far back the daemon looks at start for ended calls nobody judged (a
#: crash between the save and the judging: systemd restarts us in seconds).
#: Short on purpose: the sweep fires missed-call hooks, and the first start
#: after the upgrade to schema 4 finds every older call unjudged.
SWEEP_SECONDS = 3600.0

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
    """Judge the ended calls among `call_ids` in ONE transaction; open or unknown ids are skipped.

    `conn`: a writer connection from `queries.connect` (autocommit). `enqueue`:
    None when no hook is configured (no payload is even built).
    """
    ids = list(dict.fromkeys(call_ids))
    judged = targets = hooks = 0
    with queries.transaction(conn):
        rows: list[tuple[Any, ...]] = []
        for start in range(0, len(ids), queries.MAX_ROWS_PER_STATEMENT):
            chunk = ids[start:start + queries.MAX_ROWS_PER_STATEMENT]
            rows += conn.execute(
                f"{_SELECT} WHERE call_id IN ({', '.join('?' * len(chunk))})"
                " AND ended_at IS NOT NULL", chunk).fetchall()
        for row in sorted(rows, key=lambda r: (r[5], r[0])):
            call_id, caller, status = row[0], row[1], _status(row[3])
            previous = _previous_call_at(conn, caller, row[5], call_id)
            verdict = _verdict(rules, row, previous)
            _write(conn, call_id, verdict)
            judged, targets = judged + 1, targets + verdict.target
            if caller is not None:
                fixed = _rejudge_next(conn, rules, caller, row[5], call_id)
                judged, targets = judged + fixed[0], targets + fixed[1]
            if enqueue is not None and status in MISSED_STATUSES:
                hooks += enqueue(conn, "missed", call_id, missed_payload(conn, call_id, caller,
                                                                         now), now)
    return Judged(judged, targets, hooks)


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
    """Ended calls started after `since` that have no verdict (the daemon's start sweep)."""
    return [r[0] for r in conn.execute(
        "SELECT call_id FROM calls WHERE started_at >= ? AND ended_at IS NOT NULL"
        " AND target IS NULL ORDER BY started_at", (since,))]


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
    can always be recomputed (the start sweep judges what is left), a call
    record is never touched by a failure here.
    """

    def __init__(self, path: str | Path, *, rules: Callable[[], Rules],
                 enqueue: Callable[[], EnqueueHook | None], synchronous: str = "normal",
                 after: Callable[[Judged], None] | None = None,
                 clock: Callable[[], float] = time.time, retry_delay: float = 5.0,
                 retries: int = 3) -> None:
        self._path = Path(path)
        self._rules = rules
        self._enqueue = enqueue
        self._after = after  # told of each committed batch (the daemon nudges the hooks)
        self._synchronous = synchronous
        self._clock = clock
        self._retry_delay = retry_delay
        self._retries = retries
        self._queued: dict[str, None] = {}   # ordered set: ids waiting for the next batch
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

    async def run(self, *, sweep: bool = True) -> None:
        """Judge forever (until cancelled); first the recent calls nobody judged."""
        if sweep:
            try:
                self.submit(await asyncio.to_thread(self._unjudged))
            except sqlite3.Error as exc:  # the sweep is a nicety: the daemon goes on
                log.warning("calls_judge_sweep_failed", error=repr(exc))
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            await self._judge_queued()

    async def drain(self) -> None:
        """Judge what is queued or was cut mid-batch: the daemon's last act before closing."""
        self._queued = dict.fromkeys([*self._inflight, *self._queued])
        self._inflight = []
        if self._queued:
            await self._judge_queued(retries=0)

    async def _judge_queued(self, retries: int | None = None) -> None:
        batch = self._inflight = list(self._queued)
        self._queued = {}
        attempts = 1 + (self._retries if retries is None else retries)
        for attempt in range(attempts):
            try:
                result = await asyncio.to_thread(self._judge, batch)
            except (sqlite3.Error, OSError) as exc:
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

    def _judge(self, batch: list[str]) -> Judged:
        conn = self._connect()
        try:
            return judge_calls(conn, batch, rules=self._rules(), now=self._clock(),
                               enqueue=self._enqueue())
        finally:
            conn.close()

    def _unjudged(self) -> list[str]:
        conn = self._connect()
        try:
            return unjudged_calls(conn, self._clock() - SWEEP_SECONDS)
        finally:
            conn.close()
