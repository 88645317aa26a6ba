"""Static tracking: which ad channel a dialled number stands for, and where the call goes.

`StaticPlan` is the part of the config the attribution needs, already
normalised (DIDs in E.164). `attribute_static` is the whole decision for a
call on a static number: a pure function, so the FastAGI route and the
fallback stdin script give the same answer for the same call.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass, field

from ctrackd.attribution.numbers import normalise_number
from ctrackd.attribution.records import Attribution, Tracking


@dataclass(frozen=True, slots=True)
class TargetRule:
    """When a call counts as a target call (a lead): all conditions must hold.

    `unique_days` > 0: only the caller's first call within that many days counts.
    """

    min_talk_seconds: float = 30.0
    answered: bool = True
    unique_days: int = 0


@dataclass(frozen=True, slots=True)
class Channel:
    """An advertising channel: where the operator's phone says the call comes from."""

    key: str
    label: str
    source: str | None = None
    medium: str | None = None
    campaign: str | None = None
    forward_to: str | None = None
    # operator tagging (None: the defaults' setting)
    whisper: str | None = None       # sound file played to the operator before the bridge
    sip_headers: bool | None = None  # X-CTrack-Channel / X-CTrack-Campaign on the INVITE
    target: TargetRule | None = None  # None: the global rule (`targets:`)


@dataclass(frozen=True, slots=True)
class TrackingNumber:
    """A DID on the trunk that stands for one channel."""

    did: str
    channel: str
    forward_to: str | None = None
    tracking: str = "static"         # "promo": the caller is asked for a promo code first


@dataclass(frozen=True, slots=True)
class StaticPlan:
    channels: dict[str, Channel]
    numbers: dict[str, TrackingNumber]  # by E.164 DID
    default_forward: str
    default_ring_timeout: int
    region: str
    recordings_dir: str | None = None
    unknown_label: str = field(default="?")
    default_whisper: str | None = None
    default_sip_headers: bool = False


def operator_tagging(plan: StaticPlan, channel: Channel | None) -> tuple[str | None, bool]:
    """(whisper sound, SIP headers on?) for a call of `channel`: its own setting or the default."""
    whisper = channel.whisper if channel and channel.whisper else plan.default_whisper
    headers = (channel.sip_headers if channel and channel.sip_headers is not None
               else plan.default_sip_headers)
    return whisper, headers


# Recording names end up in MixMonitor's argument and in the post-recording
# command: only characters that are harmless there (never caller-ID data).
_UNSAFE_FILE_CHARS = re.compile(r"[^A-Za-z0-9._-]")


def recording_name(call_id: str) -> str:
    """The MixMonitor file name for a call, safe in a file name and a shell."""
    return "ctrackd-" + _UNSAFE_FILE_CHARS.sub("_", call_id) + ".wav"


def recording_path(plan: StaticPlan, call_id: str) -> str:
    """Where Asterisk's MixMonitor will write this call (the monitor dir + the name)."""
    name = recording_name(call_id)
    return posixpath.join(plan.recordings_dir, name) if plan.recordings_dir else name


def operator_display_name(label: str | None, original_name: str | None) -> str:
    """`[label] original name`: what the operator's phone shows before pick-up."""
    name = (original_name or "").strip()
    if name.lower() in {"unknown", "<unknown>"}:
        name = ""
    if not label:
        return name
    return f"[{label}] {name}".rstrip()


def attribute_static(
    plan: StaticPlan,
    *,
    call_id: str,
    did: str | None,
    caller: str | None,
    caller_name: str | None,
    now: float,
    tracking: Tracking = Tracking.STATIC,
    note: str | None = None,
) -> Attribution:
    """Attribute a call on a tracking number to its channel.

    An unknown DID is not an error for the caller: the call goes to the
    default target and the record says why (`note`).
    """
    did_e164 = normalise_number(did, plan.region)
    number = plan.numbers.get(did_e164) if did_e164 else None
    channel = plan.channels.get(number.channel) if number else None
    if number is None:
        note = note or "unknown_did"
    forward_to = (
        (number.forward_to if number else None)
        or (channel.forward_to if channel else None)
        or plan.default_forward
    )
    whisper, sip_headers = operator_tagging(plan, channel)
    return Attribution(
        call_id=call_id,
        started_at=now,
        did=did_e164,
        caller=normalise_number(caller, plan.region),
        caller_name=clean_name(caller_name),
        tracking=tracking,
        channel=channel.key if channel else None,
        source=channel.source if channel else None,
        medium=channel.medium if channel else None,
        campaign=channel.campaign if channel else None,
        label=channel.label if channel else None,
        forward_to=forward_to,
        ring_timeout=plan.default_ring_timeout,
        recording_path=recording_path(plan, call_id),
        note=note,
        whisper=whisper,
        sip_headers=sip_headers,
    )


def fallback_attribution(plan: StaticPlan, *, call_id: str, did: str | None, caller: str | None,
                         caller_name: str | None, now: float, error: str) -> Attribution:
    """The attribution used when attributing itself failed: default target, reason kept."""
    return Attribution(
        call_id=call_id, started_at=now, did=normalise_number(did, plan.region) if did else None,
        caller=None, caller_name=clean_name(caller_name), tracking=Tracking.STATIC,
        channel=None, source=None, medium=None, campaign=None, label=None,
        forward_to=plan.default_forward, ring_timeout=plan.default_ring_timeout,
        recording_path=recording_path(plan, call_id),
        note=f"internal_error: {error}",
    )


def clean_name(name: str | None) -> str | None:
    """A caller-ID name as a record keeps it: None for missing or `<unknown>`."""
    if name is None:
        return None
    name = name.strip()
    return None if name.lower() in {"", "unknown", "<unknown>"} else name
