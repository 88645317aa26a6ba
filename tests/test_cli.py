"""The `ctrackd` command as an admin uses it: real config files, real stores, real processes.

Most cases run `main([...])` in-process with capsys; the ones about the
process itself (the console entry, `--follow` and Ctrl-C) run it as a
subprocess. Every bad input must end in a sentence and an exit code, never a
traceback.
"""

from __future__ import annotations

import json
import queue
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from ctrackd import cli, output
from ctrackd.attribution.plan import TargetRule
from ctrackd.attribution.records import Attribution, CallProgress, CallStatus, Tracking
from ctrackd.store import judge, queries, schema

LONG_CHANNEL = "a-channel-with-a-really-very-long-key-name"
CONFIG = f"""\
ami: {{username: ctrackd, secret: s3cret}}
store: {{path: var/calls.sqlite3}}
phone_region: RU
defaults: {{forward_to: PJSIP/office}}
channels:
  google-ads: {{label: Google Ads, source: google, medium: cpc}}
  {LONG_CHANNEL}: {{label: Long}}
numbers:
  "+74950000001": {{channel: google-ads}}
"""
NOW = time.time()


def save_call(path: Path, call_id: str, *, ago: float, channel: str | None = "google-ads",
              caller: str | None = "+79161234567", status: CallStatus = CallStatus.ANSWERED,
              answered_by: str | None = "PJSIP/101", ended: bool = True) -> None:
    conn = queries.connect(path, readonly=False)
    schema.migrate(conn)
    started = NOW - ago
    queries.save_attribution(conn, Attribution(
        call_id=call_id, started_at=started, did="+74950000001", caller=caller,
        caller_name="Иван \x1b[31mred", tracking=Tracking.STATIC, channel=channel,
        source="google", medium="cpc", campaign="brand", label="Google Ads",
        forward_to="PJSIP/office", ring_timeout=30, recording_path=f"/rec/{call_id}.wav"))
    p = CallProgress(call_id, started, CallStatus.RINGING)
    if status is CallStatus.ANSWERED:
        p.status, p.answered_at, p.answered_by = status, started + 8, answered_by
    if ended:
        p.finish(status, started + 95, "hangup")
    queries.save_progress(conn, [p])
    if ended:  # as the daemon does once a call has ended
        judge.judge_calls(conn, [call_id], rules=lambda channel: ("default", TargetRule()),
                          now=time.time())
    conn.close()


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "ctrackd.yaml"
    path.write_text(CONFIG, encoding="utf-8")
    return path


@pytest.fixture
def store(config: Path) -> Path:
    """Four calls over the last day; the config's store path is var/calls.sqlite3."""
    path = config.parent / "var" / "calls.sqlite3"
    save_call(path, "old", ago=20 * 3600, caller="+79990000001", status=CallStatus.NO_ANSWER)
    save_call(path, "mid", ago=5 * 3600, channel=LONG_CHANNEL, status=CallStatus.BUSY)
    save_call(path, "new", ago=3600, answered_by="PJSIP/operator-with-a-very-long-endpoint-name")
    save_call(path, "now", ago=60, channel=None, caller=None, status=CallStatus.RINGING,
              ended=False)
    return path


def run(capsys: pytest.CaptureFixture[str], *words: str) -> tuple[int, str, str]:
    try:
        code = cli.main(list(words))
    except SystemExit as exc:  # argparse usage errors
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def test_check_config(capsys: pytest.CaptureFixture[str], config: Path) -> None:
    code, out, _ = run(capsys, "check-config", "-c", str(config))
    assert code == 0
    assert out.splitlines() == [
        f"{config}: ok: 2 channels, 1 numbers, 0 pools (0 numbers),"
        f" store {config.parent / 'var' / 'calls.sqlite3'}",
        "  target calls: answered, talk >= 30 s"]


def test_check_config_reads_back_what_acts_on_its_own(
        capsys: pytest.CaptureFixture[str], config: Path) -> None:
    config.write_text(CONFIG + (
        "targets: {min_talk_seconds: 60, unique_days: 30}\n"
        "hooks:\n  crm: {url: 'https://crm.example.com/h', secret: s}\n"
        "  notify: {command: [/usr/local/bin/notify]}\n"), encoding="utf-8")
    code, out, _ = run(capsys, "check-config", "-c", str(config))
    assert code == 0
    assert out.splitlines()[1:] == [
        "  target calls: answered, talk >= 60 s, first call in 30 days",
        "  hook crm: call_start, call_answer, call_end, missed -> https://crm.example.com/h"
        " (signed)",
        "  hook notify: call_start, call_answer, call_end, missed -> /usr/local/bin/notify"]


def test_check_config_error_names_the_line(capsys: pytest.CaptureFixture[str],
                                           config: Path) -> None:
    config.write_text(CONFIG.replace("phone_region: RU", "phone_regoin: RU"), encoding="utf-8")
    code, out, err = run(capsys, "check-config", "-c", str(config))
    assert (code, out) == (1, "")
    assert f"{config}:3:1: " in err and "phone_regoin" in err


@pytest.mark.parametrize("words, message", [
    (["calls"], "has the daemon run yet?"),
    (["report"], "has the daemon run yet?"),
    (["calls", "-c", "/nonexistent/ctrackd.yaml"], "config file not found"),
])
def test_missing_files_are_sentences(capsys: pytest.CaptureFixture[str], config: Path,
                                     words: list[str], message: str) -> None:
    code, _, err = run(capsys, *(words if "-c" in words else words + ["-c", str(config)]))
    assert code == 1 and message in err


@pytest.mark.parametrize("words, message", [
    (["--status", "lost"], "argument --status: invalid choice: 'lost'"),
    (["--since", "last tuesday"], "argument --since: cannot read 'last tuesday' as a time"),
    (["--since", "-2y"], "argument --since: cannot read '-2y'"),
    (["--since", "today", "--until", "yesterday"], "--since must be earlier than --until"),
    (["--limit", "-1"], "argument --limit"),
])
def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str], store: Path, config: Path,
                             words: list[str], message: str) -> None:
    code, _, err = run(capsys, "calls", "-c", str(config), *words)
    assert code == 2 and message in err
    assert err.startswith("usage: ctrackd calls ")  # the command's usage, not the top level's


def test_calls_json_is_one_array_of_the_documented_fields(
        capsys: pytest.CaptureFixture[str], store: Path, config: Path) -> None:
    code, out, _ = run(capsys, "calls", "-c", str(config), "--format", "json")
    calls = json.loads(out)
    assert code == 0 and [c["call_id"] for c in calls] == ["now", "new", "mid", "old"]
    assert all(tuple(c) == queries.CALL_FIELDS for c in calls)
    assert calls[1]["recording"] == "/rec/new.wav" and calls[2]["recording"] is None
    # judged once ended: "new" (87 s of talk) is a target call; "mid" repeats "new"'s caller
    assert [(c["first_time"], c["target"]) for c in calls] == [
        (None, None), (False, True), (True, False), (True, False)]
    assert calls[1]["target_rule"] == "default: answered, talk 87 s >= 30 s"
    assert calls[1]["started_at"].endswith("Z") and calls[0]["ended_at"] is None


def test_calls_csv_has_a_header(capsys: pytest.CaptureFixture[str], store: Path,
                                config: Path) -> None:
    code, out, _ = run(capsys, "calls", "-c", str(config), "--format", "csv", "--limit", "1")
    lines = out.splitlines()
    assert code == 0 and lines[0] == ",".join(queries.CALL_FIELDS) and len(lines) == 2


def test_calls_table_fits_80_columns(capsys: pytest.CaptureFixture[str], store: Path,
                                     config: Path) -> None:
    code, out, _ = run(capsys, "calls", "-c", str(config))
    lines = out.splitlines()
    assert code == 0 and len(lines) == 5
    assert max(output.cell_width(line) for line in lines) <= 80
    assert lines[0].split() == ["TIME", "CALLER", "CHANNEL", "STATUS", "RING", "TALK",
                                "ANSWERED"]
    assert "+7916***4567" in out and "+79161234567" not in out
    assert output.ELLIPSIS in lines[2] and "\x1b" not in out  # truncated, no escapes
    _, full, _ = run(capsys, "calls", "-c", str(config), "--full-numbers")
    assert "+79161234567" in full


@pytest.mark.parametrize("spelling", ["+79161234567", "89161234567", "79161234567",
                                      "+7 (916) 123-45-67", "9161234567"])
def test_caller_in_any_spelling(capsys: pytest.CaptureFixture[str], store: Path, config: Path,
                                spelling: str) -> None:
    code, out, _ = run(capsys, "calls", "-c", str(config), "--caller", spelling,
                       "--format", "json")
    assert code == 0 and [c["call_id"] for c in json.loads(out)] == ["new", "mid"]


@pytest.mark.parametrize("words, expected", [
    (["--status", "missed"], ["mid", "old"]),
    (["--status", "open"], ["now"]),
    (["--channel", "google-ads"], ["new", "old"]),
    (["--since", "-2h"], ["now", "new"]),
    (["--since", "-6h", "--until", "-30m"], ["new", "mid"]),
])
def test_calls_filters(capsys: pytest.CaptureFixture[str], store: Path, config: Path,
                       words: list[str], expected: list[str]) -> None:
    code, out, _ = run(capsys, "calls", "-c", str(config), "--format", "json", *words)
    assert code == 0 and [c["call_id"] for c in json.loads(out)] == expected


def test_report_table_and_json(capsys: pytest.CaptureFixture[str], store: Path,
                               config: Path) -> None:
    code, out, _ = run(capsys, "report", "-c", str(config))
    lines = out.splitlines()
    assert code == 0 and max(output.cell_width(line) for line in lines) <= 80
    assert lines[0].split()[:3] == ["CHANNEL", "CALLS", "ANSWERED"]
    assert lines[0].split()[3:5] == ["MISSED", "TARGET"]
    assert lines[-1].split() == ["TOTAL", "4", "1", "2", "1", "2", "25%", "1:06", "1:27"]
    code, out, _ = run(capsys, "report", "-c", str(config), "--by", "day", "--format", "json")
    rows = json.loads(out)
    assert code == 0 and rows[-1]["is_total"] and rows[-1]["calls"] == 4
    assert rows[-1]["target"] == 1 and sum(r["target"] for r in rows[:-1]) == 1
    assert sum(r["calls"] for r in rows[:-1]) == 4 and "day" in rows[0]


def test_a_locked_store_is_a_sentence(capsys: pytest.CaptureFixture[str], store: Path,
                                      config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "LOCK_WAIT", 0.2)
    holder = sqlite3.connect(store, isolation_level=None)
    holder.execute("PRAGMA locking_mode = EXCLUSIVE")  # nobody else may even read
    holder.execute("BEGIN EXCLUSIVE")
    try:
        code, _, err = run(capsys, "calls", "-c", str(config))
    finally:
        holder.close()
    assert code == 1 and "stayed locked for 0.2 s" in err


def test_run_hands_over_to_the_daemon(capsys: pytest.CaptureFixture[str], config: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import ctrackd.daemon
    seen: list[str] = []
    monkeypatch.setattr(ctrackd.daemon, "run_daemon", lambda path: seen.append(path) or 3)
    assert run(capsys, "run", "-c", str(config))[0] == 3 and seen == [str(config)]


def ctrackd(*words: str, **kwargs: Any) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "ctrackd", *words], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def test_as_a_process(store: Path, config: Path) -> None:
    out, err = ctrackd("calls", "-c", str(config), "--format", "json").communicate(timeout=20)
    assert [c["call_id"] for c in json.loads(out)] == ["now", "new", "mid", "old"]
    bad = ctrackd("report", "-c", str(config), "--by", "week")
    _, err = bad.communicate(timeout=20)
    assert bad.returncode == 2 and "invalid choice: 'week'" in err and "Traceback" not in err


def test_follow_prints_calls_as_they_land(store: Path, config: Path) -> None:
    proc = ctrackd("calls", "-c", str(config), "--follow", "--format", "json", "--limit", "1")
    lines: queue.Queue[str] = queue.Queue()
    assert proc.stdout is not None
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout],  # type: ignore
                     daemon=True).start()
    try:
        def next_call() -> dict[str, Any]:
            return json.loads(lines.get(timeout=10))

        assert next_call()["call_id"] == "now"  # the newest; it is polling from here on
        save_call(store, "landed", ago=0, ended=False)
        landed = next_call()
        assert (landed["call_id"], landed["status"], landed["ended_at"]) == (
            "landed", "answered", None)
        save_call(store, "landed", ago=0, status=CallStatus.NO_ANSWER)
        finished = next_call()
        assert (finished["call_id"], finished["status"]) == ("landed", "no_answer")
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        assert proc.wait(timeout=10) == 0
        assert proc.stderr is not None and proc.stderr.read() == ""
        assert lines.empty()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# -- output helpers ------------------------------------------------------------------

@pytest.mark.parametrize("value, cell", [
    ("=HYPERLINK(\"http://x\")", "'=HYPERLINK(\"http://x\")"),
    ("@SUM(A1)", "'@SUM(A1)"),
    ("+cmd|' /C calc'!A0", "'+cmd|' /C calc'!A0"),
    ("+79161234567", "+79161234567"),  # a number stays a number
    ("-12.5", "-12.5"),
    ("Иван", "Иван"),
])
def test_csv_defuses_formulas(value: str, cell: str) -> None:
    assert output.csv_text([{"name": value}], ["name"]) == f"name\n{_csv_quote(cell)}\n"


def _csv_quote(cell: str) -> str:
    return '"' + cell.replace('"', '""') + '"' if '"' in cell else cell


def test_cell_formatters() -> None:
    assert output.mask_number("+79161234567") == "+7916***4567"
    assert output.mask_number("101") == "101" and output.mask_number(None) == "-"
    assert [output.duration(s) for s in (None, 7.4, 754, 3723)] == ["-", "0:07", "12:34",
                                                                    "1:02:03"]
    assert output.truncate("電話番号です", 7) == "電話番…" and output.cell_width("電話番…") == 7
    assert output.percent(0.6667) == "67%"


def test_report_totals_agree_whichever_the_grouping(store: Path) -> None:
    conn = queries.connect(store, readonly=True)
    by_channel = queries.report(conn, by="channel")[-1]
    by_day = queries.report(conn, by="day")[-1]
    by_channel.pop("channel"), by_day.pop("day")
    assert by_channel == by_day


def test_csv_spells_booleans_as_json_does() -> None:
    """`--format csv` and `--format json` of one command say the same: true/false, empty null."""
    rows = [{"first_time": True, "target": False, "note": None, "calls": 2}]
    assert output.csv_text(rows, ["first_time", "target", "note", "calls"]) == (
        "first_time,target,note,calls\ntrue,false,,2\n")


def test_csv_writes_a_dict_or_list_cell_as_compact_json(
        capsys: pytest.CaptureFixture[str], store: Path, config: Path) -> None:
    """A session in `calls --format csv` is the JSON `--format json` has, not Python's repr."""
    session = {"gclid": None, "utm_term": "окна пвх", "pages": ["/", "/цены"]}
    with sqlite3.connect(store) as conn:
        conn.execute("UPDATE calls SET session_json = ? WHERE call_id = 'new'",
                     (json.dumps(session),))
    conn.close()
    code, out, _ = run(capsys, "calls", "-c", str(config), "--format", "csv")
    import csv
    import io
    rows = {r["call_id"]: r for r in csv.DictReader(io.StringIO(out))}
    assert code == 0 and rows["new"]["session"] == json.dumps(
        session, ensure_ascii=False, separators=(",", ":"))
    assert json.loads(rows["new"]["session"]) == session and rows["old"]["session"] == ""
    assert output.csv_text([{"a": [1, "x"], "b": {}}], ["a", "b"]) == 'a,b\n"[1,""x""]",{}\n'


@pytest.mark.parametrize("spelling, message", [
    ("79161234567x", "--caller '79161234567x' is not a phone number"),
    ("abc", "--caller 'abc' is not a phone number"),
    ("Anonymous", "--caller 'Anonymous' means a withheld number"),
])
def test_calls_caller_must_look_like_a_number(capsys: pytest.CaptureFixture[str], store: Path,
                                              config: Path, spelling: str, message: str) -> None:
    code, out, err = run(capsys, "calls", "-c", str(config), "--caller", spelling)
    assert (code, out) == (1, "") and message in err
