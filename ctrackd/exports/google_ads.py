"""Google Ads: offline call conversions and click conversions, as upload files.

Both documented templates start with a `Parameters:TimeZone=<zone>` row (a
time zone ID such as Europe/Moscow, or an offset such as +0300) that says
in which zone the times below are written, then the header row; times are
`yyyy-MM-dd HH:mm:ss` in that zone (a `T` or an offset inside a time is
rejected). Values use a dot as decimal separator; currency is ISO 4217.

Calls (`Caller's Phone Number`, `Call Start Time`, `Conversion Name`,
`Conversion Time`, `Conversion Value`, `Conversion Currency`): Google
matches the caller (E.164) and the start time against the calls its ads
brought, so only calls from Google traffic (source `google`, of the
channel or of the web session) are worth sending; Google takes calls of
the last 90 days at most.

Clicks (`Google Click ID`, `Conversion Name`, `Conversion Time`,
`Conversion Value`, `Conversion Currency`): a call whose web session came
with a gclid; Google takes conversions within 90 days of the click (the
click came before the call, so a call older than 90 days is too late).

The conversion time is when the call ended: it became a lead then, and it
must be after the call's start (and the click).
"""

from __future__ import annotations

import csv
from datetime import datetime
from typing import Any, TextIO
from zoneinfo import ZoneInfo

from ctrackd.configcalls import ExportsConfig
from ctrackd.exports import Format, LeftOut, number

CALL_COLUMNS = ("Caller's Phone Number", "Call Start Time", "Conversion Name",
                "Conversion Time", "Conversion Value", "Conversion Currency")
CLICK_COLUMNS = ("Google Click ID", "Conversion Name", "Conversion Time", "Conversion Value",
                 "Conversion Currency")
MAX_AGE = 90 * 86400.0
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"


def google_time(ts: float, zone: str) -> str:
    return datetime.fromtimestamp(ts, ZoneInfo(zone)).strftime(TIME_FORMAT)


def _value(call: Any, settings: ExportsConfig) -> tuple[str, str]:
    value = settings.value_for(call.channel)
    if value is None:
        return "", ""
    return number(value), settings.currency or ""


def _from_google(call: Any) -> bool:
    sources = {call.source, (call.session or {}).get("utm_source")}
    return any(s and s.lower() == "google" for s in sources) or bool(
        (call.session or {}).get("gclid"))


def convert_call(call: Any, settings: ExportsConfig) -> list[str] | LeftOut:
    if not call.caller:
        return LeftOut("withheld number")
    if not call.caller.startswith("+"):
        return LeftOut("caller number not in international form")
    if not _from_google(call):
        return LeftOut("not from Google (source is not google)")
    value, currency = _value(call, settings)
    ended = call.ended_at or call.started_at
    return [call.caller, google_time(call.started_at, settings.timezone),
            settings.call_conversion, google_time(ended, settings.timezone), value, currency]


def convert_click(call: Any, settings: ExportsConfig) -> list[str] | LeftOut:
    gclid = (call.session or {}).get("gclid")
    if not gclid:
        return LeftOut("no gclid")
    value, currency = _value(call, settings)
    ended = call.ended_at or call.started_at
    return [gclid, settings.click_conversion, google_time(ended, settings.timezone), value,
            currency]


def _writer(columns: tuple[str, ...]) -> Any:
    def write(rows: list[list[str]], out: TextIO, settings: ExportsConfig) -> None:
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow([f"Parameters:TimeZone={settings.timezone}"])
        writer.writerow(columns)
        writer.writerows(rows)
    return write


CALLS = Format("google-ads-calls", "Google Ads offline call conversions (upload CSV)", MAX_AGE,
               "older than 90 days (Google Ads takes calls of the last 90 days)",
               convert_call, _writer(CALL_COLUMNS))
CLICKS = Format("google-ads-clicks", "Google Ads click conversions by gclid (upload CSV)",
                MAX_AGE, "older than 90 days (Google Ads takes clicks of the last 90 days)",
                convert_click, _writer(CLICK_COLUMNS))
