"""Answered outbound calls (an office phone calling a number) in `outbound_calls`.

`ctrackd missed` takes a number off the callback list once somebody got
through to it, and an answered outbound call is one way. One row per
dialling channel (its Uniqueid): a DialEnd seen twice (a replay after a
reconnect) keeps the first answer. A call placed through a Local channel
has two dialling channels (the phone's, and the Local channel's towards the
trunk), so it may give two rows for the same number: harmless for a list
that only asks "was this number reached after the missed call".
"""

from __future__ import annotations

from typing import Any

from ctrackd.attribution.events import OutboundAnswered

UPSERT_OUTBOUND = """
INSERT INTO outbound_calls (uniqueid, number, answered_at, endpoint)
VALUES (:uniqueid, :number, :answered_at, :endpoint)
ON CONFLICT (uniqueid) DO NOTHING
"""


def outbound_params(call: OutboundAnswered) -> dict[str, Any]:
    return {"uniqueid": call.uniqueid, "number": call.number, "answered_at": call.ts,
            "endpoint": call.endpoint}


def outbound_rows(calls: list[OutboundAnswered]) -> list[dict[str, Any]]:
    """The rows for `Store.write(UPSERT_OUTBOUND, ...)`."""
    return [outbound_params(call) for call in calls]
