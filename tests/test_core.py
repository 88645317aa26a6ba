"""Unit tests of the pure core: tables of cases, no loop, no sockets, time passed in."""

from __future__ import annotations

import dataclasses

import pytest

from ctrackd.attribution.events import (
    AsteriskShutdown,
    BridgeEntered,
    CallAttributed,
    ChannelCreated,
    ChannelHungUp,
    ChannelsListed,
    ListedChannel,
    DialBegan,
    DialEnded,
    DialStatusSet,
    HangupRequested,
    Leg,
)
from ctrackd.attribution.numbers import normalise_number
from ctrackd.attribution.plan import (
    Channel,
    StaticPlan,
    TrackingNumber,
    attribute_static,
    operator_display_name,
    recording_name,
)
from ctrackd.attribution.records import CallProgress, CallStatus, Tracking
from ctrackd.attribution.tracker import CallTracker, endpoint_of


@pytest.mark.parametrize("raw, region, expected", [
    ("+74950000001", "RU", "+74950000001"),
    ("84950000001", "RU", "+74950000001"),
    ("74950000001", "RU", "+74950000001"),
    ("8 (495) 000-00-01", "RU", "+74950000001"),
    ("4950000001", "RU", "+74950000001"),
    ("+442079460000", "RU", "+442079460000"),
    ("02079460000", "GB", "+442079460000"),
    ("100", "RU", "100"),                      # an extension is kept, not dropped
    ("unknown", "RU", None),
    ("<unknown>", "RU", None),
    ("Anonymous", "RU", None),
    ("", "RU", None),
    (None, "RU", None),
])
def test_normalise_number(raw: str | None, region: str, expected: str | None) -> None:
    assert normalise_number(raw, region) == expected


PLAN = StaticPlan(
    channels={
        "google": Channel(key="google", label="Google Ads", source="google", medium="cpc",
                          campaign="brand"),
        "board": Channel(key="board", label="Billboard", source="billboard", medium="offline",
                         forward_to="Queue(sales)"),
    },
    numbers={
        "+74950000001": TrackingNumber(did="+74950000001", channel="google"),
        "+74950000003": TrackingNumber(did="+74950000003", channel="board"),
        "+74950000004": TrackingNumber(did="+74950000004", channel="board",
                                       forward_to="PJSIP/101&PJSIP/102"),
    },
    default_forward="PJSIP/office", default_ring_timeout=25, region="RU",
    recordings_dir="/var/spool/asterisk/monitor",
)


@pytest.mark.parametrize("did, channel, forward, note", [
    ("74950000001", "google", "PJSIP/office", None),           # channel has no target: default
    ("84950000003", "board", "Queue(sales)", None),            # the channel's own target
    ("+74950000004", "board", "PJSIP/101&PJSIP/102", None),    # the number's target wins
    ("74959999999", None, "PJSIP/office", "unknown_did"),
    (None, None, "PJSIP/office", "unknown_did"),
])
def test_attribute_static(did: str | None, channel: str | None, forward: str,
                          note: str | None) -> None:
    a = attribute_static(PLAN, call_id="1795332111.16", did=did, caller="89161234567",
                         caller_name="Иван", now=100.0)
    assert (a.channel, a.forward_to, a.note) == (channel, forward, note)
    assert a.caller == "+79161234567"
    assert a.ring_timeout == 25
    assert a.started_at == 100.0
    assert a.tracking == Tracking.STATIC
    assert a.recording_path == "/var/spool/asterisk/monitor/ctrackd-1795332111.16.wav"


def test_attribution_copies_the_channel_fields() -> None:
    a = attribute_static(PLAN, call_id="x", did="+74950000001", caller=None, caller_name=None,
                         now=1.0)
    assert (a.source, a.medium, a.campaign, a.label) == ("google", "cpc", "brand", "Google Ads")
    assert a.caller is None


@pytest.mark.parametrize("call_id, name", [
    ("1795332111.16", "ctrackd-1795332111.16.wav"),
    ("carrier-1795332111.3", "ctrackd-carrier-1795332111.3.wav"),
    ("a/../b;rm -rf $(x)", "ctrackd-a_.._b_rm_-rf___x_.wav"),   # never a path or a shell word
])
def test_recording_name_is_safe(call_id: str, name: str) -> None:
    assert recording_name(call_id) == name


@pytest.mark.parametrize("label, original, shown", [
    ("Google Ads", "Иван Петров", "[Google Ads] Иван Петров"),
    ("Google Ads", None, "[Google Ads]"),
    ("Google Ads", "<unknown>", "[Google Ads]"),
    (None, "Иван", "Иван"),
])
def test_operator_display_name(label: str | None, original: str | None, shown: str) -> None:
    assert operator_display_name(label, original) == shown


@pytest.mark.parametrize("channel, dial_string, endpoint", [
    ("IAX2/phones-14674", "phones/100", "IAX2/phones/100"),       # Dial
    ("IAX2/phones-2992", "IAX2/phones/101", "IAX2/phones/101"),   # Queue member
    ("PJSIP/101-0000000a", "101", "PJSIP/101"),
    ("PJSIP/101-0000000a", None, "PJSIP/101"),
    ("Local/102@internal-00000000;1", None, "Local/102@internal"),
])
def test_endpoint_of(channel: str, dial_string: str | None, endpoint: str) -> None:
    assert endpoint_of(channel, dial_string) == endpoint


# -- the state machine, driven by hand-built events ------------------------

CALL = "1000.1"
IN = Leg(uniqueid=CALL, linkedid=CALL, channel="PJSIP/trunk-00000001", call_id=CALL)


def phone(n: int, *, tagged: bool = True) -> Leg:
    return Leg(uniqueid=f"1000.{n}", linkedid=CALL, channel=f"PJSIP/10{n}-0000000{n}",
               call_id=CALL if tagged else None)


def run(events: list) -> tuple[CallTracker, list[CallProgress]]:
    tracker = CallTracker(region="RU")
    out: list[CallProgress] = []
    for event in events:
        # copies: the tracker keeps mutating its own record, as the consumer knows
        out.extend(dataclasses.replace(p) for p in tracker.apply(event))
    return tracker, out


def start(ts: float = 10.0) -> list:
    return [ChannelCreated(ts=ts, leg=Leg(CALL, CALL, IN.channel), exten="74950000001",
                           caller_num="+79161234567")]


def test_answered_call_record() -> None:
    tracker, out = run(start() + [
        DialBegan(ts=10.1, leg=IN, dest_uniqueid="1000.2", dest_channel=phone(2).channel,
                  dial_string="102"),
        DialEnded(ts=13.1, leg=IN, dest_uniqueid="1000.2", dest_channel=phone(2).channel,
                  dial_status="ANSWER"),
        BridgeEntered(ts=13.1, leg=phone(2), bridge_id="b"),
        ChannelHungUp(ts=20.0, leg=phone(2), cause=16, cause_txt="Normal Clearing"),
        ChannelHungUp(ts=20.1, leg=IN, cause=16, cause_txt="Normal Clearing"),
    ])
    assert [p.status for p in out] == ["ringing", "answered", "answered"]
    final = out[-1]
    assert (final.did, final.caller, final.answered_by) == (
        "+74950000001", "+79161234567", "PJSIP/102")
    assert (final.started_at, final.answered_at, final.ended_at) == (10.0, 13.1, 20.1)
    assert (final.ring_seconds, final.talk_seconds, final.duration_seconds) == (3.1, 7.0, 10.1)
    assert (final.hangup_cause, final.close_reason) == (16, "hangup")
    assert tracker.open_calls == 0


def test_ring_group_loser_cancel_is_not_a_failure() -> None:
    _, out = run(start() + [
        DialBegan(ts=10.1, leg=IN, dest_uniqueid="1000.2", dest_channel=phone(2).channel,
                  dial_string="102"),
        DialBegan(ts=10.1, leg=IN, dest_uniqueid="1000.3", dest_channel=phone(3).channel,
                  dial_string="103"),
        DialEnded(ts=12.0, leg=IN, dest_uniqueid="1000.2", dest_channel=phone(2).channel,
                  dial_status="CANCEL"),
        DialEnded(ts=12.0, leg=IN, dest_uniqueid="1000.3", dest_channel=phone(3).channel,
                  dial_status="ANSWER"),
        ChannelHungUp(ts=12.0, leg=phone(2), cause=26, cause_txt="Answered elsewhere"),
        ChannelHungUp(ts=15.0, leg=IN, cause=16, cause_txt=None),
    ])
    assert out[-1].status == CallStatus.ANSWERED
    assert out[-1].answered_by == "PJSIP/103"


@pytest.mark.parametrize("events, status", [
    # Dial outcomes
    ([DialEnded(11.0, IN, "1000.2", "PJSIP/102-1", "BUSY")], CallStatus.BUSY),
    ([DialEnded(11.0, IN, "1000.2", "PJSIP/102-1", "NOANSWER")], CallStatus.NO_ANSWER),
    ([DialEnded(11.0, IN, "1000.2", "PJSIP/102-1", "CONGESTION")], CallStatus.FAILED),
    # the caller hangs up while it rings: HangupRequest cause 16, then CANCEL
    ([HangupRequested(11.0, IN, 16), DialEnded(11.0, IN, "1000.2", "PJSIP/102-1", "CANCEL")],
     CallStatus.ABANDONED),
    # CHANUNAVAIL has no Dial events: the VarSet (dialplan class) or the cause tells
    ([DialStatusSet(10.5, IN, "CHANUNAVAIL"), HangupRequested(10.5, IN, 34)], CallStatus.FAILED),
    ([HangupRequested(10.5, IN, 34)], CallStatus.FAILED),
    # no Dial at all and a normal hang-up (the caller left during the AGI)
    ([HangupRequested(10.5, IN, 16)], CallStatus.ABANDONED),
    # the dialplan's Hangup() after NOANSWER must not turn it into "abandoned"
    ([DialEnded(11.0, IN, "1000.2", "PJSIP/102-1", "NOANSWER"), HangupRequested(11.1, IN, 16)],
     CallStatus.NO_ANSWER),
])
def test_missed_call_statuses(events: list, status: CallStatus) -> None:
    _, out = run(start() + events + [ChannelHungUp(ts=12.0, leg=IN, cause=None, cause_txt=None)])
    assert out[-1].status == status
    assert out[-1].talk_seconds == 0.0
    assert out[-1].ring_seconds == out[-1].duration_seconds == 2.0


def test_events_of_unrelated_channels_are_ignored() -> None:
    other = Leg(uniqueid="9.9", linkedid="9.9", channel="PJSIP/200-1")
    tracker, out = run([
        ChannelCreated(ts=1.0, leg=other, exten="200", caller_num="100"),
        DialBegan(ts=1.0, leg=other, dest_uniqueid="9.10", dest_channel="PJSIP/201-2",
                  dial_string="201"),
        ChannelHungUp(ts=2.0, leg=other, cause=16, cause_txt=None),
    ])
    assert out == [] and tracker.open_calls == 0


def test_stragglers_after_the_end_do_not_reopen_a_call() -> None:
    tracker, out = run(start() + [
        ChannelHungUp(ts=12.0, leg=IN, cause=16, cause_txt=None),
        HangupRequested(ts=12.1, leg=IN, cause=16),
        ChannelHungUp(ts=12.2, leg=IN, cause=16, cause_txt=None),
    ])
    assert len(out) == 1 and tracker.open_calls == 0


def test_restored_answered_call_finishes_with_its_talk_time() -> None:
    tracker = CallTracker()
    tracker.restore([CallProgress(call_id=CALL, started_at=100.0, status=CallStatus.ANSWERED,
                                  answered_at=105.0, answered_by="PJSIP/101")])
    (final,) = tracker.apply(ChannelHungUp(ts=130.0, leg=IN, cause=16, cause_txt=None))
    assert (final.status, final.talk_seconds, final.ring_seconds) == ("answered", 25.0, 5.0)
    assert final.answered_by == "PJSIP/101"


def test_snapshot_closes_only_calls_known_before_the_question() -> None:
    tracker = CallTracker()
    tracker.restore([
        CallProgress(call_id="gone", started_at=1.0, status=CallStatus.RINGING),
        CallProgress(call_id="live", started_at=1.0, status=CallStatus.ANSWERED, answered_at=2.0),
        CallProgress(call_id="gone-answered", started_at=1.0, status=CallStatus.ANSWERED,
                     answered_at=3.0),
    ])
    known = tracker.known_calls()
    tracker.apply(DialBegan(ts=4.0, leg=Leg("new", "new", "PJSIP/t-1", "new"),
                            dest_uniqueid="new.2", dest_channel="PJSIP/101-2", dial_string="101"))
    closed = tracker.apply(ChannelsListed(
        ts=9.0, channels=(ListedChannel(Leg("x.1", "live", "PJSIP/101-9")),), known_before=known))
    by_id = {p.call_id: p for p in closed}
    assert set(by_id) == {"gone", "gone-answered"}
    assert by_id["gone"].status == CallStatus.UNKNOWN
    assert by_id["gone-answered"].status == CallStatus.ANSWERED
    # the end was not seen: no made-up durations
    assert by_id["gone-answered"].talk_seconds is None
    assert by_id["gone-answered"].duration_seconds is None
    assert {p.close_reason for p in closed} == {"gone_after_reconnect"}
    assert tracker.known_calls() == {"live", "new"}


def test_shutdown_closes_everything_open() -> None:
    tracker, _ = run(start() + [DialBegan(10.1, IN, "1000.2", "PJSIP/102-1", "102")])
    closed = tracker.apply(AsteriskShutdown(ts=11.0))
    assert [(p.status, p.close_reason) for p in closed] == [("unknown", "asterisk_shutdown")]
    assert tracker.open_calls == 0


def test_untagged_destination_leg_is_linked_through_dial_begin() -> None:
    """A phone leg's events before its inherited variables arrive still belong to the call."""
    tracker, out = run(start() + [
        DialBegan(ts=10.1, leg=IN, dest_uniqueid="1000.2", dest_channel=phone(2).channel,
                  dial_string="102"),
        BridgeEntered(ts=11.0, leg=phone(2, tagged=False), bridge_id="b"),
    ])
    assert out[-1].status == CallStatus.ANSWERED and out[-1].answered_by == "PJSIP/102"


def test_attribution_first_then_newchannel_keeps_the_channels_start() -> None:
    """The AGI's CallAttributed can overtake the Newchannel in the queue."""
    tracker, out = run([
        CallAttributed(ts=10.4, call_id=CALL),
        *start(ts=10.0),
        DialEnded(11.0, IN, "1000.2", "PJSIP/102-1", "BUSY"),
        ChannelHungUp(ts=12.0, leg=IN, cause=17, cause_txt="User busy"),
    ])
    final = out[-1]
    assert (final.started_at, final.did, final.status) == (10.0, "+74950000001", "busy")
    assert final.duration_seconds == 2.0


def test_an_attributed_call_that_ami_never_shows_is_judged_by_a_resync() -> None:
    tracker = CallTracker()
    tracker.apply(CallAttributed(ts=5.0, call_id="never-seen"))
    closed = tracker.apply(ChannelsListed(ts=50.0, channels=(),
                                          known_before=tracker.known_calls()))
    assert [(p.call_id, p.status, p.close_reason, p.duration_seconds) for p in closed] == [
        ("never-seen", "unknown", "gone_after_reconnect", None)]


def test_ring_group_busy_member_then_caller_leaves_is_abandoned() -> None:
    """app_dial sends DialEnd BUSY for one member while another still rings."""
    _, out = run(start() + [
        DialBegan(10.1, IN, "1000.2", "PJSIP/102-1", "102"),
        DialBegan(10.1, IN, "1000.3", "PJSIP/103-1", "103"),
        DialEnded(10.5, IN, "1000.2", "PJSIP/102-1", "BUSY"),
        HangupRequested(12.0, IN, 16),
        DialEnded(12.0, IN, "1000.3", "PJSIP/103-1", "CANCEL"),
        ChannelHungUp(ts=12.0, leg=IN, cause=16, cause_txt=None),
    ])
    assert out[-1].status == CallStatus.ABANDONED


def test_a_call_joined_mid_way_with_no_outcome_is_unknown() -> None:
    """First seen after a restart, no record: its hang-up alone does not tell a missed call."""
    _, out = run([ChannelHungUp(ts=12.0, leg=IN, cause=16, cause_txt=None)])
    assert out[-1].status == CallStatus.UNKNOWN


def test_snapshot_takes_in_a_call_answered_while_we_were_away() -> None:
    tracker = CallTracker()
    changed = tracker.apply(ChannelsListed(ts=20.0, known_before=frozenset(), channels=(
        ListedChannel(Leg(CALL, CALL, "PJSIP/trunk-1", CALL), "Up", "bridge-1"),
        ListedChannel(Leg("1000.2", CALL, "PJSIP/101-00000002", CALL), "Up", "bridge-1"))))
    assert [(p.status, p.answered_by, p.answered_at) for p in changed] == [
        ("answered", "PJSIP/101", 20.0)]
    (final,) = tracker.apply(ChannelHungUp(ts=30.0, leg=IN, cause=16, cause_txt=None))
    assert (final.status, final.talk_seconds) == ("answered", 10.0)  # at least this long
