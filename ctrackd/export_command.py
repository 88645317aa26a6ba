"""`ctrackd export SYSTEM`: offline conversions in the format the receiving system documents.

    ctrackd export yandex-metrica --since -21d --out calls.csv
    ctrackd export google-ads-calls --since -30d --out google-calls.csv
    ctrackd export google-ads-clicks --since -30d --out google-clicks.csv
    ctrackd export ga4 --since -72h --send

Target calls only unless `--all-calls` (every answered call). The file goes
to `--out` (written beside it, then renamed: a failed export leaves no half
file) or to stdout; what was left out, and why, goes to stderr, so a pipe
gets the file alone. Reasons are counted: calls that do not qualify (not
answered, not a target call, ...), calls too old for the system, calls
without the id the system needs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ctrackd import progress as bars
from ctrackd.exports import Format, Progress, convert_all, ga4, google_ads, yandex_metrica
from ctrackd.store import exports as reads

#: the command word -> its format (an explicit table: no discovery)
FORMATS: dict[str, Format] = {f.name: f for f in (
    yandex_metrica.FORMAT, google_ads.CALLS, google_ads.CLICKS, ga4.FORMAT)}


class ExportError(Exception):
    """A sentence for the admin (the CLI prints it and exits 1)."""


def export_arguments(p: argparse.ArgumentParser,
                     range_arguments: Callable[[argparse.ArgumentParser], None]) -> None:
    p.add_argument("system", choices=tuple(FORMATS), metavar="SYSTEM",
                   help="; ".join(f"{f.name}: {f.help}" for f in FORMATS.values()))
    range_arguments(p)
    p.add_argument("--out", metavar="FILE", help="write the file here (default: stdout)")
    p.add_argument("--all-calls", action="store_true",
                   help="every answered call, not only target calls")
    p.add_argument("--id", choices=tuple(yandex_metrica.IDS), default=None,
                   help="yandex-metrica only: the file's identifier, one per file: client-id"
                        " (ClientId rows, upload with client_id_type=CLIENT_ID; default) or"
                        " yclid (Yclid rows, client_id_type=YCLID)")
    p.add_argument("--send", action="store_true",
                   help="ga4 only: post the events to the Measurement Protocol endpoint"
                        " (exports.ga4 in the config)")


def run_export(args: argparse.Namespace, config: Any, conn: Any, *, now: float | None = None,
               progress: Progress | None = None) -> int:
    """Export, print the summary to stderr; `progress` is told how many calls were read."""
    fmt = FORMATS[args.system]
    id_type = getattr(args, "id", None)
    if id_type is not None and fmt.name != "yandex-metrica":
        raise ExportError(f"--id is for yandex-metrica only ({fmt.name} has one identifier)")
    if id_type == "yclid":
        fmt = yandex_metrica.FORMAT_YCLID
    settings = config.exports
    if args.send and fmt.name != "ga4":
        raise ExportError(f"--send is for ga4 only: upload the {fmt.name} file in the"
                          " system's interface (docs/exports.md)")
    if args.send and not (settings.ga4.measurement_id and settings.ga4.api_secret):
        raise ExportError(f"{args.config}: exports.ga4.measurement_id and"
                          " exports.ga4.api_secret are needed to send")
    now = time.time() if now is None else now
    since = args.since
    left_out: Counter[str] = Counter(reads.left_out_counts(
        conn, since=since, until=args.until, all_calls=args.all_calls))
    if fmt.max_age is not None:
        oldest = now - fmt.max_age
        if since is None or since < oldest:
            cut = oldest if args.until is None else min(oldest, args.until)
            old = reads.count_qualifying(conn, since=since, until=cut,
                                         all_calls=args.all_calls)
            if old:
                left_out[fmt.too_old] = old
            since = oldest
    calls = reads.qualifying_calls(conn, since=since, until=args.until,
                                   all_calls=args.all_calls)
    # A bar on a terminal (quiet when piped) unless the caller watches itself.
    with bars.bar(f"export {fmt.name}", unit="calls") as shown:
        rows = convert_all(calls, fmt, settings, left_out, progress or bars.counter(shown))
    if args.send:
        return _send(rows, settings, left_out)
    _write(fmt, rows, settings, args.out)
    where = f" to {args.out}" if args.out else ""
    print(f"ctrackd: {fmt.name}: {len(rows)} call{'s' if len(rows) != 1 else ''}"
          f" exported{where}", file=sys.stderr)
    _print_left_out(left_out)
    return 0


def _write(fmt: Format, rows: list[Any], settings: Any, out: str | None) -> None:
    if out is None:
        fmt.write(rows, sys.stdout, settings)
        sys.stdout.flush()
        return
    path = Path(out)
    partial = path.with_name(f".{path.name}.partial")
    try:
        with open(partial, "w", encoding="utf-8", newline="") as f:
            fmt.write(rows, f, settings)
        os.replace(partial, path)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise ExportError(f"cannot write {path}: {exc.strerror or exc}") from None


def _send(rows: list[Any], settings: Any, left_out: Counter[str]) -> int:
    bodies = ga4.bodies(rows)
    sent = asyncio.run(ga4.send(bodies, settings))
    print(f"ctrackd: ga4: {sent.events} event{'s' if sent.events != 1 else ''} sent in"
          f" {sent.requests - len(sent.failed)} of {sent.requests} requests", file=sys.stderr)
    _print_left_out(left_out)
    for line in sent.failed[:20]:
        print(f"ctrackd: ga4: failed: {line}", file=sys.stderr)
    if sent.failed:
        print(f"ctrackd: ga4: {len(sent.failed)} request(s) failed; run again to resend"
              " (GA4 does not deduplicate: send only what failed, e.g. with --since)",
              file=sys.stderr)
        return 1
    return 0


def _print_left_out(left_out: Counter[str]) -> None:
    total = sum(left_out.values())
    if not total:
        return
    print(f"ctrackd: left out {total} call{'s' if total != 1 else ''}:", file=sys.stderr)
    width = len(str(max(left_out.values())))
    for reason, count in left_out.most_common():
        print(f"  {count:>{width}}  {reason}", file=sys.stderr)
