"""The whole daemon in-process: FastAGI and AMI over real TCP, a real SQLite file.

Asterisk's side is played from the recordings: the FastAGI environment of a
real call, then that same call's AMI stream, byte for byte, through FakeAmi.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ctrackd.config import load_config
from ctrackd.daemon import Daemon
from tests.simulator.ami_server import FakeAmi, encode_message, read_capture
from tests.simulator.asterisk_args import exec_app_data, mset_assignments, parse_args

CONFIG = """\
ami: {{host: 127.0.0.1, port: {ami_port}, username: ctrackd, secret: secret,
      ping_interval: 1, liveness_timeout: 5, reconnect_max: 1}}
agi: {{listen: "127.0.0.1:0"}}
store: {{path: calls.sqlite3}}
recordings: {{dir: /var/spool/asterisk/monitor}}
defaults: {{forward_to: IAX2/phones/100, ring_timeout: 20}}
log: {{level: warning, format: json}}
channels:
  google: {{label: Google Ads, source: google, medium: cpc, campaign: brand}}
  avito: {{label: Avito, source: avito, medium: classified}}
numbers:
  "74950000001": {{channel: google}}
  "74950000003": {{channel: avito, forward_to: IAX2/phones/486}}
"""


def mset_variables(command: str) -> dict[str, str]:
    """What Asterisk's own parsing (ported in the simulator) makes of an EXEC MSet line."""
    argv = parse_args(command)
    app, data = exec_app_data(argv)
    assert (argv[0], app) == ("EXEC", "MSet")
    return dict(mset_assignments(data))


def environment(uniqueid: str, did: str, caller: str = "+79161234567",
                name: str = "unknown") -> bytes:
    """The environment of captures/agi/A (a real Asterisk 22 track request)."""
    env = [("agi_network", "yes"), ("agi_network_script", "track"),
           ("agi_request", "agi://127.0.0.1:4573/track"), ("agi_channel", "IAX2/carrier-15448"),
           ("agi_language", "en"), ("agi_type", "IAX2"), ("agi_uniqueid", uniqueid),
           ("agi_version", "22.10.1"), ("agi_callerid", caller), ("agi_calleridname", name),
           ("agi_callingpres", "0"), ("agi_callingani2", "0"), ("agi_callington", "0"),
           ("agi_callingtns", "0"), ("agi_dnid", "unknown"), ("agi_rdnis", "unknown"),
           ("agi_context", "ctrackd-inbound"), ("agi_extension", did), ("agi_priority", "12"),
           ("agi_enhanced", "0.0"), ("agi_accountcode", ""), ("agi_threadid", "1")]
    return ("".join(f"{k}: {v}\n" for k, v in env) + "\n").encode()


async def agi_track(port: int, env: bytes) -> list[str]:
    """Play Asterisk's side of one FastAGI session; return the commands received."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(env)
    commands = []
    while line := await reader.readline():
        commands.append(line.decode().rstrip("\n"))
        writer.write(b"200 result=0\n")
    writer.write(b"HANGUP\n")
    writer.close()
    return commands


@pytest.fixture
async def daemon(tmp_path: Path, ami: FakeAmi) -> AsyncIterator[Daemon]:
    path = tmp_path / "ctrackd.yaml"
    path.write_text(CONFIG.format(ami_port=ami.port), encoding="utf-8")
    running = Daemon(load_config(path), stop_grace=1.0)
    await running.start()
    await ami.wait_for_clients(1)
    yield running
    await running.stop()


def rows(daemon: Daemon) -> dict[str, dict]:
    conn = sqlite3.connect(daemon.config.store.path)
    conn.row_factory = sqlite3.Row
    try:
        return {r["call_id"]: dict(r) for r in conn.execute("SELECT * FROM calls")}
    finally:
        conn.close()


async def wait_for(predicate, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


async def test_recorded_call_end_to_end(daemon: Daemon, ami: FakeAmi, captures: Path) -> None:
    """Capture 01: AGI track, then the real AMI stream of that call."""
    commands = await agi_track(daemon.agi_address[1], environment("1795332111.16", "74950000001"))
    assert len(commands) == 1  # one round trip after the environment
    variables = mset_variables(commands[0])
    assert variables == {
        "__CTRACK_CHANNEL": "google", "CTRACK_SOURCE": "google", "CTRACK_MEDIUM": "cpc",
        "CTRACK_CAMPAIGN": "brand", "CTRACK_LABEL": "Google Ads",
        "CTRACK_FORWARD": "IAX2/phones/100", "CTRACK_RING_TIMEOUT": "20",
        "CTRACK_RECORDING": "ctrackd-1795332111.16.wav",
        "CTRACK_CALLERID_NAME": "[Google Ads]", "CTRACK_TRACKING": "static"}
    record = rows(daemon)["1795332111.16"]  # durable before the AGI answered
    assert (record["channel"], record["tracking"], record["did"]) == (
        "google", "static", "+74950000001")

    for message in read_capture(captures / "ami" / "01-answered-office-hangs-up.txt",
                                skip_login=True):
        await ami.emit(message)
    await wait_for(lambda: rows(daemon)["1795332111.16"]["ended_at"] is not None)
    record = rows(daemon)["1795332111.16"]
    assert record["status"] == "answered"
    assert record["answered_by"] == "IAX2/phones/100"
    assert abs(record["talk_seconds"] - 4) <= 1 and abs(record["duration_seconds"] - 5) <= 1
    assert record["recording_path"] == "/var/spool/asterisk/monitor/ctrackd-1795332111.16.wav"
    assert record["close_reason"] == "hangup"


async def test_unknown_number_still_goes_to_the_default(daemon: Daemon) -> None:
    commands = await agi_track(daemon.agi_address[1], environment(
        "1.1", "74959999999", name='Иван "Ваня", (VIP)'))
    variables = mset_variables(commands[0])
    assert variables["CTRACK_FORWARD"] == "IAX2/phones/100"
    assert variables["CTRACK_CALLERID_NAME"] == 'Иван "Ваня", (VIP)'  # no label: name as is
    record = rows(daemon)["1.1"]
    assert record["note"] == "unknown_did" and record["channel"] is None


async def test_busy_call_split_across_reads(daemon: Daemon, ami: FakeAmi,
                                            captures: Path) -> None:
    """Capture 03 sent in 7-byte pieces: framing and UTF-8 survive any TCP split."""
    await agi_track(daemon.agi_address[1], environment("1795332127.22", "74950000003"))
    data = b"".join(encode_message(m) for m in read_capture(
        captures / "ami" / "03-busy.txt", skip_login=True))
    await ami.emit_raw(data, chunk=7)
    await wait_for(lambda: rows(daemon)["1795332127.22"]["ended_at"] is not None)
    record = rows(daemon)["1795332127.22"]
    assert (record["status"], record["channel"], record["talk_seconds"]) == ("busy", "avito", 0)


async def test_bad_ami_input_does_not_stop_the_daemon(daemon: Daemon, ami: FakeAmi) -> None:
    await ami.emit_raw(b"\xff\xfe garbage\r\nno colon here\r\n\r\n")
    await ami.emit({"Event": "DialEnd", "Uniqueid": "x"})            # headers missing
    await ami.emit({"Event": "Hangup", "Uniqueid": "y", "Cause": "not-a-number",
                    "ChanVariable": "CTRACK_CALL_ID=y"})
    await ami.emit({"Event": "Newchannel"})                          # no Uniqueid at all
    commands = await agi_track(daemon.agi_address[1], environment("2.1", "74950000001"))
    assert mset_variables(commands[0])["__CTRACK_CHANNEL"] == "google"
    await wait_for(lambda: daemon.consumer.events >= 3)


async def test_reconnect_closes_calls_that_ended_unseen(daemon: Daemon, ami: FakeAmi) -> None:
    """A call open in the store but gone from Asterisk after a reconnect gets closed."""
    await agi_track(daemon.agi_address[1], environment("3.1", "74950000001"))
    await ami.emit({"Event": "DialBegin", "Uniqueid": "3.1", "Linkedid": "3.1",
                    "Channel": "IAX2/carrier-1", "ChanVariable": "CTRACK_CALL_ID=3.1",
                    "DestUniqueid": "3.2", "DestChannel": "IAX2/phones-2",
                    "DialString": "phones/100"})
    await wait_for(lambda: rows(daemon)["3.1"]["status"] == "ringing")
    ami.channels_provider = lambda: []       # Asterisk no longer has it
    ami.drop_clients()
    await wait_for(lambda: rows(daemon)["3.1"]["ended_at"] is not None)
    record = rows(daemon)["3.1"]
    assert (record["status"], record["close_reason"]) == ("unknown", "gone_after_reconnect")


async def test_pool_call_is_attributed_to_the_web_session(tmp_path: Path, ami: FakeAmi) -> None:
    """A visitor asks the daemon's web side for a number, then calls it: the record is theirs."""
    import aiohttp

    path = tmp_path / "ctrackd.yaml"
    path.write_text(CONFIG.format(ami_port=ami.port) + """\
pools:
  site:
    numbers: ["+74950000101", "+74950000102"]
web:
  listen: "127.0.0.1:0"
  origins: ["https://shop.example.com"]
  replace: ["+74951234567"]
""", encoding="utf-8")
    running = Daemon(load_config(path), stop_grace=1.0)
    await running.start()
    try:
        host, port = running.web_address
        async with aiohttp.ClientSession(headers={"Origin": "https://shop.example.com"}) as http:
            async with http.post(f"http://{host}:{port}/v1/sessions", json={
                    "visitor_id": "visitor-1",
                    "page": "https://shop.example.com/?utm_source=yandex&utm_medium=cpc"
                            "&utm_campaign=winter&gclid=abc"}) as response:
                number = (await response.json())["number"]
        commands = await agi_track(running.agi_address[1], environment("9.1", number[1:]))
        variables = mset_variables(commands[0])
        assert variables["CTRACK_TRACKING"] == "dynamic"
        assert variables["CTRACK_SOURCE"] == "yandex"
        record = rows(running)["9.1"]
        assert (record["tracking"], record["pool"], record["confidence"]) == (
            "dynamic", "site", "exact")
        assert (record["source"], record["medium"], record["campaign"]) == (
            "yandex", "cpc", "winter")
        session = json.loads(record["session_json"])
        assert session["gclid"] == "abc" and session["visitor_id"] == "visitor-1"
    finally:
        await running.stop()


async def test_a_huge_caller_name_still_gets_the_call_its_target(daemon: Daemon) -> None:
    """A 1000-character name would make the MSet line too long for Asterisk."""
    commands = await agi_track(daemon.agi_address[1], environment(
        "7.1", "74950000001", name="Ё\\,\"(" * 250))
    variables = mset_variables(commands[0])
    assert variables["CTRACK_FORWARD"] == "IAX2/phones/100"
    assert variables["__CTRACK_CHANNEL"] == "google"
    assert len(commands[0].encode()) <= 2046
