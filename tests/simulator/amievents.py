"""AMI event builders in the exact header names and order of the captures.

The daemon's translator is tested against what the simulator emits, so every
header list here copies the shape recorded from a real Asterisk 22
(/work/shared/asterisk-captures/ami/*.txt): `Event`, `Privilege`, `Timestamp`
(time.time() with 6 decimals, manager.conf timestampevents=yes), then the
channel snapshot (main/manager_channels.c `ast_manager_build_channel_state_string`
order) with one `ChanVariable: NAME=value` per manager.conf `channelvars` name,
then the event's own headers. A second channel is the same snapshot with a
prefix (`Dest`, `Transferer`, ...). Builders return lists of (name, value)
because headers repeat.
"""

from __future__ import annotations

import time
from typing import Protocol

Headers = list[tuple[str, str]]

STATE_DESC = {0: "Down", 4: "Ring", 5: "Ringing", 6: "Up", 7: "Busy"}

#: main/causes.h texts, as Hangup's Cause-txt shows them.
CAUSE_TXT = {
    0: "Unknown", 1: "Unallocated (unassigned) number", 4: "Service or option not available",
    16: "Normal Clearing", 17: "User busy", 18: "No user responding", 19: "User alerting, no answer",
    20: "Subscriber absent", 21: "Call Rejected", 26: "Answered elsewhere",
    27: "Destination out of order", 34: "Circuit/channel congestion",
    38: "Network out of order", 66: "Channel not implemented",
}


class Snapshot(Protocol):
    """What a channel must expose to be rendered (pbx.Channel implements it)."""

    name: str
    state: int
    language: str
    accountcode: str
    context: str
    exten: str
    priority: int
    uniqueid: str
    linkedid: str

    def caller_headers(self) -> tuple[str, str, str, str]: ...
    def chan_variables(self) -> list[tuple[str, str]]: ...


def now_ts() -> str:
    return f"{time.time():.6f}"


def snapshot(ch: Snapshot, prefix: str = "") -> Headers:
    num, name, cnum, cname = ch.caller_headers()
    p = prefix
    hdrs: Headers = [
        (f"{p}Channel", ch.name), (f"{p}ChannelState", str(ch.state)),
        (f"{p}ChannelStateDesc", STATE_DESC.get(ch.state, "Unknown")),
        (f"{p}CallerIDNum", num), (f"{p}CallerIDName", name),
        (f"{p}ConnectedLineNum", cnum), (f"{p}ConnectedLineName", cname),
        (f"{p}Language", ch.language), (f"{p}AccountCode", ch.accountcode),
        (f"{p}Context", ch.context), (f"{p}Exten", ch.exten), (f"{p}Priority", str(ch.priority)),
        (f"{p}Uniqueid", ch.uniqueid), (f"{p}Linkedid", ch.linkedid),
    ]
    hdrs += [(f"{p}ChanVariable", f"{k}={v}") for k, v in ch.chan_variables()]
    return hdrs


def event(name: str, privilege: str, *parts: Headers) -> Headers:
    hdrs: Headers = [("Event", name), ("Privilege", privilege), ("Timestamp", now_ts())]
    for part in parts:
        hdrs += part
    return hdrs


def channel_event(name: str, ch: Snapshot, extra: Headers = (), privilege: str = "call,all") -> Headers:
    return event(name, privilege, snapshot(ch), list(extra))


# --- channel life -----------------------------------------------------------------

def newchannel(ch: Snapshot) -> Headers:
    return channel_event("Newchannel", ch)


def newstate(ch: Snapshot) -> Headers:
    return channel_event("Newstate", ch)


def newcallerid(ch: Snapshot, calling_pres: str = "0 (Presentation Allowed, Not Screened)") -> Headers:
    return channel_event("NewCallerid", ch, [("CID-CallingPres", calling_pres)])


def newconnectedline(ch: Snapshot) -> Headers:
    return channel_event("NewConnectedLine", ch)


def hangup_request(ch: Snapshot, cause: int | None) -> Headers:
    # A timeout hang-up (Dial NOANSWER) carries no Cause header at all (capture 04).
    return channel_event("HangupRequest", ch, [] if cause is None else [("Cause", str(cause))])


def soft_hangup_request(ch: Snapshot, cause: int) -> Headers:
    return channel_event("SoftHangupRequest", ch, [("Cause", str(cause))])


def hangup(ch: Snapshot, cause: int) -> Headers:
    return channel_event("Hangup", ch, [("Cause", str(cause)), ("Cause-txt", CAUSE_TXT.get(cause, "Unknown"))])


def var_set(ch: Snapshot, variable: str, value: str) -> Headers:
    return channel_event("VarSet", ch, [("Variable", variable), ("Value", value)], "dialplan,all")


def newexten(ch: Snapshot, app: str, data: str) -> Headers:
    return channel_event("Newexten", ch, [("Extension", ch.exten), ("Application", app), ("AppData", data)],
                         "dialplan,all")


def mixmonitor_start(ch: Snapshot) -> Headers:
    return channel_event("MixMonitorStart", ch)


def agi_exec_start(ch: Snapshot, command_id: int, command: str) -> Headers:
    return channel_event("AGIExecStart", ch, [("CommandId", str(command_id)), ("Command", command)], "agi,all")


def agi_exec_end(ch: Snapshot, command_id: int, command: str, code: int, result: str) -> Headers:
    return channel_event("AGIExecEnd", ch, [("CommandId", str(command_id)), ("Command", command),
                                            ("ResultCode", str(code)), ("Result", result)], "agi,all")


# --- DTMF (Privilege dtmf; captures 13 and 18) ---------------------------------------------

def dtmf_begin(ch: Snapshot, digit: str, direction: str) -> Headers:
    return channel_event("DTMFBegin", ch, [("Digit", digit), ("Direction", direction)], "dtmf,all")


def dtmf_end(ch: Snapshot, digit: str, duration_ms: int, direction: str) -> Headers:
    # DurationMs is 0 on the Received side, the tone's length on the Sent side (13).
    return channel_event("DTMFEnd", ch, [("Digit", digit), ("DurationMs", str(duration_ms)),
                                         ("Direction", direction)], "dtmf,all")


# --- dialling -------------------------------------------------------------------------

def dial_begin(caller: Snapshot, dest: Snapshot, dialstring: str) -> Headers:
    return event("DialBegin", "call,all", snapshot(caller), snapshot(dest, "Dest"), [("DialString", dialstring)])


def dial_state(caller: Snapshot, dest: Snapshot, status: str) -> Headers:
    return event("DialState", "call,all", snapshot(caller), snapshot(dest, "Dest"), [("DialStatus", status)])


def dial_end(caller: Snapshot, dest: Snapshot, status: str) -> Headers:
    return event("DialEnd", "call,all", snapshot(caller), snapshot(dest, "Dest"), [("DialStatus", status)])


# --- bridges ----------------------------------------------------------------------------

def bridge_headers(bridge_id: str, num_channels: int) -> Headers:
    return [("BridgeUniqueid", bridge_id), ("BridgeType", "basic"), ("BridgeTechnology", "simple_bridge"),
            ("BridgeCreator", "<unknown>"), ("BridgeName", "<unknown>"),
            ("BridgeNumChannels", str(num_channels)), ("BridgeVideoSourceMode", "none")]


def bridge_create(bridge_id: str) -> Headers:
    return event("BridgeCreate", "call,all", bridge_headers(bridge_id, 0))


def bridge_destroy(bridge_id: str) -> Headers:
    return event("BridgeDestroy", "call,all", bridge_headers(bridge_id, 0))


def bridge_enter(bridge_id: str, num_channels: int, ch: Snapshot) -> Headers:
    return event("BridgeEnter", "call,all", bridge_headers(bridge_id, num_channels), snapshot(ch))


def bridge_leave(bridge_id: str, num_channels: int, ch: Snapshot) -> Headers:
    return event("BridgeLeave", "call,all", bridge_headers(bridge_id, num_channels), snapshot(ch))


# --- queues (app_queue, Privilege agent) ---------------------------------------------

def queue_caller_join(ch: Snapshot, queue: str, position: int, count: int) -> Headers:
    return channel_event("QueueCallerJoin", ch, [("Queue", queue), ("Position", str(position)),
                                                 ("Count", str(count))], "agent,all")


def queue_caller_leave(ch: Snapshot, queue: str, position: int, count: int) -> Headers:
    return channel_event("QueueCallerLeave", ch, [("Queue", queue), ("Position", str(position)),
                                                  ("Count", str(count))], "agent,all")


def agent_event(name: str, caller: Snapshot, member: Snapshot, queue: str, interface: str,
                member_name: str, extra: Headers = ()) -> Headers:
    return event(name, "agent,all", snapshot(caller), snapshot(member, "Dest"),
                 [("Queue", queue), ("Interface", interface), ("MemberName", member_name)], list(extra))


# --- CDR, system, snapshots ------------------------------------------------------------

CDR_FIELDS = ("AccountCode", "Source", "Destination", "DestinationContext", "CallerID", "Channel",
              "DestinationChannel", "LastApplication", "LastData", "StartTime", "AnswerTime",
              "EndTime", "Duration", "BillableSeconds", "Disposition", "AMAFlags", "UniqueID",
              "UserField", "LinkedID", "Sequence")


def cdr(values: dict[str, str]) -> Headers:
    """cdr_manager.c: the fixed fields, then the `[mappings]` LinkedID and Sequence."""
    return event("Cdr", "cdr,all", [(k, values.get(k, "")) for k in CDR_FIELDS])


def fully_booted(uptime: int, last_reload: int) -> Headers:
    # No Timestamp on FullyBooted in the captures: it is sent to one session at login.
    return [("Event", "FullyBooted"), ("Privilege", "system,all"), ("Uptime", str(uptime)),
            ("LastReload", str(last_reload)), ("Status", "Fully Booted")]


def shutdown(restart: bool) -> Headers:
    return event("Shutdown", "system,all", [("Shutdown", "Cleanly"), ("Restart", "True" if restart else "False")])


def device_state_change(device: str, state: str) -> Headers:
    return event("DeviceStateChange", "call,all", [("Device", device), ("State", state)])


def core_show_channel(ch: Snapshot, app: str, app_data: str, duration_s: float, bridge_id: str,
                      action_id: str | None = None) -> Headers:
    """CoreShowChannel as in capture 16: no Privilege, no Timestamp."""
    secs = int(duration_s)
    hdrs: Headers = [("Event", "CoreShowChannel")]
    if action_id is not None:
        hdrs.append(("ActionID", action_id))
    hdrs += snapshot(ch)
    hdrs += [("Application", app), ("ApplicationData", app_data),
             ("Duration", f"{secs // 3600:02d}:{secs % 3600 // 60:02d}:{secs % 60:02d}"),
             ("BridgeId", bridge_id)]
    return hdrs
