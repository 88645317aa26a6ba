"""Ring groups, queues and operator tagging through a real Asterisk 22.

The parts of the shipped dialplan the simulator can only imitate: Dial's
b() pre-dial handler putting X-CTrack-* headers on the INVITE, U() playing
the whisper to the phone that answered, Queue() with its announcement, and
"first answer wins" when several phones ring.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.real_asterisk.harness import ONLY_102_ANSWERS, WHISPER, caller, write_whisper
from tests.real_asterisk.pbx import Pbx, assert_times_match_cdr, by_caller, needs_asterisk, running

pytestmark = needs_asterisk

TAGGED = """\
  # numbers for this test's channel, whose operators get headers and a whisper
  "+74950000003": {channel: tagged, forward_to: "PJSIP/101&PJSIP/102"}
  "+74950000004": {channel: tagged, forward_to: "Queue(sales)"}
"""
TAGGED_CHANNEL = f"""\
  tagged: {{source: vk, medium: social, campaign: spring, label: VK,
            sip_headers: true, whisper: {WHISPER}}}
"""


@pytest.fixture
async def tagged_pbx(tmp_path: Path):  # type: ignore[no-untyped-def]
    write_whisper()
    made = Pbx(tmp_path)
    config = made.ctrackd.config
    text = config.read_text(encoding="utf-8")
    text = text.replace("channels:\n", "channels:\n" + TAGGED_CHANNEL)
    config.write_text(text + TAGGED, encoding="utf-8")
    async with running(made):
        yield made


async def test_ring_group_and_queue_first_answer_wins_with_headers_and_whisper(
        tagged_pbx: Pbx) -> None:
    pbx = tagged_pbx
    group, queue = caller(11, ring=1, talk=2, behaviour=ONLY_102_ANSWERS), caller(
        12, ring=1, talk=2, behaviour=ONLY_102_ANSWERS)
    await pbx.asterisk.originate("74950000003", group, "Group Caller")
    await pbx.asterisk.originate("74950000004", queue, "Queue Caller")
    calls = by_caller(await pbx.ctrackd.wait_ended(2))

    for number in (group, queue):
        call = calls[number]
        # 101 kept ringing and was cancelled: not a failure, 102's answer wins
        assert (call["status"], call["answered_by"], call["channel"]) == (
            "answered", "PJSIP/102", "tagged")
        rings = [e for e in pbx.events("PhoneRings") if e["From"] == number]
        assert sorted(e["Phone"] for e in rings) == ["101", "102"]
        for ring in rings:  # what the operator's phone got, on both phones
            assert (ring["Shown"], ring["XChannel"], ring["XCampaign"]) == (
                "[VK] " + ("Group Caller" if number == group else "Queue Caller"),
                "tagged", "spring")
    assert_times_match_cdr(calls[group], await pbx.inbound_cdr(calls[group]["call_id"]))

    # The whisper played to the phone that answered, before the bridge: on the
    # Dial through U() (Gosub [ctrackd-whisper]), on the queue as its announcement
    # (app_queue plays it itself: only Asterisk's own log line shows it).
    played = [e for e in pbx.events("VarSet") if e.get("Variable") == "PLAYBACKSTATUS"]
    assert [(e["Channel"].split("-")[0], e["Value"]) for e in played] == [
        ("PJSIP/102", "SUCCESS")]
    log = (pbx.asterisk.folder / "log" / "messages.log").read_text(encoding="utf-8")
    heard = re.findall(r"<(PJSIP/\d+)-[0-9a-f]+> Playing '" + WHISPER, log)
    assert heard == ["PJSIP/102", "PJSIP/102"], heard
