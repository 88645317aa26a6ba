"""A realistic synthetic call store, for benchmarks and for trying ctrackd out without Asterisk.

    python -m bench.synthetic --calls 100000 --days 90 --out /tmp/calls.sqlite3 \
        [--config config/ctrackd.example.yaml] [--seed 1] [--end 2026-11-22T12:00]

The store is written the way the daemon writes it, so that what reads it
(reports, exports, `ctrackd calls`) meets real rows: the real migrations
(`store.schema.migrate`), the real upserts (`UPSERT_ATTRIBUTION`,
`UPSERT_PROGRESS` as multi-row statements, with the rows those statements
take) and the real judging
(`store.judge.judge_calls` with the config's target rules). Channels,
numbers, pools and forward targets come from the config; a config with no
pools gets one synthetic pool (`site`) so that a share of calls is dynamic.

The mix (shares are of all calls): answered 72 %, no answer 14 %, busy 5 %,
abandoned 9 %; talk time log-normal around 80 s (about one answered call
in six under 30 s); ring time a few seconds for answered calls, the ring
timeout for unanswered ones; 30 % of calls from earlier callers (repeat
callers), 2 % withheld; office hours in `--tz` weigh most, weekends less.
Dynamic calls (35 % when a pool exists) carry a web session: utm_* fields,
gclid (Google ads), yclid (Yandex ads), the `_ga` client id (80 %) and
`_ym_uid` (85 %); 3 % of calls are promo-code calls.

Deterministic: the same `--seed`, `--end` and config give the same calls
(only `created_at`/`updated_at`, the writer's clock, differ). Fast: rows go
in as 500-row statements in transactions of 50 000 calls, judging in the
same batches, with `synchronous=OFF` (a file being generated needs no
durability until it is closed).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from ctrackd.attribution.records import (
    CallStatus,
    PromoEntry,
    PromoStatus,
    Tracking,
)
from ctrackd.config import Config, load_config
from ctrackd.store import queries, schema
from ctrackd.attribution.targets import judge_call
from ctrackd.store.judge import judge_calls
from ctrackd.store.legs import UPSERT_LEGS

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "config" / "ctrackd.example.yaml"
BATCH = 50_000      # calls per transaction (and per judging round)
#: the columns `store.judge` writes for a verdict, the same statement
VERDICT = f"""UPDATE calls SET first_time = :first_time, previous_call_at = :previous_call_at,
    target = :target, target_rule = :target_rule, updated_at = {queries.WRITER_NOW}
    WHERE call_id = :call_id"""

#: (status, share, dial status, hangup cause)
OUTCOMES: tuple[tuple[CallStatus, float, str, int], ...] = (
    (CallStatus.ANSWERED, 0.72, "ANSWER", 16),
    (CallStatus.NO_ANSWER, 0.14, "NOANSWER", 19),
    (CallStatus.BUSY, 0.05, "BUSY", 17),
    (CallStatus.ABANDONED, 0.09, "CANCEL", 16),
)
CAUSE_TEXT = {16: "Normal Clearing", 17: "User busy", 19: "No answer"}
REPEAT_SHARE = 0.30
WITHHELD_SHARE = 0.02
DYNAMIC_SHARE = 0.35
PROMO_SHARE = 0.03
TALK_MEDIAN = 80.0          # seconds; log-normal, sigma below
TALK_SIGMA = 0.9
#: relative weight of each local hour (0-23) and weekday (Monday first)
HOUR_WEIGHTS = (1, 1, 1, 1, 1, 2, 4, 8, 20, 45, 60, 62, 58, 55, 58, 60, 55, 45, 30, 18,
                10, 6, 3, 2)
WEEKDAY_WEIGHTS = (1.0, 1.0, 1.0, 1.0, 0.95, 0.55, 0.4)
#: what brings visitors to the site: (utm_source, utm_medium, share, campaigns, click id)
TRAFFIC: tuple[tuple[str | None, str | None, float, tuple[str, ...], str | None], ...] = (
    ("yandex", "cpc", 0.40, ("search", "brand", "retargeting", "rsya"), "yclid"),
    ("google", "cpc", 0.32, ("brand", "generic", "pmax"), "gclid"),
    (None, None, 0.18, (), None),                     # organic / direct: no utm
    ("newsletter", "email", 0.10, ("november", "december"), None),
)
KEYWORDS = ("купить окна", "пластиковые окна цена", "окна пвх", "остекление балкона",
            "windows price", "замер окон бесплатно", "окна от производителя", None)
LANDINGS = ("https://www.example.com/", "https://www.example.com/price",
            "https://www.example.com/balcony", "https://www.example.com/promo")
CONFIDENCES = ("exact", "shared", "expired")
QUEUE_MEMBERS = 6           # operators behind a Queue(...) target (PJSIP/201 ...)


@dataclass(frozen=True)
class Summary:
    calls: int
    answered: int
    targets: int
    dynamic: int
    seconds: float


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.synthetic", description=__doc__.split(
        "\n\n")[0])
    p.add_argument("--calls", type=int, default=100_000, help="how many calls (default 100000)")
    p.add_argument("--days", type=float, default=90.0, help="over this many days (default 90)")
    p.add_argument("--out", required=True, help="the store file to create")
    p.add_argument("--config", default=str(DEFAULT_CONFIG),
                   help="channels, numbers, pools, targets from here (default: the example)")
    p.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    p.add_argument("--end", help="the last call's day ends here: ISO datetime (default: now,"
                   " rounded down to the hour)")
    p.add_argument("--tz", default="Europe/Moscow", help="office hours in this zone")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.add_argument("--judge-in-store", action="store_true",
                   help="judge with store.judge.judge_calls, as the daemon does (much slower)")
    args = p.parse_args(argv)
    if args.calls < 1 or args.days <= 0:
        p.error("--calls and --days must be positive")
    out = Path(args.out)
    if out.exists():
        if not args.force:
            p.error(f"{out} exists: pass --force to replace it")
        for suffix in ("", "-wal", "-shm"):
            Path(f"{out}{suffix}").unlink(missing_ok=True)
    end = (datetime.fromisoformat(args.end).timestamp() if args.end
           else math.floor(time.time() / 3600) * 3600)
    summary = generate(out, calls=args.calls, days=args.days, config=load_config(args.config),
                       seed=args.seed, end=end, tz=ZoneInfo(args.tz),
                       judge_in_store=args.judge_in_store)
    print(f"{out}: {summary.calls} calls over {args.days:g} days ({summary.answered} answered,"
          f" {summary.targets} target, {summary.dynamic} dynamic) in {summary.seconds:.1f} s")
    return 0


def generate(path: Path, *, calls: int, days: float, config: Config, seed: int, end: float,
             tz: ZoneInfo, judge_in_store: bool = False,
             progress: Callable[[int, int], None] | None = None) -> Summary:
    """Write `calls` calls started in the `days` before `end` into a new store at `path`.

    Verdicts come from the pure `judge_call` with each caller's previous call,
    known here because calls are made in time order; `judge_in_store` uses
    `store.judge.judge_calls` instead (the daemon's way: three queries a call,
    about 30 times slower; tests check that both agree).
    """
    began = time.perf_counter()
    rng = random.Random(seed)
    world = _World(config, rng)
    starts = _start_times(rng, calls, days, end, tz)
    conn = queries.connect(path, readonly=False)
    try:
        schema.migrate(conn)
        conn.execute("PRAGMA synchronous = OFF")
        # A bulk load builds the indexes once at the end (a sort) instead of
        # updating ten of them per row; the schema ends exactly as migrated.
        indexes = [] if judge_in_store else conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'calls'"
            " AND sql IS NOT NULL").fetchall()
        for name, _ in indexes:
            conn.execute(f'DROP INDEX "{name}"')
        answered = targets = dynamic = 0
        for first in range(0, calls, BATCH):
            attributions, progresses, verdicts, legs = [], [], [], []
            for index in range(first, min(first + BATCH, calls)):
                a, p, verdict = world.call(index, starts[index])
                attributions.append(a)
                progresses.append(p)
                verdicts.append(verdict)
                legs += world.legs(a, p)
                answered += p["status"] == "answered"
                dynamic += a["tracking"] != "static"
                targets += verdict["target"]
            with queries.transaction(conn):
                _insert(conn, queries.UPSERT_ATTRIBUTION, attributions)
                _insert(conn, queries.UPSERT_PROGRESS, progresses)
                _insert(conn, UPSERT_LEGS, legs)
                if not judge_in_store:
                    conn.executemany(VERDICT, verdicts)
            if judge_in_store:
                judge_calls(conn, (row["call_id"] for row in progresses),
                            rules=config.target_rule, now=end)
            if progress is not None:
                progress(min(first + BATCH, calls), calls)
        with queries.transaction(conn):
            for _, sql in indexes:
                conn.execute(sql)
        if judge_in_store:
            targets = conn.execute("SELECT COUNT(*) FROM calls WHERE target = 1").fetchone()[0]
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    return Summary(calls, answered, targets, dynamic, time.perf_counter() - began)


def _insert(conn: Any, statement: str, rows: list[dict[str, Any]]) -> None:
    step = queries.MAX_ROWS_PER_STATEMENT
    for start in range(0, len(rows), step):
        conn.execute(*queries.multi_row(statement, rows[start:start + step]))


def _start_times(rng: random.Random, calls: int, days: float, end: float,
                 tz: ZoneInfo) -> list[float]:
    """Sorted start times: an hour drawn by office-hour and weekday weights, then a second."""
    hours = max(1, int(days * 24))
    first = end - hours * 3600
    weights = []
    for h in range(hours):
        local = datetime.fromtimestamp(first + h * 3600, tz)
        weights.append(HOUR_WEIGHTS[local.hour] * WEEKDAY_WEIGHTS[local.weekday()])
    picked = rng.choices(range(hours), weights=weights, k=calls)
    return sorted(first + h * 3600 + rng.random() * 3600 for h in picked)


class _World:
    """The config's channels, numbers and targets, and the callers met so far.

    Rows are built as the dicts `queries.attribution_params` and
    `queries.progress_params` make (tests compare the keys): building the
    dataclasses first took more time than the whole store write.
    """

    def __init__(self, config: Config, rng: random.Random) -> None:
        self.config = config
        self.rng = rng
        self.static = [n for n in config.numbers.values() if n.tracking == "static"]
        self.promo_lines = [n for n in config.numbers.values() if n.tracking == "promo"]
        if not self.static:
            raise ValueError(f"{config.source} has no static tracking numbers to call")
        self.pools = [(spec.name, list(spec.numbers), spec.forward_to, spec.channel)
                      for spec in config.pools] or [
            ("site", [f"+7495000{101 + i:04d}" for i in range(10)], None, None)]
        self.callers: list[str] = []
        self.last_call: dict[str, float] = {}   # caller -> start of their latest call
        self.rules: dict[str | None, Any] = {}
        # cumulative weights: choices() would sum the weights again on every call
        self.outcome_weights = list(itertools.accumulate(share for _, share, _, _ in OUTCOMES))
        self.traffic_weights = list(itertools.accumulate(t[2] for t in TRAFFIC))
        self.timeout = config.defaults.ring_timeout
        self.recordings = (config.recordings.dir.rstrip("/") + "/ctrackd-"
                           if config.recordings.dir else None)

    def call(self, index: int, started_at: float) -> tuple[dict[str, Any], dict[str, Any],
                                                             dict[str, Any]]:
        """(attribution row, progress row, verdict row) of the index-th call."""
        rng = self.rng
        started_at = round(started_at, 3)
        call_id = f"{int(started_at)}.{index}"
        caller = self._caller()
        roll = rng.random()
        if roll < PROMO_SHARE:
            a = self._pool_call(call_id, started_at, caller, Tracking.PROMO)
            a.update(did=rng.choice(self.promo_lines or self.static).did, pool=None,
                     confidence=None, promo_code=f"{rng.randrange(10_000):04d}",
                     promo_entry=(PromoEntry.CALLER if rng.random() < 0.8
                                  else PromoEntry.OPERATOR).value,
                     promo_status=PromoStatus.MATCHED.value)
        elif roll < PROMO_SHARE + DYNAMIC_SHARE:
            a = self._pool_call(call_id, started_at, caller, Tracking.DYNAMIC)
        else:
            a = self._static_call(call_id, started_at, caller)
        p = self._progress(a)
        return a, p, self._verdict(a, p)

    def _caller(self) -> str | None:
        rng = self.rng
        roll = rng.random()
        if roll < WITHHELD_SHARE:
            return None
        if self.callers and roll < WITHHELD_SHARE + REPEAT_SHARE:
            # Recent callers call back more often than old ones.
            back = min(len(self.callers), 1 + int(rng.expovariate(1 / 2000)))
            return self.callers[-back]
        number = f"+79{(len(self.callers) * 7_919_113 + 104_729) % 1_000_000_000:09d}"
        self.callers.append(number)
        return number

    def _row(self, call_id: str, started_at: float, caller: str | None, tracking: Tracking,
             did: str, forward: str) -> dict[str, Any]:
        return {"call_id": call_id, "started_at": started_at, "did": did, "caller": caller,
                "caller_name": None, "tracking": tracking.value, "forward_to": forward,
                "ring_timeout": self.timeout,
                "recording_path": f"{self.recordings}{call_id}.wav" if self.recordings else None,
                "note": None, "pool": None, "session_id": None, "confidence": None,
                "session_json": None, "promo_code": None, "promo_entry": None,
                "promo_status": None}

    def _static_call(self, call_id: str, started_at: float, caller: str | None) -> dict[str, Any]:
        number = self.rng.choice(self.static)
        channel = self.config.channels[number.channel]
        forward = number.forward_to or channel.forward_to or self.config.defaults.forward_to
        row = self._row(call_id, started_at, caller, Tracking.STATIC, number.did, forward)
        row.update(channel=channel.key, source=channel.source, medium=channel.medium,
                   campaign=channel.campaign, label=channel.label)
        return row

    def _pool_call(self, call_id: str, started_at: float, caller: str | None,
                   tracking: Tracking) -> dict[str, Any]:
        rng = self.rng
        name, numbers, forward, pool_channel = rng.choice(self.pools)
        session = self._session(started_at)
        key = self._channel_of(session) or pool_channel
        channel = self.config.channels.get(key) if key else None
        forward = (forward or (channel.forward_to if channel else None)
                   or self.config.defaults.forward_to)
        row = self._row(call_id, started_at, caller, tracking, rng.choice(numbers), forward)
        row.update(channel=key, source=session["utm_source"], medium=session["utm_medium"],
                   campaign=session["utm_campaign"], label=channel.label if channel else None,
                   pool=name, session_id=session["session_id"],
                   confidence=rng.choices(CONFIDENCES, cum_weights=(0.9, 0.94, 1.0))[0],
                   session_json=json.dumps(session, ensure_ascii=False))
        return row

    def _session(self, started_at: float) -> dict[str, Any]:
        """A visitor session as `sessions.session_fields` gives it to a call record."""
        rng = self.rng
        source, medium, _, campaigns, click = rng.choices(TRAFFIC, cum_weights=self.traffic_weights)[0]
        seen = int(started_at - rng.uniform(20, 1800))        # the visit began before the call
        return {
            "session_id": f"s{rng.getrandbits(64):016x}",
            "visitor_id": f"v{rng.getrandbits(48):012x}",
            "visit_number": 1 + int(rng.expovariate(1.5)),
            "utm_source": source, "utm_medium": medium,
            "utm_campaign": rng.choice(campaigns) if campaigns else None,
            "utm_term": rng.choice(KEYWORDS) if medium == "cpc" else None,
            "utm_content": None, "referrer": None, "landing_page": rng.choice(LANDINGS),
            "gclid": (f"Cj0KCQiA{rng.getrandbits(120):030x}"
                      if click == "gclid" and rng.random() < 0.9 else None),
            "yclid": (str(rng.randrange(10 ** 18, 10 ** 19))
                      if click == "yclid" and rng.random() < 0.9 else None),
            "fbclid": None,
            "ga_client_id": (f"{rng.randrange(10 ** 9, 2 * 10 ** 9)}.{seen - 86400 * 30}"
                             if rng.random() < 0.8 else None),
            "ym_uid": (f"{seen - 86400 * 30}{rng.randrange(10 ** 8, 10 ** 9)}"
                       if rng.random() < 0.85 else None),
        }

    def _channel_of(self, session: dict[str, Any]) -> str | None:
        """The UTM rules of the config; without any, the channel whose source and medium match."""
        source, medium = session["utm_source"], session["utm_medium"]
        if source is None:
            return None
        for rule in self.config.utm_rules:
            if rule.matches(source, medium or "", session["utm_campaign"] or ""):
                return rule.channel
        if self.config.utm_rules:
            return None
        for channel in self.config.channels.values():
            if channel.source == source and channel.medium == medium:
                return channel.key
        return None

    def _progress(self, a: dict[str, Any]) -> dict[str, Any]:
        """The ended call as `CallProgress.finish` leaves it (ring + talk == duration)."""
        rng = self.rng
        status, _, dial_status, cause = rng.choices(OUTCOMES, cum_weights=self.outcome_weights)[0]
        start, timeout = a["started_at"], float(self.timeout)
        answered_at = answered_by = None
        if status is CallStatus.ANSWERED:
            ring = min(timeout - 1, 1.5 + rng.lognormvariate(math.log(6), 0.6))
            answered_at = round(start + ring, 3)
            answered_by = rng.choice(_endpoints(a["forward_to"]))
            ended = answered_at + min(3600.0, rng.lognormvariate(math.log(TALK_MEDIAN),
                                                                 TALK_SIGMA))
        elif status is CallStatus.NO_ANSWER:
            ended = start + timeout + rng.uniform(0.1, 1.0)
        elif status is CallStatus.BUSY:
            ended = start + rng.uniform(0.5, 3.0)
        else:
            ended = start + rng.uniform(2.0, timeout - 1)
        ended = round(ended, 3)
        duration = round(ended - start, 3)
        talk = round(ended - answered_at, 3) if answered_at is not None else 0.0
        return {"call_id": a["call_id"], "started_at": start, "status": status.value,
                "did": a["did"], "caller": a["caller"], "answered_at": answered_at,
                "answered_by": answered_by, "ended_at": ended,
                "ring_seconds": round(duration - talk, 3), "talk_seconds": talk,
                "duration_seconds": duration, "hangup_cause": cause,
                "hangup_cause_txt": CAUSE_TEXT[cause], "dial_status": dial_status,
                "close_reason": "hangup"}

    def legs(self, a: dict[str, Any], p: dict[str, Any]) -> list[dict[str, Any]]:
        """The `call_legs` rows the AMI side would write: every phone of the ring
        group or queue rings from the call's start; the one that answered gets
        `answer`, the others `cancel` at that moment; an unanswered call's phones
        end with the call's own dial status; half the failed calls reach no phone
        (CHANUNAVAIL has no leg, capture 07)."""
        status = p["status"]
        if status == CallStatus.FAILED.value and self.rng.random() < 0.5:
            return []
        outcome = _LEG_OUTCOME.get(status, "cancel")
        rows = []
        for n, endpoint in enumerate(_endpoints(a["forward_to"])):
            answered = status == CallStatus.ANSWERED.value and endpoint == p["answered_by"]
            rows.append({"call_id": a["call_id"], "leg": f"{a['call_id']}.{n + 1}",
                         "endpoint": endpoint, "rang_at": round(a["started_at"] + 0.05, 3),
                         "answered_at": p["answered_at"] if answered else None,
                         "ended_at": (p["ended_at"] if answered or p["answered_at"] is None
                                      else p["answered_at"]),
                         "outcome": "answer" if answered else outcome})
        return rows

    def _verdict(self, a: dict[str, Any], p: dict[str, Any]) -> dict[str, Any]:
        """`judge_call` as `store.judge` calls it, with the caller's previous call known here."""
        caller, channel = a["caller"], a["channel"]
        if channel not in self.rules:
            self.rules[channel] = self.config.target_rule(channel)
        name, rule = self.rules[channel]
        previous = self.last_call.get(caller) if caller is not None else None
        if caller is not None:
            self.last_call[caller] = a["started_at"]
        v = judge_call(name, rule, status=CallStatus(p["status"]),
                       talk_seconds=p["talk_seconds"], started_at=a["started_at"],
                       previous_call_at=previous, caller_known=caller is not None)
        return {"call_id": a["call_id"], "target": int(v.target),
                "first_time": None if v.first_time is None else int(v.first_time),
                "previous_call_at": v.previous_call_at, "target_rule": v.target_rule}


#: a phone's DialEnd outcome when the call as a whole ended so (the answered one: "answer")
_LEG_OUTCOME = {"no_answer": "noanswer", "busy": "busy", "abandoned": "cancel",
                "failed": "congestion"}


def _endpoints(forward_to: str) -> list[str]:
    """Who can answer: each part of a ring group, or the members of a queue."""
    if forward_to.startswith("Queue("):
        return [f"PJSIP/{201 + i}" for i in range(QUEUE_MEMBERS)]
    return forward_to.split("&")


if __name__ == "__main__":
    sys.exit(main())
