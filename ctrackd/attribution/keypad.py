"""The operator's keypad: `*` + a promo code keyed on the phone during a call.

An operator who hears "I saw it on your site, the code on the page is
4821" keys `*4821` on the phone, and the call is attributed to that visitor
session afterwards. The AMI side sees the phone leg's key presses; this is
the small state machine that turns them into codes, one per phone leg's
call: after the prefix, exactly `length` digits make a complete code; `#`
after at least one digit ends one early (still reported: the operator meant
something, recorded as unknown); the prefix again starts over; any other
key abandons the entry.

Which presses are real key presses (not a transfer's feature code, not the
caller's digits) is the tracker's business; this module sees only keys.
"""

from __future__ import annotations

from dataclasses import dataclass

DIGITS = frozenset("0123456789")


@dataclass(frozen=True, slots=True)
class KeyedCode:
    code: str
    complete: bool   # False: `#` ended it before `length` digits


class CodeEntry:
    """Collects one code at a time from key presses (one per call)."""

    def __init__(self, prefix: str = "*", length: int = 4) -> None:
        if not prefix:
            raise ValueError("the operator prefix must be at least one key")
        if length < 1:
            raise ValueError("a code has at least one digit")
        self.prefix = prefix
        self.length = length
        self._recent = ""            # the last keys while idle, to spot the prefix
        self._digits: str | None = None  # the code so far; None while idle

    @property
    def collecting(self) -> bool:
        return self._digits is not None

    def press(self, key: str) -> KeyedCode | None:
        """One key press; the code it finishes, if any."""
        if self._digits is not None:
            if key in DIGITS:
                self._digits += key
                if len(self._digits) == self.length:
                    return self._finish(complete=True)
                return None
            if key == "#" and self._digits:
                return self._finish(complete=False)
            self._digits = None  # not a digit: the entry is abandoned ...
            # ... unless it is (the start of) the prefix again: fall through.
        self._recent = (self._recent + key)[-len(self.prefix):]
        if self._recent == self.prefix:
            self._digits, self._recent = "", ""
        return None

    def _finish(self, *, complete: bool) -> KeyedCode:
        code = self._digits or ""
        self._digits, self._recent = None, ""
        return KeyedCode(code, complete)
