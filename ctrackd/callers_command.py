"""`ctrackd callers` and `ctrackd caller NUMBER`: who calls, how often, from where.

One card per caller number (E.164): the first call and where it came from
(first touch), the latest and where it came from (last touch), how many
calls, answered, missed and target calls. `caller NUMBER` adds the whole
history of that number, each call marked first or repeat. Withheld numbers
make no card (they are nobody in particular): they are counted apart.
The SQL is in `store/callers.py`; this file is arguments and output.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
from typing import Any

from ctrackd import output
from ctrackd.output import Column
from ctrackd.store import callers as store
from ctrackd.store import queries


def callers_arguments(p: argparse.ArgumentParser, range_arguments: Any, format_argument: Any,
                      count: Any) -> None:
    range_arguments(p)
    p.add_argument("--channel", metavar="KEY",
                   help="only callers with a call of this channel in the period")
    p.add_argument("--min-calls", type=count, default=1, metavar="N",
                   help="only callers with at least N calls in the period (2: repeat callers)")
    p.add_argument("--limit", type=count, default=50, metavar="N",
                   help="at most N callers, the latest first (default 50, 0 = all)")
    p.add_argument("--full-numbers", action="store_true",
                   help="show full numbers in the table (masked by default)")
    format_argument(p, "json: one array, a caller an object")


def caller_arguments(p: argparse.ArgumentParser, format_argument: Any) -> None:
    p.add_argument("number", metavar="NUMBER",
                   help="the caller's number in any spelling (+7916..., 8916..., 916...)")
    format_argument(p, "json: the card and its calls (`history`, oldest first); csv: the calls")


def print_callers(args: argparse.Namespace, conn: sqlite3.Connection, width: int) -> None:
    cards = store.list_callers(conn, since=args.since, until=args.until, channel=args.channel,
                               min_calls=max(1, args.min_calls), limit=args.limit or None)
    # Withheld calls make no card; they are told apart only where a card could
    # have counted them: never under --min-calls 2+ (a withheld call is nobody's
    # repeat), and with --channel only that channel's.
    withheld = store.withheld_calls(conn, since=args.since, until=args.until,
                                    channel=args.channel) if args.min_calls <= 1 else 0
    note = (f"{withheld} call{'s' if withheld != 1 else ''} from withheld numbers"
            f"{' of ' + args.channel if args.channel else ''} (no card)") if withheld else None
    if args.format != "table":
        output.write_rows(args.format, cards, store.CARD_FIELDS)
    elif cards:
        number = output.text if args.full_numbers else output.mask_number
        sys.stdout.write(output.render_table(cards, [
            Column("caller", "NUMBER", number, min_width=12, max_width=16),
            Column("first_call_at", "FIRST CALL", output.local_time, min_width=11, max_width=11),
            Column("first_touch", "FIRST TOUCH", min_width=8, max_width=24),
            Column("last_touch", "LAST TOUCH", min_width=8, max_width=24),
            Column("calls", "CALLS", align=">"),
            Column("answered", "ANS", align=">"),
            Column("missed", "MISS", align=">"),
            Column("target_calls", "TARGET", align=">"),
        ], width=width))
    else:
        print("ctrackd: no callers match", file=sys.stderr)
    if note and args.format == "table" and cards:  # the reader sees it under the table
        print(f"+ {note}")
    elif note:  # a script's output stays rows only
        print(f"ctrackd: note: {note}", file=sys.stderr)


def print_caller(args: argparse.Namespace, conn: sqlite3.Connection, number: str,
                 width: int) -> bool:
    """The card and the history of `number` (E.164); False when it never called."""
    card, calls = store.caller_history(conn, number)
    if card is None:
        return False
    if args.format == "json":
        sys.stdout.write(json.dumps({**card, "history": calls}, ensure_ascii=False, indent=2)
                         + "\n")
    elif args.format == "csv":
        output.write_csv(calls, queries.CALL_FIELDS, sys.stdout)
    else:
        sys.stdout.write(_card_text(card))
        sys.stdout.write(output.render_table(calls, [
            Column("started_at", "TIME", output.local_time, min_width=11, max_width=11),
            Column("first_time", "CALL", _first_or_repeat, min_width=6, max_width=6),
            Column("channel", "CHANNEL", min_width=7, max_width=20),
            Column("status", "STATUS", min_width=9, max_width=9),
            Column("talk_seconds", "TALK", output.seconds, ">", min_width=4, max_width=8),
            Column("target", "TARGET", output.yes_no, min_width=6, max_width=6),
            Column("target_rule", "WHY", _rule_reason, min_width=4, max_width=40),
        ], width=width))
    return True


def _card_text(card: dict[str, Any]) -> str:
    def plural(n: int, word: str) -> str:
        return f"{n} {word}{'' if n == 1 else 's'}"
    return (f"{card['caller']}: {plural(card['calls'], 'call')}, {card['answered']} answered,"
            f" {card['missed']} missed, {plural(card['target_calls'], 'target call')}\n"
            f"first call  {output.local_time(card['first_call_at'])}"
            f"  {output.text(card['first_touch'])}\n"
            f"last call   {output.local_time(card['last_call_at'])}"
            f"  {output.text(card['last_touch'])}\n\n")


def _first_or_repeat(first_time: bool | None) -> str:
    return "-" if first_time is None else "first" if first_time else "repeat"


def _rule_reason(rule: str | None) -> str:
    """`channel avito: not target: talk 12 s < 60 s` -> `talk 12 s < 60 s`: the table has
    the channel and the verdict in their own columns; JSON and CSV keep the whole rule."""
    if not rule:
        return "-"
    return rule.split(": ", 1)[-1].removeprefix("not target: ")
