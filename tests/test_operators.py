"""The operators report on a hand-built store: every figure checked against a hand count.

The store is a real SQLite file with the real migrations; calls and legs are
written with the daemon's own upserts. The CLI runs as a real subprocess.
"""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from datetime import timezone
from pathlib import Path

import pytest

from ctrackd.attribution.legs import LegRecord
from ctrackd.attribution.records import CallProgress, CallStatus
from ctrackd.store import queries
from ctrackd.store.legs import UPSERT_LEGS, leg_rows
from ctrackd.store.operators import missed_by_hour, operator_report
from ctrackd.store.schema import migrate

T0 = 1_795_300_000.0 - 1_795_300_000.0 % 86400  # a UTC midnight
H = 3600.0


def _call(call_id: str, start: float, status: CallStatus, *, answered: float | None = None,
          by: str | None = None, end: float, target: bool = False) -> tuple[CallProgress, bool]:
    p = CallProgress(call_id=call_id, started_at=start, answered_at=answered, answered_by=by)
    p.finish(status, end, "hangup")
    return p, target


# Hand-made day (UTC):
# c1 09:00 ring group 101&102, 102 answers after 4 s, talks 60 s, target
# c2 09:10 ring group, both ring 20 s, no answer (missed while both rang)
# c3 10:00 queue: 101 rings twice (retry), 103 once; 103 answers after 30 s, talks 100 s
# c4 10:30 the caller gives up after 5 s while 101 rings (abandoned)
# c5 10:40 failed before any phone rang (no leg)
# c6 11:00 101 answers after 2 s, talks 30 s, transfers to 103, which answers after 3 s,
#          talks 20 s; target
CALLS = [
    _call("c1", T0 + 9 * H, CallStatus.ANSWERED, answered=T0 + 9 * H + 4, by="PJSIP/102",
          end=T0 + 9 * H + 64, target=True),
    _call("c2", T0 + 9 * H + 600, CallStatus.NO_ANSWER, end=T0 + 9 * H + 620),
    _call("c3", T0 + 10 * H, CallStatus.ANSWERED, answered=T0 + 10 * H + 30, by="PJSIP/103",
          end=T0 + 10 * H + 130),
    _call("c4", T0 + 10 * H + 1800, CallStatus.ABANDONED, end=T0 + 10 * H + 1805),
    _call("c5", T0 + 10 * H + 2400, CallStatus.FAILED, end=T0 + 10 * H + 2401),
    _call("c6", T0 + 11 * H, CallStatus.ANSWERED, answered=T0 + 11 * H + 2, by="PJSIP/101",
          end=T0 + 11 * H + 55, target=True),
]
LEGS = [
    LegRecord("c1", "1.1", "PJSIP/101", T0 + 9 * H, None, T0 + 9 * H + 4, "cancel"),
    LegRecord("c1", "1.2", "PJSIP/102", T0 + 9 * H, T0 + 9 * H + 4, T0 + 9 * H + 64, "answer"),
    LegRecord("c2", "2.1", "PJSIP/101", T0 + 9 * H + 600, None, T0 + 9 * H + 620, "noanswer"),
    LegRecord("c2", "2.2", "PJSIP/102", T0 + 9 * H + 600, None, T0 + 9 * H + 620, "noanswer"),
    LegRecord("c3", "3.1", "PJSIP/101", T0 + 10 * H, None, T0 + 10 * H + 15, "noanswer"),
    LegRecord("c3", "3.2", "PJSIP/103", T0 + 10 * H + 20, T0 + 10 * H + 30, T0 + 10 * H + 130,
              "answer"),
    LegRecord("c3", "3.3", "PJSIP/101", T0 + 10 * H + 20, None, T0 + 10 * H + 30, "cancel"),
    LegRecord("c4", "4.1", "PJSIP/101", T0 + 10 * H + 1800, None, T0 + 10 * H + 1805, "cancel"),
    LegRecord("c6", "6.1", "PJSIP/101", T0 + 11 * H, T0 + 11 * H + 2, T0 + 11 * H + 32,
              "answer"),
    LegRecord("c6", "6.2", "PJSIP/103", T0 + 11 * H + 32, T0 + 11 * H + 35, T0 + 11 * H + 55,
              "answer"),
]


@pytest.fixture
def store(tmp_path: Path) -> Path:
    path = tmp_path / "calls.sqlite3"
    conn = queries.connect(path, readonly=False)
    migrate(conn)
    queries.save_progress(conn, [p for p, _ in CALLS])
    with queries.transaction(conn):
        conn.executemany("UPDATE calls SET target = ? WHERE call_id = ?",
                         [(int(target), p.call_id) for p, target in CALLS])
        sql, params = queries.multi_row(UPSERT_LEGS, leg_rows(LEGS))
        conn.execute(sql, params)
    conn.close()
    return path


def test_operator_figures_match_a_hand_count(store: Path) -> None:
    conn = queries.connect(store, readonly=True)
    rows = {r["endpoint"]: r for r in operator_report(conn)}
    conn.close()
    # 101: offered c1 c2 c3 (once, though it rang twice) c4 c6 = 5; answered c6;
    # missed while it rang: c2, c4 (c1, c3 were answered by a colleague).
    assert rows["PJSIP/101"] == {
        "endpoint": "PJSIP/101", "offered": 5, "answered": 1, "rang_not_answered": 4,
        "missed": 2, "avg_answer_seconds": 2.0, "avg_talk_seconds": 30.0, "target": 1,
        "target_share": 1.0, "is_total": False}
    assert rows["PJSIP/102"] == {
        "endpoint": "PJSIP/102", "offered": 2, "answered": 1, "rang_not_answered": 1,
        "missed": 1, "avg_answer_seconds": 4.0, "avg_talk_seconds": 60.0, "target": 1,
        "target_share": 1.0, "is_total": False}
    # 103: c3 (10 s to answer, 100 s talk), c6 by transfer (3 s, 20 s); c6 is a target call
    assert rows["PJSIP/103"] == {
        "endpoint": "PJSIP/103", "offered": 2, "answered": 2, "rang_not_answered": 0,
        "missed": 0, "avg_answer_seconds": 6.5, "avg_talk_seconds": 60.0, "target": 1,
        "target_share": 0.5, "is_total": False}
    # each call once: c1 c2 c3 c4 c6 rang somebody (c5 nobody); answered c1 c3 c6;
    # to answer over every answering leg (4 + 10 + 2 + 3) / 4, talk (60 + 100 + 30 + 20) / 4
    assert rows[None] == {
        "endpoint": None, "offered": 5, "answered": 3, "rang_not_answered": 2, "missed": 2,
        "avg_answer_seconds": 4.8, "avg_talk_seconds": 52.5, "target": 2,
        "target_share": round(2 / 3, 3), "is_total": True}
    assert list(rows) == ["PJSIP/101", "PJSIP/102", "PJSIP/103", None]  # most offered first


def test_the_range_is_by_the_call_start(store: Path) -> None:
    conn = queries.connect(store, readonly=True)
    rows = operator_report(conn, since=T0 + 10 * H, until=T0 + 11 * H)
    conn.close()
    assert [(r["endpoint"], r["offered"], r["answered"], r["missed"]) for r in rows] == [
        ("PJSIP/101", 2, 0, 1), ("PJSIP/103", 1, 1, 0), (None, 2, 1, 1)]


def test_missed_calls_per_hour_of_day(store: Path) -> None:
    conn = queries.connect(store, readonly=True)
    rows = missed_by_hour(conn, tz=timezone.utc)
    conn.close()
    assert len(rows) == 25 and [r["hour"] for r in rows[:3]] == ["00", "01", "02"]
    by_hour = {r["hour"]: r for r in rows}
    assert by_hour["09"] == {"hour": "09", "calls": 2, "answered": 1, "missed": 1,
                             "missed_while_rang": 1, "missed_unrung": 0, "missed_rate": 0.5,
                             "is_total": False}
    # c4 abandoned while 101 rang, c5 failed before any phone rang
    assert by_hour["10"] == {"hour": "10", "calls": 3, "answered": 1, "missed": 2,
                             "missed_while_rang": 1, "missed_unrung": 1,
                             "missed_rate": round(2 / 3, 3), "is_total": False}
    assert by_hour["08"]["calls"] == 0 and by_hour["08"]["missed_rate"] is None
    assert rows[-1] == {"hour": None, "calls": 6, "answered": 3, "missed": 3,
                        "missed_while_rang": 2, "missed_unrung": 1, "missed_rate": 0.5,
                        "is_total": True}


def test_hours_follow_the_time_zone(store: Path) -> None:
    from zoneinfo import ZoneInfo
    conn = queries.connect(store, readonly=True)
    rows = {r["hour"]: r for r in missed_by_hour(conn, tz=ZoneInfo("Asia/Kolkata"))}  # +05:30
    conn.close()
    assert rows["14"]["calls"] == 2  # 09:00 and 09:10 UTC are 14:30 and 14:40 there


# -- the command ------------------------------------------------------------------

def ctrackd(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ctrackd", *args, "-c", str(config)],
                          capture_output=True, text=True, timeout=60,
                          env={"TZ": "UTC", "PATH": "/usr/bin:/bin"})


@pytest.fixture
def config(store: Path, tmp_path: Path) -> Path:
    path = tmp_path / "ctrackd.yaml"
    path.write_text(f"ami: {{username: u, secret: s}}\nstore: {{path: {store}}}\n"
                    "defaults: {forward_to: PJSIP/office}\n", encoding="utf-8")
    return path


def test_report_by_operator_as_a_table(config: Path) -> None:
    result = ctrackd(config, "report", "--by", "operator")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["ENDPOINT", "OFFERED", "ANSWERED", "NOT", "ANS", "MISSED", "TO",
                                "ANSWER", "AVG", "TALK", "TARGET"]
    assert lines[1].split() == ["PJSIP/101", "5", "1", "4", "2", "0:02", "0:30", "100%"]
    assert lines[3].split() == ["PJSIP/103", "2", "2", "0", "0", "0:06", "1:00", "50%"]
    assert set(lines[4]) == {"-"}
    assert lines[5].split() == ["TOTAL", "5", "3", "2", "2", "0:05", "0:52", "67%"]
    assert all(len(line) <= 80 for line in lines)


def test_report_by_operator_as_json_and_csv(config: Path) -> None:
    rows = json.loads(ctrackd(config, "report", "--by", "operator", "--format", "json").stdout)
    assert [r["endpoint"] for r in rows] == ["PJSIP/101", "PJSIP/102", "PJSIP/103", None]
    assert rows[-1]["is_total"] is True and rows[0]["missed"] == 2
    text = ctrackd(config, "report", "--by", "operator", "--format", "csv").stdout
    table = list(csv.DictReader(io.StringIO(text)))
    assert list(table[0]) == ["endpoint", "offered", "answered", "rang_not_answered", "missed",
                              "avg_answer_seconds", "avg_talk_seconds", "target",
                              "target_share", "is_total"]
    assert table[2] == {"endpoint": "PJSIP/103", "offered": "2", "answered": "2",
                        "rang_not_answered": "0", "missed": "0", "avg_answer_seconds": "6.5",
                        "avg_talk_seconds": "60.0", "target": "1", "target_share": "0.5",
                        "is_total": "false"}


def test_report_by_operator_hour(config: Path) -> None:
    result = ctrackd(config, "report", "--by", "operator-hour", "--since", "2026-11-01")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["HOUR", "CALLS", "ANSWERED", "MISSED", "RANG", "UNRUNG",
                                "MISSED", "%"]
    assert lines[11].split() == ["10", "3", "1", "2", "1", "1", "67%"]
    assert lines[-1].split() == ["TOTAL", "6", "3", "3", "2", "1", "50%"]
    rows = list(csv.DictReader(io.StringIO(ctrackd(
        config, "report", "--by", "operator-hour", "--format", "csv").stdout)))
    assert rows[9]["missed"] == "1" and rows[-1]["is_total"] == "true"


def test_an_unknown_grouping_is_a_usage_error(config: Path) -> None:
    result = ctrackd(config, "report", "--by", "operators")
    assert result.returncode == 2
    assert "invalid choice: 'operators'" in result.stderr and "operator-hour" in result.stderr
