"""Yandex Metrica: calls as offline conversions ("Звонки", upload_calls).

The documented CSV: the first line names the columns; one of `UserId`,
`ClientId` (the `_ym_uid` cookie) or `Yclid` (the Direct click id) ties a
call to a visitor; `DateTime` is a Unix timestamp (UTC); optional
`StaticCall` (1 static, 0 dynamic), `Price` (a dot as separator), `Currency`
(ISO 4217), `PhoneNumber` (with country code, no spaces: +70123456789),
`TalkDuration` and `HoldDuration` (seconds), `CallMissed` (1/0), `Tag`,
`FirstTimeCaller` (1/0), `URL` (the page the number was shown on),
`CallTrackerURL`. Metrica links a call to a visit of the last 21 days only,
so older calls are left out. Written as UTF-8 without BOM, `,` separated,
quoted only where a value needs it.
"""

from __future__ import annotations

import csv
from typing import Any, TextIO
from urllib.parse import quote

from ctrackd.configcalls import ExportsConfig
from ctrackd.exports import Format, LeftOut, number

IDS = ("ClientId", "Yclid")
COLUMNS = ("DateTime", "StaticCall", "PhoneNumber", "TalkDuration", "HoldDuration",
           "CallMissed", "Tag", "FirstTimeCaller", "URL", "CallTrackerURL")
PRICE = ("Price", "Currency")
MAX_AGE = 21 * 86400.0
NO_ID = "no ClientId (_ym_uid) or Yclid"


def convert(call: Any, settings: ExportsConfig) -> dict[str, str] | LeftOut:
    session = call.session or {}
    client_id, yclid = session.get("ym_uid"), session.get("yclid")
    if not client_id and not yclid:
        return LeftOut(NO_ID)
    answered = call.status == "answered"
    row = {
        "ClientId": client_id or "", "Yclid": yclid or "",
        "DateTime": str(int(call.started_at)),
        "StaticCall": "1" if call.tracking == "static" else "0",
        "PhoneNumber": call.caller if call.caller and call.caller.startswith("+") else "",
        "TalkDuration": str(round(call.talk_seconds or 0)) if answered else "0",
        # the wait before an answer: what a caller spends "on hold" with us
        "HoldDuration": str(round(call.ring_seconds or 0)),
        "CallMissed": "0" if answered else "1",
        "Tag": "target" if call.target else "non-target",
        "FirstTimeCaller": "" if call.first_time is None else str(int(call.first_time)),
        "URL": session.get("landing_page") or "",
        "CallTrackerURL": (settings.call_tracker_url.replace("{call_id}", quote(call.call_id))
                           if settings.call_tracker_url else ""),
    }
    value = settings.value_for(call.channel)
    if value is not None:
        row["Price"] = number(value)
        row["Currency"] = settings.currency or ""
    return row


def columns(settings: ExportsConfig) -> tuple[str, ...]:
    """Price and Currency only when a value is configured: an empty Price is no price."""
    priced = settings.value is not None or bool(settings.channel_values)
    return IDS + COLUMNS[:2] + (PRICE if priced else ()) + COLUMNS[2:]


def write(rows: list[dict[str, str]], out: TextIO, settings: ExportsConfig) -> None:
    writer = csv.DictWriter(out, fieldnames=columns(settings), lineterminator="\n",
                            restval="")
    writer.writeheader()
    writer.writerows(rows)


FORMAT = Format("yandex-metrica", "Yandex Metrica offline calls (CSV for upload_calls)",
                MAX_AGE, "older than 21 days (Metrica links calls to visits of the last 21"
                " days)", convert, write)
