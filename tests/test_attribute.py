"""attribute_call: one entry point for static and pool numbers (tables, clock passed in)."""

from __future__ import annotations

import itertools

import pytest

from ctrackd.attribution.attribute import attribute_call, attribute_promo
from ctrackd.attribution.dynamic import DynamicPlan
from ctrackd.attribution.plan import Channel, StaticPlan, TrackingNumber
from ctrackd.attribution.pools import PoolSpec
from ctrackd.attribution.records import PromoEntry, PromoStatus, Tracking
from ctrackd.attribution.sessions import UtmRule, normalise_visit

STATIC = StaticPlan(
    channels={
        "google": Channel(key="google", label="Google Ads", source="google", medium="cpc"),
        "yandex": Channel(key="yandex", label="Яндекс.Директ", source="yandex", medium="cpc",
                          forward_to="PJSIP/sales"),
        "site": Channel(key="site", label="Website", source="site", medium="organic"),
    },
    numbers={"+74950000001": TrackingNumber(did="+74950000001", channel="google"),
             "+74950000091": TrackingNumber(did="+74950000091", channel="site",
                                            tracking="promo"),
             "+74950000092": TrackingNumber(did="+74950000092", channel="site",
                                            tracking="promo", forward_to="PJSIP/promo-desk")},
    default_forward="PJSIP/office", default_ring_timeout=20, region="RU",
    recordings_dir="/rec")


def plan(**spec: object) -> DynamicPlan:
    counter = itertools.count(1)
    # no channel: the default pool, serving every visitor (a channel would
    # restrict it to the sessions of that channel)
    pool = PoolSpec(name="web", numbers=("+74950000101", "+74950000102"),
                    **spec)  # type: ignore[arg-type]
    return DynamicPlan([pool], [UtmRule(channel="yandex", source="yandex")],
                       new_session_id=lambda: f"s{next(counter)}")


def call(dynamic: DynamicPlan | None, did: str, at: float):
    return attribute_call(STATIC, dynamic, call_id="c1", did=did, caller="89161234567",
                          caller_name="Иван", now=at)


def test_static_numbers_stay_static_with_pools_configured() -> None:
    a = call(plan(), "74950000001", 100.0)
    assert (a.tracking, a.channel, a.pool, a.confidence, a.session) == (
        Tracking.STATIC, "google", None, None, None)


def test_pool_call_gets_the_session_that_holds_the_number() -> None:
    dynamic = plan()
    session, lease = dynamic.start_session(normalise_visit({
        "visitor_id": "v-1", "page": "https://shop.ru/?utm_source=yandex&utm_medium=cpc"
        "&utm_campaign=winter&utm_term=boots&yclid=123"}), 50.0)
    a = call(dynamic, lease.number, 120.0)
    assert (a.tracking, a.pool, a.session_id, a.confidence) == (
        Tracking.DYNAMIC, "web", session.session_id, "exact")
    assert (a.channel, a.label, a.forward_to) == ("yandex", "Яндекс.Директ", "PJSIP/sales")
    assert (a.source, a.medium, a.campaign) == ("yandex", "cpc", "winter")
    assert a.session["utm_term"] == "boots" and a.session["yclid"] == "123"
    assert a.caller == "+79161234567" and a.recording_path == "/rec/ctrackd-c1.wav"


def test_pool_call_in_grace_is_expired_and_after_grace_none() -> None:
    dynamic = plan(hold_seconds=60, grace_seconds=600)
    _, lease = dynamic.start_session(normalise_visit({"visitor_id": "v-2"}), 0.0)
    assert call(dynamic, lease.number, 30.0).confidence == "exact"
    assert call(dynamic, lease.number, 300.0).confidence == "expired"
    late = call(dynamic, lease.number, 5000.0)
    assert (late.confidence, late.session, late.note) == ("none", None, "no_session")
    assert (late.channel, late.label, late.forward_to) == (None, "web", "PJSIP/office")


def test_pool_number_nobody_ever_held() -> None:
    a = call(plan(), "+74950000102", 10.0)
    assert (a.tracking, a.confidence, a.note, a.channel) == (
        Tracking.DYNAMIC, "none", "no_session", None)


@pytest.mark.parametrize("dynamic", [None])
def test_without_pools_a_pool_like_number_is_just_unknown(dynamic: None) -> None:
    a = call(dynamic, "+74950000101", 10.0)
    assert (a.tracking, a.note) == (Tracking.STATIC, "unknown_did")


def test_without_the_daemon_a_pool_number_still_goes_to_its_pools_target() -> None:
    """ctrackd-agi has no sessions, but knows the pools from the config."""
    spec = PoolSpec(name="spb", numbers=("+78120000101",), channel="yandex",
                    forward_to="PJSIP/spb-office")
    a = attribute_call(STATIC, None, call_id="c2", did="88120000101", caller=None,
                       caller_name=None, now=1.0, pools=[spec], tracking=Tracking.FALLBACK)
    assert (a.tracking, a.forward_to, a.pool, a.confidence, a.note) == (
        Tracking.FALLBACK, "PJSIP/spb-office", "spb", "none", "no_session")
    assert (a.channel, a.label) == ("yandex", "Яндекс.Директ")


def promo_plan() -> DynamicPlan:
    from ctrackd.configcalls import PromoConfig

    counter = itertools.count(1)
    return DynamicPlan([], [UtmRule(channel="yandex", source="yandex")],
                       new_session_id=lambda: f"s{next(counter)}",
                       promo=PromoConfig(length=4, check_digit=False),
                       choose_code=lambda n: 4821)


@pytest.mark.parametrize("page, did, expected", [
    # a session whose UTM tags match a rule: that channel, the session's own tags
    ("https://shop.ru/?utm_source=yandex&utm_medium=cpc&utm_campaign=winter", "74950000091",
     ("yandex", "Яндекс.Директ", "yandex", "cpc", "winter", "PJSIP/sales")),
    # no rule matches: the number's channel, the session's tags where it has them
    ("https://shop.ru/?utm_source=vk", "74950000091",
     ("site", "Website", "vk", "organic", None, "PJSIP/office")),
    # a direct visit: the number's channel as it is
    ("https://shop.ru/", "74950000091",
     ("site", "Website", "site", "organic", None, "PJSIP/office")),
    # the number's own target wins over the channel's
    ("https://shop.ru/?utm_source=yandex", "74950000092",
     ("yandex", "Яндекс.Директ", "yandex", "cpc", None, "PJSIP/promo-desk")),
])
def test_a_matched_code_attributes_the_call_to_its_session(page: str, did: str,
                                                           expected: tuple) -> None:
    dynamic = promo_plan()
    session, _ = dynamic.start_session(normalise_visit({"visitor_id": "v-1", "page": page}), 5.0)
    base = call(None, did, 100.0)
    assert (base.tracking, base.channel) == (Tracking.STATIC, "site")
    found, status = dynamic.session_by_code("4821", 100.0)
    a = attribute_promo(STATIC, dynamic, base, "4821", PromoEntry.CALLER, status, found)
    assert (a.channel, a.label, a.source, a.medium, a.campaign, a.forward_to) == expected
    assert (a.tracking, a.session_id, a.confidence) == (Tracking.PROMO, session.session_id,
                                                        "exact")
    assert (a.promo_code, a.promo_entry, a.promo_status) == (
        "4821", PromoEntry.CALLER, PromoStatus.MATCHED)
    assert a.session["visitor_id"] == "v-1" and a.session["landing_page"] == page
    assert (a.call_id, a.started_at, a.caller, a.did) == (base.call_id, base.started_at,
                                                          base.caller, base.did)


@pytest.mark.parametrize("code, status", [
    ("1234", PromoStatus.UNKNOWN),      # wrong digits
    (None, PromoStatus.SKIPPED),        # '#' alone
    (None, PromoStatus.NO_INPUT),       # silence, or the caller hung up
])
def test_no_match_keeps_the_numbers_channel_and_says_why(code: str | None,
                                                         status: PromoStatus) -> None:
    dynamic = promo_plan()
    dynamic.start_session(normalise_visit({"visitor_id": "v-1"}), 5.0)
    base = call(None, "74950000091", 100.0)
    session, found = dynamic.session_by_code(code, 100.0) if code else (None, status)
    assert found is status
    a = attribute_promo(STATIC, dynamic, base, code, PromoEntry.CALLER, status, session)
    assert a == base.__class__(**{**{f: getattr(base, f) for f in base.__slots__},
                                  "promo_code": code, "promo_entry": PromoEntry.CALLER,
                                  "promo_status": status})
    assert (a.tracking, a.channel, a.session_id) == (Tracking.STATIC, "site", None)
