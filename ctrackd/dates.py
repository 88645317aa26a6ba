"""Times as an admin types them on the command line: `today`, `-2h`, `2026-11-22`.

An admin over SSH thinks in local time and in "since yesterday", not in
epoch seconds, so `--since`/`--until` accept ISO dates and datetimes (naive
means this machine's local time), the words `today`, `yesterday`, `now`, and
relative offsets into the past. Everything becomes epoch seconds, the store's
unit. A bad value is an argparse error (usage, a sentence, exit 2).

`--until` with a whole day (`2026-11-22`, `today`) means the END of that day,
so `--since 2026-11-01 --until 2026-11-30` includes the 30th, as people mean.
"""

from __future__ import annotations

import argparse
import re
import time
from collections.abc import Sequence
from datetime import date, datetime, timedelta

_RELATIVE = re.compile(r"^-?(\d+)\s*([mhdw])$")
_UNIT_SECONDS = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}

HELP = ("ISO date or datetime (naive = local time, e.g. 2026-11-22 or 2026-11-22T08:00), "
        "today, yesterday, now, or ago as -30m, -2h, -7d, -1w")


def parse_when(text: str, *, end_of_day: bool = False, now: float | None = None) -> float:
    """Epoch seconds for `text`; ValueError with a sentence when it is no time.

    `end_of_day`: a whole day (a bare date, today, yesterday) means its end
    (the next local midnight) rather than its start.
    """
    now = time.time() if now is None else now
    value = text.strip().lower()
    if value == "now":
        return now
    if value in ("today", "yesterday"):
        day = datetime.fromtimestamp(now).date()
        return _day_edge(day - timedelta(days=value == "yesterday"), end_of_day)
    match = _RELATIVE.match(value)
    if match:
        if len(match.group(1)) > 9:  # beyond ~30 years of minutes: no call is that old
            raise ValueError(f"{text!r} is too far back: expected at most 9 digits")
        return now - int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
            return _day_edge(date.fromisoformat(value), end_of_day)
        # fromisoformat (3.11) takes `T` or a space, seconds optional, `Z` or an offset.
        return datetime.fromisoformat(text.strip()).timestamp()
    except (ValueError, OverflowError):  # 9999-12-31 is a date, its end is not
        pass
    raise ValueError(f"cannot read {text!r} as a time: expected {HELP}")


def since_arg(text: str) -> float:
    """argparse `type=` for --since."""
    return _as_argparse(text, end_of_day=False)


def until_arg(text: str) -> float:
    """argparse `type=` for --until (a whole day counts to its end)."""
    return _as_argparse(text, end_of_day=True)


def attach_relative_values(argv: Sequence[str], options: Sequence[str]) -> list[str]:
    """Turn `--since -2h` into `--since=-2h` before argparse sees it.

    argparse takes any word starting with `-` (other than a plain negative
    number) for an option, so `--since -2h` would fail with "expected one
    argument"; the `=` form is unambiguous.
    """
    out: list[str] = []
    words = iter(argv)
    for word in words:
        if word in options:
            value = next(words, None)
            if value is not None and value.startswith("-") and not value.startswith("--"):
                out.append(f"{word}={value}")
                continue
            out.append(word)
            if value is not None:
                out.append(value)
            continue
        out.append(word)
    return out


def _as_argparse(text: str, *, end_of_day: bool) -> float:
    try:
        return parse_when(text, end_of_day=end_of_day)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _day_edge(day: date, end_of_day: bool) -> float:
    if end_of_day:
        day += timedelta(days=1)
    # Naive local midnight; timestamp() goes through mktime, so DST is right.
    return datetime(day.year, day.month, day.day).timestamp()
