"""`ctrackd spend import FILE` and `ctrackd spend list`: the ad spend that reports divide by.

    ctrackd spend import direct-november.tsv --channel yandex-direct --dry-run
    ctrackd spend import google-ads.csv --channel google-ads --currency RUB
    ctrackd spend list --since 2026-11-01 --until 2026-11-30

Import reads the whole file first (`spend_file.read_spend`): every bad row
is reported with its line number and nothing is written unless the whole
file is good. Then one short transaction on a write connection with the
busy timeout (the daemon and ctrackd-agi write the same store; WAL keeps
readers going): rows are summed per day and keys, and a day and keys
imported again replace the stored amount (the `spend` table's unique key).
The config's budgets are not stored: `spend list` shows them beside the
imported rows for the days asked (origin `config`).
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import time
from collections.abc import Callable
from datetime import date, datetime
from pathlib import Path
from typing import Any

from ctrackd import output, progress
from ctrackd.output import Column
from ctrackd.spend_file import SpendFileError, read_spend
from ctrackd.store import queries, spend
from ctrackd.store.schema import StoreError, require_current

#: bad rows printed before "... and N more"
MAX_ERRORS = 30
LOCK_WAIT = 5.0


class SpendError(Exception):
    """A sentence for the admin (the CLI prints it and exits 1)."""


def spend_arguments(p: argparse.ArgumentParser,
                    range_arguments: Callable[[argparse.ArgumentParser], None],
                    format_argument: Callable[[argparse.ArgumentParser, str], None]) -> None:
    actions = p.add_subparsers(title="actions", metavar="ACTION", dest="action", required=True)
    imp = actions.add_parser(
        "import", help="import a cost report (CSV/TSV): day, amount and ad keys",
        description="Import ad spend from a CSV or TSV file: a Yandex Direct or Google Ads cost"
                    " report, or columns day, amount and any of channel, source, medium,"
                    " campaign, term, currency (docs/reports.md). Nothing is written unless"
                    " every row is good; a day imported again replaces that day's amount.")
    imp.add_argument("-c", "--config", default=argparse.SUPPRESS, metavar="FILE",
                     help="the config file (as before the action)")
    imp.add_argument("file", metavar="FILE", help="the file to import")
    imp.add_argument("--channel", metavar="KEY",
                     help="the channel of rows without a channel column (e.g. yandex-direct"
                          " for a Direct report)")
    imp.add_argument("--currency", metavar="CODE",
                     help="the file's currency (ISO 4217; default: spend.currency, else"
                          " exports.currency)")
    imp.add_argument("--map", action="append", default=[], metavar="FIELD=COLUMN",
                     help="take FIELD (day, amount, channel, source, medium, campaign, term,"
                          " currency) from COLUMN, e.g. campaign=CampaignId; repeatable")
    imp.add_argument("--micros", action="store_true",
                     help="amounts are in millionths (Yandex Direct API without"
                          " returnMoneyInMicros: false)")
    imp.add_argument("--dry-run", action="store_true",
                     help="check the file and say what would change; write nothing")
    ls = actions.add_parser("list", help="stored spend rows, and budgets for the days asked",
                            description="Spend per day and keys: imported rows (all, or in"
                                        " the range) and, with --since, the config's budgets"
                                        " for those days.")
    ls.add_argument("-c", "--config", default=argparse.SUPPRESS, metavar="FILE",
                    help="the config file (as before the action)")
    range_arguments(ls)
    format_argument(ls, "json: one array of rows")


def spend_command(args: argparse.Namespace, config: Any, width: int) -> int:
    if args.action == "import":
        return import_command(args, config)
    return list_command(args, config, width)


def _currency(config: Any) -> str | None:
    return config.spend.currency or config.exports.currency


def import_command(args: argparse.Namespace, config: Any, *, now: float | None = None) -> int:
    path = Path(args.file)
    mapping = _mapping(args.map)
    currency = args.currency.upper() if args.currency else _currency(config)
    if args.channel and args.channel not in config.channels:
        raise SpendError(f"--channel {args.channel!r} is not a channel of {args.config} ("
                         + (", ".join(sorted(config.channels)) or "none defined") + ")")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SpendError(f"cannot read {path}: {exc.strerror or exc}") from None
    with progress.bar(f"reading {path.name}", unit="B", total=len(data)) as shown:
        try:
            parsed = read_spend(data, origin=path.name, channels=set(config.channels),
                                currency=currency, channel=args.channel, mapping=mapping,
                                micros=args.micros)
        except SpendFileError as exc:
            raise SpendError(f"{path}: {exc}") from None
        shown.update(len(data))
    if parsed.errors:
        for line in parsed.errors[:MAX_ERRORS]:
            print(f"ctrackd: {path}: {line}", file=sys.stderr)
        if len(parsed.errors) > MAX_ERRORS:
            print(f"ctrackd: {path}: ... and {len(parsed.errors) - MAX_ERRORS} more",
                  file=sys.stderr)
        raise SpendError(f"{path}: {len(parsed.errors)} bad row"
                         f"{'s' if len(parsed.errors) != 1 else ''}: nothing imported")
    if not parsed.rows:
        raise SpendError(f"{path}: no spend rows under the header: nothing imported")
    with _writing(config.store.path) as conn:
        if args.dry_run:
            replaced = spend.existing(conn, parsed.rows)
            added = len(parsed.rows) - replaced
        else:
            added, replaced = spend.save(conn, parsed.rows,
                                         now=time.time() if now is None else now)
    _summary(path, parsed, added, replaced, args.dry_run)
    return 0


def _summary(path: Path, parsed: Any, added: int, replaced: int, dry_run: bool) -> None:
    total = sum(r.amount for r in parsed.rows)
    currencies = sorted({r.currency for r in parsed.rows if r.currency})
    used = ", ".join(f"{f}={name!r}" for f, name in parsed.columns.items())
    print(f"{path}: {parsed.read} row{'s' if parsed.read != 1 else ''} ({used}) ->"
          f" {len(parsed.rows)} day rows, {parsed.rows[0].day} to {parsed.rows[-1].day},"
          f" total {total:,.2f}{' ' + '/'.join(currencies) if currencies else ''}")
    verb = "would be" if dry_run else ""
    print(f"  {added} {verb + ' ' if verb else ''}added, {replaced} {verb + ' ' if verb else ''}"
          f"replaced (the same day and keys){'; dry run: nothing written' if dry_run else ''}")
    if parsed.skipped:
        print(f"  {parsed.skipped} title or total line{'s' if parsed.skipped != 1 else ''}"
              " skipped")
    if parsed.ignored:
        print(f"  columns not used: {', '.join(parsed.ignored)}")


def _mapping(items: list[str]) -> dict[str, str]:
    from ctrackd.spend_file import FIELDS
    mapping: dict[str, str] = {}
    for item in items:
        name, sep, column = item.partition("=")
        if not sep or name not in FIELDS or not column.strip():
            raise SpendError(f"--map {item!r}: expected FIELD=COLUMN with FIELD one of "
                             + ", ".join(FIELDS))
        mapping[name] = column.strip()
    return mapping


def list_command(args: argparse.Namespace, config: Any, width: int) -> int:
    first = _day(args.since)
    last = _day(args.until - 1e-6) if args.until is not None else None
    with _reading(config.store.path) as conn:
        if first is not None:
            last = last or date.today()
            rows = spend.spend_rows(conn, config.spend, first, last, _currency(config))
        else:
            rows = spend.stored(conn, None, last.isoformat() if last else None)
    dicts = [r.as_dict() for r in rows]
    if args.format != "table":
        output.write_rows(args.format, dicts, spend.COLUMNS)
    elif not dicts:
        print("ctrackd: no spend stored" + (" in that range" if first or last else ""),
              file=sys.stderr)
    else:
        total = {"day": "TOTAL", "amount": sum(r.amount for r in rows)}
        keys = [k for k in spend.KEYS if any(r[k] for r in dicts)]  # no empty columns
        columns = [Column("day", "DAY", min_width=10, max_width=10),
                   Column("amount", "AMOUNT", _money, ">", min_width=10),
                   Column("currency", "CUR", min_width=3, max_width=3),
                   *[Column(k, k.upper(), min_width=6, max_width=18) for k in keys],
                   Column("origin", "ORIGIN", min_width=6, max_width=16)]
        sys.stdout.write(output.render_table(dicts, columns, width=width, footer=[total]))
    return 0


def _money(value: Any) -> str:
    return "-" if value is None else f"{value:,.2f}".replace(",", " ")


def _day(ts: float | None) -> date | None:
    return None if ts is None else datetime.fromtimestamp(ts).date()


class _Connection:
    def __init__(self, path: Path, readonly: bool) -> None:
        self.path, self.readonly = path, readonly

    def __enter__(self) -> sqlite3.Connection:
        try:
            if not self.readonly and not Path(self.path).is_file():
                raise StoreError(f"no call store at {self.path}: has the daemon run yet?")
            self.conn = queries.connect(self.path, readonly=self.readonly,
                                        busy_timeout=LOCK_WAIT)
            if not self.readonly:
                try:
                    require_current(self.conn, self.path)
                except StoreError:
                    self.conn.close()
                    raise
        except sqlite3.Error as exc:
            raise SpendError(f"cannot open the call store {self.path}: {exc}") from None
        return self.conn

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> None:
        self.conn.close()
        if isinstance(exc, sqlite3.Error):
            if "locked" in str(exc) or "busy" in str(exc):
                raise SpendError(f"the call store {self.path} stayed locked for"
                                 f" {LOCK_WAIT:g} s (the daemon is busy?): try again") from None
            raise SpendError(f"cannot write the call store {self.path}: {exc}") from None


def _writing(path: Path) -> _Connection:
    return _Connection(path, readonly=False)


def _reading(path: Path) -> _Connection:
    return _Connection(path, readonly=True)
