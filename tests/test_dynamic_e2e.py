"""Dynamic tracking end to end: three visitors, a pool of two, calls, `ctrackd pools`.

The daemon in-process (web side and FastAGI over real TCP, a real SQLite file),
visitors as HTTP clients sending what the snippet sends, calls as Asterisk
sends them, then the admin's command reading the same store.
"""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp
import pytest

from ctrackd.cli import main as cli
from ctrackd.config import load_config
from ctrackd.daemon import Daemon
from tests.simulator.ami_server import FakeAmi
from tests.test_daemon import CONFIG, agi_track, environment, mset_variables, rows

POOLS = """\
pools:
  site:
    numbers: ["+74950000101", "+74950000102"]
    overflow: shared
utm_rules:
  - {source: yandex, channel: google}
web:
  listen: "127.0.0.1:0"
  origins: ["https://shop.example.com"]
  replace: ["+74951234567"]
"""

VISITORS = [
    ("visitor-google", "https://shop.example.com/?utm_source=google&utm_medium=cpc"
                       "&utm_campaign=brand&gclid=g-1"),
    ("visitor-yandex", "https://shop.example.com/boots?utm_source=yandex&utm_medium=cpc"
                       "&utm_campaign=winter&yclid=y-1"),
    ("visitor-vk", "https://shop.example.com/?utm_source=vk&utm_medium=social"),
]


async def test_three_visitors_a_pool_of_two(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                            ) -> None:
    ami = FakeAmi(username="ctrackd", secret="secret", port=0)
    await ami.start()
    path = tmp_path / "ctrackd.yaml"
    path.write_text(CONFIG.format(ami_port=ami.port) + POOLS, encoding="utf-8")
    daemon = Daemon(load_config(path), stop_grace=1.0)
    await daemon.start()
    try:
        host, port = daemon.web_address
        numbers = {}
        async with aiohttp.ClientSession(headers={"Origin": "https://shop.example.com"}) as http:
            for visitor, page in VISITORS:
                async with http.post(f"http://{host}:{port}/v1/sessions", json={
                        "visitor_id": visitor, "page": page}) as response:
                    numbers[visitor] = (await response.json())["number"]
        first, second, third = (numbers[v] for v, _ in VISITORS)
        assert first != second and third in (first, second)   # the pool overflowed
        assert daemon.dynamic.pools["site"].overflows == 1

        # Asterisk asks about a call to each visitor's number, in turn
        for n, (visitor, _) in enumerate(VISITORS):
            commands = await agi_track(daemon.agi_address[1],
                                       environment(f"5.{n}", numbers[visitor][1:]))
            assert mset_variables(commands[0])["CTRACK_TRACKING"] == "dynamic"
    finally:
        await daemon.stop()
        await ami.stop()

    records = rows(daemon)
    for n, (visitor, _) in enumerate(VISITORS):
        record = records[f"5.{n}"]
        session = json.loads(record["session_json"])
        if numbers[visitor] == third:
            # the shared number: its most recently active holder, and it says so
            assert (record["confidence"], session["visitor_id"]) == ("shared", "visitor-vk")
            assert (record["source"], record["medium"]) == ("vk", "social")
        else:
            assert (record["confidence"], session["visitor_id"]) == ("exact", visitor)
    exact = next(records[f"5.{n}"] for n, (v, _) in enumerate(VISITORS)
                 if numbers[v] != third)
    exact_session = json.loads(exact["session_json"])
    if exact_session["visitor_id"] == "visitor-yandex":
        assert (exact["channel"], exact["campaign"]) == ("google", "winter")  # by the UTM rule
        assert exact_session["yclid"] == "y-1" and exact_session["utm_term"] is None
    else:
        assert (exact["source"], exact["campaign"]) == ("google", "brand")
        assert exact_session["gclid"] == "g-1"

    # A restart within the same 5-minute bucket must not wipe the first run's figures.
    again = Daemon(load_config(path), stop_grace=1.0)
    await again.start()
    await again.stop()
    capsys.readouterr()  # the daemon's own log lines so far
    assert cli(["pools", "-c", str(path), "--format", "json"]) == 0
    (pool,) = json.loads(capsys.readouterr().out)
    assert (pool["pool"], pool["size"], pool["overflows"], pool["calls"]) == ("site", 2, 1, 3)
    assert (pool["peak_held"], pool["peak_demand"]) == (2, 3)
    # a second of demand in a 5-minute bucket is no load: Erlang B advises one number
    assert pool["recommended_size"] >= 1
    assert pool["exact_share"] == pytest.approx(1 / 3, abs=0.001)
