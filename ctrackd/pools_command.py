"""`ctrackd pools`: is each number pool the right size?

Per pool and period: size, the peak of numbers held at once, utilisation,
overflows, the share of pool calls attributed `exact`, and the size the
observed load calls for (Erlang B, docs/dynamic.md). The daemon saves usage
buckets every minute; this reads them with the call records.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from ctrackd import output
from ctrackd.output import Column

FIELDS = ("pool", "size", "peak_held", "peak_demand", "utilisation", "overflows", "calls",
          "exact_share", "recommended_size", "grace_size")


def pools_arguments(p: argparse.ArgumentParser, range_arguments: Any,
                    format_argument: Any) -> None:
    range_arguments(p)
    format_argument(p, "json: one array, a pool an object")


def pools_rows(config: Any, conn: Any, since: float | None, until: float | None
               ) -> list[dict[str, Any]]:
    from ctrackd.attribution.usage import summarise_usage
    from ctrackd.store.pools import call_confidence, usage_buckets

    until = until if until is not None else time.time()
    since = since if since is not None else until - 7 * 86400  # a week by default
    buckets = usage_buckets(conn, since, until)
    confidence = call_confidence(conn, since, until)
    rows = []
    for spec in config.pools:
        width, chosen = buckets.get(spec.name, (300.0, []))
        usage = summarise_usage(spec, chosen, since, until, width=width)
        calls = confidence.get(spec.name, {"calls": 0})
        rows.append({
            "pool": spec.name, "size": usage.size, "peak_held": usage.peak_held,
            "peak_demand": usage.peak_demand, "utilisation": round(usage.utilisation, 4),
            "overflows": usage.overflows, "calls": calls["calls"],
            "exact_share": (round(calls.get("exact", 0) / calls["calls"], 4)
                            if calls["calls"] else None),
            "recommended_size": usage.recommended_size, "grace_size": usage.grace_size,
        })
    return rows


def print_pools(rows: list[dict[str, Any]], fmt: str, width: int) -> None:
    if not output.write_rows(fmt, rows, FIELDS):
        sys.stdout.write(output.render_table(rows, [
            Column("pool", "POOL", min_width=6, max_width=16),
            Column("size", "SIZE", align=">"),
            Column("peak_held", "PEAK", align=">"),
            Column("utilisation", "UTIL", output.percent, ">"),
            Column("overflows", "OVERFLOW", align=">"),
            Column("calls", "CALLS", align=">"),
            Column("exact_share", "EXACT", output.percent, ">"),
            Column("recommended_size", "ADVISED", align=">"),
            Column("grace_size", "WITH GRACE", align=">"),
        ], width=width))
