"""The store's side of an operator's promo code: read a call's attribution, rewrite it.

An operator's `*` + code re-attributes a call while (or after) the AMI side
writes its progress. The rewrite touches only the columns a code can change
(tracking, channel, UTM, session, the promo fields, note) and leaves the
routing facts (DID, caller, where it was forwarded, the recording) and every
progress column alone, so neither side clobbers the other in any order. A
call with no row yet (only AMI saw it) gets one, which the progress fills.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from ctrackd.attribution.records import Attribution, PromoEntry, PromoStatus, Tracking
from ctrackd.store import queries

_COLUMNS = ("call_id", "started_at", "did", "caller", "caller_name", "tracking", "channel",
            "source", "medium", "campaign", "label", "forward_to", "ring_timeout",
            "recording_path", "note", "pool", "session_id", "confidence", "session_json",
            "promo_code", "promo_entry", "promo_status")
SELECT_ATTRIBUTION = f"SELECT {', '.join(_COLUMNS)} FROM calls WHERE call_id = ?"

# started_at only for a row this creates (the progress then lowers it to the
# channel's creation); an existing row keeps its own.
UPSERT_PROMO = f"""
INSERT INTO calls (call_id, started_at, tracking, channel, source, medium, campaign, label,
                   note, pool, session_id, confidence, session_json, promo_code, promo_entry,
                   promo_status, created_at, updated_at)
VALUES (:call_id, :started_at, :tracking, :channel, :source, :medium, :campaign, :label,
        :note, :pool, :session_id, :confidence, :session_json, :promo_code, :promo_entry,
        :promo_status, {queries._NOW}, {queries._NOW})
ON CONFLICT (call_id) DO UPDATE SET
    tracking = excluded.tracking, channel = excluded.channel, source = excluded.source,
    medium = excluded.medium, campaign = excluded.campaign, label = excluded.label,
    note = excluded.note, pool = excluded.pool, session_id = excluded.session_id,
    confidence = excluded.confidence, session_json = excluded.session_json,
    promo_code = excluded.promo_code, promo_entry = excluded.promo_entry,
    promo_status = excluded.promo_status, updated_at = excluded.updated_at
"""

_PROMO_PARAMS = ("call_id", "started_at", "tracking", "channel", "source", "medium", "campaign",
                 "label", "note", "pool", "session_id", "confidence", "session_json",
                 "promo_code", "promo_entry", "promo_status")


def promo_params(a: Attribution) -> dict[str, Any]:
    """The row for `UPSERT_PROMO` (give it to `Store.write`)."""
    params = queries.attribution_params(a)
    return {name: params[name] for name in _PROMO_PARAMS}


def attribution_from_row(row: tuple[Any, ...]) -> Attribution:
    """A `calls` row's attribution half; a row only AMI wrote reads as untracked."""
    v = dict(zip(_COLUMNS, row))
    try:
        tracking = Tracking(v["tracking"])
    except ValueError:
        tracking = Tracking.UNTRACKED
    return Attribution(
        call_id=v["call_id"], started_at=v["started_at"], did=v["did"], caller=v["caller"],
        caller_name=v["caller_name"], tracking=tracking, channel=v["channel"],
        source=v["source"], medium=v["medium"], campaign=v["campaign"], label=v["label"],
        forward_to=v["forward_to"] or "", ring_timeout=v["ring_timeout"] or 0,
        recording_path=v["recording_path"], note=v["note"], pool=v["pool"],
        session_id=v["session_id"], confidence=v["confidence"],
        session=json.loads(v["session_json"]) if v["session_json"] else None,
        promo_code=v["promo_code"], promo_entry=_enum(PromoEntry, v["promo_entry"]),
        promo_status=_enum(PromoStatus, v["promo_status"]))


def _enum(kind: type[PromoEntry] | type[PromoStatus], value: str | None) -> Any:
    try:
        return kind(value) if value else None
    except ValueError:  # a value from a newer ctrackd: as if none
        return None


def load_attribution(path: str | Path, call_id: str) -> Attribution | None:
    """The stored attribution of one call (a read-only connection: WAL, never blocks the writer)."""
    conn = queries.connect(path, readonly=True)
    try:
        row = conn.execute(SELECT_ATTRIBUTION, (call_id,)).fetchone()
    finally:
        conn.close()
    return attribution_from_row(tuple(row)) if row is not None else None


async def read_attribution(path: str | Path, call_id: str) -> Attribution | None:
    """`load_attribution` off the event loop (the daemon's side)."""
    return await asyncio.to_thread(load_attribution, path, call_id)
