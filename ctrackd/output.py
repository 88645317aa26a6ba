"""Rows out to people and programs: terminal tables, CSV, JSON.

Every listing command (calls, report, and later callers, missed, pools) has
the same three audiences: an admin reading over SSH in an 80-column
terminal, a marketer opening a spreadsheet, a script reading JSON. Commands
describe their columns once (`Column`); the rendering lives here.

Cell text comes from outside (caller-ID names are whatever the caller's
carrier sent), so the table strips control characters (no terminal escape
sequences) and the CSV defuses spreadsheet formulas.
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, TextIO

ELLIPSIS = "…"
SEPARATOR = "  "


def text(value: Any) -> str:
    return "-" if value is None or value == "" else str(value)


@dataclass(frozen=True, slots=True)
class Column:
    """One table column: which dict key, its title, how a value becomes a cell."""

    key: str
    title: str
    format: Callable[[Any], str] = text
    align: Literal["<", ">"] = "<"
    min_width: int = 0      # shrink no further (0: the title's width)
    max_width: int = 40     # never wider, even when there is room


def render_table(rows: Sequence[dict[str, Any]], columns: Sequence[Column], *,
                 width: int = 80, footer: Sequence[dict[str, Any]] = (),
                 widths: Sequence[int] | None = None, header: bool = True) -> str:
    """A plain-text table no wider than `width`; long cells end in an ellipsis.

    Columns take their content's width (see `fit_widths`) unless `widths` is
    given: output that grows line by line (`--follow`) must keep its columns
    from one batch to the next. `footer` rows (totals) come after a rule.
    """
    cells = [[_printable(c.format(row.get(c.key))) for c in columns] for row in rows]
    foot = [[_printable(c.format(row.get(c.key))) for c in columns] for row in footer]
    if widths is None:
        natural = [max([cell_width(r[i]) for r in cells + foot], default=0)
                   for i in range(len(columns))]
        widths = fit_widths(columns, natural, width)

    def line(values: Sequence[str]) -> str:
        parts = [_pad(truncate(v, w), w, c.align) for v, w, c in zip(values, widths, columns)]
        return SEPARATOR.join(parts).rstrip()

    lines = [line([c.title for c in columns])] if header else []
    lines += [line(r) for r in cells]
    if foot:
        lines.append("-" * (sum(widths) + len(SEPARATOR) * (len(columns) - 1)))
        lines += [line(r) for r in foot]
    return "\n".join(lines) + "\n" if lines else ""


def fit_widths(columns: Sequence[Column], natural: Sequence[int] | None = None,
               width: int = 80) -> list[int]:
    """Column widths that fit `width`: the content's (or max_width), then shrink.

    While the line is too wide, the widest columns that may still shrink give
    one character each, so long free text (names, channels) gives way first,
    and two columns of equal width (a first and a last touch) stay alike: one
    value is never cut in one column and whole in the next.
    """
    titles = [cell_width(c.title) for c in columns]
    wanted = natural if natural is not None else [c.max_width for c in columns]
    widths = [min(max(n, t), max(c.max_width, t)) for n, t, c in zip(wanted, titles, columns)]
    floors = [min(c.min_width or t, w) for c, t, w in zip(columns, titles, widths)]
    room = width - len(SEPARATOR) * (len(columns) - 1)
    while sum(widths) > room:
        shrinkable = [i for i, w in enumerate(widths) if w > floors[i]]
        if not shrinkable:
            break
        widest = max(widths[i] for i in shrinkable)
        for i in shrinkable:
            widths[i] -= widths[i] == widest
    return widths


def cell_width(value: str) -> int:
    """Terminal columns a string takes (East Asian wide characters take two)."""
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in value)


def truncate(value: str, width: int) -> str:
    if cell_width(value) <= width:
        return value
    out, used = "", 0
    for ch in value:
        w = cell_width(ch)
        if used + w > width - 1:
            break
        out, used = out + ch, used + w
    return out + ELLIPSIS


def write_csv(rows: Iterable[dict[str, Any]], fields: Sequence[str], out: TextIO, *,
              header: bool = True) -> None:
    writer = csv.DictWriter(out, fieldnames=list(fields), extrasaction="ignore",
                            lineterminator="\n")
    if header:
        writer.writeheader()
    for row in rows:
        writer.writerow({k: _csv_value(row.get(k)) for k in fields})


def csv_text(rows: Iterable[dict[str, Any]], fields: Sequence[str]) -> str:
    buffer = io.StringIO()
    write_csv(rows, fields, buffer)
    return buffer.getvalue()


def write_rows(fmt: str, rows: Sequence[dict[str, Any]], fields: Sequence[str],
               out: TextIO | None = None) -> bool:
    """`--format json` (one array) or `csv` (with a header) of `rows` to stdout; True when
    written, False for `table`, which each command lays out itself (columns, notes)."""
    out = sys.stdout if out is None else out
    if fmt == "json":
        out.write(json_array(rows))
    elif fmt == "csv":
        write_csv(rows, fields, out)
    else:
        return False
    return True


def json_array(rows: Sequence[dict[str, Any]]) -> str:
    """The whole result as ONE JSON array (what `--format json` prints)."""
    return json.dumps(list(rows), ensure_ascii=False, indent=2) + "\n"


def json_line(row: dict[str, Any]) -> str:
    """One object per line (JSON lines), for output that never ends (`--follow`)."""
    return json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n"


# Cell formatters shared by the commands.

def duration(seconds: float | None) -> str:
    """`0:07`, `12:34`, `1:02:03`: ring and talk times at a glance."""
    if seconds is None:
        return "-"
    total = int(round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def local_time(iso: str | None) -> str:
    """An ISO UTC time as `MM-DD HH:MM` in this machine's local time."""
    if not iso:
        return "-"
    return datetime.fromisoformat(iso).astimezone().strftime("%m-%d %H:%M")


def mask_number(number: str | None) -> str:
    """`+7916***4567`, masked as in the logs; `-` for no number."""
    if not number:
        return "-"
    from ctrackd.attribution.numbers import masked  # phonenumbers loads only when a table does
    return masked(number)


def waiting(seconds: float | None) -> str:
    """`12m`, `3h 05m`, `2d 04h`: how long somebody has waited, at a glance."""
    if seconds is None:
        return "-"
    minutes = int(seconds // 60)
    if minutes < 60:
        return f"{minutes}m"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h {minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d {hours:02d}h"


def seconds(value: float | None) -> str:
    """`75 s`, `0.5 s`: spelled as the target rules spell talk time (tenths rounded
    down, `attribution/targets.py`), so a table's TALK and its WHY agree."""
    if value is None:
        return "-"
    tenths = math.floor(value * 10 + 1e-9) / 10
    return f"{int(tenths)} s" if tenths == int(tenths) else f"{tenths:.1f} s"


def yes_no(value: bool | None) -> str:
    return "-" if value is None else "yes" if value else "no"


def percent(rate: float | None) -> str:
    return "-" if rate is None else f"{rate * 100:.0f}%"


def _pad(value: str, width: int, align: str) -> str:
    gap = " " * max(0, width - cell_width(value))
    return gap + value if align == ">" else value + gap


def _printable(value: str) -> str:
    # Control characters (ESC, CR, BEL...) from caller-ID data must not reach the terminal.
    return "".join("?" if unicodedata.category(ch)[0] == "C" else ch for ch in value)


def _csv_value(value: Any) -> Any:
    """A cell as JSON spells it where Python would not: `true`/`false`, not `True`/`False`,
    a dict or list as compact JSON, not `{'gclid': None}` (the same file read by a script
    or by `--format json` must mean the same)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list, tuple)):  # a session: JSON, not Python's repr
        return _defuse_formula(json.dumps(value, ensure_ascii=False, separators=(",", ":")))
    return _defuse_formula(value)


def _defuse_formula(value: Any) -> Any:
    """Keep spreadsheets from running a caller-ID name like `=HYPERLINK(...)`.

    A leading `+` or `-` is left alone on a plain number (`+79161234567`).
    """
    if not isinstance(value, str) or not value:
        return value
    first, rest = value[0], value[1:]
    if first in "=@\t\r" or (first in "+-" and not rest.replace(".", "", 1).isdigit()):
        return "'" + value
    return value
