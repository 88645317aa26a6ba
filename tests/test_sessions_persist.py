"""Visitor sessions and their promo codes across a restart of the real daemon.

The daemon in-process with its web side and a promo line (the config of
tests/test_agi_promo.py: codes of 4 digits without a check digit, so that
capture agi/B's caller keying 4821 replays unchanged), a real SQLite file,
HTTP and FastAGI over real TCP. Codes are drawn by a chooser that always
says 4821: a code kept reserved over the restart must then make the draw
fall through to another one. Last, the store module on its own: rows and
back, a damaged row, the purge.
"""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
from pathlib import Path

import aiohttp
import pytest

from ctrackd import daemon as daemon_module
from ctrackd.attribution.dynamic import DynamicPlan
from ctrackd.attribution.sessions import VisitorSession
from ctrackd.config import load_config
from ctrackd.daemon import Daemon
from ctrackd.store import queries, schema
from ctrackd.store.sessions import UPSERT_SESSION, load_sessions, purge_sessions, session_rows
from tests.simulator.ami_server import FakeAmi
from tests.test_agi_promo import CONFIG, PAGE, asterisk, capture_environment, fields, record

POOLS = """\
pools:
  site:
    numbers: ["+74950000101", "+74950000102"]
"""
ORIGIN = {"Origin": "https://shop.example.com"}

@pytest.fixture
def config_path(tmp_path: Path, ami: FakeAmi) -> Path:
    path = tmp_path / "ctrackd.yaml"
    path.write_text(CONFIG.format(ami_port=ami.port), encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def no_timed_flush(monkeypatch: pytest.MonkeyPatch) -> None:
    """Sessions are written only by stop() and by the test's own `flush_sessions()`:
    what a crash loses is then exactly what the test left unflushed."""
    monkeypatch.setattr(daemon_module, "SESSION_FLUSH", 3600.0)


async def started(path: Path, run: str) -> Daemon:
    config = load_config(path)
    running = Daemon(config, stop_grace=1.0)
    counter = itertools.count(1)
    running.dynamic = DynamicPlan(config.pools, config.utm_rules, promo=config.promo,
                                  choose_code=lambda n: 4821,
                                  new_session_id=lambda: f"{run}-session-{next(counter)}")
    await running.start()
    return running


async def post(daemon: Daemon, path: str, body: dict | None = None) -> tuple[int, dict]:
    host, port = daemon.web_address
    async with aiohttp.ClientSession(headers=ORIGIN) as http:
        async with http.post(f"http://{host}:{port}{path}", json=body or {}) as response:
            return response.status, await response.json()


async def visit(daemon: Daemon, visitor: str, **extra: str) -> dict:
    status, answer = await post(daemon, "/v1/sessions",
                                {"visitor_id": visitor, "page": PAGE, **extra})
    assert status == 200
    return answer


async def health(daemon: Daemon) -> dict:
    host, port = daemon.web_address
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://{host}:{port}/healthz") as response:
            return await response.json()


def stored(path: Path) -> dict[str, str | None]:
    conn = sqlite3.connect(path)
    try:
        return dict(conn.execute("SELECT session_id, promo_code FROM web_sessions"))
    finally:
        conn.close()


async def test_a_restart_keeps_sessions_and_their_codes(config_path: Path,
                                                        captures: Path) -> None:
    before = await started(config_path, "first")
    try:
        session = await visit(before, "visitor-1")
        assert session["code"] == "4821"
    finally:
        await before.stop()
    assert stored(before.config.store.path) == {session["session_id"]: "4821"}

    after = await started(config_path, "second")
    try:
        assert await health(after) == {"status": "ok", "sessions": 1, "promo_codes": {
            "reserved": 1, "space": 10_000, "exhausted": 0}}
        status, _ = await post(after, f"/v1/sessions/{session['session_id']}/heartbeat")
        assert status == 200   # the page goes on as if nothing happened
        # The caller keys the code the page showed before the restart.
        await asterisk(after.agi_address[1], capture_environment(captures),
                       [b"200 result=4821\n"])
        row = record(after)
        assert fields(row) == ("promo", "yandex", "4821", "caller", "matched")
        assert (row["session_id"], row["campaign"]) == (session["session_id"], "winter")
        # The draw says 4821 again: reserved, so the newcomer gets another code.
        newcomer = await visit(after, "visitor-2")
        assert newcomer["code"] not in (None, "4821")
        # A page view of the first visitor continues its session.
        again = await visit(after, "visitor-1")
        assert (again["session_id"], again["code"]) == (session["session_id"], "4821")
    finally:
        await after.stop()


async def test_a_pool_page_renews_after_a_restart_keeping_session_code_and_number(
        tmp_path: Path, ami: FakeAmi) -> None:
    path = tmp_path / "ctrackd.yaml"
    path.write_text(CONFIG.format(ami_port=ami.port) + POOLS, encoding="utf-8")
    before = await started(path, "first")
    try:
        session = await visit(before, "visitor-1")
        assert (session["number"], session["code"]) == ("+74950000101", "4821")
    finally:
        await before.stop()

    after = await started(path, "second")
    try:
        assert (await health(after))["sessions"] == 1
        # No lease came back: the heartbeat is refused, as the snippet expects...
        status, _ = await post(after, f"/v1/sessions/{session['session_id']}/heartbeat")
        assert status == 404
        # ...and its renewal (naming its session) keeps session, code and number.
        renewed = await visit(after, "visitor-1", session_id=session["session_id"])
        assert (renewed["session_id"], renewed["code"], renewed["number"]) == (
            session["session_id"], "4821", "+74950000101")
        status, _ = await post(after, f"/v1/sessions/{session['session_id']}/heartbeat")
        assert status == 200
    finally:
        await after.stop()


async def test_a_crash_loses_only_what_was_not_flushed(config_path: Path,
                                                       captures: Path) -> None:
    before = await started(config_path, "first")
    try:
        kept = await visit(before, "visitor-1")
        assert await before.flush_sessions() == 1
        lost = await visit(before, "visitor-2")
        assert (kept["code"], lost["code"]) == ("4821", "4822")
        # The process dies before the next flush: its dirty marks go with it.
        assert before.dynamic is not None and before.dynamic.take_dirty()
    finally:
        await before.stop()
    assert stored(before.config.store.path) == {kept["session_id"]: "4821"}

    after = await started(config_path, "second")
    try:
        assert (await health(after))["sessions"] == 1
        # The lost session's page is told to ask again, and gets a session of its own,
        # never the code of the one that was kept.
        status, _ = await post(after, f"/v1/sessions/{lost['session_id']}/heartbeat")
        assert status == 404
        renewed = await visit(after, "visitor-2", session_id=lost["session_id"])
        assert renewed["session_id"] != lost["session_id"] and renewed["code"] != "4821"
        await asterisk(after.agi_address[1], capture_environment(captures),
                       [b"200 result=4821\n"])
        assert record(after)["session_id"] == kept["session_id"]
    finally:
        await after.stop()


async def test_changed_sessions_are_written_while_the_daemon_runs(
        config_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(daemon_module, "SESSION_FLUSH", 0.05)
    running = await started(config_path, "first")
    try:
        session = await visit(running, "visitor-1")
        for _ in range(200):  # the flush task's own time; no stop() needed
            if stored(running.config.store.path):
                break
            await asyncio.sleep(0.025)
        assert stored(running.config.store.path) == {session["session_id"]: "4821"}
        assert running.dynamic is not None and running.dynamic.dirty == 0
    finally:
        await running.stop()


# -- the store module -----------------------------------------------------------------

def store_file(tmp_path: Path) -> Path:
    path = tmp_path / "calls.sqlite3"
    conn = sqlite3.connect(path)
    schema.migrate(conn)
    conn.close()
    return path


def write(path: Path, rows: list[dict]) -> None:
    statement, params = queries.multi_row(UPSERT_SESSION, rows)
    conn = sqlite3.connect(path)
    with conn:
        conn.execute(statement, params)
    conn.close()


def test_a_session_comes_back_whole_and_rows_past_their_reservation_go(tmp_path: Path) -> None:
    path = store_file(tmp_path)
    full = VisitorSession(
        session_id="s1", visitor_id="v1", created_at=100.0, last_seen=150.0, visit_number=3,
        source="yandex", medium="cpc", campaign="winter", term="boots", content="ad-1",
        referrer="https://ya.ru/", landing_page="https://shop.example/?utm_source=yandex",
        gclid="g", yclid="y", fbclid="f", ga_client_id="1.2", ym_uid="17",
        pages=["https://shop.example/", "https://shop.example/cart"], channel="yandex",
        pool="site", number="+74950000101", shared=True, overflow=True, promo_code="4821")
    gone = VisitorSession(session_id="s2", visitor_id="v2", created_at=1.0, last_seen=2.0,
                          promo_code="1111")
    write(path, session_rows([(full, 5000.0), (gone, 900.0)]))
    ((back, until),) = load_sessions(path, now=1000.0)
    assert (back, until) == (full, 5000.0)
    assert stored(path) == {"s1": "4821"}   # the load dropped the lapsed row too
    write(path, session_rows([(gone, 900.0)]))
    assert purge_sessions(path, now=1000.0) == 1
    assert purge_sessions(path, now=1000.0) == 0 and stored(path) == {"s1": "4821"}


def test_a_damaged_row_still_keeps_its_code(tmp_path: Path) -> None:
    path = store_file(tmp_path)
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("INSERT INTO web_sessions VALUES ('s1', 'v1', '4821', 1.0, 2.0, 500.0,"
                     " '{\"pages\": 7, \"source\"')")
    conn.close()
    ((back, until),) = load_sessions(path, now=10.0)
    assert (back.session_id, back.visitor_id, back.promo_code, until) == (
        "s1", "v1", "4821", 500.0)
    assert back.pages == [] and back.source is None


# -- rows are trusted for nothing; restored times err on the visitor's side ---------

@pytest.mark.parametrize("data_json", [
    '{"pool": ["main"]}',                                   # unhashable pool
    '{"number": ["+74950000001"], "pool": "main"}',        # a list for a number
    '{"pool": "main", "number": "+74950000001", "visit_number": "7"}',
    '{"pages": [1, 2]}', '[1, 2]', '{"shared": "yes"}',
])
def test_a_row_with_fields_of_the_wrong_type_restores_without_them(data_json: str) -> None:
    from ctrackd.attribution.pools import PoolSpec
    from ctrackd.attribution.sessions import VisitInput
    from ctrackd.store.sessions import session_from_row
    now = 1_000_000.0
    session, until = session_from_row(("a", "v1", None, now - 100, now - 10, now + 5000,
                                       data_json))
    plan = DynamicPlan([PoolSpec("main", ("+74950000001", "+74950000002"))],
                       new_session_id=lambda: "b")
    assert plan.restore([(session, until)], now) == 1
    # and the visitor's next visit works (a str visit_number failed here with TypeError)
    fresh, _ = plan.start_session(VisitInput(visitor_id="v1", utm_source="google"), now + 1)
    assert isinstance(fresh.visit_number, int)


def test_a_restored_retired_session_still_matches_its_code_until_the_reservation_ends() -> None:
    """The row is rewritten only every resave_seconds of heartbeats: a restart must not
    expire the visit (and unmatch its code) by that much too early."""
    import itertools
    import random
    from ctrackd.attribution.sessions import VisitInput
    from ctrackd.configcalls import PromoConfig
    from ctrackd.store.sessions import session_from_row, session_rows

    def plan() -> DynamicPlan:
        ids = (f"s{i}" for i in itertools.count())
        return DynamicPlan([], new_session_id=lambda: next(ids),
                           promo=PromoConfig(length=4, code_ttl=1800.0),
                           choose_code=random.Random(1).randrange)
    before, t = plan(), 1_000_000.0
    session, _ = before.start_session(VisitInput("v1", page_url="https://x.example/"), t)
    rows = session_rows(before.take_dirty())             # flushed at t
    for k in range(1, 10):                               # heartbeats until t + 270, unwritten
        before.heartbeat(session.session_id, t + 30 * k)
    assert not before.dirty
    keyed_at = t + 270 + before.promo.ttl - 60           # the tab closed at t + 270
    assert before.session_by_code(session.promo_code, keyed_at)[0] is not None
    after = plan()
    after.restore([session_from_row(tuple(row.values())) for row in rows], t + 300)
    after.expire(keyed_at)
    found, status = after.session_by_code(session.promo_code, keyed_at)
    assert found is not None and found.session_id == session.session_id, status
