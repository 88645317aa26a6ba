"""Spend: budgets in the config, cost reports imported from files, the progress bars."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from datetime import date
from pathlib import Path

import pytest

from ctrackd import cli, progress
from ctrackd.config import ConfigError, load_config
from ctrackd.configcalls import Budget
from ctrackd.spend_file import SpendFileError, parse_amount, read_spend
from ctrackd.store import queries, schema, spend

CHANNELS = {"google-ads", "yandex-direct"}
BASE = """\
ami: {username: u, secret: s}
store: {path: calls.sqlite3}
defaults: {forward_to: PJSIP/office}
channels:
  google-ads: {label: G}
  yandex-direct: {label: Y}
"""


def config_with(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "ctrackd.yaml"
    path.write_text(BASE + text, encoding="utf-8")
    return path


# -- budgets ----------------------------------------------------------------------

def test_budgets_spread_evenly_over_the_days_of_their_period(tmp_path: Path) -> None:
    config = load_config(config_with(tmp_path, """\
spend:
  currency: RUB
  budgets:
    - {channel: yandex-direct, amount: 30000, per: month, from: 2026-11-01}
    - {channel: google-ads, campaign: brand, amount: 700, per: week}
    - {channel: google-ads, amount: 1000, from: 2026-11-03, until: 2026-11-06}
"""))
    month, week, once = config.spend.budgets
    assert config.spend.currency == "RUB" and month.keys == (("channel", "yandex-direct"),)
    assert sum(month.on(date(2026, 11, d)) for d in range(1, 31)) == pytest.approx(30000)
    assert month.on(date(2026, 10, 31)) == 0 and month.on(date(2027, 2, 1)) == 30000 / 28
    assert week.on(date(2020, 1, 1)) == 100
    assert [once.on(date(2026, 11, d)) for d in (2, 3, 6, 7)] == [0, 250, 250, 0]
    rows = spend.budget_rows(config.spend, date(2026, 11, 1), date(2026, 11, 3), "RUB")
    assert len(rows) == 7 and {r.origin for r in rows} == {"config"}


def test_a_finer_import_replaces_the_budget_it_falls_under(tmp_path: Path) -> None:
    """A Direct report by campaign and keyword, imported with --channel yandex-direct,
    replaces that channel's budget on its days (docs/reports.md), not adds to it; a budget
    the import does not fall under (another channel, another campaign) stays."""
    config = load_config(config_with(tmp_path, """\
spend:
  budgets:
    - {channel: yandex-direct, amount: 6000, per: day}
    - {channel: yandex-direct, campaign: brand, amount: 50, per: day}
    - {channel: google-ads, amount: 100, per: day}
"""))
    conn = queries.connect(tmp_path / "calls.sqlite3", readonly=False)
    schema.migrate(conn)
    spend.save(conn, [
        spend.SpendRow(day="2026-11-02", amount=6000, channel="yandex-direct",
                       campaign="search", term="okna", origin="direct.tsv"),
        spend.SpendRow(day="2026-11-02", amount=1, channel="yandex-direct",
                       campaign="search", term="dveri", origin="direct.tsv")], now=0.0)
    rows = spend.spend_rows(conn, config.spend, date(2026, 11, 1), date(2026, 11, 2), None)
    conn.close()
    on = {day: sorted((r.channel, r.campaign or "", r.amount) for r in rows if r.day == day)
          for day in ("2026-11-01", "2026-11-02")}
    assert on["2026-11-01"] == [("google-ads", "", 100), ("yandex-direct", "", 6000),
                                ("yandex-direct", "brand", 50)]
    assert on["2026-11-02"] == [("google-ads", "", 100), ("yandex-direct", "brand", 50),
                                ("yandex-direct", "search", 1), ("yandex-direct", "search",
                                                                 6000)]
    assert sum(r.amount for r in rows if r.day == "2026-11-02"
               and r.channel == "yandex-direct") == 6051


@pytest.mark.parametrize("budget, message", [
    ("{channel: tv, amount: 1, per: day}", "spend.budgets[0].channel: expected a channel key"
     " (google-ads, yandex-direct), found 'tv'"),
    ("{channel: google-ads, amount: 1}", "spend.budgets[0]: expected per (day, week or month),"
     " or both from and until"),
    ("{channel: google-ads, amount: -5, per: day}", "spend.budgets[0].amount: expected a number"
     " of currency units from 0"),
    ("{channel: google-ads, amount: 1, per: year}", "spend.budgets[0].per: expected one of day,"
     " month, week, found 'year'"),
    ("{amount: 1, per: day, from: 2026-13-01}", "spend.budgets[0].from: expected an ISO date"),
    ("{amount: 1, from: 2026-11-05, until: 2026-11-01}", "spend.budgets[0].until: expected a"
     " day on or after from (2026-11-05)"),
    ("{amount: 1, per: day, cost: 5}", "spend.budgets[0].cost: expected one of the keys"),
])
def test_a_bad_budget_names_its_line(tmp_path: Path, budget: str, message: str) -> None:
    path = config_with(tmp_path, f"spend:\n  budgets:\n    - {budget}\n")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert str(error.value).startswith(f"{path}:") and message in str(error.value)


# -- files ------------------------------------------------------------------------

DIRECT = ("\"Actual Data (2026-11-01 - 2026-11-02)\"\n"
          "Date\tCampaignName\tCriterion\tClicks\tCost\n"
          "2026-11-01\tsearch\tкупить окна\t3\t1 234,50\n"
          "2026-11-01\tsearch\tкупить окна\t1\t100,25\n"     # a second ad group: summed
          "2026-11-02\tbrand\t--\t2\t99\n"
          "Total rows: 3\n")


def test_a_yandex_direct_report_is_read_and_summed_per_day_and_keys() -> None:
    parsed = read_spend(DIRECT.encode(), origin="direct.tsv", channels=CHANNELS,
                        channel="yandex-direct", currency="RUB")
    assert parsed.errors == [] and parsed.read == 3 and parsed.skipped == 2
    assert parsed.ignored == ["Clicks"]
    assert [(r.day, r.channel, r.campaign, r.term, r.amount, r.currency) for r in parsed.rows] == [
        ("2026-11-01", "yandex-direct", "search", "купить окна", 1334.75, "RUB"),
        ("2026-11-02", "yandex-direct", "brand", None, 99.0, "RUB")]


@pytest.mark.parametrize("data, amounts", [
    # Google Ads "Excel CSV": UTF-16, tabs, title lines, thousands commas
    (("Campaign report\nNovember 1, 2026 - November 2, 2026\nDay\tCampaign\tCost\n"
     "2026-11-01\tbrand\t1,234.56\n2026-11-02\tbrand\t7.5\nTotal: Account\t\t1,242.06\n"
     ).encode("utf-16"), [1234.56, 7.5]),
    # Russian Excel: cp1251, semicolons, decimal comma, dd.mm.yyyy
    (("Дата;Кампания;Расход (руб.)\n01.11.2026;бренд;1 234,5\n02.11.2026;бренд;1.234,75\n"
     ).encode("cp1251"), [1234.5, 1234.75]),
    # Google Ads API: cost in micros
    (b"segments.date,campaign.name,metrics.cost_micros\n2026-11-01,brand,1500000\n"
     b"2026-11-02,brand,250000\n", [1.5, 0.25]),
    # plain, with a BOM; a lone 1,234 is read by the file's other amounts
    (("\ufeffday,amount,campaign\n2026-11-01,\"1,234\",a\n2026-11-02,\"1,000.50\",a\n"
     ).encode(), [1234.0, 1000.5]),
])
def test_the_ad_systems_exports_are_read(data: bytes, amounts: list[float]) -> None:
    parsed = read_spend(data, origin="f", channels=CHANNELS, channel="google-ads")
    assert parsed.errors == []
    assert [r.amount for r in parsed.rows] == pytest.approx(amounts)
    assert [r.day for r in parsed.rows] == ["2026-11-01", "2026-11-02"]


@pytest.mark.parametrize("raw, mark, value", [
    ("1 234,56", ",", 1234.56), ("1\u00a0234,56", ",", 1234.56), ("1,234.56", ".", 1234.56),
    ("1.234,56", ",", 1234.56), ("1'234.5", ".", 1234.5), ("12", ",", 12.0),
    ("12,3,4.5x", ".", None), ("", ",", None),
])
def test_amounts(raw: str, mark: str, value: float | None) -> None:
    assert parse_amount(raw, mark) == value


def test_every_bad_row_is_reported_with_its_line() -> None:
    data = ("day,amount,channel,currency\n2026-11-01,10,google-ads,RUB\n"
            "2026-11-31,5,google-ads,RUB\n2026-11-02,abc,google-ads,RUB\n"
            "2026-11-03,-4,tv,rub1\n").encode()
    parsed = read_spend(data, origin="f", channels=CHANNELS)
    assert parsed.errors == [
        "line 3: day: cannot read '2026-11-31' as a day (expected 2026-11-01, 01.11.2026 or"
        " 2026/11/01)",
        "line 4: amount: cannot read 'abc' as an amount",
        "line 5: amount: '-4' is negative",
        "line 5: channel: 'tv' is not a channel of the config (google-ads, yandex-direct)",
        "line 5: currency: 'rub1' is no ISO 4217 code such as RUB"]


def test_an_unquoted_decimal_comma_is_an_error_not_a_smaller_amount() -> None:
    """`1234,56` in a comma file splits into 1234 and an extra field: refused."""
    parsed = read_spend(b"day,amount\n2026-11-01,1234,56\n2026-11-02,\"10,50\"\n", origin="f",
                        channels=CHANNELS, channel="google-ads")
    assert parsed.errors == ["line 2: 3 fields where the header has 2: a decimal comma in a"
                             " comma-separated file must be quoted (\"1234,56\")"]
    assert [r.amount for r in parsed.rows] == [10.5]


def test_a_bad_row_after_a_quoted_multi_line_cell_names_its_physical_line() -> None:
    data = b'day,amount,campaign\n2026-11-20,10,"multi\nline"\n2026-11-21,bad,z\n'
    parsed = read_spend(data, origin="f", channels=CHANNELS)
    assert parsed.errors == ["line 4: amount: cannot read 'bad' as an amount"]
    assert [r.campaign for r in parsed.rows] == ["multi\nline"]


def test_a_file_without_a_header_or_with_two_campaign_columns_is_refused() -> None:
    with pytest.raises(SpendFileError, match="no header found"):
        read_spend(b"a,b\n1,2\n", origin="f", channels=CHANNELS)
    with pytest.raises(SpendFileError, match="say which with --map campaign=COLUMN"):
        read_spend(b"Date,Campaign,utm_campaign,Cost\n", origin="f", channels=CHANNELS)
    parsed = read_spend(b"Date,Campaign,utm_campaign,Cost\n2026-11-01,Brand,brand,5\n",
                        origin="f", channels=CHANNELS, mapping={"campaign": "utm_campaign"})
    assert [r.campaign for r in parsed.rows] == ["brand"]


# -- the command ------------------------------------------------------------------

@pytest.fixture
def store(tmp_path: Path) -> Path:
    path = tmp_path / "calls.sqlite3"
    conn = queries.connect(path, readonly=False)
    schema.migrate(conn)
    conn.close()
    return path


def run(capsys: pytest.CaptureFixture[str], *words: str) -> tuple[int, str, str]:
    try:
        code = cli.main(list(words))
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def stored(path: Path) -> list[tuple[object, ...]]:
    conn = queries.connect(path, readonly=True)
    try:
        return [(r.day, r.channel, r.campaign, r.amount, r.origin) for r in spend.stored(conn)]
    finally:
        conn.close()


def test_import_is_all_or_nothing_and_a_day_imported_again_replaces_it(
        tmp_path: Path, store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = str(config_with(tmp_path, "exports: {currency: RUB}\n"))
    good, bad = tmp_path / "direct.tsv", tmp_path / "bad.csv"
    good.write_text(DIRECT, encoding="utf-8")
    bad.write_text("day,amount\n2026-11-01,5\n2026-11-02,five\n", encoding="utf-8")
    code, _, err = run(capsys, "spend", "-c", config, "import", str(bad))
    assert code == 1 and f"{bad}: line 3: amount: cannot read 'five'" in err
    assert "1 bad row: nothing imported" in err and stored(store) == []
    code, out, _ = run(capsys, "spend", "-c", config, "import", str(good), "--channel",
                       "yandex-direct", "--dry-run")
    assert code == 0 and "2 would be added, 0 would be replaced" in out and stored(store) == []
    assert run(capsys, "spend", "-c", config, "import", str(good), "--channel",
               "yandex-direct")[0] == 0
    good.write_text(DIRECT.replace("\t99\n", "\t120\n"), encoding="utf-8")
    code, out, _ = run(capsys, "spend", "-c", config, "import", str(good), "--channel",
                       "yandex-direct")
    assert code == 0 and "0 added, 2 replaced" in out
    assert stored(store) == [("2026-11-01", "yandex-direct", "search", 1334.75, "direct.tsv"),
                             ("2026-11-02", "yandex-direct", "brand", 120.0, "direct.tsv")]
    code, out, _ = run(capsys, "spend", "-c", config, "list", "--format", "json")
    assert [r["amount"] for r in json.loads(out)] == [1334.75, 120.0]
    code, _, err = run(capsys, "spend", "-c", config, "import", str(good), "--channel", "tv")
    assert code == 1 and "--channel 'tv' is not a channel" in err


def test_import_waits_for_a_writer_then_says_so(tmp_path: Path, store: Path,
                                                capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import sqlite3
    from ctrackd import spend_command
    monkeypatch.setattr(spend_command, "LOCK_WAIT", 0.2)
    config = str(config_with(tmp_path, ""))
    sheet = tmp_path / "s.csv"
    sheet.write_text("day,amount\n2026-11-01,5\n", encoding="utf-8")
    holder = sqlite3.connect(store, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # the daemon in the middle of a write
    try:
        code, _, err = run(capsys, "spend", "-c", config, "import", str(sheet))
    finally:
        holder.close()
    assert code == 1 and "stayed locked for 0.2 s" in err and stored(store) == []


def test_import_needs_an_existing_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                        ) -> None:
    sheet = tmp_path / "s.csv"
    sheet.write_text("day,amount\n2026-11-01,5\n", encoding="utf-8")
    code, _, err = run(capsys, "spend", "-c", str(config_with(tmp_path, "")), "import",
                       str(sheet))
    assert code == 1 and "no call store at" in err and not (tmp_path / "calls.sqlite3").exists()


# -- progress bars ------------------------------------------------------------------

class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_bar_draws_on_a_terminal_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CTRACKD_PROGRESS", raising=False)
    piped, tty = io.StringIO(), Tty()
    for stream in (piped, tty):
        with progress.bar("export", total=10, stream=stream, delay=0) as shown:
            progress.counter(shown)(10)
    assert piped.getvalue() == "" and "export:" in tty.getvalue() and "/10" in tty.getvalue()
    monkeypatch.setenv("CTRACKD_PROGRESS", "0")
    assert not progress.enabled(Tty())


def test_a_query_timer_ticks_while_sqlite_works(store: Path) -> None:
    conn = queries.connect(store, readonly=True)
    tty = Tty()
    with progress.timing(conn, "report by channel", stream=tty, delay=0):
        conn.execute("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n"
                     " WHERE i < 300000) SELECT COUNT(*) FROM n").fetchone()
    conn.close()
    assert "report by channel" in tty.getvalue()


def test_a_piped_import_prints_no_bar(tmp_path: Path, store: Path) -> None:
    sheet = tmp_path / "s.csv"
    sheet.write_text("day,amount\n" + "".join(f"2026-11-{d:02d},5\n" for d in range(1, 29)),
                     encoding="utf-8")
    done = subprocess.run([sys.executable, "-m", "ctrackd", "spend", "-c",
                           str(config_with(tmp_path, "")), "import", str(sheet)],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and done.stderr == "" and "\r" not in done.stdout
    assert "28 added" in done.stdout


def test_a_map_to_a_missing_column_names_it_and_the_header() -> None:
    with pytest.raises(SpendFileError, match=r"line 1: no column 'Nope' for --map amount"
                                             r" \(the header has: Date, Cost\)"):
        read_spend(b"Date,Cost\n2026-11-01,10\n", origin="f", channels=CHANNELS,
                   channel="google-ads", mapping={"amount": "Nope"})
