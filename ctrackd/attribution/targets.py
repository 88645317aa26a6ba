"""Target calls (leads) and repeat calls: the verdict on a call once it has ended.

A marketer pays per lead, so each call says whether it counts as one and
which rule decided, in words they can check against the config
(`default: answered, talk 75 s >= 30 s`, `channel avito: not target: repeat
call within 30 days`). The decision is a pure function of the rule and of
what the store knows about the call and its caller's previous call: the
daemon and the fallback hang-up handler give the same verdict, and a call
judged twice (both closed it) gets the same one twice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ctrackd.attribution.plan import TargetRule
from ctrackd.attribution.records import CallStatus

DAY = 86400.0


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the store writes for a judged call (columns of the same names)."""

    first_time: bool | None       # None: withheld number, nobody can tell
    previous_call_at: float | None
    target: bool
    target_rule: str              # `<rule name>: <conditions met>` or `<name>: not target: <why>`


def judge_call(rule_name: str, rule: TargetRule, *, status: CallStatus,
               talk_seconds: float | None, started_at: float,
               previous_call_at: float | None, caller_known: bool) -> Verdict:
    """The verdict on an ended call.

    `rule_name`, `rule`: what `Config.target_rule(channel)` gives (`default`
    or `channel <key>`). `previous_call_at`: when this caller's latest
    earlier call started (None: none stored). `caller_known`: False for a
    withheld number; its first_time stays unknown, and a `unique_days` rule
    cannot tell a repeat, so the call is counted (a lead lost for an
    unknowable reason would be worse than a rare double) and the rule says so.

    Conditions are checked in the order a marketer reads them (answered,
    talk time, repeat); the first that fails is the reason given.
    """
    first_time = (previous_call_at is None) if caller_known else None
    talk = (talk_seconds or 0.0) if status is CallStatus.ANSWERED else 0.0
    met: list[str] = []
    failed: str | None = None
    if rule.answered:
        if status is CallStatus.ANSWERED:
            met.append("answered")
        else:
            failed = f"not answered ({status.value})"
    if failed is None and rule.min_talk_seconds > 0:
        if talk >= rule.min_talk_seconds:
            met.append(f"talk {_seconds(talk)} s >= {_seconds(rule.min_talk_seconds)} s")
        else:
            failed = f"talk {_seconds(talk)} s < {_seconds(rule.min_talk_seconds)} s"
    if failed is None and rule.unique_days > 0:
        window = f"within {rule.unique_days} day{'s' if rule.unique_days != 1 else ''}"
        if not caller_known:
            met.append(f"withheld number, counted as first call {window}")
        elif (previous_call_at is not None
              and started_at - previous_call_at < rule.unique_days * DAY):
            failed = f"repeat call {window}"
        else:
            met.append(f"first call {window}")
    if failed is not None:
        return Verdict(first_time, previous_call_at, False, f"{rule_name}: not target: {failed}")
    return Verdict(first_time, previous_call_at, True,
                   f"{rule_name}: {', '.join(met) if met else 'every call counts'}")


def _seconds(value: float) -> str:
    """`75`, `29.9`: tenths rounded down (29.96 s must not read as `30 s < 30 s`),
    whole seconds without a fraction."""
    tenths = math.floor(value * 10 + 1e-9) / 10
    return str(int(tenths)) if tenths == int(tenths) else f"{tenths:.1f}"
