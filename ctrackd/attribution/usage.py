"""Pool usage over time and pool sizing: what `ctrackd pools` reports.

`Usage` keeps each pool's counts in time buckets (the daemon persists them);
`summarise_usage` and `recommended_size` (Erlang B) turn the buckets of a
period into the report. The formula and why it is Erlang B: docs/dynamic.md.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, replace

from ctrackd.attribution.pools import PoolSpec


@dataclass(slots=True)
class UsageBucket:
    """One pool during `width` seconds from `start`: persisted for `ctrackd pools`."""

    start: float
    held_seconds: float = 0.0   # integral of numbers held over time
    demand_seconds: float = 0.0  # integral of sessions wanting a number: / width = erlangs
    peak_held: int = 0          # numbers held at once (capped by the pool size)
    peak_demand: int = 0        # sessions wanting a number at once (not capped: sizing uses it)
    leases: int = 0             # new leases, overflow ones included
    overflows: int = 0


class Usage:
    """A pool's counts in buckets of `width` seconds; the latest `keep` buckets stay."""

    def __init__(self, width: float = 300.0, keep: int = 2016) -> None:
        self.width = width
        self.buckets: deque[UsageBucket] = deque(maxlen=keep)
        self._t = -math.inf   # time the integral has reached
        self._held = 0
        self._demand = 0

    def record(self, at: float, held: int, demand: int, *, leased: bool = False,
               overflowed: bool = False) -> None:
        bucket = self.advance(at)
        self._held, self._demand = held, demand
        bucket.peak_held = max(bucket.peak_held, held)
        bucket.peak_demand = max(bucket.peak_demand, demand)
        bucket.leases += leased
        bucket.overflows += overflowed

    def advance(self, now: float) -> UsageBucket:
        """Integrate the held count up to `now`; returns the bucket `now` falls in."""
        if not self.buckets:
            self._t = now
            self.buckets.append(UsageBucket(self._start_of(now)))
        now = max(now, self._t)
        bucket = self.buckets[-1]
        while now >= bucket.start + self.width:
            end = bucket.start + self.width
            self._integrate(bucket, end)
            # Nothing held (or a clock jump past every kept bucket): the buckets in
            # between carry nothing worth keeping, so jump straight to `now`'s.
            idle = not (self._held or self._demand)
            jump = now - end > self.width * (self.buckets.maxlen or 1)
            start = self._start_of(now) if idle or jump else end
            bucket = UsageBucket(start, peak_held=self._held, peak_demand=self._demand)
            self.buckets.append(bucket)
            self._t = start
        self._integrate(bucket, now)
        return bucket

    def _integrate(self, bucket: UsageBucket, until: float) -> None:
        bucket.held_seconds += self._held * (until - self._t)
        bucket.demand_seconds += self._demand * (until - self._t)
        self._t = until

    def snapshot(self, now: float, since: float = -math.inf) -> list[UsageBucket]:
        """Copies of the buckets starting at or after `since`, brought up to `now` (to persist)."""
        self.advance(now)
        return [replace(b) for b in self.buckets if b.start >= since]

    def _start_of(self, t: float) -> float:
        return math.floor(t / self.width) * self.width


@dataclass(frozen=True, slots=True)
class PoolUsage:
    """One line of `ctrackd pools`."""

    pool: str
    size: int
    seconds: float
    peak_held: int
    peak_demand: int
    utilisation: float      # mean share of the numbers held, 0-1
    busy_load: float        # erlangs: mean sessions wanting a number in the busiest bucket
    leases: int
    overflows: int
    recommended_size: int   # Erlang B at the busy load
    grace_size: int         # ... plus the spare numbers that keep every grace whole at peak


def summarise_usage(spec: PoolSpec, buckets: Iterable[UsageBucket], since: float, until: float,
                    width: float = 300.0, blocking: float = 0.005) -> PoolUsage:
    """The report over the buckets starting in [since, until) (from memory or the store)."""
    chosen = [b for b in buckets if since <= b.start < until]
    seconds = max(until - since, 0.0)
    load = max((b.demand_seconds for b in chosen), default=0.0) / width
    rate = max((b.leases for b in chosen), default=0) / width  # busiest bucket's leases a second
    held = sum(b.held_seconds for b in chosen)
    return PoolUsage(
        pool=spec.name, size=len(spec.numbers), seconds=seconds,
        peak_held=max((b.peak_held for b in chosen), default=0),
        peak_demand=max((b.peak_demand for b in chosen), default=0),
        utilisation=held / (len(spec.numbers) * seconds) if seconds else 0.0,
        busy_load=load, leases=sum(b.leases for b in chosen),
        overflows=sum(b.overflows for b in chosen),
        recommended_size=recommended_size(load, blocking=blocking),
        grace_size=recommended_size(load, blocking=blocking, lease_rate=rate,
                                    grace_seconds=spec.grace_seconds))


def recommended_size(peak_concurrent_sessions: float, *, blocking: float = 0.005,
                     lease_rate: float = 0.0, grace_seconds: float = 0.0) -> int:
    """Smallest N with Erlang B(N, load) <= `blocking`, plus `lease_rate * grace_seconds`.

    `peak_concurrent_sessions` is the offered load in erlangs: the mean number of
    sessions wanting a number in the busiest period (not its instant maximum,
    which already holds the fluctuation Erlang B accounts for). An overflow blurs
    two sessions, hence 0.5 % blocking for 99 % exact. The extra term keeps a
    released number resting `grace_seconds` before reuse. See docs/dynamic.md.
    """
    if not 0 < blocking < 1:
        raise ValueError("blocking must be between 0 and 1")
    load = max(float(peak_concurrent_sessions), 0.0)
    size, loss = 0, 1.0
    while loss > blocking:  # Erlang B by its stable recursion: B(n) = A·B(n-1) / (n + A·B(n-1))
        size += 1
        loss = load * loss / (size + load * loss)
    return size + math.ceil(lease_rate * grace_seconds)
