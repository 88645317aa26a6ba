"""Dynamic tracking as a whole: pools + visitor sessions + UTM rules, and pool sizing.

`DynamicPlan` is what the HTTP side asks for a number (`start_session`,
`heartbeat`) and what the AGI route asks about a call (`attribute_pool_call`).
It keeps sessions in one ordered dict, least recently seen first, so that
`expire` only ever looks at sessions it drops: the daemon holds 10k live
sessions and answers thousands of requests a second on one core.

`Usage` keeps each pool's counts in time buckets, which the daemon persists
for `ctrackd pools`; `summarise_usage` and `recommended_size` turn them into
the report (the sizing formula is explained in docs/dynamic.md).
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace

from ctrackd.attribution.pools import Confidence, Lease, PoolSpec, PoolState
from ctrackd.attribution.sessions import (
    MAX_VISITS,
    UtmRule,
    VisitInput,
    VisitorSession,
    match_channel,
    open_session,
    see_page,
    starts_new_visit,
)


class DynamicPlan:
    """Pools, the number -> pool index, and the live sessions by id and by visitor."""

    def __init__(self, pools: Sequence[PoolSpec], rules: Sequence[UtmRule] = (), *,
                 new_session_id: Callable[[], str], max_sessions: int = 100_000,
                 bucket_seconds: float = 300.0, buckets_kept: int = 2016) -> None:
        self.pools = {spec.name: PoolState(spec, usage=Usage(bucket_seconds, buckets_kept))
                      for spec in pools}
        self.by_number: dict[str, PoolState] = {}
        self._by_channel: dict[str | None, PoolState] = {}  # first pool per channel; None: default
        for pool in self.pools.values():
            self._by_channel.setdefault(pool.spec.channel, pool)
            for number in pool.spec.numbers:
                if self.by_number.setdefault(number, pool) is not pool:
                    raise ValueError(f"pool {pool.spec.name!r}: {number} is in another pool too")
        self.rules = tuple(rules)
        self.sessions: OrderedDict[str, VisitorSession] = OrderedDict()  # least recently seen first
        self.by_visitor: dict[str, str] = {}
        # A session must outlive every attribution its number can still give it.
        self.keep_seconds = max((s.hold_seconds + s.grace_seconds for s in pools), default=0.0)
        self.max_sessions = max_sessions
        self._new_id = new_session_id
        self._now = -math.inf

    def start_session(self, visit: VisitInput, now: float) -> tuple[VisitorSession, Lease | None]:
        """A page view: the visitor's session (continued or new) and the number it shows.

        None for the lease when no pool fits: the page keeps the office number.
        """
        now = self.expire(now)
        current = self.session_of(visit.visitor_id)
        if current is not None and (self._is_renewal(visit)
                                    or not starts_new_visit(current, visit)):
            see_page(current, visit, now)
            self.sessions.move_to_end(current.session_id)
            if visit.pool in self.pools and visit.pool != current.pool:
                # This page asks for another pool (the SPb page of a site with a
                # pool per city): its number, not the one from the last page.
                if current.pool is not None:
                    self.pools[current.pool].release(current.session_id, now)
                return current, _remember(current, self.pools[visit.pool].lease(
                    current.session_id, now))
            return current, self._renew(current, now)
        session = self._open(visit, current, now)
        return session, self._first_lease(session, current, visit.pool, now)

    def heartbeat(self, session_id: str, now: float) -> bool:
        """True while the session still holds the number it shows; False: ask for a number again."""
        now = self.expire(now)
        session = self.sessions.get(session_id)
        current = self.session_of(session.visitor_id) if session else None
        if session is None or current is None or current.number != session.number:
            return False  # unknown, expired, or the visitor's newer session shows another number
        # Another tab may have started a newer visit: the tab still shows its number, so keep it.
        session = current
        session.last_seen = now
        self.sessions.move_to_end(session.session_id)
        return session.pool is None or self.pools[session.pool].heartbeat(session.session_id, now)

    def expire(self, now: float) -> float:
        """Drop sessions past hold + grace; O(dropped). Returns the plan's clock."""
        now = self._now = max(now, self._now)
        for pool in self.pools.values():
            pool.expire(now)
        while self.sessions:
            oldest = next(iter(self.sessions.values()))
            if oldest.last_seen + self.keep_seconds > now:
                break
            self._drop(oldest, now)
        return now

    def session_of(self, visitor_id: str) -> VisitorSession | None:
        session_id = self.by_visitor.get(visitor_id)
        return self.sessions.get(session_id) if session_id else None

    def pool_of(self, number: str) -> PoolSpec | None:
        pool = self.by_number.get(number)
        return pool.spec if pool else None

    # -- internals ------------------------------------------------------------

    def _is_renewal(self, visit: VisitInput) -> bool:
        """A tab re-asking with the session it had never starts a new visit (two tabs that
        landed with different tags would otherwise take the visitor from each other forever)."""
        known = self.sessions.get(visit.session_id) if visit.session_id else None
        return known is not None and known.visitor_id == visit.visitor_id

    def _open(self, visit: VisitInput, previous: VisitorSession | None,
              now: float) -> VisitorSession:
        before = max(visit.visits_before, previous.visit_number if previous else 0)
        session_id = self._new_id()
        while session_id in self.sessions:  # a collision would hand over someone's session
            session_id = self._new_id()
        session = open_session(visit, session_id=session_id, now=now,
                               visit_number=min(before + 1, MAX_VISITS))
        session.channel = match_channel(self.rules, session)
        self.sessions[session_id] = session
        self.by_visitor[visit.visitor_id] = session_id
        while len(self.sessions) > self.max_sessions:  # a flood of made-up visitor ids
            self._drop(next(iter(self.sessions.values())), now)
        return session

    def _first_lease(self, session: VisitorSession, previous: VisitorSession | None,
                     pool_name: str | None, now: float) -> Lease | None:
        prefer = prefer_from = None
        if previous is not None and previous.pool is not None:
            # The visitor's number follows it into its new visit when it can.
            self.pools[previous.pool].release(previous.session_id, now)
            prefer, prefer_from = previous.number, previous.session_id
        pool = (self.pools.get(pool_name) if pool_name else None) or (
            self._by_channel.get(session.channel) or self._by_channel.get(None))
        if pool is None:
            return None
        return _remember(session, pool.lease(session.session_id, now, prefer=prefer,
                                             prefer_from=prefer_from))

    def _renew(self, session: VisitorSession, now: float) -> Lease | None:
        if session.pool is None:
            return None
        lease = self.pools[session.pool].lease(session.session_id, now, prefer=session.number)
        return _remember(session, lease)

    def _drop(self, session: VisitorSession, now: float) -> None:
        del self.sessions[session.session_id]
        if self.by_visitor.get(session.visitor_id) == session.session_id:
            del self.by_visitor[session.visitor_id]
        if session.pool is not None:  # still held only when evicted early
            self.pools[session.pool].release(session.session_id, now)


def _remember(session: VisitorSession, lease: Lease) -> Lease:
    session.pool, session.number = lease.pool, lease.number
    session.shared, session.overflow = lease.shared, lease.overflow
    return lease


def attribute_pool_call(plan: DynamicPlan, did_e164: str,
                        at: float) -> tuple[VisitorSession | None, Confidence]:
    """The session a call to a pool number belongs to, for a call that started at `at`."""
    pool = plan.by_number.get(did_e164)
    if pool is None:
        return None, Confidence.NONE
    session_id, confidence = pool.holder(did_e164, at)
    session = plan.sessions.get(session_id) if session_id else None
    return (session, confidence) if session is not None else (None, Confidence.NONE)


def call_channel(plan: DynamicPlan, did_e164: str, session: VisitorSession | None) -> str | None:
    """The channel of a pool call: the session's (UTM rules) first, else the pool's own."""
    spec = plan.pool_of(did_e164)
    return (session.channel if session else None) or (spec.channel if spec else None)


# -- usage and sizing ---------------------------------------------------------

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
