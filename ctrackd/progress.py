"""Progress bars for the long commands (export, spend import, big reports): tqdm on stderr.

Only on a terminal: when stderr is not a tty (a pipe, a file, cron, CI) the
bar is tqdm's no-op, so logs and captured output never fill with carriage
returns. A bar shows after DELAY seconds only: a command that ends sooner
never flashes one. It is cleared when done (`leave=False`), so the
command's own summary lines read as before. `CTRACKD_PROGRESS=0` turns bars
off on a terminal too; `=1` forces them on (tests, screen recordings).
"""

from __future__ import annotations

import os
import sqlite3
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TextIO

from tqdm import tqdm

#: seconds before a bar appears
DELAY = 0.5
#: SQLite virtual-machine steps between two ticks of a query's timer
QUERY_TICK = 200_000


def enabled(stream: TextIO | None = None) -> bool:
    forced = os.environ.get("CTRACKD_PROGRESS")
    if forced in ("0", "1"):
        return forced == "1"
    stream = sys.stderr if stream is None else stream
    return bool(getattr(stream, "isatty", lambda: False)())


def bar(desc: str, *, total: int | None = None, unit: str = "rows",
        stream: TextIO | None = None, delay: float = DELAY) -> Any:
    """A tqdm bar (a no-op one when not on a terminal); use it as a context manager."""
    stream = sys.stderr if stream is None else stream
    return tqdm(total=total, desc=desc, unit=unit, file=stream, disable=not enabled(stream),
                delay=delay, leave=False, dynamic_ncols=True, mininterval=0.2)


def counter(progress: Any) -> Callable[[int], None]:
    """A `done -> None` callback (how many so far, as `run_export(progress=)` calls it)."""
    def tell(done: int) -> None:
        if done > progress.n:
            progress.update(done - progress.n)
    return tell


@contextmanager
def timing(conn: sqlite3.Connection, desc: str, *,
           stream: TextIO | None = None, delay: float = DELAY) -> Iterator[None]:
    """A running timer while `conn` works on the queries inside (a big report).

    SQLite cannot say how far a GROUP BY has come, so this shows the time
    spent rather than a share done; SQLite's progress handler drives it.
    """
    stream = sys.stderr if stream is None else stream
    if not enabled(stream):
        yield
        return
    shown = tqdm(desc=desc, file=stream, delay=delay, leave=False, dynamic_ncols=True,
                 bar_format="{desc}: {elapsed}", mininterval=0.2)

    def tick() -> int:
        shown.update(1)
        return 0  # 0: go on

    conn.set_progress_handler(tick, QUERY_TICK)
    try:
        yield
    finally:
        conn.set_progress_handler(None, 0)
        shown.close()
