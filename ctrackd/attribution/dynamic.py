"""Dynamic tracking as a whole: pools + visitor sessions + UTM rules + promo codes.

`DynamicPlan` is what the HTTP side asks for a number (`start_session`,
`heartbeat`) and what the AGI route asks about a call (`attribute_pool_call`,
`session_by_code`). It keeps sessions in one ordered dict, least recently seen
first, so that `expire` only ever looks at sessions it drops: the daemon holds
10k live sessions and answers thousands of requests a second on one core.

With promo codes on, every session gets a code (promo.py), pools or not: a
site with only a promo line has a plan with no pools. A code outlives its
session's visit (a caller may key it hours later), so a session dropped from
the live set while its code is still reserved is kept aside ("retired") until
the code lapses: the call is still attributed to the visit it came from.

Each pool records its usage in a `usage.Usage` (time buckets the daemon
persists for `ctrackd pools`).

Sessions and their codes outlive a restart through the store (table
`web_sessions`), written off the request path: each change that matters
marks its session *dirty* here, and the daemon takes the dirty ones
(`take_dirty`) every second or so and writes them as one batch. A heartbeat
only marks its session once `resave_seconds` have passed since the last
write: each row stores `reserved_until` that far ahead, so the stored
reservation never ends before the real one. At start `restore` puts the
stored sessions and code reservations back (docs/dynamic.md, "Restarts").
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence

from ctrackd.attribution.pools import Confidence, Lease, PoolSpec, PoolState
from ctrackd.attribution.promo import PromoCodes, PromoSettings
from ctrackd.attribution.records import PromoStatus
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
from ctrackd.attribution.usage import Usage

#: how long a session lives idle when no pool says (a promo-only site): analytics' 30 minutes
IDLE_SECONDS = 1800.0
#: seconds of heartbeats before a session's row is written again (its reserved_until's margin)
RESAVE_SECONDS = 300.0


class DynamicPlan:
    """Pools, the number -> pool index, and the live sessions by id and by visitor."""

    def __init__(self, pools: Sequence[PoolSpec], rules: Sequence[UtmRule] = (), *,
                 new_session_id: Callable[[], str], max_sessions: int = 100_000,
                 bucket_seconds: float = 300.0, buckets_kept: int = 2016,
                 promo: PromoSettings | None = None,
                 choose_code: Callable[[int], int] | None = None) -> None:
        """`promo` turns promo codes on; `choose_code(n)` draws them (0 <= x < n)."""
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
        self.keep_seconds = max((s.hold_seconds + s.grace_seconds for s in pools),
                                default=IDLE_SECONDS)
        self.max_sessions = max_sessions
        if promo is not None and choose_code is None:
            raise ValueError("promo codes need choose_code (the core draws no randomness)")
        # A code is reserved at least as long as its session can live: a live
        # session's page shows its code, so a shorter code_ttl would free the
        # code while the page still shows it, and the next visitor could be
        # given it too. Every sign of life renews both, so "session live"
        # then implies "code reserved".
        self.promo = (PromoCodes(promo.length, max(promo.code_ttl, self.keep_seconds),
                                 choose_code, check_digit=promo.check_digit)
                      if promo is not None and choose_code is not None else None)
        # Sessions out of the live set whose code may still be keyed, oldest first.
        self._retired: OrderedDict[str, VisitorSession] = OrderedDict()
        self._new_id = new_session_id
        self._now = -math.inf
        # Written at most this long after its last write; a quarter of the
        # session's life at most, so a restored session is still live if it was.
        self.resave_seconds = min(RESAVE_SECONDS, self.keep_seconds / 4)
        # Sessions changed since the daemon last took them for the store (insertion order).
        self._dirty: dict[str, VisitorSession] = {}

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
            self._keep_code(current, now)
            self._dirty[current.session_id] = current  # a page view: pages, maybe lease or code
            if visit.pool in self.pools and visit.pool != current.pool:
                # This page asks for another pool (the SPb page of a site with a
                # pool per city): its number, not the one from the last page.
                if current.pool is not None:
                    self.pools[current.pool].release(current.session_id, now)
                return current, _remember(current, self.pools[visit.pool].lease(
                    current.session_id, now))
            return current, self._renew(current, now)
        session = self._open(visit, current, now)
        self._give_code(session, current or self._lapsed(visit), now)
        return session, self._first_lease(session, current, visit.pool, now)

    def heartbeat(self, session_id: str, now: float) -> bool:
        """True while the session still holds the number and the code it shows; False: ask
        for a number (and a code) again."""
        now = self.expire(now)
        session = self.sessions.get(session_id)
        current = self.session_of(session.visitor_id) if session else None
        if session is None or current is None or current.number != session.number:
            return False  # unknown, expired, or the visitor's newer session shows another number
        # Another tab may have started a newer visit: the tab still shows its number, so keep it.
        session = current
        session.last_seen = now
        self.sessions.move_to_end(session.session_id)
        if session.saved_seen is None or now - session.saved_seen >= self.resave_seconds:
            self._dirty[session.session_id] = session  # its stored reservation nears its end
        if (self.promo is not None and session.promo_code is not None
                and not self.promo.renew(session.promo_code, session.session_id, now)):
            # The code lapsed under a live session (it cannot, with ttl >= keep_seconds,
            # unless something freed it): the page must not go on showing a code that
            # may be drawn for someone else. It asks again and gets a fresh one.
            return False
        return session.pool is None or self.pools[session.pool].heartbeat(session.session_id, now)

    def expire(self, now: float) -> float:
        """Drop sessions past hold + grace, and codes past their ttl; O(dropped).
        Returns the plan's clock."""
        now = self._now = max(now, self._now)
        for pool in self.pools.values():
            pool.expire(now)
        while self.sessions:
            oldest = next(iter(self.sessions.values()))
            if oldest.last_seen + self.keep_seconds > now:
                break
            self._drop(oldest, now)
        if self.promo is not None:
            self.promo.expire(now)
            # A code is renewed with each sign of life, so it lapses at last_seen + ttl.
            while self._retired:
                oldest = next(iter(self._retired.values()))
                if oldest.last_seen + self.promo.ttl > now:
                    break
                del self._retired[oldest.session_id]
        return now

    def session_by_code(self, code: str, at: float) -> tuple[VisitorSession | None, PromoStatus]:
        """The session whose page showed `code`, for a code keyed at `at`: MATCHED or UNKNOWN."""
        if self.promo is None:
            return None, PromoStatus.UNKNOWN
        session_id, status = self.promo.lookup(code, at)
        session = (self.sessions.get(session_id) or self._retired.get(session_id)
                   if session_id else None)
        # A session evicted from memory (a flood) keeps its code reserved, but
        # nothing is known of it any more.
        return (session, status) if session is not None else (None, PromoStatus.UNKNOWN)

    def adopt_codes(self, old: DynamicPlan) -> int:
        """After a reload rebuilt the plan: keep the codes the old plan's sessions show.

        Without this a rebuilt plan could draw a code a page still shows, and
        the callers of the old codes would all fall back. The old sessions
        join the retired ones (their leases are gone with the old pools): a
        tab that renews gets its code back. Codes of another length cannot
        be kept, nor codes with a check digit by a plan without (or the other way). Returns
        how many sessions came over. Changes the old plan had not yet handed to the
        store are handed over too (they are written by this plan's flush).
        """
        self.mark_dirty(old._dirty.values())
        if (self.promo is None or old.promo is None
                or (old.promo.length, old.promo.check_digit)
                != (self.promo.length, self.promo.check_digit)):
            return 0
        old.promo.ttl = self.promo.ttl
        self.promo = old.promo
        moved = [s for s in (*old._retired.values(), *old.sessions.values()) if s.promo_code]
        for session in moved:
            self._retired[session.session_id] = session
        self._trim_retired()
        return len(moved)

    # -- persistence (the daemon's store writes and reads; the plan does no I/O) --

    @property
    def dirty(self) -> int:
        """Sessions changed since the last `take_dirty`."""
        return len(self._dirty)

    def take_dirty(self) -> list[tuple[VisitorSession, float]]:
        """The sessions to write now, each with its row's `reserved_until`; clears the marks.

        Turn them into rows before the next await: the plan goes on
        changing them. A failed write gives them back (`mark_dirty`).
        """
        taken = []
        for session in self._dirty.values():
            session.saved_seen = session.last_seen
            taken.append((session, self.stored_until(session)))
        self._dirty = {}
        return taken

    def mark_dirty(self, sessions: Iterable[VisitorSession]) -> None:
        """Write these again at the next flush (their last write failed)."""
        for session in sessions:
            self._dirty[session.session_id] = session

    def stored_until(self, session: VisitorSession) -> float:
        """Until when a session's row is worth keeping: its code's reservation (last sign
        of life + ttl), else its own life, plus `resave_seconds` (the heartbeats a row
        may lag behind). Never sooner than the plan would let either go."""
        life = (self.promo.ttl if self.promo is not None and session.promo_code is not None
                else self.keep_seconds)
        return session.last_seen + life + self.resave_seconds

    def restore(self, saved: Iterable[tuple[VisitorSession, float]], now: float) -> int:
        """Put back the sessions the store kept over a restart (`until`: its row's
        reserved_until); for a fresh plan, before any request. Returns how many came back.

        A session still within its life is live again: heartbeats and page
        views find it, `/healthz` counts it, its visitor keeps it. Its pool
        lease is not restored: the pool only remembers who last showed the
        number (`PoolState.remember`), so the page's heartbeat is refused
        and its renewal (same session id) leases that number again. A
        session past its life, or whose pool is gone, joins the retired ones
        if its code is still reserved. Codes keep their stored reservation.
        A session whose code this plan cannot hold (promo codes off, another
        length or check digit) stays out: its page shows a code that names
        nobody now, so its heartbeat must be refused and it must start again.
        """
        now = self.expire(now)
        known = self.sessions.keys() | self._retired.keys()
        rows = sorted(((session, until) for session, until in saved
                       if until > now and session.session_id not in known),
                      key=lambda row: row[0].last_seen)  # the order sessions and pools keep
        held = (self.promo.restore(((s.promo_code, s.session_id, until) for s, until in rows
                                    if s.promo_code is not None), now)
                if self.promo is not None else set())
        restored = 0
        for session, _ in rows:
            if session.promo_code is not None and session.session_id not in held:
                continue
            # The row is rewritten only every `resave_seconds` of heartbeats:
            # the visit may have been seen up to that much later than stored.
            # Counting from the stored time would expire the session (and
            # unmatch its still-reserved code) that much too early.
            session.saved_seen = session.last_seen
            session.last_seen = min(now, session.last_seen + self.resave_seconds)
            pool = self.pools.get(session.pool) if session.pool is not None else None
            if pool is not None:
                pool.remember(session.session_id, session.number, session.last_seen, now)
            if (session.last_seen + self.keep_seconds > now
                    and (session.pool is None or pool is not None)):
                self.sessions[session.session_id] = session
                current = self.session_of(session.visitor_id)
                if current is None or current.created_at <= session.created_at:
                    self.by_visitor[session.visitor_id] = session.session_id
            elif session.promo_code is not None:
                self._retired[session.session_id] = session
            else:
                continue
            restored += 1
        while len(self.sessions) > self.max_sessions:
            self._drop(next(iter(self.sessions.values())), now)
        self._trim_retired()
        return restored

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
        self._dirty[session_id] = session
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
        if session.promo_code is not None and self.promo is not None:
            self._retired[session.session_id] = session
            self._trim_retired()

    def _trim_retired(self) -> None:
        # Bounded like the live set; an evicted session's code stays reserved
        # (never handed to another), it just names nobody we still know.
        while len(self._retired) > self.max_sessions:
            del self._retired[next(iter(self._retired))]

    def _keep_code(self, session: VisitorSession, now: float) -> None:
        """A page view of a live session: its code is kept, or it gets one now if it had none."""
        if self.promo is not None and not self.promo.renew(session.promo_code,
                                                           session.session_id, now):
            session.promo_code = self.promo.issue(session.session_id, now)

    def _give_code(self, session: VisitorSession, previous: VisitorSession | None,
                   now: float) -> None:
        """A new session's code: the visitor's previous one when it still holds it (the
        code on the page stays right, as the pool number follows), else a new one."""
        if self.promo is None:
            return
        if previous is not None and self.promo.hand_over(
                previous.promo_code, previous.session_id, session.session_id, now):
            session.promo_code, previous.promo_code = previous.promo_code, None
            self._retired.pop(previous.session_id, None)
            self._dirty[previous.session_id] = previous  # its row must not claim the code
            return
        session.promo_code = self.promo.issue(session.session_id, now)

    def _lapsed(self, visit: VisitInput) -> VisitorSession | None:
        """The retired session a tab renews (it still shows that session's code)."""
        session = self._retired.get(visit.session_id) if visit.session_id else None
        return session if session is not None and session.visitor_id == visit.visitor_id else None


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
