"""Building AGI command lines that Asterisk parses back to exactly our text.

A value we send passes through up to three parsers inside Asterisk, each with
its own quoting rules; a label such as `Яндекс, "VIP" (old)` must survive all
of them byte for byte, or the operator sees garbage and, worse, a comma splits
one MSet pair into two. This module is the only place that knows those rules
(read from the Asterisk source, cited below), so routes never format commands
by hand.

Assumption: the channel variable AGIEXECFULL is not set. With AGIEXECFULL=yes,
res_agi.c `handle_exec()` runs `ast_str_substitute_variables()` over the app
data first, and `${...}` / `$[...]` in a value would be expanded; there is no
escape for that, so the dialplan must leave AGIEXECFULL alone.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence

#: res_agi.c `run_agi()` reads a command with fgets() into `char buf[AGI_BUF_LEN]`
#: (2048): a longer line is cut and its tail runs as a second command, which
#: shifts every later reply by one. So a line plus its "\n" must fit in 2047 bytes.
MAX_LINE_BYTES = 2046

#: main/pbx_variables.c `pbx_builtin_setvar_multiple()` declares
#: `AST_APP_ARG(pair)[99]`; `__ast_app_separate_args()` leaves the last slot
#: as the unparsed rest of the string (escapes NOT removed), so only 98 pairs
#: are un-escaped properly.
MAX_MSET_PAIRS = 98

# A plain variable name, optionally with the `_` / `__` inheritance prefix.
# Anything else (spaces, `(`, `=`, `,`) would be read as syntax by MSet or
# turn the name into a dialplan function write.
_NAME = re.compile(r"_{0,2}[A-Za-z0-9][A-Za-z0-9_]*")

# Characters `__ast_app_separate_args()` (main/app.c) treats as syntax with
# remove_chars=1: `,` splits, `(` `)` `[` `]` nest (a comma inside stops
# splitting), `"` toggles quoting and is removed, `\` is removed and makes the
# next character literal. A backslash before any of them makes it plain data.
_APP_SPECIAL = re.compile(r'([\\",()\[\]])')

# Lines end at "\n"; NUL ends a C string; a bare "\r" would be kept by res_agi
# but is never meant. None of them can travel inside one AGI command.
_UNSENDABLE = re.compile(r"[\n\r\x00]")


def check_name(name: str) -> str:
    """Return `name` if it is a plain channel-variable name, else raise ValueError."""
    if not _NAME.fullmatch(name):
        raise ValueError(f"invalid channel variable name: {name!r}")
    return name


def quote(value: str) -> str:
    """One AGI argument in double quotes, as res_agi.c `parse_args()` reads it back.

    `parse_args()`: `"` toggles quoting (spaces and tabs inside stay data),
    `\\` makes the next character literal (`\\"` -> `"`, `\\\\` -> `\\`) and
    is itself dropped. So escaping `\\` and `"` is enough; everything else,
    UTF-8 included, passes as bytes. Newline, CR and NUL cannot be sent and
    become spaces.
    """
    text = _UNSENDABLE.sub(" ", value)
    text = text.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def _checked_line(line: str) -> str:
    if len(line.encode("utf-8")) > MAX_LINE_BYTES:
        raise ValueError(f"AGI command longer than {MAX_LINE_BYTES} bytes")
    return line


def set_variable(name: str, value: str) -> str:
    """`SET VARIABLE name "value"`.

    res_agi.c `handle_setvariable()` passes argv[3] straight to
    `pbx_builtin_setvar_helper()`: no app-argument parsing, only `quote()`.
    """
    return _checked_line(f"SET VARIABLE {check_name(name)} {quote(value)}")


def _escape_app_value(value: str) -> str:
    return _APP_SPECIAL.sub(r"\\\1", _UNSENDABLE.sub(" ", value))


def mset_data(pairs: Sequence[tuple[str, str]]) -> str:
    """The MSet application data `k=v,k=v` with every value escaped for MSet.

    `pbx_builtin_setvar_multiple()` (main/pbx_variables.c) splits the data with
    `AST_STANDARD_APP_ARGS` (`__ast_app_separate_args(data, ',', 1, ...)`),
    which removes one level of `\\` and `"`; then each pair with
    `AST_NONSTANDARD_APP_ARGS(pair, ..., '=')` into only 2 slots, so the scan
    stops at the first `=` and the value (the rest) is taken as is: `=` in a
    value needs no escape, and there is no second level of un-escaping.
    """
    if not pairs:
        raise ValueError("MSet needs at least one pair")
    if len(pairs) > MAX_MSET_PAIRS:
        raise ValueError(f"MSet takes at most {MAX_MSET_PAIRS} pairs, got {len(pairs)}")
    parts = []
    for name, value in pairs:
        parts.append(f"{check_name(name)}={_escape_app_value(value)}")
    return ",".join(parts)


def exec_mset(pairs: Sequence[tuple[str, str]]) -> str:
    """ONE `EXEC MSet "..."` command that sets all `pairs` in one round trip.

    res_agi.c `handle_exec()` hands argv[2] (one AGI argument, hence `quote()`)
    to `pbx_exec()` unchanged: no compat `|` conversion in current Asterisk
    (the `ast_compat_res_agi` branch is gone) and no variable substitution
    unless AGIEXECFULL is set (see the module docstring).
    """
    return _checked_line(f"EXEC MSet {quote(mset_data(pairs))}")


def exec_mset_fitting(pairs: Sequence[tuple[str, str]],
                      essential: Collection[str]) -> tuple[str, bool]:
    """`exec_mset(pairs)`, or only the `essential` pairs when the line would not fit.

    A huge label or caller name must not cost the call its target: Asterisk
    would cut an overlong line and run its tail as another command. Returns
    the line and whether it was trimmed (for a log line).
    """
    try:
        return exec_mset(pairs), False
    except ValueError:
        return exec_mset([(name, value) for name, value in pairs if name in essential]), True


# A sound file name as Playback finds it (configcalls.SOUND): no spaces, no `&`
# (ast_app_getdata() would play the parts as several files), no `..`.
_SOUND = re.compile(r"/?[A-Za-z0-9_-]+(/[A-Za-z0-9_.-]+)*")


def get_data(prompt: str, timeout_ms: int, max_digits: int) -> str:
    """`GET DATA <prompt> <timeout_ms> <max_digits>`: play `prompt`, collect DTMF.

    res_agi.c `handle_getdata()` passes the timeout to `ast_app_getdata_full()`,
    which uses it both for the first digit (after the prompt has played) and
    between digits; input ends at `#` (not included), after `max_digits`
    digits, or at the timeout. Replies (see `keyed_digits`): `200 result=4821`,
    `200 result=` (`#` alone), `200 result=48 (timeout)` / `200 result= (timeout)`,
    `200 result=-1` (hang-up), `511` on a dead channel.
    """
    if not _SOUND.fullmatch(prompt) or ".." in prompt.split("/"):
        raise ValueError(f"not a sound file name: {prompt!r}")
    if timeout_ms <= 0 or not 1 <= max_digits <= 1024:
        raise ValueError(f"GET DATA needs a positive timeout and 1-1024 digits, got "
                         f"{timeout_ms} ms, {max_digits}")
    return _checked_line(f"GET DATA {prompt} {int(timeout_ms)} {int(max_digits)}")
