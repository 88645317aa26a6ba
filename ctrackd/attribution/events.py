"""Core events: what the AMI adapter tells the call state machine.

The adapter turns each AMI message into at most one of these (most AMI
traffic becomes nothing). They carry only what the tracker needs, already
typed, so the tracker never sees a raw header and the scenario tests can
build them by hand.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Leg:
    """One channel of a call, as an event names it.

    `call_id` is the CTRACK_CALL_ID channel variable when the event carries
    it (None on Newchannel and before the dialplan set it).
    """

    uniqueid: str
    linkedid: str
    channel: str
    call_id: str | None = None


@dataclass(frozen=True, slots=True)
class ChannelCreated:        # Newchannel
    ts: float
    leg: Leg
    exten: str | None
    caller_num: str | None


@dataclass(frozen=True, slots=True)
class DialBegan:             # DialBegin (Dial and Queue both emit it)
    ts: float
    leg: Leg                 # the calling leg
    dest_uniqueid: str
    dest_channel: str
    dial_string: str | None


@dataclass(frozen=True, slots=True)
class DialEnded:             # DialEnd
    ts: float
    leg: Leg
    dest_uniqueid: str
    dest_channel: str
    dial_status: str         # ANSWER BUSY NOANSWER CANCEL CHANUNAVAIL CONGESTION ...


@dataclass(frozen=True, slots=True)
class DialStatusSet:         # VarSet DIALSTATUS=... (only with the dialplan event class)
    ts: float
    leg: Leg
    dial_status: str


@dataclass(frozen=True, slots=True)
class BridgeEntered:         # BridgeEnter
    ts: float
    leg: Leg
    bridge_id: str


@dataclass(frozen=True, slots=True)
class HangupRequested:       # HangupRequest (SoftHangupRequest is not the caller)
    ts: float
    leg: Leg
    cause: int | None


@dataclass(frozen=True, slots=True)
class ChannelHungUp:         # Hangup
    ts: float
    leg: Leg
    cause: int | None
    cause_txt: str | None


@dataclass(frozen=True, slots=True)
class ListedChannel:         # one CoreShowChannel
    leg: Leg
    state: str = ""          # ChannelStateDesc: Up, Ring, Ringing, ...
    bridge_id: str | None = None


@dataclass(frozen=True, slots=True)
class ChannelsListed:        # the answer to CoreShowChannels, applied as one event
    """The live channels at one moment, and the calls we knew when we asked.

    Only calls known *before* the question can be judged gone: a call that
    began while the answer was on its way is simply not in it yet.
    """

    ts: float
    channels: tuple[ListedChannel, ...]
    known_before: frozenset[str]


@dataclass(frozen=True, slots=True)
class CallAttributed:        # not from AMI: the AGI side wrote a record for this call
    """Tells the tracker a call exists even if AMI is down and never shows it.

    The daemon queues it behind the AMI events, so a resync can judge the
    call and its start is the attribution's, not whatever event came first.
    """

    ts: float
    call_id: str


@dataclass(frozen=True, slots=True)
class DtmfBegan:             # DTMFBegin
    ts: float
    leg: Leg
    digit: str
    direction: str           # "Received" (from the channel's far end) or "Sent"


@dataclass(frozen=True, slots=True)
class DtmfEnded:             # DTMFEnd
    """The end of a key press; only one that follows its DtmfBegan is a key press.

    Asterisk also reports digits it queued itself (an attended transfer's
    feature code sent by the Atxfer action) as DTMFEnd alone.
    """

    ts: float
    leg: Leg
    digit: str
    direction: str


@dataclass(frozen=True, slots=True)
class AsteriskBooted:        # FullyBooted
    ts: float


@dataclass(frozen=True, slots=True)
class AsteriskShutdown:      # Shutdown
    ts: float


CoreEvent = (ChannelCreated | DialBegan | DialEnded | DialStatusSet | BridgeEntered
             | HangupRequested | ChannelHungUp | ChannelsListed | CallAttributed
             | DtmfBegan | DtmfEnded | AsteriskBooted | AsteriskShutdown)


# -- what the tracker tells besides call records (CallTracker.take_notices) ----

@dataclass(frozen=True, slots=True)
class OperatorCodeKeyed:
    """The operator keyed the prefix and a code on a tracked call's phone leg.

    `complete`: as many digits as a code has; False when `#` ended it early
    (a code that cannot be live: recorded as unknown).
    """

    ts: float
    call_id: str
    code: str
    complete: bool
    endpoint: str | None     # the phone that keyed it, e.g. "PJSIP/101"


@dataclass(frozen=True, slots=True)
class OutboundAnswered:
    """An office phone's call to an outside number was answered (not a tracked call).

    `uniqueid` is the dialling channel's; `number` is E.164.
    """

    ts: float
    uniqueid: str
    number: str
    endpoint: str | None     # the dialling channel's endpoint, e.g. "PJSIP/101"


Notice = OperatorCodeKeyed | OutboundAnswered
