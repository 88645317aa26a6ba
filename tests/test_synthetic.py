"""bench/synthetic.py: a small store opens with the CLI and its figures are plausible."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from bench import synthetic
from ctrackd import cli
from ctrackd.config import load_config
from ctrackd.store import queries

END = 1_795_000_000.0


def make(path: Path, *, seed: int = 3, judge_in_store: bool = False) -> synthetic.Summary:
    return synthetic.generate(path, calls=4000, days=10, config=load_config(
        synthetic.DEFAULT_CONFIG), seed=seed, end=END, tz=ZoneInfo("Europe/Moscow"),
        judge_in_store=judge_in_store)


def rows(path: Path, sql: str) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def test_store_opens_with_the_cli_and_figures_are_plausible(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "calls.sqlite3"
    summary = make(path)
    config = tmp_path / "ctrackd.yaml"
    config.write_text(synthetic.DEFAULT_CONFIG.read_text().replace(
        "../var/ctrackd.sqlite3", str(path)))
    assert cli.main(["report", "-c", str(config), "--format", "csv"]) == 0
    total = capsys.readouterr().out.strip().splitlines()[-1].split(",")
    assert int(total[1]) == summary.calls == 4000
    assert 0.65 < summary.answered / summary.calls < 0.8
    assert 0.7 < summary.targets / summary.answered < 0.95
    (dynamic, repeat, gclid, first, last), = rows(path, (
        "SELECT TOTAL(tracking != 'static'), TOTAL(first_time = 0),"
        " TOTAL(session_json LIKE '%\"gclid\": \"Cj%'), MIN(started_at), MAX(started_at)"
        " FROM calls"))
    assert 0.3 < dynamic / 4000 < 0.45 and 0.2 < repeat / 4000 < 0.4 and gclid > 0
    assert END - 10 * 86400 <= first and last < END
    # ring + talk == duration, as CallProgress.finish leaves it
    assert rows(path, "SELECT COUNT(*) FROM calls WHERE abs(ring_seconds + talk_seconds"
                " - duration_seconds) > 0.002") == [(0,)]


def test_same_seed_same_calls_and_verdicts_match_the_daemons_judge(tmp_path: Path) -> None:
    make(tmp_path / "a.sqlite3")
    make(tmp_path / "b.sqlite3", judge_in_store=True)
    columns = ", ".join(c for c in queries.CALL_FIELDS if c not in ("recording", "session"))
    select = f"SELECT {columns}, previous_call_at FROM calls ORDER BY call_id"
    assert rows(tmp_path / "a.sqlite3", select) == rows(tmp_path / "b.sqlite3", select)
    # the schema is the migrated one (the bulk load rebuilt the dropped indexes)
    indexes = "SELECT name, sql FROM sqlite_master WHERE type = 'index' ORDER BY name"
    assert rows(tmp_path / "a.sqlite3", indexes) == rows(tmp_path / "b.sqlite3", indexes)


def test_rows_carry_every_key_the_real_params_make() -> None:
    from ctrackd.attribution.records import Attribution, CallProgress, Tracking
    world = synthetic._World(load_config(synthetic.DEFAULT_CONFIG), __import__("random").Random(1))
    a, p, _ = world.call(0, time.time())
    real_a = queries.attribution_params(Attribution(
        call_id="x", started_at=0.0, did=None, caller=None, caller_name=None,
        tracking=Tracking.STATIC, channel=None, source=None, medium=None, campaign=None,
        label=None, forward_to="PJSIP/x", ring_timeout=30, recording_path=None))
    assert set(real_a) - {"whisper", "sip_headers", "session"} <= set(a)
    assert set(queries.progress_params(CallProgress(call_id="x", started_at=0.0))) == set(p)
