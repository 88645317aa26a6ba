"""Visitor sessions of dynamic tracking: what a web page tells us, cleaned and bounded.

Everything a page sends comes from the open internet, so `normalise_visit` is
the one gate: each field gets a length bound, control and bidi characters go
(they would garble the operator's display and the terminal reports), ids must
be plain tokens, and referrer and landing page must be http(s) URLs (never a
`javascript:` or `data:` URL that a report could later render as a link).

A `VisitorSession` is what a call to a pool number is attributed to. The
daemon holds about ten thousand of them, so it is a slots dataclass with
bounded contents (at most `MAX_PAGES` pages, each cut to `LIMITS["page"]`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlsplit

#: length bounds in characters, per kind of field
LIMITS: dict[str, int] = {"token": 64, "click_id": 256, "text": 200, "url": 1000, "page": 300}
MAX_PAGES = 20          # pages remembered per session (the latest ones)
MAX_VISITS = 100_000    # a visit number beyond this is a broken or hostile client

UTM_FIELDS = ("utm_source", "utm_medium", "utm_campaign", "utm_term", "utm_content")
CLICK_IDS = ("gclid", "yclid", "fbclid")

# C0/C1 controls, zero-width characters, line/paragraph separators, bidi overrides, BOM.
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2066-\u2069\ufeff]")
_TOKEN = re.compile(r"[A-Za-z0-9._~:-]+")
_GA_COOKIE = re.compile(r"GA\d+\.\d+\.(\d+\.\d+)")  # `_ga` cookie -> its client id part


class VisitError(ValueError):
    """A page's request we cannot use at all; str(e) is the message for the client."""


@dataclass(frozen=True, slots=True)
class VisitInput:
    """One page view as a page reports it, after `normalise_visit` (JSON keys: `WIRE`)."""

    visitor_id: str                 # first-party id the snippet keeps in localStorage/cookie
    page_url: str | None = None     # the page being viewed (the landing page on a first view)
    referrer: str | None = None
    utm_source: str | None = None
    utm_medium: str | None = None
    utm_campaign: str | None = None
    utm_term: str | None = None
    utm_content: str | None = None
    gclid: str | None = None
    yclid: str | None = None
    fbclid: str | None = None
    ga_client_id: str | None = None  # from the `_ga` cookie
    ym_uid: str | None = None        # the `_ym_uid` cookie
    visits_before: int = 0           # the last visit_number the page was given (0: none)
    pool: str | None = None          # a pool the page asks for by name (e.g. one per city)
    session_id: str | None = None    # set only when re-asking after a failed heartbeat (renewal)


@dataclass(slots=True)
class VisitorSession:
    """One visit of one visitor: the source of the calls its number receives."""

    session_id: str
    visitor_id: str
    created_at: float
    last_seen: float
    visit_number: int = 1
    source: str | None = None
    medium: str | None = None
    campaign: str | None = None
    term: str | None = None
    content: str | None = None
    referrer: str | None = None
    landing_page: str | None = None
    gclid: str | None = None
    yclid: str | None = None
    fbclid: str | None = None
    ga_client_id: str | None = None
    ym_uid: str | None = None
    pages: list[str] = field(default_factory=list)
    channel: str | None = None      # static channel key from the UTM rules
    pool: str | None = None         # the lease last handed to this session
    number: str | None = None
    shared: bool = False
    overflow: bool = False
    promo_code: str | None = None   # the code the page shows (promo.py); None: none was free
    saved_seen: float | None = None  # last_seen as last handed to the store (None: never)


# -- cleaning ---------------------------------------------------------------

def clean_text(raw: str, limit: int = LIMITS["text"]) -> str | None:
    """Free text (UTM values): no control characters, single spaces, at most `limit` long."""
    # Cut before the regex work so a megabyte of input costs no more than a page.
    text = " ".join(_CONTROLS.sub("", raw[: limit * 4]).split())
    return text[:limit] or None


def clean_token(raw: str, limit: int = LIMITS["token"]) -> str | None:
    """An id (visitor, click, client, pool): one token of safe characters, else nothing."""
    text = raw[: limit * 4].strip()
    if len(raw) > limit * 4 or len(text) > limit or not _TOKEN.fullmatch(text):
        return None  # a cut or mangled id would match nobody in the ad system: drop it
    return text


def clean_url(raw: str, limit: int = LIMITS["url"]) -> str | None:
    """An http(s) URL with a host, cut to `limit`; anything else (javascript:, data:) is None."""
    text = _CONTROLS.sub("", raw[: limit * 4]).strip()[:limit]
    try:
        parts = urlsplit(text)
    except ValueError:  # e.g. an unclosed IPv6 bracket
        return None
    if parts.scheme.lower() not in {"http", "https"} or not parts.hostname:
        return None
    return text


def clean_click_id(raw: str) -> str | None:
    return clean_token(raw, LIMITS["click_id"])


def clean_ga_client_id(raw: str) -> str | None:
    """`GA1.1.123.456` (the cookie) or `123.456` (already the client id) -> `123.456`."""
    token = clean_token(raw)
    match = _GA_COOKIE.fullmatch(token) if token else None
    return match.group(1) if match else token


#: JSON key of a page's request (what ctrack.js sends) -> (VisitInput field, its cleaner)
WIRE: dict[str, tuple[str, Callable[[str], str | None]]] = {
    "page": ("page_url", clean_url),
    "referrer": ("referrer", clean_url),
    **{name: (name, clean_text) for name in UTM_FIELDS},
    **{name: (name, clean_click_id) for name in CLICK_IDS},
    "ga": ("ga_client_id", clean_ga_client_id),   # the `_ga` cookie as it is
    "ym_uid": ("ym_uid", clean_token),
    "pool": ("pool", clean_token),
    "session_id": ("session_id", clean_token),
}


def normalise_visit(data: Mapping[str, object]) -> VisitInput:
    """A page's JSON object -> a bounded `VisitInput`; `VisitError` only without a visitor id.

    Optional fields of the wrong type or shape are dropped, not refused, and
    unknown keys are ignored: an older or odd snippet must still get a number.
    UTM tags and click ids missing from the request are read from the page
    URL's query string.
    """
    if not isinstance(data, Mapping):
        raise VisitError("expected a JSON object")
    raw_id = data.get("visitor_id")
    visitor_id = clean_token(raw_id) if isinstance(raw_id, str) else None
    if visitor_id is None:
        raise VisitError("visitor_id: expected 1-64 characters of A-Z a-z 0-9 . _ ~ : -")
    values = {name: clean(raw) if isinstance(raw := data.get(key), str) else None
              for key, (name, clean) in WIRE.items()}
    _fill_from_query(values)
    return VisitInput(visitor_id=visitor_id, visits_before=_visit_count(data.get("visits_before")),
                      **values)


def _fill_from_query(values: dict[str, str | None]) -> None:
    url = values["page_url"]
    if not url or "?" not in url:
        return
    query = {key.lower(): value for key, value in parse_qsl(urlsplit(url).query)}
    for name in (*UTM_FIELDS, *CLICK_IDS):
        if values[name] is None and name in query:
            values[name] = WIRE[name][1](query[name])


def _visit_count(raw: object) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int):
        return 0
    return min(max(raw, 0), MAX_VISITS)


# -- sessions ---------------------------------------------------------------

def open_session(visit: VisitInput, *, session_id: str, visit_number: int,
                 now: float) -> VisitorSession:
    """A new session from its first page view (that page is its landing page)."""
    session = VisitorSession(
        session_id=session_id, visitor_id=visit.visitor_id, created_at=now, last_seen=now,
        visit_number=visit_number, source=visit.utm_source, medium=visit.utm_medium,
        campaign=visit.utm_campaign, term=visit.utm_term, content=visit.utm_content,
        referrer=visit.referrer, landing_page=visit.page_url, gclid=visit.gclid,
        yclid=visit.yclid, fbclid=visit.fbclid, ga_client_id=visit.ga_client_id,
        ym_uid=visit.ym_uid)
    see_page(session, visit, now)
    return session


def see_page(session: VisitorSession, visit: VisitInput, now: float) -> None:
    """Record a page view of a live session (a reload, another tab, the next page)."""
    session.last_seen = max(session.last_seen, now)
    session.ga_client_id = session.ga_client_id or visit.ga_client_id
    session.ym_uid = session.ym_uid or visit.ym_uid
    if visit.page_url:
        session.pages.append(visit.page_url[: LIMITS["page"]])
        if len(session.pages) > MAX_PAGES:
            del session.pages[0]


def campaign_of(visit: VisitInput) -> tuple[str | None, ...]:
    return (visit.utm_source, visit.utm_medium, visit.utm_campaign, visit.utm_term,
            visit.utm_content, visit.gclid, visit.yclid, visit.fbclid)


def starts_new_visit(session: VisitorSession, visit: VisitInput) -> bool:
    """A page view with campaign data (UTM, click id) other than the session's is a new visit.

    A view without any (the next page, a reload, a direct return) continues
    the session: the last non-direct click keeps the credit, as analytics do.
    """
    incoming = campaign_of(visit)
    current = (session.source, session.medium, session.campaign, session.term,
               session.content, session.gclid, session.yclid, session.fbclid)
    return any(incoming) and incoming != current


def session_fields(session: VisitorSession) -> dict[str, str | int | None]:
    """The session as a call record carries it (`session` in `ctrackd calls --format json`)."""
    return {
        "session_id": session.session_id, "visitor_id": session.visitor_id,
        "visit_number": session.visit_number, "utm_source": session.source,
        "utm_medium": session.medium, "utm_campaign": session.campaign,
        "utm_term": session.term, "utm_content": session.content,
        "referrer": session.referrer, "landing_page": session.landing_page,
        "gclid": session.gclid, "yclid": session.yclid, "fbclid": session.fbclid,
        "ga_client_id": session.ga_client_id, "ym_uid": session.ym_uid,
    }


# -- UTM rules -> static channel --------------------------------------------

@dataclass(frozen=True, slots=True)
class UtmRule:
    """`utm_source=yandex` [`utm_medium=cpc`] [`utm_campaign=...`] -> channel key.

    A field left None matches anything; values compare case-insensitively.
    """

    channel: str
    source: str | None = None
    medium: str | None = None
    campaign: str | None = None

    def __post_init__(self) -> None:
        for name in ("source", "medium", "campaign"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, value.casefold())

    def matches(self, source: str, medium: str, campaign: str) -> bool:
        """Arguments already casefolded ("" when the session has none)."""
        return ((self.source is None or self.source == source)
                and (self.medium is None or self.medium == medium)
                and (self.campaign is None or self.campaign == campaign))


def match_channel(rules: Sequence[UtmRule], session: VisitorSession) -> str | None:
    """The channel of the first rule the session's UTM tags match (rules in config order)."""
    tags = [(value or "").casefold() for value in (session.source, session.medium,
                                                   session.campaign)]
    for rule in rules:
        if rule.matches(*tags):
            return rule.channel
    return None
