"""The one entry point of attribution: a call on a number, static or from a pool.

The FastAGI route calls `attribute_call` and nothing else, so a number moved
from `numbers:` to a pool changes no adapter. A pool number is attributed to
the web session that held it when the call arrived (dynamic.py decides who
and how sure); everything else is static (plan.py).

A promo code (keyed by the caller on a promo line, or by the operator) then
re-attributes a call with `attribute_promo`: to the session the code names,
or, when it names none, the call keeps its number's channel and says why.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from ctrackd.attribution.dynamic import DynamicPlan, attribute_pool_call, call_channel
from ctrackd.attribution.numbers import normalise_number
from ctrackd.attribution.plan import (
    StaticPlan,
    attribute_static,
    clean_name,
    operator_tagging,
    recording_path,
)
from ctrackd.attribution.pools import Confidence, PoolSpec
from ctrackd.attribution.records import Attribution, PromoEntry, PromoStatus, Tracking
from ctrackd.attribution.sessions import VisitorSession, match_channel, session_fields

#: the note of a promo line's call when nobody could ask for the code
PROMO_NOT_ASKED = "promo_not_asked"


def attribute_call(static: StaticPlan, dynamic: DynamicPlan | None, *, call_id: str,
                   did: str | None, caller: str | None, caller_name: str | None,
                   now: float, pools: Sequence[PoolSpec] = (),
                   tracking: Tracking = Tracking.STATIC) -> Attribution:
    """`pools` serve when there is no live plan (ctrackd-agi while the daemon is
    down): a pool number still goes to its pool's target, with no session."""
    did_e164 = normalise_number(did, static.region)
    if dynamic is not None and did_e164 is not None and did_e164 in dynamic.by_number:
        return _attribute_pool_number(static, dynamic, call_id=call_id, did=did_e164,
                                      caller=caller, caller_name=caller_name, now=now)
    attribution = attribute_static(static, call_id=call_id, did=did, caller=caller,
                                   caller_name=caller_name, now=now, tracking=tracking)
    spec = next((p for p in pools if did_e164 in p.numbers), None)
    if dynamic is None and spec is not None:
        channel = static.channels.get(spec.channel) if spec.channel else None
        whisper, sip_headers = operator_tagging(static, channel)
        return replace(
            attribution, channel=channel.key if channel else None,
            source=channel.source if channel else None,
            medium=channel.medium if channel else None,
            campaign=channel.campaign if channel else None,
            label=channel.label if channel else spec.name,
            forward_to=(spec.forward_to or (channel.forward_to if channel else None)
                        or static.default_forward),
            note="no_session", pool=spec.name, confidence=Confidence.NONE.value,
            whisper=whisper, sip_headers=sip_headers)
    return attribution


def _attribute_pool_number(static: StaticPlan, dynamic: DynamicPlan, *, call_id: str, did: str,
                           caller: str | None, caller_name: str | None,
                           now: float) -> Attribution:
    session, confidence = attribute_pool_call(dynamic, did, now)
    spec = dynamic.pool_of(did)
    assert spec is not None  # did is in by_number
    key = call_channel(dynamic, did, session)
    channel = static.channels.get(key) if key else None
    # The visit's own UTM tags describe this call better than the channel's
    # defaults (a "google" channel covers many campaigns).
    source = (session.source if session else None) or (channel.source if channel else None)
    medium = (session.medium if session else None) or (channel.medium if channel else None)
    campaign = ((session.campaign if session else None)
                or (channel.campaign if channel else None))
    whisper, sip_headers = operator_tagging(static, channel)
    return Attribution(
        call_id=call_id, started_at=now, did=did, caller=normalise_number(caller, static.region),
        caller_name=clean_name(caller_name), tracking=Tracking.DYNAMIC,
        channel=channel.key if channel else None, source=source, medium=medium,
        campaign=campaign, label=channel.label if channel else spec.name,
        forward_to=(spec.forward_to or (channel.forward_to if channel else None)
                    or static.default_forward),
        ring_timeout=static.default_ring_timeout, recording_path=recording_path(static, call_id),
        note=None if session is not None else "no_session",
        pool=spec.name, session_id=session.session_id if session else None,
        confidence=confidence.value if session is not None else Confidence.NONE.value,
        session=session_fields(session) if session is not None else None,
        whisper=whisper, sip_headers=sip_headers,
    )


def attribute_promo(static: StaticPlan, dynamic: DynamicPlan | None, base: Attribution,
                    code: str | None, entry: PromoEntry, status: PromoStatus,
                    session: VisitorSession | None) -> Attribution:
    """`base` (the call as its number attributed it) re-attributed by a promo code.

    A MATCHED session makes the call `promo`: the session's channel by the
    UTM rules (else the number's), its UTM tags (else the channel's), its
    fields, confidence exact (a code names one session). Anything else keeps
    the number's attribution, with the code, who keyed it and what it gave,
    so the record says why the code did not count. The call goes where the
    number sends it, unless only the channel names a target.
    """
    if session is None or status is not PromoStatus.MATCHED:
        return replace(base, promo_code=code, promo_entry=entry, promo_status=status)
    key = (match_channel(dynamic.rules, session) if dynamic is not None
           else session.channel) or base.channel
    channel = static.channels.get(key) if key else None
    number = static.numbers.get(base.did) if base.did else None
    if channel is not None:
        source, medium, campaign = channel.source, channel.medium, channel.campaign
        label = channel.label
        whisper, sip_headers = operator_tagging(static, channel)
    else:
        source, medium, campaign, label = base.source, base.medium, base.campaign, base.label
        whisper, sip_headers = base.whisper, base.sip_headers
    return replace(
        base, tracking=Tracking.PROMO, channel=channel.key if channel else base.channel,
        source=session.source or source, medium=session.medium or medium,
        campaign=session.campaign or campaign, label=label,
        forward_to=((number.forward_to if number else None)
                    or (channel.forward_to if channel else None) or base.forward_to),
        session_id=session.session_id, confidence=Confidence.EXACT.value,
        session=session_fields(session), promo_code=code, promo_entry=entry,
        promo_status=PromoStatus.MATCHED, whisper=whisper, sip_headers=sip_headers)


def is_promo_line(static: StaticPlan, attribution: Attribution) -> bool:
    """The call came in on a number with `tracking: promo` (and was attributed normally)."""
    number = static.numbers.get(attribution.did) if attribution.did else None
    return number is not None and number.tracking == "promo" and attribution.note is None


def promo_not_asked(attribution: Attribution) -> Attribution:
    """A promo line's call on which the code could not be asked (no session knows codes:
    ctrackd-agi while the daemon is down, or no web side): the number's channel, no code."""
    return replace(attribution, promo_status=PromoStatus.NO_INPUT, note=PROMO_NOT_ASKED)
