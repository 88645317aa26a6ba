"""The Asterisk side of the contract: the dialplan and the AMI user, checked without an Asterisk.

Two kinds of checks:
- asterisklint 0.4.3 parses extensions_ctrackd.conf inside a small
  extensions.conf like an admin's (unknown applications or functions, bad
  Goto targets, unbalanced parentheses). Its database stops at Asterisk 13:
  the few findings that are wrong for 18-22 live in
  asterisk-dialplan/asterisklint-ignore.txt, and any other finding fails.
- The dialplan text itself is read back into contexts, extensions and
  priorities to check what docs/architecture.md ("Dialplan logic") promises:
  the variable names, the order of the steps, the AGISTATUS test, the
  fallback chain, MixMonitor of CTRACK_RECORDING only, no Dial option M(),
  the operator tagging (SIP headers in a pre-dial handler, on PJSIP only;
  the whisper before the bridge; no option at all when unset).
The simulator (tests/simulator/dialplan.py) replays this dialplan by
priority number; a last check keeps its numbers and this file in step.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from ctrackd import variables
from ctrackd.config import AmiConfig

DIALPLAN_DIR = Path(__file__).resolve().parent.parent / "asterisk-dialplan"
EXTENSIONS = DIALPLAN_DIR / "extensions_ctrackd.conf"
MANAGER = DIALPLAN_DIR / "manager_ctrackd.conf"
IGNORE_LIST = DIALPLAN_DIR / "asterisklint-ignore.txt"

# An admin's extensions.conf: [general] and [globals] first (asterisklint
# hints otherwise), a trunk context sending every DID in, then our file.
WRAPPER = """\
[general]
static=yes
writeprotect=yes
clearglobalvars=no

[globals]
CTRACKD_FALLBACK=PJSIP/office

[from-trunk]
exten => _X.,1,Goto(ctrackd-inbound,${EXTEN},1)
exten => _+X.,1,Goto(ctrackd-inbound,${EXTEN},1)
exten => s,1,Goto(ctrackd-inbound,s,1)

#include extensions_ctrackd.conf
"""

# asterisklint output: "FILE:LINE CLASS: message"
FINDING = re.compile(r"^(?P<file>[^:\s]+):(?P<line>\d+) (?P<cls>[A-Z][A-Z0-9_]+): (?P<msg>.*)$")

# Applications and functions present, with the arguments used here, in every
# Asterisk from 18 to 22 (and 13): the file must work unchanged on all.
ALLOWED_APPS = {"NoOp", "Set", "ExecIf", "GotoIf", "Goto", "AGI", "MixMonitor", "Dial", "Queue",
                "Busy", "Congestion", "Hangup", "Log", "Return", "Playback"}
# PJSIP_HEADER exists since 12 (res_pjsip_header_funcs); asterisklint 0.4.3 knows it.
ALLOWED_FUNCTIONS = {"CALLERID", "CHANNEL", "LEN", "PJSIP_HEADER"}
# Channel variables of the dialplan's own (the defaults it computes per call, Dial's options).
DIALPLAN_LOCALS = {"CTRACK_AGI_URL", "CTRACK_FALLBACK_AGI_PATH", "CTRACK_CONFIG_PATH",
                   "CTRACK_DIAL_OPTIONS"}
GLOBALS = {"CTRACKD_AGI", "CTRACKD_FALLBACK", "CTRACKD_FALLBACK_AGI", "CTRACKD_CONFIG"}
# What Asterisk itself sets, read by the dialplan.
ASTERISK_VARS = {"EXTEN", "UNIQUEID", "CHANNEL", "AGISTATUS", "DIALSTATUS", "HANGUPCAUSE",
                 "INVALID_EXTEN", "ARG1"}


# ---------------------------------------------------------------------------
# asterisklint


def run_asterisklint(folder: Path) -> tuple[int, list[str]]:
    """`asterisklint dialplan-check extensions.conf`, through its Python entry point.

    Same as the console script, but found through sys.executable, so the test
    runs wherever the venv's bin/ is or is not on PATH.
    """
    code = ("import os, sys; from asterisklint.main import main; "
            "sys.exit(main(sys.argv[1:], os.environ))")
    env = {"PATH": "/usr/bin:/bin"}  # no ALINT_IGNORE from the caller's shell
    proc = subprocess.run([sys.executable, "-c", code, "dialplan-check", "extensions.conf"],
                          cwd=folder, env=env, capture_output=True, text=True, timeout=120)
    output = (proc.stdout + proc.stderr).splitlines()
    return proc.returncode, [line for line in output if line.strip()]


def read_ignore_list() -> set[tuple[str, str]]:
    entries = set()
    for raw in IGNORE_LIST.read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            cls, name = line.split()
            entries.add((cls, name))
    return entries


def finding_key(match: re.Match[str]) -> tuple[str, str]:
    """(class, the quoted app/function name) of a finding, e.g. (E_APP_MISSING, MSet)."""
    quoted = re.search(r"'([^']*)'", match["msg"])
    return match["cls"], quoted.group(1) if quoted else ""


def lint(tmp_path: Path, dialplan_text: str) -> tuple[list[str], set[tuple[str, str]]]:
    """Lint `dialplan_text` as extensions_ctrackd.conf: (findings not ignored, entries used)."""
    (tmp_path / "extensions.conf").write_text(WRAPPER, encoding="utf-8")
    (tmp_path / "extensions_ctrackd.conf").write_text(dialplan_text, encoding="utf-8")
    _, lines = run_asterisklint(tmp_path)
    ignore = read_ignore_list()
    left, used = [], set()
    for line in lines:
        match = FINDING.match(line)
        if match and finding_key(match) in ignore:
            used.add(finding_key(match))
        else:
            left.append(line)
    return left, used


def test_asterisklint_finds_nothing_but_the_ignore_list(tmp_path: Path) -> None:
    left, used = lint(tmp_path, EXTENSIONS.read_text(encoding="utf-8"))
    assert left == []
    assert used == read_ignore_list(), "stale asterisklint-ignore.txt entries: remove them"


def test_asterisklint_really_checks_the_included_file(tmp_path: Path) -> None:
    # Guard against a check that passes because nothing was read (a bad
    # #include, a changed output format): break the file, expect findings.
    broken = EXTENSIONS.read_text(encoding="utf-8").replace(
        "same => n,Hangup(17)", "same => n,NoSuchApp(17)").replace(
        "Goto(dialed)", "Goto(no-such-label)")
    left, _ = lint(tmp_path, broken)
    assert any("E_APP_MISSING" in line and "NoSuchApp" in line for line in left), left
    assert any("no-such-label" in line for line in left), left
    assert all(FINDING.match(line) for line in left), left


def test_the_ignore_list_parses() -> None:
    for cls, name in read_ignore_list():
        assert cls in {"E_APP_MISSING", "E_FUNC_MISSING"}, cls
        assert re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name), name


# ---------------------------------------------------------------------------
# Reading the dialplan back


@dataclass(frozen=True)
class Step:
    context: str
    exten: str
    priority: int
    label: str | None
    app: str
    args: str
    line: int

    @property
    def text(self) -> str:
        return f"{self.app}({self.args})"


def parse_dialplan(text: str) -> dict[str, dict[str, list[Step]]]:
    """{context: {extension: [Step, ...]}} for `exten =>` / `same =>` lines, priorities numbered."""
    contexts: dict[str, dict[str, list[Step]]] = {}
    context = exten = None
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split(";", 1)[0].strip()  # no "\;" is used in our file
        if not line:
            continue
        if section := re.fullmatch(r"\[([^\]]+)\](\(.*\))?", line):
            context = section.group(1)
            contexts[context] = {}
            continue
        entry = re.fullmatch(r"(exten|same)\s*=>\s*(.*)", line)
        assert entry and context, f"line {number}: not a dialplan line: {raw!r}"
        kind, rest = entry.groups()
        if kind == "exten":
            exten, rest = rest.split(",", 1)
            priority_text, rest = rest.split(",", 1)
            assert priority_text == "1", f"line {number}: first priority must be 1"
            label = None
        else:
            priority_text, rest = rest.split(",", 1)
            label_match = re.fullmatch(r"n(?:\((\w+)\))?", priority_text)
            assert label_match, f"line {number}: use `same => n` priorities"
            label = label_match.group(1)
        app_match = re.fullmatch(r"(\w+)\((.*)\)", rest)
        assert app_match, f"line {number}: application call expected: {rest!r}"
        assert exten is not None
        steps = contexts[context].setdefault(exten, [])
        steps.append(Step(context, exten, len(steps) + 1, label, app_match.group(1),
                          app_match.group(2), number))
    return contexts


def pattern_regex(pattern: str) -> re.Pattern[str]:
    """An Asterisk extension pattern (`_X.`, `_[0-9+].`) as a regex."""
    if not pattern.startswith("_"):
        return re.compile(re.escape(pattern))
    out, i, body = "", 0, pattern[1:]
    while i < len(body):
        ch = body[i]
        if ch == "[":
            end = body.index("]", i)
            out += "[" + body[i + 1:end].replace("\\", "\\\\") + "]"
            i = end
        else:
            out += {"X": "[0-9]", "Z": "[1-9]", "N": "[2-9]", ".": ".+", "!": ".*"}.get(
                ch, re.escape(ch))
        i += 1
    return re.compile(out)


DIALPLAN_TEXT = EXTENSIONS.read_text(encoding="utf-8")
DIALPLAN = parse_dialplan(DIALPLAN_TEXT)
INBOUND = DIALPLAN["ctrackd-inbound"]
DID_EXTEN = next(e for e in INBOUND if e.startswith("_"))
FLOW = INBOUND[DID_EXTEN]
ALL_STEPS = [s for exts in DIALPLAN.values() for steps in exts.values() for s in steps]


DIAL = "Dial(${CTRACK_FORWARD},${CTRACK_RING_TIMEOUT},${CTRACK_DIAL_OPTIONS})"
QUEUE = "Queue(${CTRACK_FORWARD:6:-1},r${CTRACK_DIAL_OPTIONS},,${CTRACK_WHISPER},${CTRACK_RING_TIMEOUT})"
CLEAR_OPTIONS = "Set(CTRACK_DIAL_OPTIONS=)"
HEADERS_OPTION = ('ExecIf($["${CTRACK_SIP_HEADERS}" = "1"]?'
                  "Set(CTRACK_DIAL_OPTIONS=b(ctrackd-predial^s^1)))")
WHISPER_OPTION = ("ExecIf($[${LEN(${CTRACK_WHISPER})} > 0]?Set(CTRACK_DIAL_OPTIONS="
                  "${CTRACK_DIAL_OPTIONS}U(ctrackd-whisper^${CTRACK_WHISPER})))")


def index_of(text: str, steps: list[Step] = FLOW) -> int:
    found = [i for i, s in enumerate(steps) if s.text == text]
    assert len(found) == 1, f"expected exactly one `{text}`, found {len(found)}"
    return found[0]


def labelled(label: str, steps: list[Step] = FLOW) -> int:
    found = [i for i, s in enumerate(steps) if s.label == label]
    assert len(found) == 1, f"label {label} defined {len(found)} times"
    return found[0]


def jumps(step: Step) -> list[str]:
    """Labels a Goto/GotoIf step can jump to (same extension)."""
    if step.app == "Goto":
        return [step.args]
    if step.app == "GotoIf":
        return [t for t in re.split(r"[?:]", step.args.rsplit("?", 1)[1]) if t]
    return []


# ---------------------------------------------------------------------------
# The contract


def test_only_our_contexts_and_no_globals() -> None:
    # [globals] or [general] here would overwrite the admin's own.
    assert set(DIALPLAN) == {"ctrackd-inbound", "ctrackd-hangup", "ctrackd-predial",
                             "ctrackd-whisper"}
    assert not re.search(r"^\s*\[(globals|general)\]", DIALPLAN_TEXT, re.M | re.I)


@pytest.mark.parametrize("did", ["74950000001", "+74950000001", "84950000003", "101"])
def test_any_did_with_or_without_plus_lands_in_the_flow(did: str) -> None:
    assert pattern_regex(DID_EXTEN).fullmatch(did)
    assert {"s", "i"} <= set(INBOUND)  # no DID, or an unusable one: still rings the office


def test_step_1_identity_and_original_name_before_the_agi() -> None:
    call_id = index_of("Set(__" + variables.CALL_ID_VAR + "=${UNIQUEID})")
    orig = index_of("Set(" + variables.ORIG_NAME_VAR + "=${CALLERID(name)})")
    agi = index_of("AGI(${CTRACK_AGI_URL}/track)")
    assert call_id < orig < agi
    assert call_id == 1  # right after the NoOp: every leg dialled later inherits it


@pytest.mark.parametrize("local, global_, default", [
    ("CTRACK_AGI_URL", "CTRACKD_AGI", "agi://127.0.0.1:4573"),
    ("CTRACK_FALLBACK_AGI_PATH", "CTRACKD_FALLBACK_AGI", "/usr/local/bin/ctrackd-agi"),
    ("CTRACK_CONFIG_PATH", "CTRACKD_CONFIG", "/etc/ctrackd/ctrackd.yaml"),
])
def test_defaults_of_the_globals_are_computed_per_call(local: str, global_: str,
                                                       default: str) -> None:
    default_at = index_of(f"Set({local}={default})")
    override_at = index_of(f"ExecIf($[${{LEN(${{{global_}}})}} > 0]?Set({local}=${{{global_}}}))")
    assert default_at + 1 == override_at < index_of("AGI(${CTRACK_AGI_URL}/track)")


def test_step_2_and_3_agistatus_then_forward_decide_the_fallback() -> None:
    agi = index_of("AGI(${CTRACK_AGI_URL}/track)")
    assert FLOW[agi + 1].text == 'GotoIf($["${AGISTATUS}" != "SUCCESS"]?fallback)'
    assert FLOW[agi + 2].text == "GotoIf($[${LEN(${CTRACK_FORWARD})} = 0]?fallback)"
    # no caller-ID data travels as an AGI argument (the route reads the environment)
    for step in ALL_STEPS:
        if step.app == "AGI":
            assert "CALLERID" not in step.args


def test_step_3_fallback_chain() -> None:
    start = labelled("fallback")
    push = index_of("Set(CHANNEL(hangup_handler_push)=ctrackd-hangup,s,1)")
    script = index_of("AGI(${CTRACK_FALLBACK_AGI_PATH},track,${CTRACK_CONFIG_PATH})")
    # pushed before the script: a caller who hangs up during it still gets the record closed
    assert start <= push < script
    assert FLOW[script + 1].text == 'GotoIf($["${AGISTATUS}" != "SUCCESS"]?lastresort)'
    assert FLOW[script + 2].text == "GotoIf($[${LEN(${CTRACK_FORWARD})} > 0]?tracked)"
    last = labelled("lastresort")
    assert FLOW[last + 1].text == "Set(CTRACK_FORWARD=${CTRACKD_FALLBACK})"
    assert FLOW[last + 2].text == "Goto(tracked)"
    handler = DIALPLAN["ctrackd-hangup"]["s"]
    assert [s.text for s in handler] == [
        "AGI(${CTRACK_FALLBACK_AGI_PATH},hangup,${CTRACK_CONFIG_PATH})", "Return()"]


def test_step_4_recording_and_operator_display() -> None:
    tracked = labelled("tracked")
    assert FLOW[tracked].text == "GotoIf($[${LEN(${CTRACK_RECORDING})} = 0]?display)"
    assert FLOW[tracked + 1].text == "MixMonitor(${CTRACK_RECORDING},b)"
    display = labelled("display")
    assert FLOW[display].text == "GotoIf($[${LEN(${CTRACK_CALLERID_NAME})} = 0]?route)"
    assert FLOW[display + 1].text == "Set(CALLERID(name)=${CTRACK_CALLERID_NAME})"
    assert display < index_of(DIAL)


def test_mixmonitor_names_only_our_variable() -> None:
    # A file name built from caller-ID data would reach MixMonitor's
    # post-recording command: only CTRACK_RECORDING, built by ctrackd, may.
    monitors = [s for s in ALL_STEPS if s.app == "MixMonitor"]
    assert [s.args for s in monitors] == ["${CTRACK_RECORDING},b"]


def test_step_5_dial_or_queue_with_the_ring_timeout() -> None:
    route = labelled("route")
    assert FLOW[route].text == (
        "ExecIf($[${LEN(${CTRACK_RING_TIMEOUT})} = 0]?Set(CTRACK_RING_TIMEOUT=30))")
    queue_test = index_of('GotoIf($["${CTRACK_FORWARD:0:6}" = "Queue("]?queue)')
    dial = index_of(DIAL)
    queue = labelled("queue")
    assert route < queue_test < dial < queue
    assert FLOW[queue].text == QUEUE
    assert FLOW[dial + 1].text == "Goto(dialed)"


def test_tagging_variables_are_cleared_before_the_agi() -> None:
    # The AGI sends them only when set: a value from before the Goto must not
    # whisper to or tag a call whose channel asked for neither.
    agi = index_of("AGI(${CTRACK_AGI_URL}/track)")
    for name in (variables.PROMO_CODE_VAR, variables.WHISPER_VAR, variables.SIP_HEADERS_VAR,
                 variables.HEADER_CHANNEL_VAR, variables.HEADER_CAMPAIGN_VAR):
        # (the header values without their "_": Set deletes any variable of that
        # name, inherited or not, and an empty "_X" would be inherited by every leg)
        assert index_of(f"Set({name}=)") < agi, name


def test_dial_options_are_built_only_from_the_tagging_variables() -> None:
    # Cleared first (nothing stale), b() for the headers before the queue
    # branch (Queue takes b() too), U() for the whisper on the Dial path only.
    clear, headers = index_of(CLEAR_OPTIONS), index_of(HEADERS_OPTION)
    queue_test = index_of('GotoIf($["${CTRACK_FORWARD:0:6}" = "Queue("]?queue)')
    whisper, dial = index_of(WHISPER_OPTION), index_of(DIAL)
    assert labelled("route") < clear < headers < queue_test < whisper < dial
    assert FLOW[clear + 1].text == HEADERS_OPTION
    # the only writes of CTRACK_DIAL_OPTIONS are those three
    writes = [s.text for s in ALL_STEPS if "CTRACK_DIAL_OPTIONS=" in s.text]
    assert writes == [CLEAR_OPTIONS, HEADERS_OPTION, WHISPER_OPTION]


def test_predial_adds_headers_on_pjsip_only_and_returns() -> None:
    steps = DIALPLAN["ctrackd-predial"]["s"]
    assert steps[0].text == 'GotoIf($["${CHANNEL(channeltype)}" != "PJSIP"]?done)'
    headers = [s.text for s in steps if "PJSIP_HEADER" in s.text]
    assert headers == [
        "Set(PJSIP_HEADER(add,X-CTrack-Channel)=${" + variables.HEADER_CHANNEL_VAR + "})",
        "Set(PJSIP_HEADER(add,X-CTrack-Campaign)=${" + variables.HEADER_CAMPAIGN_VAR + "})"]
    # a plain Set per header (the value is not parsed again), each skipped when empty
    for i, step in enumerate(steps):
        if "PJSIP_HEADER" in step.text:
            var = re.search(r"\$\{(CTRACK_HDR_\w+)\}", step.text).group(1)
            assert steps[i - 1].text.startswith(f"GotoIf($[${{LEN(${{{var}}})}} = 0]?")
    assert steps[-1].text == "Return()" and steps[-1].label == "done"


def test_whisper_plays_its_argument_and_returns() -> None:
    assert [s.text for s in DIALPLAN["ctrackd-whisper"]["s"]] == ["Playback(${ARG1})", "Return()"]


def test_step_6_busy_congestion_hangup() -> None:
    dialed = labelled("dialed")
    assert FLOW[dialed + 1].text == 'GotoIf($["${DIALSTATUS}" = "BUSY"]?busy)'
    assert FLOW[dialed + 2].text == ('GotoIf($["${DIALSTATUS}" = "CONGESTION" | '
                                     '"${DIALSTATUS}" = "CHANUNAVAIL"]?congestion)')
    assert FLOW[dialed + 3].text == "Hangup()"
    busy, congestion = labelled("busy"), labelled("congestion")
    assert [s.text for s in FLOW[busy:busy + 2]] == ["Busy(3)", "Hangup(17)"]
    assert [s.text for s in FLOW[congestion:congestion + 2]] == ["Congestion(3)", "Hangup(34)"]


def test_no_dial_option_m_and_only_portable_apps_and_functions() -> None:
    for step in ALL_STEPS:
        assert step.app in ALLOWED_APPS, f"line {step.line}: {step.app}"
        if step.app == "Dial":
            options = step.args.split(",")[2:]
            assert not any("M(" in o for o in options), f"line {step.line}: M() is gone in 21"
    code = "\n".join(f"{s.app}({s.args})" for s in ALL_STEPS)
    assert "M(" not in code
    functions = set(re.findall(r"\$\{([A-Z_]+)\(", code)) | set(
        re.findall(r"Set\(([A-Z_]+)\(", code))
    assert functions <= ALLOWED_FUNCTIONS, functions


def test_every_jump_has_its_label() -> None:
    for context, extensions in DIALPLAN.items():
        for exten, steps in extensions.items():
            labels = {s.label for s in steps if s.label}
            for step in steps:
                for target in jumps(step):
                    assert target in labels or re.fullmatch(r"\w+,\d+", target), (
                        f"{context},{exten} line {step.line}: no label {target}")


def test_variable_names_are_the_contracts() -> None:
    used = set(re.findall(r"\$\{_{0,2}([A-Z][A-Z0-9_]*)[:}]", DIALPLAN_TEXT))
    used |= set(re.findall(r"Set\(_{0,2}([A-Z][A-Z0-9_]*)=", DIALPLAN_TEXT))
    contract = {value for name, value in vars(variables).items()
                if name.endswith("_VAR") and isinstance(value, str)}
    ctrack = {v for v in used if v.startswith("CTRACK_")}
    assert ctrack <= contract | DIALPLAN_LOCALS, ctrack - contract - DIALPLAN_LOCALS
    # what the dialplan sets before the AGI, and what it reads from the route
    assert {variables.CALL_ID_VAR, variables.ORIG_NAME_VAR, variables.FORWARD_VAR,
            variables.RING_TIMEOUT_VAR, variables.RECORDING_VAR,
            variables.CALLERID_NAME_VAR} <= ctrack
    assert {v for v in used if v.startswith("CTRACKD_")} == GLOBALS
    assert used <= contract | DIALPLAN_LOCALS | GLOBALS | ASTERISK_VARS, (
        used - contract - DIALPLAN_LOCALS - GLOBALS - ASTERISK_VARS)


def test_every_block_is_commented() -> None:
    # Every paragraph (lines between blank lines) that holds dialplan also
    # holds a comment saying why it is there.
    for block in re.split(r"\n\s*\n", DIALPLAN_TEXT):
        lines = [line.strip() for line in block.splitlines()]
        if any(re.match(r"(exten|same)\s*=>", line) for line in lines):
            assert any(line.startswith(";") for line in lines), f"uncommented block:\n{block}"


def test_the_simulator_follows_these_priorities() -> None:
    sim = pytest.importorskip("tests.simulator.dialplan")
    expected = {
        "P_AGI": "AGI(${CTRACK_AGI_URL}/track)",
        "P_MIXMONITOR": "MixMonitor(${CTRACK_RECORDING},b)",
        "P_CALLERID": "Set(CALLERID(name)=${CTRACK_CALLERID_NAME})",
        "P_DIAL": DIAL,
        "P_QUEUE": QUEUE,
        "P_HANGUP": "Hangup()",
        "P_BUSY": "Busy(3)",
        "P_CONGESTION": "Congestion(3)",
        "P_FALLBACK_PUSH": "Set(CHANNEL(hangup_handler_push)=ctrackd-hangup,s,1)",
        "P_FALLBACK_AGI": "AGI(${CTRACK_FALLBACK_AGI_PATH},track,${CTRACK_CONFIG_PATH})",
    }
    for constant, text in expected.items():
        if hasattr(sim, constant):
            assert FLOW[getattr(sim, constant) - 1].text == text, constant
    if hasattr(sim, "P_NOWHERE"):  # the Congestion of the "nowhere" block
        assert FLOW[sim.P_NOWHERE - 1].text == "Congestion(3)"
        assert FLOW[sim.P_NOWHERE - 2].label == "nowhere"


# ---------------------------------------------------------------------------
# manager_ctrackd.conf


def parse_conf(text: str) -> dict[str, list[tuple[str, str]]]:
    """{section header as written: [(key, value), ...]}, comments dropped."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    for raw in text.splitlines():
        line = raw.split(";", 1)[0].strip()
        if not line:
            continue
        if line.startswith("["):
            current = line
            sections[current] = []
            continue
        assert current, f"option outside a section: {raw!r}"
        key, value = (part.strip() for part in line.split("=", 1))
        sections[current].append((key, value))
    return sections


MANAGER_CONF = parse_conf(MANAGER.read_text(encoding="utf-8"))


def test_manager_general_is_appended_not_redefined() -> None:
    # "[general](+)" appends to the admin's [general]; a plain [general]
    # would start a second section that Asterisk merges unpredictably.
    assert set(MANAGER_CONF) == {"[general](+)", "[ctrackd]"}
    general = dict(MANAGER_CONF["[general](+)"])
    assert general["timestampevents"] == "yes"
    assert tuple(general["channelvars"].split(",")) == variables.MANAGER_CHANNELVARS


def test_manager_user_reads_what_the_daemon_asks_and_writes_only_reporting() -> None:
    user = MANAGER_CONF["[ctrackd]"]
    options = dict(user)
    assert options["read"] == AmiConfig.__dataclass_fields__["events"].default
    # Ping needs no class; CoreShowChannels and Status both accept "reporting"
    assert options["write"] == "reporting"
    acl = [(k, v) for k, v in user if k in {"deny", "permit"}]
    assert acl == [("deny", "0.0.0.0/0.0.0.0"), ("permit", "127.0.0.1/255.255.255.255")]
    assert options["secret"] == "CHANGE-ME"
