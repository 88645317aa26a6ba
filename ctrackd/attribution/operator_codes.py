"""What an operator's code does to a call's attribution (the AMI side's promo path).

The call was attributed when it arrived (its number, a pool, a caller's
code); the operator's `*` + code re-attributes it afterwards through the
same `attribute_promo` as a caller's code, with `entry=operator`:
- a live code: `tracking: promo`, the session's channel and fields;
- anything else (an unknown or expired code, a short one ended by `#`, no
  web side at all): the code is recorded as `unknown` and the attribution
  stays as it was.

A code keyed twice: the last complete one wins, and it is judged against
the attribution the call had *before* any operator code, so a wrong code
after a right one does not keep the first code's session under the second
code's name. That first attribution is remembered here (a bounded memory:
codes are keyed during calls, minutes apart at most).

An unknown operator code never overrides a caller's matched code: the
caller's own digits named a live session, a mistyped `*` code names none.
"""

from __future__ import annotations

from collections import OrderedDict

from ctrackd.attribution.attribute import attribute_promo
from ctrackd.attribution.dynamic import DynamicPlan
from ctrackd.attribution.events import OperatorCodeKeyed
from ctrackd.attribution.plan import StaticPlan
from ctrackd.attribution.records import Attribution, PromoEntry, PromoStatus, Tracking

#: calls whose attribution before the operator's first code is remembered
MEMORY = 4096


class OperatorCodes:
    """Resolves operator codes; pure (the daemon reads and writes the store)."""

    def __init__(self, memory: int = MEMORY) -> None:
        self._before: OrderedDict[str, Attribution] = OrderedDict()
        self._memory = memory

    def resolve(self, static: StaticPlan, dynamic: DynamicPlan | None,
                stored: Attribution | None, keyed: OperatorCodeKeyed,
                at: float) -> Attribution | None:
        """The call's new attribution, or None when the code changes nothing.

        `stored` is the call's attribution as the store has it (None: no row
        yet, a call only AMI saw); `at` is the plan's clock (codes live on it).
        """
        base = self._base(stored, keyed)
        if keyed.complete and dynamic is not None:
            session, status = dynamic.session_by_code(keyed.code, at)
        else:  # `#` before the code was whole, or no web side to name a session
            session, status = None, PromoStatus.UNKNOWN
        if (status is not PromoStatus.MATCHED and base.promo_entry is PromoEntry.CALLER
                and base.promo_status is PromoStatus.MATCHED):
            return None
        return attribute_promo(static, dynamic, base, keyed.code, PromoEntry.OPERATOR,
                               status, session)

    def _base(self, stored: Attribution | None, keyed: OperatorCodeKeyed) -> Attribution:
        base = self._before.get(keyed.call_id)
        if base is not None:
            self._before.move_to_end(keyed.call_id)
            return base
        # After a daemon restart the stored row may already carry an earlier
        # operator code's result: the best base there is.
        base = stored or bare_attribution(keyed.call_id, keyed.ts)
        self._before[keyed.call_id] = base
        if len(self._before) > self._memory:
            self._before.popitem(last=False)
        return base


def bare_attribution(call_id: str, started_at: float) -> Attribution:
    """A call nobody attributed (AMI saw it, no AGI record yet): untracked, no target."""
    return Attribution(call_id=call_id, started_at=started_at, did=None, caller=None,
                       caller_name=None, tracking=Tracking.UNTRACKED, channel=None,
                       source=None, medium=None, campaign=None, label=None, forward_to="",
                       ring_timeout=0, recording_path=None)
