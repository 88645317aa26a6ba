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

The final MSet is sent whenever the connection is still there, even after a
hang-up: `200 result=-1` to GET DATA means the prompt could not be played on
a live channel just as much as a hang-up (res_agi sends its `HANGUP` line
*after* that reply, so the route cannot tell yet), and a channel left without
variables takes the dialplan's fallback, whose `ctrackd-agi` would then
overwrite our record as `tracking: fallback`. On a dead channel Asterisk
answers the MSet with a harmless 511.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from enum import Enum

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
            attribution, talk = await self._ask_promo(channel, plan, attribution)
            if not talk.connected:
                return  # Asterisk dropped the connection: the record is saved, nothing to send
            try:
                await self._send_variables(channel, attribution)
            except AgiProtocolError as exc:  # it went with the caller after all
                log.info("agi_connection_lost", command="EXEC", error=str(exc))
                return
            if talk.ended is _Ended.MINUS_ONE and not channel.hung_up:
                # Only now can -1 be told apart: a hang-up's HANGUP line comes
                # before the MSet's reply.
                if talk.prompt is None:
                    log.error("promo_answer_failed", did=attribution.did)
                else:
                    log.error("promo_prompt_failed", did=attribution.did, prompt=talk.prompt,
                              hint="is the sound file there, in the channel's language?")
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
        if reply.code == 511:  # the caller hung up during a promo dialogue: nothing to route
            log.debug("agi_variables_after_hangup")
        elif not reply.ok:
            log.warning("agi_variables_rejected", code=reply.code, reply=reply.text[:200])

    # -- promo lines ------------------------------------------------------------

    async def _ask_promo(self, channel: AgiChannel, plan: StaticPlan,
                         base: Attribution) -> tuple[Attribution, _Dialogue]:
        """Save, answer, ask for the code, save what it gave.

        Returns the final attribution and how the dialogue went (the variables
        are sent whenever the connection is still there, hung up or not).
        """
        dynamic = self._dynamic()
        if dynamic is None or dynamic.promo is None:
            # No sessions hold codes (no `web:` section): asking would only delay the call.
            log.warning("promo_line_without_codes", did=base.did)
            final = promo_not_asked(base)
            await self._save_safely(final)
            return final, _Dialogue()
        await self._save_safely(replace(base, promo_entry=PromoEntry.CALLER,
                                        promo_status=PromoStatus.PENDING))
        talk = await self._dialogue(channel, self._promo(), dynamic)
        final = attribute_promo(plan, dynamic, base, talk.code, PromoEntry.CALLER, talk.status,
                                talk.session)
        await self._save_safely(final)
        log.info("promo_code_keyed", did=base.did, promo_status=talk.status.value,
                 session_id=final.session_id, channel=final.channel,
                 ended=talk.ended.value)
        return final, talk

    async def _dialogue(self, channel: AgiChannel, promo: PromoConfig,
                        dynamic: DynamicPlan) -> _Dialogue:
        """ANSWER, then up to `attempts` GET DATA. Wrong digits and silence are retried,
        `#` alone is not; a hang-up ends the dialogue with what was keyed so far.

        A caller told "key the code, then hash" who keys `4821#` ends GET DATA at
        the 4th digit (max digits); the `#` is left queued and ends the next GET
        DATA at once with an empty `200 result=`. So an empty result right after a
        try that ended at exactly `length` digits is that leftover, not a skip: it
        is asked again without counting a try (once; the leftover try took no time,
        so the session's limit still holds).
        """
        assert dynamic.promo is not None
        length = dynamic.promo.length  # the live codes' length (promo.length once reloaded)
        talk = _Dialogue()
        reply = await _command(channel, "ANSWER")
        if _ended(channel, reply, talk):
            return talk
        attempt, leftover_hash_possible = 0, False
        while attempt < promo.attempts:
            talk.prompt = (promo.retry_prompt or promo.prompt) if attempt else promo.prompt
            reply = await _command(channel, get_data(talk.prompt,
                                                     round(promo.digit_timeout * 1000), length))
            if _ended(channel, reply, talk):
                talk.status = _unmatched(talk.code)
                return talk
            assert reply is not None  # _ended() said so
            digits, timed_out = keyed_digits(reply)
            if digits == "" and not timed_out:
                if leftover_hash_possible:
                    leftover_hash_possible = False
                    log.debug("promo_leftover_hash_skipped")
                    continue  # the same try again
                talk.status = PromoStatus.SKIPPED  # `#` alone: no code to key
                return talk
            attempt += 1
            leftover_hash_possible = digits is not None and len(digits) == length and not timed_out
            if digits:
                talk.code = digits  # the last digits keyed: kept in the record when wrong
                session, status = dynamic.session_by_code(digits, self._clock())
                if status is PromoStatus.MATCHED:
                    talk.status, talk.session = status, session
                    return talk
        talk.status = _unmatched(talk.code)
        return talk


class _Ended(Enum):
    """Why a promo dialogue stopped before the caller answered it."""

    NO = "no"                 # it ran its course
    CONNECTION = "connection"  # Asterisk dropped the connection: nothing can be sent
    HUNG_UP = "hung_up"       # an inline HANGUP, or 511 (dead channel)
    MINUS_ONE = "minus_one"   # `200 result=-1`: a hang-up, or the prompt could not play


@dataclass(slots=True)
class _Dialogue:
    """What a promo dialogue gave: the digits last keyed, what they gave, why it ended."""

    code: str | None = None
    status: PromoStatus = PromoStatus.NO_INPUT
    session: VisitorSession | None = None
    ended: _Ended = _Ended.NO
    prompt: str | None = None

    @property
    def connected(self) -> bool:
        return self.ended is not _Ended.CONNECTION


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


def _ended(channel: AgiChannel, reply: AgiReply | None, talk: _Dialogue) -> bool:
    """Whether the dialogue must stop here, noting why in `talk`: no connection left,
    the caller hung up (an inline HANGUP, a 511), or -1 (ANSWER or GET DATA failed:
    a hang-up, or a prompt that cannot be played; asking again would fail the same)."""
    if reply is None:
        talk.ended = _Ended.CONNECTION
    elif channel.hung_up or reply.code == 511:
        talk.ended = _Ended.HUNG_UP
    elif reply.ok and reply.result == "-1":
        talk.ended = _Ended.MINUS_ONE
    return talk.ended is not _Ended.NO


def _unmatched(keyed: str | None) -> PromoStatus:
    """No try matched: digits on some try make it UNKNOWN, none at all NO_INPUT."""
    return PromoStatus.UNKNOWN if keyed else PromoStatus.NO_INPUT


def build_routes(track: TrackRoute) -> Mapping[str, Route]:
    """The AGI script names the dialplan may call, and what answers them."""
    return {"track": track}
