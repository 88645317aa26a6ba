"""Calls through a real Asterisk 22 running the shipped snippets unchanged.

Each test starts Asterisk (harness.py) and the daemon as the admin runs it,
makes calls on the trunk, and compares what `ctrackd calls --format json`
says with Asterisk's own CDR (cdr_csv) and with what the office phone showed.
Ring and talk times are real seconds, so each test takes a few.
"""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

import aiohttp
import pytest

from tests.real_asterisk.harness import BUSY, NO_ANSWER, caller
from tests.real_asterisk.pbx import (
    POOL,
    Pbx,
    assert_times_match_cdr,
    by_caller,
    needs_asterisk,
    running,
)

pytestmark = needs_asterisk


async def test_answered_busy_no_answer_and_abandoned_calls(pbx: Pbx) -> None:
    answered_1 = caller(1, ring=2, talk=3)
    busy_2 = caller(2, behaviour=BUSY)
    no_answer_1 = caller(3, behaviour=NO_ANSWER)
    abandoned_2 = caller(4, behaviour=NO_ANSWER)
    answered_2 = caller(5, ring=1, talk=2)
    await asyncio.gather(
        pbx.asterisk.originate("74950000001", answered_1, "Иван Петров"),
        pbx.asterisk.originate("74950000002", busy_2, "Busy Caller"),
        pbx.asterisk.originate("74950000001", no_answer_1, "Patient Caller"),
        pbx.asterisk.originate("+74950000002", abandoned_2, "Impatient", hang_up_after=3),
        pbx.asterisk.originate("74950000002", answered_2, "Мария"))
    calls = by_caller(await pbx.ctrackd.wait_ended(5))
    shown = pbx.phone_showed()

    expected = {  # caller -> status, channel, answered_by
        answered_1: ("answered", "yandex", "PJSIP/101"),
        busy_2: ("busy", "google", None),
        no_answer_1: ("no_answer", "yandex", None),
        abandoned_2: ("abandoned", "google", None),
        answered_2: ("answered", "google", "PJSIP/102"),
    }
    assert {number: (c["status"], c["channel"], c["answered_by"])
            for number, c in calls.items()} == expected
    for number, call in calls.items():
        rows = await pbx.inbound_cdr(call["call_id"])
        assert_times_match_cdr(call, rows)
        cdr = rows[0]
        assert call["tracking"] == "static" and call["caller"] == cdr.src
        assert call["forward_to"] == ("PJSIP/101" if call["channel"] == "yandex"
                                      else "PJSIP/102")
        # the operator's phone rang with the channel's label before the name
        assert shown[number] == f"[{call['label']}] {call['caller_name']}"
        if call["status"] == "answered":
            assert cdr.disposition == "ANSWERED" and cdr.dstchannel.startswith(
                call["answered_by"] + "-")
            recording = Path(call["recording"])
            assert recording.parent == pbx.asterisk.monitor
            assert recording.stat().st_size > 8000 * call["talk_seconds"] * 0.8  # 8 kHz 16-bit
        else:
            assert cdr.disposition in ("BUSY", "NO ANSWER"), cdr
    assert calls[answered_1]["caller_name"] == "Иван Петров"  # UTF-8 both ways
    assert calls[no_answer_1]["ring_seconds"] == pytest.approx(6, abs=1)  # ring_timeout
    assert calls[abandoned_2]["ring_seconds"] == pytest.approx(3, abs=1)  # caller gave up


async def test_daemon_down_the_call_still_rings_the_office_and_is_recorded_as_fallback(
        pbx: Pbx) -> None:
    pbx.ctrackd.stop()
    number = caller(6, ring=1, talk=2)
    await pbx.asterisk.originate("74950000001", number, "Fallback Caller")
    (call,) = (await pbx.ctrackd.wait_ended(1)).values()
    rows = await pbx.inbound_cdr(call["call_id"])
    cdr = rows[0]
    assert (call["tracking"], call["status"], call["channel"]) == (
        "fallback", "answered", "yandex")
    assert call["forward_to"] == "PJSIP/101" and cdr.dstchannel.startswith("PJSIP/101-")
    assert_times_match_cdr(call, rows)
    assert pbx.phone_showed()[number] == "[Яндекс] Fallback Caller"
    assert Path(call["recording"]).stat().st_size > 0


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["restart", "crash"])
async def test_daemon_restarted_in_the_middle_of_a_call(pbx: Pbx, how: int) -> None:
    number = caller(7, ring=1, talk=9)  # long enough for a restart on a loaded machine
    await pbx.asterisk.originate("74950000002", number, "Long Talk")
    await asyncio.sleep(3)  # answered at 1 s, talking
    pbx.ctrackd.stop(how)
    pbx.ctrackd.start()
    (call,) = (await pbx.ctrackd.wait_ended(1)).values()
    assert (call["status"], call["answered_by"], call["close_reason"]) == (
        "answered", "PJSIP/102", "hangup")
    assert_times_match_cdr(call, await pbx.inbound_cdr(call["call_id"]))


async def test_pool_number_call_carries_the_visitors_session(tmp_path: Path) -> None:
    async with running(Pbx(tmp_path, POOL)) as pbx:
        port = next(json.loads(line)["port"] for line in
                    pbx.ctrackd.log.read_text(encoding="utf-8").splitlines()
                    if '"web_server_started"' in line)
        async with aiohttp.ClientSession(
                headers={"Origin": "https://shop.example.com"}) as http:
            async with http.post(f"http://127.0.0.1:{port}/v1/sessions", json={
                    "visitor_id": "visitor-1",
                    "page": "https://shop.example.com/boots?utm_source=yandex&utm_medium=cpc"
                            "&utm_campaign=winter&utm_term=boots&yclid=y-42"}) as response:
                assert response.status == 200, await response.text()
                number = (await response.json())["number"]
        await pbx.asterisk.originate(number.lstrip("+"), caller(8, ring=1, talk=1), "Visitor")
        (call,) = (await pbx.ctrackd.wait_ended(1)).values()
    assert (call["tracking"], call["confidence"], call["did"]) == ("dynamic", "exact", number)
    assert (call["source"], call["medium"], call["campaign"]) == ("yandex", "cpc", "winter")
    session = call["session"]
    assert (session["visitor_id"], session["utm_term"], session["yclid"]) == (
        "visitor-1", "boots", "y-42")
    assert call["status"] == "answered" and call["answered_by"] == "PJSIP/101"
