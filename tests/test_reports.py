"""`ctrackd report --by ...` with spend and values, checked by hand over `ctrackd calls --format csv`.

A synthetic store (bench/synthetic.py: the real migrations, upserts and
verdicts) of 40 days, a config with budgets and values, a cost report
imported with `ctrackd spend import`: the report's cost per call, cost per
target call, revenue and ROI per campaign must be what a marketer gets from
the calls' CSV and the spend by hand.
"""

from __future__ import annotations

import calendar
import csv
import io
import json
import math
import time
from collections import Counter, defaultdict
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from bench import synthetic
from ctrackd import cli
from ctrackd.config import load_config
from ctrackd.store import queries, reports

END = math.floor(time.time() / 3600) * 3600
CONFIG = """\
ami: {{username: u, secret: s}}
store: {{path: {store}}}
defaults: {{forward_to: PJSIP/office}}
channels:
  google-ads: {{label: G, source: google, medium: cpc, campaign: brand}}
  yandex-direct: {{label: Y, source: yandex, medium: cpc, campaign: search}}
  billboard: {{label: B, source: billboard, medium: offline, campaign: ring-road}}
numbers:
  "+74950000001": {{channel: google-ads}}
  "+74950000002": {{channel: yandex-direct}}
  "+74950000003": {{channel: billboard, forward_to: Queue(sales)}}
exports:
  value: 1500
  currency: RUB
  values: {{google-ads: 2000}}
spend:
  budgets:
    - {{channel: billboard, campaign: ring-road, amount: 93000, per: month}}
    - {{channel: yandex-direct, amount: 700, per: day}}
    - {{channel: google-ads, campaign: brand, amount: 3000, per: week, until: {until}}}
"""


def run(capsys: pytest.CaptureFixture[str], *words: str) -> tuple[int, str, str]:
    try:
        code = cli.main(list(words))
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("reports")
    store = folder / "calls.sqlite3"
    today = datetime.fromtimestamp(END).date()
    config = folder / "ctrackd.yaml"
    config.write_text(CONFIG.format(store=store, until=today - timedelta(days=10)),
                      encoding="utf-8")
    synthetic.generate(store, calls=6000, days=40, config=load_config(config), seed=5,
                       end=END, tz=ZoneInfo("Europe/Moscow"))
    # A Google Ads cost report: title lines, thousands commas, a total line.
    days = [today - timedelta(days=n) for n in (3, 12, 35)]
    report = folder / "google.csv"
    report.write_text(
        "Campaign report\nAll time\nDay,Campaign,Cost,Currency code,Clicks\n"
        f'{days[0]},generic,"1,234.50",RUB,10\n{days[0]},pmax,99.5,RUB,1\n'
        f'{days[1]},generic,"2,000.00",RUB,9\n{days[2]},generic,500.00,RUB,2\n'
        'Total: Account,,"3,834.00",,22\n', encoding="utf-8")
    return {"config": config, "store": store, "today": today, "google": report,
            "imported": {(days[0].isoformat(), "generic"): 1234.5,
                         (days[0].isoformat(), "pmax"): 99.5,
                         (days[1].isoformat(), "generic"): 2000.0,
                         (days[2].isoformat(), "generic"): 500.0}}


def test_campaign_report_matches_a_hand_computation_over_the_calls_csv(
        world: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    config, today = str(world["config"]), world["today"]
    code, out, err = run(capsys, "spend", "-c", config, "import", str(world["google"]),
                         "--channel", "google-ads")
    assert code == 0, err
    first = today - timedelta(days=30)  # --since a local midnight: whole days of spend
    since = first.isoformat()
    before = time.time()
    code, out, _ = run(capsys, "report", "-c", config, "--by", "campaign", "--since", since,
                       "--format", "json")
    after = time.time()
    assert code == 0
    # a group is (channel, campaign): campaign names repeat across ad systems
    report = {(row["channel"], row["campaign"]): row for row in json.loads(out)
              if not row["is_total"]}
    assert list(json.loads(out)[0])[:3] == ["channel", "campaign", "calls"]
    total = json.loads(out)[-1]
    code, out, _ = run(capsys, "calls", "-c", config, "--since", since, "--limit", "0",
                       "--format", "csv")
    calls = list(csv.DictReader(io.StringIO(out)))
    assert len(calls) == total["calls"] > 1000

    # By hand: calls and target calls per campaign, revenue by each call's channel value.
    count, targets, revenue = Counter(), Counter(), defaultdict(float)
    for call in calls:
        group = (call["channel"] or None, call["campaign"] or None)
        count[group] += 1
        if call["target"] == "true":
            targets[group] += 1
            revenue[group] += 2000 if call["channel"] == "google-ads" else 1500

    def spend(now: float) -> tuple[dict[tuple[str, str], float], float]:
        """Budgets per day from `first` to now (today: the part of it gone by), imports;
        by campaign only rows naming one, for their channel's campaign."""
        cost: dict[tuple[str, str], float] = defaultdict(float)
        day, budget_total = first, 0.0
        while day <= today:
            start = datetime.combine(day, datetime.min.time()).timestamp()
            stop = datetime.combine(day + timedelta(days=1), datetime.min.time()).timestamp()
            share = min(1.0, (now - start) / (stop - start))
            ring = 93000 / calendar.monthrange(day.year, day.month)[1] * share
            cost[("billboard", "ring-road")] += ring
            brand = 3000 / 7 * share if day <= today - timedelta(days=10) else 0.0
            if day <= today - timedelta(days=10):
                cost[("google-ads", "brand")] += brand
            budget_total += ring + brand + 700 * share  # yandex-direct: no campaign
            day += timedelta(days=1)
        imported = 0.0
        for (day_text, campaign), amount in world["imported"].items():
            if day_text >= since:
                cost[("google-ads", campaign)] += amount
                imported += amount
        return cost, budget_total + imported

    (low, low_total), (high, high_total) = spend(before), spend(after)
    assert ("yandex-direct", "search") in count     # no spend names it: cost unknown
    for group, n in count.items():
        row = report[group]
        assert (row["calls"], row["target"]) == (n, targets[group])
        assert row["revenue"] == pytest.approx(revenue[group], abs=0.01)
        if group not in low:   # no spend row names the group: no cost, not a cost of 0
            assert (row["cost"], row["cost_per_call"], row["cost_per_target"], row["roi"]) \
                == (None, None, None, None), group
            continue
        assert low[group] - 0.01 <= row["cost"] <= high[group] + 0.01
        c = row["cost"]
        assert row["cost_per_call"] == pytest.approx(c / n, abs=0.01)
        if targets[group]:
            assert row["cost_per_target"] == pytest.approx(c / targets[group], abs=0.01)
        if c:
            assert row["roi"] == pytest.approx((revenue[group] - c) / c, abs=0.001)
    assert low_total - 0.01 <= total["cost"] <= high_total + 0.01
    assert total["roi"] == pytest.approx(
        (sum(revenue.values()) - total["cost"]) / total["cost"], abs=0.001)
    assert total["currency"] == "RUB"


def test_since_30_days_ago_is_30_days_of_spend(world: dict[str, Any],
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """`--since -30d` without --until: 30 days of spend against 30 days of calls (a first
    day counted by the part after --since, today by the part gone by), not 30 and a bit."""
    code, out, _ = run(capsys, "report", "-c", str(world["config"]), "--by", "channel",
                       "--since", "-30d", "--format", "json")
    rows = {row["channel"]: row for row in json.loads(out)}
    # yandex-direct: 700 a day, and no import names it
    assert code == 0 and rows["yandex-direct"]["cost"] == pytest.approx(30 * 700, abs=0.05)


def test_every_grouping_adds_up_to_the_same_total(world: dict[str, Any],
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    totals = {}
    since = (world["today"] - timedelta(days=20)).isoformat()
    for by in reports.BY:
        code, out, _ = run(capsys, "report", "-c", str(world["config"]), "--by", by,
                           "--since", since, "--format", "json")
        rows = json.loads(out)
        assert code == 0 and rows[-1]["is_total"]
        assert sum(r["calls"] for r in rows[:-1]) == rows[-1]["calls"]
        assert sum(r["target"] for r in rows[:-1]) == rows[-1]["target"]
        assert sum(r["revenue"] for r in rows[:-1]) == pytest.approx(rows[-1]["revenue"])
        totals[by] = {k: rows[-1][k] for k in ("calls", "answered", "target", "unique_callers",
                                                "cost", "revenue")}
    # cost within a cent or so: each report ends at its own "now" (today by its elapsed share)
    costs = {by: t.pop("cost") for by, t in totals.items()}
    assert all(t == totals["channel"] for t in totals.values()), totals
    assert all(c == pytest.approx(costs["channel"], abs=0.05) for c in costs.values()), costs
    assert len([r for r in json.loads(out)[:-1]]) == 7  # weekday: Mon..Sun


def test_hour_rows_have_no_cost_and_the_table_fits(world: dict[str, Any],
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "report", "-c", str(world["config"]), "--by", "hour")
    lines = out.splitlines()
    assert code == 0 and lines[0].split()[:4] == ["HOUR", "CALLS", "TARGET", "COST"]
    assert lines[1].split()[0] == "00:00" and lines[1].split()[3] == "-"
    assert len(lines) == 1 + 24 + 2 and max(len(line) for line in lines) <= 80
    assert "hours have no cost" in err


def test_spend_days_count_the_part_of_a_day_inside_the_range() -> None:
    tz = ZoneInfo("Europe/Moscow")
    noon = datetime(2026, 11, 10, 12, tzinfo=tz).timestamp()
    first, last, coverage = reports.spend_days(noon, noon + 2 * 86400, tz, first_call=None,
                                               first_spend=None, now=noon + 5 * 86400)
    assert (first, last) == (date(2026, 11, 10), date(2026, 11, 12))
    assert coverage == {"2026-11-10": 0.5, "2026-11-11": 1.0, "2026-11-12": 0.5}


def test_spend_of_a_group_without_calls_shows_and_mixed_currencies_are_refused(
        world: dict[str, Any], capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    import shutil
    store = tmp_path / "calls.sqlite3"
    shutil.copy(world["store"], store)
    config = tmp_path / "ctrackd.yaml"
    config.write_text(world["config"].read_text().replace(str(world["store"]), str(store)))
    day = world["today"] - timedelta(days=1)
    sheet = tmp_path / "spend.csv"
    sheet.write_text(f"day;amount;channel;campaign\n{day};1 500,25;google-ads;video\n")
    assert run(capsys, "spend", "-c", str(config), "import", str(sheet))[0] == 0
    code, out, _ = run(capsys, "report", "-c", str(config), "--by", "campaign", "--since",
                       day.isoformat(), "--format", "json")
    video = [r for r in json.loads(out) if r["campaign"] == "video"]
    assert video == [dict(video[0], calls=0, cost=1500.25, cost_per_call=None, roi=-1.0)]
    sheet.write_text(f"day,amount,channel,currency\n{day},10,google-ads,USD\n")
    assert run(capsys, "spend", "-c", str(config), "import", str(sheet))[0] == 1  # RUB config
    assert run(capsys, "spend", "-c", str(config), "import", str(sheet), "--currency",
               "USD")[0] == 0
    code, _, err = run(capsys, "report", "-c", str(config), "--since", day.isoformat())
    assert code == 1 and "spend and values in RUB and USD" in err


def test_report_reads_no_money_without_spend_or_values(tmp_path: Path) -> None:
    """Without spend or values the money fields are null and the old table stays."""
    conn = queries.connect(tmp_path / "calls.sqlite3", readonly=False)
    from ctrackd.store import schema
    schema.migrate(conn)
    money = reports.Money(spend=[], coverage={}, has_spend=False, value_for=lambda c: None,
                          has_values=False, currency=None)
    rows, unsplit = reports.with_money(reports.report(conn, by="campaign"), "campaign", money,
                                       {})
    assert unsplit == 0 and rows == [dict(rows[0], cost=None, cost_per_call=None,
                                          cost_per_target=None, revenue=None, roi=None,
                                          currency=None)]
