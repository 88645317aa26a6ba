"""The operator's `*` + promo code keyed on the phone during a call (issue 4).

Unit tables for the keypad and for the tracker's rule of what a key press
is; the recorded captures replayed through translate + tracker (13: the
operator keys `*1234#`; 12: an attended transfer's feature code, which is
not a key press; 18: the caller's digits at a promo prompt, not the
operator's); the resolver against a live plan; and the whole daemon: a web
session's code keyed in capture 13's call re-attributes the stored call.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest

from ctrackd.ami.consumer import AmiConsumer
from ctrackd.attribution.attribute import attribute_call
from ctrackd.attribution.dynamic import DynamicPlan
from ctrackd.attribution.events import (
    CallAttributed,
    DtmfBegan,
    DtmfEnded,
    Leg,
    OperatorCodeKeyed,
)
from ctrackd.attribution.keypad import CodeEntry, KeyedCode
from ctrackd.attribution.operator_codes import OperatorCodes
from ctrackd.attribution.plan import Channel, StaticPlan, TrackingNumber
from ctrackd.attribution.records import PromoEntry, PromoStatus, Tracking
from ctrackd.attribution.sessions import normalise_visit
from ctrackd.attribution.tracker import CallTracker
from ctrackd.config import load_config
from ctrackd.configcalls import PromoConfig
from ctrackd.daemon import Daemon
from tests.conftest import CAPTURES
from tests.simulator.ami_server import FakeAmi, read_capture
from tests.test_daemon import CONFIG, agi_track, environment, rows, wait_for
from tests.test_outbound import as_message
from tests.test_scenarios import replay

CAPTURE_13 = "13-operator-dtmf-star1234hash"
CALL_13 = "1795332214.68"


# -- the keypad ----------------------------------------------------------------

@pytest.mark.parametrize("keys, prefix, expected", [
    ("*1234#", "*", [KeyedCode("1234", True)]),          # the `#` after a whole code: nothing more
    ("*1234", "*", [KeyedCode("1234", True)]),           # no `#` needed
    ("1234", "*", []),                                   # no prefix: the operator's IVR digits
    ("*12#", "*", [KeyedCode("12", False)]),             # ended early: reported, incomplete
    ("*#", "*", []),                                     # nothing keyed
    ("*12*5678", "*", [KeyedCode("5678", True)]),        # the prefix again starts over
    ("*12A3456", "*", []),                               # another key abandons the entry
    ("*1234*8765", "*", [KeyedCode("1234", True), KeyedCode("8765", True)]),
    ("*123456", "*", [KeyedCode("1234", True)]),         # digits after a whole code: ignored
    ("#1234", "#", [KeyedCode("1234", True)]),           # the other prefix the config allows
    ("##1234", "#", [KeyedCode("1234", True)]),
    ("#12#", "#", [KeyedCode("12", False)]),
])
def test_keypad(keys: str, prefix: str, expected: list[KeyedCode]) -> None:
    entry = CodeEntry(prefix, 4)
    assert [k for key in keys if (k := entry.press(key)) is not None] == expected


# -- the tracker: which presses count -------------------------------------------

INBOUND = Leg("c.1", "c.1", "PJSIP/trunk-0001", "c.1")
PHONE = Leg("c.2", "c.1", "PJSIP/101-0002", "c.1")


def press(leg: Leg, digit: str, *, direction: str = "Received", begin: bool = True,
          ts: float = 10.0) -> list:
    events = [DtmfBegan(ts, leg, digit, direction)] if begin else []
    return events + [DtmfEnded(ts + 0.1, leg, digit, direction)]


def keyed(events: list, *, length: int = 4) -> list[OperatorCodeKeyed]:
    tracker = CallTracker(operator_prefix="*", code_length=length)
    tracker.apply(CallAttributed(ts=1.0, call_id="c.1"))
    for event in events:
        tracker.apply(event)
    return tracker.take_notices()


def on(leg: Leg, keys: str, **kw: object) -> list:
    return [e for key in keys for e in press(leg, key, **kw)]  # type: ignore[arg-type]


def test_the_operator_legs_presses_make_a_code() -> None:
    (code,) = keyed(on(PHONE, "*1234#"))
    assert (code.call_id, code.code, code.complete, code.endpoint) == (
        "c.1", "1234", True, "PJSIP/101")


@pytest.mark.parametrize("events, why", [
    (on(PHONE, "*1234#", begin=False), "DTMFEnd alone: a digit Asterisk queued (Atxfer)"),
    (on(PHONE, "*1234#", direction="Sent"), "Sent: the copy towards the phone"),
    (on(INBOUND, "*1234#"), "the caller's own digits"),
    (on(Leg("x.2", "x.1", "PJSIP/102-0003", None), "*1234#"), "a leg of no tracked call"),
    ([DtmfBegan(10.0, PHONE, "*", "Received"), DtmfEnded(10.1, PHONE, "1", "Received")]
     + on(PHONE, "1234"), "an end that is not its begin's digit"),
])
def test_what_is_not_a_key_press(events: list, why: str) -> None:
    assert keyed(events) == [], why


def test_a_code_keyed_twice_gives_both_and_a_short_one_after_a_complete_one_none() -> None:
    codes = keyed(on(PHONE, "*1234#") + on(PHONE, "*99#") + on(PHONE, "*5678#"))
    assert [(c.code, c.complete) for c in codes] == [("1234", True), ("5678", True)]
    short_first = keyed(on(PHONE, "*99#") + on(PHONE, "*5678#"))
    assert [(c.code, c.complete) for c in short_first] == [("99", False), ("5678", True)]


def test_the_configured_length_decides() -> None:
    (code,) = keyed(on(PHONE, "*123456"), length=6)
    assert (code.code, code.complete) == ("123456", True)


# -- the captures -----------------------------------------------------------------

def replay_codes(name: str, *, filtered: bool = False) -> list[OperatorCodeKeyed]:
    tracker = CallTracker(region="RU")
    notices: list = []
    replay(CAPTURES / "ami" / f"{name}.txt", tracker, filtered=filtered, notices=notices)
    return [n for n in notices if isinstance(n, OperatorCodeKeyed)]


@pytest.mark.parametrize("filtered", [False, True])
def test_capture_13_gives_the_code_once_with_its_call(filtered: bool) -> None:
    (code,) = replay_codes(CAPTURE_13, filtered=filtered)
    assert (code.call_id, code.code, code.complete) == (CALL_13, "1234", True)
    assert code.endpoint == "IAX2/phones/200"  # the phone leg, not the trunk's Sent copy


@pytest.mark.parametrize("name", sorted(p.stem for p in (CAPTURES / "ami").glob("*.txt")
                                        if not p.stem.startswith("13-")))
def test_no_other_capture_gives_a_code(name: str) -> None:
    # 12: the attended transfer's *2 + 102 (DTMFEnd alone, on 100's leg);
    # 18: the caller keys 4821# at the promo prompt (the inbound leg)
    assert replay_codes(name) == []


# -- the consumer: a code the store refuses waits for the next batch ------------------

async def test_a_code_the_store_refuses_is_kept_for_the_next_batch(tmp_path: Path) -> None:
    """A real SQLite file whose write lock another process holds (ctrackd-agi writing a
    call): the operator's code of capture 13 cannot be written yet. It must be written
    with a later batch, not dropped."""
    path = tmp_path / "codes.sqlite3"
    setup = sqlite3.connect(path)
    setup.execute("CREATE TABLE codes (call_id TEXT, code TEXT, PRIMARY KEY (call_id, code))")
    setup.close()

    async def write_code(keyed: OperatorCodeKeyed) -> None:
        conn = sqlite3.connect(path, timeout=0)   # no waiting: the lock answers at once
        try:
            with conn:  # resolving a code twice gives the same row
                conn.execute("INSERT OR REPLACE INTO codes VALUES (?, ?)",
                             (keyed.call_id, keyed.code))
        finally:
            conn.close()

    async def nothing(*_: object) -> list:
        return []

    queue: asyncio.Queue = asyncio.Queue()
    consumer = AmiConsumer(queue=queue, tracker=CallTracker(region="RU"),
                           save_progress=nothing, request_snapshot=nothing,
                           on_operator_code=write_code)
    for headers in read_capture(CAPTURES / "ami" / f"{CAPTURE_13}.txt"):
        queue.put_nowait(as_message(headers))
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")               # the other writer holds the lock
    await consumer.drain()
    blocker.execute("ROLLBACK")
    blocker.close()
    await consumer.drain()                            # the next batch (here: empty) retries
    await consumer.drain()
    check = sqlite3.connect(path)
    try:
        assert check.execute("SELECT call_id, code FROM codes").fetchall() == [
            (CALL_13, "1234")]
    finally:
        check.close()


# -- the resolver -------------------------------------------------------------------

STATIC = StaticPlan(
    channels={"site": Channel(key="site", label="Website", source="site", medium="organic"),
              "yandex": Channel(key="yandex", label="Яндекс.Директ", source="yandex",
                                medium="cpc")},
    numbers={"+74950000013": TrackingNumber(did="+74950000013", channel="site")},
    default_forward="PJSIP/office", default_ring_timeout=20, region="RU", recordings_dir=None)


def promo_plan() -> DynamicPlan:
    counter, draws = itertools.count(1), itertools.count(4821)
    return DynamicPlan([], [], new_session_id=lambda: f"s{next(counter)}",
                       promo=PromoConfig(length=4), choose_code=lambda n: next(draws) % n)


def base_call() -> object:
    return attribute_call(STATIC, None, call_id=CALL_13, did="74950000013",
                          caller="+79161234567", caller_name=None, now=100.0)


def code(digits: str, *, complete: bool = True) -> OperatorCodeKeyed:
    return OperatorCodeKeyed(ts=100.0, call_id=CALL_13, code=digits, complete=complete,
                             endpoint="PJSIP/101")


def test_a_live_code_attributes_the_call_to_its_session() -> None:
    dynamic = promo_plan()
    session, _ = dynamic.start_session(normalise_visit({
        "visitor_id": "v-1", "page": "https://shop.ru/?utm_source=yandex&utm_campaign=w"}), 5.0)
    stored = base_call()
    a = OperatorCodes().resolve(STATIC, dynamic, stored, code(session.promo_code), 110.0)
    assert (a.tracking, a.promo_code, a.promo_entry, a.promo_status) == (
        Tracking.PROMO, session.promo_code, PromoEntry.OPERATOR, PromoStatus.MATCHED)
    assert (a.session_id, a.source, a.campaign) == (session.session_id, "yandex", "w")
    assert (a.did, a.forward_to, a.started_at) == (stored.did, stored.forward_to, 100.0)


@pytest.mark.parametrize("keyed, dynamic", [
    (code("0000"), promo_plan()),                      # no session shows it
    (code("48", complete=False), promo_plan()),        # `#` before the code was whole
    (code("4821"), None),                              # no web side at all
])
def test_anything_else_is_unknown_and_changes_nothing_else(keyed: OperatorCodeKeyed,
                                                           dynamic: DynamicPlan | None) -> None:
    if dynamic is not None:
        dynamic.start_session(normalise_visit({"visitor_id": "v-1"}), 5.0)  # shows 4821
    stored = base_call()
    a = OperatorCodes().resolve(STATIC, dynamic, stored, keyed, 110.0)
    assert a == type(stored)(**{**{f: getattr(stored, f) for f in stored.__slots__},
                                "promo_code": keyed.code, "promo_entry": PromoEntry.OPERATOR,
                                "promo_status": PromoStatus.UNKNOWN})


def test_an_operators_slip_names_nobody_else() -> None:
    """Two live sessions with neighbouring codes (draws 4821, 4822, then the check
    digit). Every one-digit slip and neighbour swap of the first code is `unknown`:
    none reaches the second visitor (without the check digit, 4821 <-> 4822 would)."""
    counter, draws = itertools.count(1), itertools.count(4821)
    dynamic = DynamicPlan([], [], new_session_id=lambda: f"s{next(counter)}",
                          promo=PromoConfig(length=5), choose_code=lambda n: next(draws) % n)
    first, _ = dynamic.start_session(normalise_visit({"visitor_id": "v-1"}), 5.0)
    second, _ = dynamic.start_session(normalise_visit({"visitor_id": "v-2"}), 5.0)
    assert (first.promo_code, second.promo_code) == ("48217", "48225")
    mine = first.promo_code
    slips = {mine[:i] + d + mine[i + 1:] for i in range(5) for d in "0123456789"}
    slips |= {mine[:i] + mine[i + 1] + mine[i] + mine[i + 2:] for i in range(4)}
    slips.discard(mine)
    for slip in sorted(slips):
        a = OperatorCodes().resolve(STATIC, dynamic, base_call(), code(slip), 110.0)
        assert (a.promo_status, a.session_id) == (PromoStatus.UNKNOWN, None), slip


def test_the_last_complete_code_wins_against_the_attribution_before_any() -> None:
    dynamic = promo_plan()
    session, _ = dynamic.start_session(normalise_visit({"visitor_id": "v-1"}), 5.0)
    codes, stored = OperatorCodes(), base_call()
    first = codes.resolve(STATIC, dynamic, stored, code(session.promo_code), 110.0)
    assert first.tracking == Tracking.PROMO
    # the store now has the first result; a wrong code after it is judged
    # against the call as its number attributed it, not the first session
    second = codes.resolve(STATIC, dynamic, first, code("0000"), 120.0)
    assert (second.tracking, second.session_id, second.channel) == (
        stored.tracking, None, stored.channel)
    assert (second.promo_code, second.promo_status) == ("0000", PromoStatus.UNKNOWN)


def test_an_unknown_operator_code_leaves_a_callers_matched_code() -> None:
    stored = replace(base_call(), tracking=Tracking.PROMO, promo_code="4821",
                     promo_entry=PromoEntry.CALLER, promo_status=PromoStatus.MATCHED)
    assert OperatorCodes().resolve(STATIC, promo_plan(), stored, code("0000"), 110.0) is None


# -- end to end: the daemon ---------------------------------------------------------

WEB = """\
web:
  listen: "127.0.0.1:0"
  origins: ["https://shop.example.com"]
  replace: ["+74951234567"]
utm_rules:
  - {source: yandex, channel: avito}
promo: {length: 4}   # capture 13 keys four digits: three and the check digit
"""


def with_digits(messages: list, code: str) -> list:
    """Capture 13 as if the operator had keyed `*<code>#` (its digits are 1, 2, 3, 4)."""
    out = []
    for headers in messages:
        if ("Event", "DTMFBegin") in headers or ("Event", "DTMFEnd") in headers:
            headers = [(k, code[int(v) - 1] if k == "Digit" and v.isdigit() else v)
                       for k, v in headers]
        out.append(headers)
    return out


async def run_capture_13(tmp_path: Path, keyed: str | None) -> tuple[dict, str | None]:
    """The daemon with a web side; a visitor's session; capture 13's call, keying `keyed`
    (None: the visitor's own code; "another": any other). Returns the stored call and
    the visitor's code."""
    ami = FakeAmi(username="ctrackd", secret="secret", port=0)
    await ami.start()
    path = tmp_path / "ctrackd.yaml"
    path.write_text(CONFIG.format(ami_port=ami.port) + WEB, encoding="utf-8")
    daemon = Daemon(load_config(path), stop_grace=1.0)
    await daemon.start()
    try:
        await ami.wait_for_clients(1)
        session, _ = daemon.dynamic.start_session(normalise_visit({
            "visitor_id": "v-op", "page": "https://shop.example.com/boots?utm_source=yandex"
            "&utm_medium=cpc&utm_campaign=winter&yclid=y-7"}), daemon.clock())
        assert session.promo_code is not None and len(session.promo_code) == 4
        await agi_track(daemon.agi_address[1], environment(CALL_13, "74950000013"))
        messages = read_capture(CAPTURES / "ami" / f"{CAPTURE_13}.txt", skip_login=True)
        if keyed == "another":  # any code but the visitor's
            keyed = "0000" if session.promo_code != "0000" else "1111"
        for headers in with_digits(messages, keyed or session.promo_code):
            await ami.emit(headers)
        await wait_for(lambda: rows(daemon)[CALL_13]["promo_status"] is not None
                       and rows(daemon)[CALL_13]["ended_at"] is not None)
    finally:
        await daemon.stop()
        await ami.stop()
    return rows(daemon)[CALL_13], session.promo_code


async def test_the_operators_code_attributes_the_recorded_call(tmp_path: Path) -> None:
    record, visitor_code = await run_capture_13(tmp_path, None)
    assert (record["tracking"], record["promo_code"], record["promo_entry"],
            record["promo_status"]) == ("promo", visitor_code, "operator", "matched")
    assert (record["channel"], record["source"], record["medium"], record["campaign"]) == (
        "avito", "yandex", "cpc", "winter")   # the session's tags, by the UTM rule
    session = json.loads(record["session_json"])
    assert (session["visitor_id"], session["yclid"]) == ("v-op", "y-7")
    assert record["session_id"] == session["session_id"] and record["confidence"] == "exact"
    # what the AGI and AMI sides wrote is still there
    assert (record["did"], record["caller"], record["forward_to"]) == (
        "+74950000013", "+79161234567", "IAX2/phones/100")
    assert (record["status"], record["answered_by"], record["close_reason"]) == (
        "answered", "IAX2/phones/200", "hangup")
    assert record["note"] == "unknown_did" and abs(record["talk_seconds"] - 7) <= 1


async def test_an_unknown_operators_code_is_recorded_as_such(tmp_path: Path) -> None:
    record, visitor_code = await run_capture_13(tmp_path, "another")
    assert record["promo_code"] != visitor_code and len(record["promo_code"]) == 4
    assert (record["tracking"], record["promo_entry"], record["promo_status"]) == (
        "static", "operator", "unknown")
    assert (record["channel"], record["session_id"], record["session_json"]) == (
        None, None, None)
    assert (record["status"], record["answered_by"]) == ("answered", "IAX2/phones/200")
