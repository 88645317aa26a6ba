"""ctrackd-agi as Asterisk runs it: a real process speaking AGI on stdin/stdout.

A small fake Asterisk writes the agi_* environment (as in the captures of
/work/shared/asterisk-captures/agi/, adapted to a stdin AGI), reads each
command line and answers like res_agi.c does. EXEC MSet is decoded with the
line-by-line ports of Asterisk's own parsers (tests/test_agi_commands.py), so
the variables checked here are the ones a real channel would get. The config
is a real YAML file, the store a real SQLite file.
"""

from __future__ import annotations

import os
import re
import select
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ctrackd.attribution.records import Attribution, CallProgress, CallStatus, Tracking
from ctrackd.store import queries
from ctrackd.store.schema import migrate
from ctrackd.variables import (
    CALL_ID_VAR,
    CALLERID_NAME_VAR,
    CAMPAIGN_VAR,
    CHANNEL_VAR,
    FORWARD_VAR,
    LABEL_VAR,
    MEDIUM_VAR,
    RECORDING_VAR,
    RING_TIMEOUT_VAR,
    SOURCE_VAR,
    TRACKING_VAR,
)
from tests.simulator.asterisk_args import parse_args
from tests.test_agi_commands import asterisk_applies

SCRIPT = Path(sys.executable).with_name("ctrackd-agi")
UNIQUEID = "1795332111.16"
# What the dialplan sets before the AGI, and what the route must set after it.
CONTRACT_VARS = {"__" + CHANNEL_VAR, SOURCE_VAR, MEDIUM_VAR, CAMPAIGN_VAR, LABEL_VAR, FORWARD_VAR,
                 RING_TIMEOUT_VAR, RECORDING_VAR, CALLERID_NAME_VAR, TRACKING_VAR}
# A caller name that would break any naive quoting at one of the three parsers.
NASTY_NAME = 'Иван "Ваня", (VIP) \\ [x]'

CONFIG = """\
ami:
  username: ctrackd
  secret: test-secret
store:
  path: {store}
recordings:
  dir: /var/spool/asterisk/monitor
phone_region: RU
defaults:
  forward_to: IAX2/phones/100
  ring_timeout: 20
channels:
  google-ads:
    source: google
    medium: cpc
    campaign: brand
    label: Google Ads
  billboard:
    source: billboard
    medium: offline
    label: Billboard
    forward_to: Queue(sales)
numbers:
  "+74950000001":
    channel: google-ads
  "84950000003":
    channel: billboard
"""


# ---------------------------------------------------------------------------
# The fake Asterisk side of a stdin AGI.


@dataclass
class AgiRun:
    returncode: int
    commands: list[str]
    variables: dict[str, str]
    stderr: str
    seconds: float


@dataclass
class FakeAsterisk:
    """One channel: its variables, and whether it is already hung up (hang-up handler)."""

    variables: dict[str, str] = field(default_factory=dict)
    dead: bool = False
    commands: list[str] = field(default_factory=list)

    def reply(self, line: str) -> str:
        self.commands.append(line)
        argv = parse_args(line)
        words = [a.upper() for a in argv[:3]]
        if words[:1] == ["EXEC"] and len(argv) >= 2 and argv[1] == "MSet":
            for name, value in asterisk_applies(line):
                self.variables[name.lstrip("_")] = value
            return "200 result=0"
        if words[:3] == ["GET", "FULL", "VARIABLE"]:
            return f"200 result=1 ({self.substitute(argv[3])})"
        if words[:2] == ["GET", "VARIABLE"]:
            found = self.variables.get(argv[2])
            return "200 result=0" if found is None else f"200 result=1 ({found})"
        if words[:2] == ["SET", "VARIABLE"]:
            self.variables[argv[2].lstrip("_")] = argv[3]
            return "200 result=1"
        if words[:1] == ["VERBOSE"]:
            return "200 result=1"
        if self.dead:
            return "511 Command Not Permitted on a dead channel or intercept routine"
        return "510 Invalid or unknown command"

    def substitute(self, expression: str) -> str:
        # ${NAME} and ${FUNC(arg)} as plain lookups: enough for what the script asks
        return re.sub(r"\$\{([^}]*)\}", lambda m: self.variables.get(m.group(1), ""), expression)


def agi_environment(script_args: list[str], *, did: str, caller: str, name: str,
                    context: str = "ctrackd-inbound") -> str:
    """A stdin AGI's environment (no agi_network lines), as res_agi.c setup_env() writes it."""
    env = {
        "agi_request": str(SCRIPT), "agi_channel": "IAX2/carrier-15448", "agi_language": "en",
        "agi_type": "IAX2", "agi_uniqueid": UNIQUEID, "agi_version": "22.10.1",
        "agi_callerid": caller, "agi_calleridname": name, "agi_callingpres": "0",
        "agi_callingani2": "0", "agi_callington": "0", "agi_callingtns": "0",
        "agi_dnid": "unknown", "agi_rdnis": "unknown", "agi_context": context,
        "agi_extension": did, "agi_priority": "30", "agi_enhanced": "0.0",
        "agi_accountcode": "", "agi_threadid": "139959369193152",
    }
    for i, arg in enumerate(script_args, start=1):
        env[f"agi_arg_{i}"] = arg
    return "".join(f"{k}: {v}\n" for k, v in env.items()) + "\n"


def run_agi(args: list[str], asterisk: FakeAsterisk, *, did: str = "74950000001",
            caller: str = "+79161234567", name: str = "unknown",
            python_flags: tuple[str, ...] = (),
            timeout: float = 20.0) -> AgiRun:
    """Start ctrackd-agi like res_agi.c does and play Asterisk until the script exits."""
    if python_flags or not SCRIPT.exists():
        argv = [sys.executable, *python_flags, "-m", "ctrackd.fallback_agi", *args]
    else:
        argv = [str(SCRIPT), *args]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["LANG"] = env["LC_ALL"] = "C"  # Asterisk's environment is often a bare C locale
    started = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    assert proc.stdin and proc.stdout and proc.stderr
    proc.stdin.write(agi_environment(args, did=did, caller=caller, name=name).encode())
    proc.stdin.flush()
    deadline = started + timeout
    try:
        while True:
            ready, _, _ = select.select([proc.stdout], [], [], max(deadline - time.monotonic(), 0))
            if not ready:
                raise AssertionError(f"ctrackd-agi sent nothing for {timeout} s")
            raw = proc.stdout.readline()
            if not raw:
                break  # the script closed its stdout: the AGI is over
            reply = asterisk.reply(raw.decode("utf-8").rstrip("\n"))
            try:
                proc.stdin.write((reply + "\n").encode())
                proc.stdin.flush()
            except BrokenPipeError:
                break
        returncode = proc.wait(timeout=max(deadline - time.monotonic(), 1))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr = proc.stderr.read().decode("utf-8", "replace")
    return AgiRun(returncode, asterisk.commands, asterisk.variables, stderr,
                  time.monotonic() - started)


# ---------------------------------------------------------------------------
# Fixtures: a real config and a real store.


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "calls.sqlite3"


@pytest.fixture
def config_path(tmp_path: Path, store_path: Path) -> Path:
    path = tmp_path / "ctrackd.yaml"
    path.write_text(CONFIG.format(store=store_path), encoding="utf-8")
    return path


def row(store_path: Path, call_id: str = UNIQUEID) -> dict[str, Any] | None:
    conn = sqlite3.connect(store_path)
    conn.row_factory = sqlite3.Row
    try:
        found = conn.execute("SELECT * FROM calls WHERE call_id = ?", (call_id,)).fetchone()
        return dict(found) if found else None
    finally:
        conn.close()


#: the channel's creation, as `${CDR(start,u)}` gives it (an epoch with microseconds):
#: a second and a half before the script runs, as on the fallback path
CHANNEL_START = f"{time.time() - 1.5:.6f}"


def track(config_path: Path, **kwargs: object) -> AgiRun:
    asterisk = FakeAsterisk(variables={CALL_ID_VAR: UNIQUEID, "CDR(start,u)": CHANNEL_START})
    return run_agi(["track", str(config_path)], asterisk, **kwargs)  # type: ignore[arg-type]


def hangup(config_path: Path, variables: dict[str, str]) -> AgiRun:
    asterisk = FakeAsterisk(variables={CALL_ID_VAR: UNIQUEID, **variables}, dead=True)
    return run_agi(["hangup", str(config_path)], asterisk, did="s")


# ---------------------------------------------------------------------------
# track


def test_track_writes_a_fallback_record_and_sets_the_contract_variables(
        config_path: Path, store_path: Path) -> None:
    result = track(config_path, name=NASTY_NAME)

    assert result.returncode == 0
    assert result.stderr == ""  # pyst2's dialogue dump must not flood Asterisk's console
    # the channel's start (the script runs a second after the call arrived), then one MSet
    assert result.commands[0] == 'GET FULL VARIABLE "${CDR(start,u)}"'
    assert len(result.commands) == 2 and result.commands[1].startswith("EXEC MSet ")
    assert {name.lstrip("_") for name in CONTRACT_VARS} <= set(result.variables)
    assert result.variables[TRACKING_VAR] == "fallback"
    assert result.variables[CHANNEL_VAR] == "google-ads"
    assert result.variables[SOURCE_VAR] == "google"
    assert result.variables[MEDIUM_VAR] == "cpc"
    assert result.variables[CAMPAIGN_VAR] == "brand"
    assert result.variables[LABEL_VAR] == "Google Ads"
    assert result.variables[FORWARD_VAR] == "IAX2/phones/100"
    assert result.variables[RING_TIMEOUT_VAR] == "20"
    assert result.variables[RECORDING_VAR] == f"ctrackd-{UNIQUEID}.wav"
    # byte for byte through res_agi parse_args, MSet's split and its '=' split
    assert result.variables[CALLERID_NAME_VAR] == f"[Google Ads] {NASTY_NAME}"

    record = row(store_path)
    assert record is not None
    assert record["tracking"] == "fallback"
    assert record["channel"] == "google-ads"
    assert record["did"] == "+74950000001"
    assert record["caller"] == "+79161234567"
    assert record["caller_name"] == NASTY_NAME
    assert record["forward_to"] == "IAX2/phones/100"
    assert record["recording_path"] == f"/var/spool/asterisk/monitor/ctrackd-{UNIQUEID}.wav"
    assert record["status"] == "new" and record["ended_at"] is None
    assert record["started_at"] == float(CHANNEL_START)


def test_track_a_queue_channel_and_a_plus_did(config_path: Path, store_path: Path) -> None:
    result = track(config_path, did="+74950000003")
    assert result.variables[FORWARD_VAR] == "Queue(sales)"
    assert result.variables[CALLERID_NAME_VAR] == "[Billboard]"
    assert row(store_path)["channel"] == "billboard"  # type: ignore[index]


def test_track_unknown_did_goes_to_the_default_target(config_path: Path,
                                                      store_path: Path) -> None:
    result = track(config_path, did="74999999999")
    assert result.returncode == 0
    assert result.variables[FORWARD_VAR] == "IAX2/phones/100"
    assert result.variables[CHANNEL_VAR] == ""
    assert result.variables[TRACKING_VAR] == "fallback"
    record = row(store_path)
    assert record is not None and record["note"] == "unknown_did"
    assert record["tracking"] == "fallback"


def test_track_loads_nothing_the_daemon_needs(config_path: Path) -> None:
    # It runs once per call: asyncio, structlog, aiosqlite and panoramisk are a
    # tenth of a second of pure waste for the caller.
    result = track(config_path, python_flags=("-X", "importtime"))
    imported = set(re.findall(r"^import time:.*\|\s*(\S+)$", result.stderr, re.M))
    assert "ctrackd.config" in imported and "asterisk.agi" in imported
    assert not imported & {"asyncio", "structlog", "aiosqlite", "panoramisk"}, imported
    assert result.variables[FORWARD_VAR] == "IAX2/phones/100"


def test_broken_config_exits_0_and_leaves_the_forward_to_the_dialplan(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("ami: [unclosed\n", encoding="utf-8")
    result = track(bad)
    assert result.returncode == 0
    assert FORWARD_VAR not in result.variables  # the dialplan then dials CTRACKD_FALLBACK
    assert not any(c.startswith("EXEC") for c in result.commands)
    assert "config_invalid" in result.stderr
    assert re.search(r"bad\.yaml:\d+:\d+: invalid YAML", result.stderr)
    assert result.seconds < 10


def test_missing_config_exits_0(tmp_path: Path) -> None:
    result = track(tmp_path / "nowhere.yaml")
    assert result.returncode == 0 and FORWARD_VAR not in result.variables
    assert "config file not found" in result.stderr


def test_unwritable_store_still_forwards_the_call(tmp_path: Path) -> None:
    # The store path is a directory: SQLite cannot open it, whatever the user.
    blocked = tmp_path / "blocked.sqlite3"
    blocked.mkdir()
    config = tmp_path / "ctrackd.yaml"
    config.write_text(CONFIG.format(store=blocked), encoding="utf-8")
    result = track(config)
    assert result.returncode == 0
    assert result.variables[FORWARD_VAR] == "IAX2/phones/100"
    assert result.variables[TRACKING_VAR] == "fallback"
    assert "call_record_save_failed" in result.stderr and "forward_to=IAX2/phones/100" in (
        result.stderr)


def test_locked_store_costs_at_most_the_short_busy_timeout(config_path: Path,
                                                            store_path: Path) -> None:
    conn = queries.connect(store_path, readonly=False)
    migrate(conn)
    conn.execute("BEGIN IMMEDIATE")  # the daemon holding the write lock, forever
    try:
        result = track(config_path)
    finally:
        conn.execute("ROLLBACK")
        conn.close()
    assert result.returncode == 0
    assert result.variables[FORWARD_VAR] == "IAX2/phones/100"
    assert "call_record_save_failed" in result.stderr and "locked" in result.stderr
    assert result.seconds < 5


@pytest.mark.parametrize("args", [[], ["frobnicate"]])
def test_bad_arguments_do_not_hurt_the_call(args: list[str], tmp_path: Path) -> None:
    result = run_agi(args, FakeAsterisk())
    assert result.returncode == 0 and result.commands == []
    assert "usage" in result.stderr


def test_channel_variables_follow_the_contract() -> None:
    """The one list both the daemon's route and ctrackd-agi send (docs/architecture.md)."""
    from ctrackd.variables import channel_variables

    attribution = Attribution(
        call_id=UNIQUEID, started_at=1.0, did="+74950000001", caller="+79161234567",
        caller_name="Иван", tracking=Tracking.FALLBACK, channel="google-ads", source="google",
        medium="cpc", campaign="brand", label="Google Ads", forward_to="PJSIP/101&PJSIP/102",
        ring_timeout=25, recording_path="/var/spool/asterisk/monitor/ctrackd-1.wav", note=None)
    assert channel_variables(attribution) == [
        ("__CTRACK_CHANNEL", "google-ads"), ("CTRACK_SOURCE", "google"),
        ("CTRACK_MEDIUM", "cpc"), ("CTRACK_CAMPAIGN", "brand"), ("CTRACK_LABEL", "Google Ads"),
        ("CTRACK_FORWARD", "PJSIP/101&PJSIP/102"), ("CTRACK_RING_TIMEOUT", "25"),
        ("CTRACK_RECORDING", "ctrackd-1.wav"), ("CTRACK_CALLERID_NAME", "[Google Ads] Иван"),
        ("CTRACK_TRACKING", "fallback")]
    bare = Attribution(
        call_id=UNIQUEID, started_at=1.0, did=None, caller=None, caller_name=None,
        tracking=Tracking.FALLBACK, channel=None, source=None, medium=None, campaign=None,
        label=None, forward_to="PJSIP/office", ring_timeout=30, recording_path=None, note=None)
    assert dict(channel_variables(bare)) == {
        "__CTRACK_CHANNEL": "", "CTRACK_SOURCE": "", "CTRACK_MEDIUM": "", "CTRACK_CAMPAIGN": "",
        "CTRACK_LABEL": "", "CTRACK_FORWARD": "PJSIP/office", "CTRACK_RING_TIMEOUT": "30",
        "CTRACK_RECORDING": "", "CTRACK_CALLERID_NAME": "", "CTRACK_TRACKING": "fallback"}


# ---------------------------------------------------------------------------
# hangup


PHONE_100 = {"DIALEDPEERNUMBER": "phones/100", "DIALEDPEERNAME": "IAX2/phones-15449"}


def test_hangup_closes_an_answered_call(config_path: Path, store_path: Path) -> None:
    track(config_path)
    # the call came in 10 s ago: 6 s of dialling, of which 4 s of talk (ANSWEREDTIME)
    started = time.time() - 10
    with sqlite3.connect(store_path) as conn:
        conn.execute("UPDATE calls SET started_at = ?", (started,))
    result = hangup(config_path, {"DIALSTATUS": "ANSWER", "ANSWEREDTIME": "4",
                                  "DIALEDTIME": "6", "HANGUPCAUSE": "16", **PHONE_100})
    assert result.returncode == 0 and result.stderr == ""
    assert len(result.commands) == 1 and result.commands[0].startswith("GET FULL VARIABLE ")
    record = row(store_path)
    assert record is not None
    assert record["status"] == "answered"
    assert record["answered_by"] == "IAX2/phones/100"
    assert record["talk_seconds"] == pytest.approx(4, abs=0.5)
    assert record["ended_at"] is not None and record["started_at"] == started
    assert record["duration_seconds"] == pytest.approx(10, abs=1)
    assert record["duration_seconds"] == pytest.approx(
        record["ring_seconds"] + record["talk_seconds"])
    assert record["hangup_cause"] == 16 and record["hangup_cause_txt"] == "Normal Clearing"
    assert record["dial_status"] == "ANSWER"
    assert record["close_reason"] == "fallback_handler"
    assert record["tracking"] == "fallback" and record["channel"] == "google-ads"


def test_hangup_dates_the_end_by_asterisks_cdr_not_by_its_own_start(
        config_path: Path, store_path: Path) -> None:
    """The handler's process starts late (a real Asterisk showed a call 1 s too
    long): the end is `CDR(end,u)`, fixed at the hang-up, when it is plausible."""
    track(config_path)
    hung_up = time.time() - 1.5
    with sqlite3.connect(store_path) as conn:
        conn.execute("UPDATE calls SET started_at = ?", (hung_up - 6,))
    hangup(config_path, {"DIALSTATUS": "ANSWER", "ANSWEREDTIME_MS": "4000",
                         "CDR(end,u)": f"{hung_up:.6f}", "HANGUPCAUSE": "16", **PHONE_100})
    record = row(store_path)
    assert record is not None and record["ended_at"] == pytest.approx(hung_up, abs=1e-5)
    assert (record["duration_seconds"], record["talk_seconds"]) == pytest.approx((6, 4))
    # nonsense or a time in the future: the handler's own clock
    for bad in ("", "not-a-time", f"{time.time() + 600:.6f}"):
        with sqlite3.connect(store_path) as conn:
            conn.execute("DELETE FROM calls")
        track(config_path)
        hangup(config_path, {"DIALSTATUS": "NOANSWER", "CDR(end,u)": bad})
        record = row(store_path)
        assert record is not None and abs(record["ended_at"] - time.time()) < 5


@pytest.mark.parametrize("variables, status, cause_txt", [
    ({"DIALSTATUS": "BUSY", "HANGUPCAUSE": "17"}, "busy", "User busy"),
    ({"DIALSTATUS": "NOANSWER", "DIALEDTIME": "10", "HANGUPCAUSE": "16"}, "no_answer",
     "Normal Clearing"),
    ({"DIALSTATUS": "CANCEL", "HANGUPCAUSE": "16"}, "abandoned", "Normal Clearing"),
    ({"HANGUPCAUSE": "16"}, "abandoned", "Normal Clearing"),  # hung up before any Dial
    ({"DIALSTATUS": "CHANUNAVAIL", "HANGUPCAUSE": "20"}, "failed", "Subscriber absent"),
    ({"DIALSTATUS": "CONGESTION", "HANGUPCAUSE": "34"}, "failed", "Circuit/channel congestion"),
    ({"QUEUESTATUS": "TIMEOUT", "HANGUPCAUSE": "16"}, "no_answer", "Normal Clearing"),
])
def test_hangup_outcomes(variables: dict[str, str], status: str, cause_txt: str,
                         config_path: Path, store_path: Path) -> None:
    track(config_path)
    assert hangup(config_path, variables).returncode == 0
    record = row(store_path)
    assert record is not None
    assert record["status"] == status
    assert record["hangup_cause_txt"] == cause_txt
    assert record["answered_at"] is None and record["answered_by"] is None
    assert record["talk_seconds"] == 0
    assert record["ring_seconds"] == record["duration_seconds"]


def test_hangup_never_overwrites_a_call_the_daemon_closed(config_path: Path,
                                                          store_path: Path) -> None:
    track(config_path)
    conn = queries.connect(store_path, readonly=False)
    closed = CallProgress(call_id=UNIQUEID, started_at=time.time() - 30,
                          answered_at=time.time() - 20, answered_by="PJSIP/101")
    closed.finish(CallStatus.ANSWERED, time.time() - 1, "hangup")
    queries.save_progress(conn, [closed])
    conn.close()

    assert hangup(config_path, {"DIALSTATUS": "BUSY", "HANGUPCAUSE": "17"}).returncode == 0
    record = row(store_path)
    assert record is not None
    assert record["status"] == "answered" and record["answered_by"] == "PJSIP/101"
    assert record["close_reason"] == "hangup"


def test_hangup_without_a_track_record_still_records_the_call(config_path: Path,
                                                              store_path: Path) -> None:
    # e.g. the store was locked during `track`: the handler creates the row
    result = hangup(config_path, {"DIALSTATUS": "ANSWER", "ANSWEREDTIME": "3",
                                  "CALLERID(num)": "89161234567", **PHONE_100})
    assert result.returncode == 0
    record = row(store_path)
    assert record is not None
    assert record["status"] == "answered" and record["tracking"] == "untracked"
    assert record["caller"] == "+79161234567"
    assert record["started_at"] == float(UNIQUEID.split(".")[0])  # from the Uniqueid


def test_hangup_with_a_broken_config_exits_0(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("store: {path: 1}\n", encoding="utf-8")
    result = hangup(bad, {"DIALSTATUS": "ANSWER"})
    assert result.returncode == 0 and "config_invalid" in result.stderr


# ---------------------------------------------------------------------------
# pure helpers


@pytest.mark.parametrize("number, name, expected", [
    ("phones/100", "IAX2/phones-15449", "IAX2/phones/100"),
    ("101", "PJSIP/101-00000007", "PJSIP/101"),
    ("100@internal", "Local/100@internal-00000001;1", "Local/100@internal"),
    ("PJSIP/101", "PJSIP/101-00000007", "PJSIP/101"),
    ("", "PJSIP/101-00000007", "PJSIP/101"),
    ("", "", None),
])
def test_answered_by(number: str, name: str, expected: str | None) -> None:
    from ctrackd.fallback_agi import answered_by

    assert answered_by(number, name) == expected
