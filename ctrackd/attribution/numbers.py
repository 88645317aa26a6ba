"""Phone number normalisation: one number, one spelling (E.164).

`+74950000001`, `84950000001` and `74950000001` must be the same tracking
number, and a caller who once dials in as `8916...` and once as `+7916...` the
same caller. phonenumbers knows every country's trunk prefix; we only add the
policy for what is not a number at all.
"""

from __future__ import annotations

import re
from functools import lru_cache

import phonenumbers

#: what Asterisk and carriers put where there is no number
WITHHELD = frozenset({"", "unknown", "<unknown>", "anonymous", "restricted", "private",
                      "unavailable", "withheld"})


# Already E.164 ("+" and 8 to 15 digits): nothing to decide, no parse needed.
_E164 = re.compile(r"^\+[1-9][0-9]{7,14}$")


def normalise_number(raw: str | None, region: str) -> str | None:
    """Return `raw` as E.164, the bare digits when it is no valid number, or None when withheld.

    A short internal extension (`100`) or a service number that phonenumbers
    cannot place is kept as its digits rather than dropped: the call still
    happened and the admin can still search for it.

    This runs on the AGI path for every call (DID and caller): an E.164 input
    returns at once, and other spellings are cached (phonenumbers' validity
    check costs ~150 µs; the profile of the track route showed it on top).
    """
    if raw is None:
        return None
    if _E164.match(raw):
        return raw
    return _normalise(raw, region)


@lru_cache(maxsize=65536)
def _normalise(raw: str, region: str) -> str | None:
    text = raw.strip()
    if text.lower() in WITHHELD:
        return None
    digits = "".join(ch for ch in text if ch.isdigit())
    if not digits:
        return None
    candidates = [text]
    if not text.startswith("+"):
        # Carriers often deliver international numbers without the "+"
        # (74950000001). The national reading comes first, so that "8495..."
        # in Russia is +7495..., not a number in Vietnam (+84).
        candidates.append("+" + digits)
    parsed_numbers = []
    for candidate in candidates:
        try:
            parsed_numbers.append(phonenumbers.parse(candidate, region))
        except phonenumbers.NumberParseException:
            continue
    for acceptable in (phonenumbers.is_valid_number, phonenumbers.is_possible_number):
        for parsed in parsed_numbers:
            if acceptable(parsed):
                return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
    return ("+" + digits) if text.startswith("+") else digits


@lru_cache(maxsize=4096)
def is_valid_e164(number: str) -> bool:
    """Whether an E.164 number (`+49...`) is a valid one, not merely a possible one.

    `normalise_number` accepts "possible" numbers too (a caller ID is what it
    is). Deciding whether a dialled string reaches outside is stricter: in
    Germany or Austria a 3- or 4-digit extension is a possible number (`101`
    becomes +49101), never a valid one. Cached: judged per outbound Dial.
    """
    try:
        return phonenumbers.is_valid_number(phonenumbers.parse(number, None))
    except phonenumbers.NumberParseException:
        return False


def masked(number: str) -> str:
    """`+79161234567` -> `+7916***4567`: enough to tell callers apart, not to dial them.

    One rule for the logs and the CLI's tables; a short number (an
    extension, a service number) has nothing to hide.
    """
    return number if len(number) < 8 else number[:5] + "***" + number[-4:]
