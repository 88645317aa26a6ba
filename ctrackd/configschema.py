"""Typed reads from a PyYAML node tree, each failure pointing at FILE:LINE:COL.

Kept apart from `config.py` so that the config module reads as the list of
settings it is, and later config sections (pools, promo lines, webhooks)
reuse the same checks and the same error wording.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import yaml

Node = yaml.Node

_INT = re.compile(r"^[-+]?[0-9]+$")
_FLOAT = re.compile(r"^[-+]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][-+]?[0-9]+)?$")
_TRUE = {"true", "yes", "on"}
_FALSE = {"false", "no", "off"}
_MISSING: Any = object()

KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# A Dial target lands inside Dial(${CTRACK_FORWARD},...): a comma would start
# the next Dial argument, a newline would end the AGI command.
DIAL = re.compile(r"^(Queue\([A-Za-z0-9_.-]+\)|[A-Za-z0-9]+/[^,\s()\"'\\]+)$")
DIAL_EXPECTED = "a Dial string such as PJSIP/office or PJSIP/101&PJSIP/102, or Queue(name)"


class Reader:
    """Reads values out of nodes; `fail` raises the caller's error class."""

    def __init__(self, source: Path, error: type[Exception]) -> None:
        self.source = source
        self.error = error

    # -- errors --------------------------------------------------------------

    def fail(self, node: Node, path: str, expected: str, found: str) -> NoReturn:
        mark = node.start_mark
        raise self.error(f"{self.source}:{mark.line + 1}:{mark.column + 1}: "
                         f"{path or '(top level)'}: expected {expected}, found {found}")

    @staticmethod
    def describe(node: Node) -> str:
        if isinstance(node, yaml.MappingNode):
            return "a mapping"
        if isinstance(node, yaml.SequenceNode):
            return "a list"
        if node.tag == "tag:yaml.org,2002:null":
            return "nothing"
        return repr(node.value)

    # -- containers ----------------------------------------------------------

    def entries(self, node: Node, path: str) -> Iterator[tuple[Node, Node]]:
        """(key node, value node) pairs of a mapping; a repeated key is an error."""
        if not isinstance(node, yaml.MappingNode):
            self.fail(node, path, "a mapping", self.describe(node))
        seen: dict[str, Node] = {}
        for key, value in node.value:
            text = self.scalar_text(key)
            if text in seen:
                self.fail(key, f"{path}.{text}" if path else text,
                          f"each key once (first at line {seen[text].start_mark.line + 1})",
                          "it again")
            seen[text] = key
            yield key, value

    def mapping(self, node: Node, path: str, allowed: set[str],
                required: frozenset[str] | set[str] = frozenset()) -> dict[str, Node]:
        """A mapping with known keys only: typos are errors, not silently ignored."""
        result: dict[str, Node] = {}
        for key, value in self.entries(node, path):
            name = self.scalar_text(key)
            if name not in allowed:
                choices = ", ".join(sorted(allowed))
                self.fail(key, f"{path}.{name}" if path else name,
                          f"one of the keys {choices}", f"unknown key {name!r}")
            result[name] = value
        for name in sorted(required - result.keys()):
            self.fail(node, f"{path}.{name}" if path else name, "this required key",
                      "it missing")
        return result

    # -- scalars -------------------------------------------------------------

    def scalar_text(self, node: Node) -> str:
        if not isinstance(node, yaml.ScalarNode):
            self.fail(node, "", "a plain value", self.describe(node))
        return str(node.value)

    def text(self, node: Node | None, path: str, default: Any = _MISSING) -> Any:
        if node is None:
            if default is _MISSING:
                raise AssertionError(f"{path} is required and checked by mapping()")
            return default
        if not isinstance(node, yaml.ScalarNode) or node.tag == "tag:yaml.org,2002:null":
            self.fail(node, path, "a text value", self.describe(node))
        value = str(node.value)
        if not value.strip():
            self.fail(node, path, "a non-empty text value", "an empty value")
        if any(ch in value for ch in "\r\n\x00"):
            self.fail(node, path, "a single line of text", "a line break")
        return value

    def pattern(self, node: Node, path: str, regex: re.Pattern[str], expected: str) -> str:
        value = self.text(node, path)
        if not regex.match(value):
            self.fail(node, path, expected, repr(value))
        return value

    def choice_text(self, node: Node | None, path: str, choices: set[str] | None, *,
                    default: str, check: Any = None, expected: str | None = None) -> str:
        if node is None:
            return default
        value = self.text(node, path)
        ok = (value in choices) if choices is not None else bool(check(value))
        if not ok:
            self.fail(node, path, expected or "one of " + ", ".join(sorted(choices or ())),
                      repr(value))
        return value

    def integer(self, node: Node | None, path: str, *, default: int, low: int,
                high: int) -> int:
        if node is None:
            return default
        text = self.scalar_text(node) if isinstance(node, yaml.ScalarNode) else None
        if text is None or not _INT.match(text):
            self.fail(node, path, f"a whole number from {low} to {high}", self.describe(node))
        value = int(text)
        if not low <= value <= high:
            self.fail(node, path, f"a whole number from {low} to {high}", str(value))
        return value

    def number(self, node: Node | None, path: str, *, default: float, low: float,
               high: float, unit: str = "seconds") -> float:
        if node is None:
            return default
        text = self.scalar_text(node) if isinstance(node, yaml.ScalarNode) else None
        expected = f"a number of {unit} from {low:g} to {high:g}"
        if text is None or not _FLOAT.match(text):
            self.fail(node, path, expected, self.describe(node))
        value = float(text)
        if not low <= value <= high:
            self.fail(node, path, expected, f"{value:g}")
        return value

    def boolean(self, node: Node | None, path: str, *, default: bool) -> bool:
        if node is None:
            return default
        text = self.scalar_text(node).lower() if isinstance(node, yaml.ScalarNode) else ""
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        self.fail(node, path, "true or false", self.describe(node))

    def address(self, node: Node, path: str) -> tuple[str, int]:
        """`host:port` or `[v6]:port`."""
        value = self.text(node, path)
        match = re.match(r"^(?:\[([0-9A-Fa-f:.]+)\]|([^:\s]+)):([0-9]{1,5})$", value)
        if not match or not 0 <= int(match.group(3)) <= 65535:
            self.fail(node, path, "HOST:PORT such as 127.0.0.1:4573", repr(value))
        return (match.group(1) or match.group(2)), int(match.group(3))
