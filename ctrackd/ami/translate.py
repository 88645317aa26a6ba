"""AMI messages -> core events: one explicit table, event name -> translator.

Most of a busy Asterisk's AMI traffic (VarSet, Newexten, DeviceStateChange,
RTCP...) means nothing to a call tracker: the table has no entry for it and
the lookup is the only work done. A message that lacks a header its
translator needs gives `None` (and is counted by the consumer), never an
exception: bad AMI input must not stop the daemon.

Messages come from panoramisk as case-insensitive dicts; a header that
repeats (ChanVariable) is a list, a single one a str. Tests feed plain dicts.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from ctrackd.variables import CALL_ID_VAR
from ctrackd.attribution.events import (
    AsteriskBooted,
    AsteriskShutdown,
    BridgeEntered,
    ChannelCreated,
    ChannelHungUp,
    CoreEvent,
    DialBegan,
    DialEnded,
    DialStatusSet,
    DtmfBegan,
    DtmfEnded,
    HangupRequested,
    Leg,
)

Message = Mapping[str, Any]
Translator = Callable[[Message, float], CoreEvent | None]

_CALL_ID_PREFIX = CALL_ID_VAR + "="


def message_time(message: Message, received_at: float) -> float:
    """Asterisk's own `Timestamp` (manager.conf timestampevents=yes), else when we read it."""
    stamp = message.get("Timestamp")
    if stamp:
        try:
            value = float(stamp)
        except (TypeError, ValueError):
            return received_at
        if math.isfinite(value) and value > 0:  # "nan", "inf": not a time
            return value
    return received_at


def call_id_of(message: Message) -> str | None:
    """The CTRACK_CALL_ID channel variable of the event's channel, if set."""
    values = message.get("ChanVariable")
    if values is None:
        return None
    for value in (values,) if isinstance(values, str) else values:
        if isinstance(value, str) and value.startswith(_CALL_ID_PREFIX):
            return value[len(_CALL_ID_PREFIX):] or None
    return None


def leg_of(message: Message) -> Leg | None:
    """The channel an event is about (None when it names no usable Uniqueid).

    A header that repeats comes as a list: for the ids that is bad input,
    not a channel.
    """
    uniqueid, linkedid = message.get("Uniqueid"), message.get("Linkedid")
    if not uniqueid or not isinstance(uniqueid, str):
        return None
    channel = message.get("Channel")
    return Leg(uniqueid=uniqueid, linkedid=linkedid if isinstance(linkedid, str) and linkedid
               else uniqueid, channel=channel if isinstance(channel, str) else "",
               call_id=call_id_of(message))


def _str(message: Message, key: str) -> str | None:
    """A header's text; a repeated header (a list) where one is expected is no value."""
    value = message.get(key)
    return value if isinstance(value, str) else None


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _text(value: Any) -> str | None:
    if not value or value in ("<unknown>", "unknown"):
        return None
    return str(value)


def on_newchannel(message: Message, ts: float) -> CoreEvent | None:
    leg = leg_of(message)
    if leg is None:
        return None
    return ChannelCreated(ts=ts, leg=leg, exten=_text(_str(message, "Exten")),
                          caller_num=_text(_str(message, "CallerIDNum")))


def on_dial_begin(message: Message, ts: float) -> CoreEvent | None:
    leg, dest = leg_of(message), _str(message, "DestUniqueid")
    if leg is None or not dest:
        return None
    return DialBegan(ts=ts, leg=leg, dest_uniqueid=dest,
                     dest_channel=_str(message, "DestChannel") or "",
                     dial_string=_text(_str(message, "DialString")))


def on_dial_end(message: Message, ts: float) -> CoreEvent | None:
    leg, dest, status = leg_of(message), _str(message, "DestUniqueid"), _str(message, "DialStatus")
    if leg is None or not dest or not status:
        return None
    return DialEnded(ts=ts, leg=leg, dest_uniqueid=dest,
                     dest_channel=_str(message, "DestChannel") or "", dial_status=status)


def on_var_set(message: Message, ts: float) -> CoreEvent | None:
    # Only with the `dialplan` read class; CHANUNAVAIL is otherwise known
    # from the hang-up cause alone (no DialBegin/DialEnd exists for it).
    if _str(message, "Variable") != "DIALSTATUS":
        return None
    leg, value = leg_of(message), _str(message, "Value")
    if leg is None or not value:
        return None
    return DialStatusSet(ts=ts, leg=leg, dial_status=value)


def on_bridge_enter(message: Message, ts: float) -> CoreEvent | None:
    leg = leg_of(message)
    if leg is None:
        return None
    return BridgeEntered(ts=ts, leg=leg, bridge_id=_str(message, "BridgeUniqueid") or "")


def on_hangup_request(message: Message, ts: float) -> CoreEvent | None:
    leg = leg_of(message)
    if leg is None:
        return None
    return HangupRequested(ts=ts, leg=leg, cause=_int(_str(message, "Cause")))


def on_hangup(message: Message, ts: float) -> CoreEvent | None:
    leg = leg_of(message)
    if leg is None:
        return None
    return ChannelHungUp(ts=ts, leg=leg, cause=_int(_str(message, "Cause")),
                         cause_txt=_text(_str(message, "Cause-txt")))


def _key(message: Message) -> tuple[Leg, str, str] | None:
    """The channel, digit and direction of a DTMF event (None when one is missing)."""
    leg, digit, direction = leg_of(message), _str(message, "Digit"), _str(message, "Direction")
    if leg is None or not digit or len(digit) != 1 or not direction:
        return None
    return leg, digit, direction


def on_dtmf_begin(message: Message, ts: float) -> CoreEvent | None:
    key = _key(message)
    return None if key is None else DtmfBegan(ts, *key)


def on_dtmf_end(message: Message, ts: float) -> CoreEvent | None:
    key = _key(message)
    return None if key is None else DtmfEnded(ts, *key)


def on_fully_booted(message: Message, ts: float) -> CoreEvent | None:
    return AsteriskBooted(ts=ts)


def on_shutdown(message: Message, ts: float) -> CoreEvent | None:
    return AsteriskShutdown(ts=ts)


#: the AMI events a call tracker needs; everything else is dropped unread
TRANSLATORS: dict[str, Translator] = {
    "Newchannel": on_newchannel,
    "DialBegin": on_dial_begin,
    "DialEnd": on_dial_end,
    "VarSet": on_var_set,
    "BridgeEnter": on_bridge_enter,
    "HangupRequest": on_hangup_request,
    "Hangup": on_hangup,
    "DTMFBegin": on_dtmf_begin,      # the operator's `*` + promo code (tracker.py)
    "DTMFEnd": on_dtmf_end,
    "FullyBooted": on_fully_booted,
    "Shutdown": on_shutdown,
}


# Wanted only with a header that matters (checked in the raw text, below).
_NARROWED = ("VarSet", "DTMFBegin", "DTMFEnd")
_WANTED_HEADS = tuple(f"Event: {name}\r\n" for name in TRANSLATORS if name not in _NARROWED)
_DTMF_HEADS = ("Event: DTMFBegin\r\n", "Event: DTMFEnd\r\n")


def wanted(raw: str) -> bool:
    """Whether a raw AMI message (text, before parsing) can mean anything to the tracker.

    Given to the AMI connection so that noise (Newexten, DeviceStateChange,
    RTCP, most VarSets...) is never parsed at all. Only the DIALSTATUS VarSet
    is wanted among the VarSets, and among the DTMF events (each key shows
    four times, begin and end on both legs) only the `Received` ones: the
    same key `Sent` on the bridged leg is the copy, never a key press.
    """
    if raw.startswith(_WANTED_HEADS):
        return True
    if raw.startswith(_DTMF_HEADS):  # the raw text ends without its line's CRLF
        return "\r\nDirection: Received\r\n" in raw or raw.endswith("\r\nDirection: Received")
    return raw.startswith("Event: VarSet\r\n") and "\r\nVariable: DIALSTATUS\r\n" in raw


def translate(message: Message, received_at: float) -> CoreEvent | None:
    """The core event for one AMI message, or None when it means nothing to us."""
    translator = TRANSLATORS.get(_str(message, "Event") or "")
    if translator is None:
        return None
    return translator(message, message_time(message, received_at))
