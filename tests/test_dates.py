"""Command-line times: what an admin types for --since/--until, in a time zone that is not UTC.

The machine's zone is set to Moscow (UTC+3, no DST) so that "naive means
local" is visible: a test passing under UTC alone would prove nothing.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator
from datetime import datetime, timezone

import pytest

from ctrackd.dates import attach_relative_values, parse_when, since_arg, until_arg

# 2026-11-22 10:30:00 in Moscow
NOW = datetime(2026, 11, 22, 7, 30, tzinfo=timezone.utc).timestamp()
MIDNIGHT = datetime(2026, 11, 21, 21, 0, tzinfo=timezone.utc).timestamp()  # 22nd, 00:00 MSK
DAY = 86400


@pytest.fixture(autouse=True)
def moscow(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TZ", "Europe/Moscow")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.parametrize("text, start, end", [
    ("now", NOW, NOW),
    ("today", MIDNIGHT, MIDNIGHT + DAY),
    ("Yesterday", MIDNIGHT - DAY, MIDNIGHT),
    ("-30m", NOW - 1800, NOW - 1800),
    ("-2h", NOW - 7200, NOW - 7200),
    ("-7d", NOW - 7 * DAY, NOW - 7 * DAY),
    ("-1w", NOW - 7 * DAY, NOW - 7 * DAY),
    ("2h", NOW - 7200, NOW - 7200),
    ("2026-11-22", MIDNIGHT, MIDNIGHT + DAY),
    ("2026-11-22T08:00", MIDNIGHT + 8 * 3600, MIDNIGHT + 8 * 3600),
    ("2026-11-22 08:00:30", MIDNIGHT + 8 * 3600 + 30, MIDNIGHT + 8 * 3600 + 30),
    ("2026-11-22T08:00Z", MIDNIGHT + 11 * 3600, MIDNIGHT + 11 * 3600),
    ("2026-11-22T08:00+01:00", MIDNIGHT + 10 * 3600, MIDNIGHT + 10 * 3600),
])
def test_accepted_forms(text: str, start: float, end: float) -> None:
    assert parse_when(text, now=NOW) == start
    assert parse_when(text, now=NOW, end_of_day=True) == end


@pytest.mark.parametrize("text", ["", "soon", "-2y", "2026-13-01", "22.11.2026", "--2h"])
def test_rejected_with_a_sentence(text: str) -> None:
    with pytest.raises(ValueError, match="cannot read .* as a time: expected ISO date"):
        parse_when(text, now=NOW)


def test_argparse_types_and_negative_values() -> None:
    parser = argparse.ArgumentParser(exit_on_error=False)
    parser.add_argument("--since", type=since_arg)
    parser.add_argument("--until", type=until_arg)
    words = attach_relative_values(["--since", "-2h", "--until", "today"], ["--since", "--until"])
    assert words == ["--since=-2h", "--until", "today"]
    args = parser.parse_args(words)
    assert abs(args.since - (time.time() - 7200)) < 5 and args.until > time.time()
    with pytest.raises(argparse.ArgumentTypeError, match="cannot read 'x'"):
        since_arg("x")
    # A trailing option with no value is left for argparse to complain about.
    assert attach_relative_values(["calls", "--since"], ["--since"]) == ["calls", "--since"]


@pytest.mark.parametrize("text", ["9999-12-31", "-1" + "0" * 400 + "d", "0001-01-01T00:00"])
def test_edges_of_the_calendar_are_clear_errors(text: str) -> None:
    """A date past the last representable time is a sentence, not an OverflowError."""
    try:
        value = parse_when(text, end_of_day=True)
    except ValueError as exc:
        assert "cannot read" in str(exc) or "too far back" in str(exc)
    else:
        assert isinstance(value, float)
