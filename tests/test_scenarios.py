"""Scenario tests: AMI streams recorded from a real Asterisk, replayed into the core.

Each capture is parsed with panoramisk's own message parser (what the
daemon runs), translated by `ctrackd.ami.translate` and applied to a
`CallTracker`. The complete resulting record of every call is compared with
what happened on the real Asterisk, and its timings with Asterisk's own CDR
rows recorded in the same run (within 1 s).
"""

from __future__ import annotations

import csv
from datetime import datetime, timezone
from pathlib import Path

import pytest
from panoramisk.message import Message

from ctrackd.ami.translate import leg_of, translate, wanted
from ctrackd.attribution.events import ChannelsListed, ListedChannel
from ctrackd.attribution.records import CallProgress, CallStatus
from ctrackd.attribution.tracker import CallTracker
from tests.conftest import CAPTURES


def read_messages(path: Path, *, filtered: bool = False) -> list[Message]:
    """Every message of a raw capture, parsed exactly as panoramisk parses them.

    `filtered` drops what the daemon's AMI link drops before parsing (`wanted`).
    """
    raw = path.read_bytes().decode("utf-8")
    blocks = raw.split("\r\n\r\n")
    messages = []
    for block in blocks:
        if filtered and block.startswith("Event: ") and "\r\nActionID: " not in block \
                and not wanted(block):
            continue
        lines = [line for line in block.split("\r\n") if not line.startswith("Asterisk Call")]
        message = Message.from_line("\r\n".join(lines)) if lines else None
        if message is not None:
            messages.append(message)
    return messages


def replay(path: Path, tracker: CallTracker | None = None, *,
           filtered: bool = False, notices: list | None = None) -> dict[str, CallProgress]:
    """Feed a capture through translate + tracker; return the last record of each call.

    `notices` gets the tracker's notices (operator codes, outbound calls), in order.
    """
    tracker = tracker or CallTracker(region="RU")
    records: dict[str, CallProgress] = {}
    listed: list[Message] = []
    known = tracker.known_calls()
    for message in read_messages(path, filtered=filtered):
        event_name = message.get("Event")
        if event_name == "CoreShowChannel":  # an action's answer, not a dispatched event
            listed.append(message)
            continue
        if event_name == "CoreShowChannelsComplete":
            channels = tuple(ListedChannel(leg, str(m.get("ChannelStateDesc")),
                                           m.get("BridgeId") or None)
                             for m in listed if (leg := leg_of(m)) is not None)
            # CoreShowChannel carries no Timestamp (README of the captures)
            event = ChannelsListed(ts=0.0, channels=channels, known_before=known)
            for progress in tracker.apply(event):
                records[progress.call_id] = progress
            continue
        core_event = translate(message, received_at=0.0)
        if core_event is None:
            continue
        for progress in tracker.apply(core_event):
            records[progress.call_id] = progress
        if notices is not None:
            notices.extend(tracker.take_notices())
    return records


def cdr_rows(captures: Path, name: str) -> list[dict[str, str]]:
    fields = ["accountcode", "src", "dst", "dcontext", "clid", "channel", "dstchannel", "lastapp",
              "lastdata", "start", "answer", "end", "duration", "billsec", "disposition",
              "amaflags", "uniqueid", "userfield", "peeraccount", "linkedid", "sequence"]
    with open(captures / "cdr" / f"{name}.csv", encoding="utf-8", newline="") as f:
        return [dict(zip(fields, row)) for row in csv.reader(f)]


def _epoch(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc).timestamp()


# capture -> (call id, status, answered_by, DID, caller)
SINGLE_CALLS = {
    "01-answered-office-hangs-up": ("answered", "IAX2/phones/100", "+74950000001"),
    "02-answered-caller-hangs-up": ("answered", "IAX2/phones/100", "+74950000002"),
    "03-busy": ("busy", None, "+74950000003"),
    "04-no-answer-ring-timeout-10s": ("no_answer", None, "+74950000004"),
    "05-caller-abandons-while-ringing": ("abandoned", None, "+74950000005"),
    "06-congestion": ("failed", None, "+74950000006"),
    "07-chanunavail-peer-unreachable": ("failed", None, "+74950000007"),
    "08-agi-down-fallback-forward": ("answered", "IAX2/phones/100", "+74950000008"),
    "09-ring-group-second-phone-answers": ("answered", "IAX2/phones/101", "+74950000009"),
    "10-queue-sales-member-answers": ("answered", "IAX2/phones/100", "+74950000010"),
    "11-blind-transfer-100-to-102": ("answered", "IAX2/phones/100", "+74950000011"),
    "12-attended-transfer-100-to-102": ("answered", "IAX2/phones/100", "+74950000012"),
    "13-operator-dtmf-star1234hash": ("answered", "IAX2/phones/200", "+74950000013"),
    "14-cyrillic-callerid-and-ctrack-channel": ("answered", "IAX2/phones/100", "+74950000014"),
    "18-agi-getdata-promo-code": ("answered", "IAX2/phones/100", "+74950000091"),
    "19-agi-caller-hangs-up-during-agi": ("abandoned", None, "+74950000092"),
    "20-agi-invalid-command-and-bad-syntax": ("answered", "IAX2/phones/100", "+74950000093"),
    "21-agi-get-variable": ("answered", "IAX2/phones/100", "+74950000094"),
}


@pytest.mark.parametrize("name", sorted(SINGLE_CALLS))
def test_single_call_record_matches_asterisk(captures: Path, name: str) -> None:
    status, answered_by, did = SINGLE_CALLS[name]
    records = replay(captures / "ami" / f"{name}.txt")
    assert len(records) == 1, records
    (record,) = records.values()
    rows = cdr_rows(captures, name)
    assert {row["linkedid"] for row in rows} == {record.call_id}

    assert record.status == CallStatus(status)
    assert record.answered_by == answered_by
    assert record.did == did
    assert record.caller == "+79161234567"
    assert record.close_reason == "hangup"
    assert not record.is_open
    # Asterisk's CDR: start/end of the whole call, billsec of the answered part.
    start = min(_epoch(row["start"]) for row in rows)
    end = max(_epoch(row["end"]) for row in rows)
    assert abs(record.started_at - start) < 1.0
    assert abs(record.duration_seconds - (end - start)) <= 1.0
    answered_rows = [row for row in rows if row["disposition"] == "ANSWERED"]
    if status == "answered" and name.startswith(("01", "02", "08", "09", "10", "13", "14")):
        assert abs(record.talk_seconds - int(answered_rows[0]["billsec"])) <= 1.0
    if status != "answered":
        assert record.talk_seconds == 0.0
        assert record.answered_at is None
    assert record.ring_seconds + record.talk_seconds == pytest.approx(record.duration_seconds)


def test_transfer_keeps_the_whole_talk_time(captures: Path) -> None:
    """After a blind transfer the caller talks to 102 too: talk runs to the caller's hang-up."""
    (record,) = replay(captures / "ami" / "11-blind-transfer-100-to-102.txt").values()
    rows = cdr_rows(captures, "11-blind-transfer-100-to-102")
    billsec = sum(int(row["billsec"]) for row in rows)
    assert abs(record.talk_seconds - billsec) <= 1.0


def test_two_overlapping_calls_are_kept_apart(captures: Path) -> None:
    records = replay(captures / "ami" / "15-two-overlapping-calls.txt")
    assert len(records) == 2
    by_did = {r.did: r for r in records.values()}
    first, second = by_did["+74950000015"], by_did["+74950000115"]
    assert (first.caller, first.answered_by) == ("+79161110001", "IAX2/phones/100")
    assert (second.caller, second.answered_by) == ("+79032220002", "IAX2/phones/101")
    assert first.status == second.status == CallStatus.ANSWERED
    for row in cdr_rows(captures, "15-two-overlapping-calls"):
        record = records[row["linkedid"]]
        assert abs(record.talk_seconds - int(row["billsec"])) <= 1.0
        assert abs(record.duration_seconds - int(row["duration"])) <= 1.0


def test_daemon_restarted_mid_call_completes_the_calls(captures: Path) -> None:
    """Capture 16: we log in while two calls are live. The store had them open."""
    tracker = CallTracker(region="RU")
    rows = {row["linkedid"]: row for row in cdr_rows(
        captures, "16-reconnect-snapshot-coreshowchannels-status")}
    bridged, ringing = rows["1795332248.80"], rows["1795332249.82"]
    tracker.restore([
        CallProgress(call_id="1795332248.80", started_at=_epoch(bridged["start"]) + 0.5,
                     status=CallStatus.ANSWERED, answered_at=_epoch(bridged["answer"]) + 0.5,
                     answered_by="IAX2/phones/100"),
        CallProgress(call_id="1795332249.82", started_at=_epoch(ringing["start"]) + 0.5,
                     status=CallStatus.RINGING),
        # closed in Asterisk while the daemon was down: the snapshot must close it
        CallProgress(call_id="1795332000.1", started_at=_epoch(ringing["start"]) - 60,
                     status=CallStatus.RINGING),
    ])
    records = replay(captures / "ami" / "16-reconnect-snapshot-coreshowchannels-status.txt",
                     tracker)
    assert records["1795332000.1"].status == CallStatus.UNKNOWN
    assert records["1795332000.1"].close_reason == "gone_after_reconnect"
    first, second = records["1795332248.80"], records["1795332249.82"]
    assert first.status == second.status == CallStatus.ANSWERED
    assert first.close_reason == second.close_reason == "hangup"
    assert first.answered_by == "IAX2/phones/100"
    # Its DialBegin happened before we logged in, so the dialled extension is
    # unknown: the endpoint is named from the channel (an IAX2 peer; a PJSIP
    # endpoint would be exact, e.g. PJSIP/101).
    assert second.answered_by == "IAX2/phones"
    for record, row in ((first, bridged), (second, ringing)):
        assert abs(record.talk_seconds - int(row["billsec"])) <= 1.0
        assert abs(record.duration_seconds - int(row["duration"])) <= 1.0
    assert tracker.open_calls == 0


def test_asterisk_restart_ends_the_call_it_cut(captures: Path) -> None:
    records = replay(captures / "ami" / "17-pbx-core-restart-now-during-call.txt")
    assert len(records) == 1
    (record,) = records.values()
    (row,) = cdr_rows(captures, "17-pbx-core-restart-now-during-call")
    assert record.status == CallStatus.ANSWERED
    assert record.close_reason == "hangup"
    assert abs(record.talk_seconds - int(row["billsec"])) <= 1.0


@pytest.mark.parametrize("name", sorted(p.stem for p in (CAPTURES / "ami").glob("*.txt")))
def test_the_prefilter_drops_nothing_the_tracker_needs(captures: Path, name: str) -> None:
    """Events dropped unparsed by `wanted` change no record of any capture."""
    path = captures / "ami" / f"{name}.txt"
    tracker_all, tracker_filtered = CallTracker(), CallTracker()
    notices_all: list = []
    notices_filtered: list = []
    everything = replay(path, tracker_all, notices=notices_all)
    assert everything, name
    assert replay(path, tracker_filtered, filtered=True, notices=notices_filtered) == everything
    assert notices_filtered == notices_all  # operator codes too (only Received DTMF pass)


@pytest.mark.parametrize("message", [
    {"Event": "DialEnd", "Uniqueid": ["a", "b"], "DestUniqueid": "c", "DialStatus": "ANSWER"},
    {"Event": "DialBegin", "Uniqueid": "a", "DestUniqueid": ["c", "d"],
     "ChanVariable": "CTRACK_CALL_ID=a"},
    {"Event": "DialEnd", "Uniqueid": "a", "DestUniqueid": "c", "DialStatus": ["BUSY", "X"],
     "ChanVariable": "CTRACK_CALL_ID=a"},
    {"Event": ["Hangup", "Hangup"], "Uniqueid": "a"},
    {"Event": "Hangup", "Uniqueid": "a", "Timestamp": "nan", "ChanVariable": "CTRACK_CALL_ID=a"},
    {"Event": "Hangup", "Uniqueid": "a", "Timestamp": "inf", "Cause": ["16", "17"],
     "ChanVariable": ["CTRACK_CALL_ID=a", 5]},
])
def test_hostile_messages_translate_to_nothing_or_sane_events(message: dict) -> None:
    event = translate(message, received_at=1000.0)
    if event is not None:
        assert event.ts == 1000.0  # never nan/inf: the record's times stay numbers
        CallTracker().apply(event)  # and the tracker takes it without raising
