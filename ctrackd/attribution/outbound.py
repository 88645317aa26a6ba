"""Which outside number an office phone's Dial called, from the DialBegin's DialString.

A missed caller leaves the callback list once somebody gets through to
them, and an office phone calling them back is the usual way. AMI offers
three candidates for "the number dialled"; only the DialString is what
Asterisk actually sent to the trunk:

- the dialled channel's `DestCallerIDNum` is the caller ID *presented* on
  that channel. Dial seeds it with the dialling extension only when the
  channel driver set none, and a trunk with `callerid=` configured (the usual
  PJSIP trunk) presets the office's own number: we would record calls "to"
  ourselves;
- the dialling channel's `Exten` is `s` inside a Gosub or FreePBX's
  `macro-dialout-trunk`, and still carries an outside-line prefix (`9...`)
  that the dialplan strips before dialling;
- the DialString (`trunk/89161234567`, `89161234567@trunk`,
  `trunk/sip:+79161234567@carrier;transport=tcp`, `g0/89161234567`,
  `89161234567@outbound/n` for a Local channel) carries the number after
  every rewrite, because the trunk needs it.

So the number is the rightmost part of the DialString that is a *valid*
phone number: `normalise_number` reads it as E.164, and `is_valid_e164`
must accept it. "Possible" is not enough: in Germany, Austria and the like
an internal extension (`101`, `phones/200`) is a possible national number
(`+49101`), and every internal call would count as a call to a customer.
"""

from __future__ import annotations

from ctrackd.attribution.numbers import is_valid_e164, normalise_number

_SCHEMES = ("sip:", "sips:", "tel:")


def dialled_number(dial_string: str | None, region: str) -> str | None:
    """The E.164 number a Dial called, or None (an extension, a peer name, nothing)."""
    if not dial_string:
        return None
    for part in reversed(dial_string.split("/")):
        user = part.split("@", 1)[0].strip()
        for scheme in _SCHEMES:
            if user.lower().startswith(scheme):
                user = user[len(scheme):]
        user = user.split(";", 1)[0]
        # "user:secret@host" (IAX2) is no number; a bare host or a peer name neither.
        if not user or ":" in user or not user.lstrip("+").isdigit():
            continue
        number = normalise_number(user, region)
        if number is not None and number.startswith("+") and is_valid_e164(number):
            return number
    return None
