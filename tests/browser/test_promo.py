"""The snippet shows the session's promo code (real headless Chromium, stub tracker).

The stub's first session has code 4821 and pool number +7 495 000-01-01
(stub.py); `tracker.state.codes` makes its answers carry the code, as the
daemon's do.
"""

from __future__ import annotations

import json
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from playwright.sync_api import BrowserContext, Page, expect

from tests.test_daemon import environment

from .stub import CODES, Site, StubTracker, closed_port
from .test_real_daemon import EXAMPLE, ROOT, free_port, wait_for_port

ORIGINAL = "+7 (495) 123-45-67"
SWAPPED = "+7 (495) 000-01-01"
ASK = "спросите у оператора"


def is_session_request(request: object) -> bool:
    return getattr(request, "url", "").endswith("/v1/sessions")


def open_promo(page: Page, site: Site) -> None:
    page.goto(site.page("promo.html"))
    expect(page.locator("#code")).to_have_text(CODES[0])


def text(page: Page, selector: str) -> str:
    return page.locator(selector).inner_text()


@pytest.fixture(autouse=True)
def with_codes(tracker: StubTracker) -> None:
    tracker.state.codes = True


def test_the_code_shows_in_every_marked_element(page: Page, site: Site,
                                                screenshot_dir: Path) -> None:
    open_promo(page, site)

    assert text(page, "#code-class") == CODES[0]          # class="ctrack-promo", two <i> inside
    assert text(page, "#code-empty") == CODES[0]          # an empty element gets a text
    assert text(page, "#code-off") == "без кода"           # data-ctrack-off wins
    assert text(page, "#header-tel") == SWAPPED           # the number is swapped as ever
    # the promo line is no office number: it stays as written
    assert text(page, "#promo-tel") == "+7 (495) 000-00-91"
    assert page.evaluate("window.ctrack.code") == CODES[0]
    page.screenshot(path=str(screenshot_dir / "promo-code.png"), full_page=True)


def test_a_promo_only_site_shows_the_code_and_keeps_its_numbers(
        page: Page, site: Site, tracker: StubTracker) -> None:
    tracker.state.mode = "no-number"          # no pool: "number": null, a code all the same
    page.clock.install()
    open_promo(page, site)

    assert text(page, "#header-tel") == ORIGINAL
    assert page.locator("#header-tel").get_attribute("href") == "tel:+74951234567"
    assert page.evaluate("[window.ctrack.number, window.ctrack.code]") == [None, CODES[0]]
    # The session is kept alive (its code stays reserved while the page is open).
    page.clock.run_for(30_000)
    tracker.wait_for(lambda: len(tracker.heartbeats("s1")) == 1)


def test_content_added_later_gets_the_code(page: Page, site: Site) -> None:
    open_promo(page, site)
    page.evaluate("""() => {
        const p = document.createElement('p');
        p.innerHTML = 'Код: <b id="added" class="ctrack-promo">…</b>';
        document.getElementById('later').appendChild(p);
        document.getElementById('code').textContent = 'перезаписано сайтом';
    }""")
    expect(page.locator("#added")).to_have_text(CODES[0])
    expect(page.locator("#code")).to_have_text(CODES[0])


@pytest.mark.parametrize("failure", ["down", "error", "hang"])
def test_an_unreachable_daemon_leaves_the_elements_as_they_were(
        failure: str, page: Page, site: Site, tracker: StubTracker) -> None:
    if failure == "down":
        site.script = site.url
        site.endpoint = f"http://127.0.0.1:{closed_port()}"
    else:
        tracker.state.mode = failure
    event = "requestfinished" if failure == "error" else "requestfailed"
    with page.expect_event(event, predicate=is_session_request, timeout=6000):
        page.goto(site.page("promo.html"))
    page.wait_for_timeout(200)

    assert text(page, "#code") == ASK
    assert text(page, "#code-class") == "— —"
    assert text(page, "#code-empty") == ""
    assert page.evaluate("window.ctrack.code") is None


BAD_CODES = {
    "not-a-string": {"code": 4821},
    "not-digits": {"code": "48a1"},
    "markup": {"code": "<img src=x onerror=alert(1)>"},
    "too-long": {"code": "1" * 13},
    "neither-number-nor-code": {"number": None, "code": None},
}


def test_an_answer_with_a_bad_code_is_ignored(page: Page, site: Site,
                                              tracker: StubTracker) -> None:
    for case, answer in BAD_CODES.items():
        tracker.state.answer = answer
        with page.expect_event("requestfinished", predicate=is_session_request):
            page.goto(site.page("promo.html"))
        page.wait_for_timeout(100)
        assert text(page, "#code") == ASK, case
        assert text(page, "#header-tel") == ORIGINAL, case
        assert page.locator("#code img").count() == 0, case


def test_a_failed_renewal_puts_the_original_text_back(page: Page, site: Site,
                                                      tracker: StubTracker) -> None:
    page.clock.install()
    open_promo(page, site)
    tracker.state.sessions_fail = "500"
    tracker.end_session("s1")
    page.clock.run_for(30_000)               # heartbeat -> 404 -> the renewal fails
    expect(page.locator("#code")).to_have_text(ASK, timeout=6000)
    assert text(page, "#code-class") == "— —" and text(page, "#code-empty") == ""
    assert page.evaluate("window.ctrack.code") is None

    tracker.state.sessions_fail = ""         # back: the next try shows the new session's code
    page.clock.run_for(31_000)
    expect(page.locator("#code")).to_have_text(CODES[1])


def test_an_answer_without_a_code_takes_the_old_code_off_the_page(
        page: Page, site: Site, tracker: StubTracker) -> None:
    """The renewed session comes with a number but no code (every code taken): the
    page must not go on showing the old code, which may now be another visitor's."""
    page.clock.install()
    open_promo(page, site)
    tracker.state.codes = False              # the daemon's next answer: a number, no code
    tracker.end_session("s1")
    page.clock.run_for(30_000)               # heartbeat -> 404 -> a new session, no code
    expect(page.locator("#code")).to_have_text(ASK, timeout=6000)
    assert text(page, "#code-class") == "— —" and text(page, "#code-empty") == ""
    assert page.evaluate("window.ctrack.code") is None
    assert page.evaluate("window.ctrack.number") is not None   # the number is still shown
    assert text(page, "#header-tel") != ORIGINAL

    tracker.state.codes = True               # codes again: the next session shows its own
    tracker.end_session("s2")
    page.clock.run_for(30_000)
    expect(page.locator("#code")).to_have_text(CODES[2])
    assert text(page, "#code-class") == CODES[2]


# -- against the real daemon --------------------------------------------------

PROMO_LINE = '  # "+74950000091":\n  #   channel: billboard\n  #   tracking: promo\n'


def promo_call(port: int, env: bytes, keyed: bytes) -> list[str]:
    """Asterisk's side of a promo line (capture agi/B): ANSWER, GET DATA -> `keyed`, EXEC."""
    commands = []
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(env)
        replies = conn.makefile("rb")
        while line := replies.readline():
            commands.append(line.decode().rstrip("\n"))
            conn.sendall(keyed if commands[-1].startswith("GET DATA") else b"200 result=0\n")
    return commands


def test_a_caller_keys_the_code_a_real_page_showed(
        tmp_path: Path, browser_context_factory: Callable[[], BrowserContext]) -> None:
    """As a new user would try it: the example config with its promo line and the web
    side (no pools), a visitor from a Yandex ad sees a code, calls and keys it."""
    web_port, agi_port = free_port(), free_port()
    site = Site(script=f"http://127.0.0.1:{web_port}", endpoint=f"http://127.0.0.1:{web_port}")
    site.start()
    example = EXAMPLE.read_text(encoding="utf-8")
    assert PROMO_LINE in example
    config = tmp_path / "ctrackd.yaml"
    config.write_text(
        example.replace(PROMO_LINE, PROMO_LINE.replace("# ", ""))
        .replace("port: 5038", f"port: {free_port()}")        # no Asterisk here: AMI retries
        .replace('listen: "127.0.0.1:4573"', f'listen: "127.0.0.1:{agi_port}"')
        .replace("path: ../var/ctrackd.sqlite3", "path: calls.sqlite3")
        + f"""
utm_rules:
  - {{source: yandex, channel: yandex-direct}}
web:
  listen: "127.0.0.1:{web_port}"
  origins: ["{site.url}"]
  replace: ["{ORIGINAL}"]
""", encoding="utf-8")
    proc = subprocess.Popen([sys.executable, "-m", "ctrackd", "run", "-c", str(config)],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for_port(web_port, proc)
        wait_for_port(agi_port, proc)
        page = browser_context_factory().new_page()
        page.goto(site.page("promo.html") + "?utm_source=yandex&utm_medium=cpc"
                  "&utm_campaign=winter")
        expect(page.locator("#code")).not_to_have_text(ASK)
        code = text(page, "#code")
        assert len(code) == 5 and code.isdigit() and text(page, "#code-class") == code
        assert text(page, "#header-tel") == ORIGINAL        # no pools: the number stays

        env = environment("9.1", "74950000091")
        commands = promo_call(agi_port, env, f"200 result={code}\n".encode())
        assert commands[:2] == ["ANSWER", "GET DATA beep 8000 5"]
        wrong = "00000" if code != "00000" else "11115"   # both with a right check digit
        promo_call(agi_port, environment("9.2", "74950000091"),
                   f"200 result={wrong}\n".encode())
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=15)
        site.stop()
    conn = sqlite3.connect(config.parent / "calls.sqlite3")
    conn.row_factory = sqlite3.Row
    records = {r["call_id"]: dict(r) for r in conn.execute("SELECT * FROM calls")}
    conn.close()
    right, wrong_call = records["9.1"], records["9.2"]
    assert (right["tracking"], right["channel"], right["promo_code"], right["promo_status"]) == (
        "promo", "yandex-direct", code, "matched")
    assert (right["source"], right["campaign"]) == ("yandex", "winter")
    assert json.loads(right["session_json"])["landing_page"].endswith("utm_campaign=winter")
    assert (wrong_call["tracking"], wrong_call["channel"], wrong_call["promo_status"]) == (
        "static", "billboard", "unknown")
