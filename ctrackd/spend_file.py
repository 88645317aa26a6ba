"""Reading ad-spend files: the cost reports Yandex Direct and Google Ads export, or a plain CSV.

Pure apart from the bytes it is given: `read_spend(data, ...)` returns the
day rows (summed per day and keys: a report by ad group or keyword has
several rows per campaign and day) or every bad row with its line number;
the command writes nothing unless the whole file is good (docs/reports.md).

What it copes with, because that is what the exports look like:
- a title line or two before the header (Direct's report name, Google Ads'
  report name and date range) and summary lines after the rows (Direct's
  `Total rows: N`, Google Ads' `Total: ...`), skipped and counted;
- comma, semicolon or tab between columns; UTF-8 (with or without BOM),
  UTF-16 with BOM (Google Ads' "Excel CSV"), else Windows-1251 (Russian Excel);
- amounts with a decimal comma or point and thousand separators (space,
  no-break space, apostrophe, or the other mark): `1 234,56`, `1,234.56`,
  `1.234,56`; a lone `1,234` is read by the file's other amounts, else as a
  decimal comma in a `;`/tab file and a thousands comma in a `,` file;
- money in millionths: a column named `...micros` (Google Ads API), or `--micros`
  (Yandex Direct API without `returnMoneyInMicros: false`);
- days as 2026-11-01, 01.11.2026 or 2026/11/01.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from datetime import date

from ctrackd.configcalls import SPEND_KEYS
from ctrackd.store.spend import SpendRow

FIELDS = ("day", "amount", *SPEND_KEYS, "currency")
#: header names (lower case, brackets and what follows a comma dropped) -> field
ALIASES: dict[str, str] = {
    **dict.fromkeys(("day", "date", "дата", "день", "segments.date"), "day"),
    **dict.fromkeys(("amount", "cost", "spend", "расход", "расходы", "стоимость", "затраты",
                     "cost_micros", "costmicros", "metrics.cost_micros"), "amount"),
    **dict.fromkeys(("channel", "канал"), "channel"),
    **dict.fromkeys(("source", "utm_source", "источник"), "source"),
    **dict.fromkeys(("medium", "utm_medium"), "medium"),
    **dict.fromkeys(("campaign", "campaign name", "campaignname", "campaign.name",
                     "utm_campaign", "кампания", "название кампании"), "campaign"),
    **dict.fromkeys(("term", "utm_term", "keyword", "search keyword", "criterion", "criteria",
                     "ключевая фраза", "фраза", "условие показа",
                     "ad_group_criterion.keyword.text"), "term"),
    **dict.fromkeys(("currency", "currency code", "currencycode", "customer.currency_code",
                     "валюта"), "currency"),
}
HEADER_HELP = ("a header row naming at least a day column (day, date, Дата) and an amount"
               " column (amount, cost, Расход), optionally channel, source, medium,"
               " campaign (Campaign, CampaignName, Кампания), term (keyword, Criterion,"
               " Ключевая фраза) and currency (Currency code)")
_EMPTY = {"", "-", "--", "—", "n/a"}
_CURRENCY = re.compile(r"^[A-Z]{3}$")
_HEADER_LINES = 10          # a header further down than this is no header


class SpendFileError(Exception):
    """The file as a whole cannot be read (no header, undecodable...)."""


@dataclass
class SpendFile:
    rows: list[SpendRow] = field(default_factory=list)   # summed per day and keys
    errors: list[str] = field(default_factory=list)      # "line N: column: what is wrong"
    read: int = 0                                        # data rows read
    skipped: int = 0                                     # title and summary lines
    columns: dict[str, str] = field(default_factory=dict)   # field -> header as written
    ignored: list[str] = field(default_factory=list)     # headers not used (Clicks, ...)


def decode(data: bytes) -> str:
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return data.decode("utf-16")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("cp1251")


def read_spend(data: bytes, *, origin: str, channels: Collection[str],
               currency: str | None = None, channel: str | None = None,
               mapping: Mapping[str, str] | None = None, micros: bool = False) -> SpendFile:
    """Every row of the file as spend rows, or its errors (both can be partial: check errors)."""
    text = decode(data)
    lines = text.splitlines()
    header_at, delimiter, columns = _find_header(lines, mapping or {})
    result = SpendFile(columns={f: name for f, (_, name) in columns.items()},
                       skipped=header_at)
    header = next(csv.reader([lines[header_at]], delimiter=delimiter))
    used = {i for i, _ in columns.values()}
    result.ignored = [name for i, name in enumerate(header) if i not in used and name.strip()]
    micros = micros or "micros" in columns["amount"][1].lower()
    raw: list[tuple[int, list[str]]] = []
    reader = csv.reader((line + "\n" for line in lines[header_at + 1:]), delimiter=delimiter)
    after = 0  # lines the reader has taken: a quoted cell may hold line breaks
    for cells in reader:
        line, after = header_at + 2 + after, reader.line_num  # the line the row starts on
        if not any(c.strip() for c in cells):
            continue
        if _is_summary(cells, columns):
            result.skipped += 1
            continue
        if len(cells) > len(header) and any(c.strip() for c in cells[len(header):]):
            # `1234,56` unquoted in a comma file: a silent 1234 would be the wrong spend
            result.errors.append(
                f"line {line}: {len(cells)} fields where the header has {len(header)}: a"
                f" decimal comma in a comma-separated file must be quoted (\"1234,56\")")
            continue
        raw.append((line, cells))
    amounts = [_cell(cells, columns["amount"][0]) for _, cells in raw]
    mark = _decimal_mark(amounts, delimiter)
    summed: dict[tuple[str, ...], SpendRow] = {}
    for line, cells in raw:
        result.read += 1
        row = _row(line, cells, columns, result.errors, origin=origin, channels=channels,
                   currency=currency, channel=channel, mark=mark, micros=micros)
        if row is None:
            continue
        before = summed.get(row.key)
        if before is not None and before.currency != row.currency:
            result.errors.append(f"line {line}: currency: {row.currency} where an earlier row"
                                 f" of the same day and keys has {before.currency}")
            continue
        summed[row.key] = replace(row, amount=before.amount + row.amount) if before else row
    result.rows = sorted(summed.values(), key=lambda r: r.key)
    return result


def _find_header(lines: list[str], mapping: Mapping[str, str]
                 ) -> tuple[int, str, dict[str, tuple[int, str]]]:
    """(line index, delimiter, field -> (column index, header)) of the header row."""
    wanted = {name.strip().lower(): f for f, name in mapping.items()}
    near: tuple[int, list[str]] | None = None  # a header with a day but not all --map columns
    for at, line in enumerate(lines[:_HEADER_LINES]):
        for delimiter in ("\t", ";", ","):
            if delimiter not in line:
                continue
            header = next(csv.reader([line], delimiter=delimiter))
            columns: dict[str, tuple[int, str]] = {}
            for i, name in enumerate(header):
                lowered = name.strip().strip("\ufeff").lower()
                if lowered in wanted:
                    f: str | None = wanted[lowered]
                else:
                    f = ALIASES.get(_normal(name))
                    if f is None or f in mapping:  # --map named another column for it
                        continue
                if f in columns:
                    raise SpendFileError(
                        f"line {at + 1}: columns {columns[f][1]!r} and {name!r} both give the"
                        f" {f}: say which with --map {f}=COLUMN")
                columns[f] = (i, name.strip())
            if "day" in columns and near is None:
                near = (at, header)
            if "day" in columns and "amount" in columns:
                missing = [f for f in mapping if f not in columns]
                if missing:
                    raise SpendFileError(f"line {at + 1}: no column {mapping[missing[0]]!r}"
                                         f" for --map {missing[0]}")
                return at, delimiter, columns
    if near is not None and mapping:
        at, header = near
        lowered = {h.strip().strip("\ufeff").lower() for h in header}
        absent = [f for f, name in mapping.items() if name.strip().lower() not in lowered]
        if absent:
            raise SpendFileError(
                f"line {at + 1}: no column {mapping[absent[0]]!r} for --map {absent[0]}"
                f" (the header has: {', '.join(h.strip() for h in header if h.strip())})")
    raise SpendFileError(f"no header found in the first {_HEADER_LINES} lines: expected "
                         + HEADER_HELP)


def _normal(name: str) -> str:
    name = name.strip().strip("\ufeff").lower()
    name = re.sub(r"\(.*?\)", "", name).split(",")[0]
    return " ".join(name.split())


def _cell(cells: list[str], index: int) -> str:
    return cells[index].strip() if index < len(cells) else ""


def _is_summary(cells: list[str], columns: dict[str, tuple[int, str]]) -> bool:
    """Direct's `Total rows: N`, Google Ads' `Total: Account` lines: not spend of a day."""
    first = next((c.strip().lower() for c in cells if c.strip()), "")
    return first.startswith(("total", "итого", "всего")) and not re.match(
        r"^\d", _cell(cells, columns["day"][0]))


def _decimal_mark(amounts: list[str], delimiter: str) -> str:
    for raw in amounts:
        text = re.sub(r"[\s\u00a0\u202f']", "", raw)
        if "," in text and "." in text:
            return "," if text.rfind(",") > text.rfind(".") else "."
        for mark, other in ((",", "."), (".", ",")):
            if text.count(mark) > 1:
                return other
            if text.count(mark) == 1 and len(text) - text.index(mark) - 1 != 3:
                return mark
    return "." if delimiter == "," else ","


def parse_amount(raw: str, mark: str) -> float | None:
    text = re.sub(r"[\s\u00a0\u202f']", "", raw)
    text = text.replace("." if mark == "," else ",", "")
    text = text.replace(",", ".")
    if not re.fullmatch(r"-?\d+(\.\d+)?", text):
        return None
    return float(text)


def parse_day(raw: str) -> date | None:
    for pattern, order in ((r"(\d{4})-(\d{2})-(\d{2})", (1, 2, 3)),
                           (r"(\d{4})/(\d{2})/(\d{2})", (1, 2, 3)),
                           (r"(\d{2})\.(\d{2})\.(\d{4})", (3, 2, 1))):
        match = re.fullmatch(pattern, raw)
        if match:
            try:
                return date(*(int(match.group(i)) for i in order))
            except ValueError:
                return None
    return None


def _row(line: int, cells: list[str], columns: dict[str, tuple[int, str]], errors: list[str],
         *, origin: str, channels: Collection[str], currency: str | None,
         channel: str | None, mark: str, micros: bool) -> SpendRow | None:
    values = {f: _cell(cells, i) for f, (i, _) in columns.items()}
    for f in (*SPEND_KEYS, "currency"):
        if values.get(f, "").lower() in _EMPTY:
            values[f] = ""
    problems = []
    day = parse_day(values["day"])
    if day is None:
        problems.append(f"day: cannot read {values['day']!r} as a day (expected 2026-11-01,"
                        " 01.11.2026 or 2026/11/01)")
    amount = parse_amount(values["amount"], mark)
    if amount is None:
        problems.append(f"amount: cannot read {values['amount']!r} as an amount")
    elif amount < 0:
        problems.append(f"amount: {values['amount']!r} is negative")
    key_channel = values.get("channel") or channel
    if key_channel and key_channel not in channels:
        problems.append(f"channel: {key_channel!r} is not a channel of the config ("
                        + (", ".join(sorted(channels)) or "none defined") + ")")
    row_currency = values.get("currency", "").upper() or currency
    if row_currency and not _CURRENCY.match(row_currency):
        problems.append(f"currency: {values.get('currency')!r} is no ISO 4217 code such as"
                        " RUB")
    elif currency and row_currency != currency:
        problems.append(f"currency: {row_currency} in a file imported as {currency}")
    errors.extend(f"line {line}: {p}" for p in problems)
    if problems or day is None or amount is None:
        return None
    return SpendRow(day=day.isoformat(), amount=amount / 1e6 if micros else amount,
                    channel=key_channel or None, currency=row_currency or None, origin=origin,
                    **{k: values.get(k) or None for k in SPEND_KEYS if k != "channel"})

