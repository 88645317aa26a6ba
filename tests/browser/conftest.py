"""Fixtures for the browser tests: one headless Chromium, a stub tracker and a
site per test, and pages that record every error the page sees.

The browser is Debian's /usr/bin/chromium (scripts/install-browser.sh), driven
by the Playwright Python package; `playwright install` is never used, as its
browser download cannot work on a network that reaches only package registries.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from .stub import Site, StubTracker

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Page

CHROMIUM = os.environ.get("CTRACK_CHROMIUM", "/usr/bin/chromium")
# As the machine notes say: without the background-networking flags Chromium
# keeps dialling Google's hosts, which this closed network refuses. Playwright
# adds --headless itself and gives each launch a fresh, temporary profile
# (--user-data-dir), removed when the browser closes.
FLAGS = [
    "--no-sandbox",  # we run as root in CI
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# The browser's own console lines for a failed request (connection refused,
# a 500): expected when the daemon is down, and not the snippet's doing.
NETWORK_NOISE = ("Failed to load resource", "net::ERR_")


# A page stuck in a script loop (an observer feeding itself, say) blocks
# page.evaluate forever: it has no timeout. Past this many seconds a test's
# browser is killed, so the stuck call fails and the run goes on, instead of
# hanging CI until its own limit.
HANG_SECONDS = 30


def own_browser_pids() -> list[int]:
    """Chromium browser processes started (through Playwright's driver) by
    this test process: the top of each Chromium tree, found by parent ids."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue  # gone meanwhile
            parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])

    def is_chromium(pid: int) -> bool:
        # By the binary, not CHROMIUM: Debian's /usr/bin/chromium is a shell
        # script that execs /usr/lib/chromium/chromium.
        try:
            return os.path.basename(os.readlink(f"/proc/{pid}/exe")) in {"chromium", "chrome"}
        except OSError:
            return False

    def is_ours(pid: int) -> bool:
        while pid > 1:
            pid = parents.get(pid, 0)
            if pid == os.getpid():
                return True
        return False

    return [pid for pid in parents
            if is_ours(pid) and is_chromium(pid) and not is_chromium(parents[pid])]


def kill_own_browsers() -> None:
    for pid in own_browser_pids():
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture(autouse=True)
def hang_watchdog() -> Iterator[None]:
    fired = threading.Event()

    def on_hang() -> None:
        fired.set()
        kill_own_browsers()

    timer = threading.Timer(HANG_SECONDS, on_hang)
    timer.daemon = True
    timer.start()
    yield
    timer.cancel()
    if fired.is_set():
        pytest.fail(f"the test hung for {HANG_SECONDS} s (a script loop in the page?): "
                    "its browser was killed, the tests after it cannot run")


@pytest.fixture(scope="package")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"{CHROMIUM} not found: run scripts/install-browser.sh (or set CTRACK_CHROMIUM)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the playwright package is missing: pip install -e '.[test]'")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        yield browser
        browser.close()


@pytest.fixture
def tracker() -> Iterator[StubTracker]:
    server = StubTracker()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def site(tracker: StubTracker) -> Iterator[Site]:
    server = Site(script=tracker.url, endpoint=tracker.url)
    server.start()
    yield server
    server.stop()


@dataclass
class Errors:
    """What went wrong inside pages: uncaught exceptions and console errors."""

    page_errors: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)

    def attach(self, page: Page) -> None:
        page.on("pageerror", lambda exc: self.page_errors.append(str(exc)))
        page.on("console", self._console)

    def _console(self, message: Any) -> None:
        if message.type == "error" and not any(n in message.text for n in NETWORK_NOISE):
            self.console_errors.append(message.text)


@pytest.fixture
def errors() -> Errors:
    return Errors()


@pytest.fixture
def browser_context_factory(browser: Browser, errors: Errors) -> Iterator[
        Callable[[], BrowserContext]]:
    """Makes fresh browser profiles (one per visitor); every page they open
    records its errors, and the test fails if a page saw any."""
    made: list[BrowserContext] = []

    def new_context() -> BrowserContext:
        ctx = browser.new_context(locale="ru-RU", viewport={"width": 900, "height": 700})
        ctx.set_default_timeout(5000)
        ctx.on("page", errors.attach)
        made.append(ctx)
        return ctx

    yield new_context
    for ctx in made:
        ctx.close()
    assert errors.page_errors == [], "the page saw uncaught errors"
    assert errors.console_errors == [], "the page logged errors"


@pytest.fixture
def context(browser_context_factory: Callable[[], BrowserContext]) -> BrowserContext:
    """The test's own visitor."""
    return browser_context_factory()


@pytest.fixture
def page(context: BrowserContext) -> Page:
    return context.new_page()


@pytest.fixture
def screenshot_dir(tmp_path: Path) -> Path:
    """Where screenshots go: CTRACK_SCREENSHOTS if set (to look at them), else tmp."""
    path = Path(os.environ.get("CTRACK_SCREENSHOTS", str(tmp_path)))
    path.mkdir(parents=True, exist_ok=True)
    return path
