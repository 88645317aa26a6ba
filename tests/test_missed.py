"""`ctrackd missed`, the callback list, on a real store and through the real CLI.

A missed call stays on the list until that caller gets through: a later
answered call from the number, or an answered outbound call to it (the rows
another part of the daemon writes into `outbound_calls` from AMI).
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from ctrackd import output
from ctrackd.attribution.records import CallStatus
from ctrackd.config import Config, load_config
from ctrackd.store import callers, queries
from tests.test_callers import CONFIG, HOUR, IVAN, MARIA, NOW, run, save

PETR = "+79035550003"


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "ctrackd.yaml"
    path.write_text(CONFIG, encoding="utf-8")
    return path


@pytest.fixture
def config(config_file: Path) -> Config:
    return load_config(config_file)


def missed(capsys: pytest.CaptureFixture[str], config_file: Path, *words: str
           ) -> list[dict[str, Any]]:
    code, out, _ = run(capsys, "missed", "-c", str(config_file), "--format", "json", *words)
    assert code == 0
    return json.loads(out)


def called_back(config: Config, number: str, *, ago: float, uniqueid: str = "out-1") -> None:
    conn = sqlite3.connect(config.store.path)
    with conn:
        conn.execute("INSERT INTO outbound_calls (uniqueid, number, answered_at, endpoint)"
                     " VALUES (?, ?, ?, 'PJSIP/101')", (uniqueid, number, NOW - ago))
    conn.close()


def test_a_missed_call_waits_until_the_next_call_is_answered(
        capsys: pytest.CaptureFixture[str], config: Config, config_file: Path) -> None:
    save(config, "m1", ago=3 * HOUR, status=CallStatus.NO_ANSWER)
    rows = missed(capsys, config_file)
    assert [(r["caller"], r["attempts"], r["last_call_id"]) for r in rows] == [(IVAN, 1, "m1")]
    # NOW is taken at import: the suite may have run for minutes since
    waited = time.time() - (NOW - 3 * HOUR)
    assert rows[0]["waiting_seconds"] == pytest.approx(waited, abs=60)
    save(config, "m2", ago=2 * HOUR, status=CallStatus.BUSY, channel="avito")
    rows = missed(capsys, config_file)
    assert [(r["attempts"], r["first_missed_at"], r["last_channel"]) for r in rows] == [
        (2, queries.iso_utc(NOW - 3 * HOUR), "avito")]
    save(config, "through", ago=HOUR)  # Ivan got through
    assert missed(capsys, config_file) == []
    save(config, "m3", ago=HOUR / 2, status=CallStatus.ABANDONED)  # and missed again since
    rows = missed(capsys, config_file)
    assert [(r["attempts"], r["last_call_id"]) for r in rows] == [(1, "m3")]
    assert rows[0]["last_contact_at"] == queries.iso_utc(NOW - HOUR + 5)  # answered 5 s in


def test_an_answered_callback_takes_the_number_off(capsys: pytest.CaptureFixture[str],
                                                   config: Config, config_file: Path) -> None:
    save(config, "ivan", ago=3 * HOUR, status=CallStatus.NO_ANSWER)
    save(config, "maria", ago=2 * HOUR, caller=MARIA, status=CallStatus.BUSY)
    called_back(config, MARIA, ago=4 * HOUR, uniqueid="before")  # before her missed call
    assert [r["caller"] for r in missed(capsys, config_file)] == [IVAN, MARIA]
    called_back(config, IVAN, ago=HOUR)
    assert [r["caller"] for r in missed(capsys, config_file)] == [MARIA]


def test_oldest_first_withheld_apart_and_the_table(capsys: pytest.CaptureFixture[str],
                                                   config: Config, config_file: Path) -> None:
    save(config, "petr", ago=HOUR, caller=PETR, status=CallStatus.FAILED)
    save(config, "maria", ago=26 * HOUR, caller=MARIA, status=CallStatus.NO_ANSWER)
    save(config, "anon", ago=2 * HOUR, caller=None, status=CallStatus.NO_ANSWER)
    save(config, "ringing", ago=60, caller="+79990000009", ended=False)  # not missed (yet)
    code, out, err = run(capsys, "missed", "-c", str(config_file), "--format", "json")
    assert [r["caller"] for r in json.loads(out)] == [MARIA, PETR]
    assert "1 missed call from withheld numbers (cannot be called back)" in err
    code, out, _ = run(capsys, "missed", "-c", str(config_file))
    lines = out.splitlines()
    assert code == 0 and max(output.cell_width(line) for line in lines) <= 80
    assert lines[0].split() == ["NUMBER", "FIRST", "MISSED", "ATTEMPTS", "WAITING", "LAST",
                                "LAST", "CHANNEL"]
    assert lines[1].split()[0] == "+7903***0002" and "1d 02h" in lines[1]
    assert lines[-1] == "+ 1 missed call from withheld numbers (cannot be called back)"
    _, full, _ = run(capsys, "missed", "-c", str(config_file), "--full-numbers")
    assert MARIA in full
    _, csv, _ = run(capsys, "missed", "-c", str(config_file), "--format", "csv", "--limit", "1")
    assert csv.splitlines()[0] == ",".join(callers.MISSED_FIELDS)
    assert len(csv.splitlines()) == 2


def test_a_range_limits_the_missed_calls_counted(capsys: pytest.CaptureFixture[str],
                                                 config: Config, config_file: Path) -> None:
    save(config, "m1", ago=30 * HOUR, status=CallStatus.NO_ANSWER)
    save(config, "m2", ago=HOUR, status=CallStatus.NO_ANSWER)
    assert [r["attempts"] for r in missed(capsys, config_file, "--since", "-1d")] == [1]
    assert [r["attempts"] for r in missed(capsys, config_file)] == [2]


def test_nobody_waiting_is_a_sentence(capsys: pytest.CaptureFixture[str], config: Config,
                                      config_file: Path) -> None:
    save(config, "fine", ago=HOUR)
    code, out, err = run(capsys, "missed", "-c", str(config_file))
    assert (code, out) == (0, "") and "nobody is waiting for a callback" in err


def test_the_callback_list_reads_ranges_of_indexes_not_whole_tables(config: Config) -> None:
    """The plan: the missed calls by (status, started_at), each one's last contact by the
    (caller, started_at) and (number, answered_at) indexes; no full scan to join them
    (a join of the missed calls to a per-caller list ran as two: 14 s on 400k calls)."""
    save(config, "m1", ago=3 * HOUR, status=CallStatus.NO_ANSWER)
    conn = queries.connect(config.store.path, readonly=True)
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    try:
        callers.callback_list(conn, now=NOW, since=NOW - 24 * HOUR)
        conn.set_trace_callback(None)
        [sql] = [s for s in statements if "WITH missed" in s]
        plan = [r[3] for r in conn.execute(f"EXPLAIN QUERY PLAN {sql}")]
    finally:
        conn.close()
    assert "SEARCH calls USING INDEX calls_status (status=? AND started_at>?)" in plan
    assert "SEARCH c USING INDEX calls_caller (caller=?)" in plan
    assert any(p.startswith("SEARCH o USING COVERING INDEX outbound_calls_number") for p in plan)
    scans = [p for p in plan if p.startswith("SCAN ")
             and p not in ("SCAN pending",) and not p.startswith("SCAN (subquery")]
    assert scans == [], plan
