"""Fidelity of the Asterisk simulator against the real Asterisk 22 captures.

The daemon's end-to-end tests trust tests/simulator/ to behave like Asterisk,
so this file checks the simulator itself: the C ports against cases worked out
from the C source, the AGI client against a tiny FastAGI server, and each
scenario's AMI event sequence, header shapes and CDR rows against the capture
of the same scenario.
"""

from __future__ import annotations

import asyncio
import csv
import json
import base64
import sys
from pathlib import Path

import pytest

from tests.simulator.agi_client import run_fastagi, run_stdin_agi
from tests.simulator.ami_server import FakeAmi, read_capture
from tests.simulator.asterisk_args import (
    ChannelVars, cdr_billsec, cdr_duration, exec_app_data, mset_assignments, parse_args, separate_args,
    set_assignment, tvdiff_ms)
from tests.simulator.pbx import SimulatedAsterisk
from tests.simulator.phones import Caller, Phone, QueueMember

NOISE = {"VarSet", "Newexten", "DeviceStateChange", "AGIExecStart", "AGIExecEnd", "SuccessfulAuth",
         "FullyBooted", "PeerStatus"}
SETUP = {"DialBegin", "DialState", "DialEnd", "BridgeEnter", "AgentConnect"}


# --- asterisk_args: cases worked out by hand from the C source ------------------------

@pytest.mark.parametrize("line, argv", [
    ('SET VARIABLE FORWARD_TO "IAX2/phones/100"', ["SET", "VARIABLE", "FORWARD_TO", "IAX2/phones/100"]),
    ('EXEC MSet "A=1,B=2"', ["EXEC", "MSet", "A=1,B=2"]),
    ("EXEC MSet A=1 B=2", ["EXEC", "MSet", "A=1", "B=2"]),              # unquoted: split on space
    (r'SET VARIABLE X "a \"q\" \\ b"', ["SET", "VARIABLE", "X", 'a "q" \\ b']),
    (r"SET VARIABLE X a\b", ["SET", "VARIABLE", "X", "ab"]),              # \ before any char: dropped
    (r"SET VARIABLE X a\ b", ["SET", "VARIABLE", "X", "a b"]),            # escaped space joins
    ('SET VARIABLE X ab"c d"e', ["SET", "VARIABLE", "X", "abc de"]),     # quote mid-word: no split
    ('SET VARIABLE X ""', ["SET", "VARIABLE", "X", ""]),                 # empty argument
    ("GET  VARIABLE\tX ", ["GET", "VARIABLE", "X"]),
    ('SET VARIABLE X "Яндекс.Директ"', ["SET", "VARIABLE", "X", "Яндекс.Директ"]),
    ("NOOP \\", ["NOOP"]),                                              # trailing backslash vanishes
])
def test_parse_args_port(line: str, argv: list[str]) -> None:
    assert parse_args(line) == argv


def test_parse_args_truncates_at_max_args() -> None:
    assert len(parse_args(" ".join(f"w{i}" for i in range(200)))) == 127


def test_exec_passes_argv2_only() -> None:
    assert exec_app_data(parse_args("EXEC MSet A=1 B=2")) == ("MSet", "A=1")
    assert exec_app_data(parse_args("EXEC NoOp")) == ("NoOp", "")


@pytest.mark.parametrize("data, pairs", [
    ("CTRACK_FORWARD=PJSIP/101&PJSIP/102,CTRACK_RING_TIMEOUT=20",
     [("CTRACK_FORWARD", "PJSIP/101&PJSIP/102"), ("CTRACK_RING_TIMEOUT", "20")]),
    (r"L=a\,b,X=1", [("L", "a,b"), ("X", "1")]),
    ("L=Sale (50%,X=1", [("L", "Sale (50%,X=1")]),                     # open paren swallows the comma
    ("L=(a,b),X=1", [("L", "(a,b)"), ("X", "1")]),
    ("L=[a,b],X=1", [("L", "[a,b]"), ("X", "1")]),
    ("URL=a=b=c", [("URL", "a=b=c")]),                                  # '=' in the value
    ('L="a,b",X=1', [("L", "a,b"), ("X", "1")]),                        # quotes protect and vanish
    ('L=say "hi"', [("L", "say hi")]),
    (r"L=x\\y", [("L", "x\\y")]),
    (r"A\=B=c", [("A", "B=c")]),                                        # the comma pass eats the escape
    ("A=1,,NOEQUALS,", [("A", "1")]),
    ("__CTRACK_CHANNEL=Яндекс.Директ", [("__CTRACK_CHANNEL", "Яндекс.Директ")]),
])
def test_mset_port(data: str, pairs: list[tuple[str, str]]) -> None:
    assert mset_assignments(data) == pairs


def test_mset_99th_slot_is_raw_rest() -> None:
    data = ",".join(f"V{i}=\\(x{i}" for i in range(100))
    pairs = mset_assignments(data)
    assert len(pairs) == 99 and pairs[0] == ("V0", "(x0")
    assert pairs[-1] == ("V98", "\\(x98,V99=\\(x99")                     # not split, not un-escaped


def test_value_slot_of_equals_split_is_raw() -> None:
    assert separate_args('N"a"=v"q"\\x', "=", True, 2) == ["Na", 'v"q"\\x']


def test_set_keeps_everything_after_first_equals() -> None:
    assert set_assignment("CDR(userfield)=ctrack;did=7495") == ("CDR(userfield)", "ctrack;did=7495")
    assert set_assignment('X="a\\b"') == ("X", '"a\\b"')
    assert set_assignment("NOEQUALS") is None


def test_channel_vars_inheritance_and_prefix() -> None:
    v = ChannelVars()
    assert v.set("__CTRACK_CALL_ID", "1.1") == ("__CTRACK_CALL_ID", "1.1")
    v.set("_ONCE", "o")
    v.set("PLAIN", "p")
    v.set("__CTRACK_CHANNEL", "ads")
    assert v.set("CTRACK_CALL_ID", "1.2") == ("CTRACK_CALL_ID", "1.2")   # same variable by tail
    assert v.get("CTRACK_CALL_ID") == "1.2" and v.get("ctrack_call_id") is None
    assert v.inherited() == [("__CTRACK_CHANNEL", "ads"), ("ONCE", "o")]  # CALL_ID lost its __
    assert v.set("PLAIN", None) == ("PLAIN", "") and v.set("PLAIN", None) is None


def test_cdr_arithmetic() -> None:
    assert tvdiff_ms(15.1, 10.9) == 4200
    assert cdr_duration(1795332111.565371, 1795332116.600270) == 5          # capture 01
    assert cdr_billsec(1795332112.575414, 1795332116.600270) == 4
    assert cdr_billsec(None, 10.0) == 0
    assert cdr_duration(10.0, 10.999) == 0                                 # truncated, not rounded


# --- a tiny FastAGI server ----------------------------------------------------------------

class TinyAgi:
    """Answers `track` with one EXEC MSet per DID (or a scripted list of lines)."""

    def __init__(self, routes: dict[str, str | list[str]]) -> None:
        self.routes, self.envs, self.replies = routes, [], []
        self.sessions = 0

    async def settled(self, sessions: int = 1) -> None:
        """Wait until `sessions` dialogues have read Asterisk's final bytes."""
        while self.sessions < sessions:
            await asyncio.sleep(0.005)

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        env = {}
        while (line := await reader.readline()) not in (b"\n", b""):
            key, _, value = line.decode().rstrip("\n").partition(": ")
            env[key] = value
        self.envs.append(env)
        route = self.routes.get(env.get("agi_extension", ""), [])
        for line in [f'EXEC MSet "{route}"'] if isinstance(route, str) else route:
            if isinstance(line, float):
                await asyncio.sleep(line)
                continue
            writer.write(f"{line}\n".encode())
            await writer.drain()
            self.replies.append(await _reply(reader))
        writer.write_eof()
        self.replies.append(await reader.read())                            # Asterisk's final HANGUP
        writer.close()
        self.sessions += 1


async def _reply(reader: asyncio.StreamReader) -> bytes:
    data = await reader.readline()
    while data.startswith(b"520-") and not data.endswith(b"520 End of proper usage.\n"):
        data += await reader.readline()
    if data == b"HANGUP\n":                                                  # inline, then the reply
        data += await reader.readline()
    return data


def mset(forward: str, timeout: int = 20, channel: str = "google-ads") -> str:
    return (f"__CTRACK_CHANNEL={channel},CTRACK_FORWARD={forward},CTRACK_RING_TIMEOUT={timeout},"
            "CTRACK_RECORDING=ctrackd-x.wav,CTRACK_TRACKING=static")


# --- the AGI client -------------------------------------------------------------------------

async def test_agi_dialogue_reports_variables(ami: FakeAmi) -> None:
    agi = TinyAgi({"74950000001": [
        r'EXEC MSet "__CTRACK_CHANNEL=Яндекс.Директ,CTRACK_LABEL=a\\,b"',
        "GET VARIABLE CTRACK_CHANNEL", "GET VARIABLE NOPE", "SET VARIABLE X", "FOO BAR", "NOOP",
        "EXEC NoSuchApp x"]})
    sim = SimulatedAsterisk(("127.0.0.1", await agi.start()), ami)
    chan = sim.new_trunk("74950000001", Caller("+79161234567"), [])
    result = await run_fastagi(sim.globals["CTRACKD_AGI"] + "/track", chan, ["a", "b"], usage_delay=0)
    assert result.status == "SUCCESS"
    await agi.settled()
    assert result.variables == {} and chan.vars.as_dict() == {"CTRACK_LABEL": "a,b",
                                                               "CTRACK_CHANNEL": "Яндекс.Директ"}
    assert agi.replies == [b"200 result=0\n", "200 result=1 (Яндекс.Директ)\n".encode(), b"200 result=0\n",
                           b"520-Invalid command syntax.  Proper usage follows:\n"
                           b"Sets a variable to the current channel.\n520 End of proper usage.\n",
                           b"510 Invalid or unknown command\n", b"200 result=0\n", b"200 result=-2\n",
                           b"HANGUP\n"]
    env = agi.envs[0]
    assert (env["agi_network"], env["agi_network_script"], env["agi_arg_2"]) == ("yes", "track", "b")


async def test_agi_exec_expands_variables_only_with_agiexecfull() -> None:
    agi = TinyAgi({"1": ['EXEC Set "A=${CTRACK_CALL_ID}"', 'SET VARIABLE AGIEXECFULL "yes"',
                         'EXEC Set "B=${CTRACK_CALL_ID}"']})
    sim = SimulatedAsterisk(("127.0.0.1", await agi.start()))
    chan = sim.new_trunk("1", Caller("9"), [])
    chan.vars.set("__CTRACK_CALL_ID", "7.7")
    await run_fastagi(sim.globals["CTRACKD_AGI"] + "/track", chan)
    assert (chan.get_var("A"), chan.get_var("B")) == ("${CTRACK_CALL_ID}", "7.7")


async def test_agi_environment_order_matches_capture_a(captures: Path) -> None:
    chunks = [json.loads(x) for x in (captures / "agi/A-track-request-3-set-variable-1-exec.jsonl")
              .read_text().splitlines()]
    text = b"".join(base64.b64decode(c["b64"]) for c in chunks if c["dir"] == "in").decode()
    expected = [line.split(":")[0] for line in text.split("\n\n")[0].splitlines()]
    agi = TinyAgi({})
    sim = SimulatedAsterisk(("127.0.0.1", await agi.start()))
    chan = sim.new_trunk("74950000001", Caller("+79161234567"), [])
    await run_fastagi(sim.globals["CTRACKD_AGI"] + "/track", chan, ["74950000001", "+79161234567"])
    assert list(agi.envs[0]) == expected
    assert agi.envs[0]["agi_calleridname"] == "unknown" and agi.envs[0]["agi_dnid"] == "unknown"


async def test_agi_failure_when_nothing_listens() -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    sim = SimulatedAsterisk(("127.0.0.1", port))
    chan = sim.new_trunk("1", Caller("2"), [])
    assert (await run_fastagi(f"agi://127.0.0.1:{port}/track", chan)).status == "FAILURE"


async def test_agi_failure_line_and_hangup_mid_dialogue() -> None:
    agi = TinyAgi({"1": ["failure"], "2": ['VERBOSE "x" 1', 0.3, 'STREAM FILE beep ""', "ANSWER",
                                          "GET VARIABLE CTRACK_CALL_ID"]})
    sim = SimulatedAsterisk(("127.0.0.1", await agi.start()))
    url = sim.globals["CTRACKD_AGI"] + "/track"
    assert (await run_fastagi(url, sim.new_trunk("1", Caller("9"), []))).status == "FAILURE"
    chan = sim.new_trunk("2", Caller("9"), [])
    chan.vars.set("CTRACK_CALL_ID", "42.1")
    asyncio.get_running_loop().call_later(0.1, chan.hungup.set)
    result = await run_fastagi(url, chan)
    await agi.settled(2)
    assert result.status == "HANGUP"                                        # agi/C
    assert agi.replies[-4:] == [b"HANGUP\n511 Command Not Permitted on a dead channel or intercept routine\n",
                                b"511 Command Not Permitted on a dead channel or intercept routine\n",
                                b"200 result=1 (42.1)\n", b"HANGUP\n"]


STDIN_AGI = r'''
import sys
env = {}
for line in sys.stdin:
    if line == "\n":
        break
    k, _, v = line.rstrip("\n").partition(": ")
    env[k] = v
def cmd(text):
    sys.stdout.write(text + "\n"); sys.stdout.flush()
    return sys.stdin.readline()
if env.get("agi_arg_1") == "hangup":
    r = cmd("GET VARIABLE DIALSTATUS")
    open(env["agi_arg_2"] + ".hangup", "w").write(r + cmd("STREAM FILE beep \"\""))
else:
    cmd('EXEC MSet "__CTRACK_CHANNEL=fallback-ch,CTRACK_FORWARD=IAX2/phones/100,CTRACK_TRACKING=fallback"')
sys.exit(int(env.get("agi_arg_3", "0")))
'''


async def test_stdin_agi_runner(tmp_path: Path) -> None:
    script = tmp_path / "agi.py"
    script.write_text(STDIN_AGI)
    sim = SimulatedAsterisk()
    chan = sim.new_trunk("1", Caller("9"), [])
    ok = await run_stdin_agi([sys.executable, str(script)], chan, str(script), ["track", "cfg"])
    assert ok.status == "SUCCESS" and ok.returncode == 0 and chan.get_var("CTRACK_TRACKING") == "fallback"
    bad = await run_stdin_agi([sys.executable, str(script)], chan, str(script), ["track", "cfg", "3"])
    assert bad.status == "FAILURE" and bad.returncode == 3
    assert (await run_stdin_agi([str(tmp_path / "missing")], chan, "x")).status == "NOTFOUND"


async def test_fallback_path_and_hangup_handler(tmp_path: Path, ami: FakeAmi) -> None:
    script = tmp_path / "agi.py"
    script.write_text(STDIN_AGI)
    sim = SimulatedAsterisk(("127.0.0.1", 1), ami, fallback_agi_cmd=[sys.executable, str(script)],
                            globals={"CTRACKD_CONFIG": str(tmp_path / "cfg")},
                            default_phone=Phone(answer_after=0.05, talk=0.05))
    call = await sim.call("74950000008", Caller("+79161234567"))
    assert (call.agi_status, call.fallback_status, call.hangup_handler_status) == ("FAILURE", "SUCCESS", "SUCCESS")
    assert call.variables["CTRACK_TRACKING"] == "fallback" and call.dial_status == "ANSWER"
    assert (tmp_path / "cfg.hangup").read_text() == ("200 result=1 (ANSWER)\n"
                                                     "511 Command Not Permitted on a dead channel or intercept routine\n")
    assert call.recording is None and "MixMonitorStart" not in call.event_names()


# --- scenarios against the captures -----------------------------------------------------------

CALLER = "+79161234567"
NEVER = Phone(never_answers=True)
QUICK = Phone(answer_after=0.2, talk=0.3)
SCENARIOS = {   # capture number: (DID, AGI route, phones, caller, queues)
    "01": ("74950000001", mset("IAX2/phones/100"), {"IAX2/phones/100": QUICK}, Caller(CALLER), None),
    "03": ("74950000003", mset("IAX2/phones/486"), {"IAX2/phones/486": Phone(busy=True)}, Caller(CALLER), None),
    "04": ("74950000004", mset("IAX2/phones/480", timeout=1), {"IAX2/phones/480": NEVER}, Caller(CALLER), None),
    "05": ("74950000005", mset("IAX2/phones/480"), {"IAX2/phones/480": NEVER},
           Caller(CALLER, hangup_after=0.3), None),
    "07": ("74950000007", mset("IAX2/phones-offline/100"), {"IAX2/phones-offline/100": Phone(unavailable=True)},
           Caller(CALLER), None),
    "09": ("74950000009", mset("IAX2/phones/100&IAX2/phones/101"),
           {"IAX2/phones/100": NEVER, "IAX2/phones/101": QUICK}, Caller(CALLER), None),
    "10": ("74950000010", mset("Queue(sales)"), {"IAX2/phones/100": QUICK, "IAX2/phones/101": NEVER},
           Caller(CALLER), {"sales": [QueueMember("IAX2/phones/101", "Office 101"),
                                      QueueMember("IAX2/phones/100", "Office 100")]}),
    "19": ("74950000092", ['VERBOSE "ctrack: looking up route" 1', 0.4, 'STREAM FILE beep ""', "ANSWER",
                           "GET VARIABLE CTRACK_CALL_ID", 'SET VARIABLE FORWARD_TO "IAX2/phones/100"'],
           {}, Caller(CALLER, hangup_after=0.2), None),
}


def call_events(messages: list) -> list:
    return [m for m in messages if dict(m).get("Event") and dict(m)["Event"] not in NOISE]


def names(messages: list) -> list[str]:
    return [dict(m)["Event"] for m in messages]


def capture(captures: Path, number: str) -> tuple[list, list[list[str]]]:
    events = call_events(read_capture(next((captures / "ami").glob(f"{number}-*.txt")), skip_login=True))
    path = next(p for p in (captures / "cdr").glob(f"{number}-*.csv") if not p.name.endswith(".custom.csv"))
    rows = list(csv.reader(path.open()))
    return events, rows


async def run_scenario(number: str, ami: FakeAmi):
    did, route, phones, caller, queues = SCENARIOS[number]
    agi = TinyAgi({did: route})
    sim = SimulatedAsterisk(("127.0.0.1", await agi.start()), ami, phones=phones, queues=queues)
    call = await sim.call(did, caller)
    await sim.close()
    return call


@pytest.mark.parametrize("number", sorted(SCENARIOS))
async def test_scenario_matches_capture(number: str, captures: Path, ami: FakeAmi) -> None:
    call = await run_scenario(number, ami)
    expected, rows = capture(captures, number)
    got = call_events(call.events)
    # Cdr events race the Hangup events in Asterisk (README "Caveats"): compare the
    # rest exactly, the Cdr count, and that every Cdr comes after the call was set up.
    assert [n for n in names(got) if n != "Cdr"] == [n for n in names(expected) if n != "Cdr"]
    assert names(got).count("Cdr") == names(expected).count("Cdr") == len(rows)
    for events in (got, expected):
        setup = [i for i, n in enumerate(names(events)) if n in SETUP]
        assert all(i > max(setup, default=-1) for i, n in enumerate(names(events)) if n == "Cdr")
    shapes: dict[str, set] = {}
    for message in expected:
        shapes.setdefault(dict(message)["Event"], set()).add(tuple(k for k, _ in message))
    for message in got:
        assert tuple(k for k, _ in message) in shapes[dict(message)["Event"]], dict(message)["Event"]
    # CDR rows: same applications, dispositions, party B presence and Sequence spacing.
    assert [(c["LastApplication"], c["Disposition"], c["DestinationChannel"] == "") for c in call.cdrs] == \
           [(r[7], r[14], r[6] == "") for r in rows]
    assert [int(c["Sequence"]) - int(call.cdrs[0]["Sequence"]) for c in call.cdrs] == \
           [int(r[20]) - int(rows[0][20]) for r in rows]
    for c in call.cdrs:
        assert (c["UniqueID"], c["LinkedID"], c["Source"]) == (call.call_id, call.call_id, CALLER)


@pytest.mark.parametrize("number", sorted(SCENARIOS))
async def test_scenario_cdr_follows_asterisk_rules(number: str, ami: FakeAmi) -> None:
    call = await run_scenario(number, ami)
    for row, fields in zip(call.cdr_rows, call.cdrs):
        assert row.end is not None and row.start <= row.end
        assert int(fields["Duration"]) == cdr_duration(row.start, row.end) == int((row.end - row.start) + 1e-6)
        assert int(fields["BillableSeconds"]) == cdr_billsec(row.answer, row.end)
        assert (row.answer is not None) == (fields["Disposition"] == "ANSWERED") == bool(fields["AnswerTime"])
    dialled = [r for r in call.cdr_rows if r.lastapp in ("Dial", "Queue") and r.dstchannel]
    assert len({r.start for r in dialled}) <= 1                     # forked rows share the start (09, 10)
    answered = [r for r in call.cdr_rows if r.answer is not None]
    for loser in (r for r in dialled if r.answer is None and answered):
        assert loser.end <= answered[0].end                         # cancelled when the other answered
    if number == "04":
        assert [r.duration for r in call.cdr_rows] == [1, 0]        # RING_TIMEOUT=1, then Hangup()
        assert call.cdr_rows[1].start >= call.cdr_rows[0].end
    if number == "19":
        assert call.agi_status == "HANGUP" and call.cdrs[0]["LastData"].endswith("/track")
        assert MSG_511 in [chunk for _, _, chunk in call.agi[0].transcript]


MSG_511 = b"511 Command Not Permitted on a dead channel or intercept routine\n"


async def test_caller_hangs_up_while_bridged_matches_capture_02(captures: Path, ami: FakeAmi) -> None:
    agi = TinyAgi({"74950000002": mset("IAX2/phones/100")})
    sim = SimulatedAsterisk(("127.0.0.1", await agi.start()), ami,
                            phones={"IAX2/phones/100": Phone(answer_after=0.1, talk=None)})
    call = await sim.call("74950000002", Caller(CALLER, hold_after_answer=0.2))
    expected, _ = capture(captures, "02")
    assert [n for n in names(call_events(call.events)) if n != "Cdr"] == \
           [n for n in names(expected) if n != "Cdr"]
    assert call.cdr["Disposition"] == "ANSWERED" and call.hangup_cause == 16


async def test_hundreds_of_concurrent_calls(ami: FakeAmi) -> None:
    dids = [f"749500{i:05d}" for i in range(200)]
    agi = TinyAgi({did: mset(f"PJSIP/{i}") for i, did in enumerate(dids)})
    sim = SimulatedAsterisk(("127.0.0.1", await agi.start()), ami, trunk="PJSIP/trunk",
                            default_phone=Phone(answer_after=0.05, talk=0.05))
    calls = await asyncio.gather(*(sim.call(did, Caller(f"+7916{i:07d}")) for i, did in enumerate(dids)))
    await sim.close()
    uniqueids = [dict(e)["Uniqueid"] for e in sim.events if dict(e)["Event"] == "Newchannel"]
    assert len(uniqueids) == len(set(uniqueids)) == 400
    for i, call in enumerate(calls):
        assert call.answered_by == f"PJSIP/{i}" and call.cdr["Disposition"] == "ANSWERED"
        assert {v for e in call.events for k, v in e if k == "Linkedid"} == {call.call_id}
        assert call.variables["CTRACK_CALL_ID"] == call.call_id
    assert sim.live_channels() == []


async def test_live_channels_shape_capture_16_and_restart_17(captures: Path, ami: FakeAmi) -> None:
    agi = TinyAgi({"74950000016": mset("IAX2/phones/100", channel="Яндекс.Директ")})
    sim = SimulatedAsterisk(("127.0.0.1", await agi.start()), ami,
                            phones={"IAX2/phones/100": Phone(answer_after=0.05, talk=None)})
    task = asyncio.create_task(sim.call("74950000016", Caller(CALLER)))
    while len(sim.live_channels()) < 2 or not all(dict(c)["BridgeId"] for c in sim.live_channels()):
        await asyncio.sleep(0.01)
    shape = [m for m in read_capture(next((captures / "ami").glob("16-*.txt")))
             if dict(m).get("Event") == "CoreShowChannel"][0]
    expected = [k for k, _ in shape if k != "ActionID"]
    for channel in sim.live_channels():
        assert [k for k, _ in channel] == expected
        assert ("ChanVariable", "CTRACK_CHANNEL=Яндекс.Директ") in channel
    await sim.restart(shutdown_after=0.01, down_for=0.05)
    call = await task
    assert [dict(e).get("Cause") for e in call.events if dict(e)["Event"] == "SoftHangupRequest"][:2] == ["4", "4"]
    assert names(sim.events)[-1] == "Shutdown" and sim.live_channels() == []
    assert sim.new_uniqueid().endswith(".0")


async def test_agi_line_over_2047_bytes_is_cut_into_two_commands() -> None:
    long_value = "x" * 3000                                   # fgets(buf, AGI_BUF_LEN=2048)
    agi = TinyAgi({"1": [f'SET VARIABLE LONG "{long_value}"']})
    sim = SimulatedAsterisk(("127.0.0.1", await agi.start()))
    chan = sim.new_trunk("1", Caller("9"), [])
    result = await run_fastagi(sim.globals["CTRACKD_AGI"] + "/track", chan)
    line = f'SET VARIABLE LONG "{long_value}"\n'
    assert [len(c) for c in result.commands] == [2047, len(line) - 2047 - 1]   # the tail runs on its own
    assert chan.get_var("LONG") == "x" * (2047 - len('SET VARIABLE LONG "'))
    replies = [chunk for _, direction, chunk in result.transcript if direction == "AST->SRV"]
    assert replies[-3:] == [b"200 result=1\n", b"510 Invalid or unknown command\n", b"HANGUP\n"]


async def test_callerid_name_and_dial_variables_reach_phone_and_cdr(ami: FakeAmi) -> None:
    route = mset("IAX2/phones/100") + r",CTRACK_CALLERID_NAME=\\[Google Ads\\] Иван"
    agi = TinyAgi({"74950000001": route})
    sim = SimulatedAsterisk(("127.0.0.1", await agi.start()), ami,
                            phones={"IAX2/phones/100": Phone(answer_after=0.05, talk=0.05)})
    call = await sim.call("74950000001", Caller(CALLER, "Иван"))
    assert agi.envs[0]["agi_calleridname"] == "Иван" and call.variables["CTRACK_ORIG_NAME"] == "Иван"
    trunk_cid = [e for e in call.events if dict(e)["Event"] == "NewCallerid" and dict(e)["Channel"] == call.channel]
    assert dict(trunk_cid[0])["CallerIDName"] == "[Google Ads] Иван"
    begin = dict(next(e for e in call.events if dict(e)["Event"] == "DialBegin"))
    assert (begin["DestCallerIDNum"], begin["DestConnectedLineName"]) == ("74950000001", "[Google Ads] Иван")
    assert call.cdr["CallerID"] == f'"[Google Ads] Иван" <{CALLER}>'
    leg = begin["DestChannel"]
    assert {k: call.variables[k] for k in ("DIALSTATUS", "DIALEDPEERNAME", "DIALEDPEERNUMBER")} == \
           {"DIALSTATUS": "ANSWER", "DIALEDPEERNAME": leg, "DIALEDPEERNUMBER": "phones/100"}
    assert int(call.variables["DIALEDTIME_MS"]) >= int(call.variables["ANSWEREDTIME_MS"]) >= 40


async def test_dialplan_events_shapes_and_inheritance_order(captures: Path, ami: FakeAmi) -> None:
    agi = TinyAgi({"74950000001": mset("IAX2/phones/100")})
    sim = SimulatedAsterisk(("127.0.0.1", await agi.start()), ami, dialplan_events=True,
                            phones={"IAX2/phones/100": Phone(answer_after=0.05, talk=0.05)})
    call = await sim.call("74950000001", Caller(CALLER))
    expected = read_capture(next((captures / "ami").glob("01-*.txt")), skip_login=True)
    shapes = {(dict(m)["Event"], tuple(k for k, _ in m)) for m in expected if dict(m).get("Event")}
    extra = [e for e in call.events if dict(e)["Event"] in ("VarSet", "AGIExecStart", "AGIExecEnd")]
    assert extra and all((dict(e)["Event"], tuple(k for k, _ in e)) in shapes for e in extra)
    leg = dict(next(e for e in call.events if dict(e)["Event"] == "DialBegin"))["DestChannel"]
    leg_vars = [dict(e)["Variable"] for e in extra if dict(e)["Event"] == "VarSet" and dict(e)["Channel"] == leg]
    assert leg_vars[:3] == ["DIALEDPEERNUMBER", "__CTRACK_CHANNEL", "__CTRACK_CALL_ID"]   # capture 01


# --- operator tagging: Dial b() / U(), Queue b() / announceoverride -------------------------

TAGS = ",CTRACK_SIP_HEADERS=1,_CTRACK_HDR_CHANNEL=google-ads,_CTRACK_HDR_CAMPAIGN=brand"


def event_index(call, name: str, **headers: str) -> int:
    return next(i for i, e in enumerate(call.events)
                if dict(e)["Event"] == name and all(dict(e).get(k) == v for k, v in headers.items()))


async def test_predial_headers_and_whisper_reach_the_pjsip_leg_before_the_bridge(ami: FakeAmi) -> None:
    route = mset("PJSIP/101") + TAGS + ",CTRACK_WHISPER=custom/whisper-google"
    agi = TinyAgi({"74950000001": route})
    sim = SimulatedAsterisk(("127.0.0.1", await agi.start()), ami, dialplan_events=True,
                            sounds={"custom/whisper-google": 0.2},
                            phones={"PJSIP/101": Phone(answer_after=0.05, talk=0.1)})
    call = await sim.call("74950000001", Caller(CALLER))
    [leg] = call.legs
    assert leg.sip_headers == (("X-CTrack-Channel", "google-ads"), ("X-CTrack-Campaign", "brand"))
    assert leg.heard == ("custom/whisper-google",) and leg.answered and not leg.function_errors
    assert leg.variables["PLAYBACKSTATUS"] == "SUCCESS"
    assert call.cdrs[0]["LastData"] == ("PJSIP/101,20,b(ctrackd-predial^s^1)U(ctrackd-whisper^custom/whisper-google)")
    # pre-dial: Newexten of [ctrackd-predial] on the leg, all before it is called (DialBegin)
    predial = [i for i, e in enumerate(call.events) if dict(e)["Event"] == "Newexten"
               and dict(e)["Context"] == "ctrackd-predial"]
    assert predial and max(predial) < event_index(call, "DialBegin")
    assert [dict(call.events[i])["Priority"] for i in predial] == ["1", "2", "3", "4", "5", "6"]
    # whisper: Playback on the answered leg, then DialEnd ANSWER, then the bridge (app_dial.c)
    play = event_index(call, "Newexten", Context="ctrackd-whisper", Application="Playback")
    assert dict(call.events[play])["AppData"] == "custom/whisper-google"
    assert dict(call.events[play])["Channel"] == leg.channel
    answered = event_index(call, "Newstate", Channel=leg.channel, ChannelStateDesc="Up")
    ret = event_index(call, "Newexten", Context="ctrackd-whisper", Application="Return")
    assert answered < play < ret < event_index(call, "DialEnd", DialStatus="ANSWER") < \
        event_index(call, "BridgeEnter")
    assert call.dial_status == "ANSWER" and call.cdr["Disposition"] == "ANSWERED"
    # the leg snapshot is back on its own place after each Gosub
    assert dict(call.events[event_index(call, "BridgeEnter", Channel=leg.channel)])["Context"] == ""


async def test_headers_skipped_on_iax2_and_a_missing_whisper_still_connects(ami: FakeAmi) -> None:
    route = mset("IAX2/phones/100") + TAGS + ",CTRACK_WHISPER=custom/missing"
    agi = TinyAgi({"74950000001": route})
    sim = SimulatedAsterisk(("127.0.0.1", await agi.start()), ami, sounds={},
                            phones={"IAX2/phones/100": Phone(answer_after=0.05, talk=0.05)})
    call = await sim.call("74950000001", Caller(CALLER))
    [leg] = call.legs
    assert (leg.sip_headers, leg.function_errors, leg.heard) == ((), (), ())  # GotoIf skipped the Set
    assert leg.variables["PLAYBACKSTATUS"] == "FAILED"
    assert call.dial_status == "ANSWER" and call.cdr["Disposition"] == "ANSWERED"


async def test_no_tagging_no_options_and_no_subroutine(ami: FakeAmi) -> None:
    agi = TinyAgi({"74950000001": mset("PJSIP/101")})
    sim = SimulatedAsterisk(("127.0.0.1", await agi.start()), ami, dialplan_events=True,
                            phones={"PJSIP/101": Phone(answer_after=0.05, talk=0.05)})
    call = await sim.call("74950000001", Caller(CALLER))
    assert call.cdrs[0]["LastData"] == "PJSIP/101,20,"        # the options argument empty
    assert not [e for e in call.events if dict(e)["Event"] == "Newexten"]
    assert call.legs[0].sip_headers == () and call.legs[0].heard == ()
    assert "CTRACK_HDR_CHANNEL" not in call.legs[0].variables   # nothing empty inherited either


async def test_queue_takes_b_and_plays_the_whisper_as_announceoverride(ami: FakeAmi) -> None:
    route = mset("Queue(sales)") + TAGS + ",CTRACK_WHISPER=custom/whisper-google"
    agi = TinyAgi({"74950000010": route})
    sim = SimulatedAsterisk(("127.0.0.1", await agi.start()), ami, sounds={"custom/whisper-google": 0.1},
                            phones={"PJSIP/100": Phone(answer_after=0.05, talk=0.05), "PJSIP/101": NEVER},
                            queues={"sales": [QueueMember("PJSIP/100", "Office 100"),
                                              QueueMember("PJSIP/101", "Office 101")]})
    call = await sim.call("74950000010", Caller(CALLER))
    assert call.cdrs[0]["LastData"] == "sales,rb(ctrackd-predial^s^1),,custom/whisper-google,20"
    by_target = {leg.target: leg for leg in call.legs}
    for leg in by_target.values():     # every member rang with the headers
        assert leg.sip_headers == (("X-CTrack-Channel", "google-ads"), ("X-CTrack-Campaign", "brand"))
    assert by_target["PJSIP/100"].heard == ("custom/whisper-google",) and by_target["PJSIP/101"].heard == ()
    assert call.answered_by == "PJSIP/100"


# --- DTMF: GET DATA answers (res_agi.c handle_getdata) and the operator's keys ---------------

@pytest.mark.parametrize("keys, timeout, reply", [
    ("4821#", 2000, b"200 result=4821\n"),
    ("#", 2000, b"200 result=\n"),
    ("", 300, b"200 result= (timeout)\n"),
    ("48", 300, b"200 result=48 (timeout)\n"),
    ("123456", 2000, b"200 result=1234\n"),                    # max digits 4
])
async def test_get_data_answers_like_asterisk(keys: str, timeout: int, reply: bytes, ami: FakeAmi) -> None:
    agi = TinyAgi({"1": ["ANSWER", f"GET DATA beep {timeout} 4"]})
    sim = SimulatedAsterisk(("127.0.0.1", await agi.start()), ami)
    chan = sim.new_trunk("1", Caller("9", dtmf=keys, dtmf_after=0.05, dtmf_gap=0.02), [])
    await run_fastagi(sim.globals["CTRACKD_AGI"] + "/track", chan)
    await agi.settled()
    assert agi.replies[1] == reply


async def test_get_data_retries_take_the_next_keys_and_emit_dtmf_like_capture_18(
        captures: Path, ami: FakeAmi) -> None:
    agi = TinyAgi({"1": ["ANSWER", "GET DATA beep 300 8", "GET DATA beep 2000 8"]})
    sim = SimulatedAsterisk(("127.0.0.1", await agi.start()), ami)
    events: list = []
    chan = sim.new_trunk("1", Caller("9", dtmf=("", "4821#"), dtmf_after=0.05, dtmf_gap=0.02), events)
    await run_fastagi(sim.globals["CTRACKD_AGI"] + "/track", chan)
    await agi.settled()
    assert agi.replies[1:3] == [b"200 result= (timeout)\n", b"200 result=4821\n"]
    events = [e for e in events if dict(e)["Event"].startswith("DTMF")]
    dtmf = [(dict(e)["Event"], dict(e)["Digit"], dict(e)["Direction"]) for e in events]
    assert dtmf == [(n, d, "Received") for d in "4821#" for n in ("DTMFBegin", "DTMFEnd")]
    expected = {(dict(m)["Event"], tuple(k for k, _ in m)) for m in
                read_capture(next((captures / "ami").glob("18-*.txt")), skip_login=True)
                if dict(m).get("Event", "").startswith("DTMF")}
    assert {(dict(e)["Event"], tuple(k for k, _ in e)) for e in events} <= expected
    assert {dict(e)["DurationMs"] for e in events if dict(e)["Event"] == "DTMFEnd"} == {"0"}


async def test_get_data_caller_hangs_up_while_keying(ami: FakeAmi) -> None:
    agi = TinyAgi({"1": ["GET DATA beep 2000 4", "NOOP"]})
    sim = SimulatedAsterisk(("127.0.0.1", await agi.start()), ami)
    chan = sim.new_trunk("1", Caller("9", dtmf="48", dtmf_after=0.3), [])
    asyncio.get_running_loop().call_later(0.1, chan.hungup.set)
    result = await run_fastagi(sim.globals["CTRACKD_AGI"] + "/track", chan)
    await agi.settled()
    assert agi.replies[0] == b"200 result=-1\n" and result.status == "HANGUP"


async def test_operator_keys_star_code_on_both_legs_like_capture_13(captures: Path, ami: FakeAmi) -> None:
    agi = TinyAgi({"74950000013": mset("IAX2/phones/200")})
    sim = SimulatedAsterisk(("127.0.0.1", await agi.start()), ami, phones={
        "IAX2/phones/200": Phone(answer_after=0.05, talk=0.6, dtmf="*1234#", dtmf_after=0.05, dtmf_gap=0.04)})
    call = await sim.call("74950000013", Caller(CALLER))
    got = [e for e in call.events if dict(e)["Event"].startswith("DTMF")]
    expected = [m for m in read_capture(next((captures / "ami").glob("13-*.txt")), skip_login=True)
                if dict(m).get("Event", "").startswith("DTMF")]
    leg = call.legs[0].channel
    def shape(events):
        return [(dict(e)["Event"], dict(e)["Digit"], dict(e)["Direction"],
                 "phone" if dict(e)["Channel"].startswith("IAX2/phones") else "trunk") for e in events]
    assert shape(got) == shape(expected)
    assert [tuple(k for k, _ in e) for e in got] == [tuple(k for k, _ in e) for e in expected]
    assert {dict(e)["Channel"] for e in got} == {leg, call.channel}
    bridge = event_index(call, "BridgeEnter", Channel=call.channel)
    assert call.events.index(got[0]) > bridge


# --- an outbound call from an office phone (no capture: built from documented fields) --------

@pytest.mark.parametrize("callee, status, answered", [
    (Phone(answer_after=0.05, talk=0.05), "ANSWER", True),
    (Phone(busy=True), "BUSY", False),
    (Phone(never_answers=True), "NOANSWER", False),
])
async def test_outbound_call_from_an_office_phone(callee: Phone, status: str, answered: bool,
                                                  captures: Path, ami: FakeAmi) -> None:
    sim = SimulatedAsterisk(ami=ami, trunk="PJSIP/carrier")
    call = await sim.outbound_call("PJSIP/101", "+79161234567", callee=callee, timeout=1)
    assert (call.dial_status, call.answered_by is not None) == (status, answered)
    first = dict(call.events[0])
    assert (first["Event"], first["Channel"][:10], first["Context"], first["Exten"], first["CallerIDNum"]) == (
        "Newchannel", "PJSIP/101-", "internal", "+79161234567", "101")
    begin = dict(next(e for e in call.events if dict(e)["Event"] == "DialBegin"))
    assert (begin["DialString"], begin["DestCallerIDNum"], begin["DestConnectedLineNum"]) == (
        "carrier/+79161234567", "+79161234567", "101")
    assert {v for e in call.events for k, v in e if k == "ChanVariable"} == {"CTRACK_CALL_ID=", "CTRACK_CHANNEL="}
    names_ = [dict(e)["Event"] for e in call.events]
    assert ("BridgeEnter" in names_) == answered and names_.count("Hangup") == 2
    assert [dict(e)["DialStatus"] for e in call.events if dict(e)["Event"] == "DialEnd"] == [status]
    assert call.cdr["Disposition"] == {"ANSWER": "ANSWERED", "BUSY": "BUSY", "NOANSWER": "NO ANSWER"}[status]
    # same header shapes as the inbound captures' events of the same names
    shapes: dict[str, set] = {}
    for f in (captures / "ami").glob("0[1-4]-*.txt"):
        for m in read_capture(f, skip_login=True):
            shapes.setdefault(dict(m).get("Event"), set()).add(tuple(k for k, _ in m))
    for e in call.events:
        assert tuple(k for k, _ in e) in shapes[dict(e)["Event"]], dict(e)["Event"]
    assert sim.live_channels() == []
