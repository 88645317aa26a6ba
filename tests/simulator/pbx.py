"""SimulatedAsterisk: an Asterisk 22 stand-in that runs ctrackd's dialplan for real.

It connects to the daemon's FastAGI server over TCP, runs the fallback script
over stdin like res_agi.c, and emits over a FakeAmi the AMI events a real PBX
would send for each call, in the order and header shapes of the captures.
`await sim.call(did, Caller(...))` runs one call through [ctrackd-inbound]
(dialplan.py) and returns what Asterisk knows afterwards (SimCall); any number
of calls may run at once; `await sim.outbound_call(...)` is an office phone
calling out through the trunk (outbound.py). This module also holds the
Channel: what AMI snapshots render (amievents.Snapshot) and what an AGI
session talks to (agi_client.AgiChannel), with pbx_builtin_setvar_helper()
semantics (asterisk_args.ChannelVars), the dialplan functions ctrackd touches
(CALLERID, CDR, CHANNEL(hangup_handler_push|channeltype), LEN, PJSIP_HEADER),
res_agi.c's environment, the caller's keys for GET DATA (ast_app_getdata()) and
what the party on the channel heard (Playback, Queue announcements).
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tests.simulator import amievents as ev
from tests.simulator.agi_client import RESULT_TEXT, AgiResult
from tests.simulator.asterisk_args import ChannelVars, mset_assignments, set_assignment
from tests.simulator.dialplan import Cdr, CdrRow, InboundCall
from tests.simulator.phones import CalledLeg, Caller, ChannelNamer, Endpoint, Phone, QueueMember

if TYPE_CHECKING:
    from tests.simulator.ami_server import FakeAmi

AST_VERSION = "22.10.1"
#: Applications EXEC may run (pbx_findapp() is case-insensitive); others: -2.
KNOWN_APPS = {a.lower() for a in (
    "Set", "MSet", "NoOp", "Verbose", "Log", "Wait", "Answer", "Playback", "Background", "Ringing",
    "Progress", "Hangup", "Goto", "GotoIf", "ExecIf", "Gosub", "GosubIf", "Return", "UserEvent",
    "MixMonitor", "StopMixMonitor", "SendDTMF", "Read", "SayDigits", "SayNumber", "Busy",
    "Congestion", "Dial", "Queue", "System", "ImportVar", "Echo", "WaitExten", "Record")}


@dataclass(eq=False)
class Channel:
    """One channel of the simulated PBX."""

    sim: SimulatedAsterisk
    name: str
    uniqueid: str
    linkedid: str
    state: int
    context: str
    exten: str
    priority: int = 1
    caller_num: str | None = None
    caller_name: str | None = None
    connected_num: str | None = None
    connected_name: str | None = None
    events: list[Any] | None = None          # the call's event list, when it belongs to one
    language: str = "en"
    accountcode: str = ""
    vars: ChannelVars = field(default_factory=ChannelVars)
    hungup: asyncio.Event = field(default_factory=asyncio.Event)
    created: float = field(default_factory=time.time)
    app: str = ""
    app_data: str = ""
    bridge_id: str = ""
    hangup_cause: int = 0
    keys: list[str] = field(default_factory=list)   # the caller's keys, one string per GET DATA
    key_after: float = 0.2                          # seconds before the first key of a prompt
    key_gap: float = 0.1                            # seconds between keys
    cdr: Cdr | None = None
    hangup_handlers: list[str] = field(default_factory=list)
    threadid: int = field(default_factory=lambda: random.randrange(139900000000000, 140100000000000))
    sip_headers: list[tuple[str, str]] = field(default_factory=list)  # PJSIP_HEADER(add,...) so far
    heard: list[str] = field(default_factory=list)      # sounds played to this channel, in order
    function_errors: list[str] = field(default_factory=list)  # dialplan function writes that failed

    @property
    def tech(self) -> str:
        """CHANNEL(channeltype): the driver, the part of the name before '/'."""
        return self.name.split("/", 1)[0]

    # -- amievents.Snapshot --------------------------------------------------------
    def caller_headers(self) -> tuple[str, str, str, str]:
        return (self.caller_num or "<unknown>", self.caller_name or "<unknown>",
                self.connected_num or "<unknown>", self.connected_name or "<unknown>")

    def chan_variables(self) -> list[tuple[str, str]]:
        return [(n, self.getvar_helper(n) or "") for n in self.sim.channelvars]

    def emit(self, headers: ev.Headers) -> None:
        self.sim.emit(headers, self.events)

    def set_state(self, state: int) -> None:
        if self.state != state:
            self.state = state
            self.emit(ev.newstate(self))

    def run_app(self, app: str, data: str, priority: int | None = None) -> None:
        """The dialplan reached `app(data)`: what CoreShowChannel and the CDR see."""
        self.app, self.app_data = app, data
        if priority is not None:
            self.priority = priority
        if self.cdr is not None:
            self.cdr.app(app, data)

    # -- variables and functions --------------------------------------------------
    def getvar_helper(self, name: str) -> str | None:
        """`pbx_builtin_getvar_helper()`: channel variables, then globals."""
        value = self.vars.get(name)
        return value if value is not None else self.sim.globals.get(name)

    def get_var(self, name: str) -> str | None:
        """AGI GET VARIABLE: a function if it ends in ')', else `pbx_retrieve_variable()`."""
        if name.endswith(")"):
            return self.func_read(name)
        builtin = {"CHANNEL": self.name, "UNIQUEID": self.uniqueid, "EXTEN": self.exten,
                   "CONTEXT": self.context, "PRIORITY": str(self.priority),
                   "HANGUPCAUSE": str(self.hangup_cause)}
        return builtin[name] if name in builtin else self.getvar_helper(name)

    def set_var(self, name: str, value: str | None) -> None:
        """`pbx_builtin_setvar_helper()`; a VarSet when the sim emits dialplan events."""
        if name.endswith(")"):
            self.func_write(name, value or "")
            return
        published = self.vars.set(name, value)
        if published is not None and self.sim.dialplan_events:
            self.emit(ev.var_set(self, *published))

    def func_read(self, expr: str) -> str | None:
        func, _, arg = expr[:-1].partition("(")
        func = func.upper()
        if func == "CALLERID":
            num, name = self.caller_num or "", self.caller_name or ""
            return {"num": num, "name": name, "all": f'"{name}" <{num}>'}.get(arg.lower())
        if func == "CDR" and self.cdr is not None:
            field, _, options = arg.lower().partition(",")
            if "u" in options and field == "start":
                # cdr.c cdr_get_tv(): raw values are "%ld.%06ld" epochs; the first
                # row's start is the channel's creation
                return f"{self.created:.6f}"
            return self.cdr.fields(self.cdr.rows[-1]).get(
                {"billsec": "BillableSeconds", "duration": "Duration", "disposition": "Disposition",
                 "userfield": "UserField", "dstchannel": "DestinationChannel", "start": "StartTime",
                 "answer": "AnswerTime", "end": "EndTime"}.get(field, ""))
        if func == "CHANNEL":
            return {"name": self.name, "uniqueid": self.uniqueid, "linkedid": self.linkedid,
                    "state": ev.STATE_DESC.get(self.state, "Unknown"),
                    "channeltype": self.tech}.get(arg.lower())
        if func == "LEN":
            return str(len(arg))
        return None

    def func_write(self, expr: str, value: str) -> None:
        func, _, raw_arg = expr[:-1].partition("(")
        func, arg = func.upper(), raw_arg.lower()
        if func == "PJSIP_HEADER":
            # res_pjsip_header_funcs.c: only a PJSIP channel has headers ("This function
            # requires a PJSIP channel." and -1 elsewhere); `add` appends to the INVITE.
            action, _, header = raw_arg.partition(",")
            if self.tech != "PJSIP":
                self.function_errors.append(f"PJSIP_HEADER({raw_arg}): not a PJSIP channel")
            elif action.lower() == "add" and header:
                self.sip_headers.append((header, value))
            else:
                self.function_errors.append(f"PJSIP_HEADER({raw_arg}): not modelled")
            return
        if func == "CDR" and arg == "userfield" and self.cdr is not None:
            self.cdr.userfield = value
        elif func == "CALLERID" and arg in ("name", "num"):
            setattr(self, "caller_name" if arg == "name" else "caller_num", value)
            self.emit(ev.newcallerid(self))
        elif func == "CHANNEL" and arg == "hangup_handler_push":
            self.hangup_handlers.append(value)

    def substitute(self, text: str) -> str:
        """`ast_str_substitute_variables()` for ${VAR}, ${VAR:off:len}, ${FUNC(args)}."""
        out, i = [], 0
        while i < len(text):
            if text.startswith("${", i):
                depth, j = 1, i + 2          # pbx_variables.c counts every '{' and '}'
                while j < len(text) and depth:
                    depth += {"{": 1, "}": -1}.get(text[j], 0)
                    j += 1
                out.append(self._expand(self.substitute(text[i + 2:j - 1])))
                i = j
            else:
                out.append(text[i])
                i += 1
        return "".join(out)

    def _expand(self, inner: str) -> str:
        if inner.endswith(")"):
            return self.func_read(inner) or ""
        m = re.fullmatch(r"([^:]*):(-?\d+)(?::(-?\d+))?", inner)
        if m:
            value = self.get_var(m.group(1)) or ""
            off, length = int(m.group(2)), m.group(3)
            value = value[off:] if off >= 0 else value[len(value) + off:]
            if length is not None:
                n = int(length)
                value = value[:n] if n >= 0 else value[:len(value) + n]
            return value
        return self.get_var(inner) or ""

    # -- applications (EXEC and the dialplan's Set/MSet) --------------------------
    def exec_app(self, app: str, data: str) -> int:
        name = app.lower()
        if name not in KNOWN_APPS:
            return -2                         # "Could not find application"
        if name == "set":
            pair = set_assignment(data)
            if pair is not None:
                self.set_var(*pair)
        elif name == "mset":
            for pair in mset_assignments(data):
                self.set_var(*pair)
        elif name == "answer":
            self.answer()
        elif name == "hangup":
            self.hungup.set()
        return 0

    def answer(self) -> None:
        self.set_state(6)
        if self.cdr is not None:
            self.cdr.answer()

    # -- media: what the party hears, what the caller keys -----------------------
    async def play(self, sound: str) -> bool:
        """ast_streamfile() + ast_waitstream(): False at once when the file does not
        exist (SimulatedAsterisk.sounds); else plays it out, cut short by a hang-up,
        and records it in `heard` once fully played."""
        length = self.sim.sound_length(sound)
        if length is None:
            return False
        try:
            await asyncio.wait_for(self.hungup.wait(), length)
            return False                        # hung up while it played
        except asyncio.TimeoutError:
            pass
        self.heard.append(sound)
        return True

    async def get_data(self, prompt: str, timeout_ms: int, max_digits: int) -> tuple[int, str]:
        """main/app.c `ast_app_getdata()` + channel.c `ast_readstring()` with "#" as the
        ender: (0, digits) on "#" or `max_digits`, (1, digits) on a timeout, (-1, "")
        when the channel hangs up. Timeouts: the given milliseconds for the first key
        and between keys; 0 means the PBX defaults (10 s first, 5 s between).
        The prompt is not timed: the caller's keys start `key_after` seconds in.
        Each key is DTMFBegin/DTMFEnd Direction=Received on this channel (capture 18)."""
        keys = self.keys.pop(0) if self.keys else ""
        if timeout_ms > 0:
            first = between = timeout_ms / 1000
        elif timeout_ms < 0:
            first = between = 1e9
        else:
            first, between = 10.0, 5.0
        digits = ""
        for i, key in enumerate(keys):
            delay = self.key_after if i == 0 else self.key_gap
            if delay > (first if not digits and i == 0 else between):
                break                          # the caller was too slow: timeout below
            if await self._hangup_within(delay):
                return -1, ""
            tone = min(0.1, self.key_gap / 2)
            self.emit(ev.dtmf_begin(self, key, "Received"))
            if await self._hangup_within(tone):
                return -1, ""
            self.emit(ev.dtmf_end(self, key, 0, "Received"))
            if key == "#":
                return 0, digits
            digits += key
            if len(digits) >= max_digits:
                return 0, digits
        if await self._hangup_within(between if digits else first):
            return -1, ""
        return 1, digits

    async def _hangup_within(self, seconds: float) -> bool:
        try:
            await asyncio.wait_for(self.hungup.wait(), max(0.0, seconds))
            return True
        except asyncio.TimeoutError:
            return False

    # -- agi_client.AgiChannel -----------------------------------------------------
    def agi_env(self) -> list[tuple[str, str]]:
        """res_agi.c `setup_env()` after agi_request, in its order."""
        name = "unknown" if self.caller_name is None else self.caller_name
        return [("agi_channel", self.name), ("agi_language", self.language),
                ("agi_type", self.name.split("/", 1)[0]), ("agi_uniqueid", self.uniqueid),
                ("agi_version", AST_VERSION), ("agi_callerid", self.caller_num or "unknown"),
                ("agi_calleridname", name), ("agi_callingpres", "0"), ("agi_callingani2", "0"),
                ("agi_callington", "0"), ("agi_callingtns", "0"), ("agi_dnid", "unknown"),
                ("agi_rdnis", "unknown"), ("agi_context", self.context), ("agi_extension", self.exten),
                ("agi_priority", str(self.priority)), ("agi_enhanced", "0.0"),
                ("agi_accountcode", self.accountcode), ("agi_threadid", str(self.threadid))]

    def agi_exec(self, command: str, code: int | None, command_id: int) -> None:
        if not self.sim.dialplan_events:
            return
        if code is None:
            self.emit(ev.agi_exec_start(self, command_id, command))
        else:
            self.emit(ev.agi_exec_end(self, command_id, command, code, RESULT_TEXT[code]))


@dataclass
class SimCall:
    """What Asterisk knows about a call once it is over."""

    call_id: str                         # Uniqueid of the inbound leg == CTRACK_CALL_ID
    channel: str                         # e.g. IAX2/carrier-15448
    did: str
    caller: Caller
    agi_status: str | None               # AGISTATUS after the FastAGI
    fallback_status: str | None          # AGISTATUS after the stdin fallback AGI (None: not run)
    hangup_handler_status: str | None    # AGISTATUS of the ctrackd-hangup handler's AGI
    variables: dict[str, str]            # inbound leg's variables at the end (no _/__ prefix)
    target: str | None                   # CTRACK_FORWARD as dialled
    dial_status: str | None              # DIALSTATUS (or the Queue outcome)
    answered_by: str | None              # the endpoint that answered, e.g. "IAX2/phones/100"
    recording: str | None                # MixMonitor's file argument (CTRACK_RECORDING)
    recorded: bool                       # bridged, so MixMonitor(...,b) wrote the file
    hangup_cause: int
    cdr_rows: list[CdrRow]               # start/answer/end (epoch floats), duration, billsec, disposition
    cdrs: list[dict[str, str]]           # the Cdr event fields, in dispatch order
    events: list[ev.Headers]             # every AMI event of this call, in emission order
    agi: list[AgiResult]                 # the AGI sessions (transcripts), in order
    legs: list[CalledLeg] = field(default_factory=list)  # every channel Dial/Queue created, in order

    @property
    def cdr(self) -> dict[str, str] | None:
        """The row a billing report keeps: the ANSWERED one, else the last."""
        answered = [c for c in self.cdrs if c["Disposition"] == "ANSWERED"]
        return (answered or self.cdrs or [None])[-1]

    def event_names(self) -> list[str]:
        return [dict(e)["Event"] for e in self.events]


def agi_url(address: str | tuple[str, int]) -> str:
    return address if isinstance(address, str) else f"agi://{address[0]}:{address[1]}"


class SimulatedAsterisk:
    """See the module docstring. Durations are real seconds: keep phones quick."""

    def __init__(self, agi_address: str | tuple[str, int] | None = None, ami: FakeAmi | None = None, *,
                 fallback_agi_cmd: Sequence[str] | None = None, globals: Mapping[str, str] | None = None,
                 phones: Mapping[str, Phone] | None = None, default_phone: Phone = Phone(),
                 queues: Mapping[str, Sequence[QueueMember]] | None = None, trunk: str = "IAX2/carrier",
                 trunk_context: str = "from-trunk",
                 channelvars: Sequence[str] = ("CTRACK_CALL_ID", "CTRACK_CHANNEL"),
                 dialplan_events: bool = False, max_talk: float = 60.0, usage_delay: float = 0.04,
                 sounds: Mapping[str, float] | None = None, seed: int | None = None) -> None:
        self.ami = ami
        self.globals = dict(globals or {})
        if agi_address is not None:
            self.globals.setdefault("CTRACKD_AGI", agi_url(agi_address))
        self.fallback_agi_cmd = list(fallback_agi_cmd) if fallback_agi_cmd is not None else None
        self.phones, self.default_phone = dict(phones or {}), default_phone
        self.queues = {k: list(v) for k, v in (queues or {}).items()}
        self.trunk_tech, _, self.trunk_peer = trunk.partition("/")
        self.trunk_context, self.channelvars = trunk_context, list(channelvars)
        self.dialplan_events, self.max_talk, self.usage_delay = dialplan_events, max_talk, usage_delay
        # The sound files on disk: name -> seconds it plays. None: every name exists
        # and plays 0.05 s (the stock sounds, a whisper the test did not care about).
        self.sounds = dict(sounds) if sounds is not None else None
        self.namer = ChannelNamer(seed)
        self.events: list[ev.Headers] = []
        self._counter = self._sequence = 0
        self._channels: dict[str, Channel] = {}
        self._calls: set[InboundCall] = set()
        self._outbox: asyncio.Queue[ev.Headers] | None = None
        self._pump: asyncio.Task[None] | None = None
        self._emitted = self._delivered = 0
        self._progress = asyncio.Condition()
        if ami is not None:
            ami.channels_provider = self.live_channels

    def sound_length(self, name: str) -> float | None:
        """ast_fileexists() for `name` (no extension): its length in seconds, None if missing."""
        if self.sounds is None:
            return 0.05 if name else None
        return self.sounds.get(name)

    # -- identities ----------------------------------------------------------------------
    def new_uniqueid(self) -> str:
        """`<epoch>.<counter>`: the counter is per process, restarted by a restart (17)."""
        uid = f"{int(time.time())}.{self._counter}"
        self._counter += 1
        return uid

    def next_sequence(self) -> int:
        """cdr.c: every CDR object (one per channel, one per forked row) takes one."""
        self._sequence += 1
        return self._sequence

    def new_trunk(self, did: str, caller: Caller, events: list[ev.Headers]) -> Channel:
        uid = self.new_uniqueid()
        keys = [caller.dtmf] if isinstance(caller.dtmf, str) else list(caller.dtmf)
        chan = Channel(self, self.namer.name(self.trunk_tech, self.trunk_peer), uid, uid, state=4,
                       context=self.trunk_context, exten=did, caller_num=caller.number,
                       caller_name=caller.name, events=events, keys=keys,
                       key_after=caller.dtmf_after, key_gap=caller.dtmf_gap)
        chan.cdr = Cdr(self, chan)
        self._channels[chan.name] = chan
        return chan

    def new_phone_channel(self, endpoint: str, number: str, phone: Caller, context: str,
                          events: list[ev.Headers]) -> Channel:
        """An office phone's own channel when it calls out (outbound.py): state Ring in
        the admin's internal context, Exten = the number it dialled."""
        tech, _, resource = endpoint.partition("/")
        uid = self.new_uniqueid()
        chan = Channel(self, self.namer.name(tech, resource.split("/", 1)[0]), uid, uid, state=4,
                       context=context, exten=number, caller_num=phone.number, caller_name=phone.name,
                       events=events)
        chan.cdr = Cdr(self, chan)
        self._channels[chan.name] = chan
        return chan

    def new_leg_channel(self, ep: Endpoint, trunk: Channel, events: list[ev.Headers]) -> Channel:
        chan = Channel(self, self.namer.name(ep.tech, ep.peer), self.new_uniqueid(), trunk.linkedid,
                       state=0, context="default", exten="s", events=events)
        self.next_sequence()             # the leg's own CDR object: never dispatched
        self._channels[chan.name] = chan
        return chan

    def unregister(self, chan: Channel) -> None:
        self._channels.pop(chan.name, None)
        self.namer.release(chan.name)

    # -- AMI --------------------------------------------------------------------------------
    def emit(self, headers: ev.Headers, events: list[ev.Headers] | None = None) -> None:
        """Record an event and queue it for the FakeAmi, in emission order."""
        self.events.append(headers)
        if events is not None:
            events.append(headers)
        if self._outbox is not None:
            self._emitted += 1
            self._outbox.put_nowait(headers)

    def _start_pump(self) -> None:
        if self.ami is not None and self._pump is None:
            self._outbox = asyncio.Queue()
            self._pump = asyncio.create_task(self._run_pump())

    async def _run_pump(self) -> None:
        assert self._outbox is not None and self.ami is not None
        while True:
            headers = await self._outbox.get()
            try:
                await self.ami.emit(headers)
            finally:
                self._delivered += 1
                async with self._progress:
                    self._progress.notify_all()

    async def flush(self) -> None:
        """Return once every event emitted so far was handed to the FakeAmi."""
        target = self._emitted
        async with self._progress:
            await self._progress.wait_for(lambda: self._delivered >= target)

    def live_channels(self) -> list[ev.Headers]:
        """CoreShowChannel header lists of the live channels (capture 16)."""
        now = time.time()
        return [ev.core_show_channel(c, c.app, c.app_data, now - c.created, c.bridge_id)
                for c in self._channels.values()]

    # -- calls ------------------------------------------------------------------------------
    async def call(self, did: str, caller: Caller | str | None = None, *,
                   phones: Mapping[str, Phone] | None = None) -> SimCall:
        """Run one inbound call to `did` through [ctrackd-inbound]; return once it ended
        and its events reached the FakeAmi."""
        self._start_pump()
        if not isinstance(caller, Caller):
            caller = Caller(caller)
        call = InboundCall(self, did, caller, dict(phones or {}))
        self._calls.add(call)
        try:
            await call.run()
        finally:
            self._calls.discard(call)
        if self._pump is not None:
            await self.flush()
        t = call.trunk
        return SimCall(t.uniqueid, t.name, did, caller, call.agi_status, call.fallback_status,
                       call.handler_status, t.vars.as_dict(), call.target, call.dial_status,
                       call.answered_by, call.recording, call.recorded, t.hangup_cause,
                       t.cdr.rows if t.cdr else [], call.cdrs, call.events, call.agi,
                       [leg.summary() for leg in call.ringer.created])

    async def outbound_call(self, endpoint: str, number: str, *, callee: Phone = Phone(),
                            phone: Caller | None = None, context: str = "internal",
                            timeout: int = 30) -> SimCall:
        """An office phone (`PJSIP/101`) calls `number` through the trunk:
        `Dial(<trunk>/<number>,<timeout>)` in its internal context, no ctrackd
        dialplan, no CTRACK_CALL_ID (see outbound.py: no capture has one).
        `callee` is the outside party (answers, busy, never answers...), `phone`
        the office side (its caller ID; hangup_after: gives up while it rings;
        hold_after_answer: hangs up first once bridged)."""
        from tests.simulator.outbound import OutboundCall   # outbound imports dialplan, like pbx

        self._start_pump()
        phone = phone or Caller(endpoint.rsplit("/", 1)[-1])
        call = OutboundCall(self, endpoint, number, phone, callee, context, timeout)
        self._calls.add(call)
        try:
            await call.run()
        finally:
            self._calls.discard(call)
        if self._pump is not None:
            await self.flush()
        t = call.trunk
        return SimCall(t.uniqueid, t.name, number, phone, None, None, None, t.vars.as_dict(),
                       call.target, call.dial_status, call.answered_by, None, False, t.hangup_cause,
                       t.cdr.rows if t.cdr else [], call.cdrs, call.events, [],
                       [leg.summary() for leg in call.ringer.created])

    async def restart(self, *, shutdown_after: float = 0.1, down_for: float = 0.3) -> None:
        """`core restart now` (17): live calls torn down (SoftHangupRequest cause 4),
        Shutdown, every AMI client dropped, refused for `down_for`, then accepting
        again with FullyBooted Uptime 0; uniqueids restart at `<new epoch>.0`."""
        calls = list(self._calls)
        for call in calls:
            call.restart()
        while any(c in self._calls for c in calls):
            await asyncio.sleep(0.01)
        await asyncio.sleep(shutdown_after)
        self.emit(ev.shutdown(restart=True))
        if self._pump is not None:
            await self.flush()
        if self.ami is not None:
            self.ami.drop_clients()
            await self.ami.pause_listening()
        await asyncio.sleep(down_for)
        self._counter = 0
        if self.ami is not None:
            await self.ami.start()

    async def close(self) -> None:
        if self._pump is not None:
            await self.flush()
            self._pump.cancel()
            await asyncio.gather(self._pump, return_exceptions=True)
            self._pump = None
