"""What each event's `data` holds: the call as `ctrackd calls --format json` shows it
at that moment of its life.

One call dict (the CLI's fields, plus `answered_at`) comes in, whatever
step enqueues the event: the AGI route's save (from the Attribution in
hand, `call_of`), the answer (the row just saved), the judge (the ended
row). `view` then keeps what was known at the event's moment, so the same
event has the same shape whether it was queued live or caught up later by
the judge (a call whose start was recorded by ctrackd-agi while the daemon
was down gets its `call_start` when it is judged, with start-time fields).

Pure functions over plain dicts and the core's Attribution: the store
builds the dicts it reads (store.queries.call_from_row), this module only
chooses fields, so `outbox.enqueue` can apply it for every caller.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ctrackd.attribution.records import Attribution

CALL_START = "call_start"
CALL_ANSWER = "call_answer"
CALL_END = "call_end"
MISSED = "missed"
#: the order of a call's events; the dispatcher delivers a call's events to a
#: hook in this order (outbox.claim_due), whatever order they were queued in
ORDER = (CALL_START, CALL_ANSWER, CALL_END, MISSED)

#: the CLI's call fields (store.queries.CALL_FIELDS, in its order): copied, not
#: imported, as adapters stay apart; tests/test_webhooks.py checks they agree
CALL_FIELDS = ("call_id", "started_at", "did", "caller", "channel", "source", "medium",
               "campaign", "status", "ring_seconds", "talk_seconds", "duration_seconds",
               "answered_by", "hangup_cause", "recording", "tracking", "label", "caller_name",
               "forward_to", "ended_at", "note", "close_reason", "pool", "confidence",
               "session", "first_time", "target", "target_rule", "promo_code", "promo_entry",
               "promo_status", "recording_deleted_at", "recording_deleted_reason")
#: what only following the call (AMI) or judging it tells: unknown at its start
_PROGRESS = frozenset({"ring_seconds", "talk_seconds", "duration_seconds", "answered_by",
                       "hangup_cause", "recording", "ended_at", "close_reason", "first_time",
                       "target", "target_rule", "recording_deleted_at",
                       "recording_deleted_reason"})


def view(event: str, call: Mapping[str, Any]) -> dict[str, Any]:
    """The `data` of `event` for this call dict (other events: the dict as it is)."""
    if event == CALL_START:
        data = {name: None if name in _PROGRESS else call.get(name) for name in CALL_FIELDS}
        data["status"] = "new"
        return data
    if event == CALL_ANSWER:
        data = view(CALL_START, call)
        data.update(status="answered", answered_by=call.get("answered_by"),
                    recording=call.get("recording"), answered_at=call.get("answered_at"))
        return data
    return dict(call)


def call_of(a: Attribution, *, iso: Any) -> dict[str, Any]:
    """The call dict of a just-made attribution (what `ctrackd calls` shows once it is
    saved and nothing else is known), without reading the store back: the AGI route's
    save queues `call_start` in the same write batch as the record. `iso`: the CLI's
    time format (outbox.iso_utc)."""
    call: dict[str, Any] = dict.fromkeys(CALL_FIELDS)
    call.update(
        call_id=a.call_id, started_at=iso(a.started_at), did=a.did, caller=a.caller,
        channel=a.channel, source=a.source, medium=a.medium, campaign=a.campaign,
        status="new", tracking=a.tracking.value, label=a.label, caller_name=a.caller_name,
        forward_to=a.forward_to, note=a.note, pool=a.pool, confidence=a.confidence,
        session=dict(a.session) if a.session is not None else None,
        promo_code=a.promo_code,
        promo_entry=a.promo_entry.value if a.promo_entry else None,
        promo_status=a.promo_status.value if a.promo_status else None)
    return call
