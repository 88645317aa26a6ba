"""The call state machine: core events in, changed call records out.

One `CallTracker` follows every tracked call on one Asterisk. It is fed the
core events of `events.py` in the order Asterisk emitted them and answers
with the `CallProgress` records that changed, for the store to persist. It
knows nothing of AMI headers, sockets or SQL, so the scenario tests replay
recorded streams through it and compare complete records.

How a call is recognised: the dialplan sets `__CTRACK_CALL_ID=${UNIQUEID}`
on the inbound leg, so the inbound leg's uniqueid *is* the call id and every
leg's events carry it once it is set. Legs seen before that (a `Newchannel`,
a `DialBegin` destination) are remembered by uniqueid.

Outcome rules (see ../../../shared/asterisk-captures/README.md):
- the first `DialEnd ANSWER` makes the call answered, by that leg's endpoint;
  in a ring group or queue the losers' `CANCEL` is not a failure;
- `BUSY`, `NOANSWER`, `CHANUNAVAIL`/`CONGESTION` from Dial decide a missed
  call's status; a `HangupRequest` with a normal cause on the inbound leg
  before any outcome means the caller gave up (abandoned);
- with no Dial at all (CHANUNAVAIL creates no destination channel) the
  inbound leg's hang-up cause decides;
- a call that the store had open but Asterisk no longer lists after a
  reconnect is closed with reason `gone_after_reconnect`.

Besides records, the tracker gives notices (`take_notices()`):
- `OperatorCodeKeyed`: the operator keyed the prefix and a code on a tracked
  call's phone leg (keypad.py). A key press counts only as a `DTMFEnd` that
  follows a `DTMFBegin` of the same digit on the same channel, received from
  that channel's far end, on a leg that is not the inbound one: the caller's
  own digits (a promo line's prompt) arrive on the inbound leg, and the
  digits the AMI `Atxfer` action queues (capture 12) show as DTMFEnd alone.
  A transfer keyed *on the phone* is different: `*2` + extension with Dial
  option t gives Begin+End pairs like capture 13's, indistinguishable here
  from the operator's `*` + code, so `*2102` may read as code `2102...`.
  The code's check digit (promo.py) rejects nine such sequences in ten, and
  even a passing one counts only if some live session holds it;
  docs/promo.md advises an `operator_prefix` other than the transfer code's
  first key;
- `OutboundAnswered`: a Dial from a channel that belongs to no tracked call
  was answered by an outside number (outbound.py says which): an office
  phone called somebody, who then leaves the callback list.

And the legs (`take_legs()`): every dialled leg of a tracked call, its ring,
answer, end and DialEnd outcome, kept by a `LegBook` (legs.py) for the
operators report.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from ctrackd.attribution.events import (
    AsteriskBooted,
    AsteriskShutdown,
    BridgeEntered,
    CallAttributed,
    ChannelCreated,
    ChannelHungUp,
    ChannelsListed,
    CoreEvent,
    DialBegan,
    DialEnded,
    DialStatusSet,
    DtmfBegan,
    DtmfEnded,
    HangupRequested,
    Leg,
    Notice,
    OperatorCodeKeyed,
    OutboundAnswered,
)
from ctrackd.attribution.keypad import CodeEntry
from ctrackd.attribution.legs import LegBook, LegRecord
from ctrackd.attribution.numbers import normalise_number
from ctrackd.attribution.outbound import dialled_number
from ctrackd.attribution.records import CallProgress, CallStatus

#: DialStatus values that end a Dial without an answer, and the status they give
DIAL_OUTCOMES: dict[str, CallStatus] = {
    "BUSY": CallStatus.BUSY,
    "NOANSWER": CallStatus.NO_ANSWER,
    "CHANUNAVAIL": CallStatus.FAILED,
    "CONGESTION": CallStatus.FAILED,
}

#: Q.850 causes on the inbound leg's hang-up when no Dial told us more
CAUSE_OUTCOMES: dict[int, CallStatus] = {
    17: CallStatus.BUSY,        # user busy
    18: CallStatus.NO_ANSWER,   # no user responding
    19: CallStatus.NO_ANSWER,   # no answer from user
    1: CallStatus.FAILED,       # unallocated number
    3: CallStatus.FAILED,       # no route to destination
    20: CallStatus.FAILED,      # subscriber absent
    21: CallStatus.FAILED,      # call rejected
    27: CallStatus.FAILED,      # destination out of order
    34: CallStatus.FAILED,      # no circuit available (congestion)
    38: CallStatus.FAILED,      # network out of order
    41: CallStatus.FAILED,      # temporary failure
    42: CallStatus.FAILED,      # switching equipment congestion
}

#: causes with which a caller's own hang-up arrives
CALLER_HANGUP_CAUSES = frozenset({None, 0, 16, 31})

# Channels that were created but may never become part of a tracked call
# are remembered only this long (seconds of Asterisk time) to bound memory.
_PENDING_TTL = 3600.0
# How many finished call ids are remembered to ignore their stragglers.
_FINISHED_MEMORY = 10_000
# Notices nobody took (a tracker without a consumer) are not kept forever.
_NOTICES_MAX = 10_000
# Untracked dials (possible outbound calls) remembered until their DialEnd.
_DIALS_MAX = 10_000


@dataclass(slots=True)
class _Dial:
    """An untracked channel's Dial to an outside number, waiting for its DialEnd."""

    ts: float
    number: str


@dataclass(slots=True)
class _Call:
    progress: CallProgress
    endpoints: dict[str, str] = field(default_factory=dict)  # dest uniqueid -> endpoint
    outcome: CallStatus | None = None   # decided once no destination rings any more
    caller_gave_up: bool = False
    request_cause: int | None = None  # a HangupRequest's cause that was not the caller's
    ringing: set[str] = field(default_factory=set)  # destinations dialled, not ended yet
    # Joined mid-call (first seen after the daemon restarted, with no record):
    # a missed status cannot be told from the hang-up alone, so it is unknown.
    joined_late: bool = False
    keypad: CodeEntry | None = None   # the operator's code entry, from the first key
    has_complete_code: bool = False   # a short code no longer overrides once one is complete


class CallTracker:
    """Per-Asterisk call state, in memory; rebuilt from the store after a restart."""

    def __init__(self, region: str = "RU", *, operator_prefix: str = "*",
                 code_length: int = 4) -> None:
        self.region = region  # for normalising numbers seen on AMI; a reload may change it
        # PromoConfig.operator_prefix / length; a reload may change them (calls
        # already keying keep their entry).
        self.operator_prefix = operator_prefix
        self.code_length = code_length
        self._notices: deque[Notice] = deque(maxlen=_NOTICES_MAX)
        self._dtmf_begun: dict[str, str] = {}  # phone leg uniqueid -> digit pressed, not released
        self._dials: dict[str, _Dial] = {}  # dest uniqueid -> untracked Dial to an outside number
        self._calls: dict[str, _Call] = {}
        self._legs: dict[str, str] = {}  # uniqueid of any known leg -> call id
        self._created: dict[str, ChannelCreated] = {}  # Newchannel not yet tied to a call
        # Calls closed lately: their late or repeated events must not reopen them.
        self._finished: OrderedDict[str, None] = OrderedDict()
        self.legs = LegBook()  # the dialled legs of the open calls (operators report)
        self._handlers = {
            ChannelCreated: self._on_created,
            DialBegan: self._on_dial_began,
            DialEnded: self._on_dial_ended,
            DialStatusSet: self._on_dial_status,
            BridgeEntered: self._on_bridge_entered,
            HangupRequested: self._on_hangup_requested,
            ChannelHungUp: self._on_hung_up,
            ChannelsListed: self._on_channels_listed,
            CallAttributed: self._on_attributed,
            DtmfBegan: self._on_dtmf_began,
            DtmfEnded: self._on_dtmf_ended,
            AsteriskBooted: self._on_booted,
            AsteriskShutdown: self._on_shutdown,
        }

    # -- public -----------------------------------------------------------

    @property
    def open_calls(self) -> int:
        return len(self._calls)

    def known_calls(self) -> frozenset[str]:
        """The calls open now: what a CoreShowChannels answer will be judged against."""
        return frozenset(self._calls)

    def restore(self, progresses: list[CallProgress],
                legs: Iterable[LegRecord] = ()) -> None:
        """Take back the calls (and their legs) the store still has open (after a restart)."""
        for progress in progresses:
            if progress.is_open:
                call = _Call(progress=progress)
                if progress.status == CallStatus.ANSWERED:
                    call.outcome = CallStatus.ANSWERED
                self._calls[progress.call_id] = call
                self._legs[progress.call_id] = progress.call_id
        open_legs = [leg for leg in legs if leg.call_id in self._calls]
        self.legs.restore(open_legs)
        for leg in open_legs:
            self._legs[leg.leg] = leg.call_id
            self._calls[leg.call_id].endpoints[leg.leg] = leg.endpoint

    def apply(self, event: CoreEvent) -> list[CallProgress]:
        """Apply one event; return the records it changed (often none)."""
        return self._handlers[type(event)](event)  # type: ignore[operator]

    def take_legs(self) -> list[LegRecord]:
        """The legs that changed since the last call (one record each, the latest)."""
        return self.legs.take()

    def take_notices(self) -> list[Notice]:
        """The operator codes and outbound calls seen since the last call, in order."""
        notices = list(self._notices)
        self._notices.clear()
        return notices

    # -- resolution of legs to calls ---------------------------------------

    def _call_id_of(self, leg: Leg) -> str | None:
        call_id = leg.call_id or self._legs.get(leg.uniqueid)
        if call_id is None and leg.linkedid in self._calls:
            call_id = leg.linkedid
        return call_id

    def _call_for(self, leg: Leg, ts: float) -> _Call | None:
        call_id = self._call_id_of(leg)
        if call_id is None or call_id in self._finished:
            return None
        call = self._calls.get(call_id)
        if call is None:
            call = self._start(call_id, ts)
        if leg.uniqueid not in self._legs:
            self._legs[leg.uniqueid] = call_id
            self._created.pop(leg.uniqueid, None)
        return call

    def _start(self, call_id: str, ts: float, *, late: bool = True) -> _Call:
        created = self._created.pop(call_id, None)
        progress = CallProgress(call_id=call_id, started_at=created.ts if created else ts)
        if created is not None:
            progress.did = normalise_number(created.exten, self.region)
            progress.caller = normalise_number(created.caller_num, self.region)
        call = _Call(progress=progress, joined_late=late and created is None)
        self._calls[call_id] = call
        self._legs[call_id] = call_id
        return call

    # -- handlers -------------------------------------------------------------

    def _on_created(self, event: ChannelCreated) -> list[CallProgress]:
        call = self._calls.get(event.leg.uniqueid)
        if call is not None:
            # The AGI's word (CallAttributed) overtook this Newchannel in the
            # queue: the channel's creation is the truer start.
            progress = call.progress
            progress.started_at = min(progress.started_at, event.ts)
            progress.did = progress.did or normalise_number(event.exten, self.region)
            progress.caller = progress.caller or normalise_number(event.caller_num, self.region)
            return []
        self._created[event.leg.uniqueid] = event
        if len(self._created) > 10_000:
            horizon = event.ts - _PENDING_TTL
            self._created = {u: e for u, e in self._created.items() if e.ts >= horizon}
        return []

    def _on_attributed(self, event: CallAttributed) -> list[CallProgress]:
        if event.call_id not in self._calls and event.call_id not in self._finished:
            self._start(event.call_id, event.ts, late=False)
        return []

    def _on_dial_began(self, event: DialBegan) -> list[CallProgress]:
        call = self._call_for(event.leg, event.ts)
        if call is None:
            if self._call_id_of(event.leg) is None:
                self._note_untracked_dial(event)
            return []
        call.ringing.add(event.dest_uniqueid)
        if call.progress.answered_at is None:
            call.outcome = None  # ringing again (a queue's next attempt, a transfer)
        endpoint = endpoint_of(event.dest_channel, event.dial_string)
        call.endpoints[event.dest_uniqueid] = endpoint
        self.legs.began(call.progress.call_id, event.dest_uniqueid, endpoint,
                        event.dest_channel, event.ts)
        self._legs[event.dest_uniqueid] = call.progress.call_id
        self._created.pop(event.dest_uniqueid, None)
        if call.progress.status == CallStatus.NEW:
            call.progress.status = CallStatus.RINGING
            return [call.progress]
        return []

    def _on_dial_ended(self, event: DialEnded) -> list[CallProgress]:
        call = self._call_for(event.leg, event.ts)
        if call is None:
            dial = self._dials.pop(event.dest_uniqueid, None)
            if (dial is not None and event.dial_status.upper() == "ANSWER"
                    and self._call_id_of(event.leg) is None):
                self._notices.append(OutboundAnswered(
                    ts=event.ts, uniqueid=event.leg.uniqueid, number=dial.number,
                    endpoint=endpoint_of(event.leg.channel, None) if event.leg.channel else None))
            return []
        status = event.dial_status.upper()
        progress = call.progress
        call.ringing.discard(event.dest_uniqueid)
        self.legs.dial_ended(event.dest_uniqueid, status, event.ts)
        if status == "ANSWER":
            if progress.answered_at is not None:
                return []  # a transfer target answering later: the call was answered already
            progress.answered_at = event.ts
            progress.answered_by = call.endpoints.get(
                event.dest_uniqueid, endpoint_of(event.dest_channel, None))
            progress.status = CallStatus.ANSWERED
            progress.dial_status = status
            call.outcome = CallStatus.ANSWERED
            return [progress]
        return self._note_outcome(call, status)

    def _on_dial_status(self, event: DialStatusSet) -> list[CallProgress]:
        call = self._call_for(event.leg, event.ts)
        if call is None or not event.dial_status:
            return []
        return self._note_outcome(call, event.dial_status.upper())

    def _note_outcome(self, call: _Call, status: str) -> list[CallProgress]:
        """A destination ended unanswered; the call's outcome once none rings any more.

        In a ring group one phone can be busy while another still rings and
        the caller then hangs up: that call was abandoned, not busy.
        """
        outcome = DIAL_OUTCOMES.get(status)
        if outcome is None or call.outcome is not None or call.ringing:
            return []  # CANCEL (a ring-group loser, or the caller left), CONTINUE, ...
        call.outcome = outcome
        call.progress.dial_status = status
        return [call.progress]

    def _on_bridge_entered(self, event: BridgeEntered) -> list[CallProgress]:
        # An answered call is already known from DialEnd; the bridge matters for
        # calls restored after a restart that were answered while we were away.
        call = self._call_for(event.leg, event.ts)
        if call is None or call.progress.answered_at is not None:
            return []
        if event.leg.uniqueid != call.progress.call_id:
            call.progress.answered_at = event.ts
            call.progress.answered_by = call.endpoints.get(
                event.leg.uniqueid, endpoint_of(event.leg.channel, None))
            call.progress.status = CallStatus.ANSWERED
            call.outcome = CallStatus.ANSWERED
            return [call.progress]
        return []

    def _on_hangup_requested(self, event: HangupRequested) -> list[CallProgress]:
        call = self._call_for(event.leg, event.ts)
        if call is None or event.leg.uniqueid != call.progress.call_id:
            return []
        if call.outcome is None and event.cause in CALLER_HANGUP_CAUSES:
            call.caller_gave_up = True
        elif event.cause not in CALLER_HANGUP_CAUSES:
            call.request_cause = event.cause  # e.g. 34 from Congestion() after CHANUNAVAIL
        return []

    def _on_hung_up(self, event: ChannelHungUp) -> list[CallProgress]:
        call = self._call_for(event.leg, event.ts)
        self._created.pop(event.leg.uniqueid, None)
        self._dtmf_begun.pop(event.leg.uniqueid, None)
        self._dials.pop(event.leg.uniqueid, None)  # a dialled channel gone without a DialEnd
        if call is None:
            return []
        call_id = call.progress.call_id
        if event.leg.uniqueid != call_id:
            self._legs.pop(event.leg.uniqueid, None)
            self.legs.hung_up(event.leg.uniqueid, event.ts)
            return []
        call.progress.hangup_cause = event.cause
        call.progress.hangup_cause_txt = event.cause_txt
        call.progress.finish(self._final_status(call, event.cause), event.ts, "hangup")
        return [self._forget(call_id)]

    def _final_status(self, call: _Call, cause: int | None) -> CallStatus:
        if call.progress.answered_at is not None:
            return CallStatus.ANSWERED
        if call.outcome is not None:
            return call.outcome
        if call.caller_gave_up:
            return CallStatus.ABANDONED
        if call.joined_late:
            return CallStatus.UNKNOWN
        return CAUSE_OUTCOMES.get(cause or call.request_cause or 0, CallStatus.ABANDONED)

    def _forget(self, call_id: str) -> CallProgress:
        call = self._calls.pop(call_id)
        self.legs.close_call(call_id, call.progress.ended_at or call.progress.started_at)
        for uniqueid in [call_id, *call.endpoints]:
            self._legs.pop(uniqueid, None)
            self._dtmf_begun.pop(uniqueid, None)
        self._finished[call_id] = None
        if len(self._finished) > _FINISHED_MEMORY:
            self._finished.popitem(last=False)
        return call.progress

    def _close(self, call_id: str, ts: float, reason: str) -> CallProgress:
        """End a call whose hang-up we did not see; keep what we know of it."""
        call = self._calls[call_id]
        status = (CallStatus.ANSWERED if call.progress.answered_at is not None
                  else call.outcome or CallStatus.UNKNOWN)
        # When it really ended is unknown: no made-up ring or talk seconds
        # (they would skew every average of the report).
        call.progress.finish(status, ts, reason, measured=False)
        return self._forget(call_id)

    # -- resynchronisation after a (re)connect ------------------------------

    def _on_booted(self, event: AsteriskBooted) -> list[CallProgress]:
        return []

    # -- outbound calls (office phones calling out) ---------------------------

    def _note_untracked_dial(self, event: DialBegan) -> None:
        number = dialled_number(event.dial_string, self.region)
        if number is None:
            return  # an internal extension, a queue member, a peer: not an outside number
        if len(self._dials) >= _DIALS_MAX:  # DialEnds that never came (lost while away)
            horizon = event.ts - _PENDING_TTL
            self._dials = {u: d for u, d in self._dials.items() if d.ts >= horizon}
            while len(self._dials) >= _DIALS_MAX:
                del self._dials[next(iter(self._dials))]
        self._dials[event.dest_uniqueid] = _Dial(ts=event.ts, number=number)

    # -- the operator's keypad --------------------------------------------------

    def _operator_leg_call(self, leg: Leg, direction: str) -> _Call | None:
        """The tracked call of a phone leg that received a key press; None otherwise.

        `Received` is what the channel's far end (the phone) sent; the inbound
        leg is the caller's (their digits are theirs, not the operator's).
        """
        if direction.lower() != "received":
            return None
        call_id = self._call_id_of(leg)
        if call_id is None or call_id == leg.uniqueid or call_id in self._finished:
            return None
        return self._calls.get(call_id)

    def _on_dtmf_began(self, event: DtmfBegan) -> list[CallProgress]:
        if self._operator_leg_call(event.leg, event.direction) is not None:
            self._dtmf_begun[event.leg.uniqueid] = event.digit
        return []

    def _on_dtmf_ended(self, event: DtmfEnded) -> list[CallProgress]:
        call = self._operator_leg_call(event.leg, event.direction)
        begun = self._dtmf_begun.pop(event.leg.uniqueid, None)
        if call is None or begun != event.digit:
            return []  # a digit Asterisk queued itself (DTMFEnd alone), or not the operator's
        if call.keypad is None:
            call.keypad = CodeEntry(self.operator_prefix, self.code_length)
        keyed = call.keypad.press(event.digit)
        if keyed is None or (not keyed.complete and call.has_complete_code):
            return []  # a short code after a complete one: the complete one stands
        call.has_complete_code |= keyed.complete
        self._notices.append(OperatorCodeKeyed(
            ts=event.ts, call_id=call.progress.call_id, code=keyed.code,
            complete=keyed.complete,
            endpoint=call.endpoints.get(event.leg.uniqueid)
            or (endpoint_of(event.leg.channel, None) if event.leg.channel else None)))
        return []

    def _on_channels_listed(self, event: ChannelsListed) -> list[CallProgress]:
        """Close every call we knew that Asterisk no longer has: it ended unseen.

        Live tracked calls we did not know (they began while we were away)
        are taken in; one whose destination leg is up and bridged was
        answered while we could not see (when exactly is unknown: from now).
        """
        live: set[str] = set()
        changed: list[CallProgress] = []
        for listed in event.channels:
            leg = listed.leg
            call_id = self._call_id_of(leg)
            if call_id is None or call_id in self._finished:
                continue
            live.add(call_id)
            call = self._calls.get(call_id) or self._start(call_id, event.ts)
            self._legs.setdefault(leg.uniqueid, call_id)
            if (leg.uniqueid != call_id and listed.state == "Up" and listed.bridge_id
                    and call.progress.answered_at is None):
                call.progress.answered_at = event.ts
                call.progress.answered_by = endpoint_of(leg.channel, None)
                call.progress.status = CallStatus.ANSWERED
                call.outcome = CallStatus.ANSWERED
                changed.append(call.progress)
        gone = [c for c in event.known_before if c in self._calls and c not in live]
        # Newchannel events of calls we never learned about are stale now too.
        self._created.clear()
        return changed + [self._close(call_id, event.ts, "gone_after_reconnect")
                          for call_id in gone]

    def _on_shutdown(self, event: AsteriskShutdown) -> list[CallProgress]:
        """Asterisk is going away: whatever is still open cannot continue."""
        return [self._close(call_id, event.ts, "asterisk_shutdown")
                for call_id in list(self._calls)]


def endpoint_of(channel: str, dial_string: str | None) -> str:
    """The endpoint a leg rang, as an admin names it: `PJSIP/101`, `IAX2/phones/100`.

    Dial's DialString is the part after the technology (`phones/100`, `101`);
    Queue's is the whole interface (`IAX2/phones/100`). Without one, the
    channel name minus its unique suffix (`PJSIP/101-0000000a` -> `PJSIP/101`).
    """
    tech, _, rest = channel.partition("/")
    if dial_string:
        if dial_string.split("/", 1)[0].lower() == tech.lower():
            return dial_string  # Queue members and Local targets name the technology already
        return f"{tech}/{dial_string}" if rest else dial_string
    if tech.lower() == "local":
        return channel.rsplit("-", 1)[0] if ";" in channel else channel
    return f"{tech}/{rest.rsplit('-', 1)[0]}" if rest else channel
