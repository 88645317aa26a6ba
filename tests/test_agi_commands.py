"""AGI command building: exact text for tricky values, and a round trip through
a line-by-line Python port of the Asterisk parsers the text goes through.

The table is hand-checked: for each value, first one backslash before each of
`\\ " , ( ) [ ]` (what `__ast_app_separate_args()` removes), then, for the AGI
line, `\\` -> `\\\\` and `"` -> `\\"` (what `parse_args()` removes).
"""

from __future__ import annotations

import random

import pytest

from ctrackd.agi.commands import (MAX_LINE_BYTES, MAX_MSET_PAIRS, check_name, exec_mset,
                                  mset_data, quote, set_variable)

# ---------------------------------------------------------------------------
# Ports of the Asterisk parsers (bytes in, bytes out), kept literal on purpose.


def parse_args(line: bytes) -> list[bytes]:
    """res/res_agi.c parse_args(): words, "quotes", backslash escapes."""
    out, starts = bytearray(), []
    quoted = escaped = False
    whitespace = True
    for ch in line:
        if ch == ord('"') and not escaped:
            quoted = not quoted
            if quoted and whitespace:
                starts.append(len(out))
                whitespace = False
            escaped = False
            continue
        if ch in b" \t" and not quoted and not escaped:
            whitespace = True
            out.append(0)
            continue
        if ch == ord("\\") and not escaped:
            escaped = True
            continue
        if whitespace:  # "normal:" in the C source
            starts.append(len(out))
            whitespace = False
        out.append(ch)
        escaped = False
    out.append(0)
    return [bytes(out[i:out.index(0, i)]) for i in starts]


def separate_args(buf: bytes, delim: str, arraylen: int) -> list[bytes]:
    """main/app.c __ast_app_separate_args(buf, delim, remove_chars=1, array, arraylen)."""
    b = bytearray(buf) + b"\0\0"  # one spare NUL: the C code may step past a trailing "\"
    d = ord(delim)
    array: list[int] = []
    scan, paren, quote_, bracket, wasdelim = 0, 0, 0, 0, -1
    while b[scan] and len(array) < arraylen - 1:
        array.append(scan)
        while b[scan]:
            c = b[scan]
            if c == ord("("):
                paren += 1
            elif c == ord(")"):
                paren = max(paren - 1, 0)
            elif c == ord("["):
                bracket += 1
            elif c == ord("]"):
                bracket = max(bracket - 1, 0)
            elif c == ord('"') and d != ord('"'):
                quote_ ^= 1
                del b[scan]
                scan -= 1
            elif c == ord("\\"):
                del b[scan]  # the next character is taken literally (skipped below)
            elif c == d and not paren and not quote_ and not bracket:
                wasdelim = scan
                b[scan] = 0
                scan += 1
                break
            scan += 1
    if b[scan] or (scan > 0 and scan - 1 == wasdelim):
        array.append(scan)
    return [bytes(b[i:b.index(0, i)]) for i in array]


def mset_applied(data: bytes) -> list[tuple[bytes, bytes]]:
    """main/pbx_variables.c pbx_builtin_setvar_multiple(): what each name is set to."""
    pairs = []
    for pair in separate_args(data, ",", 99):
        name_value = separate_args(pair, "=", 2)
        if len(name_value) == 2:
            pairs.append((name_value[0], name_value[1]))
    return pairs


def asterisk_applies(line: str) -> list[tuple[str, str]]:
    argv = parse_args(line.encode("utf-8"))
    assert argv[:2] == [b"EXEC", b"MSet"] and len(argv) == 3  # handle_exec() uses argv[2]
    return [(n.decode(), v.decode()) for n, v in mset_applied(argv[2])]


# ---------------------------------------------------------------------------

LABEL_LINES = [  # value of CTRACK_LABEL -> the exact command line
    ("Google Ads", r'EXEC MSet "CTRACK_LABEL=Google Ads"'),
    ("a,b", r'EXEC MSet "CTRACK_LABEL=a\\,b"'),
    ('say "hi"', r'EXEC MSet "CTRACK_LABEL=say \\\"hi\\\""'),
    ("C:\\dir\\", r'EXEC MSet "CTRACK_LABEL=C:\\\\dir\\\\"'),
    ("(old", r'EXEC MSet "CTRACK_LABEL=\\(old"'),
    ("Queue(sales)", r'EXEC MSet "CTRACK_LABEL=Queue\\(sales\\)"'),
    ("x=y=z", r'EXEC MSet "CTRACK_LABEL=x=y=z"'),
    ("${EXTEN}$[1+1]{", r'EXEC MSet "CTRACK_LABEL=${EXTEN}$\\[1+1\\]{"'),
    ("[Яндекс] Иван", r'EXEC MSet "CTRACK_LABEL=\\[Яндекс\\] Иван"'),
    ("Яндекс.Директ", 'EXEC MSet "CTRACK_LABEL=Яндекс.Директ"'),
    ("a|b;c'd'", r'''EXEC MSet "CTRACK_LABEL=a|b;c'd'"'''),
    ("tab\there", 'EXEC MSet "CTRACK_LABEL=tab\there"'),
    ("l1\nl2\r\x00", 'EXEC MSet "CTRACK_LABEL=l1 l2  "'),
    ("", 'EXEC MSet "CTRACK_LABEL="'),
    ('\\"', r'EXEC MSet "CTRACK_LABEL=\\\\\\\""'),
]


@pytest.mark.parametrize(("value", "line"), LABEL_LINES)
def test_exec_mset_exact_text(value: str, line: str) -> None:
    assert exec_mset([("CTRACK_LABEL", value)]) == line


@pytest.mark.parametrize(("value", "line"), LABEL_LINES)
def test_exec_mset_table_arrives_byte_for_byte(value: str, line: str) -> None:
    sent = value.replace("\n", " ").replace("\r", " ").replace("\x00", " ")
    assert asterisk_applies(line) == [("CTRACK_LABEL", sent)]


def test_exec_mset_several_pairs_in_one_command() -> None:
    pairs = [("__CTRACK_CHANNEL", "google-ads"), ("CTRACK_LABEL", "a,b"),
             ("CTRACK_FORWARD", "Queue(sales)"), ("CTRACK_RING_TIMEOUT", "30")]
    line = exec_mset(pairs)
    assert line == (r'EXEC MSet "__CTRACK_CHANNEL=google-ads,CTRACK_LABEL=a\\,b,'
                    r'CTRACK_FORWARD=Queue\\(sales\\),CTRACK_RING_TIMEOUT=30"')
    assert asterisk_applies(line) == pairs


def test_exec_mset_random_values_round_trip() -> None:
    rng = random.Random(4573)
    alphabet = 'aZ09 Я\\",()[]={}$|\';:\t.-_+<>'
    for _ in range(400):
        pairs = [(f"V{i}", "".join(rng.choice(alphabet) for _ in range(rng.randrange(12))))
                 for i in range(rng.randrange(1, 6))]
        assert asterisk_applies(exec_mset(pairs)) == pairs


def test_exec_mset_limit_is_98_pairs_because_the_99th_is_left_unparsed() -> None:
    pairs = [(f"V{i}", "a,b") for i in range(MAX_MSET_PAIRS)]
    assert asterisk_applies(exec_mset(pairs)) == pairs
    with pytest.raises(ValueError):
        exec_mset(pairs + [("LAST", "x")])
    # Why: with 99 pairs Asterisk would keep the escapes of the last one.
    data = mset_data(pairs[:1] * 98) + "," + mset_data([("LAST", "a,b")])
    assert mset_applied(data.encode())[-1] == (b"LAST", b"a\\,b")


def test_exec_mset_refuses_empty_and_overlong() -> None:
    with pytest.raises(ValueError):
        exec_mset([])
    with pytest.raises(ValueError):
        exec_mset([("CTRACK_LABEL", "я" * MAX_LINE_BYTES)])


@pytest.mark.parametrize("name", ["CTRACK_LABEL", "_X", "__CTRACK_CALL_ID", "a1", "9"])
def test_valid_names(name: str) -> None:
    assert check_name(name) == name


@pytest.mark.parametrize("name", ["", "_", "___X", "A B", "A=B", "CDR(userfield)", "A,B",
                                  "Я", "A\n", "$X", "A-B"])
def test_invalid_names(name: str) -> None:
    with pytest.raises(ValueError):
        exec_mset([(name, "v")])
    with pytest.raises(ValueError):
        set_variable(name, "v")


@pytest.mark.parametrize(("value", "text"), [
    ("IAX2/phones/100", '"IAX2/phones/100"'),
    ("", '""'),
    ('a "b" c', r'"a \"b\" c"'),
    ("back\\slash", r'"back\\slash"'),
    ("a,b(c)", '"a,b(c)"'),
    ("x\ny\rz\x00", '"x y z "'),
])
def test_quote(value: str, text: str) -> None:
    assert quote(value) == text
    assert parse_args(f"CMD {text}".encode()) == [b"CMD", value.translate(
        {10: 32, 13: 32, 0: 32}).encode()]


def test_set_variable_matches_the_captures() -> None:
    assert (set_variable("FORWARD_TO", "IAX2/phones/100")
            == 'SET VARIABLE FORWARD_TO "IAX2/phones/100"')
    assert (set_variable("TRACK_CHANNEL", "Яндекс.Директ")
            == 'SET VARIABLE TRACK_CHANNEL "Яндекс.Директ"')
    line = set_variable("X", 'a,"b"\\')
    assert parse_args(line.encode())[3] == b'a,"b"\\'
