"""FastAGI routes: the `track` script, and the table the server routes by.

`track` serves static numbers, pool numbers (attribute_call decides) and
promo lines (a number with `tracking: promo`).

`track` is on the call's path: every millisecond here is post-dial delay the
caller hears as silence. So on a plain number it does three things and no
more: ask the core, make the record durable (a crash afterwards cannot lose
the call), and send every channel variable in ONE command (`EXEC MSet`), one
round trip. It never makes the call fail: an unknown number or any error of
ours still sends the call to the default target, and the record says why.

A promo line holds the caller on purpose: the record is saved first (the
number's channel, promo status `pending`), then the call is answered and the
caller asked for the code shown on the website (`GET DATA`, `attempts` tries,
`#` alone skips); the record is saved again with what the code gave, and the
variables go in the same one MSet. A caller who hangs up meanwhile keeps the
first record, updated with what was known.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace

import structlog

from ctrackd.agi.commands import exec_mset_fitting, get_data
from ctrackd.agi.protocol import AgiChannel, AgiProtocolError, AgiReply
from ctrackd.attribution.attribute import (
    attribute_call,
    attribute_promo,
    is_promo_line,
    promo_not_asked,
)
from ctrackd.attribution.dynamic import DynamicPlan
from ctrackd.attribution.numbers import normalise_number
from ctrackd.attribution.plan import StaticPlan, fallback_attribution
from ctrackd.attribution.records import Attribution, PromoEntry, PromoStatus
from ctrackd.attribution.sessions import VisitorSession
from ctrackd.config import PromoConfig
from ctrackd.logs import mask_number
from ctrackd.variables import ESSENTIAL_VARS, channel_variables

Route = Callable[[AgiChannel], Awaitable[None]]
SaveAttribution = Callable[[Attribution], Awaitable[None]]

#: seconds a promo prompt may take to play, per try (the sound file's length)
PROMPT_SECONDS = 20.0
#: a promo session's own round trips around the dialogue (two saves, ANSWER, MSet)
PROMO_OVERHEAD_SECONDS = 10.0

log = structlog.get_logger("ctrackd.agi")


def _env(channel: AgiChannel, name: str) -> str | None:
    value = channel.env.get(name)
    return None if value in (None, "", "unknown") else value


def _did(channel: AgiChannel) -> str | None:
    return _env(channel, "agi_extension") or _env(channel, "agi_dnid")


def promo_session_seconds(promo: PromoConfig) -> float:
    """The longest a promo dialogue can rightly take: each try plays the prompt, then
    waits up to `digit_timeout` for each digit (Asterisk restarts the wait per digit)."""
    per_try = PROMPT_SECONDS + promo.digit_timeout * promo.length
    return PROMO_OVERHEAD_SECONDS + promo.attempts * per_try


class TrackRoute:
    """`AGI(agi://host:port/track)`: attribution of an inbound call."""

    def __init__(self, plan: Callable[[], StaticPlan], save: SaveAttribution,
                 clock: Callable[[], float] = time.time,
                 dynamic: Callable[[], DynamicPlan | None] = lambda: None,
                 promo: Callable[[], PromoConfig] = PromoConfig) -> None:
        # `plan`, `dynamic` and `promo` are read per call so that a SIGHUP
        # reload applies to the next call.
        self._plan = plan
        self._dynamic = dynamic
        self._promo = promo
        self._save = save
        self._clock = clock

    def session_limit(self, channel: AgiChannel) -> float | None:
        """What the server allows this session: a promo line's dialogue, else None (the
        server's own `session_timeout`, kept short for every plain number)."""
        try:
            plan = self._plan()
            did = normalise_number(_did(channel), plan.region)
            number = plan.numbers.get(did) if did else None
            if number is None or number.tracking != "promo":
                return None
            return promo_session_seconds(self._promo())
        except Exception:  # a bug here must not cost the session: the default limit
            log.exception("agi_session_limit_failed")
            return None

    async def __call__(self, channel: AgiChannel) -> None:
        call_id = _env(channel, "agi_uniqueid") or f"ctrackd-{self._clock():.6f}"
        structlog.contextvars.bind_contextvars(call_id=call_id)
        plan = self._plan()
        attribution = self._attribute(plan, channel, call_id)
        if is_promo_line(plan, attribution):
            attribution, gone = await self._ask_promo(channel, plan, attribution)
            if gone:
                return  # nobody to forward: the record is saved, Asterisk ends the call
        else:
            await self._save_safely(attribution)
        await self._send_variables(channel, attribution)
        log.debug("call_attributed", did=attribution.did, channel=attribution.channel,
                  forward_to=attribution.forward_to, note=attribution.note,
                  promo_status=attribution.promo_status)

    def _attribute(self, plan: StaticPlan, channel: AgiChannel, call_id: str) -> Attribution:
        did = _did(channel)
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

    async def _save_safely(self, attribution: Attribution) -> None:
        try:
            await self._save(attribution)
        except Exception as exc:  # the store failed: the call must still go through
            # Log everything the record would have held, so it can be recovered
            # from the journal. Nothing else can be done on the call path.
            log.error("call_record_save_failed", error=repr(exc), did=attribution.did,
                      channel=attribution.channel, started_at=attribution.started_at,
                      caller=mask_number(attribution.caller), forward_to=attribution.forward_to,
                      promo_code=attribution.promo_code, promo_status=attribution.promo_status)

    async def _send_variables(self, channel: AgiChannel, attribution: Attribution) -> None:
        line, trimmed = exec_mset_fitting(channel_variables(attribution), ESSENTIAL_VARS)
        if trimmed:
            log.warning("agi_variables_trimmed", did=attribution.did, channel=attribution.channel)
        reply = await channel.command(line)
        if not reply.ok:
            log.warning("agi_variables_rejected", code=reply.code, reply=reply.text[:200])

    # -- promo lines ------------------------------------------------------------

    async def _ask_promo(self, channel: AgiChannel, plan: StaticPlan,
                         base: Attribution) -> tuple[Attribution, bool]:
        """Save, answer, ask for the code, save what it gave.

        Returns the final attribution and whether the caller hung up meanwhile.
        """
        dynamic = self._dynamic()
        if dynamic is None or dynamic.promo is None:
            # No sessions hold codes (no `web:` section): asking would only delay the call.
            log.warning("promo_line_without_codes", did=base.did)
            final = promo_not_asked(base)
            await self._save_safely(final)
            return final, False
        await self._save_safely(replace(base, promo_entry=PromoEntry.CALLER,
                                        promo_status=PromoStatus.PENDING))
        code, status, session, gone = await self._dialogue(channel, self._promo(), dynamic)
        final = attribute_promo(plan, dynamic, base, code, PromoEntry.CALLER, status, session)
        await self._save_safely(final)
        log.info("promo_code_keyed", did=base.did, promo_status=status.value,
                 session_id=final.session_id, channel=final.channel, hung_up=gone)
        return final, gone

    async def _dialogue(self, channel: AgiChannel, promo: PromoConfig, dynamic: DynamicPlan
                        ) -> tuple[str | None, PromoStatus, VisitorSession | None, bool]:
        """ANSWER, then up to `attempts` GET DATA. Wrong digits and silence are retried,
        `#` alone is not; a hang-up ends the dialogue with what was keyed so far.

        Returns (code, status, session, the caller hung up).
        """
        assert dynamic.promo is not None
        length = dynamic.promo.length  # the live codes' length (promo.length once reloaded)
        keyed: str | None = None  # the last digits keyed: kept in the record when wrong
        if _gone(channel, await _command(channel, "ANSWER")):
            return None, PromoStatus.NO_INPUT, None, True
        for attempt in range(promo.attempts):
            prompt = (promo.retry_prompt or promo.prompt) if attempt else promo.prompt
            reply = await _command(channel, get_data(prompt, round(promo.digit_timeout * 1000),
                                                     length))
            if _gone(channel, reply):
                return keyed, _unmatched(keyed), None, True
            digits, timed_out = keyed_digits(reply)
            if digits == "" and not timed_out:
                return None, PromoStatus.SKIPPED, None, False  # `#` alone: no code to key
            if digits:
                keyed = digits
                session, status = dynamic.session_by_code(digits, self._clock())
                if status is PromoStatus.MATCHED:
                    return digits, status, session, False
        return keyed, _unmatched(keyed), None, False


def keyed_digits(reply: AgiReply) -> tuple[str | None, bool]:
    """(digits, timed out) from a GET DATA reply; digits None when the channel failed.

    res_agi.c `handle_getdata()`: `200 result=<digits>` when input ended with
    `#` or after max digits, `200 result=<digits> (timeout)` when the caller
    stopped keying (digits may be empty), `200 result=-1` on a hang-up or error.
    """
    if not reply.ok or reply.result is None or reply.result == "-1":
        return None, False
    return reply.result, reply.data == "timeout"


async def _command(channel: AgiChannel, line: str) -> AgiReply | None:
    """One command of the promo dialogue; None when Asterisk dropped the connection
    (it went with the caller): the record must still be finished, not left pending."""
    try:
        return await channel.command(line)
    except AgiProtocolError as exc:
        log.info("agi_connection_lost", command=line.split(" ", 2)[:2], error=str(exc))
        return None


def _gone(channel: AgiChannel, reply: AgiReply | None) -> bool:
    """The caller hung up: an inline HANGUP, a 511 (dead channel), -1 (GET DATA, ANSWER),
    or no connection left at all."""
    return (reply is None or channel.hung_up or reply.code == 511
            or (reply.ok and reply.result == "-1"))


def _unmatched(keyed: str | None) -> PromoStatus:
    """No try matched: digits on some try make it UNKNOWN, none at all NO_INPUT."""
    return PromoStatus.UNKNOWN if keyed else PromoStatus.NO_INPUT


def build_routes(track: TrackRoute) -> Mapping[str, Route]:
    """The AGI script names the dialplan may call, and what answers them."""
    return {"track": track}
