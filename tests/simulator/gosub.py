"""The shipped dialplan file, read, and its subroutines run for real on a channel.

The inbound flow ([ctrackd-inbound]) is followed step by step in dialplan.py,
which takes its priority numbers from here (`priority_of`), so a reordered
file cannot go unnoticed. The subroutines that Dial and Queue run on the
called channels ([ctrackd-predial] for option b(), [ctrackd-whisper] for U())
are small and are interpreted from the file's own text by `gosub()`: what a
test sees (headers on the operator's leg, the whisper it heard) is what the
shipped lines do, not a copy of them.

What Asterisk does, and so this module (apps/app_stack.c, main/app.c
`ast_app_exec_sub()`, main/pbx.c):
- a Gosub on a channel saves its context/exten/priority, runs the
  subroutine until Return, and puts them back; each step is a `Newexten`
  (Privilege dialplan) with the step's Context/Exten/Priority;
- `Gosub(ctx,exten,prio(a,b))` sets ARG1, ARG2 (VarSet) for the subroutine and
  Return removes them again and sets GOSUB_RETVAL;
- ${...} and $[...] in the data are expanded before the application runs.
Only the applications and the expression forms the subroutines use are
modelled (Set, GotoIf, Goto, NoOp, Verbose, Log, Playback, Return; one
comparison or one value in $[...]): anything else raises, so a change to the
file that the simulator cannot follow fails loudly instead of passing.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tests.simulator import amievents as ev
from tests.simulator.asterisk_args import set_assignment, standard_app_args

if TYPE_CHECKING:
    from tests.simulator.pbx import Channel

DIALPLAN_FILE = Path(__file__).resolve().parents[2] / "asterisk-dialplan" / "extensions_ctrackd.conf"
INBOUND_CONTEXT, DID_PATTERN = "ctrackd-inbound", "_[0-9+]."


@dataclass(frozen=True)
class Step:
    priority: int
    label: str | None
    app: str
    data: str


def read_dialplan(path: Path = DIALPLAN_FILE) -> dict[str, dict[str, list[Step]]]:
    """{context: {exten: [Step]}} from `exten =>` / `same => n` lines (the file's only forms)."""
    contexts: dict[str, dict[str, list[Step]]] = {}
    context = exten = None
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.split(";", 1)[0].strip()
        if not line:
            continue
        if section := re.fullmatch(r"\[([^\]]+)\]", line):
            context = section.group(1)
            contexts[context] = {}
            continue
        kind, _, rest = line.partition("=>")
        rest = rest.strip()
        if kind.strip() == "exten":
            exten, _, rest = rest.partition(",")
            _, _, rest = rest.partition(",")          # priority 1
            label = None
        else:
            prio, _, rest = rest.partition(",")
            m = re.fullmatch(r"n(?:\((\w+)\))?", prio)
            if m is None:
                raise ValueError(f"unexpected priority {prio!r} in {raw!r}")
            label = m.group(1)
        app, _, data = rest.partition("(")
        assert context is not None and exten is not None
        steps = contexts[context].setdefault(exten, [])
        steps.append(Step(len(steps) + 1, label, app, data[:-1] if data.endswith(")") else data))
    return contexts


DIALPLAN = read_dialplan()


def priority_of(text: str, context: str = INBOUND_CONTEXT, exten: str = DID_PATTERN) -> int:
    """The priority of the one step written `App(data)`: the simulator's numbers come from the file."""
    found = [s.priority for s in DIALPLAN[context][exten] if f"{s.app}({s.data})" == text]
    if len(found) != 1:
        raise LookupError(f"{text!r} appears {len(found)} times in [{context}] {exten}")
    return found[0]


# --- expansion: pbx_substitute_variables_helper_full() and ast_expr() --------------------

_OPS = ("!=", ">=", "<=", "=", ">", "<")


def _unquote(token: str) -> str:
    token = token.strip()
    return token[1:-1] if len(token) >= 2 and token[0] == token[-1] == '"' else token


def evaluate(expr: str) -> str:
    """ast_expr() for the forms the subroutines use: `A op B` (numbers compare as
    numbers, anything else as strings) or a single value."""
    quoted = False
    for i, ch in enumerate(expr):
        if ch == '"':
            quoted = not quoted
        elif not quoted:
            for op in _OPS:
                if expr.startswith(op, i):
                    left, right = _unquote(expr[:i]), _unquote(expr[i + len(op):])
                    if any(o in expr[i + len(op):].replace('"', "") for o in ("|", "&")):
                        raise NotImplementedError(f"expression {expr!r}")
                    try:
                        a, b = float(left), float(right)
                    except ValueError:
                        a, b = left, right                  # type: ignore[assignment]
                    result = {"!=": a != b, ">=": a >= b, "<=": a <= b, "=": a == b,
                              ">": a > b, "<": a < b}[op]
                    return "1" if result else "0"
    return _unquote(expr)


def expand(chan: Channel, text: str) -> str:
    """${...} through the channel (`Channel.substitute`), then each $[...] evaluated."""
    out, i = [], 0
    while i < len(text):
        if text.startswith("$[", i):
            depth, j = 1, i + 2
            while j < len(text) and depth:
                depth += {"[": 1, "]": -1}.get(text[j], 0)
                j += 1
            out.append(evaluate(expand(chan, text[i + 2:j - 1])))
            i = j
        elif text.startswith("${", i):
            depth, j = 1, i + 2
            while j < len(text) and depth:
                depth += {"{": 1, "}": -1}.get(text[j], 0)
                j += 1
            out.append(chan.substitute(text[i:j]))
            i = j
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def check_condition(value: str) -> bool:
    """pbx.c `pbx_checkcondition()`: empty is false, a number is its truth, other text true."""
    value = value.strip()
    if not value:
        return False
    try:
        return float(value) != 0
    except ValueError:
        return True


# --- Gosub -----------------------------------------------------------------------------

class SubroutineError(RuntimeError):
    """The subroutine does something the simulator does not model, or has no Return."""


def parse_location(location: str) -> tuple[str, str, int, list[str]]:
    """`context,exten,priority(arg1,arg2)` as Gosub takes it (the `^` already replaced)."""
    args: list[str] = []
    if location.endswith(")") and "(" in location:
        location, _, inner = location[:-1].partition("(")
        args = standard_app_args(inner, 100)
    parts = location.split(",")
    if len(parts) != 3:
        raise SubroutineError(f"Gosub location {location!r}: context,exten,priority expected")
    return parts[0], parts[1], int(parts[2]), args


async def gosub(chan: Channel, location: str) -> str | None:
    """`ast_app_exec_sub(NULL, chan, location)`: run to Return; the return value (GOSUB_RETVAL)."""
    context, exten, priority, args = parse_location(location)
    steps = DIALPLAN.get(context, {}).get(exten)
    if not steps:
        raise SubroutineError(f"no extension {exten} in [{context}]")
    saved = chan.context, chan.exten, chan.priority
    for n, value in enumerate(args, 1):
        chan.set_var(f"ARG{n}", value)
    labels = {s.label: s.priority for s in steps if s.label}
    retval: str | None = None
    try:
        while True:
            if priority > len(steps):
                raise SubroutineError(f"[{context}] {exten} ran off its end without Return")
            step = steps[priority - 1]
            chan.context, chan.exten, chan.priority = context, exten, priority
            data = expand(chan, step.data)
            chan.run_app(step.app, data)
            if chan.sim.dialplan_events:
                chan.emit(ev.newexten(chan, step.app, data))
            priority += 1
            if step.app == "Return":
                retval = data
                break
            if chan.hungup.is_set():               # the PBX stops running a dead channel
                break
            jump = await _run_step(chan, step.app, data)
            if jump is not None:
                if jump not in labels:
                    raise SubroutineError(f"[{context}] {exten}: no label {jump!r}")
                priority = labels[jump]
    finally:
        for n in range(1, len(args) + 1):
            chan.set_var(f"ARG{n}", None)
        chan.context, chan.exten, chan.priority = saved
    chan.set_var("GOSUB_RETVAL", retval or "")
    return retval


def step_at(priority: int, context: str = INBOUND_CONTEXT, exten: str = DID_PATTERN) -> Step:
    return DIALPLAN[context][exten][priority - 1]


async def run_line(chan: Channel, priority: int) -> str:
    """One step of [ctrackd-inbound] from the file's text, run on the inbound channel
    (Set, ExecIf, GotoIf...): its expanded data, for the caller to use (Dial/Queue)."""
    step = step_at(priority)
    data = expand(chan, step.data)
    chan.run_app(step.app, data, priority)
    if step.app not in ("Dial", "Queue"):
        await _run_step(chan, step.app, data)
    return data


async def _run_step(chan: Channel, app: str, data: str) -> str | None:
    """One application; the label to jump to (GotoIf/Goto), else None."""
    if app in ("NoOp", "Verbose", "Log"):
        return None
    if app == "Set":
        pair = set_assignment(data)
        if pair is not None:
            chan.set_var(*pair)
        return None
    if app == "GotoIf":
        cond, _, targets = data.partition("?")
        on_true, _, on_false = targets.partition(":")
        target = on_true if check_condition(cond) else on_false
        return target or None
    if app == "Goto":
        return data
    if app == "ExecIf":
        # app_exec.c execif_exec(): `cond?App(args)[:App(args)]`, the arguments being
        # everything from the first '(' to the last ')' (no ':' branch in our file).
        cond, _, branch = data.partition("?")
        if ":" in branch.rsplit(")", 1)[-1]:
            raise SubroutineError(f"ExecIf with an else branch: {data!r}")
        if check_condition(cond):
            inner_app, _, inner = branch.partition("(")
            return await _run_step(chan, inner_app, inner[:inner.rindex(")")])
        return None
    if app == "Playback":
        await playback(chan, data)
        return None
    raise SubroutineError(f"the simulator does not run {app}({data}) in a subroutine")


async def playback(chan: Channel, data: str) -> None:
    """app_playback.c: each `&`-separated file streamed in turn; a file that does not
    exist logs "Playback failed", PLAYBACKSTATUS=FAILED, and the dialplan goes on."""
    args = standard_app_args(data, 2)
    status = "SUCCESS"
    for name in (args[0] if args else "").split("&"):
        if not await chan.play(name):
            status = "FAILED"
            break
    chan.set_var("PLAYBACKSTATUS", status)
