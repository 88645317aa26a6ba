"""`ctrackd`: the admin's commands, one explicit table of subcommands.

The daemon runs under systemd; everything else an admin does over SSH goes
through here: check a config before a reload, read the calls, get a report.
Reads open the store read-only (WAL: the daemon never waits for us). Every
bad input ends in one clear sentence on stderr and exit 1 (2 for usage
errors, from argparse), never a traceback.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ctrackd import dates, output
from ctrackd.output import Column
from ctrackd.store import queries
from ctrackd.store.schema import StoreError

DEFAULT_CONFIG = os.environ.get("CTRACKD_CONFIG", "/etc/ctrackd/ctrackd.yaml")
FORMATS = ("table", "json", "csv")
LOCK_WAIT = 3.0        # seconds a read waits on a locked store before saying so
FOLLOW_INTERVAL = 1.0  # seconds between polls of `calls --follow`
# A poll re-reads this many seconds of changes: a row's updated_at is taken
# a little before its transaction commits, so a strict "after the last
# change" could miss it. Duplicates are filtered out.
FOLLOW_OVERLAP = 10.0


class CliError(Exception):
    """A sentence for the admin; the command exits 1."""


@dataclass(frozen=True)
class Command:
    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def main(argv: Sequence[str] | None = None) -> int:
    words = dates.attach_relative_values(sys.argv[1:] if argv is None else argv,
                                         ("--since", "--until"))
    parser = build_parser()
    args = parser.parse_args(words)
    since, until = getattr(args, "since", None), getattr(args, "until", None)
    if since is not None and until is not None and since >= until:
        args.parser.error("--since must be earlier than --until")  # the command's own usage
    # A caller-ID name the terminal's encoding cannot show becomes "?", not a traceback.
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="replace")
    try:
        return args.run(args)
    except (CliError, StoreError) as exc:
        print(f"ctrackd: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `ctrackd calls | head`: the reader left, that is fine
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ctrackd", description="Call tracking for Asterisk.")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    config = argparse.ArgumentParser(add_help=False)
    config.add_argument("-c", "--config", default=DEFAULT_CONFIG, metavar="FILE",
                        help=f"the config file (default: {DEFAULT_CONFIG}, or $CTRACKD_CONFIG)")
    for name, command in COMMANDS.items():
        p = sub.add_parser(name, help=command.help, description=command.help, parents=[config])
        command.arguments(p)
        p.set_defaults(run=command.run, parser=p)
    return parser


# -- run, check-config ---------------------------------------------------------

def run_command(args: argparse.Namespace) -> int:
    from ctrackd.daemon import run_daemon  # the daemon's imports only when it runs
    return run_daemon(args.config)


def check_config_command(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    pools = sum(len(p.numbers) for p in config.pools)
    web = f", web on {config.web.host}:{config.web.port}" if config.web else ""
    print(f"{args.config}: ok: {len(config.channels)} channels, {len(config.numbers)} numbers,"
          f" {len(config.pools)} pools ({pools} numbers){web}, store {config.store.path}")
    for line in _config_details(config):
        print(f"  {line}")
    return 0


def _config_details(config: Any) -> list[str]:
    """What the settings that act on their own will do, read back in words.

    An admin checks these before a reload: a retention limit or a hook that
    is not what was meant deletes recordings or posts calls somewhere.
    """
    rule = config.targets
    lines = [f"target calls: {'answered, ' if rule.answered else ''}talk >= "
             f"{rule.min_talk_seconds:g} s"
             + (f", first call in {rule.unique_days} days" if rule.unique_days else "")
             + "".join(f"; {key}: own rule" for key, ch in config.channels.items() if ch.target)]
    promo_lines = [did for did, n in config.numbers.items() if n.tracking == "promo"]
    if promo_lines:
        lines.append(f"promo lines: {', '.join(promo_lines)} (codes of {config.promo.length}"
                     f" digits, {config.promo.attempts} tries)"
                     + ("" if config.web else "; no web: section, so no code can match"))
    for hook in config.hooks:
        target = hook.url if hook.url else " ".join(hook.command)
        lines.append(f"hook {hook.name}: {', '.join(hook.events)} -> {target}"
                     + (" (signed)" if hook.secret else ""))
    retention = config.recordings.retention
    if retention.enabled:
        limits = [f"older than {retention.max_age_days:g} days" if retention.max_age_days else "",
                  f"folder over {_size(retention.max_bytes)}" if retention.max_bytes else "",
                  f"less than {_size(retention.min_free_bytes)} free"
                  if retention.min_free_bytes else ""]
        lines.append(f"retention in {config.recordings.dir}: delete when "
                     + ", ".join(limit for limit in limits if limit)
                     + f"; every {retention.interval:g} s" + (" (dry run)" if retention.dry_run
                                                             else ""))
    return lines


def _size(count: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024:
            return f"{count:g} {unit}"
        count /= 1024  # type: ignore[assignment]
    return f"{count:.1f} TiB"


def load_config(path: str) -> Any:
    from ctrackd.config import ConfigError, load_config as load
    try:
        return load(path)
    except ConfigError as exc:  # already "FILE:LINE:COL: key.path: expected ..."
        raise CliError(str(exc)) from None


# -- calls ---------------------------------------------------------------------

def calls_arguments(p: argparse.ArgumentParser) -> None:
    _range_arguments(p)
    p.add_argument("--status", choices=queries.STATUS_FILTERS, metavar="S",
                   help="only calls in this status: " + ", ".join(queries.STATUS_FILTERS)
                   + " (missed = busy, no_answer, abandoned, failed; open = not ended)")
    p.add_argument("--channel", metavar="KEY", help="only calls of this channel (its config key)")
    p.add_argument("--caller", metavar="NUMBER",
                   help="only calls from this number, in any spelling (+7916..., 8916...)")
    p.add_argument("--limit", type=_count, default=50, metavar="N",
                   help="at most N calls, the newest (default 50, 0 = all)")
    p.add_argument("--follow", action="store_true",
                   help="then keep printing new and newly ended calls until Ctrl-C "
                        "(oldest first, like tail -f)")
    p.add_argument("--full-numbers", action="store_true",
                   help="show callers' full numbers in the table (masked by default)")
    _format_argument(p, "json: one array, or JSON lines (one call per line) with --follow")


def calls_command(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    caller = _normalised_caller(args.caller, config.phone_region)
    if args.channel and args.channel not in config.channels:
        print(f"ctrackd: note: {args.config} has no channel {args.channel!r}", file=sys.stderr)
    filters = dict(since=args.since, until=args.until, status=args.status,
                   channel=args.channel, caller=caller)
    columns = _call_columns(args.full_numbers)
    with _reading(config.store.path) as conn:
        if not args.follow:
            calls = queries.list_calls(conn, limit=args.limit or None, **filters)
            if not calls and args.format == "table":
                print("ctrackd: no calls match", file=sys.stderr)
                return 0
            _print(args.format, calls, columns, queries.CALL_FIELDS)
            if args.limit and len(calls) == args.limit:
                # A script summing a CSV must not take the newest 50 for all of them.
                print(f"ctrackd: note: the newest {args.limit} calls only (--limit 0 for all)",
                      file=sys.stderr)
            return 0
        return _follow(conn, args.limit, filters, _Stream(args.format, columns))


def _follow(conn: sqlite3.Connection, limit: int, filters: dict[str, Any],
            stream: _Stream) -> int:
    """Print the last `limit` calls, then new calls and calls that end, until Ctrl-C.

    Each poll reads rows inserted after the last rowid seen or changed in the
    last FOLLOW_OVERLAP seconds; `printed` (call_id -> shown as ended) drops
    what was shown already. The calls that changed just before we started
    count as shown, or the first poll would print them all again; they are
    read before the marks, so a call landing in between is not missed.
    """
    try:
        start = queries.change_marks(conn)
        printed = {c["call_id"]: c["ended_at"] is not None for c in queries.list_calls(
            conn, changed_since=start[1] - FOLLOW_OVERLAP, **filters)}
        marks = queries.change_marks(conn)
        fresh = list(reversed(queries.list_calls(conn, limit=limit or None, **filters)))
        while True:
            for call in fresh:
                printed[call["call_id"]] = call["ended_at"] is not None
            stream.emit(fresh)
            if len(printed) > 100_000:  # days of calls: forget the oldest ended ones
                for call_id in [k for k, ended in printed.items() if ended][:50_000]:
                    del printed[call_id]
            time.sleep(FOLLOW_INTERVAL)
            try:
                new_marks = queries.change_marks(conn)
                changed = queries.list_calls(conn, after_rowid=marks[0],
                                             changed_since=marks[1] - FOLLOW_OVERLAP, **filters)
            except sqlite3.OperationalError as exc:
                if _is_lock(exc):  # the daemon is busy (a checkpoint): next second
                    fresh = []
                    continue
                raise
            marks = new_marks
            fresh = [c for c in reversed(changed) if c["call_id"] not in printed
                     or (c["ended_at"] is not None and not printed[c["call_id"]])]
    except KeyboardInterrupt:  # Ctrl-C is how --follow ends
        return 0


def _call_columns(full_numbers: bool) -> list[Column]:
    return [
        Column("started_at", "TIME", output.local_time, min_width=11, max_width=11),
        Column("caller", "CALLER", output.text if full_numbers else output.mask_number,
               min_width=8, max_width=16),
        Column("channel", "CHANNEL", min_width=7, max_width=20),
        Column("status", "STATUS", min_width=9, max_width=9),
        Column("ring_seconds", "RING", output.duration, ">", min_width=4, max_width=5),
        Column("talk_seconds", "TALK", output.duration, ">", min_width=4, max_width=7),
        Column("answered_by", "ANSWERED", min_width=8, max_width=24),
    ]


# -- report --------------------------------------------------------------------

def report_arguments(p: argparse.ArgumentParser) -> None:
    _range_arguments(p)
    from ctrackd.operators_command import GROUPINGS as OPERATOR_GROUPINGS
    from ctrackd.operators_command import GROUPINGS_HELP as OPERATOR_HELP
    from ctrackd.report_command import GROUPINGS, by_help
    # Rows of calls (report_command) or of phones and hours (operators_command).
    p.add_argument("--by", choices=(*GROUPINGS, *OPERATOR_GROUPINGS), default="channel",
                   help="one row per group: " + by_help() + "; " + OPERATOR_HELP)
    _format_argument(p, "json: one array, the total last (is_total: true)")


def report_command(args: argparse.Namespace) -> int:
    from ctrackd.operators_command import GROUPINGS as OPERATOR_GROUPINGS
    if args.by in OPERATOR_GROUPINGS:  # rows of phones, not calls: its own module
        return _operators_report(args)
    from ctrackd.report_command import ReportError, run_report  # docs/reports.md
    config = load_config(args.config)
    with _reading(config.store.path) as conn:
        try:
            return run_report(args, config, conn, _width())
        except ReportError as exc:
            raise CliError(str(exc)) from None


def _operators_report(args: argparse.Namespace) -> int:
    from ctrackd.operators_command import run_operators
    config = load_config(args.config)
    with _reading(config.store.path) as conn:
        run_operators(args, conn, _width())
    return 0


# -- pools -----------------------------------------------------------------------

def pools_command(args: argparse.Namespace) -> int:
    from ctrackd.pools_command import pools_rows, print_pools
    config = load_config(args.config)
    if not config.pools:
        raise CliError(f"{args.config} has no pools: dynamic tracking is not set up")
    with _reading(config.store.path) as conn:
        rows = pools_rows(config, conn, args.since, args.until)
    print_pools(rows, args.format, _width())
    return 0


def _pools_arguments(p: argparse.ArgumentParser) -> None:
    from ctrackd.pools_command import pools_arguments
    pools_arguments(p, _range_arguments, _format_argument)


# -- callers, caller, missed -------------------------------------------------------

def _callers_arguments(p: argparse.ArgumentParser) -> None:
    from ctrackd.callers_command import callers_arguments
    callers_arguments(p, _range_arguments, _format_argument, _count)


def _callers_command(args: argparse.Namespace) -> int:
    from ctrackd.callers_command import print_callers
    config = load_config(args.config)
    if args.channel and args.channel not in config.channels:
        print(f"ctrackd: note: {args.config} has no channel {args.channel!r}", file=sys.stderr)
    with _reading(config.store.path) as conn:
        print_callers(args, conn, _width())
    return 0


def _caller_arguments(p: argparse.ArgumentParser) -> None:
    from ctrackd.callers_command import caller_arguments
    caller_arguments(p, _format_argument)


def _caller_command(args: argparse.Namespace) -> int:
    from ctrackd.callers_command import print_caller
    config = load_config(args.config)
    number = _normalised_caller(args.number, config.phone_region, "")
    assert number is not None
    with _reading(config.store.path) as conn:
        if not print_caller(args, conn, number, _width()):
            raise CliError(f"no calls from {number} in {config.store.path}")
    return 0


def _missed_arguments(p: argparse.ArgumentParser) -> None:
    from ctrackd.missed_command import missed_arguments
    missed_arguments(p, _range_arguments, _format_argument, _count)


def _missed_command(args: argparse.Namespace) -> int:
    from ctrackd.missed_command import print_missed
    config = load_config(args.config)
    with _reading(config.store.path) as conn:
        print_missed(args, conn, time.time(), _width())
    return 0


# -- hooks -----------------------------------------------------------------------

def _hooks_arguments(p: argparse.ArgumentParser) -> None:
    from ctrackd.hooks_command import hooks_arguments
    hooks_arguments(p, _count, _format_argument)


def _hooks_command(args: argparse.Namespace) -> int:
    from ctrackd.hooks_command import hooks_command
    return hooks_command(args)


# -- recordings --------------------------------------------------------------------

def _recordings_arguments(p: argparse.ArgumentParser) -> None:
    from ctrackd.recordings_command import recordings_arguments
    recordings_arguments(p)


def _recordings_command(args: argparse.Namespace) -> int:
    from ctrackd.recordings_command import recordings_command
    return recordings_command(args, load_config(args.config), _width())


# -- export ------------------------------------------------------------------------

def _export_arguments(p: argparse.ArgumentParser) -> None:
    from ctrackd.export_command import export_arguments
    export_arguments(p, _range_arguments)


def _export_command(args: argparse.Namespace) -> int:
    from ctrackd.export_command import ExportError, run_export
    config = load_config(args.config)
    with _reading(config.store.path) as conn:
        try:
            return run_export(args, config, conn)
        except ExportError as exc:
            raise CliError(str(exc)) from None


# -- spend -------------------------------------------------------------------------

def _spend_arguments(p: argparse.ArgumentParser) -> None:
    from ctrackd.spend_command import spend_arguments
    spend_arguments(p, _range_arguments, _format_argument)


def _spend_command(args: argparse.Namespace) -> int:
    from ctrackd.spend_command import SpendError, spend_command
    try:
        return spend_command(args, load_config(args.config), _width())
    except SpendError as exc:
        raise CliError(str(exc)) from None


COMMANDS: dict[str, Command] = {
    "run": Command("run the daemon (FastAGI + AMI), as systemd does", lambda p: None,
                   run_command),
    "check-config": Command("validate a config file and summarise it", lambda p: None,
                            check_config_command),
    "calls": Command("list calls, newest first", calls_arguments, calls_command),
    "report": Command("calls, answered, missed, target calls, cost per call and per target"
                      " call, revenue and ROI per channel, source, medium, campaign, keyword,"
                      " day, hour or weekday (docs/reports.md)", report_arguments,
                      report_command),
    "pools": Command("number pools: size, peak, utilisation, overflows, exact share and the"
                     " advised size (default: the last 7 days)", _pools_arguments,
                     pools_command),
    "callers": Command("one card per caller number: first and last call and touch, calls,"
                       " answered, missed, target calls", _callers_arguments, _callers_command),
    "caller": Command("one caller's card and every call of theirs, first or repeat",
                      _caller_arguments, _caller_command),
    "missed": Command("the callback list: numbers whose missed calls nobody returned yet,"
                      " the longest waiting first", _missed_arguments, _missed_command),
    "hooks": Command("the hook outbox: pending, delivered and given-up deliveries;"
                     " `hooks retry ID...|--all-failed` sends given-up ones again",
                     _hooks_arguments, _hooks_command),
    "webhooks": Command("the same as `hooks` (the webhook outbox, a summary line per hook"
                        " first): `webhooks retry ID...|--all-failed`",
                        _hooks_arguments, _hooks_command),
    "recordings": Command("recording retention: `recordings prune [--dry-run]` deletes the"
                          " oldest recordings past the limits", _recordings_arguments,
                          _recordings_command),
    "export": Command("offline conversions for Yandex Metrica, Google Ads (calls, clicks) and"
                      " GA4, in each system's documented format (docs/exports.md)",
                      _export_arguments, _export_command),
    "spend": Command("ad spend for the report's cost columns: `spend import FILE` (a Yandex"
                     " Direct / Google Ads cost report or CSV), `spend list`",
                     _spend_arguments, _spend_command),
}


# -- shared pieces ---------------------------------------------------------------

def _range_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--since", type=dates.since_arg, metavar="WHEN",
                   help="calls started at or after WHEN: " + dates.HELP)
    p.add_argument("--until", type=dates.until_arg, metavar="WHEN",
                   help="calls started before WHEN (a whole day, e.g. 2026-11-22 or today,"
                        " counts to its end); same forms as --since")


def _format_argument(p: argparse.ArgumentParser, json_help: str) -> None:
    p.add_argument("--format", choices=FORMATS, default="table",
                   help=f"table (80 columns, local times), csv (with a header row), {json_help}")


def _count(text: str) -> int:
    if not text.isdigit() or len(text) > 9:
        raise argparse.ArgumentTypeError(
            f"expected a whole number from 0 to 999999999, found {text!r}")
    return int(text)


#: what a number typed on the command line may look like: digits, one leading
#: +, and the usual separators (`+7 (916) 123-45-67`, `8.916.123.45.67`)
_TYPED_NUMBER = re.compile(r"\+?[0-9 ().-]+")
#: fewer digits than this is no number (an internal extension has three or more)
_MIN_DIGITS = 3


def _normalised_caller(raw: str | None, region: str, option: str = "--caller ") -> str | None:
    """A number typed by the admin, as the store keeps it (E.164); a sentence if it is none.

    Strict on purpose (`79167770005x`, `++7916`, `12` are typos, not numbers
    to look up); the words Asterisk uses for a withheld number get their own
    sentence, as such a caller has no number to look up.
    """
    if raw is None:
        return None
    from ctrackd.attribution.numbers import WITHHELD, normalise_number  # phonenumbers is slow
    text = raw.strip()
    if text.lower() in WITHHELD - {""}:
        raise CliError(f"{option}{raw!r} means a withheld number: such callers have no number"
                       " to look up")
    number = normalise_number(text, region) if _TYPED_NUMBER.fullmatch(text) else None
    if number is None:
        raise CliError(f"{option}{raw!r} is not a phone number (digits, a leading +,"
                       " spaces, dashes, dots and brackets only)")
    if sum(ch.isdigit() for ch in text) < _MIN_DIGITS:
        raise CliError(f"{option}{raw!r} is not a phone number (too few digits)")
    return number


@contextmanager
def _reading(path: Path) -> Iterator[sqlite3.Connection]:
    """A read-only store connection; SQLite errors become a sentence naming the file."""
    try:
        conn = queries.connect(path, readonly=True, busy_timeout=LOCK_WAIT)
        try:
            yield conn
        finally:
            conn.close()
    except sqlite3.Error as exc:
        if _is_lock(exc):
            raise CliError(f"the call store {path} stayed locked for {LOCK_WAIT:g} s"
                           " (another process holds it): try again") from None
        raise CliError(f"cannot read the call store {path}: {exc}") from None


def _is_lock(exc: sqlite3.Error) -> bool:
    return "locked" in str(exc) or "busy" in str(exc)


def _width() -> int:
    # The terminal's width on a terminal (a report's money columns need more than
    # 80); 80 when piped or pasted into a ticket.
    return max(40, shutil.get_terminal_size((80, 24)).columns) if sys.stdout.isatty() else 80


def _print(fmt: str, rows: list[dict[str, Any]], columns: list[Column],
           fields: Sequence[str]) -> None:
    if not output.write_rows(fmt, rows, fields):
        sys.stdout.write(output.render_table(rows, columns, width=_width()))


class _Stream:
    """Output that grows (`--follow`): fixed table columns, one header, JSON lines."""

    def __init__(self, fmt: str, columns: list[Column]) -> None:
        self.fmt, self.columns = fmt, columns
        self.widths = output.fit_widths(columns, width=_width())
        self.started = False

    def emit(self, calls: list[dict[str, Any]]) -> None:
        if self.fmt == "json":
            sys.stdout.write("".join(output.json_line(c) for c in calls))
        elif self.fmt == "csv":
            output.write_csv(calls, queries.CALL_FIELDS, sys.stdout, header=not self.started)
        else:
            sys.stdout.write(output.render_table(calls, self.columns, widths=self.widths,
                                                 header=not self.started))
        self.started = True
        sys.stdout.flush()  # a pipe is block-buffered: a followed call must show now
