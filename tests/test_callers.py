"""Callers, repeat calls and target calls: the judge on a real SQLite file, the CLI as an
admin runs it (`ctrackd callers`, `ctrackd caller NUMBER`), the fallback hang-up handler
as Asterisk runs it, and the daemon judging a recorded call end to end.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from ctrackd import cli, output
from ctrackd.attribution.records import Attribution, CallProgress, CallStatus, Tracking
from ctrackd.config import Config, load_config
from ctrackd.daemon import Daemon
from ctrackd.hooks.outbox import enqueue as enqueue_hook
from ctrackd.store import judge, queries, schema
from tests.simulator.ami_server import FakeAmi, read_capture
from tests.test_daemon import CONFIG as DAEMON_CONFIG
from tests.test_daemon import agi_track, environment, wait_for
from tests.test_fallback_agi import CONFIG as AGI_CONFIG
from tests.test_fallback_agi import UNIQUEID, hangup, track

NOW = time.time()
HOUR = 3600.0
IVAN, MARIA = "+79161234567", "+79032220002"
CONFIG = """\
ami: {username: ctrackd, secret: s3cret}
store: {path: var/calls.sqlite3}
phone_region: RU
defaults: {forward_to: PJSIP/office}
targets: {min_talk_seconds: 30}
channels:
  google-ads: {label: Google Ads, source: google, medium: cpc}
  avito: {label: Avito, target: {min_talk_seconds: 60, unique_days: 30}}
numbers:
  "+74950000001": {channel: google-ads}
  "+74950000003": {channel: avito}
hooks:
  crm: {url: "http://127.0.0.1:9/missed", events: [missed]}
"""


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "ctrackd.yaml"
    path.write_text(CONFIG, encoding="utf-8")
    return path


@pytest.fixture
def config(config_file: Path) -> Config:
    return load_config(config_file)


def writer(config: Config) -> sqlite3.Connection:
    conn = queries.connect(config.store.path, readonly=False)
    schema.migrate(conn)
    return conn


def save(config: Config, call_id: str, *, ago: float, caller: str | None = IVAN,
         status: CallStatus = CallStatus.ANSWERED, talk: float = 95.0,
         channel: str | None = "google-ads", did: str = "+74950000001",
         session: dict[str, Any] | None = None, pool: str | None = None,
         ended: bool = True, judged: bool = True, length: float = 100.0) -> None:
    """One call as both sides write it, then judged as the daemon would once it ended."""
    conn = writer(config)
    try:
        started = NOW - ago
        queries.save_attribution(conn, Attribution(
            call_id=call_id, started_at=started, did=did, caller=caller, caller_name=None,
            tracking=Tracking.DYNAMIC if pool else Tracking.STATIC, channel=channel,
            source=None, medium=None, campaign=None, label=None, forward_to="PJSIP/office",
            ring_timeout=30, recording_path=f"/rec/{call_id}.wav", pool=pool, session=session))
        p = CallProgress(call_id, started, CallStatus.RINGING)
        if ended:
            if status is CallStatus.ANSWERED:
                p.answered_at, p.answered_by = started + length - talk, "PJSIP/101"
            p.finish(status, started + length, "hangup")
        queries.save_progress(conn, [p])
        if ended and judged:
            judge_now(config, conn, [call_id])
    finally:
        conn.close()


def judge_now(config: Config, conn: sqlite3.Connection, ids: list[str]) -> judge.Judged:
    def enqueue(c: sqlite3.Connection, event: str, call_id: str | None, payload: Any,
                now: float) -> int:
        return enqueue_hook(c, config.hooks, event, call_id, payload, now)
    return judge.judge_calls(conn, ids, rules=config.target_rule, now=time.time(),
                             enqueue=enqueue)


def row(config: Config, call_id: str) -> dict[str, Any]:
    conn = sqlite3.connect(config.store.path)
    conn.row_factory = sqlite3.Row
    try:
        return dict(conn.execute("SELECT * FROM calls WHERE call_id = ?", (call_id,)).fetchone())
    finally:
        conn.close()


def outbox(config: Config) -> list[dict[str, Any]]:
    conn = sqlite3.connect(config.store.path)
    try:
        return [{"hook": hook, "call_id": call_id, "data": json.loads(payload)["data"]}
                for hook, call_id, payload in conn.execute(
                    "SELECT hook, call_id, payload FROM outbox ORDER BY id")]
    finally:
        conn.close()


def run(capsys: pytest.CaptureFixture[str], *words: str) -> tuple[int, str, str]:
    try:
        code = cli.main(list(words))
    except SystemExit as exc:  # argparse usage errors
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


# -- the judge --------------------------------------------------------------------------

def test_first_call_then_repeat(config: Config) -> None:
    save(config, "a", ago=3 * HOUR, talk=75)
    save(config, "b", ago=HOUR, talk=12)
    a, b = row(config, "a"), row(config, "b")
    assert (a["first_time"], a["previous_call_at"], a["target"], a["target_rule"]) == (
        1, None, 1, "default: answered, talk 75 s >= 30 s")
    assert (b["first_time"], b["previous_call_at"], b["target"], b["target_rule"]) == (
        0, a["started_at"], 0, "default: not target: talk 12 s < 30 s")


def test_a_channel_rule_counts_a_repeat_within_its_days_out(config: Config) -> None:
    save(config, "old", ago=40 * 24 * HOUR, channel="avito", did="+74950000003")
    save(config, "first", ago=2 * 24 * HOUR, channel="avito", did="+74950000003")
    save(config, "again", ago=HOUR, channel="avito", did="+74950000003", talk=300)
    assert row(config, "first")["target_rule"] == (
        "channel avito: answered, talk 95 s >= 60 s, first call within 30 days")
    assert row(config, "first")["first_time"] == 0  # not the first ever, but the first in 30 days
    again = row(config, "again")
    assert (again["target"], again["target_rule"]) == (
        0, "channel avito: not target: repeat call within 30 days")


def test_withheld_open_and_unknown_calls(config: Config) -> None:
    save(config, "anon", ago=HOUR, caller=None)
    save(config, "live", ago=60, ended=False)
    conn = writer(config)
    try:
        assert judge_now(config, conn, ["live", "nobody"]).calls == 0  # open, unknown: skipped
    finally:
        conn.close()
    anon = row(config, "anon")
    assert (anon["first_time"], anon["target"]) == (None, 1)
    assert row(config, "live")["target"] is None


def test_a_call_stored_late_rejudges_the_next_one(config: Config) -> None:
    """Out of order: the later call was judged first; the earlier one arrives and is judged."""
    save(config, "later", ago=HOUR, channel="avito", did="+74950000003")
    assert (row(config, "later")["first_time"], row(config, "later")["target"]) == (1, 1)
    save(config, "third", ago=HOUR / 2, channel="avito", did="+74950000003")
    third_before = row(config, "third")
    save(config, "earlier", ago=2 * HOUR, channel="avito", did="+74950000003")
    later = row(config, "later")
    assert (later["first_time"], later["previous_call_at"], later["target"],
            later["target_rule"]) == (0, row(config, "earlier")["started_at"], 0,
                                      "channel avito: not target: repeat call within 30 days")
    assert row(config, "third") == third_before  # its previous call is still "later"
    assert row(config, "earlier")["first_time"] == 1


def test_judging_twice_changes_nothing(config: Config) -> None:
    save(config, "m", ago=HOUR, status=CallStatus.NO_ANSWER)
    first = row(config, "m")
    conn = writer(config)
    try:
        again = judge_now(config, conn, ["m"])
    finally:
        conn.close()
    assert again.hooks == 0  # the hook delivery exists already: not queued twice
    assert {k: v for k, v in row(config, "m").items() if k != "updated_at"} == {
        k: v for k, v in first.items() if k != "updated_at"}
    assert len(outbox(config)) == 1


def test_a_missed_call_queues_the_hook_with_the_callback_figures(config: Config) -> None:
    save(config, "answered", ago=5 * HOUR)
    save(config, "m1", ago=2 * HOUR, status=CallStatus.BUSY)
    save(config, "m2", ago=HOUR, status=CallStatus.NO_ANSWER, channel="avito")
    save(config, "anon", ago=HOUR, status=CallStatus.ABANDONED, caller=None)
    deliveries = outbox(config)
    assert [(d["hook"], d["call_id"]) for d in deliveries] == [
        ("crm", "m1"), ("crm", "m2"), ("crm", "anon")]
    m2 = deliveries[1]["data"]
    assert set(queries.CALL_FIELDS) <= set(m2)  # the call as `ctrackd calls` shows it
    assert (m2["call_id"], m2["caller"], m2["status"], m2["channel"]) == (
        "m2", IVAN, "no_answer", "avito")
    assert m2["attempts"] == 2 and m2["waiting_since"] == queries.iso_utc(NOW - 2 * HOUR)
    assert deliveries[0]["data"]["attempts"] == 1
    anon = deliveries[2]["data"]
    assert (anon["caller"], anon["attempts"], anon["waiting_since"]) == (None, None, None)


def test_no_hooks_no_payload(config: Config) -> None:
    save(config, "m", ago=HOUR, judged=False, status=CallStatus.BUSY)
    conn = writer(config)
    try:
        result = judge.judge_calls(conn, ["m"], rules=config.target_rule, now=NOW)
    finally:
        conn.close()
    assert (result.calls, result.hooks) == (1, 0) and outbox(config) == []


def test_the_sweep_finds_recent_unjudged_calls(config: Config) -> None:
    save(config, "old", ago=5 * 24 * HOUR, judged=False)
    save(config, "recent", ago=HOUR / 4, judged=False)
    save(config, "done", ago=HOUR / 8)
    save(config, "open", ago=60, ended=False)
    conn = writer(config)
    try:
        assert judge.unjudged_calls(conn, NOW - judge.SWEEP_SECONDS) == ["recent"]
    finally:
        conn.close()


def test_the_sweep_finds_a_long_call_by_its_write_not_its_start(config: Config) -> None:
    """A 2-hour call (or one closed at a restart) began long before the sweep's window."""
    save(config, "long", ago=2 * HOUR, length=2 * HOUR - 60, judged=False)
    conn = writer(config)
    try:
        assert judge.unjudged_calls(conn, NOW - judge.SWEEP_SECONDS) == ["long"]
        plan = " ".join(str(r[3]) for r in conn.execute(
            "EXPLAIN QUERY PLAN SELECT call_id FROM calls INDEXED BY calls_updated_at"
            " WHERE updated_at >= 0 AND ended_at >= 0 AND target IS NULL ORDER BY started_at"))
        assert "USING INDEX calls_updated_at" in plan
    finally:
        conn.close()


def test_a_missed_call_judged_after_the_caller_got_through_asks_for_no_callback(
        config: Config) -> None:
    """Judged late (the sweep, a retried batch): answered since, or called back: no hook."""
    save(config, "m-back", ago=3 * HOUR, status=CallStatus.NO_ANSWER, judged=False)
    save(config, "answered", ago=2 * HOUR)  # Ivan called again and got through
    save(config, "m-maria", ago=3 * HOUR, caller=MARIA, status=CallStatus.BUSY, judged=False)
    save(config, "m-anna", ago=3 * HOUR, caller="+79035550055", status=CallStatus.BUSY,
         judged=False)
    conn = writer(config)
    try:
        conn.execute("INSERT INTO outbound_calls (uniqueid, number, answered_at, endpoint)"
                     " VALUES ('out.1', ?, ?, 'PJSIP/101')", (MARIA, NOW - HOUR))
        result = judge_now(config, conn, ["m-back", "m-maria", "m-anna"])
    finally:
        conn.close()
    assert result.calls == 3 and row(config, "m-back")["target"] == 0
    assert [d["call_id"] for d in outbox(config)] == ["m-anna"]  # still waiting: asked for


def test_a_big_batch_commits_in_chunks(config: Config, monkeypatch: pytest.MonkeyPatch) -> None:
    """One write transaction per JUDGE_CHUNK calls: the AGI route's saves never wait long."""
    monkeypatch.setattr(judge, "JUDGE_CHUNK", 2)
    for n in range(5):
        save(config, f"c{n}", ago=(10 - n) * HOUR, judged=False)
    conn = writer(config)
    begins: list[str] = []
    conn.set_trace_callback(lambda sql: begins.append(sql) if sql.startswith("BEGIN") else None)
    try:
        result = judge_now(config, conn, [f"c{n}" for n in range(5)])
    finally:
        conn.close()
    assert result.calls == 5 and len(begins) == 3
    assert [row(config, f"c{n}")["first_time"] for n in range(5)] == [1, 0, 0, 0, 0]


async def test_the_worker_sweeps_again_while_it_runs(config: Config) -> None:
    """A call whose judging was lost (a dropped batch, the fallback's judge) is judged later."""
    writer(config).close()
    worker = judge.JudgeWorker(config.store.path, rules=lambda: config.target_rule,
                               enqueue=lambda: None, sweep_interval=0.05)
    task = asyncio.create_task(worker.run())
    try:
        await asyncio.sleep(0.1)  # the start sweep has run: nothing then
        save(config, "lost", ago=HOUR, judged=False)  # nobody submits it
        await wait_for(lambda: row(config, "lost")["target"] is not None)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert row(config, "lost")["target"] == 1


async def test_a_store_that_cannot_be_opened_fails_the_batch_not_the_worker(
        tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("")
    worker = judge.JudgeWorker(tmp_path / "afile" / "calls.sqlite3", enqueue=lambda: None,
                               rules=lambda: load_config_rules, retry_delay=0.01, retries=1,
                               sweep_interval=0.05)
    worker.submit(["1.1"])
    task = asyncio.create_task(worker.run())
    try:
        await wait_for(lambda: worker.failed_batches == 2)
        await asyncio.sleep(0.15)  # sweeps fail too, and are only logged
        assert not task.done()
        await worker.drain()  # the daemon's stop: nothing raised either
    finally:
        task.cancel()
        results = await asyncio.gather(task, return_exceptions=True)
    assert isinstance(results[0], asyncio.CancelledError)


def load_config_rules(channel: str | None) -> Any:
    raise AssertionError("never asked: nothing could be read")


# -- ctrackd callers / caller -------------------------------------------------------------

@pytest.fixture
def history(config: Config) -> Config:
    """Ivan called twice (answered, then missed), Maria once from the web, one withheld call."""
    save(config, "ivan-1", ago=5 * HOUR, talk=75)
    save(config, "maria-1", ago=4 * HOUR, caller=MARIA, channel=None, pool="site",
         did="+74950000101", session={"utm_source": "yandex", "utm_medium": "cpc"})
    save(config, "ivan-2", ago=2 * HOUR, status=CallStatus.NO_ANSWER, channel="avito",
         did="+74950000003")
    save(config, "anon", ago=HOUR, caller=None, status=CallStatus.ABANDONED)
    return config


def test_a_caller_who_called_twice_has_one_card(capsys: pytest.CaptureFixture[str],
                                                history: Config, config_file: Path) -> None:
    code, out, err = run(capsys, "callers", "-c", str(config_file), "--format", "json")
    cards = json.loads(out)
    assert code == 0 and "1 call from withheld numbers" in err
    assert [c["caller"] for c in cards] == [IVAN, MARIA]  # the latest caller first
    assert cards[0] == {
        "caller": IVAN, "first_call_at": queries.iso_utc(NOW - 5 * HOUR),
        "first_touch": "google-ads", "last_call_at": queries.iso_utc(NOW - 2 * HOUR),
        "last_touch": "avito", "calls": 2, "answered": 1, "missed": 1, "target_calls": 1}
    assert (cards[1]["first_touch"], cards[1]["calls"]) == ("utm:yandex", 1)


def test_the_callers_table(capsys: pytest.CaptureFixture[str], history: Config,
                           config_file: Path) -> None:
    code, out, _ = run(capsys, "callers", "-c", str(config_file))
    lines = out.splitlines()
    assert code == 0 and max(output.cell_width(line) for line in lines) <= 80
    assert lines[0].split()[:3] == ["NUMBER", "FIRST", "CALL"]
    assert "+7916***4567" in lines[1] and IVAN not in out
    assert lines[1].split()[-4:] == ["2", "1", "1", "1"]
    assert lines[-1] == "+ 1 call from withheld numbers (no card)"


@pytest.mark.parametrize("words, expected", [
    (["--min-calls", "2"], [IVAN]),
    (["--channel", "avito"], [IVAN]),
    (["--since", "-3h"], [IVAN]),       # Ivan's second call only
    (["--until", "-3h"], [MARIA, IVAN]),
    (["--limit", "1"], [IVAN]),
])
def test_callers_filters(capsys: pytest.CaptureFixture[str], history: Config, config_file: Path,
                         words: list[str], expected: list[str]) -> None:
    code, out, _ = run(capsys, "callers", "-c", str(config_file), "--format", "json", *words)
    assert code == 0 and [c["caller"] for c in json.loads(out)] == expected


def test_a_range_counts_its_calls_but_the_first_touch_is_the_first_ever(
        capsys: pytest.CaptureFixture[str], history: Config, config_file: Path) -> None:
    _, out, _ = run(capsys, "callers", "-c", str(config_file), "--format", "csv",
                    "--since", "-3h")
    lines = out.splitlines()
    assert lines[0] == "caller,first_call_at,first_touch,last_call_at,last_touch,calls," \
                       "answered,missed,target_calls"
    assert lines[1].split(",")[2:] == ["google-ads", queries.iso_utc(NOW - 2 * HOUR), "avito",
                                       "1", "0", "1", "0"]


@pytest.mark.parametrize("spelling", ["+79161234567", "89161234567", "+7 (916) 123-45-67"])
def test_caller_history_in_any_spelling(capsys: pytest.CaptureFixture[str], history: Config,
                                        config_file: Path, spelling: str) -> None:
    code, out, _ = run(capsys, "caller", spelling, "-c", str(config_file), "--format", "json")
    card = json.loads(out)
    assert code == 0 and (card["caller"], card["calls"]) == (IVAN, 2)
    assert [(c["call_id"], c["first_time"], c["status"], c["target"]) for c in card["history"]] == [
        ("ivan-1", True, "answered", True), ("ivan-2", False, "no_answer", False)]
    assert card["history"][1]["target_rule"] == (
        "channel avito: not target: not answered (no_answer)")


def test_caller_table_marks_the_repeat(capsys: pytest.CaptureFixture[str], history: Config,
                                       config_file: Path) -> None:
    code, out, _ = run(capsys, "caller", "89161234567", "-c", str(config_file))
    lines = out.splitlines()
    assert code == 0 and max(output.cell_width(line) for line in lines) <= 80
    assert lines[0] == f"{IVAN}: 2 calls, 1 answered, 1 missed, 1 target call"
    table = lines[lines.index("") + 1:]
    assert table[0].split()[:4] == ["TIME", "CALL", "CHANNEL", "STATUS"]
    assert table[1].split()[2:7] == ["first", "google-ads", "answered", "75", "s"]
    assert table[2].split()[2:4] == ["repeat", "avito"]
    # the reason, without the rule's name (the channel has its column); long ones are cut
    assert table[1].split()[7:10] == ["yes", "answered,", "talk"]
    assert table[2].split()[7:10] == ["no", "not", "answered"]


def test_caller_table_spells_talk_as_its_reason_does(capsys: pytest.CaptureFixture[str],
                                                      config: Config, config_file: Path) -> None:
    save(config, "short", ago=HOUR, talk=0.5)
    _, out, _ = run(capsys, "caller", IVAN, "-c", str(config_file))
    line = out.splitlines()[-1]
    assert " 0.5 s  no" in line and line.endswith("talk 0.5 s < 30 s")


def test_the_first_and_the_last_touch_are_cut_alike(capsys: pytest.CaptureFixture[str],
                                                    config: Config, config_file: Path) -> None:
    """One call: its first touch is its last; a narrow table must not cut only one of them."""
    save(config, "one", ago=HOUR, caller=MARIA, channel="yandex-direct-retargeting")
    _, out, _ = run(capsys, "callers", "-c", str(config_file), "--full-numbers")
    cells = [c for c in out.splitlines()[1].split("  ") if "yandex" in c]
    assert len(cells) == 2 and cells[0].strip() == cells[1].strip()


@pytest.mark.parametrize("words, note", [
    ([], "+ 1 call from withheld numbers (no card)"),
    (["--min-calls", "2"], None),                    # a withheld call is nobody's repeat
    (["--channel", "avito"], None),                  # the withheld call was a google-ads one
    (["--channel", "google-ads"], "+ 1 call from withheld numbers of google-ads (no card)"),
])
def test_the_withheld_note_counts_what_the_filter_could_have_shown(
        capsys: pytest.CaptureFixture[str], history: Config, config_file: Path,
        words: list[str], note: str | None) -> None:
    code, out, _ = run(capsys, "callers", "-c", str(config_file), *words)
    last = out.splitlines()[-1]
    assert code == 0 and (last == note if note else "withheld" not in out)


def test_caller_csv_spells_booleans_as_json(capsys: pytest.CaptureFixture[str], history: Config,
                                            config_file: Path) -> None:
    _, out, _ = run(capsys, "caller", IVAN, "-c", str(config_file), "--format", "csv")
    lines = out.splitlines()
    header = lines[0].split(",")
    first = dict(zip(header, lines[1].split(",")))
    assert (first["first_time"], first["target"]) == ("true", "true")


def test_caller_csv_is_the_calls(capsys: pytest.CaptureFixture[str], history: Config,
                                 config_file: Path) -> None:
    _, out, _ = run(capsys, "caller", IVAN, "-c", str(config_file), "--format", "csv")
    lines = out.splitlines()
    assert lines[0] == ",".join(queries.CALL_FIELDS) and len(lines) == 3


@pytest.mark.parametrize("number, message", [
    ("anonymous", "'anonymous' means a withheld number: such callers have no number to look up"),
    ("+79990000000", "no calls from +79990000000 in "),
    ("79167770005x", "'79167770005x' is not a phone number (digits, a leading +,"),
    ("++7916", "'++7916' is not a phone number"),
    ("12", "'12' is not a phone number"),
    ("abc", "'abc' is not a phone number (digits, a leading +, spaces, dashes, dots and"
            " brackets only)"),
    ("+7 916 123-45-6x", "is not a phone number"),
])
def test_caller_errors_are_sentences(capsys: pytest.CaptureFixture[str], history: Config,
                                     config_file: Path, number: str, message: str) -> None:
    code, out, err = run(capsys, "caller", number, "-c", str(config_file))
    assert (code, out) == (1, "") and message in err


# -- the fallback hang-up handler judges its own call ------------------------------------------

def test_the_fallback_hangup_handler_judges_the_call(tmp_path: Path) -> None:
    store = tmp_path / "state" / "calls.sqlite3"
    path = tmp_path / "ctrackd.yaml"
    path.write_text(AGI_CONFIG.format(store=store) + "hooks:\n  crm: {url: \"http://h/x\", events: [missed]}\n",
                    encoding="utf-8")
    config = load_config(path)
    save(config, "earlier", ago=HOUR, status=CallStatus.BUSY)  # the same caller, an hour ago
    assert track(path).returncode == 0
    result = hangup(path, {"DIALSTATUS": "NOANSWER", "DIALEDTIME": "20", "HANGUPCAUSE": "16"})
    assert result.returncode == 0 and result.stderr == ""
    record = row(config, UNIQUEID)
    assert (record["status"], record["first_time"], record["target"], record["target_rule"]) == (
        "no_answer", 0, 0, "default: not target: not answered (no_answer)")
    assert [d["call_id"] for d in outbox(config)] == ["earlier", UNIQUEID]
    assert outbox(config)[1]["data"]["attempts"] == 2


# -- the daemon judges a recorded call once it has ended -----------------------------------------

async def test_the_daemon_judges_recorded_calls(tmp_path: Path, ami: FakeAmi,
                                                captures: Path) -> None:
    """Captures 01 (answered, 4 s of talk) then 03 (busy) from the same caller."""
    path = tmp_path / "ctrackd.yaml"
    path.write_text(DAEMON_CONFIG.format(ami_port=ami.port)
                    + "targets: {min_talk_seconds: 3}\n", encoding="utf-8")
    daemon = Daemon(load_config(path), stop_grace=1.0)
    await daemon.start()
    try:
        await ami.wait_for_clients(1)
        assert daemon.agi_address is not None
        for uniqueid, did, capture in (
                ("1795332111.16", "74950000001", "01-answered-office-hangs-up"),
                ("1795332127.22", "74950000003", "03-busy")):
            await agi_track(daemon.agi_address[1], environment(uniqueid, did))
            for message in read_capture(captures / "ami" / f"{capture}.txt", skip_login=True):
                await ami.emit(message)
            await wait_for(lambda: row(daemon.config, uniqueid)["target"] is not None)
        answered, busy = row(daemon.config, "1795332111.16"), row(daemon.config, "1795332127.22")
        assert (answered["status"], answered["first_time"], answered["target"]) == (
            "answered", 1, 1)
        assert answered["target_rule"].startswith("default: answered, talk 4")
        assert (busy["status"], busy["first_time"], busy["target"], busy["target_rule"]) == (
            "busy", 0, 0, "default: not target: not answered (busy)")
        assert busy["previous_call_at"] == answered["started_at"]
    finally:
        await daemon.stop()


async def test_the_daemon_judges_what_is_queued_when_it_stops(tmp_path: Path, ami: FakeAmi) -> None:
    path = tmp_path / "ctrackd.yaml"
    path.write_text(DAEMON_CONFIG.format(ami_port=ami.port), encoding="utf-8")
    daemon = Daemon(load_config(path), stop_grace=1.0)
    await daemon.start()
    config = daemon.config
    save(config, "ended-unseen", ago=HOUR, judged=False)
    assert daemon.judge is not None
    daemon.judge.submit(["ended-unseen"])  # as the consumer's save does, right before the stop
    await daemon.stop()
    assert row(config, "ended-unseen")["target"] == 1


async def test_the_daemon_closes_the_store_even_if_the_last_judging_raises(
        tmp_path: Path, ami: FakeAmi, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug in the judge's drain must not leave the store's queued writes unwritten."""
    path = tmp_path / "ctrackd.yaml"
    path.write_text(DAEMON_CONFIG.format(ami_port=ami.port), encoding="utf-8")
    daemon = Daemon(load_config(path), stop_grace=1.0)
    await daemon.start()
    assert daemon.judge is not None and daemon.store is not None

    async def broken() -> None:
        raise RuntimeError("a bug in the judge")
    monkeypatch.setattr(daemon.judge, "drain", broken)
    with pytest.raises(RuntimeError, match="a bug in the judge"):
        await daemon.stop()
    with pytest.raises(schema.StoreError, match="the call store is closed"):
        await daemon.store.write("INSERT ...", [{}])  # refused before any SQL is looked at
