"""Traffic simulation with ground truth: which pool size attributes calls to the right visitor?

Visitors arrive at a given rate (Poisson), stay a while (exponential), their
page heartbeats every 30 s while they stay; some of them call, while on the
page or a few minutes after leaving. Every call is attributed by the real core
(`DynamicPlan`, `attribute_pool_call`) and compared with who really called.
Printed per pool size: the share of calls attributed to the right visitor,
the share `exact`, overflows; and the size `ctrackd pools` would advise from
the usage the run itself recorded (Erlang B, docs/dynamic.md), marked `<-`.
Pure and in memory: the clock is simulated, so hours of traffic take seconds.
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import random
from dataclasses import dataclass

from ctrackd.attribution.dynamic import DynamicPlan, attribute_pool_call
from ctrackd.attribution.usage import summarise_usage
from ctrackd.attribution.pools import PoolSpec
from ctrackd.attribution.sessions import normalise_visit

HEARTBEAT = 30.0


@dataclass(frozen=True)
class Result:
    size: int
    calls: int
    right: int
    exact: int
    overflows: int
    advised: int


def simulate(size: int, *, rate: float, stay: float, call_share: float, hours: float,
             seed: int, hold: float = 900.0, grace: float = 3600.0) -> Result:
    rng = random.Random(seed)
    ids = itertools.count(1)
    numbers = tuple(f"+7495{i:07d}" for i in range(size))
    spec = PoolSpec(name="site", numbers=numbers, hold_seconds=hold, grace_seconds=grace)
    plan = DynamicPlan([spec], new_session_id=lambda: f"s{next(ids)}")
    # Events in time order: (time, order, kind, visitor)
    events: list[tuple[float, int, str, int]] = []
    order = itertools.count()
    t, end, visitor = 0.0, hours * 3600, 0
    while t < end:
        t += rng.expovariate(rate)
        visitor += 1
        leave = t + rng.expovariate(1 / stay)
        heapq.heappush(events, (t, next(order), "arrive", visitor))
        beat = t + HEARTBEAT
        while beat < leave:
            heapq.heappush(events, (beat, next(order), "beat", visitor))
            beat += HEARTBEAT
        if rng.random() < call_share:  # on the page, or up to 5 minutes after leaving
            when = rng.uniform(t, leave + 300)
            heapq.heappush(events, (when, next(order), "call", visitor))
    shown: dict[int, tuple[str, str]] = {}  # visitor -> (session id, number shown)
    calls = right = exact = 0
    while events:
        now, _, kind, who = heapq.heappop(events)
        if kind == "arrive":
            session, lease = plan.start_session(normalise_visit({"visitor_id": f"v{who}"}), now)
            if lease is not None:
                shown[who] = (session.session_id, lease.number)
        elif kind == "beat" and who in shown:
            if not plan.heartbeat(shown[who][0], now):
                session, lease = plan.start_session(
                    normalise_visit({"visitor_id": f"v{who}"}), now)
                if lease is not None:
                    shown[who] = (session.session_id, lease.number)
        elif kind == "call" and who in shown:
            calls += 1
            session, confidence = attribute_pool_call(plan, shown[who][1], now)
            right += session is not None and session.visitor_id == f"v{who}"
            exact += confidence.value == "exact"
    pool = plan.pools["site"]
    usage = summarise_usage(spec, pool.usage.snapshot(end), 0.0, end)
    return Result(size, calls, right, exact, pool.overflows, usage.recommended_size)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=0.2, help="visitors per second")
    parser.add_argument("--stay", type=float, default=180.0, help="mean seconds on the site")
    parser.add_argument("--call-share", type=float, default=0.2)
    parser.add_argument("--hours", type=float, default=8.0)
    args = parser.parse_args(argv)
    run = lambda size: simulate(size, rate=args.rate, stay=args.stay,  # noqa: E731
                                call_share=args.call_share, hours=args.hours, seed=7)
    # The advice comes from the usage a run records; a pool too large to
    # overflow sees the whole demand, as `ctrackd pools` would after a week.
    advised = run(2000).advised
    print(f"pool accuracy: {args.rate:g} visitors/s staying {args.stay:g} s on average (+ the "
          f"15 min hold), {args.call_share:.0%} of them call, {args.hours:g} h simulated")
    print(f"{'size':>5} {'calls':>6} {'right':>8} {'exact':>8} {'overflows':>10}")
    for share in (0.25, 0.5, 0.75, 0.9, 1.0, 1.1, 1.25):
        r = run(max(1, round(advised * share)))
        mark = "  <- advised by ctrackd pools" if share == 1.0 else ""
        print(f"{r.size:>5} {r.calls:>6} {r.right / r.calls:>8.1%} {r.exact / r.calls:>8.1%} "
              f"{r.overflows:>10}{mark}")
        if share == 1.0:
            at_advice = r
    print(f"at the advised size {advised}: {at_advice.right / at_advice.calls:.1%} of calls to "
          f"the right visitor, {at_advice.exact / at_advice.calls:.1%} exact (goal: >= 99 %)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
