"""Offline conversions for advertising systems: one module per receiving system.

Each module holds one `Format` (or two, Google Ads has calls and clicks):
which calls the system can take (`convert` gives a row, or the reason the
call is left out), how old they may be (`max_age`), and how the file is
written, exactly as the system documents it (docs/exports.md quotes each).
The store reads (`store/exports.py`) and the command (`export_command.py`)
are apart: a format here sees `ExportCall`s and the `exports:` settings
only, so tests feed it calls directly.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TextIO

from ctrackd.configcalls import ExportsConfig

#: a format's answer for one call: its row, or why it is left out (a sentence fragment)
Converted = Any
#: told how many calls were looked at so far (item 6 draws a progress bar with it)
Progress = Callable[[int], None]
PROGRESS_EVERY = 1000


@dataclass(frozen=True)
class Format:
    name: str                                   # the command word: yandex-metrica, ...
    help: str
    max_age: float | None                       # seconds before now the system still takes
    too_old: str                                # the reason given for calls older than that
    convert: Callable[[Any, ExportsConfig], Converted]   # ExportCall -> row | LeftOut
    write: Callable[[list[Any], TextIO, ExportsConfig], None]


@dataclass(frozen=True, slots=True)
class LeftOut:
    reason: str


def convert_all(calls: Iterable[Any], fmt: Format, settings: ExportsConfig,
                left_out: Counter[str], progress: Progress | None = None) -> list[Any]:
    """The rows of the calls the format takes; the others counted in `left_out` by reason."""
    rows = []
    for done, call in enumerate(calls, 1):
        result = fmt.convert(call, settings)
        if isinstance(result, LeftOut):
            left_out[result.reason] += 1
        else:
            rows.append(result)
        if progress is not None and done % PROGRESS_EVERY == 0:
            progress(done)
    return rows


def chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def number(value: float) -> str:
    """`1500`, `1499.5`: a dot as decimal separator (both systems ask for one), no exponent."""
    text = f"{value:.2f}".rstrip("0").rstrip(".")
    return text or "0"
