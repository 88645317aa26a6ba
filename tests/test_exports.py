"""Exports of offline conversions, checked against each system's documented format.

The documented examples quoted here (docs/exports.md gives the sources):
- Yandex Metrica, "Passing call data": the first line names the columns;
  `DateTime` "in Unix Time Stamp format ... UTC+0"; `Price` "with full stop
  (.) as the decimal separator"; `Currency` "three-letter ISO 4217";
  `PhoneNumber` "without spaces (with both country code and area code). For
  example, +70123456789"; `CallMissed` "1 — missed, 0 — answered";
  `StaticCall` "1 — static, 0 — dynamic"; `FirstTimeCaller` "1 — new caller,
  0 — repeat caller".
- Google Ads: caller id "in E.164 format with preceding '+' sign, for
  example, +16502531234"; call start "2019-01-01 12:32:45-08:00"; in an
  upload file the zone goes in the `Parameters:TimeZone=` row and the
  times are `yyyy-MM-dd HH:mm:ss` in that zone.
- GA4 Measurement Protocol: `{"client_id": "123456.7654321", "events":
  [{"name": ..., "params": {...}}]}`, `timestamp_micros` (Unix epoch in
  microseconds), at most 25 events per request, backdated at most 72 hours.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import socket
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import pytest
from aiohttp import web

from ctrackd import cli
from ctrackd.configcalls import ExportsConfig, Ga4Config
from ctrackd.export_command import FORMATS
from ctrackd.exports import convert_all, yandex_metrica
from ctrackd.store.exports import ExportCall

# 2019-01-01 12:32:45-08:00, Google's example instant
EXAMPLE_TS = datetime(2019, 1, 1, 20, 32, 45, tzinfo=timezone.utc).timestamp()
SETTINGS = ExportsConfig(value=1500.5, currency="RUB", channel_values={"google-ads": 2000.0},
                         timezone="America/Los_Angeles", call_conversion="Calls, offline",
                         click_conversion="Lead", call_tracker_url="https://ct.example/c/{call_id}",
                         ga4=Ga4Config(measurement_id="G-TEST", api_secret="s3cret"))


def call(**changes: object) -> ExportCall:
    values: dict[str, object] = dict(
        call_id="1546374765.7", started_at=EXAMPLE_TS, answered_at=EXAMPLE_TS + 4.2,
        ended_at=EXAMPLE_TS + 64.2, caller="+16502531234", did="+74950000001",
        channel="google-ads", source="google", medium="cpc", campaign="brand",
        status="answered", ring_seconds=4.2, talk_seconds=60.0, tracking="dynamic",
        first_time=True, target=True,
        session={"ym_uid": "1546300000123456789", "yclid": None, "gclid": "Cj0KCQiAabc",
                 "ga_client_id": "123456.7654321", "landing_page": "https://www.example.com/p"})
    values.update(changes)
    return ExportCall(**values)  # type: ignore[arg-type]


def rows_of(fmt_name: str, calls: list[ExportCall]) -> tuple[str, Counter[str]]:
    fmt = FORMATS[fmt_name]
    left: Counter[str] = Counter()
    rows = convert_all(calls, fmt, SETTINGS, left)
    out = io.StringIO()
    fmt.write(rows, out, SETTINGS)
    return out.getvalue(), left


# -- Yandex Metrica -------------------------------------------------------------

def test_metrica_columns_and_values_are_the_documented_ones() -> None:
    text, left = rows_of("yandex-metrica", [call(), call(call_id="x", session=None)])
    assert left == {yandex_metrica.NO_ID: 1}
    lines = text.split("\n")
    documented = {"UserId", "ClientId", "Yclid", "DateTime", "StaticCall", "Price", "Currency",
                  "PhoneNumber", "TalkDuration", "HoldDuration", "CallMissed", "Tag",
                  "FirstTimeCaller", "URL", "CallTrackerURL"}
    header = lines[0].split(",")
    # one identifier type per file: ClientId only (client_id_type=CLIENT_ID), no Yclid column
    assert set(header) <= documented and header[:2] == ["ClientId", "DateTime"]
    assert "Yclid" not in header and "UserId" not in header
    row = dict(zip(header, next(csv.reader([lines[1]]))))
    assert row == {"ClientId": "1546300000123456789", "DateTime": "1546374765",
                   "StaticCall": "0", "Price": "2000", "Currency": "RUB",
                   "PhoneNumber": "+16502531234", "TalkDuration": "60", "HoldDuration": "4",
                   "CallMissed": "0", "Tag": "target", "FirstTimeCaller": "1",
                   "URL": "https://www.example.com/p",
                   "CallTrackerURL": "https://ct.example/c/1546374765.7"}
    assert " " not in row["PhoneNumber"] and not text.startswith("\ufeff")


def test_metrica_writes_one_identifier_type_per_file() -> None:
    """Metrica's upload_calls takes one client_id_type per upload: ClientId rows (CLIENT_ID)
    or Yclid rows (YCLID), never both in one file."""
    both = call(session={"ym_uid": "111", "yclid": "222"})
    only_yclid = call(call_id="y", session={"yclid": "333"})
    only_uid = call(call_id="u", session={"ym_uid": "444"})
    text, left = rows_of("yandex-metrica", [both, only_yclid, only_uid, call(session=None)])
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [r["ClientId"] for r in rows] == ["111", "444"] and "Yclid" not in rows[0]
    assert left == {yandex_metrica.ONLY_YCLID: 1, yandex_metrica.NO_ID: 1}
    fmt = yandex_metrica.FORMAT_YCLID
    left = Counter()
    out = io.StringIO()
    fmt.write(convert_all([both, only_yclid, only_uid], fmt, SETTINGS, left), out, SETTINGS)
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    # the call with both ids is in the ClientId file only: uploaded twice it counts twice
    assert [r["Yclid"] for r in rows] == ["333"] and "ClientId" not in rows[0]
    assert list(rows[0])[:2] == ["Yclid", "DateTime"]
    assert left == {yandex_metrica.NO_YCLID: 1, yandex_metrica.HAS_CLIENT_ID: 1}


def test_metrica_price_has_a_dot_and_no_price_columns_without_a_value() -> None:
    text, _ = rows_of("yandex-metrica", [call(channel="billboard", tracking="static",
                                              first_time=False)])
    row = dict(zip(*csv.reader(io.StringIO(text))))
    assert row["Price"] == "1500.5" and row["StaticCall"] == "1" and row["FirstTimeCaller"] == "0"
    out = io.StringIO()
    yandex_metrica.write([], out, ExportsConfig())
    assert "Price" not in out.getvalue() and "Currency" not in out.getvalue()


# -- Google Ads ----------------------------------------------------------------------

def test_google_call_conversions_file_matches_the_template() -> None:
    text, left = rows_of("google-ads-calls", [
        call(), call(caller=None), call(source="yandex", session={"utm_source": "yandex"})])
    assert left == {"withheld number": 1, "not from Google (source is not google)": 1}
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == ["Parameters:TimeZone=America/Los_Angeles"]
    assert rows[1] == ["Caller's Phone Number", "Call Start Time", "Conversion Name",
                       "Conversion Time", "Conversion Value", "Conversion Currency"]
    # Google's example instant, 2019-01-01 12:32:45-08:00, in the declared zone
    assert rows[2] == ["+16502531234", "2019-01-01 12:32:45", "Calls, offline",
                       "2019-01-01 12:33:49", "2000", "RUB"]
    assert '"Calls, offline"' in text   # a comma in a name is quoted, not a new column


def test_google_click_conversions_file_matches_the_template() -> None:
    text, left = rows_of("google-ads-clicks", [call(), call(session={"gclid": None})])
    assert left == {"no gclid": 1}
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == ["Parameters:TimeZone=America/Los_Angeles"]
    assert rows[1] == ["Google Click ID", "Conversion Name", "Conversion Time",
                       "Conversion Value", "Conversion Currency"]
    assert rows[2] == ["Cj0KCQiAabc", "Lead", "2019-01-01 12:33:49", "2000", "RUB"]
    assert "T" not in rows[2][2] and "+" not in rows[2][2]


# -- GA4 -----------------------------------------------------------------------------

def test_ga4_bodies_follow_the_measurement_protocol() -> None:
    calls = [call(call_id=f"c{i}", started_at=EXAMPLE_TS + i) for i in range(30)]
    text, _ = rows_of("ga4", calls + [call(session={"ga_client_id": None})])
    bodies = [json.loads(line) for line in text.splitlines()]
    assert [len(b["events"]) for b in bodies] == [25, 5]          # at most 25 per request
    body = bodies[0]
    assert set(body) == {"client_id", "timestamp_micros", "events"}
    assert body["client_id"] == "123456.7654321"
    event = body["events"][0]
    assert event["name"] == "phone_call" and event["timestamp_micros"] == int(EXAMPLE_TS * 1e6)
    assert event["params"]["value"] == 2000.0 and event["params"]["currency"] == "RUB"
    assert all(len(k) <= 40 for k in event["params"]) and len(event["params"]) <= 25


# -- the command, on a real store -----------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def store(tmp_path: Path) -> Path:
    from zoneinfo import ZoneInfo

    from bench.synthetic import generate
    from ctrackd.config import load_config
    config = tmp_path / "ctrackd.yaml"
    config.write_text(_config_text(tmp_path / "calls.sqlite3", "http://127.0.0.1:9/mp"))
    import time
    generate(tmp_path / "calls.sqlite3", calls=3000, days=5, config=load_config(config),
             seed=7, end=time.time() - 60, tz=ZoneInfo("UTC"))
    return config


def _config_text(db: Path, endpoint: str) -> str:
    return f"""
ami: {{username: u, secret: s}}
store: {{path: {db}}}
defaults: {{forward_to: PJSIP/office}}
channels:
  google-ads: {{source: google, medium: cpc, label: Google}}
  yandex-direct: {{source: yandex, medium: cpc, label: Yandex}}
numbers:
  "+74950000001": {{channel: google-ads}}
  "+74950000002": {{channel: yandex-direct}}
exports:
  value: 1000
  currency: RUB
  ga4: {{measurement_id: G-TEST, api_secret: s3cret, endpoint: "{endpoint}"}}
"""


def test_export_command_counts_what_it_leaves_out(store: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "metrica.csv"
    assert cli.main(["export", "yandex-metrica", "-c", str(store), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    exported = len(out.read_text().splitlines()) - 1
    assert f"yandex-metrica: {exported} calls exported" in err
    left = {line.split("  ", 2)[2]: int(line.split()[0]) for line in err.splitlines()
            if line.startswith("  ")}
    assert exported + sum(left.values()) == 3000
    assert left["not answered"] > 0 and left[yandex_metrica.NO_ID] > 0
    yclid = tmp_path / "yclid.csv"
    assert cli.main(["export", "yandex-metrica", "-c", str(store), "--out", str(yclid),
                     "--id", "yclid"]) == 0
    capsys.readouterr()
    header = yclid.read_text().splitlines()[0].split(",")
    assert header[0] == "Yclid" and "ClientId" not in header
    assert cli.main(["export", "ga4", "-c", str(store), "--id", "yclid"]) == 1
    assert "--id is for yandex-metrica only" in capsys.readouterr().err
    assert cli.main(["export", "google-ads-calls", "-c", str(store), "--send"]) == 1
    assert "--send is for ga4 only" in capsys.readouterr().err


def test_unjudged_calls_are_counted_as_not_judged_yet(store: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """`target = 1` is NULL for an unjudged call: it must still be counted, not vanish."""
    import sqlite3
    with sqlite3.connect(tmp_path / "calls.sqlite3") as conn:
        answered = conn.execute("SELECT call_id FROM calls WHERE status = 'answered' AND"
                                " ended_at IS NOT NULL LIMIT 2").fetchall()
        missed = conn.execute("SELECT call_id FROM calls WHERE status != 'answered' AND"
                              " ended_at IS NOT NULL LIMIT 1").fetchall()
        conn.executemany("UPDATE calls SET target = NULL, target_rule = NULL WHERE call_id = ?",
                         answered + missed)
    conn.close()
    for extra in ([], ["--all-calls"]):
        out = tmp_path / "metrica.csv"
        assert cli.main(["export", "yandex-metrica", "-c", str(store), "--out", str(out),
                         *extra]) == 0
        err = capsys.readouterr().err
        exported = len(out.read_text().splitlines()) - 1
        left = {line.split(maxsplit=1)[1]: int(line.split()[0]) for line in err.splitlines()
                if line.startswith("  ")}
        assert exported + sum(left.values()) == 3000, err
        if not extra:  # the unjudged missed call is "not answered" first
            assert left["not judged yet"] == 2


def test_ga4_send_posts_each_body_once_to_the_configured_endpoint(store: Path) -> None:
    received: list[tuple[dict[str, str], dict[str, object]]] = []

    async def collect(request: web.Request) -> web.Response:
        received.append((dict(request.query), await request.json()))
        return web.Response(status=204)

    async def scenario() -> int:
        app = web.Application()
        app.router.add_post("/mp/collect", collect)
        runner = web.AppRunner(app)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            store.write_text(store.read_text().replace(
                "http://127.0.0.1:9/mp", f"http://127.0.0.1:{port}/mp/collect"))
            file = store.parent / "ga4.jsonl"
            assert await asyncio.to_thread(
                cli.main, ["export", "ga4", "-c", str(store), "--out", str(file)]) == 0
            expected = [json.loads(line) for line in file.read_text().splitlines()]
            assert await asyncio.to_thread(
                cli.main, ["export", "ga4", "-c", str(store), "--send"]) == 0
            assert [body for _, body in received] == expected and expected
            return len(expected)
        finally:
            await runner.cleanup()

    assert asyncio.run(scenario()) > 0
    assert all(q == {"measurement_id": "G-TEST", "api_secret": "s3cret"} for q, _ in received)


@pytest.mark.parametrize("block, expected", [
    ("exports: {currency: rub}", "exports.currency: expected a three-letter ISO 4217 code"),
    ("exports: {timezone: Mars/Olympus}", "exports.timezone: expected a time zone name"),
    ("exports: {values: {tv: 5}}", "exports.values: expected a channel key"),
    ("exports: {ga4: {endpoint: ftp://x}}", "exports.ga4.endpoint: expected an http"),
])
def test_bad_exports_settings_name_the_key(tmp_path: Path, block: str, expected: str) -> None:
    from ctrackd.config import ConfigError, load_config
    path = tmp_path / "c.yaml"
    path.write_text(_config_text(tmp_path / "x.sqlite3", "http://127.0.0.1:9/mp").split(
        "exports:")[0] + block + "\n")
    with pytest.raises(ConfigError, match=expected.replace("(", r"\(")):
        load_config(path)
