"""ctrackd-agi: the classic stdin AGI the dialplan runs when the daemon is unreachable.

The daemon answers FastAGI on every call; when it is down (upgrade, crash,
restart) Asterisk cannot connect and the dialplan falls back to this script,
started once per call as the asterisk user. It must give the same answer the
daemon would have (same config, same core function `attribute_static`, same
store, same channel variables), so the call is tracked all the same, marked
`tracking=fallback`.

A promo line is forwarded without asking for the code: the sessions that
hold codes live in the daemon's memory, so no code could match here, and the
caller would only wait longer for nothing. The record keeps the number's
channel with `promo_status=no_input` and the note `promo_not_asked`.

    ctrackd-agi track  [CONFIG]   attribute the call, write it, set the variables
    ctrackd-agi hangup [CONFIG]   in the hang-up handler: close the record

Two rules shape this file:
- It must never hurt the call. Every error (config unreadable, store locked,
  a bug) is written to stderr, which Asterisk's console shows, and the script
  still exits 0 quickly; on `track` it still sets CTRACK_FORWARD when it can,
  or leaves it empty so the dialplan dials CTRACKD_FALLBACK.
- It runs per call, on the call's path: nothing is imported until needed, and
  Asterisk hears two commands on `track` (`GET FULL VARIABLE` of the channel's
  start, `EXEC MSet`) and one (`GET FULL VARIABLE`) on `hangup`.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:  # only for the annotations: none of these load at run time here
    from ctrackd.attribution.records import Attribution, CallProgress, CallStatus
    from ctrackd.config import Config

DEFAULT_CONFIG = "/etc/ctrackd/ctrackd.yaml"
USAGE = "usage: ctrackd-agi {track|hangup} [CONFIG]   (run by Asterisk's AGI() application)"

#: how long `track` waits for a locked store: the caller hears this as silence,
#: and the call goes through anyway, so give up early
TRACK_BUSY_TIMEOUT = 1.0
#: the hang-up handler holds no caller: it may wait for the daemon's writer longer
HANGUP_BUSY_TIMEOUT = 3.0

#: the record's close reason when this script closed it
CLOSE_REASON = "fallback_handler"

# What the hang-up handler reads, in ONE `GET FULL VARIABLE` round trip. The
# free-text fields come last so that a stray separator inside them cannot
# shift the others (the split keeps any excess in the last field).
_SEPARATOR = "|"
# Queue() sets neither DIALSTATUS nor QUEUESTATUS when a member answers: the
# CDR's disposition and billsec, and MEMBERINTERFACE, tell that case.
_HANGUP_FIELDS = ("CTRACK_CALL_ID", "DIALSTATUS", "ANSWEREDTIME", "ANSWEREDTIME_MS",
                  "DIALEDTIME", "HANGUPCAUSE", "QUEUESTATUS", "CDR(disposition)",
                  "CDR(billsec,f)", "CDR(end,u)", "MEMBERINTERFACE", "CALLERID(num)",
                  "DIALEDPEERNUMBER", "DIALEDPEERNAME")

# Asterisk's own wording (main/channel.c causes[]), as AMI's Cause-txt shows it,
# for the causes a forwarded call ends with; others stay without a text.
_CAUSE_TEXTS = {
    0: "Unknown", 1: "Unallocated (unassigned) number", 3: "No route to destination",
    16: "Normal Clearing", 17: "User busy", 18: "No user responding",
    19: "User alerting, no answer", 20: "Subscriber absent", 21: "Call Rejected",
    26: "Answered elsewhere", 27: "Destination out of order", 28: "Invalid number format",
    31: "Normal, unspecified", 34: "Circuit/channel congestion", 38: "Network out of order",
    41: "Temporary failure", 42: "Switching equipment congestion",
    127: "Interworking, unspecified",
}


def main(argv: list[str] | None = None) -> int:
    """Console script entry point: always 0 under Asterisk, whatever happened."""
    # Asterisk may send SIGHUP when the caller hangs up (AGISIGHUP): the record
    # must still be written, and the default action would kill us mid-write.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    # The store is shared with the daemon through a group: the files SQLite
    # creates (the database, -wal, -shm) must stay writable for that group.
    os.umask(0o007)
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] not in ("track", "hangup"):
        _log("usage", detail=USAGE)
        return 2 if sys.stdin.isatty() else 0
    command = args[0]
    config_path = args[1] if len(args) > 1 and args[1] else DEFAULT_CONFIG
    try:
        agi = _open_agi()
    except Exception as exc:  # no AGI dialogue at all: nothing to set, the dialplan falls back
        _log("agi_start_failed", error=_describe(exc))
        return 0
    try:
        if command == "track":
            track(agi, config_path)
        else:
            hangup(agi, config_path)
    except Exception as exc:  # the error boundary: a bug of ours must not cost the call
        _log(f"{command}_failed", error=_describe(exc), traceback=True)
        _tell_asterisk(agi, f"ctrackd-agi {command} failed: {_describe(exc)}")
    return 0


# --- track -----------------------------------------------------------------

def track(agi: Any, config_path: str, *, now: float | None = None) -> None:
    """Attribute the call like the daemon would, write it, then ONE `EXEC MSet`."""
    from ctrackd.attribution.records import Tracking

    env: dict[str, str] = agi.env
    call_id = _env(env, "agi_uniqueid") or f"ctrackd-{time.time():.6f}"
    config = _load_config(agi, config_path)
    if config is None:
        return  # CTRACK_FORWARD stays empty: the dialplan dials CTRACKD_FALLBACK
    started = _channel_start(agi) if now is None else now
    attribution = _attribute(config, env, call_id, started)
    try:
        _save_attribution(config, attribution)
    except Exception as exc:  # the store failed: the call must still go through
        # Everything the record would have held, so it can be recovered from the log.
        _log("call_record_save_failed", call_id=call_id, error=_describe(exc),
             did=attribution.did, channel=attribution.channel,
             started_at=f"{attribution.started_at:.3f}", forward_to=attribution.forward_to,
             tracking=Tracking.FALLBACK.value)
    _set_variables(agi, attribution)


def _channel_start(agi: Any) -> float:
    """When the channel was created: the record's start, as the daemon would store it.

    This script starts a second or so after the call arrived (the FastAGI try,
    then a process start), so its own clock would shorten every ring time.
    The CDR's raw start (`CDR(start,u)`: epoch with microseconds) is the
    channel's creation while the call has a single CDR row, as it has here.
    """
    now = time.time()
    try:
        raw = agi.get_full_variable("${CDR(start,u)}") or ""
        started = float(raw)
    except Exception:  # unreadable or not a number: our own clock is the next best
        return now
    return started if now - 3600 < started <= now else now


def _attribute(config: Config, env: dict[str, str], call_id: str, now: float) -> Attribution:
    from dataclasses import replace

    from ctrackd.attribution.attribute import attribute_call, is_promo_line, promo_not_asked
    from ctrackd.attribution.plan import fallback_attribution
    from ctrackd.attribution.records import Tracking

    plan = config.static_plan()
    did = _env(env, "agi_extension") or _env(env, "agi_dnid")
    caller_name = _env(env, "agi_calleridname")
    try:
        # no live sessions here: a pool number still goes to its pool's target
        attribution = attribute_call(plan, None, call_id=call_id, did=did,
                                     caller=_env(env, "agi_callerid"), caller_name=caller_name,
                                     now=now, pools=config.pools, tracking=Tracking.FALLBACK)
        # nor promo codes: a promo line is forwarded without asking (module docstring)
        return promo_not_asked(attribution) if is_promo_line(plan, attribution) else attribution
    except Exception as exc:  # still forward to the default target, and say why
        _log("call_attribution_failed", call_id=call_id, error=_describe(exc), traceback=True)
        fallback = fallback_attribution(plan, call_id=call_id, did=did, caller=None,
                                        caller_name=caller_name, now=now,
                                        error=type(exc).__name__)
        return replace(fallback, tracking=Tracking.FALLBACK)


def _save_attribution(config: Config, attribution: Attribution) -> None:
    from ctrackd.store import queries
    from ctrackd.store.schema import migrate

    conn = queries.connect(config.store.path, readonly=False,
                           synchronous=config.store.synchronous,
                           busy_timeout=TRACK_BUSY_TIMEOUT)
    try:
        migrate(conn)  # the daemon may never have run: the first fallback call creates the store
        queries.save_attribution(conn, attribution)
    finally:
        conn.close()


def _set_variables(agi: Any, attribution: Attribution) -> None:
    from ctrackd.agi.commands import exec_mset_fitting
    from ctrackd.variables import ESSENTIAL_VARS, channel_variables

    line, trimmed = exec_mset_fitting(channel_variables(attribution), ESSENTIAL_VARS)
    if trimmed:  # too long for one AGI line (a huge label or name)
        _log("variables_trimmed", call_id=attribution.call_id)
    _command(agi, line)


# --- hangup ----------------------------------------------------------------

def hangup(agi: Any, config_path: str, *, now: float | None = None) -> None:
    """Close the call's record from the dead channel's variables, unless already closed."""
    from ctrackd.attribution.numbers import normalise_number
    from ctrackd.attribution.records import CallProgress

    values = _read_hangup_variables(agi)
    ended_at = _hung_up_at(values, time.time() if now is None else now)
    call_id = values["CTRACK_CALL_ID"] or _env(agi.env, "agi_uniqueid")
    if not call_id:
        _log("hangup_without_call_id")
        return
    config = _load_config(agi, config_path)
    if config is None:
        return
    from ctrackd.store import queries
    from ctrackd.store.schema import migrate

    conn = queries.connect(config.store.path, readonly=False,
                           synchronous=config.store.synchronous,
                           busy_timeout=HANGUP_BUSY_TIMEOUT)
    try:
        migrate(conn)
        known = queries.get_progress(conn, call_id)
        if known is not None and not known.is_open:
            return  # the daemon's AMI side closed it already: its record is the better one
        status = call_status(values["DIALSTATUS"], values["QUEUESTATUS"],
                             values["CDR(disposition)"])
        progress = CallProgress(
            call_id=call_id,
            started_at=known.started_at if known else _started_at(call_id, values, ended_at),
            # a row with no attribution (the store was locked at `track`) still gets the caller
            did=known.did if known else None,
            caller=known.caller if known else normalise_number(values["CALLERID(num)"],
                                                                config.phone_region),
            dial_status=values["DIALSTATUS"] or None,
        )
        _fill_answer(progress, status, values, ended_at)
        cause = _int(values["HANGUPCAUSE"])
        progress.hangup_cause = cause
        progress.hangup_cause_txt = _CAUSE_TEXTS.get(cause) if cause is not None else None
        progress.finish(status, ended_at, CLOSE_REASON)
        # only_if_open: if the daemon closed it meanwhile, its record stays
        queries.save_progress(conn, [progress], only_if_open=True)
        _save_leg(conn, progress, values)
        _judge(conn, config, call_id, ended_at)
    finally:
        conn.close()


def _judge(conn: Any, config: Config, call_id: str, now: float) -> None:
    """First time or repeat, target or not, the missed-call hook: as the daemon would.

    A separate short transaction after the record's: a failure here costs the
    verdict only, never the record: the daemon's sweep (every few minutes, by the
    row's write time) finds the call unjudged and judges it.
    """
    from ctrackd.store.judge import judge_calls

    enqueue = None
    if config.hooks:  # the outbox's enqueue with this config's hooks bound
        from ctrackd.hooks.outbox import enqueue as enqueue_hook
        hooks = config.hooks
        enqueue = (lambda conn, event, call_id, payload, now:  # noqa: E731
                   enqueue_hook(conn, hooks, event, call_id, payload, now))
    try:
        judge_calls(conn, [call_id], rules=config.target_rule, now=now, enqueue=enqueue)
    except Exception as exc:
        _log("call_judge_failed", call_id=call_id, error=_describe(exc))


def _save_leg(conn: Any, progress: CallProgress, values: dict[str, str]) -> None:
    """The answering leg, for the operators report: the only leg this handler knows.

    Losers of a ring group or a queue are not known here (docs/operators.md).
    The leg is named by the answering channel (its Uniqueid is not at hand);
    it rang from DIALEDTIME before the end (Dial), else from the call's start
    (Queue sets none). Written only when the call has no legs (the daemon saw
    it otherwise); a failure costs the leg only, never the record.
    """
    if progress.answered_at is None or not progress.answered_by or progress.ended_at is None:
        return
    from ctrackd.store.legs import fallback_leg

    dialed = _int(values["DIALEDTIME"])
    rang_at = progress.ended_at - dialed if dialed is not None else progress.started_at
    try:
        fallback_leg(conn, call_id=progress.call_id,
                     leg=values["DIALEDPEERNAME"] or progress.answered_by,
                     endpoint=progress.answered_by, rang_at=min(rang_at, progress.answered_at),
                     answered_at=progress.answered_at, ended_at=progress.ended_at)
    except Exception as exc:
        _log("call_leg_save_failed", call_id=progress.call_id, error=_describe(exc))


def _read_hangup_variables(agi: Any) -> dict[str, str]:
    """All the variables in one round trip; on a dead channel GET FULL VARIABLE still works."""
    expression = _SEPARATOR.join("${%s}" % name for name in _HANGUP_FIELDS)
    raw = agi.get_full_variable(expression) or ""
    parts = raw.split(_SEPARATOR, len(_HANGUP_FIELDS) - 1)
    parts += [""] * (len(_HANGUP_FIELDS) - len(parts))
    return {name: value.strip() for name, value in zip(_HANGUP_FIELDS, parts)}


def call_status(dial_status: str, queue_status: str = "", cdr_disposition: str = ""
                ) -> CallStatus:
    """The call's outcome from Dial's DIALSTATUS, else Queue's QUEUESTATUS, else the CDR.

    Empty or CANCEL: the caller hung up before anyone answered. Queue() sets
    no DIALSTATUS, and no QUEUESTATUS when a member answered: then the CDR's
    disposition (ANSWERED) tells it.
    """
    from ctrackd.attribution.records import CallStatus
    from ctrackd.attribution.tracker import DIAL_OUTCOMES

    dial_status = dial_status.strip().upper()
    if dial_status == "ANSWER":
        return CallStatus.ANSWERED
    if dial_status == "CANCEL":
        return CallStatus.ABANDONED
    if dial_status:
        return DIAL_OUTCOMES.get(dial_status, CallStatus.FAILED)  # INVALIDARGS, DONTCALL...
    queue_status = queue_status.strip().upper()
    if queue_status == "TIMEOUT":
        return CallStatus.NO_ANSWER
    if queue_status in {"FULL", "JOINEMPTY", "LEAVEEMPTY", "JOINUNAVAIL", "LEAVEUNAVAIL"}:
        return CallStatus.FAILED
    if cdr_disposition.strip().upper() == "ANSWERED":
        return CallStatus.ANSWERED
    return CallStatus.ABANDONED


def answered_by(peer_number: str, peer_name: str) -> str | None:
    """`IAX2/phones/100`, `PJSIP/101`: DIALEDPEERNUMBER with its channel tech in front.

    DIALEDPEERNUMBER is the Dial target without the tech (`phones/100`,
    `101`, `100@internal`); the tech comes from DIALEDPEERNAME, the answering
    channel's name (`IAX2/phones-15449`, `Local/100@internal-0001;1`).
    """
    peer_number, peer_name = peer_number.strip(), peer_name.strip()
    tech = peer_name.split("/", 1)[0] if "/" in peer_name else ""
    if not peer_number:
        return peer_name.rsplit("-", 1)[0] if peer_name else None
    if not tech or peer_number.lower().startswith(tech.lower() + "/"):
        return peer_number
    return f"{tech}/{peer_number}"


def _fill_answer(progress: CallProgress, status: CallStatus, values: dict[str, str],
                 ended_at: float) -> None:
    from ctrackd.attribution.records import CallStatus

    if status is not CallStatus.ANSWERED:
        return
    # ANSWEREDTIME_MS (newer Asterisk) is more precise; ANSWEREDTIME is everywhere.
    talk_ms = _int(values["ANSWEREDTIME_MS"])
    talk: float | None = talk_ms / 1000.0 if talk_ms is not None else _int(
        values["ANSWEREDTIME"])
    if talk is None:  # a queue call: the CDR's billable seconds
        talk = _float(values["CDR(billsec,f)"])
    if talk is not None:
        progress.answered_at = ended_at - talk
    progress.answered_by = (answered_by(values["DIALEDPEERNUMBER"], values["DIALEDPEERNAME"])
                            or values["MEMBERINTERFACE"] or None)


def _float(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if 0 <= value < 10 * 86400 else None


def _hung_up_at(values: dict[str, str], now: float) -> float:
    """When the call ended: the CDR's end, fixed at the hang-up (`CDR(end,u)`).

    This handler runs a process start later, a second or more on a busy
    machine (measured against a real Asterisk: 1 s too long a call without
    it); our clock is the fallback when the CDR says nothing usable.
    """
    ended = _float_epoch(values["CDR(end,u)"])
    return ended if ended is not None and now - 3600 < ended <= now + 1 else now


def _float_epoch(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _started_at(call_id: str, values: dict[str, str], ended_at: float) -> float:
    """When no row exists: the channel's creation time, which its Uniqueid carries.

    A Uniqueid is `[systemname-]<epoch seconds>.<sequence>`; failing that,
    the dial time is the best lower bound we have.
    """
    seconds = call_id.rsplit("-", 1)[-1].split(".", 1)[0]
    if seconds.isdigit() and len(seconds) >= 9:
        started = float(seconds)
        if started <= ended_at:
            return started
    return ended_at - float(_int(values["DIALEDTIME"]) or 0)


# --- shared ----------------------------------------------------------------

class _Discard:
    """A write-only sink: pyst2 prints its whole dialogue to stderr, Asterisk's console."""

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass


def _open_agi(stdin: TextIO | None = None, stdout: TextIO | None = None) -> Any:
    """pyst2's stdin AGI, speaking UTF-8 whatever the locale Asterisk started us with."""
    import io

    from asterisk.agi import AGI

    class QuietAGI(AGI):
        def test_hangup(self) -> None:
            # pyst2 refuses every command after SIGHUP; a hung-up channel still
            # answers GET/SET VARIABLE and EXEC, and the record must be written.
            return None

    if stdin is None:
        stdin = io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8", errors="replace",
                                 newline="\n")
    if stdout is None:
        stdout = io.TextIOWrapper(sys.stdout.buffer, encoding="utf-8", errors="replace",
                                  newline="\n")
    return QuietAGI(stdin=stdin, stdout=stdout, stderr=_Discard())


def _command(agi: Any, line: str) -> None:
    """One AGI command; a refusal is logged, never raised (the call goes on)."""
    from asterisk.agi import AGIException

    try:
        agi.execute(line)
    except AGIException as exc:
        _log("agi_command_rejected", command=line.split(" ", 2)[:2], error=_describe(exc))


def _load_config(agi: Any, path: str) -> Config | None:
    from ctrackd.config import ConfigError, load_config

    try:
        return load_config(path)
    except ConfigError as exc:
        _log("config_invalid", error=str(exc))
    except Exception as exc:
        _log("config_unreadable", path=path, error=_describe(exc), traceback=True)
    _tell_asterisk(agi, f"ctrackd-agi: cannot use {path}, see the console")
    return None


def _tell_asterisk(agi: Any, message: str) -> None:
    """Best effort VERBOSE, so the problem also reaches Asterisk's own log files."""
    text = message.replace("\\", "/").replace('"', "'").replace("\n", " ")[:300]
    try:
        agi.execute("VERBOSE", f'"{text}"', 1)
    except Exception:  # the channel may be gone; stderr already has it
        pass


def _env(env: dict[str, str], name: str) -> str | None:
    # Asterisk writes "unknown" for a missing value.
    value = env.get(name)
    return None if value in (None, "", "unknown") else value


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text not in (None, "") else None
    except ValueError:
        return None


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _log(event: str, *, traceback: bool = False, **fields: object) -> None:
    """One line on stderr: Asterisk shows an AGI script's stderr on its console."""
    details = " ".join(f"{key}={value}" for key, value in fields.items())
    print(f"ctrackd-agi: {event} {details}".rstrip(), file=sys.stderr, flush=True)
    if traceback:
        import traceback as tb

        tb.print_exc(file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
