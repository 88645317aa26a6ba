"""`ctrackd report --by ...`: call figures per group, then cost, revenue and ROI.

The figures per channel and per day are `queries.report` (tuned indexes,
unchanged); source, medium, campaign and keyword (the session's utm_term)
group on the column, hour of day and weekday on segments of local time:
the local hours of the range as [lo, hi) spans of epoch seconds, joined to
calls on the started_at index as the days are, so DST and half-hour zones
are right and COUNT(DISTINCT caller) stays one query.

Money (docs/reports.md): cost is the spend of the group, as day rows
(`store.spend`), each day counted by the share of it inside the range
(`--since -30d` takes 30 days of spend, not 31); a row counts for the group
its key names (a channel's budget for that channel; by campaign, only rows
that name a campaign, for that channel's campaign: a group is (channel,
campaign), names repeat across ad systems; by day and weekday, the day's
rows); rows without the
grouping's key count in the total only. By hour there is no per-hour spend
(ad systems report days; spreading a day evenly would invent cost per call
figures), so hour rows have no cost and the total has it all. Revenue is
the value of the group's target calls, each by its channel's value
(`ExportsConfig.value_for`, the one the exports use).
"""

from __future__ import annotations

import bisect
import json
import sqlite3
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta, tzinfo
from typing import Any

from ctrackd.store import queries
from ctrackd.store.queries import _SUMS, _day_start, _days, _figures, _range
from ctrackd.store.spend import SpendRow

#: every grouping this module answers, in the order the CLI lists them
BY = ("channel", "source", "medium", "campaign", "keyword", "day", "hour", "weekday")
_KEYWORD = "CASE WHEN session_json IS NOT NULL THEN json_extract(session_json, '$.utm_term') END"
#: by campaign a group is (channel, campaign): campaign names are the ad systems' own, so
#: "brand" of google-ads and "brand" of yandex-direct are two campaigns with two budgets
_COLUMNS = {"channel": "channel", "source": "source", "medium": "medium",
            "campaign": "json_array(channel, campaign)", "keyword": _KEYWORD}
#: the fields a group's key is shown as (by campaign: the channel beside the campaign)
KEY_FIELDS = {"campaign": ("channel", "campaign")}
#: the spend key that splits spend by a grouping (hour: none, see the module doc)
SPEND_KEY = {"channel": "channel", "source": "source", "medium": "medium",
             "campaign": "campaign", "keyword": "term"}
WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
#: seconds per step when cutting the range into local hours: every zone's offset is a multiple
_STEP = 900
MONEY_FIELDS = ("cost", "cost_per_call", "cost_per_target", "revenue", "roi", "currency")


class ReportError(Exception):
    """A sentence for the admin (mixed currencies, ...)."""


def report(conn: sqlite3.Connection, *, by: str, since: float | None = None,
           until: float | None = None, tz: tzinfo | None = None) -> list[dict[str, Any]]:
    """The figures of `queries.report` per group of `by`, then the total row."""
    if by in ("channel", "day"):
        return queries.report(conn, since=since, until=until, by=by, tz=tz)  # type: ignore
    where, params = _range(since, until)
    if by in _COLUMNS:
        expr = _COLUMNS[by]
        grouped = conn.execute(
            f"SELECT {expr} AS g, {_SUMS}, COUNT(DISTINCT caller) FROM calls{where}"
            " GROUP BY g ORDER BY COUNT(*) DESC, g", params).fetchall()
        targets = dict(conn.execute(
            f"SELECT {expr} AS g, COUNT(*) FROM calls{where}{_and(where)} target = 1"
            " GROUP BY g", params).fetchall())
        if by in KEY_FIELDS:
            grouped = [(_key(row[0]), *row[1:]) for row in grouped]
            targets = {_key(g): n for g, n in targets.items()}
    elif by in ("hour", "weekday"):
        segments = clock_segments(conn, since, until, tz, by)
        found = {row[0]: row for row in conn.execute(
            "WITH seg(lo, hi, g) AS (SELECT json_extract(value, '$[0]'),"
            " json_extract(value, '$[1]'), json_extract(value, '$[2]') FROM json_each(?))"
            f" SELECT g, {_SUMS}, COUNT(DISTINCT caller) FROM seg JOIN calls"
            " ON calls.started_at >= seg.lo AND calls.started_at < seg.hi GROUP BY g",
            (json.dumps(segments),))}
        keys = range(24) if by == "hour" else WEEKDAYS
        grouped = [found.get(k, (k, 0, 0, 0, 0, 0, 0, 0, 0)) for k in keys]
        targets = {g: sum(channels.values()) for g, channels in
                   _targets_in_segments(conn, where, params, segments).items()}
    else:
        raise ValueError(f"report by {by!r}: expected one of {', '.join(BY)}")
    unique_total = conn.execute(
        "SELECT COUNT(*) FROM (SELECT DISTINCT caller FROM calls WHERE "
        + " AND ".join([where.removeprefix(" WHERE ") or "1", "caller IS NOT NULL"]) + ")",
        params).fetchone()[0]
    rows = [_figures(by, row[0], row[1:8], targets.get(row[0], 0), row[8], is_total=False)
            for row in grouped]
    sums = [sum(row[i] for row in grouped) for i in range(1, 8)]
    return rows + [_figures(by, None, sums, sum(r["target"] for r in rows), unique_total,
                            is_total=True)]


def target_channels(conn: sqlite3.Connection, *, by: str, since: float | None = None,
                    until: float | None = None,
                    tz: tzinfo | None = None) -> dict[Any, dict[str | None, int]]:
    """Target calls per group and channel: what revenue is made of (values are per channel)."""
    where, params = _range(since, until)
    result: dict[Any, dict[str | None, int]] = defaultdict(dict)
    if by in _COLUMNS:
        index = " INDEXED BY calls_target" if by == "channel" else ""
        for group, channel, count in conn.execute(
                f"SELECT {_COLUMNS[by]} AS g, channel, COUNT(*) FROM calls{index}{where}"
                f"{_and(where)} target = 1 GROUP BY g, channel", params):
            result[_key(group) if by in KEY_FIELDS else group][channel] = count
        return result
    if by == "day":
        segments = [[lo, hi, day] for day, lo, hi in _days(conn, since, until, tz)]
    elif by in ("hour", "weekday"):
        segments = clock_segments(conn, since, until, tz, by)
    else:
        raise ValueError(f"report by {by!r}: expected one of {', '.join(BY)}")
    return _targets_in_segments(conn, where, params, segments)


def clock_segments(conn: sqlite3.Connection, since: float | None, until: float | None,
                   tz: tzinfo | None, by: str) -> list[list[Any]]:
    """[[lo, hi, hour (0-23) or weekday (Mon..Sun)]] covering the range's calls in `tz`."""
    where, params = _range(since, until)
    first, last = conn.execute(f"SELECT MIN(started_at), MAX(started_at) FROM calls{where}",
                               params).fetchone()
    if first is None:
        return []
    segments: list[list[Any]] = []
    t = float(int(first // _STEP) * _STEP)
    while t <= last:
        local = datetime.fromtimestamp(t, tz)
        if by == "hour":
            label: Any = local.hour
            span: Any = local.hour  # one segment per local hour (DST repeats one: the same)
        else:
            label, span = WEEKDAYS[local.weekday()], local.date()  # one per local day
        if segments and segments[-1][3] == span:
            segments[-1][1] = t + _STEP
        else:
            segments.append([t, t + _STEP, label, span])
        t += _STEP
    if segments:  # the range's own edges, not the 15-minute steps around them
        segments[0][0] = max(segments[0][0], since if since is not None else first)
        segments[-1][1] = min(segments[-1][1], until if until is not None else last + 1)
    return [s[:3] for s in segments]


def _targets_in_segments(conn: sqlite3.Connection, where: str, params: list[float],
                         segments: Sequence[Sequence[Any]]) -> dict[Any, dict[str | None, int]]:
    """Target calls per segment label and channel, off the partial index calls_target."""
    counts: dict[Any, dict[str | None, int]] = defaultdict(dict)
    if not segments:
        return counts
    starts = [s[0] for s in segments]
    for started_at, channel in conn.execute(
            f"SELECT started_at, channel FROM calls INDEXED BY calls_target{where}"
            f"{_and(where)} target = 1", params):
        i = bisect.bisect_right(starts, started_at) - 1
        if i >= 0 and started_at < segments[i][1]:
            label = segments[i][2]
            counts[label][channel] = counts[label].get(channel, 0) + 1
    return counts


def _key(value: str) -> tuple[Any, ...]:
    """A composite group key (json_array(...) in SQL) as a tuple."""
    return tuple(json.loads(value))


def key_fields(rows: list[dict[str, Any]], by: str) -> list[dict[str, Any]]:
    """The rows with a composite key spelt out as its fields, first (by campaign:
    `channel, campaign, calls, ...`); other groupings as they are."""
    names = KEY_FIELDS.get(by)
    if names is None:
        return rows
    out = []
    for row in rows:
        key = row.pop(by)
        out.append({**dict(zip(names, key if key is not None else (None,) * len(names))),
                    **row})
    return out


def _and(where: str) -> str:
    return " AND" if where else " WHERE"


# -- money -------------------------------------------------------------------------

@dataclass(frozen=True)
class Money:
    """What a report needs for its money columns."""

    spend: Sequence[SpendRow]                    # day rows over the report's days
    coverage: dict[str, float]                   # ISO day -> share of it inside the range
    has_spend: bool                              # any spend at all (else cost is unknown)
    value_for: Callable[[str | None], float | None]
    has_values: bool                             # any value set (else revenue is unknown)
    currency: str | None


def spend_days(since: float | None, until: float | None, tz: tzinfo | None, *,
               first_call: float | None, first_spend: str | None,
               now: float) -> tuple[date, date, dict[str, float]]:
    """(first day, last day, {day: share inside [since, until)}) of the spend a report counts.

    Without --since the report starts at the first call or the first stored
    spend day, whichever is earlier; without --until it ends now: today counts
    by its elapsed share, as the calls do (`--since -30d` is 30 days of spend
    against 30 days of calls, not 30.5).
    """
    until = until if until is not None else now
    last = datetime.fromtimestamp(until - 1e-6, tz).date()
    if since is not None:
        first = datetime.fromtimestamp(since, tz).date()
    else:
        starts = [date.fromisoformat(first_spend)] if first_spend else []
        if first_call is not None:
            starts.append(datetime.fromtimestamp(first_call, tz).date())
        first = min(starts, default=last)
    coverage: dict[str, float] = {}
    day = first
    while day <= last:
        lo, hi = _day_start(day, tz), _day_start(day + timedelta(days=1), tz)
        inside = min(hi, until) - max(lo, since if since is not None else lo)
        if inside > 0:
            coverage[day.isoformat()] = min(1.0, inside / (hi - lo))
        day += timedelta(days=1)
    return first, last, coverage


def spend_group(row: SpendRow, by: str) -> tuple[bool, Any]:
    """(counts for a group, which group) of a spend row in a report by `by`."""
    if by in KEY_FIELDS:  # campaign: (channel, campaign), as the calls are grouped
        key = tuple(getattr(row, k) for k in KEY_FIELDS[by])
        return getattr(row, SPEND_KEY[by]) is not None, key
    if by in SPEND_KEY:
        value = getattr(row, SPEND_KEY[by])
        return value is not None, value
    if by == "day":
        return True, row.day
    if by == "weekday":
        return True, WEEKDAYS[date.fromisoformat(row.day).weekday()]
    return False, None  # hour: no per-hour spend


def with_money(rows: list[dict[str, Any]], by: str, money: Money,
               targets: dict[Any, dict[str | None, int]]) -> tuple[list[dict[str, Any]], float]:
    """The rows with cost, cost per call and per target call, revenue and ROI; and the cost
    no group took (spend rows without the grouping's key), which the total alone counts.

    A group with spend but no calls gets a row of its own: money spent for no call is
    what marketing must see first.
    """
    # a group's cost is the sum of the spend rows naming it; a group no row names has no
    # known cost (null, not 0: "free calls" is not what an unknown cost means)
    cost: dict[Any, float] = defaultdict(float)
    total_cost = unsplit = 0.0
    for row in money.spend:
        share = money.coverage.get(row.day, 0.0)
        if share <= 0:
            continue
        amount = row.amount * share
        total_cost += amount
        grouped, group = spend_group(row, by)
        if grouped:
            cost[group] += amount
        else:
            unsplit += amount
    body, total = rows[:-1], rows[-1]
    have = {row[by] for row in body}
    extra = sorted((g for g, c in cost.items() if g not in have and c > 0),
                   key=lambda g: (g is None, str(g)))
    body = body + [_figures(by, g, [0] * 7, 0, 0, is_total=False) for g in extra]
    if by in ("day", "weekday"):
        order = {d: i for i, d in enumerate(WEEKDAYS)}
        body.sort(key=lambda r: order.get(r[by], 0) if by == "weekday" else r[by])
    revenue_total = 0.0
    for row in body:
        revenue = sum((money.value_for(channel) or 0.0) * n
                      for channel, n in targets.get(row[by], {}).items())
        revenue_total += revenue
        group_cost = cost.get(row[by]) if by != "hour" else None
        _money_fields(row, group_cost, revenue, money)
    _money_fields(total, total_cost, revenue_total, money)
    return body + [total], unsplit


def _money_fields(row: dict[str, Any], cost: float | None, revenue: float, money: Money) -> None:
    cost = cost if money.has_spend else None
    revenue_value = revenue if money.has_values else None
    row["cost"] = None if cost is None else round(cost, 2)
    row["cost_per_call"] = round(cost / row["calls"], 2) if cost is not None and row[
        "calls"] else None
    row["cost_per_target"] = round(cost / row["target"], 2) if cost is not None and row[
        "target"] else None
    row["revenue"] = None if revenue_value is None else round(revenue_value, 2)
    row["roi"] = (round((revenue_value - cost) / cost, 3)
                  if cost and revenue_value is not None else None)
    row["currency"] = money.currency
    row["is_total"] = row.pop("is_total")  # stays the last field


def currencies(rows: Iterable[SpendRow]) -> set[str]:
    return {row.currency for row in rows if row.currency}
