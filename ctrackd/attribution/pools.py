"""Number pools of dynamic tracking: who holds which number, and who held it when a call rang.

A session leases a number from a pool. The number is *held* while the page
sends heartbeats and for `hold_seconds` after the last one; then it is free
again but still maps to its last holder for `grace_seconds`, unless it is
leased again first. Free numbers go out least recently released first, so a
number's grace lasts as long as the pool's spare numbers allow. When every
number is held, the overflow policy decides: `shared` hands out the least
recently active held number (and says so), an E.164 number is shown to
everyone instead. Every overflow is counted: it is the sign of a small pool.

Each operation is O(1) amortised, whatever the number of sessions: three
ordered dicts kept in activity order stand in for any scan.
- `_leases`  session id -> lease, least recently active first: the front expires next;
- `_held`    number held, least recently active first: what `shared` overflow hands out;
- `_free`    number free, least recently released first: what the next lease gets.
These orders need time to move forward, so inside a pool it does: a `now`
older than the last one seen counts as the last one (a clock stepped back).
"""

from __future__ import annotations

import math
import re
from collections import OrderedDict, deque
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

OVERFLOW_SHARED = "shared"
HISTORY = 8  # released leases remembered per number: enough to answer for a call just started

_E164 = re.compile(r"\+[1-9][0-9]{7,14}")


class UsageRecorder(Protocol):
    """Where a pool reports each change of its counts (`dynamic.Usage` keeps them in buckets)."""

    def record(self, at: float, held: int, demand: int, *, leased: bool,
               overflowed: bool) -> None: ...


class Confidence(StrEnum):
    EXACT = "exact"      # held by exactly one session when the call started
    SHARED = "shared"    # several sessions showed it (overflow): the most recently active one
    EXPIRED = "expired"  # no longer held, within grace of its last holder
    NONE = "none"        # nobody: never leased, grace over, or not a pool number


@dataclass(frozen=True, slots=True)
class PoolSpec:
    """A pool as configured (`pools:` in the config); checked on construction."""

    name: str
    numbers: tuple[str, ...]          # E.164 DIDs
    hold_seconds: float = 900.0
    grace_seconds: float = 3600.0
    overflow: str = OVERFLOW_SHARED   # "shared" or an E.164 number shown to everyone
    channel: str | None = None        # channel of its calls when the session has none
    forward_to: str | None = None

    def __post_init__(self) -> None:
        problem = _spec_problem(self)
        if problem:
            raise ValueError(f"pool {self.name!r}: {problem}")


def _spec_problem(spec: PoolSpec) -> str | None:
    if not spec.numbers:
        return "numbers: expected at least one number"
    bad = [n for n in spec.numbers if not _E164.fullmatch(n)]
    if bad:
        return f"numbers: expected E.164 numbers, found {bad[0]!r}"
    if len(set(spec.numbers)) != len(spec.numbers):
        return "numbers: a number is listed twice"
    if not spec.hold_seconds > 0 or not spec.grace_seconds >= 0:
        return "hold_seconds must be > 0 and grace_seconds >= 0"
    if spec.overflow != OVERFLOW_SHARED and not _E164.fullmatch(spec.overflow):
        return f"overflow: expected 'shared' or an E.164 number, found {spec.overflow!r}"
    if spec.overflow in spec.numbers:
        return "overflow: the overflow number cannot be a pool number"
    return None


@dataclass(frozen=True, slots=True)
class Lease:
    """What a session is told to show."""

    pool: str
    number: str
    shared: bool = False    # other sessions show this number too right now
    overflow: bool = False  # handed out because no number was free (counted)


@dataclass(slots=True)
class _Lease:
    session_id: str
    number: str
    start: float
    last_seen: float
    fixed: bool = False            # the fixed overflow number: occupies no pool number
    overflow: bool = False
    ended: float | None = None     # set when released (expiry or handover)


class PoolState:
    """The live state of one pool; see the module docstring for the model."""

    def __init__(self, spec: PoolSpec, *, usage: UsageRecorder | None = None) -> None:
        self.spec = spec
        self.usage = usage
        self.overflows = 0
        self.peak_held = 0      # numbers held at once, since start
        self.peak_demand = 0    # sessions wanting a number at once, since start (uncapped)
        self._now = -math.inf
        self._leases: OrderedDict[str, _Lease] = OrderedDict()
        self._occupants: dict[str, OrderedDict[str, _Lease]] = {
            n: OrderedDict() for n in spec.numbers}
        self._held: OrderedDict[str, None] = OrderedDict()
        self._free: OrderedDict[str, None] = OrderedDict.fromkeys(spec.numbers)
        self._released: dict[str, deque[_Lease]] = {n: deque(maxlen=HISTORY) for n in spec.numbers}

    @property
    def held(self) -> int:
        return len(self._held)

    @property
    def demand(self) -> int:
        return len(self._leases)

    # -- changes --------------------------------------------------------------

    def lease(self, session_id: str, now: float, prefer: str | None = None,
              prefer_from: str | None = None) -> Lease:
        """The session's number: its current one while held (refreshed), else a new lease.

        `prefer` (the session's previous number) is taken when it is free and
        its last holder was this session or `prefer_from` (the visitor's
        previous session): then it still maps to this very visitor, so
        reusing it misleads nobody. Held by someone else since, it is not
        ours to take back: that holder's calls in grace would become ours.
        """
        now = self.expire(now)
        current = self._leases.get(session_id)
        if current is not None:
            self._touch(current, now)
            return self._view(current)
        if prefer is not None and self._last_holder(prefer) not in (session_id, prefer_from):
            prefer = None
        lease = self._new_lease(session_id, now, prefer)
        self._leases[session_id] = lease
        if not lease.fixed:
            self._occupants[lease.number][session_id] = lease
            self._held[lease.number] = None
            self._held.move_to_end(lease.number)
        self.overflows += lease.overflow
        self._record(now, leased=True, overflowed=lease.overflow)
        return self._view(lease)

    def heartbeat(self, session_id: str, now: float) -> bool:
        """Keep the session's number held; False when it holds none any more."""
        now = self.expire(now)
        lease = self._leases.get(session_id)
        if lease is None:
            return False
        self._touch(lease, now)
        return True

    def release(self, session_id: str, now: float) -> None:
        """End a session's lease now (its visitor moved to a new session, or it was evicted)."""
        now = self.expire(now)
        lease = self._leases.get(session_id)
        if lease is not None:
            self._end(lease, now)

    def remember(self, session_id: str, number: str | None, last_seen: float, now: float) -> None:
        """After a restart: `number` was last shown by `session_id`, last seen at `last_seen`.

        Leases are not restored (the page renews and leases again); this
        restores only what the number still answers for. The lease counts as
        let go at the restart (or when its hold ran out, if sooner): a call
        within grace of that is `expired` to this session, the session's
        renewal gets the number back (`prefer`), and the number goes to the
        back of the free list, so new visitors get numbers no page shows
        first. Call it in order of `last_seen`; a number not of this pool
        (the fixed overflow number, a number since removed) is ignored.
        """
        now = self.expire(now)
        if number not in self._released or self._occupants[number]:
            return
        ended = min(now, last_seen + self.spec.hold_seconds)
        if ended + self.spec.grace_seconds <= now:
            return  # its grace is over: it answers for nobody
        self._released[number].append(_Lease(session_id, number, ended, ended, ended=ended))
        self._free.move_to_end(number)

    def expire(self, now: float) -> float:
        """Release every lease whose hold ran out by `now`; returns the pool's clock."""
        now = self._now = max(now, self._now)
        hold = self.spec.hold_seconds
        while self._leases:
            oldest = next(iter(self._leases.values()))
            if oldest.last_seen + hold > now:
                break
            self._end(oldest, oldest.last_seen + hold)
        return now

    def current(self, session_id: str) -> Lease | None:
        lease = self._leases.get(session_id)
        return self._view(lease) if lease is not None else None

    # -- questions ------------------------------------------------------------

    def holder(self, number: str, at: float) -> tuple[str | None, Confidence]:
        """Who `number` stood for at `at` (a call's start); changes nothing."""
        if number not in self._occupants:
            return None, Confidence.NONE
        held = self._held_at(number, at)
        if held:
            newest = max(held, key=lambda lease: lease.last_seen)
            return newest.session_id, Confidence.EXACT if len(held) == 1 else Confidence.SHARED
        last = self._last_let_go(number, at)
        if last is not None and at < self._end_of(last) + self.spec.grace_seconds:
            return last.session_id, Confidence.EXPIRED
        return None, Confidence.NONE

    def _held_at(self, number: str, at: float) -> list[_Lease]:
        """Leases holding `number` at `at`: two live ones at most (enough to say shared)."""
        hold = self.spec.hold_seconds
        found: list[_Lease] = []
        for lease in reversed(self._occupants[number].values()):  # most recently active first
            if lease.last_seen + hold <= at or len(found) == 2:
                break  # the older ones had let go by `at` too
            if lease.start <= at:
                found.append(lease)
        found.extend(lease for lease in self._released[number]
                     if lease.start <= at < self._end_of(lease))
        return found

    def _last_let_go(self, number: str, at: float) -> _Lease | None:
        """The lease of `number` whose hold ended last, at or before `at`."""
        candidates: list[_Lease] = []
        occupants = self._occupants[number]
        if occupants:  # an expiry not swept yet: the most recently active one ends last
            newest = next(reversed(occupants.values()))
            if self._end_of(newest) <= at:
                candidates.append(newest)
        for lease in reversed(self._released[number]):  # in the order they ended
            if self._end_of(lease) <= at:
                candidates.append(lease)
                break
        return max(candidates, key=self._end_of, default=None)

    # -- internals ------------------------------------------------------------

    def _new_lease(self, session_id: str, now: float, prefer: str | None) -> _Lease:
        if prefer is not None and prefer in self._free:
            del self._free[prefer]
            return _Lease(session_id, prefer, now, now)
        if self._free:
            number, _ = self._free.popitem(last=False)
            return _Lease(session_id, number, now, now)
        if self.spec.overflow == OVERFLOW_SHARED:
            number = next(iter(self._held))  # the least recently active held number
            return _Lease(session_id, number, now, now, overflow=True)
        return _Lease(session_id, self.spec.overflow, now, now, fixed=True, overflow=True)

    def _last_holder(self, number: str) -> str | None:
        released = self._released.get(number)
        return released[-1].session_id if released else None

    def _touch(self, lease: _Lease, now: float) -> None:
        lease.last_seen = now
        self._leases.move_to_end(lease.session_id)
        if not lease.fixed:
            self._occupants[lease.number].move_to_end(lease.session_id)
            self._held.move_to_end(lease.number)

    def _end(self, lease: _Lease, at: float) -> None:
        lease.ended = at
        del self._leases[lease.session_id]
        if not lease.fixed:
            occupants = self._occupants[lease.number]
            del occupants[lease.session_id]
            self._released[lease.number].append(lease)
            if not occupants:
                del self._held[lease.number]
                self._free[lease.number] = None  # at the back: released most recently
        self._record(at)

    def _end_of(self, lease: _Lease) -> float:
        return lease.ended if lease.ended is not None else lease.last_seen + self.spec.hold_seconds

    def _view(self, lease: _Lease) -> Lease:
        shared = not lease.fixed and len(self._occupants[lease.number]) > 1
        return Lease(self.spec.name, lease.number, shared=shared, overflow=lease.overflow)

    def _record(self, at: float, *, leased: bool = False, overflowed: bool = False) -> None:
        self.peak_held = max(self.peak_held, len(self._held))
        self.peak_demand = max(self.peak_demand, len(self._leases))
        if self.usage is not None:
            self.usage.record(at, len(self._held), len(self._leases), leased=leased,
                              overflowed=overflowed)
