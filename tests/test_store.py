"""The call store on real SQLite files: migrations, the two halves of a row, group commit, reads.

The two sides of a call write in any order and never clobber each other; the
daemon's saves are durable once they return and cost one commit per batch;
the CLI's queries filter and aggregate what the contract says.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
import sys
import textwrap
from datetime import timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from ctrackd.attribution.plan import TargetRule
from ctrackd.attribution.records import (
    NOT_STORED,
    Attribution,
    CallProgress,
    CallStatus,
    Tracking,
)
from ctrackd.store import judge, queries, schema
from ctrackd.store.database import Store
from ctrackd.store.schema import SchemaTooNewError, StoreError

T0 = 1_795_000_000.0  # 2026-11-18T11:06:40Z


def attribution(call_id: str = "1700.1", **changes: Any) -> Attribution:
    values: dict[str, Any] = dict(
        call_id=call_id, started_at=T0, did="+74950000001", caller="+79161234567",
        caller_name="Ivan", tracking=Tracking.STATIC, channel="google-ads", source="google",
        medium="cpc", campaign="brand", label="Google Ads", forward_to="PJSIP/office",
        ring_timeout=30, recording_path="/var/spool/asterisk/monitor/ctrackd-1700_1.wav",
        note=None)
    values.update(changes)
    return Attribution(**values)


def progress(call_id: str = "1700.1", *, started_at: float = T0, status: CallStatus | None = None,
             answered_after: float | None = None, ended_after: float | None = None,
             caller: str | None = "89161234567", **changes: Any) -> CallProgress:
    p = CallProgress(call_id=call_id, started_at=started_at, status=CallStatus.RINGING,
                     did="74950000001", caller=caller, **changes)
    if answered_after is not None:
        p.status, p.answered_at, p.answered_by = (CallStatus.ANSWERED, started_at + answered_after,
                                                  "PJSIP/101")
    if ended_after is not None:
        p.finish(status or p.status, started_at + ended_after, "hangup")
    return p


def writer(path: Path) -> sqlite3.Connection:
    conn = queries.connect(path, readonly=False)
    schema.migrate(conn)
    return conn


def row(path: Path, call_id: str) -> dict[str, Any]:
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    found = conn.execute("SELECT * FROM calls WHERE call_id = ?", (call_id,)).fetchone()
    conn.close()
    return dict(found) if found else {}


# -- schema -----------------------------------------------------------------------

def test_migrate_from_empty_then_again(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "calls.sqlite3")
    assert schema.migrate(conn) == schema.LATEST_VERSION
    assert schema.migrate(conn) == schema.LATEST_VERSION  # idempotent
    columns = {r[1] for r in conn.execute("PRAGMA table_info(calls)")}
    # the session's fields are one JSON column
    attribution_columns = ({f.name for f in dataclasses.fields(Attribution)}
                           - {"session"} - NOT_STORED)
    judged = {"first_time", "previous_call_at", "target", "target_rule",
              "recording_deleted_at", "recording_deleted_reason"}
    expected = (attribution_columns | {"session_json"} | judged
                | {f.name for f in dataclasses.fields(CallProgress)} | {"created_at", "updated_at"})
    assert columns == expected
    indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    assert {"calls_started_at", "calls_status", "calls_channel", "calls_caller",
            "calls_open", "web_sessions_reserved_until"} <= indexes
    # visitor sessions kept over a restart (migration 5)
    assert {r[1] for r in conn.execute("PRAGMA table_info(web_sessions)")} == {
        "session_id", "visitor_id", "promo_code", "created_at", "last_seen", "reserved_until",
        "data_json"}


def test_newer_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "calls.sqlite3"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {schema.LATEST_VERSION + 1}")
    with pytest.raises(SchemaTooNewError, match="newer than this ctrackd"):
        schema.migrate(conn)
    conn.close()
    with pytest.raises(SchemaTooNewError, match="upgrade ctrackd"):
        queries.connect(path, readonly=True)


def test_a_failing_step_leaves_the_previous_version(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    broken = schema.MIGRATIONS + [(schema.LATEST_VERSION + 1,
                                   "CREATE TABLE extra (x); INSERT INTO nowhere VALUES (1);")]
    monkeypatch.setattr(schema, "MIGRATIONS", broken)
    monkeypatch.setattr(schema, "LATEST_VERSION", schema.LATEST_VERSION + 1)
    conn = sqlite3.connect(tmp_path / "calls.sqlite3")
    with pytest.raises(sqlite3.OperationalError, match="nowhere"):
        schema.migrate(conn)
    assert schema.schema_version(conn) == broken[-2][0]
    assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'extra'").fetchone() is None


def test_readers_get_a_sentence(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no call store at .*has the daemon run yet"):
        queries.connect(tmp_path / "missing.sqlite3", readonly=True)
    sqlite3.connect(tmp_path / "other.sqlite3").execute("CREATE TABLE t (x)").connection.commit()
    with pytest.raises(StoreError, match="not a ctrackd call store"):
        queries.connect(tmp_path / "other.sqlite3", readonly=True)
    with pytest.raises(ValueError, match="synchronous"):
        queries.pragmas("fast")


def test_every_field_is_written_by_its_statement() -> None:
    for f in dataclasses.fields(Attribution):
        if f.name not in NOT_STORED:
            assert f":{f.name}" in queries.UPSERT_ATTRIBUTION
    for f in dataclasses.fields(CallProgress):
        assert f":{f.name}" in queries.UPSERT_PROGRESS


# -- the two halves -----------------------------------------------------------------

def test_both_arrival_orders_end_in_the_same_row(tmp_path: Path) -> None:
    a = attribution()
    p = progress(started_at=T0 - 0.4, answered_after=7, ended_after=60)
    first, second = writer(tmp_path / "a.sqlite3"), writer(tmp_path / "b.sqlite3")
    queries.save_attribution(first, a)
    queries.save_progress(first, [p])
    queries.save_progress(second, [p])
    queries.save_attribution(second, a)
    one, two = row(tmp_path / "a.sqlite3", a.call_id), row(tmp_path / "b.sqlite3", a.call_id)
    for r in (one, two):
        r.pop("created_at"), r.pop("updated_at")
    assert one == two
    assert one["did"] == "+74950000001" and one["caller"] == "+79161234567"  # attribution's
    assert one["started_at"] == T0 - 0.4  # the AMI side's: its durations count from it
    assert (one["tracking"], one["status"], one["talk_seconds"]) == ("static", "answered", 53.0)


def test_progress_never_clobbers_attribution(tmp_path: Path) -> None:
    conn = writer(tmp_path / "calls.sqlite3")
    queries.save_attribution(conn, attribution(note="unknown_did"))
    before = row(tmp_path / "calls.sqlite3", "1700.1")
    queries.save_progress(conn, [progress(answered_after=5)])
    queries.save_progress(conn, [progress(answered_after=5, ended_after=30)])
    after = row(tmp_path / "calls.sqlite3", "1700.1")
    for field in dataclasses.fields(Attribution):
        column = "session_json" if field.name == "session" else field.name
        if column != "started_at" and column not in NOT_STORED:
            assert after[column] == before[column], column
    assert after["status"] == "answered" and after["ended_at"] == T0 + 30


def test_progress_alone_then_attribution_without_numbers(tmp_path: Path) -> None:
    conn = writer(tmp_path / "calls.sqlite3")
    queries.save_progress(conn, [progress()])
    assert row(tmp_path / "calls.sqlite3", "1700.1")["tracking"] == "untracked"
    queries.save_attribution(conn, attribution(did=None, caller=None, tracking=Tracking.FALLBACK))
    r = row(tmp_path / "calls.sqlite3", "1700.1")
    assert (r["did"], r["caller"], r["tracking"]) == ("74950000001", "89161234567", "fallback")


def test_only_if_open_keeps_a_closed_call(tmp_path: Path) -> None:
    conn = writer(tmp_path / "calls.sqlite3")
    closed = progress("closed", answered_after=3, ended_after=40)
    queries.save_progress(conn, [closed, progress("open")])
    late = [progress("closed", status=CallStatus.UNKNOWN, ended_after=99),
            progress("open", status=CallStatus.ABANDONED, ended_after=12)]
    queries.save_progress(conn, late, only_if_open=True)
    assert queries.get_progress(conn, "closed") == closed
    reopened = queries.get_progress(conn, "open")
    assert reopened is not None and reopened.status is CallStatus.ABANDONED
    assert queries.get_progress(conn, "nope") is None


# -- the daemon's Store ---------------------------------------------------------------

async def test_group_commit_of_100_concurrent_saves(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "calls.sqlite3"
    store = await Store.open(path)
    try:
        await asyncio.gather(*(store.save_attribution(attribution(f"c{i}")) for i in range(100)))
        # Durable once returned: another connection sees all 100 before close().
        assert sqlite3.connect(path).execute("SELECT COUNT(*) FROM calls").fetchone() == (100,)
        assert store.batches_committed == 1
    finally:
        await store.close()


async def test_a_bad_row_fails_only_its_own_save(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "calls.sqlite3")
    try:
        saves = [store.save_attribution(attribution(f"c{i}", started_at=None if i == 3 else T0))
                 for i in range(6)]
        results = await asyncio.gather(*saves, return_exceptions=True)
        assert [type(r).__name__ for r in results] == ["NoneType"] * 3 + ["IntegrityError"] + [
            "NoneType"] * 2
        conn = sqlite3.connect(tmp_path / "calls.sqlite3")
        assert conn.execute("SELECT COUNT(*) FROM calls").fetchone() == (5,)
    finally:
        await store.close()


async def test_a_failed_batch_fails_its_waiters_and_the_writer_goes_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = await Store.open(tmp_path / "calls.sqlite3")
    real_commit = store._commit
    calls = 0

    async def disk_full_once(batch: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise sqlite3.OperationalError("database or disk is full")
        await real_commit(batch)

    monkeypatch.setattr(store, "_commit", disk_full_once)
    try:
        results = await asyncio.gather(store.save_attribution(attribution("a")),
                                       store.save_progress([progress("b")]),
                                       return_exceptions=True)
        assert all(isinstance(r, sqlite3.OperationalError) for r in results)
        await store.save_attribution(attribution("c"))
        assert [p.call_id for p in await store.open_calls()] == ["c"]
    finally:
        await store.close()


async def test_close_flushes_what_is_queued(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "calls.sqlite3", synchronous="full")
    tasks = [asyncio.create_task(store.save_progress([progress(f"p{i}")])) for i in range(20)]
    await asyncio.sleep(0)  # queued, maybe not written
    await store.close()
    await asyncio.gather(*tasks)
    assert sqlite3.connect(tmp_path / "calls.sqlite3").execute(
        "SELECT COUNT(*) FROM calls").fetchone() == (20,)
    with pytest.raises(StoreError, match="closed"):
        await store.save_attribution(attribution())


async def test_open_calls_are_the_unfinished_ones(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "calls.sqlite3")
    try:
        ended = progress("ended", answered_after=2, ended_after=9)
        ringing = progress("ringing", started_at=T0 + 5)
        await store.save_progress([ended, ringing])
        await store.save_attribution(attribution("agi-only", started_at=T0 + 9))
        assert [p.call_id for p in await store.open_calls()] == ["ringing", "agi-only"]
        assert (await store.open_calls())[0] == ringing
    finally:
        await store.close()


READER = textwrap.dedent("""
    import sys, time
    from ctrackd.store import queries
    conn = queries.connect(sys.argv[1], readonly=True)
    counts = []
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        counts.append(conn.execute("SELECT COUNT(*) FROM calls").fetchone()[0])
        time.sleep(0.01)
    assert counts == sorted(counts), counts
    print(counts[0], counts[-1], len(counts))
""")


async def test_another_process_reads_while_the_store_writes(tmp_path: Path) -> None:
    path = tmp_path / "calls.sqlite3"
    store = await Store.open(path)
    try:
        await store.save_attribution(attribution("first"))
        reader = await asyncio.create_subprocess_exec(
            sys.executable, "-c", READER, str(path), stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        written = 0
        while reader.returncode is None and written < 5000:
            await asyncio.gather(*(store.save_attribution(attribution(f"w{written + i}"))
                                   for i in range(10)))
            written += 10
            await asyncio.sleep(0.005)
        out, err = await reader.communicate()
        assert reader.returncode == 0, err.decode()
        first, last, reads = map(int, out.split())
        assert reads > 20 and first < last  # it saw the writes land while reading
    finally:
        await store.close()


# -- reads for the CLI ------------------------------------------------------------------

@pytest.fixture
def filled(tmp_path: Path) -> sqlite3.Connection:
    """Six calls an hour apart: the fixture the hand computations below refer to."""
    conn = writer(tmp_path / "calls.sqlite3")
    plan = [  # call_id, channel, caller, status, answered after, ended after
        ("c1", "google-ads", "+79161234567", CallStatus.ANSWERED, 10, 70),
        ("c2", "google-ads", "+79161234567", CallStatus.NO_ANSWER, None, 30),
        ("c3", "google-ads", "+79990000001", CallStatus.ANSWERED, 20, 140),
        ("c4", "billboard", "+79990000002", CallStatus.BUSY, None, 4),
        ("c5", "billboard", None, CallStatus.ABANDONED, None, 12),
        ("c6", None, "+79990000003", None, None, None),  # still ringing
    ]
    for n, (call_id, channel, caller, status, answered, ended) in enumerate(plan):
        started = T0 + n * 3600
        queries.save_attribution(conn, attribution(call_id, started_at=started, channel=channel,
                                                   caller=caller))
        queries.save_progress(conn, [progress(call_id, started_at=started, status=status,
                                              answered_after=answered, ended_after=ended,
                                              caller=caller)])
    # the default rule (answered, 30 s of talk): c1 (60 s) and c3 (120 s) are target calls
    judge.judge_calls(conn, [p[0] for p in plan], rules=lambda channel: ("default", TargetRule()),
                      now=T0 + 86400)
    return queries.connect(tmp_path / "calls.sqlite3", readonly=True)


def ids(calls: list[dict[str, Any]]) -> list[str]:
    return [c["call_id"] for c in calls]


@pytest.mark.parametrize("filters, expected", [
    ({}, ["c6", "c5", "c4", "c3", "c2", "c1"]),
    ({"since": T0 + 3600, "until": T0 + 3 * 3600}, ["c3", "c2"]),
    ({"status": "answered"}, ["c3", "c1"]),
    ({"status": "missed"}, ["c5", "c4", "c2"]),
    ({"status": "open"}, ["c6"]),
    ({"channel": "billboard"}, ["c5", "c4"]),
    ({"caller": "+79161234567"}, ["c2", "c1"]),
    ({"limit": 2}, ["c6", "c5"]),
    ({"after_rowid": 4}, ["c6", "c5"]),
])
def test_list_calls_filters(filled: sqlite3.Connection, filters: dict[str, Any],
                            expected: list[str]) -> None:
    assert ids(queries.list_calls(filled, **filters)) == expected


def test_a_call_dict_has_the_contract_fields(filled: sqlite3.Connection) -> None:
    c1, c2 = queries.list_calls(filled, since=T0, until=T0 + 3601)[::-1]
    assert tuple(c1) == queries.CALL_FIELDS
    assert c1["started_at"] == "2026-11-18T11:06:40Z" and c1["ended_at"] == "2026-11-18T11:07:50Z"
    assert c1["recording"] == "/var/spool/asterisk/monitor/ctrackd-1700_1.wav"
    assert c2["recording"] is None  # not answered: nothing was recorded
    assert (c1["ring_seconds"], c1["talk_seconds"], c1["answered_by"]) == (10.0, 60.0, "PJSIP/101")
    assert (c1["first_time"], c1["target"], c1["target_rule"]) == (
        True, True, "default: answered, talk 60 s >= 30 s")
    assert (c2["first_time"], c2["target"], c2["target_rule"]) == (
        False, False, "default: not target: not answered (no_answer)")
    assert (c1["promo_code"], c1["recording_deleted_at"], c1["recording_deleted_reason"]) == (
        None, None, None)
    with pytest.raises(ValueError, match="unknown status"):
        queries.list_calls(filled, status="lost")


def test_a_deleted_recording_and_a_promo_code_in_a_call_dict(tmp_path: Path) -> None:
    from ctrackd.attribution.records import PromoEntry, PromoStatus
    conn = writer(tmp_path / "calls.sqlite3")
    queries.save_attribution(conn, attribution("p1", promo_code="4821",
                                               promo_entry=PromoEntry.CALLER,
                                               promo_status=PromoStatus.MATCHED))
    queries.save_progress(conn, [progress("p1", answered_after=5, ended_after=65)])
    conn.execute("UPDATE calls SET recording_deleted_at = ?, recording_deleted_reason ="
                 " 'older than 90 days'", (T0 + 91 * 86400,))
    call = queries.list_calls(conn)[0]
    assert call["recording"] is None  # the file is gone: nothing to open
    assert (call["recording_deleted_at"], call["recording_deleted_reason"]) == (
        "2027-02-17T11:06:40Z", "older than 90 days")
    assert (call["promo_code"], call["promo_entry"], call["promo_status"]) == (
        "4821", "caller", "matched")
    assert (call["first_time"], call["target"], call["target_rule"]) == (None, None, None)


def test_changed_since_finds_recent_updates(filled: sqlite3.Connection) -> None:
    _, last_change = queries.change_marks(filled)
    assert queries.list_calls(filled, changed_since=last_change) == []
    assert ids(queries.list_calls(filled, changed_since=last_change - 3600))[:1] == ["c6"]


def test_report_by_channel_against_a_hand_computation(filled: sqlite3.Connection) -> None:
    rows = queries.report(filled, by="channel")
    google, billboard, none, total = rows
    # google: c1 answered (ring 10, talk 60), c2 no answer (ring 30), c3 answered (20, 120)
    assert google == {"channel": "google-ads", "calls": 3, "answered": 2, "missed": 1,
                      "target": 2, "unique_callers": 2, "answer_rate": 0.667,
                      "avg_ring_seconds": 20.0, "avg_talk_seconds": 90.0, "is_total": False}
    # billboard: c4 busy (ring 4), c5 abandoned (ring 12), c5's caller withheld
    assert (billboard["calls"], billboard["missed"], billboard["unique_callers"],
            billboard["answer_rate"], billboard["avg_ring_seconds"],
            billboard["avg_talk_seconds"]) == (2, 2, 1, 0.0, 8.0, None)
    assert (none["channel"], none["calls"], none["avg_ring_seconds"]) == (None, 1, None)
    # total: ring (10 + 30 + 20 + 4 + 12) / 5 ended calls; 4 distinct numbers
    assert total == {"channel": None, "calls": 6, "answered": 2, "missed": 3,
                     "target": 2, "unique_callers": 4, "answer_rate": 0.333,
                     "avg_ring_seconds": 15.2, "avg_talk_seconds": 90.0, "is_total": True}


def test_report_by_day(filled: sqlite3.Connection) -> None:
    # T0 is 11:06 UTC: c1..c6 start hourly to 16:06, all on the 18th in UTC.
    rows = queries.report(filled, by="day", tz=timezone.utc)
    assert [(r["day"], r["calls"], r["is_total"]) for r in rows] == [
        ("2026-11-18", 6, False), (None, 6, True)]
    # In UTC+11 c1 and c2 start at 22:06 and 23:06 on the 18th, the rest on the 19th.
    rows = queries.report(filled, by="day", tz=timezone(timedelta(hours=11)), since=T0 + 3600)
    assert [(r["day"], r["calls"], r["answered"], r["target"]) for r in rows] == [
        ("2026-11-18", 1, 0, 0), ("2026-11-19", 4, 1, 1), (None, 5, 1, 1)]


def test_report_by_day_keeps_days_without_calls(tmp_path: Path) -> None:
    conn = writer(tmp_path / "calls.sqlite3")
    for n, day in enumerate((0, 3)):
        queries.save_attribution(conn, attribution(f"d{n}", started_at=T0 + day * 86400))
    reader = queries.connect(tmp_path / "calls.sqlite3", readonly=True)
    rows = queries.report(reader, by="day", tz=timezone.utc)
    assert [(r["day"], r["calls"]) for r in rows] == [
        ("2026-11-18", 1), ("2026-11-19", 0), ("2026-11-20", 0), ("2026-11-21", 1), (None, 2)]


def test_report_on_an_empty_store(tmp_path: Path) -> None:
    writer(tmp_path / "calls.sqlite3").close()
    conn = queries.connect(tmp_path / "calls.sqlite3", readonly=True)
    for by in ("channel", "day"):
        assert queries.report(conn, by=by) == [{
            by: None, "calls": 0, "answered": 0, "missed": 0, "target": 0, "unique_callers": 0,
            "answer_rate": None, "avg_ring_seconds": None, "avg_talk_seconds": None,
            "is_total": True}]


async def test_commits_never_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No fsync of a checkpoint inside a commit: the data waits in the WAL."""
    from ctrackd.store import database

    monkeypatch.setattr(database, "CHECKPOINT_SECONDS", 3600.0)
    path = tmp_path / "calls.sqlite3"
    store = await Store.open(path)
    try:
        empty_size = path.stat().st_size
        for i in range(1500):  # past SQLite's automatic checkpoint (1000 pages)
            await store.save_attribution(attribution(f"wal-{i}", note="x" * 2000))
        assert path.stat().st_size == empty_size
    finally:
        await store.close()
    assert path.stat().st_size > empty_size  # close() checkpoints what is left


async def test_the_background_task_checkpoints(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from ctrackd.store import database

    monkeypatch.setattr(database, "CHECKPOINT_SECONDS", 0.05)
    path = tmp_path / "calls.sqlite3"
    store = await Store.open(path)
    try:
        empty_size = path.stat().st_size
        for i in range(50):
            await store.save_attribution(attribution(f"wal-{i}"))
        for _ in range(200):
            if path.stat().st_size > empty_size:
                break
            await asyncio.sleep(0.05)
        assert path.stat().st_size > empty_size
        assert store.checkpoint_errors == 0
    finally:
        await store.close()


def test_upgrade_from_version_1_keeps_the_calls(tmp_path: Path) -> None:
    """A store written by the first release gains the dynamic-tracking columns, calls intact."""
    path = tmp_path / "calls.sqlite3"
    conn = sqlite3.connect(path)
    conn.executescript(schema.MIGRATIONS[0][1])
    conn.execute("PRAGMA user_version = 1")
    conn.execute("INSERT INTO calls (call_id, started_at, tracking, channel, status, created_at,"
                 " updated_at) VALUES ('old.1', 1.0, 'static', 'google', 'answered', 1.0, 1.0)")
    conn.commit()
    assert schema.migrate(conn) == schema.LATEST_VERSION
    old = conn.execute("SELECT channel, status, pool, confidence, session_json FROM calls"
                       " WHERE call_id = 'old.1'").fetchone()
    assert old == ("google", "answered", None, None, None)
    conn.close()
    (call,) = queries.list_calls(queries.connect(path, readonly=True))
    assert (call["channel"], call["session"], call["confidence"]) == ("google", None, None)
