"""GA4: calls as Measurement Protocol events (`phone_call`), as a file or sent.

A request body is `{"client_id", "timestamp_micros", "events": [{"name",
"params", "timestamp_micros"}]}`, POSTed as JSON to
`/mp/collect?measurement_id=G-...&api_secret=...`. The client id is the one
the `_ga` cookie carries (`GA1.1.<client id>`); one body per client id, at
most 25 events per body (the protocol's limit). Events may be backdated up
to 72 hours: older calls are left out. Event parameters: at most 25, names
up to 40 characters, values up to 100 characters (longer ones are cut).
`value` (a number) and `currency` (ISO 4217) are GA4's own parameters for
a conversion's worth.

The file is JSON lines, one request body per line, exactly what `--send`
posts (so a file can be checked, then sent by any HTTP client). The
collect endpoint answers 2xx for every well-formed request, even one it
drops: check a sample at the debug endpoint (`/debug/mp/collect`).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO
from urllib.parse import urlencode

from ctrackd.configcalls import ExportsConfig
from ctrackd.exports import Format, LeftOut, chunks

MAX_AGE = 72 * 3600.0
MAX_EVENTS = 25
MAX_VALUE_CHARS = 100
NO_CLIENT = "no GA client id (_ga cookie)"


def convert(call: Any, settings: ExportsConfig) -> tuple[str, dict[str, Any]] | LeftOut:
    client_id = (call.session or {}).get("ga_client_id")
    if not client_id:
        return LeftOut(NO_CLIENT)
    params: dict[str, Any] = {
        "call_id": call.call_id, "channel": call.channel, "source": call.source,
        "medium": call.medium, "campaign": call.campaign,
        "talk_seconds": round(call.talk_seconds or 0),
        "first_time_caller": None if call.first_time is None else int(call.first_time),
        "target": int(bool(call.target)),
    }
    value = settings.value_for(call.channel)
    if value is not None:
        params["value"] = float(value)
        params["currency"] = settings.currency
    params = {k: v[:MAX_VALUE_CHARS] if isinstance(v, str) else v
              for k, v in params.items() if v is not None}
    event = {"name": settings.ga4.event_name, "params": params,
             "timestamp_micros": int(call.started_at * 1_000_000)}
    return client_id, event


def bodies(rows: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Request bodies: one client id each, at most MAX_EVENTS events, in call order."""
    by_client: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for client_id, event in rows:
        by_client[client_id].append(event)
    result = []
    for client_id, events in by_client.items():
        for part in chunks(events, MAX_EVENTS):
            result.append({"client_id": client_id,
                           "timestamp_micros": part[0]["timestamp_micros"], "events": part})
    return result


def write(rows: list[tuple[str, dict[str, Any]]], out: TextIO, settings: ExportsConfig) -> None:
    for body in bodies(rows):
        out.write(json.dumps(body, ensure_ascii=False, separators=(",", ":")) + "\n")


def collect_url(settings: ExportsConfig) -> str:
    ga4 = settings.ga4
    return f"{ga4.endpoint}?" + urlencode({"measurement_id": ga4.measurement_id or "",
                                           "api_secret": ga4.api_secret or ""})


@dataclass(frozen=True)
class Sent:
    requests: int
    events: int
    failed: list[str]          # one sentence per failed request


async def send(body_list: list[dict[str, Any]], settings: ExportsConfig, *,
               timeout: float = 10.0,
               progress: Callable[[int], None] | None = None) -> Sent:
    """POST each body to the collect endpoint, one after another (bounded, no retry storm)."""
    import aiohttp  # only the sending path needs it
    url = collect_url(settings)
    failed: list[str] = []
    events = 0
    client_timeout = aiohttp.ClientTimeout(total=timeout)
    async with aiohttp.ClientSession(timeout=client_timeout) as session:
        for done, body in enumerate(body_list, 1):
            try:
                async with session.post(url, json=body) as response:
                    if 200 <= response.status < 300:
                        events += len(body["events"])
                    else:
                        failed.append(f"client {body['client_id']}: HTTP {response.status}")
            except (aiohttp.ClientError, TimeoutError) as exc:
                failed.append(f"client {body['client_id']}: {exc.__class__.__name__}: {exc}")
            if progress is not None:
                progress(done)
    return Sent(len(body_list), events, failed)


FORMAT = Format("ga4", "GA4 Measurement Protocol events (JSON lines; --send posts them)",
                MAX_AGE, "older than 72 hours (the Measurement Protocol takes events up to 72"
                " hours old)", convert, write)
