"""Literal ports of the Asterisk C code the simulator must reproduce exactly.

ctrackd escapes what it sends (ctrackd/agi/commands.py) from its own reading of
the rules; this module is the independent check. Each function follows one C
function line by line, including its quirks, so that the simulator splits an
AGI command and an `EXEC MSet` exactly as a real Asterisk 22 would. Nothing
here is an escaping scheme of our own design.

Sources (asterisk/asterisk):
- res/res_agi.c `parse_args()`: AGI command line -> argv (MAX_ARGS 128);
  `handle_exec()`: `EXEC <app> <data>` passes argv[2] only, argv[3..] are dropped,
  no variable substitution unless AGIEXECFULL is true.
- main/app.c `__ast_app_separate_args()`; include/asterisk/app.h
  `AST_STANDARD_APP_ARGS` (',' remove_chars=1) and `AST_NONSTANDARD_APP_ARGS`
  (remove_chars=1).
- main/pbx_variables.c `pbx_builtin_setvar()` (Set), `pbx_builtin_setvar_multiple()`
  (MSet, `AST_APP_ARG(pair)[99]`), `pbx_builtin_setvar_helper()`,
  `pbx_builtin_getvar_helper()`; main/chanvars.c `ast_var_name()`;
  main/channel.c `ast_channel_inherit_variables()`.
- main/cdr.c `cdr_object_get_duration()`, `cdr_object_get_billsec()`,
  `dial_status_to_disposition()`, `cdr_object_set_disposition()`;
  include/asterisk/time.h `ast_tvdiff_ms()`.

C works on bytes and Python here on code points: equivalent, because every byte
of a multi-byte UTF-8 character is >= 0x80 and none of the special characters
(space, tab, quote, backslash, comma, parentheses, brackets, '=') is.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: res_agi.c: `#define MAX_ARGS 128`.
MAX_ARGS = 128
#: res_agi.c: `#define AGI_BUF_LEN 2048`; fgets() keeps at most 2047 bytes per read.
AGI_BUF_LEN = 2048
#: pbx_variables.c `pbx_builtin_setvar_multiple()`: `AST_APP_ARG(pair)[99]`.
MSET_MAX_PAIRS = 99


def parse_args(line: str) -> list[str]:
    """res_agi.c `parse_args()`: one AGI command line (no trailing newline) -> argv.

    The C code rewrites the buffer in place through `cur` and records where each
    argument starts; an argument ends at the next NUL written by unquoted,
    unescaped whitespace. We keep that shape: `out` is the rewritten buffer.
    """
    out: list[str] = []
    starts: list[int] = []
    quoted = escaped = False
    whitespace = True
    for ch in line:
        if ch == '"' and not escaped:
            quoted = not quoted
            if quoted and whitespace:
                # Starting a quote coming off white space starts a new word too.
                starts.append(len(out))
                whitespace = False
            escaped = False
            continue
        if ch in " \t" and not quoted and not escaped:
            whitespace = True
            out.append("\0")
            continue
        if ch == "\\" and not escaped:
            escaped = True
            continue
        # default / normal: (also an escaped quote, space or backslash)
        if whitespace:
            if len(starts) >= MAX_ARGS - 1:
                # "Too many arguments, truncating": the C `break` leaves the
                # switch, so this character is dropped and whitespace stays set.
                continue
            starts.append(len(out))
            whitespace = False
        out.append(ch)
        escaped = False
    out.append("\0")
    text = "".join(out)
    return [text[s:text.index("\0", s)] for s in starts]


def separate_args(buf: str, delim: str, remove_chars: bool, arraylen: int) -> list[str]:
    """main/app.c `__ast_app_separate_args()`.

    `(`/`)` and `[`/`]` nest (a delimiter inside does not split), `"` toggles
    quoting (removed when remove_chars), `\\` is removed and protects the next
    character when remove_chars (kept, with the next character, otherwise).
    The LAST slot (index arraylen-1) receives the unparsed rest of the string:
    its quotes and backslashes are NOT removed.
    """
    if arraylen <= 0:
        return []
    s = list(buf)
    array: list[str] = []
    bounds: list[tuple[int, int]] = []
    scan = 0
    wasdelim = -1
    paren = quote = bracket = 0
    argc = 0
    while scan < len(s) and argc < arraylen - 1:
        begin = scan
        end = None
        while scan < len(s):
            c = s[scan]
            if c == "(":
                paren += 1
            elif c == ")":
                if paren:
                    paren -= 1
            elif c == "[":
                bracket += 1
            elif c == "]":
                if bracket:
                    bracket -= 1
            elif c == '"' and delim != '"':
                quote = 0 if quote else 1
                if remove_chars:
                    del s[scan]  # memmove(scan, scan + 1, ...); scan--
                    continue
            elif c == "\\":
                if remove_chars:
                    del s[scan]  # the next character is now at scan; skip it
                else:
                    scan += 1
            elif c == delim and not paren and not quote and not bracket:
                wasdelim = scan
                end = scan
                scan += 1
                break
            scan += 1
        bounds.append((begin, end if end is not None else min(scan, len(s))))
        argc += 1
    array = ["".join(s[b:e]) for b, e in bounds]
    # "If the last character in the original string was the delimiter, then
    # there is one additional argument."
    if scan < len(s) or (scan > 0 and scan - 1 == wasdelim):
        array.append("".join(s[scan:]))
    return array


def standard_app_args(data: str, arraylen: int) -> list[str]:
    """app.h `AST_STANDARD_APP_ARGS`: ',' with remove_chars=1."""
    return separate_args(data, ",", True, arraylen)


def set_assignment(data: str) -> tuple[str, str] | None:
    """pbx_variables.c `pbx_builtin_setvar()` (the Set application).

    `strsep(&mydata, "=")`: the name is up to the first '=', the value is the
    rest verbatim (no quote or backslash processing at all). None: ignored
    ("Set requires an '=' to be a valid assignment").
    """
    if not data or "=" not in data:
        return None
    name, value = data.split("=", 1)
    return name, value


def mset_assignments(data: str) -> list[tuple[str, str]]:
    """pbx_variables.c `pbx_builtin_setvar_multiple()` (the MSet application).

    Split on ',' (remove_chars=1, 99 slots: a 99th and later pair stay glued in
    the last slot, unprocessed), then each pair on '=' with 2 slots: the name is
    processed, the value is the raw rest. Entries without '=' are ignored.
    """
    if not data:
        return []
    pairs = []
    for item in standard_app_args(data, MSET_MAX_PAIRS):
        pair = separate_args(item, "=", True, 2)
        if len(pair) == 2:
            pairs.append((pair[0], pair[1]))
    return pairs


def exec_app_data(argv: list[str]) -> tuple[str, str]:
    """res_agi.c `handle_exec()`: (application, data); data is argv[2] or "" and
    everything after argv[2] is silently ignored. Caller checks argc >= 2."""
    return argv[1], argv[2] if len(argv) >= 3 else ""


def var_name(full_name: str) -> str:
    """chanvars.c `ast_var_name()`: the name without one or two leading '_'."""
    if full_name.startswith("_"):
        full_name = full_name[1:]
        if full_name.startswith("_"):
            full_name = full_name[1:]
    return full_name


@dataclass
class ChannelVars:
    """A channel's variable list as Asterisk keeps it: full names (with the
    inheritance prefix), newest first (AST_LIST_INSERT_HEAD), compared by
    `ast_var_name()` with strcmp (case-sensitive)."""

    entries: list[tuple[str, str]] = field(default_factory=list)

    def set(self, name: str, value: str | None) -> tuple[str, str] | None:
        """`pbx_builtin_setvar_helper()` for a plain name (the caller handles
        names ending in ')', which are function writes).

        Returns the (name, value) a VarSet event publishes, or None when nothing
        is published (deleting an unset or empty variable).
        """
        tail = var_name(name)
        old_value_existed = False
        for i, (full, val) in enumerate(self.entries):
            if var_name(full) == tail:
                old_value_existed = val != ""
                del self.entries[i]
                break
        if value is not None:
            self.entries.insert(0, (name, value))
            return name, value
        if old_value_existed:
            return name, ""
        return None

    def get(self, name: str) -> str | None:
        """`pbx_builtin_getvar_helper()` on this list (first match by tail)."""
        for full, val in self.entries:
            if var_name(full) == name:
                return val
        return None

    def inherited(self) -> list[tuple[str, str]]:
        """channel.c `ast_channel_inherit_variables()`: what a new outbound
        channel receives, in the order it receives it (walk of the parent's
        list, newest first). `_X` arrives as `X`; `__X` stays `__X`."""
        result = []
        for full, val in self.entries:
            if full.startswith("__"):
                result.append((full, val))
            elif full.startswith("_"):
                result.append((full[1:], val))
        return result

    def as_dict(self) -> dict[str, str]:
        """Name (without prefix) -> value, as GET VARIABLE would see them."""
        out: dict[str, str] = {}
        for full, val in self.entries:
            out.setdefault(var_name(full), val)
        return out


# --- main/cdr.c arithmetic -----------------------------------------------------------

def tvdiff_ms(end: float, start: float) -> int:
    """include/asterisk/time.h `ast_tvdiff_ms()` on timevals made from floats."""
    es, eu = int(end), min(int(round((end - int(end)) * 1e6)), 999999)
    ss, su = int(start), min(int(round((start - int(start)) * 1e6)), 999999)
    return (es - ss) * 1000 + (1000000 + eu - su) // 1000 - 1000


def dial_status_to_disposition(status: str) -> str:
    """cdr.c `dial_status_to_disposition()` with cdr.conf congestion=yes (so
    CHANUNAVAIL, like any other status, gives FAILED)."""
    return {"ANSWER": "ANSWERED", "BUSY": "BUSY", "CANCEL": "NO ANSWER", "NOANSWER": "NO ANSWER",
            "CONGESTION": "CONGESTION"}.get(status, "FAILED")


def cause_disposition(cause: int) -> str | None:
    """cdr.c `cdr_object_set_disposition()` (congestion=yes): 17 BUSY, 34 CONGESTION,
    3/20 FAILED, 16/19 NO ANSWER; None leaves AST_CDR_NULL, printed "NO ANSWER"."""
    return {17: "BUSY", 34: "CONGESTION", 3: "FAILED", 20: "FAILED", 16: "NO ANSWER",
            19: "NO ANSWER"}.get(cause)


def cdr_duration(start: float, end: float) -> int:
    """cdr.c `cdr_object_get_duration()`: `ast_tvdiff_ms(end, start) / 1000` (C division)."""
    return int(tvdiff_ms(end, start) / 1000)


def cdr_billsec(answer: float | None, end: float) -> int:
    """cdr.c `cdr_object_get_billsec()` (initiatedseconds=no): 0 if never answered."""
    return 0 if answer is None else int(tvdiff_ms(end, answer) / 1000)
