"""The call record, in two halves written by two different sides.

`Attribution` is decided once, when Asterisk asks over FastAGI (or the fallback
stdin script asks): who the call is attributed to and where it goes.
`CallProgress` is what the AMI side learns while following the call. The store
keeps both halves in one row and lets each side update only its own columns,
so neither can clobber the other whatever order they arrive in.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class CallStatus(StrEnum):
    NEW = "new"              # attributed, nothing dialled yet
    RINGING = "ringing"      # a Dial/Queue is ringing somebody
    ANSWERED = "answered"
    BUSY = "busy"
    NO_ANSWER = "no_answer"
    ABANDONED = "abandoned"  # the caller hung up before anyone answered
    FAILED = "failed"        # unavailable, congestion
    UNKNOWN = "unknown"      # ended while nobody could see how (closed by a resync)


#: statuses of a call that has not ended yet
OPEN_STATUSES = frozenset({CallStatus.NEW, CallStatus.RINGING, CallStatus.ANSWERED})

#: the statuses that count as "missed" in reports
MISSED_STATUSES = frozenset({CallStatus.BUSY, CallStatus.NO_ANSWER, CallStatus.ABANDONED,
                             CallStatus.FAILED})


class PromoStatus(StrEnum):
    """What became of the promo code of a call on a promo line (or keyed by the operator)."""

    PENDING = "pending"      # the caller is being asked (the record exists before the code)
    MATCHED = "matched"      # the code named a live session: tracking is `promo`
    UNKNOWN = "unknown"      # digits that are no live code (wrong, or expired long ago)
    SKIPPED = "skipped"      # the caller pressed # alone
    NO_INPUT = "no_input"    # nothing keyed on any try (or the caller hung up)


class PromoEntry(StrEnum):
    """Who keyed the code."""

    CALLER = "caller"        # on the promo line's prompt (AGI GET DATA)
    OPERATOR = "operator"    # `*` + code on the operator's phone during the call (AMI DTMF)


class Tracking(StrEnum):
    STATIC = "static"        # attributed by the daemon from the dialled number
    DYNAMIC = "dynamic"      # a pool number: attributed to the web session holding it
    PROMO = "promo"          # a promo code (keyed by the caller or the operator) named the session
    FALLBACK = "fallback"    # attributed by ctrackd-agi while the daemon was unreachable
    UNTRACKED = "untracked"  # seen on AMI only (no attribution reached the store)


@dataclass(frozen=True, slots=True)
class Attribution:
    """What the AGI side decided for a call; written once, before Asterisk dials."""

    call_id: str
    started_at: float
    did: str | None
    caller: str | None
    caller_name: str | None
    tracking: Tracking
    channel: str | None
    source: str | None
    medium: str | None
    campaign: str | None
    label: str | None
    forward_to: str
    ring_timeout: int
    recording_path: str | None
    note: str | None = None
    # dynamic tracking (a pool number): which pool, whose session, how sure
    pool: str | None = None
    session_id: str | None = None
    confidence: str | None = None            # exact, shared, expired, none
    session: Mapping[str, Any] | None = None  # the session's fields (UTM, click ids, ...)
    # promo codes: the digits keyed, by whom, and what they gave
    promo_code: str | None = None
    promo_entry: PromoEntry | None = None
    promo_status: PromoStatus | None = None
    # operator tagging, sent to the dialplan only (not stored): a sound file
    # played to the operator before the bridge, and whether to add the
    # X-CTrack-* SIP headers to the operator's INVITE
    whisper: str | None = None
    sip_headers: bool = False


#: Attribution fields that go to the dialplan only, never to the store
NOT_STORED = frozenset({"whisper", "sip_headers"})


@dataclass(slots=True)
class CallProgress:
    """What following the call taught us; rewritten at each transition."""

    call_id: str
    started_at: float
    status: CallStatus = CallStatus.NEW
    did: str | None = None
    caller: str | None = None
    answered_at: float | None = None
    answered_by: str | None = None
    ended_at: float | None = None
    ring_seconds: float | None = None
    talk_seconds: float | None = None
    duration_seconds: float | None = None
    hangup_cause: int | None = None
    hangup_cause_txt: str | None = None
    dial_status: str | None = None
    close_reason: str | None = None

    @property
    def is_open(self) -> bool:
        return self.ended_at is None

    def finish(self, status: CallStatus, ended_at: float, reason: str, *,
               measured: bool = True) -> None:
        """Close the call and derive the three durations the way Asterisk's CDR does.

        `measured=False`: the call ended while nobody watched (closed by a
        resync); the durations stay unknown.

        duration = end - start, talk = end - answer (billsec), ring = the rest:
        so `ring + talk == duration` always holds, and a clock that steps
        backwards cannot give negative figures.
        """
        self.status = status
        self.ended_at = max(ended_at, self.started_at)
        self.close_reason = reason
        if not measured:  # the end was not seen: no durations rather than wrong ones
            self.ring_seconds = self.talk_seconds = self.duration_seconds = None
            return
        self.duration_seconds = round(self.ended_at - self.started_at, 3)
        if self.answered_at is not None:
            answered = min(max(self.answered_at, self.started_at), self.ended_at)
            self.talk_seconds = round(self.ended_at - answered, 3)
        else:
            self.talk_seconds = 0.0
        self.ring_seconds = round(self.duration_seconds - self.talk_seconds, 3)
