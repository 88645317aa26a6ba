"""Channel-variable names shared by the dialplan, the AGI routes, the AMI side and ctrackd-agi.

They are a contract with `asterisk-dialplan/extensions_ctrackd.conf` and the
`channelvars` line of `manager_ctrackd.conf`: rename one here and there in
the same commit (tests/test_dialplan.py checks the dialplan uses them).
It lives outside `agi/` and `ami/` because both sides speak it and adapters
do not import each other.
"""

from __future__ import annotations

from ctrackd.attribution.plan import operator_display_name
from ctrackd.attribution.records import Attribution

#: inherited to every leg, listed in manager.conf channelvars: links AMI events to the call
CALL_ID_VAR = "CTRACK_CALL_ID"
#: inherited, listed in channelvars: the channel key, visible on every leg's AMI events
CHANNEL_VAR = "CTRACK_CHANNEL"
#: the caller-ID name as it arrived, kept by the dialplan before we change it
ORIG_NAME_VAR = "CTRACK_ORIG_NAME"

SOURCE_VAR = "CTRACK_SOURCE"
MEDIUM_VAR = "CTRACK_MEDIUM"
CAMPAIGN_VAR = "CTRACK_CAMPAIGN"
LABEL_VAR = "CTRACK_LABEL"
FORWARD_VAR = "CTRACK_FORWARD"
RING_TIMEOUT_VAR = "CTRACK_RING_TIMEOUT"
RECORDING_VAR = "CTRACK_RECORDING"
CALLERID_NAME_VAR = "CTRACK_CALLERID_NAME"
TRACKING_VAR = "CTRACK_TRACKING"
#: the digits the caller keyed on a promo line (CTRACK_TRACKING says whether they matched)
PROMO_CODE_VAR = "CTRACK_PROMO_CODE"
#: operator tagging: a sound played to the operator before the bridge (Dial U()),
#: and "1" to add X-CTrack-* headers to the operator's INVITE (Dial b() pre-dial handler)
WHISPER_VAR = "CTRACK_WHISPER"
SIP_HEADERS_VAR = "CTRACK_SIP_HEADERS"
#: inherited one level (single "_") so the pre-dial handler on the called leg reads them
HEADER_CHANNEL_VAR = "CTRACK_HDR_CHANNEL"
HEADER_CAMPAIGN_VAR = "CTRACK_HDR_CAMPAIGN"

#: what the dialplan cannot do without, when not everything fits in one AGI line
ESSENTIAL_VARS = frozenset({FORWARD_VAR, RING_TIMEOUT_VAR, RECORDING_VAR, TRACKING_VAR,
                            "__" + CHANNEL_VAR})

#: a SIP phone shows some 20-40 characters: more is noise on the AGI line
DISPLAY_NAME_MAX = 64

#: the variables manager.conf must list in `channelvars`
MANAGER_CHANNELVARS = (CALL_ID_VAR, CHANNEL_VAR)


def channel_variables(attribution: Attribution) -> list[tuple[str, str]]:
    """What the dialplan reads after the AGI, from the daemon's route or ctrackd-agi alike.

    Here, not in `agi/routes.py`, because ctrackd-agi runs once per call and
    must not import asyncio and structlog for it (a tenth of a second).
    """
    recording = attribution.recording_path
    variables = [
        ("__" + CHANNEL_VAR, attribution.channel or ""),  # inherited: on every leg's events
        (SOURCE_VAR, attribution.source or ""),
        (MEDIUM_VAR, attribution.medium or ""),
        (CAMPAIGN_VAR, attribution.campaign or ""),
        (LABEL_VAR, attribution.label or ""),
        (FORWARD_VAR, attribution.forward_to),
        (RING_TIMEOUT_VAR, str(attribution.ring_timeout)),
        # MixMonitor takes a name relative to the monitor folder; the record keeps the path
        (RECORDING_VAR, recording.rsplit("/", 1)[-1] if recording else ""),
        (CALLERID_NAME_VAR, operator_display_name(
            attribution.label, attribution.caller_name)[:DISPLAY_NAME_MAX]),
        (TRACKING_VAR, attribution.tracking.value),
    ]
    # Sent only when set (bytes on the AGI line are post-dial delay); the
    # dialplan clears them before the AGI, so nothing stale is read.
    if attribution.promo_code:
        variables.append((PROMO_CODE_VAR, attribution.promo_code))
    if attribution.whisper:
        variables.append((WHISPER_VAR, attribution.whisper))
    if attribution.sip_headers:
        variables += [(SIP_HEADERS_VAR, "1"),
                      ("_" + HEADER_CHANNEL_VAR, _header_value(attribution.channel)),
                      ("_" + HEADER_CAMPAIGN_VAR, _header_value(attribution.campaign))]
    return variables


def _header_value(value: str | None) -> str:
    """A SIP header value: one line of printable text (a CR/LF would start a new header)."""
    return "".join(ch for ch in (value or "") if ch.isprintable())[:DISPLAY_NAME_MAX]
