"""Reads for `ctrackd pools`: usage buckets the daemon saved, and how pool calls were attributed.

Apart from queries.py (the call log's SQL) because it is its own report; the
same read-only connection serves both.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from ctrackd.attribution.usage import UsageBucket


def usage_buckets(conn: sqlite3.Connection, since: float, until: float
                  ) -> dict[str, tuple[float, list[UsageBucket]]]:
    """pool -> (bucket width, its buckets starting in [since, until))."""
    result: dict[str, tuple[float, list[UsageBucket]]] = {}
    # Runs of the daemon within one bucket add up; their peaks do not.
    for row in conn.execute(
            "SELECT pool, start, max(width), sum(held_seconds), sum(demand_seconds),"
            " max(peak_held), max(peak_demand), sum(leases), sum(overflows) FROM pool_usage"
            " WHERE start >= ? AND start < ? GROUP BY pool, start ORDER BY pool, start",
            (since, until)):
        width, bucket = row[2], UsageBucket(start=row[1], held_seconds=row[3],
                                            demand_seconds=row[4], peak_held=row[5],
                                            peak_demand=row[6], leases=row[7],
                                            overflows=row[8])
        result.setdefault(row[0], (width, []))[1].append(bucket)
    return result


def call_confidence(conn: sqlite3.Connection, since: float, until: float
                    ) -> dict[str, dict[str, Any]]:
    """pool -> calls, and how many of them per confidence (exact, shared, expired, none)."""
    result: dict[str, dict[str, Any]] = {}
    for pool, confidence, count in conn.execute(
            "SELECT pool, confidence, count(*) FROM calls WHERE pool IS NOT NULL"
            " AND started_at >= ? AND started_at < ? GROUP BY pool, confidence",
            (since, until)):
        entry = result.setdefault(pool, {"calls": 0})
        entry["calls"] += count
        entry[confidence or "none"] = count
    return result
