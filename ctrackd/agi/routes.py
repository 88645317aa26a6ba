"""FastAGI routes: the `track` script, and the table the server routes by.

`track` serves static numbers and pool numbers alike (attribute_call decides).

`track` is on the call's path: every millisecond here is post-dial delay the
caller hears as silence. So it does three things and no more: ask the core,
make the record durable (a crash afterwards cannot lose the call), and send
every channel variable in ONE command (`EXEC MSet`), one round trip. It never
makes the call fail: an unknown number or any error of ours still sends the
call to the default target, and the record says why.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping

import structlog

from ctrackd.agi.commands import exec_mset_fitting
from ctrackd.agi.protocol import AgiChannel
from ctrackd.attribution.attribute import attribute_call
from ctrackd.attribution.dynamic import DynamicPlan
from ctrackd.attribution.plan import StaticPlan, fallback_attribution
from ctrackd.attribution.records import Attribution
from ctrackd.logs import mask_number
from ctrackd.variables import ESSENTIAL_VARS, channel_variables

Route = Callable[[AgiChannel], Awaitable[None]]
SaveAttribution = Callable[[Attribution], Awaitable[None]]

log = structlog.get_logger("ctrackd.agi")


def _env(channel: AgiChannel, name: str) -> str | None:
    value = channel.env.get(name)
    return None if value in (None, "", "unknown") else value


class TrackRoute:
    """`AGI(agi://host:port/track)`: static attribution of an inbound call."""

    def __init__(self, plan: Callable[[], StaticPlan], save: SaveAttribution,
                 clock: Callable[[], float] = time.time,
                 dynamic: Callable[[], DynamicPlan | None] = lambda: None) -> None:
        # `plan` and `dynamic` are read per call so that a SIGHUP reload applies
        # to the next call.
        self._plan = plan
        self._dynamic = dynamic
        self._save = save
        self._clock = clock

    async def __call__(self, channel: AgiChannel) -> None:
        call_id = _env(channel, "agi_uniqueid") or f"ctrackd-{self._clock():.6f}"
        structlog.contextvars.bind_contextvars(call_id=call_id)
        attribution = self._attribute(channel, call_id)
        try:
            await self._save(attribution)
        except Exception as exc:  # the store failed: the call must still go through
            # Log everything the record would have held, so it can be recovered
            # from the journal. Nothing else can be done on the call path.
            log.error("call_record_save_failed", error=repr(exc), did=attribution.did,
                      channel=attribution.channel, started_at=attribution.started_at,
                      caller=mask_number(attribution.caller), forward_to=attribution.forward_to)
        line, trimmed = exec_mset_fitting(channel_variables(attribution), ESSENTIAL_VARS)
        if trimmed:
            log.warning("agi_variables_trimmed", did=attribution.did, channel=attribution.channel)
        reply = await channel.command(line)
        if not reply.ok:
            log.warning("agi_variables_rejected", code=reply.code, reply=reply.text[:200])
        log.debug("call_attributed", did=attribution.did, channel=attribution.channel,
                  forward_to=attribution.forward_to, note=attribution.note)

    def _attribute(self, channel: AgiChannel, call_id: str) -> Attribution:
        plan = self._plan()
        did = _env(channel, "agi_extension") or _env(channel, "agi_dnid")
        caller_name = _env(channel, "agi_calleridname")
        try:
            return attribute_call(
                plan, self._dynamic(), call_id=call_id, did=did,
                caller=_env(channel, "agi_callerid"), caller_name=caller_name,
                now=self._clock())
        except Exception as exc:  # a bug of ours must not cost the call
            log.exception("call_attribution_failed", did=did)
            return fallback_attribution(plan, call_id=call_id, did=did, caller=None,
                                        caller_name=caller_name, now=self._clock(),
                                        error=type(exc).__name__)


def build_routes(track: TrackRoute) -> Mapping[str, Route]:
    """The AGI script names the dialplan may call, and what answers them."""
    return {"track": track}
