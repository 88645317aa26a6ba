"""The channel report's time over 1M and 10M calls, beside full scans of the same table.

    python -m bench.report_bench [--sizes 1000000,10000000] [--cache bench/.cache]

Goal (issue 5): the channel report over 10M calls in 1 s or less.

Building a 10M store with `bench/synthetic.py` would take ~20 min (1M in
~105 s), so a store of N calls is a synthetic base store of 100k calls over
90 days (~12 s, cached) copied N/100k times inside SQLite (`INSERT ...
SELECT`, indexes dropped then rebuilt once): copy k is moved k * 90 days into
the past (the store grows years of history, as a real one does, rather than
a denser day), gets its own call ids (`<id>.<k>`) and its own callers (the
number's first digits replaced by k: repeat callers stay within a copy), so
COUNT(DISTINCT caller) meets as many distinct numbers as such a store has.
Stores are cached in `--cache` (gitignored): 10M calls are ~8 GB on disk.

Printed per size, each the best of `--repeat` runs with a warm page cache:
the baselines `SELECT COUNT(*)` (SQLite counts the smallest index) and a
full scan reading a column of every row (`TOTAL(talk_seconds)`), then the
channel report (`queries.report`) and its parts, and the campaign report of
the last 30 days of the store with spend (`ctrackd report --by campaign`).
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import time
from collections.abc import Callable
from pathlib import Path
from zoneinfo import ZoneInfo

from bench import synthetic
from ctrackd.config import load_config
from ctrackd.store import queries, reports

CACHE = Path(__file__).resolve().parent / ".cache"
BASE_CALLS = 100_000
BASE_DAYS = 90
#: the base store's last day ends here: a fixed time keeps cached stores reusable
END = 1_795_000_000.0
SEED = 1


def base_store(cache: Path) -> Path:
    path = cache / f"synthetic-{BASE_CALLS}.sqlite3"
    if not path.exists():
        cache.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        _remove(partial)
        summary = synthetic.generate(partial, calls=BASE_CALLS, days=BASE_DAYS,
                                     config=load_config(synthetic.DEFAULT_CONFIG), seed=SEED,
                                     end=END, tz=ZoneInfo("Europe/Moscow"))
        partial.rename(path)
        print(f"  built the base store ({summary.calls} calls) in {summary.seconds:.1f} s",
              flush=True)
    return path


def big_store(cache: Path, calls: int) -> Path:
    """A store of `calls` calls (a multiple of BASE_CALLS), built from the base store once."""
    copies = max(1, calls // BASE_CALLS)
    path = cache / f"calls-{copies * BASE_CALLS}.sqlite3"
    if path.exists():
        return path
    base = base_store(cache)
    partial = path.with_suffix(".partial")
    _remove(partial)
    began = time.perf_counter()
    conn = sqlite3.connect(partial, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = OFF")
        conn.execute("PRAGMA synchronous = OFF")
        conn.execute("PRAGMA cache_size = -1000000")   # 1 GB for the index sorts
        conn.execute("ATTACH DATABASE ? AS base", (f"file:{base}?mode=ro",))
        # The same schema as the base (the real migrations), then its other tables' rows.
        for kind in ("table", "index"):
            for (sql,) in conn.execute("SELECT sql FROM base.sqlite_master WHERE type = ?"
                                       " AND sql IS NOT NULL AND name NOT LIKE 'sqlite_%'",
                                       (kind,)).fetchall():
                if kind == "table":
                    conn.execute(sql)
        version = conn.execute("PRAGMA base.user_version").fetchone()[0]
        columns = [row[1] for row in conn.execute("PRAGMA base.table_info(calls)")]
        shifted = {
            "call_id": "call_id || '.' || :k",
            "caller": "CASE WHEN caller IS NULL THEN NULL"
                      " ELSE '+7' || printf('%03d', :k) || substr(caller, 4) END",
            "started_at": "started_at - :shift", "answered_at": "answered_at - :shift",
            "ended_at": "ended_at - :shift", "created_at": "created_at - :shift",
            "updated_at": "updated_at - :shift",
            "previous_call_at": "previous_call_at - :shift",
        }
        select = ", ".join(shifted.get(c, c) for c in columns)
        insert = f"INSERT INTO calls ({', '.join(columns)}) SELECT {select} FROM base.calls"
        for k in range(copies):
            conn.execute("BEGIN")
            conn.execute(insert, {"k": k, "shift": k * BASE_DAYS * 86400.0})
            conn.execute("COMMIT")
            print(f"\r  copying: {k + 1}/{copies}", end="", file=sys.stderr, flush=True)
        print(file=sys.stderr)
        for (sql,) in conn.execute("SELECT sql FROM base.sqlite_master WHERE type = 'index'"
                                   " AND sql IS NOT NULL").fetchall():
            conn.execute(sql)
        conn.execute("DETACH DATABASE base")
        conn.execute(f"PRAGMA user_version = {int(version)}")
        conn.execute("ANALYZE")  # as an admin's store would have after `PRAGMA optimize`
        conn.execute("PRAGMA journal_mode = WAL")
    finally:
        conn.close()
    partial.rename(path)
    print(f"  built {path.name} ({copies * BASE_CALLS} calls) in"
          f" {time.perf_counter() - began:.0f} s", flush=True)
    return path


def best(run: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        began = time.perf_counter()
        run()
        times.append(time.perf_counter() - began)
    return min(times)


def measure(path: Path, repeat: int, rollup: bool = False) -> None:
    conn = queries.connect(path, readonly=True)
    try:
        calls = conn.execute("SELECT COUNT(*) FROM calls").fetchone()[0]
        last = conn.execute("SELECT MAX(started_at) FROM calls").fetchone()[0]
        one = lambda sql, *p: lambda: conn.execute(sql, p).fetchall()  # noqa: E731
        figures = [
            ("baseline: SELECT COUNT(*) FROM calls", one("SELECT COUNT(*) FROM calls")),
            ("baseline: full scan, TOTAL(talk_seconds)",
             one("SELECT TOTAL(talk_seconds) FROM calls")),
            ("channel report (queries.report)", lambda: queries.report(conn, by="channel")),
            ("  part: sums per channel", one(
                f"SELECT channel, {queries._SUMS} FROM calls INDEXED BY calls_channel"
                " GROUP BY channel")),
            ("  part: unique callers per channel", one(
                "SELECT channel, COUNT(DISTINCT caller) FROM calls GROUP BY channel")),
            ("  part: unique callers in all", one(
                "SELECT COUNT(*) FROM (SELECT DISTINCT caller FROM calls"
                " WHERE caller IS NOT NULL)")),
            ("channel report, last 30 days", lambda: queries.report(
                conn, by="channel", since=last - 30 * 86400)),
        ]
        figures.append(("campaign report, last 30 days (store.reports)",
                        lambda: reports.report(conn, by="campaign", since=last - 30 * 86400)))
        if rollup:
            figures += _rollup_figures(path, conn)
        print(f"{path.name}: {calls:,} calls, {path.stat().st_size / 2 ** 30:.1f} GiB")
        for name, run in figures:
            print(f"  {name:<48} {best(run, repeat):8.3f} s", flush=True)
    finally:
        conn.close()


#: a prototype of the rollup a migration would add (not in the schema): per UTC hour and
#: channel, the sums the channel report adds up, kept by the writer as calls end
ROLLUP = f"""CREATE TABLE IF NOT EXISTS bench_rollup AS
    SELECT CAST(started_at / 3600 AS INTEGER) AS hour, channel, {queries._SUMS},
           TOTAL(target = 1) AS target
    FROM calls GROUP BY 1, 2"""


def _rollup_figures(path: Path, conn: sqlite3.Connection) -> list[tuple[str, Callable[[], object]]]:
    """The channel report's sums off a rollup table (built once into the cached store)."""
    writer = sqlite3.connect(path, isolation_level=None)
    try:
        began = time.perf_counter()
        writer.execute(ROLLUP)
        built = time.perf_counter() - began
    finally:
        writer.close()
    rows = conn.execute("SELECT COUNT(*) FROM bench_rollup").fetchone()[0]
    sums = ("SELECT channel, SUM(\"COUNT(calls.rowid)\"), SUM(target) FROM bench_rollup"
            " GROUP BY channel")
    return [(f"prototype: sums off a rollup ({rows:,} rows; built in {built:.0f} s)",
             lambda: conn.execute(sums).fetchall()),
            ("prototype: + unique callers per channel and in all", lambda: (
                conn.execute(sums).fetchall(),
                conn.execute("SELECT channel, COUNT(DISTINCT caller) FROM calls"
                             " GROUP BY channel").fetchall(),
                conn.execute("SELECT COUNT(*) FROM (SELECT DISTINCT caller FROM calls"
                             " WHERE caller IS NOT NULL)").fetchall()))]


def _remove(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.report_bench",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="1000000,10000000",
                   help="store sizes in calls, multiples of 100000 (default 1M and 10M)")
    p.add_argument("--cache", type=Path, default=CACHE, help="where stores are kept")
    p.add_argument("--repeat", type=int, default=3, help="runs per figure (the best is shown)")
    p.add_argument("--rollup", action="store_true",
                   help="also time a prototype rollup table (written into the cached stores)")
    args = p.parse_args(argv)
    print("report time (goal: the channel report over 10M calls <= 1 s)")
    for size in (int(s) for s in args.sizes.split(",")):
        measure(big_store(args.cache, size), args.repeat, args.rollup)
    return 0


if __name__ == "__main__":
    sys.exit(main())
