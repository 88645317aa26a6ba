"""How the snippet writes the new number in the shape of the old one.

`ctrack.format(old_text, new_number)`, called in the browser: the same code
that swaps the page, on a table of the ways people write numbers.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Page

from .stub import Site, closed_port

CASES = [
    # (as written on the page, the session's number, as the page shows it)
    ("+7 (495) 123-45-67", "+74950000101", "+7 (495) 000-01-01"),
    ("8 (495) 123-45-67", "+74950000101", "8 (495) 000-01-01"),
    ("(495) 123-45-67", "+74950000101", "(495) 000-01-01"),
    ("+74951234567", "+74950000101", "+74950000101"),
    ("74951234567", "+74950000101", "74950000101"),
    ("84951234567", "+74950000101", "84950000101"),
    ("8-495-123-45-67", "+74950000101", "8-495-000-01-01"),
    ("+7\u00a0495\u00a0123\u201145\u201167", "+74950000101", "+7\u00a0495\u00a0000\u201101\u201101"),
    ("8 800 555-35-35", "+78005550000", "8 800 555-00-00"),
    # St Petersburg's code starts with 8: a city code, not a trunk prefix.
    ("(812) 555-01-02", "+78125559999", "(812) 555-99-99"),
    ("+1 (212) 555-0100", "+12125550199", "+1 (212) 555-0199"),
    ("(212) 555-0100", "+12125550199", "(212) 555-0199"),
    ("020 7946 0958", "+442079460000", "020 7946 0000"),
    ("+44 20 7946 0958", "+442079460000", "+44 20 7946 0000"),
    # Another digit count: the plain international number, never a grouping
    # that misleads.
    ("+7 (495) 123-45-67", "+375291234567", "+375291234567"),
    ("8 (495) 123-45-67", "+7495000010", "+7495000010"),
    ("(495) 123-45-67", "+749500001011", "+749500001011"),
    ("+49 30 1234567", "+4930765432", "+4930765432"),
]


@pytest.fixture(scope="module")
def format_page(browser: Browser) -> Iterator[Page]:
    # One page for the whole table; the daemon is deliberately unreachable.
    site = Site(script="", endpoint=f"http://127.0.0.1:{closed_port()}")
    site.script = site.url
    site.start()
    context = browser.new_context()
    page = context.new_page()
    page.goto(site.page("blank.html"))
    yield page
    context.close()
    site.stop()


@pytest.mark.parametrize(("old", "number", "shown"), CASES)
def test_the_new_number_takes_the_shape_of_the_old_one(
        format_page: Page, old: str, number: str, shown: str) -> None:
    assert format_page.evaluate("([old, number]) => ctrack.format(old, number)",
                                [old, number]) == shown
