"""The PBX of tests/real_asterisk/: a real Asterisk (harness.py) and the daemon beside it,
configured for each other, and what the tests compare."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.real_asterisk.harness import Cdr, Ctrackd, RealAsterisk, free_port, unavailable

CONFIG = """\
ami: {{host: 127.0.0.1, port: {ami_port}, username: ctrackd, secret: CHANGE-ME, reconnect_max: 1}}
agi: {{listen: "127.0.0.1:{agi_port}"}}
store: {{path: calls.sqlite3}}
recordings: {{dir: {monitor}}}
phone_region: RU
defaults: {{forward_to: PJSIP/101, ring_timeout: 6}}
log: {{level: info, format: json}}
channels:
  yandex: {{source: yandex, medium: cpc, campaign: search, label: Яндекс}}
  google: {{source: google, medium: cpc, campaign: brand, label: Google Ads}}
numbers:
  "+74950000001": {{channel: yandex}}
  "84950000002": {{channel: google, forward_to: PJSIP/102}}
"""

# A pool for the website's visitors (docs/dynamic.md), on the same PBX.
POOL = """\
pools:
  site: {numbers: ["+74950000101", "+74950000102"]}
web:
  listen: "127.0.0.1:0"
  origins: ["https://shop.example.com"]
  replace: ["+74951234567"]
"""


class Pbx:
    """A real Asterisk and the daemon beside it, configured for each other."""

    def __init__(self, folder: Path, extra: str = "") -> None:
        agi_port = free_port()
        config = folder / "ctrackd.yaml"
        self.asterisk = RealAsterisk(folder, agi_port=agi_port, ctrackd_config=config)
        config.write_text(CONFIG.format(ami_port=self.asterisk.ami_port, agi_port=agi_port,
                                        monitor=self.asterisk.monitor) + extra,
                          encoding="utf-8")
        self.ctrackd = Ctrackd(config)
        self._seen: list[Any] = []

    def events(self, name: str) -> list[Any]:
        """AMI events of that name Asterisk sent so far (UserEvents by their own name)."""
        while not self.asterisk.events.empty():
            event = self.asterisk.events.get_nowait()
            if hasattr(event, "get"):
                self._seen.append(event)
        return [e for e in self._seen if name in (e.get("Event"), e.get("UserEvent"))]

    def phone_showed(self) -> dict[str, str]:
        """Caller number -> the caller-ID name the office phone rang with."""
        return {e["From"]: e["Shown"] for e in self.events("PhoneRings")}

    async def inbound_cdr(self, call_id: str, timeout: float = 10.0) -> list[Cdr]:
        """Asterisk's CDR rows of the inbound leg (Uniqueid = the call id): the Dial
        and, when the dialplan went on after it (Busy(), Hangup()), one more.
        Asterisk writes them after the hang-up handlers: on the fallback path the
        record can be closed before its CDR exists."""
        deadline = time.monotonic() + timeout
        while True:
            rows = [c for c in self.asterisk.cdr() if c.uniqueid == call_id]
            if rows or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        assert [c.lastapp for c in rows][:1] == ["Dial"], (call_id, self.asterisk.cdr())
        return rows


@asynccontextmanager
async def running(pbx: Pbx) -> AsyncIterator[Pbx]:
    """Asterisk, then the daemon; both stopped after, and the daemon's log clean."""
    try:
        await pbx.asterisk.start()
        pbx.ctrackd.start()
        yield pbx
    finally:
        pbx.ctrackd.stop()
        await pbx.asterisk.stop()
    assert pbx.ctrackd.problems() == []


#: Each test module here: `pytestmark = needs_asterisk` (skipped, saying why, without one).
needs_asterisk = pytest.mark.skipif(unavailable() is not None, reason=str(unavailable()))


def by_caller(calls: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {c["caller"]: c for c in calls.values()}


def assert_times_match_cdr(call: dict[str, Any], rows: list[Cdr]) -> None:
    """Ring, talk and whole time within 1 s of Asterisk's CDR of the inbound leg.

    Its rows: the Dial (one per phone in a ring group, each from when that
    phone was dialled), then one for the dialplan after it (Busy(), Hangup()).
    Talk is the answered row's billsec; the call spans from the earliest start
    to the latest end; it rang from that start to the answer, or (unanswered)
    for as long as the first Dial row lasted. Times are whole seconds.
    """
    first = min(r.start for r in rows)
    answered = [r for r in rows if r.disposition == "ANSWERED" and r.lastapp == "Dial"]
    if answered:
        assert answered[0].answer is not None
        assert abs(call["talk_seconds"] - answered[0].billsec) <= 1, (call, rows)
        ring = answered[0].answer - first
    else:
        assert call["talk_seconds"] == 0, call
        ring = rows[0].duration
    assert abs(call["ring_seconds"] - ring) <= 1, (call, rows)
    assert abs(call["duration_seconds"] - (max(r.end for r in rows) - first)) <= 1, (call, rows)
