"""Answered outbound calls: an office phone calls a number (back), seen on AMI.

No capture has an outbound call, so the streams here are SYNTHETIC: built in
the shapes of the recorded ones (the same headers, in the same order: the
channel snapshot with both `ChanVariable` lines, then the event's own
headers) and of Asterisk's documented DialBegin/DialEnd (DialEnd carries no
DialString; the DialBegin does). What differs from an inbound call is what
matters: the dialling channel is an office phone whose CTRACK_CALL_ID is
empty (the tracking dialplan never ran on it), and its DialString names the
trunk and the number. The trunk channel's caller ID is preset to the
office's own number, as a PJSIP trunk with `callerid=` does: the number
must come from the DialString, not from DestCallerIDNum.
"""

from __future__ import annotations

import asyncio
import sqlite3

import pytest

from ctrackd.ami.consumer import AmiConsumer
from ctrackd.ami.translate import translate, wanted
from ctrackd.attribution.events import (
    CallAttributed,
    DialBegan,
    DialEnded,
    Leg,
    OutboundAnswered,
)
from ctrackd.attribution.outbound import dialled_number
from ctrackd.attribution.tracker import CallTracker
from ctrackd.daemon import Daemon
from tests.conftest import CAPTURES
from tests.simulator.ami_server import FakeAmi, encode_message
from tests.test_daemon import daemon, wait_for  # noqa: F401 - the daemon fixture
from tests.test_scenarios import replay


# -- which number a Dial called --------------------------------------------------

@pytest.mark.parametrize("dial_string, number", [
    ("trunk/89161234567", "+79161234567"),                       # IAX2/SIP peer/number
    ("89161234567@trunk", "+79161234567"),                       # PJSIP number@endpoint
    ("trunk/sip:+79161234567@sip.carrier.ru;transport=tcp", "+79161234567"),  # PJSIP URI
    ("g0/84951234567", "+74951234567"),                          # DAHDI group
    ("89161234567@outbound/n", "+79161234567"),                  # a Local channel, /n
    ("user:secret@10.0.0.1/74951234567", "+74951234567"),        # IAX2 with credentials
    ("101", None),                                               # an extension
    ("phones/200", None),                                        # captures: a phone
    ("IAX2/phones/100", None),                                   # a queue member
    ("user:secret@10.0.0.1/101", None),
    ("trunk", None),
    ("", None),
    (None, None),
])
def test_dialled_number(dial_string: str | None, number: str | None) -> None:
    assert dialled_number(dial_string, "RU") == number


# Where extensions of 3 or 4 digits are *possible* national numbers: only a valid
# number is an outside one (else `101` became +49101 and every internal call a callback).
@pytest.mark.parametrize("region, dial_string, number", [
    ("DE", "trunk/03012345678", "+493012345678"),
    ("AT", "015123456@trunk", "+4315123456"),
    ("GB", "trunk/sip:07911123456@carrier", "+447911123456"),
    *[(region, extension, None) for region in ("DE", "AT", "GB")
      for extension in ("101", "102", "phones/200", "IAX2/phones/100", "1000", "2001@pbx")],
])
def test_dialled_number_is_never_an_extension(region: str, dial_string: str,
                                              number: str | None) -> None:
    assert dialled_number(dial_string, region) == number


# -- the synthetic streams -----------------------------------------------------------

def snapshot(channel: str, uniqueid: str, linkedid: str, *, state: str, caller: str,
             exten: str, context: str, call_id: str = "", connected: str = "<unknown>",
             prefix: str = "") -> list[tuple[str, str]]:
    states = {"Down": "0", "Ring": "4", "Ringing": "5", "Up": "6"}
    return [(f"{prefix}Channel", channel), (f"{prefix}ChannelState", states[state]),
            (f"{prefix}ChannelStateDesc", state), (f"{prefix}CallerIDNum", caller),
            (f"{prefix}CallerIDName", "<unknown>"), (f"{prefix}ConnectedLineNum", connected),
            (f"{prefix}ConnectedLineName", "<unknown>"), (f"{prefix}Language", "en"),
            (f"{prefix}AccountCode", ""), (f"{prefix}Context", context),
            (f"{prefix}Exten", exten), (f"{prefix}Priority", "1"),
            (f"{prefix}Uniqueid", uniqueid), (f"{prefix}Linkedid", linkedid),
            (f"{prefix}ChanVariable", f"CTRACK_CALL_ID={call_id}"),
            (f"{prefix}ChanVariable", "CTRACK_CHANNEL=")]


def event(name: str, ts: float, headers: list[tuple[str, str]], *extra: tuple[str, str],
          privilege: str = "call,all") -> list[tuple[str, str]]:
    return [("Event", name), ("Privilege", privilege), ("Timestamp", f"{ts:.6f}"),
            *headers, *extra]


def phone_call(t0: float, n: int, *, dialled: str, dial_string: str, dest: str,
               status: str = "ANSWER") -> list[list[tuple[str, str]]]:
    """PJSIP/101 dials `dialled` from [from-internal]; `dest` rings and answers (or not)."""
    phone_id, dest_id = f"{t0:.0f}.{n}", f"{t0:.0f}.{n + 1}"
    phone = dict(channel=f"PJSIP/101-0000000{n}", uniqueid=phone_id, linkedid=phone_id,
                 caller="101", exten=dialled, context="from-internal")
    # the trunk presents the office's number (its `callerid=`), not the dialled one
    called = dict(channel=f"{dest}-0000000{n + 1}", uniqueid=dest_id, linkedid=phone_id,
                  caller="74951234567" if "trunk" in dest else dialled, exten="s",
                  context="from-internal", connected="101")
    messages = [
        event("Newchannel", t0, snapshot(**phone, state="Ring")),
        event("Newchannel", t0 + 0.01, snapshot(**{**called, "caller": "<unknown>"},
                                                state="Down")),
        event("DialBegin", t0 + 0.02, snapshot(**phone, state="Ring"),
              *snapshot(**called, state="Down", prefix="Dest"), ("DialString", dial_string)),
        event("DialState", t0 + 0.5, snapshot(**phone, state="Ring"),
              *snapshot(**called, state="Ringing", prefix="Dest"), ("DialStatus", "RINGING")),
    ]
    if status == "ANSWER":
        messages += [
            event("DialEnd", t0 + 3.0, snapshot(**phone, state="Ring"),
                  *snapshot(**called, state="Up", prefix="Dest"), ("DialStatus", "ANSWER")),
            event("BridgeEnter", t0 + 3.0, snapshot(**called, state="Up"),
                  ("BridgeUniqueid", f"bridge-{n}"), ("BridgeType", "basic")),
            event("DTMFBegin", t0 + 4.0, snapshot(**called, state="Up"), ("Digit", "5"),
                  ("Direction", "Received"), privilege="dtmf,all"),
            event("DTMFEnd", t0 + 4.1, snapshot(**called, state="Up"), ("Digit", "5"),
                  ("Direction", "Received"), ("DurationMs", "100"), privilege="dtmf,all"),
        ]
    else:
        messages.append(event("DialEnd", t0 + 3.0, snapshot(**phone, state="Ring"),
                              *snapshot(**called, state="Ringing", prefix="Dest"),
                              ("DialStatus", status)))
    messages += [
        event("Hangup", t0 + 9.0, snapshot(**called, state="Up"), ("Cause", "16"),
              ("Cause-txt", "Normal Clearing")),
        event("Hangup", t0 + 9.0, snapshot(**phone, state="Up"), ("Cause", "16"),
              ("Cause-txt", "Normal Clearing")),
    ]
    return messages


T0 = 1795340000.0
CALLBACK = phone_call(T0, 1, dialled="89161234567", dial_string="89161234567@trunk",
                      dest="PJSIP/trunk")
INTERNAL = phone_call(T0 + 20, 3, dialled="102", dial_string="102", dest="PJSIP/102")
UNANSWERED = phone_call(T0 + 40, 5, dialled="89161234567", dial_string="89161234567@trunk",
                        dest="PJSIP/trunk", status="NOANSWER")


def as_message(headers: list[tuple[str, str]]) -> dict[str, object]:
    """A message as panoramisk gives it: a repeated header becomes a list."""
    message: dict[str, object] = {}
    for key, value in headers:
        if key in message:
            previous = message[key]
            message[key] = [*previous, value] if isinstance(previous, list) else [previous, value]
        else:
            message[key] = value
    return message


def outbound(messages: list[list[tuple[str, str]]], *, filtered: bool = False,
             region: str = "RU") -> list[OutboundAnswered]:
    tracker = CallTracker(region=region)
    for headers in messages:
        raw = encode_message(headers).decode().rstrip("\r\n")
        if filtered and not wanted(raw):
            continue
        core_event = translate(as_message(headers), received_at=0.0)
        if core_event is not None:
            tracker.apply(core_event)
    assert tracker.open_calls == 0  # an office phone's own call is no tracked call
    return [n for n in tracker.take_notices() if isinstance(n, OutboundAnswered)]


@pytest.mark.parametrize("filtered", [False, True])
def test_an_answered_callback_is_one_outbound_call(filtered: bool) -> None:
    (call,) = outbound(CALLBACK + INTERNAL + UNANSWERED, filtered=filtered)
    assert call == OutboundAnswered(ts=T0 + 3.0, uniqueid=f"{T0:.0f}.1",
                                    number="+79161234567", endpoint="PJSIP/101")


@pytest.mark.parametrize("region", ["RU", "DE", "AT", "GB"])
def test_internal_and_unanswered_calls_are_none(region: str) -> None:
    assert outbound(INTERNAL, region=region) == []
    assert outbound(UNANSWERED, region=region) == []


@pytest.mark.parametrize("name", sorted(p.stem for p in (CAPTURES / "ami").glob("*.txt")))
def test_no_recorded_inbound_call_is_taken_for_an_outbound_one(name: str) -> None:
    notices: list = []
    replay(CAPTURES / "ami" / f"{name}.txt", notices=notices)
    assert [n for n in notices if isinstance(n, OutboundAnswered)] == []


def test_a_tracked_call_forwarded_to_a_mobile_is_not_outbound() -> None:
    inbound = Leg("c.1", "c.1", "PJSIP/trunk-0001", "c.1")
    no_var = Leg("c.1", "c.1", "PJSIP/trunk-0001", None)  # channelvars not configured
    for leg in (inbound, no_var):
        tracker = CallTracker()
        tracker.apply(CallAttributed(ts=1.0, call_id="c.1"))
        tracker.apply(DialBegan(2.0, leg, "c.2", "PJSIP/trunk-0002", "89161234567@trunk"))
        tracker.apply(DialEnded(5.0, leg, "c.2", "PJSIP/trunk-0002", "ANSWER"))
        assert tracker.take_notices() == []


# -- end to end: the daemon writes outbound_calls ---------------------------------------

def outbound_rows(daemon: Daemon) -> list[tuple]:
    conn = sqlite3.connect(daemon.config.store.path)
    try:
        return conn.execute("SELECT uniqueid, number, answered_at, endpoint FROM outbound_calls"
                            " ORDER BY answered_at").fetchall()
    finally:
        conn.close()


async def test_the_daemon_records_an_answered_callback(daemon: Daemon, ami: FakeAmi) -> None:
    # the internal call and the unanswered one first: once the callback's row
    # is there, everything before it in the stream was applied too
    for headers in INTERNAL + UNANSWERED + CALLBACK:
        await ami.emit(headers)
    await wait_for(lambda: outbound_rows(daemon) != [])
    assert outbound_rows(daemon) == [(f"{T0:.0f}.1", "+79161234567", T0 + 3.0, "PJSIP/101")]
    # the same call again (a replay after a reconnect): still one row, the
    # first answer; then another callback, to know the replay was applied
    later = phone_call(T0 + 60, 7, dialled="84957654321", dial_string="trunk/84957654321",
                       dest="IAX2/trunk")
    for headers in CALLBACK + later:
        await ami.emit(headers)
    await wait_for(lambda: len(outbound_rows(daemon)) == 2)
    assert outbound_rows(daemon) == [
        (f"{T0:.0f}.1", "+79161234567", T0 + 3.0, "PJSIP/101"),
        (f"{T0 + 60:.0f}.7", "+74957654321", T0 + 63.0, "PJSIP/101")]
    conn = sqlite3.connect(daemon.config.store.path)
    try:
        assert conn.execute("SELECT count(*) FROM calls").fetchone() == (0,)
    finally:
        conn.close()


# -- the consumer hands notices on: a store that fails keeps them -------------------

async def test_the_consumer_retries_outbound_calls_the_store_refused() -> None:
    saved: list[OutboundAnswered] = []
    failures = [RuntimeError("database is locked")]

    async def save_outbound(calls: list[OutboundAnswered]) -> None:
        if failures:
            raise failures.pop()
        saved.extend(calls)

    async def nothing(*_: object) -> list:
        return []

    queue: asyncio.Queue = asyncio.Queue()
    consumer = AmiConsumer(queue=queue, tracker=CallTracker(), save_progress=nothing,
                           request_snapshot=nothing, save_outbound=save_outbound)
    for headers in CALLBACK:
        queue.put_nowait(as_message(headers))
    await consumer.drain()
    assert saved == []           # refused: kept, not lost
    await consumer.drain()       # the next batch (here: an empty one) retries
    assert [c.number for c in saved] == ["+79161234567"]
    await consumer.drain()
    assert len(saved) == 1       # and only once
