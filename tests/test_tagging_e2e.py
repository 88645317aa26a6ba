"""Operator tagging end to end: the shipped dialplan, the real daemon, PJSIP phones.

Issue 4 item 5 ("Must show": with whisper and header enabled, every call
still connects or ends as it would without them, and the records stay
correct). The simulator runs [ctrackd-inbound] with the variables the daemon
really sends, executes the pre-dial handler [ctrackd-predial] and the whisper
[ctrackd-whisper] from the file's own text on the called channels, and
records what reached each operator's leg (SIP headers added, sounds heard).
Each record is compared with the simulator's CDR as in test_end_to_end.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.simulator.ami_server import FakeAmi
from tests.simulator.pbx import SimCall
from tests.simulator.phones import Caller, Phone
from tests.test_end_to_end import Setup, assert_matches_cdr

WHISPER = "custom/whisper-google"

CONFIG = """\
ami: {{host: 127.0.0.1, port: {ami_port}, username: ctrackd, secret: secret,
      ping_interval: 1, liveness_timeout: 5, reconnect_max: 0.5}}
agi: {{listen: "127.0.0.1:0"}}
store: {{path: calls.sqlite3}}
recordings: {{dir: /var/spool/asterisk/monitor}}
defaults: {{forward_to: PJSIP/100, ring_timeout: 1}}
log: {{level: warning, format: json}}
channels:
  google: {{label: Google Ads, source: google, medium: cpc, campaign: brand,
           whisper: custom/whisper-google, sip_headers: true}}
  plain: {{label: Plain, source: direct}}
  iax: {{label: Office IAX, campaign: spring, sip_headers: true, forward_to: IAX2/phones/100}}
numbers:
  "+74950000001": {{channel: google}}
  "+74950000002": {{channel: plain}}
  "+74950000003": {{channel: iax}}
"""

HEADERS = (("X-CTrack-Channel", "google"), ("X-CTrack-Campaign", "brand"))


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[Setup]:
    ami = FakeAmi(username="ctrackd", secret="secret")
    await ami.start()
    ready = Setup(tmp_path, ami, CONFIG)
    yield ready
    if ready.daemon is not None:
        await ready.stop_daemon()
    await ami.stop()


def index(call: SimCall, name: str, **headers: str) -> int:
    return next(i for i, e in enumerate(call.events)
                if dict(e)["Event"] == name and all(dict(e).get(k) == v for k, v in headers.items()))


def bridged_seconds(call: SimCall, operator: str) -> float:
    """From the operator's BridgeEnter to the first Hangup, by the events' Timestamps."""
    def at(i: int) -> float:
        return float(dict(call.events[i])["Timestamp"])
    hangup = min(at(i) for i, e in enumerate(call.events) if dict(e)["Event"] == "Hangup")
    return hangup - at(index(call, "BridgeEnter", Channel=operator))


@pytest.mark.parametrize("phone, status", [
    (Phone(answer_after=0.2, talk=0.6), "answered"),
    (Phone(busy=True), "busy"),
    (Phone(never_answers=True), "no_answer"),
])
async def test_whisper_and_headers_on_pjsip_phones_and_the_call_is_unchanged(
        setup: Setup, phone: Phone, status: str) -> None:
    daemon = await setup.start_daemon()
    sim = setup.simulator(daemon.agi_address[1], default_phone=phone, dialplan_events=True,
                          sounds={WHISPER: 0.3})
    call = await sim.call("74950000001", Caller("+79161234567", "Иван"))
    record = await setup.finished(call.call_id)

    assert call.agi_status == "SUCCESS" and call.fallback_status is None
    assert call.variables["CTRACK_WHISPER"] == WHISPER and call.variables["CTRACK_SIP_HEADERS"] == "1"
    [leg] = call.legs
    assert leg.channel.startswith("PJSIP/100-") and leg.sip_headers == HEADERS
    assert not leg.function_errors
    assert (record["status"], record["channel"], record["tracking"]) == (status, "google", "static")
    assert record["answered_by"] == call.answered_by == ("PJSIP/100" if status == "answered" else None)
    assert_matches_cdr(record, call)
    if status == "answered":
        # the operator heard the whisper before the caller was bridged to them
        assert leg.heard == (WHISPER,)
        whisper = index(call, "Newexten", Channel=leg.channel, Application="Playback")
        assert whisper < index(call, "DialEnd", DialStatus="ANSWER") < index(call, "BridgeEnter")
        # Talk time is the bridge's, as the simulator timed it: the whisper (0.3 s,
        # before the bridge) is not talk time. Counted, it would be 0.3 s off.
        assert abs(record["talk_seconds"] - bridged_seconds(call, leg.channel)) < 0.15
    else:
        assert leg.heard == ()                 # nobody answered: nothing played
        assert call.dial_status == {"busy": "BUSY", "no_answer": "NOANSWER"}[status]


async def test_no_tagging_configured_no_dial_option_at_all(setup: Setup) -> None:
    daemon = await setup.start_daemon()
    sim = setup.simulator(daemon.agi_address[1], dialplan_events=True,
                          default_phone=Phone(answer_after=0.1, talk=0.3))
    call = await sim.call("74950000002", Caller("+79161234567"))
    record = await setup.finished(call.call_id)
    assert call.cdr["LastData"] == "PJSIP/100,1,"            # Dial's options argument empty
    assert {k: call.variables.get(k, "") for k in ("CTRACK_WHISPER", "CTRACK_SIP_HEADERS")} == {
        "CTRACK_WHISPER": "", "CTRACK_SIP_HEADERS": ""}
    assert not [e for e in call.events if dict(e)["Event"] == "Newexten"]   # no Gosub ran
    assert (call.legs[0].sip_headers, call.legs[0].heard) == ((), ())
    assert (record["status"], record["channel"]) == ("answered", "plain")
    assert_matches_cdr(record, call)


async def test_headers_on_for_an_iax2_target_skip_pjsip_header_and_connect(setup: Setup) -> None:
    daemon = await setup.start_daemon()
    sim = setup.simulator(daemon.agi_address[1], dialplan_events=True,
                          default_phone=Phone(answer_after=0.1, talk=0.3))
    call = await sim.call("74950000003", Caller("+79161234567"))
    record = await setup.finished(call.call_id)
    [leg] = call.legs
    assert call.variables["CTRACK_SIP_HEADERS"] == "1" and "b(ctrackd-predial^s^1)" in call.cdr["LastData"]
    # the pre-dial handler ran (its first step) and jumped straight to Return
    predial = [dict(e)["Application"] for e in call.events
               if dict(e)["Event"] == "Newexten" and dict(e)["Context"] == "ctrackd-predial"]
    assert predial == ["GotoIf", "Return"]
    assert (leg.sip_headers, leg.function_errors) == ((), ())
    assert (record["status"], record["answered_by"]) == ("answered", "IAX2/phones/100")
    assert_matches_cdr(record, call)


async def test_a_missing_whisper_file_still_connects_the_call(setup: Setup) -> None:
    daemon = await setup.start_daemon()
    sim = setup.simulator(daemon.agi_address[1], sounds={},        # no sound file on disk
                          default_phone=Phone(answer_after=0.1, talk=0.3))
    call = await sim.call("74950000001", Caller("+79161234567"))
    record = await setup.finished(call.call_id)
    [leg] = call.legs
    assert leg.heard == () and leg.variables["PLAYBACKSTATUS"] == "FAILED"
    assert (record["status"], record["answered_by"]) == ("answered", "PJSIP/100")
    assert_matches_cdr(record, call)
