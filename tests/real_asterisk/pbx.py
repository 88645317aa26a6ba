"""The PBX of tests/real_asterisk/: a real Asterisk (harness.py) and the daemon beside it,
configured for each other, and what the tests compare."""

from __future__ import annotations

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

    def inbound_cdr(self, call_id: str) -> list[Cdr]:
        """Asterisk's CDR rows of the inbound leg (Uniqueid = the call id): the Dial
        and, when the dialplan went on after it (Busy(), Hangup()), one more."""
        rows = [c for c in self.asterisk.cdr() if c.uniqueid == call_id]
        assert [c.lastapp for c in rows][:1] == ["Dial"], (call_id, self.asterisk.cdr())
        return rows


#: Each test module here: `pytestmark = needs_asterisk` (skipped, saying why, without one).
needs_asterisk = pytest.mark.skipif(unavailable() is not None, reason=str(unavailable()))


def by_caller(calls: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {c["caller"]: c for c in calls.values()}


def assert_times_match_cdr(call: dict[str, Any], rows: list[Cdr]) -> None:
    """Ring and talk time within 1 s of Asterisk's CDR of the Dial (billsec is the
    answered part, duration all of it, in whole seconds); the whole call within
    1 s per row of the CDR rows' total (each row's seconds are cut to a whole).

    A ring group's Dial has a row per phone, side by side in time: the answered
    one (if any) is the call's; the rows after the Dial (Busy(), Hangup()) follow it.
    """
    dials = [r for r in rows if r.lastapp == "Dial"]
    dial = next((r for r in dials if r.disposition == "ANSWERED"), dials[0])
    assert abs(call["talk_seconds"] - dial.billsec) <= 1, (call, rows)
    assert abs(call["ring_seconds"] - (dial.duration - dial.billsec)) <= 1, (call, rows)
    after = [r for r in rows if r.lastapp != "Dial"]
    total = max(r.duration for r in dials) + sum(r.duration for r in after)
    assert total - 1 <= call["duration_seconds"] <= total + 1 + len(after), (call, rows)
