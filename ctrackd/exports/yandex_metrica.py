"""Yandex Metrica: calls as offline conversions ("Звонки", upload_calls).

The documented CSV: the first line names the columns; one identifier
column ties a call to a visitor, the one the upload names in its
`client_id_type` (`ClientId` "only for client_id_type = CLIENT_ID", the
`_ym_uid` cookie; `Yclid` for `YCLID`, the Direct click id). A file holds one
identifier type, so `--id client-id` (the default) writes ClientId rows only
and `--id yclid` Yclid rows of the calls the ClientId file cannot carry (a
call with both ids is in the ClientId file only: uploaded twice it would
count twice); a call without the identifier is left out with its own reason; `DateTime` is a Unix timestamp (UTC); optional
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

#: --id -> (the column, the session field it comes from, upload_calls' client_id_type)
IDS = {"client-id": ("ClientId", "ym_uid", "CLIENT_ID"), "yclid": ("Yclid", "yclid", "YCLID")}
COLUMNS = ("DateTime", "StaticCall", "PhoneNumber", "TalkDuration", "HoldDuration",
           "CallMissed", "Tag", "FirstTimeCaller", "URL", "CallTrackerURL")
PRICE = ("Price", "Currency")
MAX_AGE = 21 * 86400.0
NO_ID = "no ClientId (_ym_uid) or Yclid"
ONLY_YCLID = "only a Yclid (export it with --id yclid)"
NO_YCLID = "no Yclid"
#: in the Yclid file: the call is in the ClientId file already (uploading both counts it twice)
HAS_CLIENT_ID = "has a ClientId (it is in the --id client-id file)"


def convert(call: Any, settings: ExportsConfig, id_type: str = "client-id"
            ) -> dict[str, str] | LeftOut:
    session = call.session or {}
    client_id, yclid = session.get("ym_uid"), session.get("yclid")
    if id_type == "yclid":
        if not yclid:
            return LeftOut(NO_YCLID)
        if client_id:
            return LeftOut(HAS_CLIENT_ID)
        ident = {"Yclid": yclid}
    elif client_id:
        ident = {"ClientId": client_id}
    else:
        return LeftOut(ONLY_YCLID if yclid else NO_ID)
    answered = call.status == "answered"
    row = {
        **ident,
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


def convert_yclid(call: Any, settings: ExportsConfig) -> dict[str, str] | LeftOut:
    return convert(call, settings, "yclid")


def columns(settings: ExportsConfig, id_type: str = "client-id") -> tuple[str, ...]:
    """Price and Currency only when a value is configured: an empty Price is no price."""
    priced = settings.value is not None or bool(settings.channel_values)
    return (IDS[id_type][0],) + COLUMNS[:2] + (PRICE if priced else ()) + COLUMNS[2:]


def write(rows: list[dict[str, str]], out: TextIO, settings: ExportsConfig,
          id_type: str = "client-id") -> None:
    writer = csv.DictWriter(out, fieldnames=columns(settings, id_type), lineterminator="\n",
                            restval="")
    writer.writeheader()
    writer.writerows(rows)


def write_yclid(rows: list[dict[str, str]], out: TextIO, settings: ExportsConfig) -> None:
    write(rows, out, settings, "yclid")


_TOO_OLD = "older than 21 days (Metrica links calls to visits of the last 21 days)"
FORMAT = Format("yandex-metrica", "Yandex Metrica offline calls (CSV for upload_calls;"
                " --id client-id or yclid)", MAX_AGE, _TOO_OLD, convert, write)
#: the same file with Yclid rows (`--id yclid`; upload with client_id_type=YCLID)
FORMAT_YCLID = Format("yandex-metrica", FORMAT.help, MAX_AGE, _TOO_OLD, convert_yclid,
                      write_yclid)
