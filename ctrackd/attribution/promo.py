"""Promo codes: a short number per visitor session that a caller can key in.

A promo line (a number with `tracking: promo`) cannot tell callers apart by
the number they dialled, so the website shows each session a code of a few
digits and the caller keys it in (or the operator keys `*` + code during the
call). A code therefore names a session only if no other session can hold it
while a caller may still key it: a code stays reserved until its session's
last sign of life (a page view, a heartbeat) plus `code_ttl`, and only then
may it be drawn again. When every code is reserved the session gets none
(`exhausted` counts those, for the log) rather than a code someone else
could still call in with.

The last digit of a code is (by default) a Damm check digit over the others:
a caller or operator who mistypes one digit, or swaps two neighbours, keys
a string that is no code at all, so it is `unknown` instead of naming
another live visit (at the documented sizing about half of all single-digit
slips would otherwise hit somebody else's code). Damm catches every
single-digit error and every adjacent transposition; two wrong digits, or a
jump transposition (1-3 swapped), still pass one time in ten.

Codes are drawn at random, so one visitor cannot guess the code of the next;
the randomness comes in as `choose(n) -> int in [0, n)` (the daemon passes
`secrets.randbelow`; tests a seeded `random.Random().randrange`): the core
imports no `random`.

Memory and time stay bounded: reservations sit in one dict ordered by last
renewal (the TTL is the same for all, so that is also expiry order), and
`expire` only looks at those it drops; at most `max_codes` are reserved.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from ctrackd.attribution.records import PromoStatus

#: random draws before a crowded code space is scanned for a free code
DRAWS = 16
#: reserved codes kept at most, whatever the length (each holds a retired session too)
MAX_CODES = 200_000

# Damm's quasigroup of order 10 (weakly totally anti-symmetric): the interim
# digit after `row` then `digit` is _DAMM[row][digit]; a string with its check
# digit appended ends in 0.
_DAMM = (
    (0, 3, 1, 7, 5, 9, 8, 6, 4, 2),
    (7, 0, 9, 2, 1, 5, 4, 8, 6, 3),
    (4, 2, 0, 6, 8, 7, 1, 3, 5, 9),
    (1, 7, 5, 0, 9, 8, 3, 4, 2, 6),
    (6, 1, 2, 3, 0, 4, 5, 9, 7, 8),
    (3, 6, 7, 4, 2, 0, 9, 5, 8, 1),
    (5, 8, 6, 9, 7, 2, 0, 1, 3, 4),
    (8, 9, 4, 5, 3, 6, 2, 0, 1, 7),
    (9, 4, 3, 8, 6, 1, 7, 2, 0, 5),
    (2, 5, 8, 1, 4, 3, 6, 7, 9, 0),
)


def damm_digit(digits: str) -> str:
    """The Damm check digit of ASCII `digits` ("572" -> "4"); "0" when `digits` already
    ends in its right check digit, which is how a keyed code is checked."""
    interim = 0
    for char in digits:
        interim = _DAMM[interim][ord(char) - 48]
    return str(interim)


class PromoSettings(Protocol):
    """What the core needs of the `promo:` config section (configcalls.PromoConfig)."""

    @property
    def length(self) -> int: ...

    @property
    def code_ttl(self) -> float: ...

    @property
    def check_digit(self) -> bool: ...


@dataclass(slots=True)
class _Reservation:
    session_id: str
    until: float          # the code may be drawn again from this moment


class PromoCodes:
    """Codes of `length` digits, each reserved to one session until last sign of life + ttl.

    With `check_digit` the last of the `length` digits is the Damm digit of
    the others: 10^(length-1) codes.
    """

    def __init__(self, length: int, ttl: float, choose: Callable[[int], int], *,
                 check_digit: bool = True, max_codes: int = MAX_CODES) -> None:
        shortest = 2 if check_digit else 1
        if not shortest <= length <= 12:
            raise ValueError(f"promo code length must be {shortest}-12 digits"
                             f"{' with a check digit' if check_digit else ''}, got {length}")
        if ttl <= 0:
            raise ValueError(f"code_ttl must be positive, got {ttl}")
        self.length = length
        self.ttl = ttl
        self.check_digit = check_digit
        self._random_digits = length - 1 if check_digit else length
        self.space = 10 ** self._random_digits
        self.capacity = min(self.space, max_codes)
        self.exhausted = 0          # times a session got no code: every code was reserved
        self._choose = choose
        self._codes: OrderedDict[str, _Reservation] = OrderedDict()  # oldest renewal first

    def __len__(self) -> int:
        return len(self._codes)

    def issue(self, session_id: str, now: float) -> str | None:
        """A new code for `session_id`, reserved until now + ttl; None when none is free."""
        self.expire(now)
        if len(self._codes) >= self.capacity:
            self.exhausted += 1
            return None
        code = self._draw()
        self._codes[code] = _Reservation(session_id, now + self.ttl)
        return code

    def renew(self, code: str | None, session_id: str, now: float) -> bool:
        """A sign of life of the session holding `code`: the code stays reserved another ttl.

        False when the code is not (or no longer) that session's: the caller
        should then issue a new one.
        """
        held = self._codes.get(code) if code else None
        if held is None or held.session_id != session_id or held.until <= now:
            return False
        held.until = max(held.until, now + self.ttl)
        self._codes.move_to_end(code)  # type: ignore[arg-type]  # code is set when held
        return True

    def hand_over(self, code: str | None, from_session: str, to_session: str,
                  now: float) -> bool:
        """Give `from_session`'s code to `to_session` (the same visitor's next visit, or a
        tab renewing a session that lapsed): the code shown on the page keeps working."""
        held = self._codes.get(code) if code else None
        if held is None or held.session_id != from_session or held.until <= now:
            return False
        held.session_id = to_session
        return self.renew(code, to_session, now)

    def restore(self, reservations: Iterable[tuple[str, str, float]], now: float) -> set[str]:
        """Reservations read back after a restart: (code, session id, until).

        Each keeps the `until` it was stored with (the reservation the page
        was shown under), so a code is never free sooner than it would have
        been without the restart. A code this instance could not have drawn
        (another length, check digit on or off since) or already lapsed is
        skipped; of two claims on one code the later-ending one wins. Returns
        the session ids whose code is reserved again.
        """
        merged = {code: (held.until, held.session_id) for code, held in self._codes.items()}
        for code, session_id, until in reservations:
            if until > now and self.is_code(code) and until > merged.get(code, (-1.0, ""))[0]:
                merged[code] = (until, session_id)
        # Kept in expiry order (what `expire` relies on); over capacity, the soonest ends go.
        ordered = sorted(merged.items(), key=lambda item: item[1][0])[-self.capacity:]
        self._codes = OrderedDict((code, _Reservation(session_id, until))
                                  for code, (until, session_id) in ordered)
        return {held.session_id for held in self._codes.values()}

    def lookup(self, code: str, at: float) -> tuple[str | None, PromoStatus]:
        """Who holds `code` at `at`: (session id, MATCHED), else (None, UNKNOWN).

        A code whose check digit is wrong is UNKNOWN before any look-up: it is
        a slip, and must not name whoever holds the string by chance."""
        held = self._codes.get(code) if self.is_code(code) else None
        if held is None or held.until <= at:
            return None, PromoStatus.UNKNOWN
        return held.session_id, PromoStatus.MATCHED

    def is_code(self, text: str) -> bool:
        """Exactly `length` ASCII digits (what GET DATA or the operator's DTMF may give),
        ending in the right check digit when codes carry one."""
        return (len(text) == self.length and text.isascii() and text.isdigit()
                and (not self.check_digit or damm_digit(text) == "0"))

    def expire(self, now: float) -> int:
        """Free the codes whose time is up; O(freed). Returns how many."""
        freed = 0
        while self._codes:
            code, held = next(iter(self._codes.items()))
            if held.until > now:
                break
            del self._codes[code]
            freed += 1
        return freed

    def _draw(self) -> str:
        """A free code: random draws first; a crowded space is scanned from a random start
        (only reached when most codes are taken, so the space is small enough to scan)."""
        for _ in range(DRAWS):
            code = self._format(self._choose(self.space))
            if code not in self._codes:
                return code
        start = self._choose(self.space)
        for offset in range(self.space):
            code = self._format((start + offset) % self.space)
            if code not in self._codes:
                return code
        raise AssertionError("no free code although fewer than capacity are reserved")

    def _format(self, value: int) -> str:
        body = str(value).zfill(self._random_digits)
        return body + damm_digit(body) if self.check_digit else body
