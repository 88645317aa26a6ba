"""AGI command building: exact text for tricky values, and a round trip through
the simulator's line-by-line Python port of the Asterisk parsers the text goes through.

The table is hand-checked: for each value, first one backslash before each of
`\\ " , ( ) [ ]` (what `__ast_app_separate_args()` removes), then, for the AGI
line, `\\` -> `\\\\` and `"` -> `\\"` (what `parse_args()` removes).
"""

from __future__ import annotations

import random

import pytest

from ctrackd.agi.commands import (MAX_LINE_BYTES, MAX_MSET_PAIRS, check_name, exec_mset,
                                  mset_data, quote, set_variable)
from tests.simulator.asterisk_args import exec_app_data, mset_assignments, parse_args

# The Asterisk parsers the text goes through, ported literally in the simulator
# by an engineer who did not write the escaping (two independent readings of
# res_agi.c and main/app.c must agree).


def asterisk_applies(line: str) -> list[tuple[str, str]]:
    """What Asterisk sets for an `EXEC MSet "..."` line: parse_args, handle_exec, MSet."""
    argv = parse_args(line)
    assert argv[0] == "EXEC" and len(argv) == 3  # handle_exec() uses argv[2] alone
    app, data = exec_app_data(argv)
    assert app == "MSet"
    return mset_assignments(data)


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
    assert mset_assignments(data)[-1] == ("LAST", "a\\,b")


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
    assert parse_args(f"CMD {text}") == ["CMD", value.translate({10: 32, 13: 32, 0: 32})]


def test_set_variable_matches_the_captures() -> None:
    assert (set_variable("FORWARD_TO", "IAX2/phones/100")
            == 'SET VARIABLE FORWARD_TO "IAX2/phones/100"')
    assert (set_variable("TRACK_CHANNEL", "Яндекс.Директ")
            == 'SET VARIABLE TRACK_CHANNEL "Яндекс.Директ"')
    line = set_variable("X", 'a,"b"\\')
    assert parse_args(line)[3] == 'a,"b"\\'
