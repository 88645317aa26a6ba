"""Target calls and repeat calls: the pure verdict, one table of cases, no store, no loop."""

from __future__ import annotations

import pytest

from ctrackd.attribution.plan import TargetRule
from ctrackd.attribution.records import CallStatus
from ctrackd.attribution.targets import DAY, Verdict, judge_call

T0 = 1_795_000_000.0
DEFAULT = TargetRule()                                        # answered, talk >= 30 s
STRICT = TargetRule(min_talk_seconds=60, unique_days=30)      # a channel's own rule
ANY = TargetRule(min_talk_seconds=0, answered=False)          # every call counts
UNANSWERED_OK = TargetRule(min_talk_seconds=0, answered=False, unique_days=1)

A, B, N, M = (CallStatus.ANSWERED, CallStatus.BUSY, CallStatus.NO_ANSWER,
              CallStatus.ABANDONED)


@pytest.mark.parametrize("name, rule, status, talk, previous, known, expected", [
    # the default rule: answered and 30 s of talk
    ("default", DEFAULT, A, 75.0, None, True,
     Verdict(True, None, True, "default: answered, talk 75 s >= 30 s")),
    ("default", DEFAULT, A, 30.0, None, True,
     Verdict(True, None, True, "default: answered, talk 30 s >= 30 s")),  # the bound counts
    ("default", DEFAULT, A, 29.96, None, True,  # never reads as "30 s < 30 s"
     Verdict(True, None, False, "default: not target: talk 29.9 s < 30 s")),
    ("default", DEFAULT, A, 12.4, None, True,
     Verdict(True, None, False, "default: not target: talk 12.4 s < 30 s")),
    ("default", DEFAULT, N, 0.0, None, True,
     Verdict(True, None, False, "default: not target: not answered (no_answer)")),
    ("default", DEFAULT, B, None, T0 - DAY, True,
     Verdict(False, T0 - DAY, False, "default: not target: not answered (busy)")),
    ("default", DEFAULT, A, None, None, True,  # answered but no talk time known
     Verdict(True, None, False, "default: not target: talk 0 s < 30 s")),
    # a channel's rule with a repeat window
    ("channel yandex-direct", STRICT, A, 12.0, None, True,
     Verdict(True, None, False, "channel yandex-direct: not target: talk 12 s < 60 s")),
    ("channel yandex-direct", STRICT, A, 90.0, T0 - 3 * DAY, True,
     Verdict(False, T0 - 3 * DAY, False,
             "channel yandex-direct: not target: repeat call within 30 days")),
    ("channel yandex-direct", STRICT, A, 90.0, T0 - 30 * DAY, True,  # exactly N days: new again
     Verdict(False, T0 - 30 * DAY, True,
             "channel yandex-direct: answered, talk 90 s >= 60 s, first call within 30 days")),
    ("channel yandex-direct", STRICT, A, 90.0, None, True,
     Verdict(True, None, True,
             "channel yandex-direct: answered, talk 90 s >= 60 s, first call within 30 days")),
    ("channel yandex-direct", STRICT, A, 90.0, None, False,  # withheld: counted, and said so
     Verdict(None, None, True, "channel yandex-direct: answered, talk 90 s >= 60 s,"
             " withheld number, counted as first call within 30 days")),
    # rules that do not ask for an answer
    ("default", ANY, N, 0.0, T0 - 60, True,
     Verdict(False, T0 - 60, True, "default: every call counts")),
    ("channel billboard", UNANSWERED_OK, M, 0.0, T0 - 3600, True,
     Verdict(False, T0 - 3600, False, "channel billboard: not target: repeat call within 1 day")),
    ("channel billboard", UNANSWERED_OK, M, 0.0, T0 - 2 * DAY, True,
     Verdict(False, T0 - 2 * DAY, True, "channel billboard: first call within 1 day")),
    # the first condition that fails is the reason, in reading order
    ("default", TargetRule(unique_days=7), N, 0.0, T0 - 60, True,
     Verdict(False, T0 - 60, False, "default: not target: not answered (no_answer)")),
    ("default", TargetRule(min_talk_seconds=30, answered=False), CallStatus.UNKNOWN, None, None,
     True, Verdict(True, None, False, "default: not target: talk 0 s < 30 s")),
])
def test_verdicts(name: str, rule: TargetRule, status: CallStatus, talk: float | None,
                  previous: float | None, known: bool, expected: Verdict) -> None:
    assert judge_call(name, rule, status=status, talk_seconds=talk, started_at=T0,
                      previous_call_at=previous, caller_known=known) == expected


def test_talk_of_an_unanswered_call_never_counts() -> None:
    """A stray talk figure on a missed call (a resync's guess) cannot make it a lead."""
    verdict = judge_call("default", TargetRule(answered=False), status=CallStatus.BUSY,
                         talk_seconds=99.0, started_at=T0, previous_call_at=None,
                         caller_known=True)
    assert not verdict.target and verdict.target_rule == "default: not target: talk 0 s < 30 s"
