"""Who is on the other ends of a simulated call: the caller and the office phones.

The captures drove real Asterisk with a second Asterisk playing the PSTN caller
and the phones (their [caller]/[phones] dialplans: ring, answer, hold, busy,
congestion, ring forever, unreachable peer). Here the same behaviours are a
small declarative spec, so a test states the scenario ("phone answers after
0.2 s and hangs up 0.5 s later") and the simulator produces the events a real
PBX would. Durations are real seconds: keep them short in tests.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tests.simulator import amievents as ev
from tests.simulator import gosub
from tests.simulator.asterisk_args import standard_app_args

if TYPE_CHECKING:
    from tests.simulator.dialplan import InboundCall
    from tests.simulator.dialplan import CdrRow
    from tests.simulator.pbx import Channel


@dataclass(frozen=True)
class Phone:
    """Behaviour of one dialled endpoint (e.g. `PJSIP/101`, `IAX2/phones/100`)."""

    answer_after: float = 0.2          # seconds of ringing before pick-up
    talk: float | None = 0.5           # seconds before the office hangs up; None: never (caller ends)
    busy: bool = False                 # rejects at once: cause 17, DIALSTATUS BUSY (capture 03)
    never_answers: bool = False        # rings until the ring timeout or the caller gives up (04, 05)
    unavailable: bool = False          # unreachable: no channel at all, CHANUNAVAIL (07)
    congestion: bool = False           # rejects at once: cause 34, DIALSTATUS CONGESTION (06)
    dtmf: str = ""                     # keyed once bridged, e.g. "*1234#" (the operator path, 13)
    dtmf_after: float = 0.2            # seconds after the bridge before the first key
    dtmf_gap: float = 0.1              # seconds from one key to the next

    @property
    def rings(self) -> bool:
        return not (self.busy or self.unavailable or self.congestion)


@dataclass(frozen=True)
class Caller:
    """The PSTN side of the inbound leg."""

    number: str | None                 # None: no caller number (agi_callerid "unknown")
    name: str | None = None            # None: no name (`<unknown>` on AMI, "" in the CDR clid)
    hangup_after: float | None = None  # seconds after arrival: abandon (05) or hang up in the AGI (19)
    hold_after_answer: float | None = None  # seconds the caller stays once bridged (02)
    # What the caller keys at each GET DATA prompt, in order: "4821#", "#" (skip),
    # "" (silence: the prompt times out); a tuple for several prompts (retries).
    dtmf: str | tuple[str, ...] = ""
    dtmf_after: float = 0.2            # seconds into a prompt before the first key
    dtmf_gap: float = 0.1              # seconds from one key to the next


@dataclass(frozen=True)
class CalledLeg:
    """What a test can read about one channel Dial or Queue created (SimCall.legs)."""

    target: str                        # the Dial string part or queue member, e.g. "PJSIP/101"
    channel: str                       # e.g. "PJSIP/101-00000001"
    uniqueid: str
    answered: bool                     # this leg won the call
    sip_headers: tuple[tuple[str, str], ...]   # PJSIP_HEADER(add,...) of the pre-dial handler
    heard: tuple[str, ...]             # sounds played to it (the whisper) before the bridge
    function_errors: tuple[str, ...]   # dialplan function writes that failed on it
    variables: dict[str, str]          # its channel variables at the end (no _/__ prefix)


@dataclass(frozen=True)
class QueueMember:
    interface: str                     # e.g. "IAX2/phones/100"
    name: str                          # MemberName, e.g. "Office 100"


@dataclass(frozen=True)
class Endpoint:
    """One `TECH/resource` of a Dial string."""

    target: str                        # "IAX2/phones/100": the key of the phone spec
    tech: str                          # "IAX2"
    resource: str                      # "phones/100": the DialString header of DialBegin
    peer: str                          # "phones": the part a channel name is built from


#: Channel drivers present in Asterisk 22 that the simulator can "request".
#: chan_sip is gone since 21, so SIP/... fails like any unknown technology.
KNOWN_TECHS = ("IAX2", "PJSIP")


def parse_target(target: str) -> Endpoint | None:
    """`TECH/resource` -> Endpoint; None when it has no '/' (Dial rejects it)."""
    tech, sep, resource = target.partition("/")
    if not sep or not tech:
        return None
    return Endpoint(target=target, tech=tech, resource=resource, peer=resource.split("/", 1)[0])


def split_dial_peers(peers: str) -> list[str]:
    """app_dial.c `dial_exec_full()`: the peers argument is split on '&'."""
    return [p for p in peers.split("&") if p]


class ChannelNamer:
    """Channel names as the drivers build them.

    chan_iax2: `IAX2/<peer>-<callno>` with a 15-bit call number, unique while
    in use (random here, as the captures show: carrier-15448, phones-14674).
    chan_pjsip: `PJSIP/<endpoint>-<8 hex digits>` from a global counter.
    """

    def __init__(self, seed: int | None = None) -> None:
        self._rand = random.Random(seed)
        self._iax_in_use: set[int] = set()
        self._pjsip = itertools.count(1)

    def name(self, tech: str, peer: str) -> str:
        if tech == "IAX2":
            while True:
                callno = self._rand.randint(2, 16383)
                if callno not in self._iax_in_use:
                    self._iax_in_use.add(callno)
                    return f"IAX2/{peer}-{callno}"
        return f"{tech}/{peer}-{next(self._pjsip):08x}"

    def release(self, name: str) -> None:
        if name.startswith("IAX2/"):
            self._iax_in_use.discard(int(name.rsplit("-", 1)[1]))


# --- ringing the phones: Dial and Queue ------------------------------------------------

@dataclass(eq=False)
class Leg:
    """One outbound channel of a Dial or a Queue."""

    chan: Channel
    ep: Endpoint
    spec: Phone
    row: CdrRow | None = None
    member: QueueMember | None = None
    rang_at: float = 0.0
    won: bool = False

    def summary(self) -> CalledLeg:
        c = self.chan
        return CalledLeg(self.ep.target, c.name, c.uniqueid, self.won, tuple(c.sip_headers),
                         tuple(c.heard), tuple(c.function_errors), c.vars.as_dict())


@dataclass
class Outcome:
    status: str                        # DIALSTATUS (Dial) or QUEUESTATUS-like (Queue)
    winner: Leg | None = None


#: app_dial.c / app_queue.c clear these on the calling channel before ringing.
DIAL_VARS = ("DIALSTATUS", "DIALEDPEERNUMBER", "DIALEDPEERNAME", "ANSWEREDTIME", "ANSWEREDTIME_MS",
             "DIALEDTIME", "DIALEDTIME_MS", "RINGTIME", "RINGTIME_MS", "PROGRESSTIME", "PROGRESSTIME_MS")
QUEUE_VARS = ("ANSWEREDTIME", "ANSWEREDTIME_MS", "DIALEDTIME", "DIALEDTIME_MS", "QUEUEWAIT", "QUEUEWAIT_MS")


def parse_options(text: str) -> dict[str, str]:
    """main/app.c `ast_app_parse_options()`: letters, each with an optional (argument);
    parentheses nest inside an argument, so `U(ctx^a(b))` keeps `ctx^a(b)`."""
    options: dict[str, str] = {}
    i = 0
    while i < len(text):
        letter, i = text[i], i + 1
        arg = ""
        if i < len(text) and text[i] == "(":
            depth, j = 1, i + 1
            while j < len(text) and depth:
                depth += {"(": 1, ")": -1}.get(text[j], 0)
                j += 1
            arg, i = text[i + 1:j - 1], j
        options[letter] = arg
    return options


def subroutine_location(option: str) -> str:
    """b()/B() argument -> Gosub location: `ast_replace_subargument_delimiter()` ('^' -> ',')."""
    return option.replace("^", ",")


def callee_gosub_location(option: str) -> str:
    """Dial U(x[^arg...]) -> Gosub location, as app_dial.c builds it: x is a CONTEXT and
    the routine starts at x,s,1; what follows the first '^' are its arguments."""
    context, sep, args = option.replace("^", ",").partition(",")
    return f"{context},s,1({args})" if sep else f"{context},s,1"


def parse_timeout(text: str) -> float | None:
    """Dial/Queue timeout in seconds; empty, invalid or <= 0: no timeout."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value if value > 0 else None


class Ringer:
    """Dial (app_dial.c) and Queue (app_queue.c, strategy ringall) for one call,
    emitting the leg events in the order of captures 01-10."""

    def __init__(self, call: InboundCall, phones: dict[str, Phone]) -> None:
        self.call, self.sim, self.phones = call, call.sim, phones
        self.live: list[Leg] = []
        self.created: list[Leg] = []                     # every leg, for SimCall.legs
        self.bridge_id = ""
        self.in_queue: str | None = None
        self.options: dict[str, str] = {}               # the Dial/Queue options (parse_options)
        self.announce = ""                               # Queue's announceoverride
        self.joined = self.started = 0.0

    def phone(self, target: str) -> Phone:
        return self.phones.get(target) or self.sim.phones.get(target) or self.sim.default_phone

    def _leg(self, ep: Endpoint, spec: Phone, queue: bool) -> Leg:
        t = self.call.trunk
        chan = self.sim.new_leg_channel(ep, t, self.call.events)
        leg = Leg(chan, ep, spec)
        self.live.append(leg)
        self.created.append(leg)
        chan.emit(ev.newchannel(chan))
        inherited = t.vars.inherited()
        chan.app, chan.app_data = ("AppQueue" if queue else "AppDial"), "(Outgoing Line)"
        chan.context, chan.connected_num, chan.connected_name = "", t.caller_num, t.caller_name
        if queue:
            # 10: NewConnectedLine's snapshot already holds the first inherited
            # variable (CTRACK_CHANNEL) but not the second (CTRACK_CALL_ID).
            for i, (name, value) in enumerate(inherited):
                chan.vars.set(name, value)
                if i == 0:
                    chan.emit(ev.newconnectedline(chan))
                if self.sim.dialplan_events:
                    chan.emit(ev.var_set(chan, name, value))
            chan.exten = t.exten
            chan.set_var("DIALEDPEERNUMBER", ep.resource)
            return leg
        chan.set_var("DIALEDPEERNUMBER", ep.resource)
        for name, value in inherited:
            chan.set_var(name, value)
        chan.exten, chan.caller_num = t.exten, t.exten     # the DID, not the caller (01)
        chan.emit(ev.newcallerid(chan))
        chan.emit(ev.newconnectedline(chan))
        return leg

    def hangup(self, leg: Leg, cause: int, request: int | None | bool = True) -> None:
        """HangupRequest (request=True: with `cause`; None: no Cause header;
        False: none at all) then Hangup."""
        chan = leg.chan
        if request is not False:
            chan.emit(ev.hangup_request(chan, cause if request is True else request))
        chan.hangup_cause = cause
        chan.emit(ev.hangup(chan, cause))
        self.sim.unregister(chan)
        if leg in self.live:
            self.live.remove(leg)

    def _begin(self, leg: Leg, dialstring: str, app: str, data: str) -> None:
        t = self.call.trunk
        leg.chan.set_state(5)                            # IAX2 reports ringing at once
        if leg.member is not None:
            leg.chan.emit(ev.agent_event("AgentCalled", t, leg.chan, self.in_queue or "",
                                         leg.member.interface, leg.member.name))
        t.emit(ev.dial_begin(t, leg.chan, dialstring))
        leg.row = t.cdr.dial_begin(leg.chan.name, app, data)
        leg.rang_at = time.time()

    def _end(self, leg: Leg, status: str, twice: bool = False) -> None:
        t = self.call.trunk
        for _ in range(2 if twice else 1):               # 10: two identical CANCEL
            t.emit(ev.dial_end(t, leg.chan, status))
        if leg.row is not None:
            t.cdr.dial_end(leg.row, status)

    async def _predial(self, legs: list[Leg], option: str | None) -> None:
        """Option b(): the Gosub on each new called channel, after it is set up and
        before it is called (app_dial.c / app_queue.c `ast_pre_call()`)."""
        if option:
            for leg in legs:
                await gosub.gosub(leg.chan, subroutine_location(option))

    async def dial(self, data: str) -> Outcome:
        t = self.call.trunk
        args = standard_app_args(data, 4)               # peers, timeout, options, URL
        self.options = parse_options(args[2] if len(args) > 2 else "")
        self.started = time.time()
        for name in DIAL_VARS:                           # app_dial clears them first (01)
            t.set_var(name, "")
        legs, nochan = [], 0
        for target in split_dial_peers(args[0] if args else ""):
            ep, spec = parse_target(target), self.phone(target)
            if ep is None or ep.tech not in KNOWN_TECHS or spec.unavailable:
                nochan += 1                              # 07: no channel, no event
                continue
            legs.append(self._leg(ep, spec, queue=False))
        await self._predial(legs, self.options.get("b"))
        if not legs:
            t.cdr.dial_done(False)
            t.hangup_cause = 20                          # 07: HANGUPCAUSE=20 (subscriber absent)
            t.set_var("HANGUPCAUSE", "20")
            return self._status("CHANUNAVAIL")
        for leg in legs:
            self._begin(leg, leg.ep.resource, "Dial", data)
        return await self._ring(legs, parse_timeout(args[1] if len(args) > 1 else ""))

    async def queue(self, data: str) -> Outcome:
        t = self.call.trunk
        args = standard_app_args(data, 10)
        name = args[0] if args else ""
        self.options = parse_options(args[1] if len(args) > 1 else "")
        self.announce = args[3] if len(args) > 3 else ""     # announceoverride
        members = self.sim.queues.get(name)
        self.in_queue, self.joined = name, time.time()
        if members is None:                              # "Unable to join queue"
            t.cdr.dial_done(False)
            return self._status("UNKNOWN")
        self.started = self.joined
        for var in QUEUE_VARS:                           # app_queue clears them first (10)
            t.set_var(var, "")
        t.emit(ev.queue_caller_join(t, name, 1, 1))
        legs = []
        for member in members:
            ep, spec = parse_target(member.interface), self.phone(member.interface)
            if ep is None or ep.tech not in KNOWN_TECHS or spec.unavailable:
                continue
            leg = self._leg(ep, spec, queue=True)
            leg.member = member
            await self._predial([leg], self.options.get("b"))
            self._begin(leg, member.interface, "Queue", data)
            legs.append(leg)
        return await self._ring(legs, parse_timeout(args[4] if len(args) > 4 else ""))

    def _status(self, status: str) -> Outcome:
        """DIALSTATUS after a Dial; a Queue sets QUEUESTATUS only when nobody answered
        for a reason of its own (TIMEOUT, ...), not when answered or abandoned (10)."""
        if self.in_queue is None:
            self.call.trunk.set_var("DIALSTATUS", status)
        elif status not in ("ANSWER", "CANCEL"):
            self.call.trunk.set_var("QUEUESTATUS", status)
        return Outcome(status)

    async def _ring(self, legs: list[Leg], timeout: float | None) -> Outcome:
        t, queue = self.call.trunk, self.in_queue is not None
        for leg in [leg for leg in legs if not leg.spec.rings]:
            cause = 17 if leg.spec.busy else 34          # 03 / 06
            self._end(leg, "BUSY" if leg.spec.busy else "CONGESTION")
            self.hangup(leg, cause)
        ringing = [leg for leg in legs if leg.spec.rings]
        for leg in ringing:
            t.emit(ev.dial_state(t, leg.chan, "RINGING"))
        if ringing and not queue:
            self._elapsed("RINGTIME")
        if not ringing and not queue:
            t.cdr.dial_done(False)
            return self._status("BUSY" if any(leg.spec.busy for leg in legs) else "CONGESTION")
        start = time.monotonic()
        answers = {leg: start + leg.spec.answer_after for leg in ringing if not leg.spec.never_answers}
        first = min(answers, key=answers.__getitem__) if answers else None
        deadline = start + timeout if timeout is not None else None
        stop = min([x for x in (answers.get(first) if first else None, deadline) if x is not None], default=None)
        try:
            await asyncio.wait_for(t.hungup.wait(), None if stop is None else max(0.0, stop - time.monotonic()))
        except asyncio.TimeoutError:
            pass
        if t.hungup.is_set() or first is None or (deadline is not None and answers[first] > deadline):
            gone = t.hungup.is_set()
            status = "CANCEL" if gone else "NOANSWER"
            for leg in ringing:                            # 04: no Cause, then cause 0; 05: 16
                self._end(leg, "CANCEL" if queue else status)
                self.hangup(leg, 16 if gone or queue else 0, True if gone or queue else None)
            t.cdr.dial_done(False)
            if queue and gone:
                t.emit(ev.channel_event("QueueCallerAbandon", t, [
                    ("Queue", self.in_queue or ""), ("Position", "1"), ("OriginalPosition", "1"),
                    ("HoldTime", str(int(time.time() - self.joined)))], "agent,all"))
            elif queue:
                t.emit(ev.queue_caller_leave(t, self.in_queue or "", 1, 0))
            return self._status("TIMEOUT" if queue and not gone else status)
        return await self._answered(first, ringing)

    async def _answered(self, winner: Leg, ringing: list[Leg]) -> Outcome:
        t, queue = self.call.trunk, self.in_queue is not None
        winner.won = True
        winner.chan.set_state(6)
        losers = [leg for leg in ringing if leg is not winner]
        if queue:                                          # 10: ANSWER first, then CANCEL x2
            self._end(winner, "ANSWER")
        else:
            winner.chan.exten = ""
        for leg in losers:                                 # 09: CANCEL before the winner's ANSWER
            self._end(leg, "CANCEL", twice=queue)
            self.hangup(leg, 26)
        if queue:
            # app_queue try_calling(): the announcement (our whisper) to the member who
            # answered, the caller on autoservice; a missing file: a warning, go on.
            for sound in (self.announce.split("&") if self.announce else []):
                await winner.chan.play(sound)
            t.emit(ev.queue_caller_leave(t, self.in_queue or "", 1, 0))
            t.set_var("QUEUEPOSITION", "1")
            self._elapsed("QUEUEWAIT")
            now = time.time()
            t.emit(ev.agent_event("AgentConnect", t, winner.chan, self.in_queue or "", winner.member.interface,
                                  winner.member.name, [("HoldTime", str(int(now - self.joined))),
                                                       ("RingTime", str(int(now - winner.rang_at)))]))
        else:                                              # 01: the variables, then DialEnd
            t.set_var("DIALSTATUS", "ANSWER")
            t.set_var("DIALEDPEERNAME", winner.chan.name)
            t.set_var("DIALEDPEERNUMBER", winner.ep.resource)
            # U(): the Gosub on the answered channel, the caller on autoservice; only
            # then DialEnd ANSWER and the bridge (app_dial.c dial_exec_full()).
            if self.options.get("U"):
                await gosub.gosub(winner.chan, callee_gosub_location(self.options["U"]))
            self._end(winner, "ANSWER")
        t.cdr.dial_done(True)
        t.set_state(6)
        self.bridge_id = str(uuid.uuid4())
        t.emit(ev.bridge_create(self.bridge_id))
        for n, chan in enumerate((winner.chan, t), 1):
            chan.bridge_id = self.bridge_id
            chan.emit(ev.bridge_enter(self.bridge_id, n, chan))
        return Outcome("ANSWER", winner)

    def _elapsed(self, name: str, since: float | None = None) -> None:
        seconds = time.time() - (self.started if since is None else since)
        self.call.trunk.set_var(name, str(int(seconds)))
        self.call.trunk.set_var(f"{name}_MS", str(int(seconds * 1000)))

    def bridge_ended(self, answered: float) -> None:
        """What Dial/Queue set once the bridge is over; the hang-up handler reads them."""
        self._elapsed("ANSWEREDTIME", answered)
        self._elapsed("DIALEDTIME")
        if self.in_queue is None:
            self.call.trunk.set_var("DIALSTATUS", "ANSWER")

    def agent_complete(self, leg: Leg, reason: str, answered: float) -> None:
        if self.in_queue is None or leg.member is None:
            return
        t, now = self.call.trunk, time.time()
        t.emit(ev.agent_event("AgentComplete", t, leg.chan, self.in_queue, leg.member.interface,
                              leg.member.name, [("HoldTime", str(int(answered - self.joined))),
                                                ("TalkTime", str(int(now - answered))), ("Reason", reason)]))
