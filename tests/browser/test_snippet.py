"""The snippet in a real headless Chromium against a stub tracker on loopback.

The first visitor of a stub tracker gets pool number +7 495 000-01-01 for the
office numbers +7 495 123-45-67 and +7 812 555-01-02 (see stub.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from playwright.sync_api import BrowserContext, Page, Request, expect

from .conftest import Errors
from .stub import POOL, Site, StubTracker, closed_port

ORIGINAL = "+7 (495) 123-45-67"
SWAPPED = "+7 (495) 000-01-01"
SECOND = "+7 (495) 000-01-02"  # the pool's next number: a new session's


def open_numbers(page: Page, site: Site, referer: str | None = None) -> None:
    """Open the contacts page and wait until the snippet has swapped it."""
    page.goto(site.page("numbers.html"), referer=referer)
    expect(page.locator("#header-tel")).to_have_text(SWAPPED)


def text(page: Page, selector: str) -> str:
    return page.locator(selector).inner_text()


def href(page: Page, selector: str) -> str | None:
    return page.locator(selector).get_attribute("href")


def test_every_office_number_shows_the_session_number_in_its_own_format(
        page: Page, site: Site, screenshot_dir: Path) -> None:
    open_numbers(page, site)

    assert href(page, "#header-tel") == "tel:+74950000101"
    assert text(page, "#national") == "Звоните бесплатно: 8 (495) 000-01-01"
    assert text(page, "#local") == "Городской номер: (495) 000-01-01"
    assert text(page, "#compact") == "WhatsApp: +74950000101"
    assert text(page, "#dashes") == "Отдел продаж: 8-495-000-01-01, позвонить"
    assert href(page, "#dashes-tel") == "tel:8-495-000-01-01"
    assert text(page, "#nbsp") == "Склад: +7\u00a0495\u00a0000\u00a001\u00a001"
    # A second office number maps to the same session number.
    assert text(page, "#spb-tel") == SWAPPED
    assert href(page, "#spb-tel") == "tel:+74950000101"
    assert text(page, "#two") == f"Два раза: {SWAPPED} или 8 (495) 000-01-01."
    # The page title seen by the tab is not an office number: untouched.
    assert page.title() == "Окна Сервис: контакты"

    page.screenshot(path=str(screenshot_dir / "numbers-swapped.png"), full_page=True)


def test_marked_elements_are_swapped_whatever_number_they_hold(page: Page, site: Site) -> None:
    open_numbers(page, site)

    # class="ctrack-phone", the number split over two text nodes (<b>+7 (495)</b> 765-43-21).
    assert text(page, "#marked-tel") == SWAPPED
    assert page.locator("#marked-tel b").inner_text() == "+7 (495)"
    assert href(page, "#marked-tel") == "tel:+74950000101"
    # data-ctrack
    assert page.locator("#data-marked [data-ctrack]").inner_text() == SWAPPED


def test_a_marked_element_swaps_only_its_first_phone_number(page: Page, site: Site) -> None:
    open_numbers(page, site)

    # Hours and dates are digits too, but too few for a phone number; the
    # number after the first is another line (a fax), not the one to track.
    assert text(page, "#hours") == ("Пн–Пт 09.00–18.00, с 12.03.2024: 8 (495) 000-01-01, "
                                    "факс 8 (495) 222-33-44")


def test_other_numbers_and_opted_out_parts_stay_as_they_are(page: Page, site: Site) -> None:
    open_numbers(page, site)

    assert text(page, "#other-tel") == "+7 (495) 222-33-44"
    assert href(page, "#other-tel") == "tel:+74952223344"
    # The office digits inside a longer number are not that number.
    assert text(page, "#glued") == "Артикул 749512345678"
    # data-ctrack-off on the footer covers everything inside it.
    assert ORIGINAL in text(page, "#off-text")
    assert text(page, "#off-tel") == ORIGINAL
    assert href(page, "#off-tel") == "tel:+74951234567"
    # Structured data for search engines keeps the real number.
    ld = page.locator('script[type="application/ld+json"]').text_content()
    assert ld is not None and ORIGINAL in ld


def test_content_added_later_is_swapped_too(page: Page, site: Site) -> None:
    open_numbers(page, site)

    # A pop-up as a single-page app would add it, some time after the swap.
    page.evaluate("""() => {
        const popup = document.createElement('div');
        popup.id = 'popup';
        popup.innerHTML = 'Перезвоним или звоните: <a href="tel:+74951234567">8 (495) 123-45-67</a>';
        document.getElementById('later').appendChild(popup);
    }""")
    expect(page.locator("#popup a")).to_have_text("8 (495) 000-01-01")
    assert href(page, "#popup a") == "tel:+74950000101"

    # Frameworks leave comment nodes among what they insert.
    page.evaluate("""() => {
        const p = document.createElement('p');
        p.id = 'after-comment';
        p.textContent = '+7 (495) 123-45-67';
        document.getElementById('later').append(document.createComment('v-if'), p);
    }""")
    expect(page.locator("#after-comment")).to_have_text(SWAPPED)

    # A framework re-rendering: existing text and an href changed in place.
    page.evaluate("""() => {
        document.querySelector('#local').firstChild.nodeValue = 'Новый номер: +7 (812) 555-01-02';
        document.querySelector('#other-tel').setAttribute('href', 'tel:+74951234567');
    }""")
    expect(page.locator("#local")).to_have_text(f"Новый номер: {SWAPPED}")
    expect(page.locator("#other-tel")).to_have_attribute("href", "tel:+74950000101")

    # ...but not inside an opted-out part, even when it is added later.
    page.evaluate("""() => {
        const span = document.createElement('span');
        span.id = 'off-later';
        span.textContent = ' Факс: +7 (495) 123-45-67';
        document.querySelector('footer').appendChild(span);
        const box = document.createElement('p');
        box.setAttribute('data-ctrack-off', '');
        box.innerHTML = '<span id="off-box">+7 (495) 123-45-67</span>';
        document.getElementById('later').appendChild(box);
    }""")
    page.wait_for_timeout(200)  # time for the observer to (not) act
    assert text(page, "#off-later") == f"Факс: {ORIGINAL}"
    assert text(page, "#off-box") == ORIGINAL


def test_the_observer_does_not_loop_on_its_own_changes(page: Page, site: Site) -> None:
    open_numbers(page, site)

    # Count every mutation in the page from now on, then add one number.
    page.evaluate("""() => {
        window.mutations = 0;
        new MutationObserver(records => { window.mutations += records.length; })
            .observe(document.documentElement, {subtree: true, childList: true,
                                                characterData: true, attributes: true});
        const p = document.createElement('p');
        p.id = 'added';
        p.textContent = '+7 (495) 123-45-67';
        document.getElementById('later').appendChild(p);
    }""")
    expect(page.locator("#added")).to_have_text(SWAPPED)
    settled = page.evaluate("window.mutations")
    page.wait_for_timeout(300)
    # Ours (the append) and the snippet's one swap, then silence.
    assert settled == 2
    assert page.evaluate("window.mutations") == settled


def test_the_request_carries_the_visitor_and_the_page(
        context: BrowserContext, page: Page, site: Site, tracker: StubTracker) -> None:
    context.add_cookies([{"name": "_ga", "value": "GA1.1.1234567890.1700000000",
                          "url": site.url}])
    # Yandex Metrica keeps its id in localStorage as a JSON string.
    context.add_init_script("localStorage.setItem('_ym_uid', '\"1700000000123456789\"')")
    open_numbers(page, site, referer="https://yandex.ru/search/?text=okna")

    (sent,) = tracker.session_posts()
    # No pool asked for, no session to renew: those keys are left out.
    assert set(sent.body) == {"visitor_id", "page", "referrer", "title", "ga", "ym_uid",
                              "visits_before"}
    assert sent.body["visits_before"] == 0
    assert sent.body["page"] == site.page("numbers.html")
    assert sent.body["referrer"] == "https://yandex.ru/search/?text=okna"
    assert sent.body["title"] == "Окна Сервис: контакты"
    assert sent.body["ga"] == "GA1.1.1234567890.1700000000"
    assert sent.body["ym_uid"] == "1700000000123456789"
    assert len(sent.body["visitor_id"]) >= 8
    # Cross-origin JSON: a CORS preflight first, and the site's origin on the POST.
    assert sent.headers["Origin"] == site.url
    assert sent.headers["Content-Type"] == "application/json"
    assert [r.method for r in tracker.state.requests][:2] == ["OPTIONS", "POST"]


def test_without_analytics_ids_they_are_sent_as_null(page: Page, site: Site,
                                                     tracker: StubTracker) -> None:
    open_numbers(page, site)

    (sent,) = tracker.session_posts()
    assert sent.body["ga"] is None
    assert sent.body["ym_uid"] is None
    assert sent.body["referrer"] == ""


def test_the_visitor_keeps_its_id_across_reloads_and_tabs(
        browser_context_factory: Callable[[], BrowserContext], context: BrowserContext, page: Page, site: Site,
        tracker: StubTracker) -> None:
    open_numbers(page, site)
    page.reload()
    expect(page.locator("#header-tel")).to_have_text(SWAPPED)
    second_tab = context.new_page()
    open_numbers(second_tab, site)

    visitors = [r.body["visitor_id"] for r in tracker.session_posts()]
    assert len(visitors) == 3 and len(set(visitors)) == 1
    # The visit number the daemon gave comes back with the later page views.
    assert [r.body["visits_before"] for r in tracker.session_posts()] == [0, 1, 1]
    # Kept in localStorage: no cookie rides along on the site's own requests.
    assert page.evaluate("localStorage.getItem('ctrack_vid')") == visitors[0]
    assert "ctrack_vid" not in {c["name"] for c in context.cookies()}
    # One visitor, one session: both tabs show the same number and beat for it.
    assert text(page, "#header-tel") == text(second_tab, "#header-tel") == SWAPPED

    # Another browser profile is another visitor, with a number of its own.
    other = browser_context_factory()
    other_page = other.new_page()
    other_page.goto(site.page("numbers.html"))
    expect(other_page.locator("#header-tel")).to_have_text(SECOND)
    assert tracker.session_posts()[-1].body["visitor_id"] not in visitors


def test_the_visitor_id_lives_in_a_cookie_when_storage_is_blocked(
        context: BrowserContext, page: Page, site: Site, tracker: StubTracker) -> None:
    # What Chromium does with "block third-party cookies and site data": any
    # use of localStorage throws.
    context.add_init_script("""
        Object.defineProperty(window, 'localStorage', {
            get() { throw new DOMException('Access is denied', 'SecurityError'); }
        });""")
    open_numbers(page, site)
    page.reload()
    expect(page.locator("#header-tel")).to_have_text(SWAPPED)

    first, second = (r.body["visitor_id"] for r in tracker.session_posts())
    assert first == second
    cookies = {c["name"]: c for c in context.cookies(site.url)}
    assert cookies["ctrack_vid"]["value"] == first
    assert cookies["ctrack_vid"]["expires"] > time.time() + 365 * 86400


def test_the_script_tag_alone_configures_it(page: Page, site: Site,
                                            tracker: StubTracker) -> None:
    # No data-ctrack-endpoint: the origin the script came from; data-ctrack-pool.
    page.goto(site.page("default-endpoint.html"))
    expect(page.locator("#tel")).to_have_text(SWAPPED)
    (sent,) = tracker.session_posts()
    assert sent.body["pool"] == "moscow"


def is_session_request(request: Request) -> bool:
    return request.url.endswith("/v1/sessions") and request.method == "POST"


@pytest.mark.parametrize("failure", ["down", "error", "badjson", "hang"])
def test_an_unreachable_daemon_leaves_the_page_as_it_was(
        failure: str, page: Page, site: Site, tracker: StubTracker, errors: Errors) -> None:
    if failure == "down":
        # The script is still served (by the site, a CDN, a cache); the API is not.
        site.script = site.url
        site.endpoint = f"http://127.0.0.1:{closed_port()}"
    else:
        tracker.state.mode = failure
    event = "requestfinished" if failure in ("error", "badjson") else "requestfailed"

    started = time.monotonic()
    with page.expect_event(event, predicate=is_session_request, timeout=6000):
        page.goto(site.page("numbers.html"))
    waited = time.monotonic() - started
    page.wait_for_timeout(200)  # anything the snippet would do after the answer

    assert text(page, "#header-tel") == ORIGINAL
    assert href(page, "#header-tel") == "tel:+74951234567"
    assert text(page, "#national") == "Звоните бесплатно: 8 (495) 123-45-67"
    assert text(page, "#marked-tel") == "+7 (495) 765-43-21"
    assert page.evaluate("window.ctrack.number") is None
    if failure == "hang":
        assert 2.5 < waited < 5, "the snippet gives up after about 3 s"
    # The fixture checks the rest: no uncaught error, no console error but
    # the browser's own line about the failed request.
    assert errors.page_errors == []


def test_no_number_for_the_session_leaves_the_page_as_it_was(
        page: Page, site: Site, tracker: StubTracker) -> None:
    # No pool fits this page: the daemon answers 200 with "number": null.
    tracker.state.mode = "no-number"
    page.clock.install()
    with page.expect_event("requestfinished", predicate=is_session_request):
        page.goto(site.page("numbers.html"))
    page.wait_for_timeout(200)

    assert text(page, "#header-tel") == ORIGINAL
    assert text(page, "#marked-tel") == "+7 (495) 765-43-21"
    page.clock.run_for(60_000)
    page.wait_for_timeout(200)
    assert tracker.heartbeats() == []  # nothing held, nothing to keep


def test_heartbeats_are_sent_while_the_tab_is_visible(page: Page, site: Site,
                                                      tracker: StubTracker) -> None:
    page.clock.install()  # the page's timers, moved forward by the test
    open_numbers(page, site)
    assert tracker.heartbeats() == []

    page.clock.run_for(30_000)
    tracker.wait_for(lambda: len(tracker.heartbeats()) == 1)
    page.clock.run_for(60_000)
    tracker.wait_for(lambda: len(tracker.heartbeats()) == 3)

    assert {r.path for r in tracker.heartbeats()} == {"/v1/sessions/s1/heartbeat"}
    assert all(r.body == {} for r in tracker.heartbeats())


def set_visibility(page: Page, state: str) -> None:
    # Headless tabs are always visible; what the snippet reads is faked here.
    page.evaluate("""state => {
        Object.defineProperty(document, 'visibilityState', {configurable: true, get: () => state});
        document.dispatchEvent(new Event('visibilitychange'));
    }""", state)


def test_a_hidden_tab_is_silent_and_beats_once_it_is_visible_again(
        page: Page, site: Site, tracker: StubTracker) -> None:
    page.clock.install()
    open_numbers(page, site)
    page.clock.run_for(30_000)
    tracker.wait_for(lambda: len(tracker.heartbeats()) == 1)

    set_visibility(page, "hidden")
    page.clock.run_for(120_000)
    set_visibility(page, "visible")
    tracker.wait_for(lambda: len(tracker.heartbeats()) == 2)  # at once, not 30 s later
    page.wait_for_timeout(200)
    assert len(tracker.heartbeats()) == 2  # nothing was sent while hidden

    page.clock.run_for(30_000)  # and the cadence resumes
    tracker.wait_for(lambda: len(tracker.heartbeats()) == 3)


def test_a_session_the_daemon_let_go_is_replaced_by_a_new_one(
        page: Page, site: Site, tracker: StubTracker) -> None:
    page.clock.install()
    open_numbers(page, site)
    tracker.end_session("s1")

    page.clock.run_for(30_000)  # heartbeat -> 404 -> a new session, a new number
    expect(page.locator("#header-tel")).to_have_text(SECOND)

    posts = tracker.session_posts()
    assert len(posts) == 2 and posts[0].body["visitor_id"] == posts[1].body["visitor_id"]
    # Named, so the daemon can give the same number back if it is still free.
    assert "session_id" not in posts[0].body
    assert posts[1].body["session_id"] == "s1"
    # Every place shows the new number, still in its own format.
    assert href(page, "#header-tel") == "tel:+74950000102"
    assert text(page, "#national") == "Звоните бесплатно: 8 (495) 000-01-02"
    assert text(page, "#compact") == "WhatsApp: +74950000102"
    assert text(page, "#marked-tel") == SECOND
    assert page.evaluate("window.ctrack.number") == POOL[1]
    page.clock.run_for(30_000)
    tracker.wait_for(lambda: len(tracker.heartbeats("s2")) == 1)


# Answers a broken or hostile daemon could give: each is ignored as a whole.
BAD_ANSWERS = {
    "replace-not-a-list": {"replace": {"length": 3e8}},  # froze the page once
    "replace-too-long": {"replace": [f"+7495000{n:04d}" for n in range(21)]},
    "replace-entry-not-a-string": {"replace": [74951234567]},
    "replace-entry-too-short": {"replace": ["+74951234567", "+7 495"]},
    "replace-entry-too-long": {"replace": ["+74951234567" * 2]},
    "number-not-a-string": {"number": 74950000101},
    "number-too-long": {"number": "+74950000101123456"},
    "session-id-not-url-safe": {"session_id": "../../admin"},
    "session-id-too-long": {"session_id": "s" * 65},
    "session-id-not-a-string": {"session_id": 1},
}


def test_an_answer_that_fails_validation_is_ignored(page: Page, site: Site,
                                                    tracker: StubTracker) -> None:
    page.clock.install()  # kept across the page views below
    for case, answer in BAD_ANSWERS.items():
        tracker.state.answer = answer
        with page.expect_event("requestfinished", predicate=is_session_request):
            page.goto(site.page("numbers.html"))
        page.wait_for_timeout(100)

        assert text(page, "#header-tel") == ORIGINAL, case
        assert text(page, "#marked-tel") == "+7 (495) 765-43-21", case
        assert page.evaluate("window.ctrack.number") is None, case
    page.clock.run_for(60_000)
    page.wait_for_timeout(200)
    assert tracker.heartbeats() == []  # no answer was taken for a session


def test_the_heartbeat_period_is_at_least_5_seconds(page: Page, site: Site,
                                                    tracker: StubTracker) -> None:
    tracker.state.heartbeat_seconds = 0.01
    page.clock.install()
    open_numbers(page, site)

    page.clock.run_for(4_000)
    page.wait_for_timeout(200)
    assert tracker.heartbeats() == []
    page.clock.run_for(1_500)
    tracker.wait_for(lambda: len(tracker.heartbeats()) == 1)
    page.clock.run_for(10_000)
    tracker.wait_for(lambda: len(tracker.heartbeats()) == 3)


def renewal_fails(page: Page, tracker: StubTracker) -> None:
    """End the session; the heartbeat gets a 404 and the renewal fails."""
    tracker.end_session("s1")
    page.clock.run_for(30_000)
    # At least 2: when a reused keep-alive socket closes with no answer
    # ("drop"), Chromium itself may send the same request once more.
    tracker.wait_for(lambda: len(tracker.session_posts()) >= 2)


@pytest.mark.parametrize("failure", ["429", "500", "hang", "drop"])
def test_a_failed_renewal_puts_the_office_numbers_back_and_retries(
        failure: str, page: Page, site: Site, tracker: StubTracker) -> None:
    page.clock.install()
    open_numbers(page, site)
    tracker.state.sessions_fail = failure
    renewal_fails(page, tracker)

    # The pool number is the daemon's no more: every swapped node shows
    # what it showed before, text and href.
    expect(page.locator("#header-tel")).to_have_text(ORIGINAL, timeout=6000)
    assert href(page, "#header-tel") == "tel:+74951234567"
    assert text(page, "#national") == "Звоните бесплатно: 8 (495) 123-45-67"
    assert text(page, "#dashes") == "Отдел продаж: 8-495-123-45-67, позвонить"
    assert href(page, "#dashes-tel") == "tel:8-495-123-45-67"
    assert text(page, "#nbsp") == "Склад: +7\u00a0495\u00a0123\u00a045\u00a067"
    assert text(page, "#marked-tel") == "+7 (495) 765-43-21"
    assert page.locator("#marked-tel b").inner_text() == "+7 (495)"
    assert href(page, "#marked-tel") == "tel:+74957654321"
    assert text(page, "#hours") == ("Пн–Пт 09.00–18.00, с 12.03.2024: 8 (495) 765-43-21, "
                                    "факс 8 (495) 222-33-44")
    assert page.evaluate("window.ctrack.number") is None
    # Nor is the page followed meanwhile.
    page.evaluate("""() => {
        const p = document.createElement('p');
        p.id = 'added';
        p.textContent = '+7 (495) 123-45-67';
        document.getElementById('later').appendChild(p);
    }""")
    page.wait_for_timeout(100)
    assert text(page, "#added") == ORIGINAL

    # The daemon is back: the next try, 30 s on, swaps the page again.
    tracker.state.sessions_fail = ""
    page.clock.run_for(31_000)
    expect(page.locator("#header-tel")).to_have_text(SECOND)
    assert tracker.session_posts()[-1].body["session_id"] == "s1"
    assert href(page, "#header-tel") == "tel:+74950000102"
    assert text(page, "#marked-tel") == SECOND
    assert text(page, "#added") == SECOND
    assert page.evaluate("window.ctrack.number") == POOL[1]


def test_failed_renewals_are_retried_less_and_less_often_while_visible(
        page: Page, site: Site, tracker: StubTracker) -> None:
    page.clock.install()
    open_numbers(page, site)
    tracker.state.sessions_fail = "500"
    renewal_fails(page, tracker)
    expect(page.locator("#header-tel")).to_have_text(ORIGINAL)

    def next_try_after(seconds: int) -> None:
        # The last try's failure was handled somewhere in the last 1 s of fake time
        # (inside the run_for(2000) below, or right after it when the machine is
        # slow, with the clock stopped at its end): the next try is due `seconds`
        # after that, so "not yet" is checked 1.5 s short of it, "now" 0.5 s past.
        posts = len(tracker.session_posts())
        page.clock.run_for(seconds * 1000 - 1500)
        page.wait_for_timeout(100)
        assert len(tracker.session_posts()) == posts, f"tried before {seconds} s"
        page.clock.run_for(2000)
        tracker.wait_for(lambda: len(tracker.session_posts()) == posts + 1)
        page.wait_for_timeout(300)  # the failure handled, the next try planned

    for seconds in (30, 60, 120, 240, 300, 300):  # doubling, up to 5 min
        next_try_after(seconds)
    assert tracker.heartbeats("s1")[-1:] and len(tracker.heartbeats()) == 1  # no beats meanwhile

    # A hidden tab does not ask. Back in view, it waits for a try that is
    # not yet due, and makes one that is overdue at once.
    set_visibility(page, "hidden")
    posts = len(tracker.session_posts())
    page.clock.run_for(200_000)
    set_visibility(page, "visible")
    page.clock.run_for(95_000)
    page.wait_for_timeout(100)
    assert len(tracker.session_posts()) == posts
    page.clock.run_for(10_000)
    tracker.wait_for(lambda: len(tracker.session_posts()) == posts + 1)
    page.wait_for_timeout(200)
    posts += 1
    set_visibility(page, "hidden")
    page.clock.run_for(3_600_000)
    page.wait_for_timeout(200)
    assert len(tracker.session_posts()) == posts
    tracker.state.sessions_fail = ""
    set_visibility(page, "visible")
    expect(page.locator("#header-tel")).to_have_text(SECOND)
    assert all(r.body["session_id"] == "s1" for r in tracker.session_posts()[1:])
    page.clock.run_for(30_000)  # and the new session beats at its own cadence
    tracker.wait_for(lambda: len(tracker.heartbeats("s2")) == 1)
