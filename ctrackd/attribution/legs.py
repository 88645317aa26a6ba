"""Every leg that rang for a tracked call: who was offered the call, and what came of it.

The call record says who answered (`answered_by`); the operators report also
needs who was *offered* the call and did not take it: the ring group's
loser, the queue member who let it ring, the phone that was busy. A leg is
one dialled channel of a tracked call (its Uniqueid), opened by a DialBegin,
given its outcome by the first DialEnd that names it, ended by its hang-up.

What the captures show (../../../shared/asterisk-captures/README.md):
- a ring group's loser gets `DialEnd CANCEL` before the winner's `ANSWER`
  (09); a queue's loser gets two identical `CANCEL`s (10): the first
  outcome stands, a repeated DialEnd changes nothing;
- a caller who gives up while it rings gives the ringing leg `CANCEL` too
  (05): the leg alone cannot tell "a colleague answered" from "the caller
  left"; the report tells them apart by the call's own status;
- CHANUNAVAIL creates no channel at all (07): no leg, nobody was offered it;
- a transfer dials a new leg (11: from the inbound channel, 12: from a Local
  channel whose Linkedid is the call): the transfer target is offered the
  call too;
- a Local channel is a hop, not a phone: the leg that counts is the one the
  Local channel dials in turn (a queue member `Local/101@from-queue` rings
  `PJSIP/101`), so dialled Local channels are not recorded.

`LegBook` keeps the legs of the open calls and hands out the records that
changed since the last `take()`, one per leg (the latest), for the store to
upsert into `call_legs`. Pure: time comes in with the events.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

#: the outcome a DialEnd status gives a leg (stored lower case, as Asterisk names it)
ANSWER = "answer"
# Changed records nobody took (a tracker without a consumer) are not kept forever.
_CHANGED_MAX = 100_000


@dataclass(frozen=True, slots=True)
class LegRecord:
    """One row of `call_legs`. `outcome` is None while it rings (or when it ended unseen)."""

    call_id: str
    leg: str                  # the dialled channel's Uniqueid
    endpoint: str             # tracker.endpoint_of: "PJSIP/101", "IAX2/phones/100"
    rang_at: float            # DialBegin
    answered_at: float | None = None
    ended_at: float | None = None
    outcome: str | None = None   # answer, noanswer, busy, cancel, chanunavail, congestion...


def is_hop(dest_channel: str) -> bool:
    """A Local channel only leads to the real leg, which is dialled (and recorded) next."""
    return dest_channel[:6].lower() == "local/"


class LegBook:
    """The legs of the open calls, and the records changed since the last take()."""

    def __init__(self) -> None:
        self._legs: dict[str, LegRecord] = {}        # leg uniqueid -> latest record
        self._by_call: dict[str, list[str]] = {}     # call id -> its legs, in dial order
        self._changed: dict[tuple[str, str], LegRecord] = {}

    def __len__(self) -> int:
        return len(self._legs)

    def restore(self, records: list[LegRecord]) -> None:
        """The legs the store still has open for the calls restored after a restart."""
        for record in records:
            if record.ended_at is None and record.leg not in self._legs:
                self._legs[record.leg] = record
                self._by_call.setdefault(record.call_id, []).append(record.leg)

    def began(self, call_id: str, leg: str, endpoint: str, dest_channel: str,
              ts: float) -> None:
        """A DialBegin of a tracked call; a leg dialled twice keeps its first ring."""
        if leg in self._legs or is_hop(dest_channel):
            return
        self._put(LegRecord(call_id=call_id, leg=leg, endpoint=endpoint, rang_at=ts))
        self._by_call.setdefault(call_id, []).append(leg)

    def dial_ended(self, leg: str, dial_status: str, ts: float) -> None:
        """A DialEnd: the first one decides (queue members get CANCEL twice)."""
        record = self._legs.get(leg)
        if record is None or record.outcome is not None:
            return
        outcome = dial_status.strip().lower()
        if not outcome:
            return
        self._put(replace(record, outcome=outcome,
                          answered_at=ts if outcome == ANSWER else None))

    def hung_up(self, leg: str, ts: float) -> None:
        """The leg's own Hangup (one that rang with no DialEnd keeps no outcome)."""
        record = self._legs.pop(leg, None)
        if record is None:
            return
        self._put(replace(record, ended_at=ts), keep=False)
        legs = self._by_call.get(record.call_id)
        if legs is not None and leg in legs:
            legs.remove(leg)

    def close_call(self, call_id: str, ts: float) -> None:
        """The call ended: its legs whose hang-up we did not see (yet) end with it.

        Their own Hangup usually comes first (every capture); one that comes
        later finds the call finished and is not waited for.
        """
        for leg in self._by_call.pop(call_id, []):
            record = self._legs.pop(leg, None)
            if record is not None:
                self._put(replace(record, ended_at=max(ts, record.answered_at or ts)),
                          keep=False)

    def take(self) -> list[LegRecord]:
        """The records changed since the last take, the latest of each leg, in order."""
        changed = list(self._changed.values())
        self._changed.clear()
        return changed

    def _put(self, record: LegRecord, *, keep: bool = True) -> None:
        if keep:
            self._legs[record.leg] = record
        self._changed[(record.call_id, record.leg)] = record
        if len(self._changed) > _CHANGED_MAX:
            del self._changed[next(iter(self._changed))]
