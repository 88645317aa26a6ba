"""A promo line end to end: the real daemon, FastAGI over real TCP, a real SQLite file.

Asterisk's side replays capture agi/B (a real Asterisk 22 asking `GET DATA
beep 8000 8` and the caller keying 4821#): the environment bytes of that
capture, then one reply per command as Asterisk gives them (res_agi.c
`handle_getdata()`: `200 result=4821`, `200 result=` for `#` alone,
`200 result= (timeout)` for silence, `200 result=-1` then `HANGUP` when the
caller hangs up during GET DATA (the reply first: res_agi writes `HANGUP` when
its loop next sees the dead channel), `HANGUP` then `511` for a command sent
after the hang-up, as capture agi/C shows). A visitor session holds code
4821, asked for over HTTP as the snippet asks: codes of 4 digits without a
check digit here, so that the capture's own dialogue replays unchanged.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest
from structlog.testing import capture_logs

from ctrackd.agi.commands import get_data
from ctrackd.agi.protocol import parse_reply
from ctrackd.agi.routes import keyed_digits
from ctrackd.attribution.dynamic import DynamicPlan
from ctrackd.config import load_config
from ctrackd.daemon import Daemon
from tests.simulator.ami_server import FakeAmi
from tests.test_daemon import environment, mset_variables

CONFIG = """\
ami: {{host: 127.0.0.1, port: {ami_port}, username: ctrackd, secret: secret,
      ping_interval: 1, liveness_timeout: 5, reconnect_max: 1}}
agi: {{listen: "127.0.0.1:0", session_timeout: 1}}
store: {{path: calls.sqlite3}}
recordings: {{dir: /var/spool/asterisk/monitor}}
defaults: {{forward_to: IAX2/phones/100, ring_timeout: 20}}
log: {{level: warning, format: json}}
channels:
  flyer: {{label: Promo flyer, source: flyer, medium: print}}
  yandex: {{label: Яндекс.Директ, source: yandex, medium: cpc}}
numbers:
  "74950000091": {{channel: flyer, tracking: promo}}
  "74950000001": {{channel: yandex}}
utm_rules:
  - {{source: yandex, channel: yandex}}
web:
  listen: "127.0.0.1:0"
  origins: ["https://shop.example.com"]
  replace: ["+74951234567"]
promo: {{length: 4, check_digit: false, prompt: beep, retry_prompt: custom/try-again,
        digit_timeout: 8, attempts: 2}}
"""
PAGE = "https://shop.example.com/boots?utm_source=yandex&utm_medium=cpc&utm_campaign=winter"
OK = b"200 result=0\n"
DEAD = b"511 Command Not Permitted on a dead channel or intercept routine\n"
MINUS_1_THEN_HANGUP = b"200 result=-1\nHANGUP\n"
HANGUP_THEN_511 = b"HANGUP\n" + DEAD


def capture_environment(captures: Path) -> bytes:
    """Capture B's environment exactly as Asterisk sent it (the chunks before our ANSWER)."""
    chunks = [json.loads(line) for line in
              (captures / "agi" / "B-get-data-promo-code-4821.jsonl").read_text().splitlines()]
    env = b""
    for chunk in itertools.takewhile(lambda c: c["dir"] == "in", chunks):
        env += base64.b64decode(chunk["b64"])
    assert env.endswith(b"\n\n") and b"agi_extension: 74950000091\n" in env
    return env


Reply = bytes | Callable[[], bytes]


async def asterisk(port: int, env: bytes, get_data: list[Reply | None], *,
                   answer: Reply = OK, delay: float = 0.0) -> list[str]:
    """Asterisk's side of one FastAGI session; returns the commands it received.

    `get_data` holds the reply to each GET DATA in turn, `answer` the reply to
    ANSWER (a callable is called when the command arrives); EXEC gets `200
    result=0`. `delay`: seconds the caller takes over each GET DATA; a None
    reply drops the connection there. Once a reply held `HANGUP`, every later
    command is answered 511, as Asterisk answers on a dead channel. After the
    server's EOF, Asterisk's own final HANGUP, as in every capture.
    """
    replies = iter(get_data)
    dead = False
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(env)
    commands = []
    while line := await reader.readline():
        command = line.decode().rstrip("\n")
        commands.append(command)
        if dead:
            reply = DEAD
        elif command == "ANSWER":
            reply = answer
        elif command.startswith("GET DATA"):
            await asyncio.sleep(delay)
            reply = next(replies)
        elif command.startswith("failure"):
            continue
        else:
            reply = OK
        if reply is None:
            writer.transport.abort()  # Asterisk gone mid-dialogue, no reply
            return commands
        data = reply() if callable(reply) else reply
        dead = dead or b"HANGUP" in data
        writer.write(data)
    writer.write(b"HANGUP\n")
    writer.close()
    return commands


@pytest.fixture
async def daemon(tmp_path: Path, ami: FakeAmi) -> AsyncIterator[Daemon]:
    path = tmp_path / "ctrackd.yaml"
    path.write_text(CONFIG.format(ami_port=ami.port), encoding="utf-8")
    config = load_config(path)
    running = Daemon(config, stop_grace=1.0)
    # The daemon draws codes from the OS's CSPRNG: here the draw is 4821, the
    # code of the capture.
    counter = itertools.count(1)
    running.dynamic = DynamicPlan(config.pools, config.utm_rules, promo=config.promo,
                                  choose_code=lambda n: 4821,
                                  new_session_id=lambda: f"session-{next(counter)}")
    await running.start()
    yield running
    await running.stop()


async def visit(daemon: Daemon, visitor: str = "visitor-1") -> dict:
    host, port = daemon.web_address
    async with aiohttp.ClientSession(headers={"Origin": "https://shop.example.com"}) as http:
        async with http.post(f"http://{host}:{port}/v1/sessions",
                             json={"visitor_id": visitor, "page": PAGE}) as response:
            assert response.status == 200
            return await response.json()


def record(daemon: Daemon, call_id: str = "1795332278.0") -> dict:
    conn = sqlite3.connect(daemon.config.store.path)
    conn.row_factory = sqlite3.Row
    try:
        row = conn.execute("SELECT * FROM calls WHERE call_id = ?", (call_id,)).fetchone()
        return dict(row) if row else {}
    finally:
        conn.close()


def fields(row: dict) -> tuple:
    return (row["tracking"], row["channel"], row["promo_code"], row["promo_entry"],
            row["promo_status"])


async def test_the_caller_keys_a_live_sessions_code(daemon: Daemon, captures: Path) -> None:
    session = await visit(daemon)
    assert (session["code"], session["number"]) == ("4821", None)  # a promo-only site
    seen_at_answer: list[dict] = []

    def answer() -> bytes:  # the record exists before the caller is even answered
        seen_at_answer.append(record(daemon))
        return OK

    commands = await asterisk(daemon.agi_address[1], capture_environment(captures),
                              [b"200 result=4821\n"], answer=answer)
    assert commands[:2] == ["ANSWER", "GET DATA beep 8000 4"] and len(commands) == 3
    assert fields(seen_at_answer[0]) == ("static", "flyer", None, "caller", "pending")

    variables = mset_variables(commands[2])
    assert (variables["CTRACK_TRACKING"], variables["CTRACK_PROMO_CODE"]) == ("promo", "4821")
    assert (variables["__CTRACK_CHANNEL"], variables["CTRACK_LABEL"]) == (
        "yandex", "Яндекс.Директ")
    assert variables["CTRACK_FORWARD"] == "IAX2/phones/100"
    row = record(daemon)
    assert fields(row) == ("promo", "yandex", "4821", "caller", "matched")
    assert (row["source"], row["medium"], row["campaign"]) == ("yandex", "cpc", "winter")
    assert (row["session_id"], row["confidence"], row["did"]) == (
        session["session_id"], "exact", "+74950000091")
    assert json.loads(row["session_json"])["landing_page"] == PAGE


@pytest.mark.parametrize("get_data, commands, expected", [
    # wrong digits: asked again (the retry prompt), then the number's channel
    ([b"200 result=1111\n", b"200 result=2222\n"],
     ["ANSWER", "GET DATA beep 8000 4", "GET DATA custom/try-again 8000 4", "EXEC"],
     ("static", "flyer", "2222", "caller", "unknown")),
    # a few digits, then silence: asked again, and the second try is right
    ([b"200 result=48 (timeout)\n", b"200 result=4821\n"],
     ["ANSWER", "GET DATA beep 8000 4", "GET DATA custom/try-again 8000 4", "EXEC"],
     ("promo", "yandex", "4821", "caller", "matched")),
    # `#` alone: the caller has no code; not asked again
    ([b"200 result=\n"], ["ANSWER", "GET DATA beep 8000 4", "EXEC"],
     ("static", "flyer", None, "caller", "skipped")),
    # silence on every try
    ([b"200 result= (timeout)\n", b"200 result= (timeout)\n"],
     ["ANSWER", "GET DATA beep 8000 4", "GET DATA custom/try-again 8000 4", "EXEC"],
     ("static", "flyer", None, "caller", "no_input")),
    # wrong digits, then the caller hangs up mid-prompt: what was keyed is kept; the
    # variables still go (-1 alone cannot tell a hang-up; a dead channel answers 511)
    ([b"200 result=1111\n", MINUS_1_THEN_HANGUP],
     ["ANSWER", "GET DATA beep 8000 4", "GET DATA custom/try-again 8000 4", "EXEC"],
     ("static", "flyer", "1111", "caller", "unknown")),
    # a hang-up before the first prompt's command (capture C: HANGUP, then 511)
    ([HANGUP_THEN_511], ["ANSWER", "GET DATA beep 8000 4", "EXEC"],
     ("static", "flyer", None, "caller", "no_input")),
    # "key the code, then hash": 1111# ends at the 4th digit, the leftover `#` ends the
    # retry at once (`200 result=`); that is no skip: the retry is asked again
    ([b"200 result=1111\n", b"200 result=\n", b"200 result=4821\n"],
     ["ANSWER", "GET DATA beep 8000 4", "GET DATA custom/try-again 8000 4",
      "GET DATA custom/try-again 8000 4", "EXEC"],
     ("promo", "yandex", "4821", "caller", "matched")),
    # ...only once: a second empty answer is the caller's own `#`, and the digits keyed
    # before stay in the record
    ([b"200 result=1111\n", b"200 result=\n", b"200 result=\n"],
     ["ANSWER", "GET DATA beep 8000 4", "GET DATA custom/try-again 8000 4",
      "GET DATA custom/try-again 8000 4", "EXEC"],
     ("static", "flyer", "1111", "caller", "skipped")),
    # an empty answer after digits that ran out in silence is a real `#`
    ([b"200 result=11 (timeout)\n", b"200 result=\n"],
     ["ANSWER", "GET DATA beep 8000 4", "GET DATA custom/try-again 8000 4", "EXEC"],
     ("static", "flyer", "11", "caller", "skipped")),
])
async def test_what_the_caller_keys_and_what_the_record_says(
        daemon: Daemon, captures: Path, get_data: list[bytes], commands: list[str],
        expected: tuple) -> None:
    await visit(daemon)
    received = await asterisk(daemon.agi_address[1], capture_environment(captures), get_data)
    assert [c.split(" ", 1)[0] if c.startswith("EXEC") else c for c in received] == commands
    row = record(daemon)
    assert fields(row) == expected
    assert row["forward_to"] == "IAX2/phones/100" and row["caller"] == "+79161234567"
    if commands[-1] == "EXEC":
        variables = mset_variables(received[-1])
        assert variables["CTRACK_TRACKING"] == expected[0]
        assert variables["__CTRACK_CHANNEL"] == expected[1]
        assert variables.get("CTRACK_PROMO_CODE") == expected[2]


async def test_a_connection_dropped_mid_prompt_still_finishes_the_record(
        daemon: Daemon, captures: Path) -> None:
    received = await asterisk(daemon.agi_address[1], capture_environment(captures),
                              [b"200 result=1111\n", None])
    assert received == ["ANSWER", "GET DATA beep 8000 4", "GET DATA custom/try-again 8000 4"]
    for _ in range(100):  # the route learns of the drop on its own time
        if record(daemon)["promo_status"] != "pending":
            break
        await asyncio.sleep(0.02)
    assert fields(record(daemon)) == ("static", "flyer", "1111", "caller", "unknown")


@pytest.mark.parametrize("reply, expected", [
    ("200 result=4821", ("4821", False)),          # 4 digits (max reached) or 4821#
    ("200 result=0042", ("0042", False)),          # leading zeros are digits too
    ("200 result=", ("", False)),                  # '#' alone
    ("200 result= (timeout)", ("", True)),         # nothing keyed
    ("200 result=48 (timeout)", ("48", True)),     # the caller stopped keying
    ("200 result=-1", (None, False)),              # hang-up, or the prompt cannot play
    ("511 Command Not Permitted on a dead channel or intercept routine", (None, False)),
])
def test_get_data_replies(reply: str, expected: tuple) -> None:
    assert keyed_digits(parse_reply(reply)) == expected


@pytest.mark.parametrize("prompt", ["beep&vm-goodbye", "custom/../../etc/x", "two words", ""])
def test_get_data_takes_only_a_sound_name(prompt: str) -> None:
    with pytest.raises(ValueError):
        get_data(prompt, 8000, 4)
    assert get_data("custom/promo-prompt", 8000, 4) == "GET DATA custom/promo-prompt 8000 4"


async def test_a_caller_gone_before_the_answer_keeps_the_record(daemon: Daemon,
                                                                captures: Path) -> None:
    received = await asterisk(daemon.agi_address[1], capture_environment(captures), [],
                              answer=HANGUP_THEN_511)
    assert [c.split(" ", 1)[0] for c in received] == ["ANSWER", "EXEC"]  # answered 511
    assert fields(record(daemon)) == ("static", "flyer", None, "caller", "no_input")


async def test_a_prompt_that_cannot_play_still_forwards_the_call(daemon: Daemon,
                                                                 captures: Path) -> None:
    """`200 result=-1` and no HANGUP: the prompt file is missing (ast_app_getdata_full()
    returns early on a live channel). The call must still get its variables, or the
    dialplan's fallback would forward it and ctrackd-agi overwrite the record."""
    await visit(daemon)
    with capture_logs() as logs:
        received = await asterisk(daemon.agi_address[1], capture_environment(captures),
                                  [b"200 result=-1\n"])
    assert [c.split(" ", 1)[0] if c.startswith("EXEC") else c for c in received] == [
        "ANSWER", "GET DATA beep 8000 4", "EXEC"]
    variables = mset_variables(received[-1])
    assert (variables["CTRACK_TRACKING"], variables["CTRACK_FORWARD"]) == (
        "static", "IAX2/phones/100")
    assert fields(record(daemon)) == ("static", "flyer", None, "caller", "no_input")
    assert [e["prompt"] for e in logs if e["event"] == "promo_prompt_failed"] == ["beep"]


async def test_a_hang_up_is_no_prompt_failure(daemon: Daemon, captures: Path) -> None:
    await visit(daemon)
    with capture_logs() as logs:
        await asterisk(daemon.agi_address[1], capture_environment(captures),
                       [MINUS_1_THEN_HANGUP])
    assert fields(record(daemon)) == ("static", "flyer", None, "caller", "no_input")
    assert not [e for e in logs if e["event"] == "promo_prompt_failed"]


async def test_a_promo_dialogue_outlasts_the_plain_session_limit(daemon: Daemon,
                                                                 captures: Path) -> None:
    """agi.session_timeout is 1 s here: a plain number's session is cut at 1 s, while
    a caller who takes 1.5 s to key the code is still heard (the promo line's limit
    comes from the promo settings)."""
    await visit(daemon)
    received = await asterisk(daemon.agi_address[1], capture_environment(captures),
                              [b"200 result=4821\n"], delay=1.5)
    assert received[-1].startswith("EXEC MSet") and "failure" not in received
    assert fields(record(daemon))[0] == "promo"

    reader, writer = await asyncio.open_connection("127.0.0.1", daemon.agi_address[1])
    writer.write(environment("7.1", "74950000001"))
    assert (await reader.readline()).startswith(b"EXEC MSet")
    # this Asterisk stalls 1.5 s before answering: the plain session is cut at 1 s
    assert await asyncio.wait_for(reader.readline(), 5) == b"failure\n"
    writer.close()


async def test_without_the_web_side_a_promo_line_does_not_ask(tmp_path: Path, ami: FakeAmi,
                                                              captures: Path) -> None:
    """No sessions hold codes: the call goes straight on, with the number's channel."""
    path = tmp_path / "ctrackd.yaml"
    text = CONFIG.format(ami_port=ami.port)
    path.write_text(text[:text.index("web:")] + text[text.index("promo:"):], encoding="utf-8")
    daemon = Daemon(load_config(path), stop_grace=1.0)
    await daemon.start()
    try:
        received = await asterisk(daemon.agi_address[1], capture_environment(captures), [])
    finally:
        await daemon.stop()
    assert [c.split(" ", 1)[0] for c in received] == ["EXEC"]
    row = record(daemon)
    assert fields(row) == ("static", "flyer", None, None, "no_input")
    assert row["note"] == "promo_not_asked"


def test_ctrackd_agi_forwards_a_promo_line_without_asking(tmp_path: Path) -> None:
    """The daemon is down: ctrackd-agi (a real process on stdin/stdout) knows no
    session, so it asks nothing and forwards the call with the number's channel."""
    from tests.test_fallback_agi import CONFIG as FALLBACK_CONFIG
    from tests.test_fallback_agi import UNIQUEID, row, track

    store = tmp_path / "calls.sqlite3"
    config = tmp_path / "ctrackd.yaml"
    config.write_text(FALLBACK_CONFIG.format(store=store)
                      + '  "74950000091":\n    channel: billboard\n    tracking: promo\n',
                      encoding="utf-8")
    result = track(config, did="74950000091")
    assert result.returncode == 0 and result.stderr == ""
    assert [c.split(" ", 1)[0] for c in result.commands] == ["GET", "EXEC"]  # no ANSWER
    assert (result.variables["CTRACK_FORWARD"], result.variables["CTRACK_TRACKING"]) == (
        "Queue(sales)", "fallback")
    record = row(store, UNIQUEID)
    assert record is not None
    assert (record["tracking"], record["channel"], record["promo_status"], record["note"]) == (
        "fallback", "billboard", "no_input", "promo_not_asked")
