"""The one consumer of AMI events: queue -> translate -> tracker -> store, in order.

A busy PBX sends thousands of events a second and only a few change a call
record. The consumer takes whatever is queued (up to `batch_max`), applies it
in order, and writes the changed records in one transaction per batch: the
store sees a few commits a second, not one per event.

Resynchronisation: after every (re)connect, and every `resync_interval`, it
asks Asterisk for its live channels (CoreShowChannels). The answer is put
back on the same queue, behind the events read before it, so it is applied
in stream order; calls that were open before the question and are not in
the answer ended unseen and are closed (see CallTracker).

Nothing here may stop on bad input: one error boundary per event; a failed
store write is kept and retried with the next batch, never dropped.

The tracker's notices go out after each batch, in order and before the
batch's records: answered outbound calls to `save_outbound` (kept and
retried like records), operator codes to `on_operator_code` one at a time
(the daemon resolves each against the store; awaiting it keeps "the last
code keyed wins" true). A code whose resolution fails is kept with the ones
after it and tried again with the next batch, like the outbound calls.

The legs that changed in a batch (`CallTracker.take_legs()`, one record per
leg, the latest) go to `save_legs` after the notices and before the calls'
records, so a call the store shows as ended has its legs there already; a
failed save keeps them (the latest of each) for the next batch.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import structlog

from ctrackd.ami.connection import AmiLinkEvent
from ctrackd.ami.translate import leg_of, translate
from ctrackd.attribution.events import (
    CallAttributed,
    ChannelsListed,
    ListedChannel,
    OperatorCodeKeyed,
    OutboundAnswered,
)
from ctrackd.attribution.legs import LegRecord
from ctrackd.attribution.records import CallProgress
from ctrackd.attribution.tracker import CallTracker
from ctrackd.logs import mask_number

log = structlog.get_logger("ctrackd.ami")

SaveProgress = Callable[[list[CallProgress]], Awaitable[None]]
RequestSnapshot = Callable[[], Awaitable[list[Mapping[str, Any]]]]
SaveOutbound = Callable[[list[OutboundAnswered]], Awaitable[None]]
OnOperatorCode = Callable[[OperatorCodeKeyed], Awaitable[None]]
SaveLegs = Callable[[list[LegRecord]], Awaitable[None]]

#: outbound calls (and operator codes) kept for a retry while the store refuses them;
#: beyond, the oldest go
_OUTBOUND_PENDING_MAX = 10_000


def _refused_by_itself(exc: Exception) -> bool:
    """An error that one item causes whatever the store's state (bad data, a
    constraint): retrying it cannot help. Anything else (a locked or full
    database, a lost disk) may pass later."""
    return isinstance(exc, (ValueError, TypeError)) or "constraint" in str(exc).lower()


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """The answer to CoreShowChannels, queued behind the events read before it."""

    messages: list[Mapping[str, Any]]
    known_before: frozenset[str]
    received_at: float


@dataclasses.dataclass(frozen=True)
class ResyncDue:
    """A periodic nudge to ask Asterisk for its live channels again."""


class AmiConsumer:
    def __init__(self, *, queue: asyncio.Queue[Any], tracker: CallTracker,
                 save_progress: SaveProgress, request_snapshot: RequestSnapshot,
                 on_call_finished: Callable[[CallProgress], None] | None = None,
                 save_outbound: SaveOutbound | None = None,
                 on_operator_code: OnOperatorCode | None = None,
                 save_legs: SaveLegs | None = None,
                 clock: Callable[[], float] = time.time, batch_max: int = 1000,
                 resync_interval: float = 300.0) -> None:
        self._queue = queue
        self._tracker = tracker
        self._save = save_progress
        self._request_snapshot = request_snapshot
        self._on_finished = on_call_finished
        self._save_outbound = save_outbound
        self._on_operator_code = on_operator_code
        self._outbound: list[OutboundAnswered] = []   # answered outbound calls not yet saved
        self._codes: list[OperatorCodeKeyed] = []     # operator codes not yet handed on
        self._save_legs = save_legs
        self._legs: dict[tuple[str, str], LegRecord] = {}  # changed legs not yet saved
        self._clock = clock
        self._batch_max = batch_max
        self._resync_interval = resync_interval
        self._pending: dict[str, CallProgress] = {}  # changed records not yet committed
        self._snapshot_task: asyncio.Task[None] | None = None
        self._connected = False
        self.events = 0          # AMI messages consumed
        self.failed_events = 0   # messages whose handling raised (logged, skipped)
        self.batches = 0

    async def run(self) -> None:
        """Consume forever (until cancelled); the daemon watches this task."""
        ticker = asyncio.create_task(self._tick())
        try:
            while True:
                batch = [await self._queue.get()]
                while len(batch) < self._batch_max and not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                self._apply_batch(batch)
                await self.flush()
        finally:
            ticker.cancel()
            if self._snapshot_task is not None:
                self._snapshot_task.cancel()

    async def drain(self) -> None:
        """Apply what is queued now and commit it: the daemon's last act on stop."""
        batch = []
        while not self._queue.empty():
            batch.append(self._queue.get_nowait())
        self._apply_batch(batch)
        await self.flush()

    async def flush(self) -> None:
        # Notices first: an operator's code rewrites the call's channel, and a
        # call saved as ended is judged (its target rule is the channel's) at once.
        await self._flush_notices()
        await self._flush_legs()
        await self._flush_progress()

    async def _flush_legs(self) -> None:
        if not self._legs or self._save_legs is None:
            return
        legs = list(self._legs.values())
        try:
            await self._save_legs(legs)
        except Exception as exc:
            if not _refused_by_itself(exc):  # the store is down: kept for the next batch
                log.error("call_legs_save_failed", error=repr(exc), legs=len(legs))
                return
            for leg in legs:  # one leg spoils the batch: the others still go in
                try:
                    await self._save_legs([leg])
                except Exception as one:
                    if not _refused_by_itself(one):
                        return
                    log.error("call_leg_dropped", error=repr(one), leg=repr(leg))
                self._legs.pop((leg.call_id, leg.leg), None)
            return
        for leg in legs:
            key = (leg.call_id, leg.leg)
            if self._legs.get(key) is leg:
                del self._legs[key]

    async def _flush_progress(self) -> None:
        if not self._pending:
            return
        records = list(self._pending.values())
        try:
            await self._save(records)
        except Exception as exc:
            log.error("call_progress_save_failed", error=repr(exc), calls=len(records))
            if len(records) > 1:
                await self._save_one_by_one(records)
            return  # what is still in _pending is retried with the next batch
        self._saved(records)
        self.batches += 1

    async def _save_one_by_one(self, records: list[CallProgress]) -> None:
        """After a failed batch: the good records go in; a record the store refuses
        by itself is logged whole and dropped, or it would fail every batch after it."""
        for record in records:
            try:
                await self._save([record])
            except Exception as exc:
                if _refused_by_itself(exc):
                    log.error("call_progress_dropped", error=repr(exc), record=repr(record))
                    self._saved([record])
                continue
            self._saved([record])

    async def _flush_notices(self) -> None:
        if self._outbound and self._save_outbound is not None:
            calls = self._outbound
            try:
                await self._save_outbound(calls)
            except Exception as exc:  # the store is down: kept for the next batch
                log.error("outbound_calls_save_failed", error=repr(exc), calls=len(calls))
                del calls[:-_OUTBOUND_PENDING_MAX]
            else:
                self._outbound = []
                for call in calls:
                    log.info("outbound_call_answered", uniqueid=call.uniqueid,
                             number=mask_number(call.number), endpoint=call.endpoint)
        codes, self._codes = self._codes, []
        for n, keyed in enumerate(codes):
            assert self._on_operator_code is not None  # only then are codes kept
            try:
                await self._on_operator_code(keyed)
            except asyncio.CancelledError:
                # stop() cancelled us: drain() hands this one and the rest on again
                # (resolving a code twice gives the same record).
                self._codes[:0] = codes[n:]
                raise
            except Exception as exc:
                if _refused_by_itself(exc):  # would fail every batch and hold up the rest
                    log.exception("operator_code_dropped", call_id=keyed.call_id,
                                  code=keyed.code)
                    continue
                # The store refused (locked by ctrackd-agi, disk full...): this code and
                # the ones after it wait for the next batch, in order, as outbound calls
                # do; resolving a code again gives the same row. Bounded like them.
                log.error("operator_code_failed", call_id=keyed.call_id, code=keyed.code,
                          error=repr(exc), kept=len(codes) - n)
                self._codes[:0] = codes[n:]
                del self._codes[:-_OUTBOUND_PENDING_MAX]
                return

    def _take_legs(self) -> None:
        for leg in self._tracker.take_legs():
            if self._save_legs is not None:
                self._legs[(leg.call_id, leg.leg)] = leg
        while len(self._legs) > _OUTBOUND_PENDING_MAX:  # the store refuses for long: oldest go
            del self._legs[next(iter(self._legs))]

    def _take_notices(self) -> None:
        for notice in self._tracker.take_notices():
            if isinstance(notice, OutboundAnswered):
                if self._save_outbound is not None:
                    self._outbound.append(notice)
            elif self._on_operator_code is not None:
                self._codes.append(notice)

    def _saved(self, records: list[CallProgress]) -> None:
        for record in records:
            if self._pending.get(record.call_id) is record:
                del self._pending[record.call_id]

    # -- one batch, in order ---------------------------------------------------

    def _apply_batch(self, batch: list[Any]) -> None:
        received_at = self._clock()
        for item in batch:
            try:
                self._apply_item(item, received_at)
            except Exception:  # one bad item (a hostile snapshot...) must not stop the daemon
                self.failed_events += 1
                log.exception("ami_item_failed", item=type(item).__name__)
        self._take_notices()
        self._take_legs()

    def _apply_item(self, item: Any, received_at: float) -> None:
        if isinstance(item, AmiLinkEvent):
            self._on_link(item)
        elif isinstance(item, Snapshot):
            self._on_snapshot(item)
        elif isinstance(item, CallAttributed):
            self._keep(self._tracker.apply(item))
        elif isinstance(item, ResyncDue):
            if self._connected:
                self._ask_snapshot()
        else:
            self._on_message(item, received_at)

    def _on_message(self, message: Mapping[str, Any], received_at: float) -> None:
        self.events += 1
        try:
            event = translate(message, received_at)
            if event is not None:
                self._keep(self._tracker.apply(event))
        except Exception:  # one bad event must not stop the daemon
            self.failed_events += 1
            log.exception("ami_event_failed", ami_event=str(message.get("Event")),
                          uniqueid=str(message.get("Uniqueid")))

    def _keep(self, changed: list[CallProgress]) -> None:
        for progress in changed:
            # A copy: the tracker goes on mutating its object while the store
            # writes this one from another thread.
            self._pending[progress.call_id] = dataclasses.replace(progress)
            if progress.ended_at is not None and self._on_finished is not None:
                self._on_finished(progress)

    def _on_link(self, link: AmiLinkEvent) -> None:
        self._connected = link.kind == "connected"
        if self._connected:
            self._ask_snapshot()

    def _ask_snapshot(self) -> None:
        if self._snapshot_task is not None and not self._snapshot_task.done():
            return
        known = self._tracker.known_calls()
        self._snapshot_task = asyncio.create_task(self._fetch_snapshot(known))

    async def _fetch_snapshot(self, known: frozenset[str]) -> None:
        try:
            messages = await self._request_snapshot()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("ami_resync_failed", error=repr(exc), open_calls=len(known))
            return
        self._queue.put_nowait(Snapshot(list(messages), known, self._clock()))

    def _on_snapshot(self, snapshot: Snapshot) -> None:
        channels = tuple(
            ListedChannel(leg=leg, state=str(m.get("ChannelStateDesc") or ""),
                          bridge_id=str(m.get("BridgeId") or "") or None)
            for m in snapshot.messages
            if m.get("Event") == "CoreShowChannel" and (leg := leg_of(m)) is not None)
        changed = self._tracker.apply(ChannelsListed(
            ts=snapshot.received_at, channels=channels, known_before=snapshot.known_before))
        self._keep(changed)
        log.info("ami_resynced", live_channels=len(channels), changed_calls=len(changed),
                 open_calls=self._tracker.open_calls)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self._resync_interval)
            self._queue.put_nowait(ResyncDue())
