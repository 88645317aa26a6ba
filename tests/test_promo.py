"""Promo codes: the registry (promo.py) and the codes of visitor sessions (dynamic.py).

Clock and randomness are passed in: `random.Random(seed).randrange`, or a
chooser that always says 0 (every draw collides: the scan path).
"""

from __future__ import annotations

import dataclasses
import itertools
import random
from collections.abc import Callable

import pytest

from ctrackd.attribution.dynamic import IDLE_SECONDS, DynamicPlan, attribute_pool_call
from ctrackd.attribution.pools import Confidence, PoolSpec
from ctrackd.attribution.promo import PromoCodes, damm_digit
from ctrackd.attribution.records import PromoStatus
from ctrackd.attribution.sessions import VisitorSession, normalise_visit
from ctrackd.configcalls import PromoConfig

TTL = 3600.0
T0 = 1_000_000.0


def seeded(seed: int = 7) -> Callable[[int], int]:
    return random.Random(seed).randrange


def always_zero(n: int) -> int:
    return 0


def registry(length: int = 4, choose: Callable[[int], int] | None = None, *,
             check_digit: bool = True, **kw: int) -> PromoCodes:
    return PromoCodes(length, TTL, choose or seeded(), check_digit=check_digit, **kw)


def plan(length: int = 4, ttl: float = TTL, pools: tuple[PoolSpec, ...] = (),
         choose: Callable[[int], int] | None = None, check_digit: bool = True) -> DynamicPlan:
    counter = itertools.count(1)
    return DynamicPlan(list(pools), promo=PromoConfig(length=length, code_ttl=ttl,
                                                      check_digit=check_digit),
                       choose_code=choose or seeded(), new_session_id=lambda: f"s{next(counter)}")


def visit(visitor: str, page: str = "https://shop.example.com/", **extra: object):
    return normalise_visit({"visitor_id": visitor, "page": page, **extra})


# -- the registry ------------------------------------------------------------

@pytest.mark.parametrize("length, check_digit, sessions", [
    (1, False, 10), (2, False, 100), (3, False, 1000),
    (2, True, 10), (3, True, 100), (4, True, 1000)])
@pytest.mark.parametrize("choose", [seeded(), always_zero], ids=["random", "colliding"])
def test_every_code_of_the_space_once_then_none(length: int, check_digit: bool, sessions: int,
                                                choose: Callable[[int], int]) -> None:
    codes = registry(length, choose, check_digit=check_digit)
    issued = [codes.issue(f"s{i}", T0) for i in range(sessions)]
    assert all(c is not None and len(c) == length and c.isdigit() for c in issued)
    assert len(set(issued)) == sessions                        # unique
    assert codes.issue("one-too-many", T0 + 1) is None        # exhausted: no duplicate
    assert codes.exhausted == 1


def test_codes_stay_unique_under_churn() -> None:
    """Sessions come and go for a day: no two reservations ever share a code."""
    rng = random.Random(3)
    codes = registry(3, seeded(11))
    holder: dict[str, str] = {}           # code -> session, as we issued them
    for step in range(3000):
        now = T0 + step * 30.0
        for code in [c for c in holder if codes.lookup(c, now)[0] is None]:
            del holder[code]              # lapsed: may be drawn again
        if rng.random() < 0.7:
            code = codes.issue(f"s{step}", now)
            if code is not None:
                assert code not in holder, f"{code} handed out twice at step {step}"
                holder[code] = f"s{step}"
        for code, session in rng.sample(sorted(holder.items()), min(3, len(holder))):
            codes.renew(code, session, now)
        assert all(codes.lookup(c, now) == (s, PromoStatus.MATCHED) for c, s in holder.items())


@pytest.mark.parametrize("renew_at, lookup_at, issue_at, expected", [
    # (when the session shows a sign of life, when a caller keys it, when
    #  another session asks for a code, what the caller gets)
    (None, T0 + TTL - 1, T0 + TTL - 1, ("s1", PromoStatus.MATCHED)),   # within ttl
    (None, T0 + TTL, T0 + TTL, (None, PromoStatus.UNKNOWN)),            # ttl over: lapsed
    (T0 + 1000, T0 + TTL + 999, T0 + TTL + 999, ("s1", PromoStatus.MATCHED)),  # renewed
    (T0 + 1000, T0 + TTL + 1000, T0 + TTL + 1000, (None, PromoStatus.UNKNOWN)),
])
def test_no_reuse_while_callable_and_reuse_after(renew_at: float | None, lookup_at: float,
                                                 issue_at: float, expected: tuple) -> None:
    codes = registry(1, always_zero, check_digit=False, max_codes=1)  # one code in all: "0"
    assert codes.issue("s1", T0) == "0"
    if renew_at is not None:
        assert codes.renew("0", "s1", renew_at)
    assert codes.lookup("0", lookup_at) == expected
    again = codes.issue("s2", issue_at)
    if expected[0] is None:
        assert again == "0" and codes.lookup("0", issue_at) == ("s2", PromoStatus.MATCHED)
    else:
        assert again is None and codes.exhausted == 1


@pytest.mark.parametrize("keyed", ["", "48", "48210", "48a1", "٤٨٢١", "４８２１", "*482", "0000",
                                   "0001", "0010"])
def test_what_is_no_live_code_is_unknown(keyed: str) -> None:
    codes = registry(4, always_zero)  # the first code is "0000": taken by s1 below
    codes.issue("s1", T0)
    expected = ("s1", PromoStatus.MATCHED) if keyed == "0000" else (None, PromoStatus.UNKNOWN)
    assert codes.lookup(keyed, T0 + 1) == expected


@pytest.mark.parametrize("code, owner, expected", [
    ("0", "s1", True),        # the holder's code: moves
    ("0", "s2", False),       # somebody else's code cannot be taken
    ("1", "s1", False),       # no such code
    (None, "s1", False),      # the previous session had none
])
def test_hand_over_only_from_the_holder(code: str | None, owner: str, expected: bool) -> None:
    codes = registry(1, always_zero, check_digit=False)
    codes.issue("s1", T0)
    assert codes.hand_over(code, owner, "s3", T0 + 10) is expected
    assert codes.lookup("0", T0 + 20)[0] == ("s3" if expected else "s1")


def test_expiry_is_bounded_and_in_order() -> None:
    codes = registry(3, check_digit=False)
    for i in range(500):
        codes.issue(f"s{i}", T0 + i)
    assert len(codes) == 500
    assert codes.expire(T0 + TTL + 99.5) == 100      # the first hundred, and only those
    assert len(codes) == 400
    with pytest.raises(ValueError):
        PromoCodes(0, TTL, seeded())
    with pytest.raises(ValueError, match="check digit"):
        PromoCodes(1, TTL, seeded())                   # a check digit and nothing to check
    with pytest.raises(ValueError):
        PromoCodes(4, 0, seeded())


def test_memory_is_capped() -> None:
    codes = registry(6, max_codes=50)
    assert [codes.issue(f"s{i}", T0) is not None for i in range(51)] == [True] * 50 + [False]


# -- sessions and their codes -------------------------------------------------

def test_a_session_gets_a_code_without_any_pool() -> None:
    dynamic = plan()
    session, lease = dynamic.start_session(visit("visitor-1"), T0)
    assert lease is None and session.promo_code is not None and len(session.promo_code) == 4
    assert dynamic.session_by_code(session.promo_code, T0 + 60) == (
        session, PromoStatus.MATCHED)
    assert dynamic.heartbeat(session.session_id, T0 + 30)  # no pool: the session just lives


def test_two_tabs_of_one_visitor_keep_one_code() -> None:
    dynamic = plan()
    first, _ = dynamic.start_session(visit("visitor-1"), T0)
    second, _ = dynamic.start_session(visit("visitor-1", "https://shop.example.com/cart"),
                                      T0 + 5)
    other, _ = dynamic.start_session(visit("visitor-2"), T0 + 6)
    assert second is first and second.promo_code == first.promo_code
    assert other.promo_code != first.promo_code


def test_a_renewing_tab_keeps_its_code_after_the_session_lapsed() -> None:
    dynamic = plan()
    first, _ = dynamic.start_session(visit("visitor-1"), T0)
    code = first.promo_code
    # The tab was hidden past the idle time: its heartbeat is refused...
    later = T0 + IDLE_SECONDS + 10
    assert not dynamic.heartbeat(first.session_id, later)
    # ...and it asks again naming the old session: a new session, the same code.
    renewed, _ = dynamic.start_session(visit("visitor-1", session_id=first.session_id), later)
    assert renewed.session_id != first.session_id and renewed.promo_code == code
    assert dynamic.session_by_code(code, later + 1) == (renewed, PromoStatus.MATCHED)


def test_a_new_visit_takes_the_code_along() -> None:
    dynamic = plan()
    first, _ = dynamic.start_session(visit("visitor-1", "https://s.example/?utm_source=google"),
                                     T0)
    code = first.promo_code
    second, _ = dynamic.start_session(visit("visitor-1", "https://s.example/?utm_source=vk"),
                                      T0 + 100)
    assert second.session_id != first.session_id and (second.source, second.visit_number) == (
        "vk", 2)
    assert second.promo_code == code and first.promo_code is None
    assert dynamic.session_by_code(code, T0 + 200)[0] is second


def test_heartbeats_keep_the_code_and_a_lapsed_code_names_nobody() -> None:
    dynamic = plan()
    session, _ = dynamic.start_session(visit("visitor-1"), T0)
    code = session.promo_code
    for beat in range(1, 100):                  # an open tab, beating every 30 s
        assert dynamic.heartbeat(session.session_id, T0 + beat * 30)
    last = T0 + 99 * 30
    assert dynamic.session_by_code(code, last + TTL - 1)[0] is session
    assert dynamic.session_by_code(code, last + TTL) == (None, PromoStatus.UNKNOWN)


def test_a_code_outlives_its_visit_until_the_ttl() -> None:
    """The caller keys the code hours after the visit: the session is still known."""
    dynamic = plan(ttl=86400)
    session, _ = dynamic.start_session(visit("visitor-1", "https://s.example/?utm_source=vk"),
                                       T0)
    later = T0 + 5 * 3600
    dynamic.expire(later)
    assert session.session_id not in dynamic.sessions           # the visit is over
    assert dynamic.session_by_code(session.promo_code, later) == (session,
                                                                 PromoStatus.MATCHED)
    # A new visit of the same visitor is a new session (with a new code).
    again, _ = dynamic.start_session(visit("visitor-1"), later)
    assert again is not session
    assert again.promo_code != session.promo_code
    dynamic.expire(T0 + 86400)
    assert dynamic.session_by_code(session.promo_code, T0 + 86400) == (
        None, PromoStatus.UNKNOWN)
    assert dynamic.session_by_code(again.promo_code, T0 + 86400)[0] is again


def test_exhausted_codes_are_counted_and_a_later_page_view_gets_one() -> None:
    dynamic = plan(length=1, ttl=IDLE_SECONDS, check_digit=False)
    sessions = [dynamic.start_session(visit(f"visitor-{i}"), T0)[0] for i in range(11)]
    codes = [s.promo_code for s in sessions]
    assert None not in codes[:10] and len(set(codes[:10])) == 10
    assert codes[10] is None and dynamic.promo is not None and dynamic.promo.exhausted == 1
    # Nobody may get a code somebody else could still be calling in with...
    late = dynamic.start_session(visit("visitor-10"), T0 + IDLE_SECONDS - 1)[0]
    assert late.promo_code is None
    # ...but once the first ten lapsed (no sign of life for ttl), the next page view gets one.
    late = dynamic.start_session(visit("visitor-10"), T0 + IDLE_SECONDS)[0]
    assert late.promo_code is not None


def test_codes_are_off_without_promo_settings() -> None:
    dynamic = DynamicPlan([PoolSpec(name="web", numbers=("+74950000101",))],
                          new_session_id=lambda: "s1")
    session, lease = dynamic.start_session(visit("visitor-1"), T0)
    assert lease is not None and session.promo_code is None
    assert dynamic.session_by_code("1234", T0) == (None, PromoStatus.UNKNOWN)
    with pytest.raises(ValueError, match="choose_code"):
        DynamicPlan([], new_session_id=lambda: "s", promo=PromoConfig())


def test_a_rebuilt_plan_keeps_the_codes_pages_show() -> None:
    old = plan()
    session, _ = old.start_session(visit("visitor-1"), T0)
    code = session.promo_code
    new = plan(choose=always_zero)
    assert new.adopt_codes(old) == 1
    assert new.session_by_code(code, T0 + 10) == (session, PromoStatus.MATCHED)
    assert new.heartbeat(session.session_id, T0 + 30) is False   # the old session is gone...
    renewed, _ = new.start_session(visit("visitor-1", session_id=session.session_id), T0 + 31)
    assert renewed.promo_code == code                            # ...its code is not
    assert plan(length=5).adopt_codes(old) == 0                  # other length: not kept


# -- check digits: a slip makes no code, never another visitor's ---------------------

@pytest.mark.parametrize("body, digit", [("572", "4"), ("000", "0"), ("482", "3"),
                                         ("1234", "0"), ("9999", "2")])
def test_damm_check_digit(body: str, digit: str) -> None:
    assert damm_digit(body) == digit                     # 572 -> 4: Damm's own example
    assert damm_digit(body + digit) == "0"               # a whole code checks to 0


def slips(code: str) -> set[str]:
    """Every one-digit error and every swap of two neighbours (what a caller mishears,
    or a thumb mis-keys)."""
    out = {code[:i] + d + code[i + 1:] for i in range(len(code)) for d in "0123456789"}
    out |= {code[:i] + code[i + 1] + code[i] + code[i + 2:] for i in range(len(code) - 1)}
    return out - {code}


@pytest.mark.parametrize("check_digit, length", [(True, 5), (False, 4)])
def test_a_slip_of_a_live_code_names_nobody_else(check_digit: bool, length: int) -> None:
    """The documented sizing: 5 000 live codes in a 10 000-code space. Without a check
    digit about half of all slips land on another visitor's code; with one, none."""
    codes = registry(length, seeded(1), check_digit=check_digit)
    issued = [codes.issue(f"s{i}", T0) for i in range(5000)]
    assert all(c is not None and len(c) == length for c in issued)
    tried = hits = 0
    for code in issued[:300]:
        for slip in slips(code):  # type: ignore[arg-type]
            tried += 1
            hits += codes.lookup(slip, T0 + 1)[1] is PromoStatus.MATCHED
    if check_digit:
        assert hits == 0, f"{hits} of {tried} slips matched another visitor"
        assert codes.capacity == 10_000
    else:
        assert hits > tried // 3   # what the check digit is for


def test_default_codes_carry_a_check_digit() -> None:
    dynamic = DynamicPlan([], promo=PromoConfig(), choose_code=seeded(),
                          new_session_id=lambda: "s1")
    session, _ = dynamic.start_session(visit("visitor-1"), T0)
    code = session.promo_code
    assert code is not None and len(code) == 5 and damm_digit(code) == "0"
    assert dynamic.session_by_code(code, T0 + 1)[1] is PromoStatus.MATCHED
    wrong_check = code[:4] + str((int(code[4]) + 1) % 10)
    assert dynamic.session_by_code(wrong_check, T0 + 1) == (None, PromoStatus.UNKNOWN)


def test_a_rebuilt_plan_without_check_digits_does_not_take_the_old_codes() -> None:
    old = plan(length=4)
    old.start_session(visit("visitor-1"), T0)
    assert plan(length=4, check_digit=False).adopt_codes(old) == 0


# -- a code is reserved as long as the page showing it is alive ---------------------

def test_a_short_code_ttl_cannot_free_a_code_a_live_page_shows() -> None:
    """code_ttl 60 s, a background tab beating every 100 s (well within the 30 min a
    session lives idle): the code must stay Alice's, or Bob is given the code her
    page still shows and her caller is credited to Bob."""
    counter = itertools.count(1)
    dynamic = DynamicPlan([], promo=PromoConfig(length=4, code_ttl=60, check_digit=False),
                          choose_code=lambda n: 4821,
                          new_session_id=lambda: f"s{next(counter)}")
    alice, _ = dynamic.start_session(visit("alice"), T0)
    assert alice.promo_code == "4821"
    for beat in (50.0, 150.0, 250.0):
        assert dynamic.heartbeat(alice.session_id, T0 + beat)
    bob, _ = dynamic.start_session(visit("bob"), T0 + 260)
    assert bob.promo_code != "4821"                   # the scan finds Bob another
    assert dynamic.session_by_code("4821", T0 + 300) == (alice, PromoStatus.MATCHED)


def test_a_heartbeat_whose_code_is_gone_asks_the_page_to_start_again() -> None:
    dynamic = plan()
    session, _ = dynamic.start_session(visit("visitor-1"), T0)
    code = session.promo_code
    assert dynamic.promo is not None and dynamic.promo.expire(T0 + TTL) == 1  # the code lapsed
    assert dynamic.heartbeat(session.session_id, T0 + 30) is False
    again, _ = dynamic.start_session(visit("visitor-1", session_id=session.session_id), T0 + 31)
    assert again.promo_code is not None
    assert dynamic.session_by_code(again.promo_code, T0 + 32) == (again, PromoStatus.MATCHED)
    assert dynamic.session_by_code(code, T0 + 32)[0] in (None, again)


# -- kept over a restart: dirty marks, rows, restore ------------------------------

def saved(dynamic: DynamicPlan) -> list[tuple[VisitorSession, float]]:
    """What the daemon's flush writes, as the store gives it back: copies, not the objects."""
    return [(dataclasses.replace(session, pages=list(session.pages)), until)
            for session, until in dynamic.take_dirty()]


def test_changes_are_marked_for_the_store_and_heartbeats_only_now_and_then() -> None:
    dynamic = plan()
    session, _ = dynamic.start_session(visit("visitor-1"), T0)
    assert dynamic.dirty == 1
    ((taken, until),) = dynamic.take_dirty()
    assert taken is session and dynamic.dirty == 0 and session.saved_seen == T0
    assert dynamic.heartbeat(session.session_id, T0 + 30) and dynamic.dirty == 0
    resave = dynamic.resave_seconds
    assert dynamic.heartbeat(session.session_id, T0 + resave) and dynamic.dirty == 1
    ((_, until),) = dynamic.take_dirty()
    # The row outlives the code's reservation by the heartbeats it may lag behind.
    assert until == T0 + resave + TTL + resave
    dynamic.start_session(visit("visitor-1", "https://shop.example.com/cart"), T0 + resave + 1)
    assert dynamic.dirty == 1  # every page view: its pages changed


def test_the_stored_reservation_never_ends_before_the_real_one() -> None:
    dynamic = plan()
    session, _ = dynamic.start_session(visit("visitor-1"), T0)
    stored = 0.0
    for beat in range(1, 200):  # an open tab beating every 30 s, flushed each second
        now = T0 + beat * 30
        assert dynamic.heartbeat(session.session_id, now)
        for _, until in dynamic.take_dirty():
            stored = until
        assert stored >= now + TTL  # the code is reserved until at least now + ttl


def test_a_code_handed_to_a_new_visit_is_written_off_the_old_one() -> None:
    dynamic = plan()
    first, _ = dynamic.start_session(visit("visitor-1", "https://s.example/?utm_source=google"),
                                     T0)
    dynamic.take_dirty()
    second, _ = dynamic.start_session(visit("visitor-1", "https://s.example/?utm_source=vk"),
                                      T0 + 100)
    rows = {s.session_id: s.promo_code for s, _ in dynamic.take_dirty()}
    assert rows == {first.session_id: None, second.session_id: second.promo_code}


def test_sessions_and_codes_come_back_after_a_restart() -> None:
    before = plan(length=2, choose=always_zero)       # ten codes: every draw collides
    sessions = [before.start_session(visit(f"visitor-{i}"), T0 + i)[0] for i in range(3)]
    rows = saved(before)
    restart = T0 + 60
    after = plan(length=2, choose=always_zero)
    assert after.restore(rows, restart) == 3
    assert len(after.sessions) == 3 and after.promo is not None and len(after.promo) == 3
    for old in sessions:
        code = old.promo_code
        assert code is not None
        found, status = after.session_by_code(code, restart + 1)
        assert status is PromoStatus.MATCHED and found is not None
        assert (found.session_id, found.visitor_id) == (old.session_id, old.visitor_id)
        assert after.session_of(old.visitor_id) is found
        assert after.heartbeat(old.session_id, restart + 2)   # promo only: it just lives on
    assert after.dirty == 0   # nothing changed that the store does not have
    # The same draws that gave those three codes must now give others.
    fresh = [after.start_session(visit(f"new-{i}"), restart + 3)[0].promo_code
             for i in range(3)]
    assert not set(fresh) & {s.promo_code for s in sessions} and None not in fresh
    # A page view of a restored visitor continues its session and its code.
    again, _ = after.start_session(visit("visitor-0"), restart + 4)
    assert (again.session_id, again.promo_code) == (sessions[0].session_id,
                                                    sessions[0].promo_code)


def test_a_restored_session_past_its_visit_still_answers_for_its_code() -> None:
    before = plan(ttl=86400)
    session, _ = before.start_session(visit("visitor-1", "https://s.example/?utm_source=vk"),
                                      T0)
    rows = saved(before)
    restart = T0 + 5 * 3600                            # the visit is over, its code is not
    after = plan(ttl=86400)
    assert after.restore(rows, restart) == 1
    assert session.session_id not in after.sessions
    found, status = after.session_by_code(session.promo_code, restart)
    assert status is PromoStatus.MATCHED and found is not None and found.source == "vk"
    assert not after.heartbeat(session.session_id, restart)   # the page asks again...
    renewed, _ = after.start_session(visit("visitor-1", session_id=session.session_id),
                                     restart + 1)
    assert renewed.promo_code == session.promo_code          # ...and keeps its code


def test_rows_whose_reservation_ended_or_whose_code_cannot_be_held_are_left_out() -> None:
    before = plan(length=4)
    old, _ = before.start_session(visit("visitor-1"), T0)
    kept, _ = before.start_session(visit("visitor-2"), T0 + TTL)
    rows = saved(before)
    # The first row's code lapsed (its row kept it `resave_seconds` longer, to be safe).
    restart = T0 + TTL + before.resave_seconds
    after = plan(length=4)
    after.restore(rows, restart)
    assert old.session_id not in after.sessions and kept.session_id in after.sessions
    assert after.session_by_code(old.promo_code, restart) == (None, PromoStatus.UNKNOWN)
    # Another code length after the restart: the page shows a code that names nobody
    # now, so its session stays out (its heartbeat is refused, the page starts again).
    longer = plan(length=5)
    assert longer.restore(saved_again(rows), restart) == 0
    assert not longer.sessions and longer.promo is not None and len(longer.promo) == 0
    assert not longer.heartbeat(kept.session_id, restart + 1)


def saved_again(rows: list[tuple[VisitorSession, float]]) -> list[tuple[VisitorSession, float]]:
    return [(dataclasses.replace(s, pages=list(s.pages)), until) for s, until in rows]


def test_a_restored_pool_session_renews_keeping_its_session_code_and_number() -> None:
    spec = PoolSpec(name="site", numbers=("+74950000101", "+74950000102"))
    before = plan(pools=(spec,))
    session, lease = before.start_session(
        visit("visitor-1", "https://s.example/?utm_source=vk"), T0)
    assert lease is not None and lease.number == "+74950000101"
    rows = saved(before)
    restart = T0 + 60
    after = plan(pools=(spec,))
    after.restore(rows, restart)
    # A call before the page renews: the number still answers for the visit (no lease).
    caller, confidence = attribute_pool_call(after, "+74950000101", restart + 1)
    assert (caller.session_id if caller else None, confidence) == (
        session.session_id, Confidence.EXPIRED)
    # The page's heartbeat is refused (no lease since the restart)...
    assert not after.heartbeat(session.session_id, restart + 2)
    # ...a newcomer gets the number no page shows...
    newcomer, new_lease = after.start_session(visit("visitor-2"), restart + 3)
    assert new_lease is not None and new_lease.number == "+74950000102"
    # ...and the renewal keeps session, code and number.
    renewed, again = after.start_session(
        visit("visitor-1", "https://s.example/contacts", session_id=session.session_id),
        restart + 4)
    assert (renewed.session_id, renewed.promo_code, renewed.source) == (
        session.session_id, session.promo_code, "vk")
    assert again is not None and again.number == "+74950000101"
    assert after.heartbeat(session.session_id, restart + 30)
    assert attribute_pool_call(after, "+74950000101", restart + 31) == (renewed,
                                                                        Confidence.EXACT)


def test_a_rebuilt_plan_writes_what_the_old_one_had_not() -> None:
    old = plan()
    session, _ = old.start_session(visit("visitor-1"), T0)
    new = plan()
    new.adopt_codes(old)
    assert [s.session_id for s, _ in new.take_dirty()] == [session.session_id]
