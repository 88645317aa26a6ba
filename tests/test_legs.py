"""Every dialled leg of a tracked call: the recorded streams replayed, the store, the daemon.

The captures are real Asterisk runs (../shared/asterisk-captures); the legs
the tracker gives for each must be what happened there: who rang, who
answered, who was cancelled, once each, whatever Asterisk repeats.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from ctrackd.attribution.events import ChannelHungUp, DialBegan, DialEnded, Leg
from ctrackd.attribution.legs import LegBook, LegRecord
from ctrackd.attribution.records import CallProgress, CallStatus
from ctrackd.attribution.tracker import CallTracker
from ctrackd.config import load_config
from ctrackd.ami.translate import translate
from ctrackd.daemon import Daemon
from ctrackd.store import queries
from ctrackd.store.legs import UPSERT_LEGS, fallback_leg, leg_rows, load_open_legs
from ctrackd.store.schema import migrate
from tests.simulator.ami_server import FakeAmi, read_capture
from tests.test_daemon import CONFIG, agi_track, daemon, environment, wait_for  # noqa: F401
from tests.test_fallback_agi import UNIQUEID, config_path, store_path  # noqa: F401
from tests.test_fallback_agi import hangup as fallback_hangup, track as fallback_track
from tests.test_scenarios import read_messages


def replay_legs(path: Path, tracker: CallTracker | None = None
                ) -> tuple[dict[str, CallProgress], list[LegRecord], list[list[LegRecord]]]:
    """Feed a capture event by event, taking the legs after each one as the consumer does.

    Returns the calls, the last record of each leg (in first-seen order) and
    every non-empty take (to see what a repeated event changed).
    """
    tracker = tracker or CallTracker(region="RU")
    calls: dict[str, CallProgress] = {}
    legs: dict[tuple[str, str], LegRecord] = {}
    takes: list[list[LegRecord]] = []
    for message in read_messages(path):
        event = translate(message, received_at=0.0)
        if event is None:
            continue
        for progress in tracker.apply(event):
            calls[progress.call_id] = progress
        taken = tracker.take_legs()
        if taken:
            takes.append(taken)
        for record in taken:
            legs[(record.call_id, record.leg)] = record
    assert len(tracker.legs) == 0  # nothing is kept once the calls ended
    return calls, list(legs.values()), takes


def summary(legs: list[LegRecord]) -> list[tuple[str, str | None]]:
    return [(leg.endpoint, leg.outcome) for leg in legs]


# capture -> the legs (endpoint, outcome), in dial order, and the call's status
LEGS = {
    "01-answered-office-hangs-up": ([("IAX2/phones/100", "answer")], "answered"),
    "03-busy": ([("IAX2/phones/486", "busy")], "busy"),
    "04-no-answer-ring-timeout-10s": ([("IAX2/phones/480", "noanswer")], "no_answer"),
    "05-caller-abandons-while-ringing": ([("IAX2/phones/480", "cancel")], "abandoned"),
    "06-congestion": ([("IAX2/phones/503", "congestion")], "failed"),
    "07-chanunavail-peer-unreachable": ([], "failed"),
    "09-ring-group-second-phone-answers": (
        [("IAX2/phones/100", "cancel"), ("IAX2/phones/101", "answer")], "answered"),
    "10-queue-sales-member-answers": (
        [("IAX2/phones/101", "cancel"), ("IAX2/phones/100", "answer")], "answered"),
    "11-blind-transfer-100-to-102": (
        [("IAX2/phones/100", "answer"), ("IAX2/phones/102", "answer")], "answered"),
    "12-attended-transfer-100-to-102": (
        [("IAX2/phones/100", "answer"), ("IAX2/phones/102", "answer")], "answered"),
    "19-agi-caller-hangs-up-during-agi": ([], "abandoned"),
}


@pytest.mark.parametrize("name", sorted(LEGS))
def test_legs_of_each_recorded_call(captures: Path, name: str) -> None:
    expected, status = LEGS[name]
    calls, legs, _ = replay_legs(captures / "ami" / f"{name}.txt")
    (call,) = calls.values()
    assert call.status == CallStatus(status)
    assert summary(legs) == expected
    for leg in legs:
        assert leg.call_id == call.call_id
        assert leg.ended_at is not None and call.started_at <= leg.rang_at <= leg.ended_at
        assert leg.ended_at <= call.ended_at
        if leg.outcome == "answer":
            assert leg.rang_at < leg.answered_at <= leg.ended_at
        else:
            assert leg.answered_at is None
    assert len({leg.leg for leg in legs}) == len(legs)  # one record per dialled channel


def test_ring_group_loser_is_cancelled_when_the_colleague_answers(captures: Path) -> None:
    """09: 100 and 101 ring together; 101 answers after 2 s, 100 is cancelled at once."""
    _, (loser, winner), _ = replay_legs(captures / "ami" / "09-ring-group-second-phone-answers.txt")
    assert loser.leg == "1795332167.43" and winner.leg == "1795332167.44"
    assert loser.rang_at == pytest.approx(winner.rang_at, abs=0.01)
    assert winner.answered_at - winner.rang_at == pytest.approx(2.0, abs=0.01)
    assert loser.ended_at == pytest.approx(winner.answered_at, abs=0.01)
    assert winner.ended_at - winner.answered_at == pytest.approx(4.0, abs=0.05)  # its talk


def test_queue_loser_once_despite_the_duplicate_dial_end(captures: Path) -> None:
    """10: the loser's DialEnd CANCEL comes twice; the second changes nothing."""
    path = captures / "ami" / "10-queue-sales-member-answers.txt"
    cancels = [m for m in read_messages(path)
               if m.get("Event") == "DialEnd" and m.get("DialStatus") == "CANCEL"]
    assert len(cancels) == 2  # the capture really repeats it
    _, legs, takes = replay_legs(path)
    loser = [leg for leg in legs if leg.endpoint == "IAX2/phones/101"]
    assert [leg.outcome for leg in loser] == ["cancel"]
    changes = [r for take in takes for r in take if r.leg == loser[0].leg]
    # rang, cancelled, hung up: three changes, none from the repeated DialEnd
    assert [(r.outcome, r.ended_at is not None) for r in changes] == [
        (None, False), ("cancel", False), ("cancel", True)]


def test_transfers_offer_the_call_to_the_target(captures: Path) -> None:
    """11: 100 answers, transfers blind to 102, which answers: each leg has its own talk."""
    calls, (first, second), _ = replay_legs(captures / "ami" / "11-blind-transfer-100-to-102.txt")
    (call,) = calls.values()
    assert call.answered_by == "IAX2/phones/100"  # the call's answer stays the first
    assert first.ended_at <= second.rang_at
    talk = (first.ended_at - first.answered_at) + (second.ended_at - second.answered_at)
    assert talk == pytest.approx(call.talk_seconds, abs=1.5)  # the legs' talk adds up


def test_attended_transfer_records_no_local_channel(captures: Path) -> None:
    _, legs, _ = replay_legs(captures / "ami" / "12-attended-transfer-100-to-102.txt")
    assert all(not leg.endpoint.startswith("Local/") for leg in legs)
    assert legs[1].leg == "1795332202.61"  # the phone the Local channel dialled


def test_caller_abandoning_cancels_the_ringing_leg(captures: Path) -> None:
    calls, (leg,), _ = replay_legs(captures / "ami" / "05-caller-abandons-while-ringing.txt")
    assert leg.outcome == "cancel"
    assert leg.ended_at - leg.rang_at == pytest.approx(3.0, abs=0.1)
    assert next(iter(calls.values())).status == CallStatus.ABANDONED


# -- the book on its own ----------------------------------------------------------

def _leg(uniqueid: str, call_id: str = "c1", channel: str = "PJSIP/101-0001") -> Leg:
    return Leg(uniqueid=uniqueid, linkedid=call_id, channel=channel, call_id=call_id)


def test_a_leg_whose_hangup_never_came_ends_with_its_call() -> None:
    tracker = CallTracker()
    inbound = _leg("c1", channel="PJSIP/trunk-0001")
    tracker.apply(DialBegan(ts=10.0, leg=inbound, dest_uniqueid="l1",
                            dest_channel="PJSIP/101-0001", dial_string="101"))
    tracker.apply(DialEnded(ts=12.0, leg=inbound, dest_uniqueid="l1",
                            dest_channel="PJSIP/101-0001", dial_status="ANSWER"))
    tracker.apply(ChannelHungUp(ts=20.0, leg=inbound, cause=16, cause_txt=None))
    (record,) = tracker.take_legs()
    assert (record.endpoint, record.outcome, record.answered_at, record.ended_at) == (
        "PJSIP/101", "answer", 12.0, 20.0)
    assert len(tracker.legs) == 0
    # its own hang-up arriving later changes nothing
    tracker.apply(ChannelHungUp(ts=21.0, leg=_leg("l1"), cause=16, cause_txt=None))
    assert tracker.take_legs() == []


def test_local_channels_are_hops_not_phones() -> None:
    book = LegBook()
    book.began("c1", "l1", "Local/101@from-queue", "Local/101@from-queue-00000001;1", 1.0)
    book.began("c1", "l2", "PJSIP/101", "PJSIP/101-0002", 1.1)
    assert [r.endpoint for r in book.take()] == ["PJSIP/101"]


def test_untracked_dials_have_no_legs() -> None:
    tracker = CallTracker()
    office = Leg(uniqueid="o1", linkedid="o1", channel="PJSIP/101-0001")
    tracker.apply(DialBegan(ts=1.0, leg=office, dest_uniqueid="o2",
                            dest_channel="PJSIP/trunk-0002", dial_string="trunk/89161234567"))
    assert tracker.take_legs() == []


def test_a_restarted_tracker_finishes_the_legs_it_restored() -> None:
    """The daemon restarted while 101 rang: its DialEnd and hang-up still land on the leg."""
    call = CallProgress(call_id="c1", started_at=100.0, status=CallStatus.RINGING)
    ringing = LegRecord(call_id="c1", leg="l1", endpoint="PJSIP/101", rang_at=101.0)
    ended = LegRecord(call_id="c1", leg="l0", endpoint="PJSIP/102", rang_at=101.0,
                      ended_at=103.0, outcome="busy")
    stray = LegRecord(call_id="gone", leg="x", endpoint="PJSIP/103", rang_at=1.0)
    tracker = CallTracker()
    tracker.restore([call], [ringing, ended, stray])
    assert len(tracker.legs) == 1
    inbound = _leg("c1", channel="PJSIP/trunk-0001")
    tracker.apply(DialEnded(ts=105.0, leg=inbound, dest_uniqueid="l1",
                            dest_channel="PJSIP/101-0001", dial_status="ANSWER"))
    (progress,) = tracker.apply(ChannelHungUp(ts=110.0, leg=inbound, cause=16, cause_txt=None))
    assert progress.answered_by == "PJSIP/101"  # the restored leg's endpoint, not the channel's
    (record,) = tracker.take_legs()
    assert (record.rang_at, record.answered_at, record.ended_at, record.outcome) == (
        101.0, 105.0, 110.0, "answer")


# -- the store ------------------------------------------------------------------

@pytest.fixture
def conn(tmp_path: Path) -> sqlite3.Connection:
    connection = queries.connect(tmp_path / "calls.sqlite3", readonly=False)
    migrate(connection)
    yield connection
    connection.close()


def _upsert(conn: sqlite3.Connection, records: list[LegRecord]) -> None:
    sql, params = queries.multi_row(UPSERT_LEGS, leg_rows(records))
    conn.execute(sql, params)


def test_the_upsert_keeps_what_a_leg_had(conn: sqlite3.Connection) -> None:
    rang = LegRecord("c1", "l1", "PJSIP/101", 10.0)
    answered = LegRecord("c1", "l1", "PJSIP/101", 10.0, answered_at=12.0, outcome="answer")
    ended = LegRecord("c1", "l1", "PJSIP/101", 10.0, answered_at=12.0, ended_at=30.0,
                      outcome="answer")
    _upsert(conn, [rang, answered])
    _upsert(conn, [ended, rang])  # a stale record after the last one takes nothing back
    assert conn.execute("SELECT * FROM call_legs").fetchall() == [
        ("c1", "l1", "PJSIP/101", 10.0, 12.0, 30.0, "answer")]


def test_open_legs_of_open_calls_are_loaded_back(conn: sqlite3.Connection,
                                                 tmp_path: Path) -> None:
    open_call = CallProgress(call_id="c1", started_at=1.0, status=CallStatus.RINGING)
    closed = CallProgress(call_id="c2", started_at=1.0)
    closed.finish(CallStatus.ABANDONED, 5.0, "hangup")
    queries.save_progress(conn, [open_call, closed])
    _upsert(conn, [LegRecord("c1", "l1", "PJSIP/101", 2.0),
                   LegRecord("c1", "l0", "PJSIP/102", 2.0, ended_at=3.0, outcome="busy"),
                   LegRecord("c2", "l2", "PJSIP/101", 2.0)])
    assert load_open_legs(tmp_path / "calls.sqlite3") == [
        LegRecord("c1", "l1", "PJSIP/101", 2.0)]


def test_the_fallback_leg_only_for_a_call_without_legs(conn: sqlite3.Connection) -> None:
    assert fallback_leg(conn, call_id="c1", leg="IAX2/phones-1", endpoint="IAX2/phones/100",
                        rang_at=1.0, answered_at=3.0, ended_at=9.0)
    assert not fallback_leg(conn, call_id="c1", leg="IAX2/phones-2", endpoint="IAX2/phones/100",
                            rang_at=1.0, answered_at=3.0, ended_at=9.0)
    _upsert(conn, [LegRecord("c2", "l1", "PJSIP/101", 2.0)])
    assert not fallback_leg(conn, call_id="c2", leg="IAX2/phones-3", endpoint="PJSIP/101",
                            rang_at=1.0, answered_at=3.0, ended_at=9.0)
    assert conn.execute("SELECT call_id, leg, outcome FROM call_legs ORDER BY call_id").fetchall(
    ) == [("c1", "IAX2/phones-1", "answer"), ("c2", "l1", None)]


# -- through the daemon -------------------------------------------------------------

def stored_legs(path: Path) -> list[tuple]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT call_id, leg, endpoint, outcome, answered_at IS NOT NULL,"
                            " ended_at IS NOT NULL FROM call_legs ORDER BY rang_at, leg").fetchall()
    finally:
        conn.close()


async def test_the_daemon_stores_the_legs(daemon: Daemon, ami: FakeAmi,  # noqa: F811
                                          captures: Path) -> None:
    """Capture 09 through the real daemon (AGI, AMI over TCP, the store): both legs land."""
    await agi_track(daemon.agi_address[1], environment("1795332167.42", "74950000001"))
    for message in read_capture(captures / "ami" / "09-ring-group-second-phone-answers.txt",
                                skip_login=True):
        await ami.emit(message)
    path = daemon.config.store.path
    await wait_for(lambda: len(stored_legs(path)) == 2 and all(r[5] for r in stored_legs(path)))
    assert stored_legs(path) == [
        ("1795332167.42", "1795332167.43", "IAX2/phones/100", "cancel", 0, 1),
        ("1795332167.42", "1795332167.44", "IAX2/phones/101", "answer", 1, 1)]


async def test_a_ringing_leg_survives_a_daemon_restart(tmp_path: Path, ami: FakeAmi) -> None:
    """Stopped while 101 rings; the next daemon takes the leg back and sees it answered."""
    path = tmp_path / "ctrackd.yaml"
    path.write_text(CONFIG.format(ami_port=ami.port), encoding="utf-8")
    config = load_config(path)
    inbound = {"Uniqueid": "4.1", "Linkedid": "4.1", "Channel": "IAX2/carrier-1",
               "ChanVariable": "CTRACK_CALL_ID=4.1"}
    first = Daemon(config, stop_grace=1.0)
    await first.start()
    try:
        await ami.wait_for_clients(1)
        await agi_track(first.agi_address[1], environment("4.1", "74950000001"))
        await ami.emit({"Event": "DialBegin", **inbound, "DestUniqueid": "4.2",
                        "DestChannel": "IAX2/phones-2", "DialString": "phones/101"})
        await wait_for(lambda: len(stored_legs(config.store.path)) == 1)
    finally:
        await first.stop()
    # Asterisk still has the call when the next daemon asks
    ami.channels_provider = lambda: [
        [("Channel", "IAX2/carrier-1"), ("Uniqueid", "4.1"), ("Linkedid", "4.1"),
         ("ChannelStateDesc", "Ring"), ("ChanVariable", "CTRACK_CALL_ID=4.1")],
        [("Channel", "IAX2/phones-2"), ("Uniqueid", "4.2"), ("Linkedid", "4.1"),
         ("ChannelStateDesc", "Ringing"), ("ChanVariable", "CTRACK_CALL_ID=4.1")]]
    again = Daemon(config, stop_grace=1.0)
    await again.start()
    try:
        await ami.wait_for_clients(1)
        await ami.emit({"Event": "DialEnd", **inbound, "DestUniqueid": "4.2",
                        "DestChannel": "IAX2/phones-2", "DialStatus": "ANSWER"})
        await ami.emit({"Event": "Hangup", **inbound, "Cause": "16"})
        await wait_for(lambda: stored_legs(config.store.path)[0][5])
        assert stored_legs(config.store.path) == [
            ("4.1", "4.2", "IAX2/phones/101", "answer", 1, 1)]
    finally:
        await again.stop()


# -- the fallback hang-up handler (ctrackd-agi, a real process) ------------------------

def test_the_fallback_handler_writes_the_answering_leg(config_path: Path,  # noqa: F811
                                                        store_path: Path) -> None:  # noqa: F811
    """The daemon was down: the call's only leg is the one that answered (docs/operators.md)."""
    fallback_track(config_path)
    result = fallback_hangup(config_path, {
        "DIALSTATUS": "ANSWER", "ANSWEREDTIME": "4", "DIALEDTIME": "6", "HANGUPCAUSE": "16",
        "DIALEDPEERNUMBER": "phones/100", "DIALEDPEERNAME": "IAX2/phones-15449"})
    assert result.returncode == 0 and result.stderr == ""
    (leg,) = stored_legs(store_path)
    assert leg == (UNIQUEID, "IAX2/phones-15449", "IAX2/phones/100", "answer", 1, 1)
    conn = sqlite3.connect(store_path)
    rang, answered, ended = conn.execute(
        "SELECT rang_at, answered_at, ended_at FROM call_legs").fetchone()
    conn.close()
    assert (answered - rang, ended - answered) == (pytest.approx(2, abs=0.1),
                                                   pytest.approx(4, abs=0.1))


def test_the_fallback_handler_writes_no_leg_for_a_missed_call(
        config_path: Path, store_path: Path) -> None:  # noqa: F811
    fallback_track(config_path)
    assert fallback_hangup(config_path, {"DIALSTATUS": "NOANSWER", "DIALEDTIME": "10",
                                         "HANGUPCAUSE": "16"}).returncode == 0
    assert stored_legs(store_path) == []
