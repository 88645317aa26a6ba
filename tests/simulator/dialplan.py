"""The [ctrackd-inbound] dialplan run for one call: AMI events and CDR rows.

Steps follow asterisk-dialplan/extensions_ctrackd.conf (the contract in
docs/architecture.md, "Dialplan logic"), their priority numbers are looked up
in the file (gosub.priority_of), and the lines that build Dial's options and
its data (operator tagging: b() for SIP headers, U() for the whisper) are run
from the file's own text (gosub.run_line); the events and their
order follow the captures of a real Asterisk 22, cited per sequence below.
Where captures of the same situation disagree (Cdr and BridgeDestroy float
between runs, README "Caveats"), one recorded order is reproduced and named.
Ringing the phones (Dial, Queue) is phones.Ringer; this module owns the call
from arrival to its last Cdr.

The CDR rows follow main/cdr.c for these calls as cdr/*.csv shows them: one
row per dialled party (a ring group or a queue forks a row per target, same
start), a new row when the dialplan runs on after a Dial that had a party B
(Busy, Hangup: 03, 04), none after a Dial that created no channel (07:
lastapp stays Dial), the disposition from the DialEnd status or, at hang-up,
from the cause (`cdr_object_finalize()`), durations in truncated seconds.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tests.simulator import amievents as ev
from tests.simulator import gosub
from tests.simulator.agi_client import AgiResult, run_fastagi, run_stdin_agi
from tests.simulator.asterisk_args import (MAX_ARGS, cause_disposition, cdr_billsec, cdr_duration,
                                          dial_status_to_disposition, standard_app_args)
from tests.simulator.phones import Caller, Leg, Ringer

if TYPE_CHECKING:
    from tests.simulator.pbx import Channel, SimulatedAsterisk

@dataclass
class CdrRow:
    sequence: int
    start: float
    lastapp: str = ""
    lastdata: str = ""
    dstchannel: str = ""
    answer: float | None = None
    end: float | None = None
    disposition: str | None = None          # None is AST_CDR_NULL

    @property
    def duration(self) -> int:
        return cdr_duration(self.start, self.end if self.end is not None else time.time())

    @property
    def billsec(self) -> int:
        return cdr_billsec(self.answer, self.end if self.end is not None else time.time())


def _cdr_time(t: float | None) -> str:
    return "" if t is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(int(t)))


class Cdr:
    """The CDR rows of one party A (the inbound leg)."""

    def __init__(self, sim: SimulatedAsterisk, chan: Channel) -> None:
        self.sim, self.chan = sim, chan
        self.rows = [CdrRow(sim.next_sequence(), chan.created)]
        self.userfield = ""
        self.dial_rows: list[CdrRow] = []   # rows of the Dial/Queue in progress or just ended
        self.fork_pending = False           # next application starts a new row (03, 04)
        self.locked = False                 # a Dial without any channel keeps lastapp (07)

    def app(self, app: str, data: str) -> None:
        if self.fork_pending:
            self.fork_pending = False
            self.rows.append(CdrRow(self.sim.next_sequence(), time.time()))
        row = self.rows[-1]
        if row.end is None and not self.locked and not row.dstchannel:
            row.lastapp, row.lastdata = app, data

    def dial_begin(self, dest: str, app: str, data: str) -> CdrRow:
        row = self.rows[-1]
        if row.dstchannel or row.end is not None:
            start = self.dial_rows[0].start if self.dial_rows else time.time()
            row = CdrRow(self.sim.next_sequence(), start, app, data)
            self.rows.append(row)
        row.dstchannel, row.lastapp, row.lastdata = dest, app, data
        self.dial_rows.append(row)
        return row

    def dial_end(self, row: CdrRow, status: str) -> None:
        row.disposition = dial_status_to_disposition(status)
        if status == "ANSWER":
            row.answer = time.time()
        else:
            row.end = time.time()

    def dial_done(self, answered: bool) -> None:
        if not self.dial_rows:
            self.locked = True
        elif not answered:
            self.fork_pending = True
        self.dial_rows = []

    def answer(self) -> None:
        if self.rows[-1].answer is None:
            self.rows[-1].answer = time.time()

    def finalize(self, cause: int) -> list[dict[str, str]]:
        """cdr.c `cdr_object_finalize()` on every open row; the Cdr event fields."""
        now = time.time()
        for row in self.rows:
            if row.end is None:
                row.end = now
            if row.disposition is None:     # AST_CDR_NULL; if it stays so: "NO ANSWER"
                if row.answer is not None:
                    row.disposition = "ANSWERED"
                else:
                    row.disposition = cause_disposition(cause) if cause else "FAILED"
        return [self.fields(row) for row in self.rows]

    def fields(self, row: CdrRow) -> dict[str, str]:
        c = self.chan
        return {"AccountCode": "", "Source": c.caller_num or "", "Destination": c.exten,
                "DestinationContext": c.context, "CallerID": f'"{c.caller_name or ""}" <{c.caller_num or ""}>',
                "Channel": c.name, "DestinationChannel": row.dstchannel, "LastApplication": row.lastapp,
                "LastData": row.lastdata, "StartTime": _cdr_time(row.start), "AnswerTime": _cdr_time(row.answer),
                "EndTime": _cdr_time(row.end), "Duration": str(row.duration), "BillableSeconds": str(row.billsec),
                "Disposition": row.disposition or "NO ANSWER", "AMAFlags": "DOCUMENTATION",
                "UniqueID": c.uniqueid, "UserField": self.userfield, "LinkedID": c.linkedid,
                "Sequence": str(row.sequence)}


# Priorities of extensions_ctrackd.conf, [ctrackd-inbound] _[0-9+], read from the file.
_p = gosub.priority_of


_FLOW = gosub.DIALPLAN[gosub.INBOUND_CONTEXT][gosub.DID_PATTERN]


def _label(label: str) -> int:
    return next(s.priority for s in _FLOW if s.label == label)


def _containing(part: str) -> int:
    """The one step whose data holds `part` (for the long ExecIf lines)."""
    found = [s.priority for s in _FLOW if part in s.data]
    if len(found) != 1:
        raise LookupError(f"{part!r} in {len(found)} steps")
    return found[0]


P_CALL_ID = _p("Set(__CTRACK_CALL_ID=${UNIQUEID})")
P_ORIG_NAME = _p("Set(CTRACK_ORIG_NAME=${CALLERID(name)})")
#: cleared before the AGI: nothing stale may route, whisper or tag the call
CLEARED = ("CTRACK_RECORDING", "CTRACK_CALLERID_NAME", "CTRACK_PROMO_CODE", "CTRACK_WHISPER",
           "CTRACK_SIP_HEADERS", "CTRACK_HDR_CHANNEL", "CTRACK_HDR_CAMPAIGN")
P_CLEAR_FORWARD = min(s.priority for s in _FLOW if f"{s.app}({s.data})" == "Set(CTRACK_FORWARD=)")
P_AGI_URL = _p("Set(CTRACK_AGI_URL=agi://127.0.0.1:4573)")
P_FALLBACK_AGI_PATH = _p("Set(CTRACK_FALLBACK_AGI_PATH=/usr/local/bin/ctrackd-agi)")
P_CONFIG_PATH = _p("Set(CTRACK_CONFIG_PATH=/etc/ctrackd/ctrackd.yaml)")
P_AGI = _p("AGI(${CTRACK_AGI_URL}/track)")
P_MIXMONITOR = _p("MixMonitor(${CTRACK_RECORDING},b)")
P_CALLERID = _p("Set(CALLERID(name)=${CTRACK_CALLERID_NAME})")
P_ROUTE = _label("route")
P_OPTIONS = (_p("Set(CTRACK_DIAL_OPTIONS=)"), _containing("CTRACK_DIAL_OPTIONS=b("))  # cleared, b()
P_WHISPER = _containing("U(ctrackd-whisper^")
P_DIAL = _p("Dial(${CTRACK_FORWARD},${CTRACK_RING_TIMEOUT},${CTRACK_DIAL_OPTIONS})")
P_QUEUE = _label("queue")
P_DIALED = _label("dialed")
P_HANGUP = _p("Hangup()")
P_BUSY = _label("busy")
P_CONGESTION = _label("congestion")
P_FALLBACK_PUSH = _p("Set(CHANNEL(hangup_handler_push)=ctrackd-hangup,s,1)")
P_FALLBACK_AGI = _p("AGI(${CTRACK_FALLBACK_AGI_PATH},track,${CTRACK_CONFIG_PATH})")
P_LASTRESORT_SET = _p("Set(CTRACK_FORWARD=${CTRACKD_FALLBACK})")
P_NOWHERE = _label("nowhere") + 1
MONITOR_DIR = "/var/spool/asterisk/monitor"


class InboundCall:
    """One inbound call: the trunk leg, its legs, its timers and its result."""

    def __init__(self, sim: SimulatedAsterisk, did: str, caller: Caller, phones: dict) -> None:
        self.sim, self.did, self.caller = sim, did, caller
        self.events: list[ev.Headers] = []
        self.trunk: Channel = self._party_a(did, caller)
        self.ringer = Ringer(self, phones)
        self.agi: list[AgiResult] = []
        self.agi_status = self.fallback_status = self.handler_status = None
        self.target: str | None = None
        self.dial_status: str | None = None
        self.answered_by: str | None = None
        self.recording: str | None = None
        self.recorded = False
        self.cdrs: list[dict[str, str]] = []
        self.caller_gone = False            # the PSTN side hung up (HangupRequest already emitted)
        self.shutdown = False               # `core restart now` (capture 17)
        self._timers: list[asyncio.TimerHandle] = []

    def _party_a(self, did: str, caller: Caller) -> Channel:
        """The channel the dialplan runs on: the trunk leg of the inbound call."""
        return self.sim.new_trunk(did, caller, self.events)

    # -- the caller ------------------------------------------------------------------
    def caller_hangs_up(self, cause: int = 16) -> None:
        """The PSTN side drops: HangupRequest on the trunk leg at once (02, 05, 19)."""
        t = self.trunk
        if t.hungup.is_set():
            return
        self.caller_gone, t.hangup_cause = True, cause
        t.emit(ev.hangup_request(t, cause))
        t.hungup.set()

    def caller_hangs_up_in(self, delay: float) -> None:
        self._timers.append(asyncio.get_running_loop().call_later(max(0.0, delay), self.caller_hangs_up))

    def restart(self) -> None:
        """`core restart now`: SoftHangupRequest cause 4 on every leg (17)."""
        self.shutdown = True
        for chan in [self.trunk, *(leg.chan for leg in self.ringer.live)]:
            chan.emit(ev.soft_hangup_request(chan, 4))
        self.trunk.hungup.set()

    # -- the dialplan ------------------------------------------------------------------
    async def run(self) -> None:
        t = self.trunk
        t.emit(ev.newchannel(t))
        if self.caller.hangup_after is not None:
            self.caller_hangs_up_in(self.caller.hangup_after)
        try:
            await self._inbound()
        finally:
            for timer in self._timers:
                timer.cancel()

    def _set(self, name: str, value: str, priority: int | None = None) -> None:
        self.trunk.run_app("Set", f"{name}={value}", priority)
        self.trunk.set_var(name, value)

    async def _inbound(self) -> None:
        t, g = self.trunk, self.sim.globals
        t.context = "ctrackd-inbound"          # the admin's Goto(ctrackd-inbound,${EXTEN},1)
        t.run_app("NoOp", f"ctrackd: inbound call to {self.did} on {t.name}", 1)
        self._set("__CTRACK_CALL_ID", t.uniqueid, P_CALL_ID)
        self._set("CTRACK_ORIG_NAME", t.caller_name or "", P_ORIG_NAME)
        self._set("CTRACK_FORWARD", "", P_CLEAR_FORWARD)
        for name in CLEARED:
            self._set(name, "", _p(f"Set({name}=)"))
        url = g.get("CTRACKD_AGI") or "agi://127.0.0.1:4573"
        script = g.get("CTRACKD_FALLBACK_AGI") or "/usr/local/bin/ctrackd-agi"
        config = g.get("CTRACKD_CONFIG") or "/etc/ctrackd/ctrackd.yaml"
        self._set("CTRACK_AGI_URL", url, P_AGI_URL)
        self._set("CTRACK_FALLBACK_AGI_PATH", script, P_FALLBACK_AGI_PATH)
        self._set("CTRACK_CONFIG_PATH", config, P_CONFIG_PATH)
        t.run_app("AGI", f"{url}/track", P_AGI)
        agi_args = standard_app_args(f"{url}/track", MAX_ARGS)   # res_agi.c agi_exec_full()
        result = await run_fastagi(agi_args[0], t, agi_args[1:], usage_delay=self.sim.usage_delay)
        self.agi_status = self._agi_done(result)
        if result.status == "HANGUP":
            return await self.finish(16)
        if result.status != "SUCCESS" or not t.get_var("CTRACK_FORWARD"):
            if not await self._fallback(script, config):
                return await self.finish(t.hangup_cause or 16)
        await self._tracked()

    def _agi_done(self, result: AgiResult) -> str:
        self.agi.append(result)
        result.variables = self.trunk.vars.as_dict()
        self.trunk.set_var("AGISTATUS", result.status)
        return result.status

    async def _fallback(self, script: str, config: str) -> bool:
        """Step 3: hang-up handler first, then the stdin AGI, then CTRACKD_FALLBACK."""
        t = self.trunk
        t.run_app("Set", "CHANNEL(hangup_handler_push)=ctrackd-hangup,s,1", P_FALLBACK_PUSH)
        t.set_var("CHANNEL(hangup_handler_push)", "ctrackd-hangup,s,1")
        self._set("CTRACK_FORWARD", "", P_FALLBACK_PUSH + 1)
        t.run_app("AGI", f"{script},track,{config}", P_FALLBACK_AGI)
        result = await self._stdin_agi(f"{script},track,{config}", dead=False)
        self.fallback_status = self._agi_done(result)
        if result.status == "HANGUP":
            return False
        if result.status != "SUCCESS" or not t.get_var("CTRACK_FORWARD"):
            self._set("CTRACK_FORWARD", self.sim.globals.get("CTRACKD_FALLBACK", ""), P_LASTRESORT_SET)
        return True

    async def _stdin_agi(self, data: str, dead: bool) -> AgiResult:
        """AGI(script,args...): the data split like agi_exec_full(); the script is run
        as `fallback_agi_cmd` (missing: "File does not exist", NOTFOUND)."""
        args = standard_app_args(data, MAX_ARGS)
        if self.sim.fallback_agi_cmd is None:
            return AgiResult(status="NOTFOUND")
        return await run_stdin_agi(self.sim.fallback_agi_cmd, self.trunk, args[0], args[1:], dead=dead)

    async def _tracked(self) -> None:
        """Steps 4-6: MixMonitor, CALLERID(name), Dial or Queue, Busy/Congestion/Hangup."""
        t = self.trunk
        self.recording = t.get_var("CTRACK_RECORDING") or None
        if self.recording:
            t.run_app("MixMonitor", f"{self.recording},b", P_MIXMONITOR)
            path = self.recording if self.recording.startswith("/") else f"{MONITOR_DIR}/{self.recording}"
            t.set_var("MIXMONITOR_FILENAME", path)
            t.emit(ev.mixmonitor_start(t))
        name = t.get_var("CTRACK_CALLERID_NAME")
        if name:
            t.run_app("Set", f"CALLERID(name)={name}", P_CALLERID)
            t.set_var("CALLERID(name)", name)
        if not t.get_var("CTRACK_RING_TIMEOUT"):
            self._set("CTRACK_RING_TIMEOUT", "30", P_ROUTE)
        forward, timeout = t.get_var("CTRACK_FORWARD") or "", t.get_var("CTRACK_RING_TIMEOUT") or ""
        self.target = forward or None
        if t.hungup.is_set():
            return await self.finish(t.hangup_cause or 16)
        if not forward:                                   # (nowhere)
            return await self._reject("Congestion", 34, P_NOWHERE)
        for priority in P_OPTIONS:                        # b() when CTRACK_SIP_HEADERS=1
            await gosub.run_line(t, priority)
        if forward.startswith("Queue("):
            outcome = await self.ringer.queue(await gosub.run_line(t, P_QUEUE))
        else:
            await gosub.run_line(t, P_WHISPER)            # U() when CTRACK_WHISPER is set
            outcome = await self.ringer.dial(await gosub.run_line(t, P_DIAL))
        self.dial_status = outcome.status
        if outcome.winner is not None:
            return await self._bridged(outcome.winner)
        if t.hungup.is_set():
            return await self.finish(t.hangup_cause or 16)
        t.run_app("NoOp", f"ctrackd: DIALSTATUS={outcome.status} HANGUPCAUSE={t.hangup_cause}", P_DIALED)
        if outcome.status == "BUSY":
            return await self._reject("Busy", 17, P_BUSY)
        if outcome.status in ("CONGESTION", "CHANUNAVAIL"):
            return await self._reject("Congestion", 34, P_CONGESTION)
        t.run_app("Hangup", "", P_HANGUP)
        await self.finish(16)

    async def _reject(self, app: str, cause: int, priority: int) -> None:
        """Busy(3)/Congestion(3): the trunk goes to state Busy and the carrier drops
        with the same cause (03, 06, 07); Hangup(17|34) is never reached."""
        t = self.trunk
        t.run_app(app, "3", priority)
        t.set_state(7)
        self.caller_hangs_up(cause)
        await self.finish(cause)

    async def _bridged(self, leg: Leg) -> None:
        """Talk until one side hangs up: office first (01, 10) or caller first (02)."""
        t, bridge, answered = self.trunk, self.ringer.bridge_id, time.time()
        self.answered_by, self.recorded = leg.ep.target, bool(self.recording)
        if self.caller.hold_after_answer is not None:
            self.caller_hangs_up_in(self.caller.hold_after_answer)
        talk = leg.spec.talk if leg.spec.talk is not None else self.sim.max_talk
        keys = asyncio.create_task(self._operator_keys(leg)) if leg.spec.dtmf else None
        try:
            await asyncio.wait_for(t.hungup.wait(), talk)
        except asyncio.TimeoutError:
            pass
        if keys is not None:
            keys.cancel()
            await asyncio.gather(keys, return_exceptions=True)
        self.ringer.bridge_ended(answered)
        if self.shutdown:                               # 17: Cdr before the legs go
            self.cdrs = t.cdr.finalize(16)
            for fields in self.cdrs:
                t.emit(ev.cdr(fields))
            t.emit(ev.bridge_leave(bridge, 1, leg.chan))
            self.ringer.hangup(leg, 16, 16)
            t.emit(ev.bridge_leave(bridge, 0, t))
            await self.finish(16, cdr=False)
            t.emit(ev.bridge_destroy(bridge))
        elif t.hungup.is_set():                         # 02: the caller hung up
            self.ringer.agent_complete(leg, "caller", answered)
            t.emit(ev.bridge_leave(bridge, 1, t))
            t.emit(ev.bridge_leave(bridge, 0, leg.chan))
            t.emit(ev.bridge_destroy(bridge))
            leg.chan.emit(ev.hangup_request(leg.chan, 16))
            await self.finish(16, legs_first=[leg])
        elif self.ringer.in_queue:                      # 10: the member hung up
            leg.chan.emit(ev.hangup_request(leg.chan, 16))
            self.ringer.agent_complete(leg, "agent", answered)
            t.emit(ev.bridge_leave(bridge, 1, leg.chan))
            self.ringer.hangup(leg, 16, 16)
            t.emit(ev.bridge_leave(bridge, 0, t))
            await self.finish(16, before_hangup=[ev.bridge_destroy(bridge)])
        else:                                           # 01, 09: the phone hung up
            leg.chan.emit(ev.hangup_request(leg.chan, 16))
            t.emit(ev.bridge_leave(bridge, 1, leg.chan))
            self.ringer.hangup(leg, 16, 16)
            t.emit(ev.bridge_leave(bridge, 0, t))
            t.emit(ev.bridge_destroy(bridge))
            await self.finish(16)

    async def _operator_keys(self, leg: Leg) -> None:
        """The operator keys `Phone.dtmf` (e.g. "*1234#") once bridged: per digit
        DTMFBegin on the phone leg (Received) and on the trunk leg (Sent), then
        DTMFEnd on both, DurationMs 0 on the phone side and the tone's length on
        the trunk side, in the order of capture 13."""
        spec, t, phone = leg.spec, self.trunk, leg.chan
        tone = min(0.1, spec.dtmf_gap / 2)
        await asyncio.sleep(spec.dtmf_after)
        for i, digit in enumerate(spec.dtmf):
            if i:
                await asyncio.sleep(spec.dtmf_gap - tone)
            phone.emit(ev.dtmf_begin(phone, digit, "Received"))
            t.emit(ev.dtmf_begin(t, digit, "Sent"))
            await asyncio.sleep(tone)
            phone.emit(ev.dtmf_end(phone, digit, 0, "Received"))
            t.emit(ev.dtmf_end(t, digit, int(tone * 1000), "Sent"))

    async def finish(self, cause: int, *, legs_first: list[Leg] = (), before_hangup: list = (),
                     cdr: bool = True) -> None:
        """The trunk leg ends: SoftHangupRequest 16, HangupRequest, hang-up handlers,
        Hangup, then the Cdr rows (after the Hangup, as in 01-05, 07)."""
        t = self.trunk
        t.hungup.set()
        t.hangup_cause = cause
        t.emit(ev.soft_hangup_request(t, 16))
        t.emit(ev.hangup_request(t, cause))
        for leg in legs_first:
            self.ringer.hangup(leg, 16, False)
        for headers in before_hangup:
            t.emit(headers)
        await self._hangup_handlers()
        t.emit(ev.hangup(t, cause))
        self.sim.unregister(t)
        if cdr:
            self.cdrs = t.cdr.finalize(cause)
            for fields in self.cdrs:
                t.emit(ev.cdr(fields))

    async def _hangup_handlers(self) -> None:
        """CHANNEL(hangup_handler_push)=ctrackd-hangup,s,1 -> AGI(script,hangup,config)
        on the dead channel (only dead-safe AGI commands work there)."""
        t = self.trunk
        for handler in list(t.hangup_handlers):
            if handler.split(",", 1)[0] != "ctrackd-hangup":
                continue
            script = t.get_var("CTRACK_FALLBACK_AGI_PATH") or ""
            config = t.get_var("CTRACK_CONFIG_PATH") or ""
            t.run_app("AGI", f"{script},hangup,{config}")
            result = await self._stdin_agi(f"{script},hangup,{config}", dead=True)
            self.handler_status = result.status
            self.agi.append(result)
