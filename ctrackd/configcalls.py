"""Config sections about what happens around a call: `promo`, `targets`, `hooks`,
`recordings.retention`, and the per-channel operator settings.

Apart from `config.py` so that each file reads as the list of settings it
holds; the checks and error wording are the same (configschema.Reader).
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date

import yaml

from ctrackd.attribution.plan import TargetRule
from ctrackd.configschema import KEY, Node, Reader

# Playback() and Dial's U() argument: a sound name Asterisk finds (no
# extension, as Playback wants it), or an absolute path. No spaces, commas,
# parentheses or `^` (they would split Dial's options), no `..`.
SOUND = re.compile(r"^/?[A-Za-z0-9_-]+(/[A-Za-z0-9_.-]+)*$")
SOUND_EXPECTED = ("a sound file name without extension, such as custom/whisper-yandex"
                  " (letters, digits, '_', '-', '/')")
# A unit is required: a bare `50` meant as 50 GB would be read as 50 bytes
# and retention would delete nearly every recording.
_SIZE = re.compile(r"^([0-9]+(?:\.[0-9]+)?)\s*(B|[KMGT](?:i?B)?)$", re.IGNORECASE)
_SIZE_UNITS = {"B": 1, "K": 1024, "M": 1024 ** 2, "G": 1024 ** 3, "T": 1024 ** 4}
SIZE_EXPECTED = ("a size with its unit, such as 500M, 20G or 1T (B, K, M, G, T; powers of"
                 " 1024)")
#: what a hook can subscribe to, in the order a call makes them (docs/hooks.md);
#: a hook without `events` gets them all: a CRM wants the whole life of a call
HOOK_EVENTS = ("call_start", "call_answer", "call_end", "missed")


@dataclass(frozen=True)
class PromoConfig:
    """Promo codes: every visitor session gets one; promo lines ask callers for it."""

    length: int = 5                 # digits per code, the check digit included
    code_ttl: float = 86400.0       # seconds a code stays callable after the session's last view
    prompt: str = "beep"            # sound played to ask for the code (GET DATA)
    retry_prompt: str | None = None  # sound before another try (None: the prompt again)
    digit_timeout: float = 8.0      # seconds the caller has to key the code
    attempts: int = 2               # tries before the call falls back to the number's channel
    operator_prefix: str = "*"      # what the operator keys before the code
    # The last digit is a Damm check digit over the others: a mistyped digit or two
    # swapped neighbours make no code, instead of another visitor's.
    check_digit: bool = True


@dataclass(frozen=True)
class HookConfig:
    """Where an event goes: a JSON POST to `url`, or a `command` with the JSON on stdin."""

    name: str
    events: tuple[str, ...] = HOOK_EVENTS
    url: str | None = None
    command: tuple[str, ...] | None = None
    secret: str | None = field(default=None, repr=False)  # HMAC-SHA256 of the body, if set
    timeout: float = 10.0           # seconds per attempt
    max_attempts: int = 20          # then the delivery is given up (kept in the outbox)
    max_delay: float = 3600.0       # cap of the retry backoff, seconds


@dataclass(frozen=True)
class RetentionConfig:
    """Recording retention: off unless one limit is set."""

    max_age_days: float | None = None   # delete recordings older than this
    max_bytes: int | None = None        # keep the recordings folder under this size
    min_free_bytes: int | None = None   # keep at least this much free on its disk
    interval: float = 3600.0            # seconds between prunes inside the daemon
    dry_run: bool = False               # the daemon only logs what it would delete

    @property
    def enabled(self) -> bool:
        return any(v is not None for v in (self.max_age_days, self.max_bytes,
                                           self.min_free_bytes))


def parse_size(text: str) -> int | None:
    """`20G`, `20GB`, `20GiB` -> bytes (binary units); None when it is no size or has no unit."""
    match = _SIZE.match(text.strip())
    if not match:
        return None
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2)[0].upper()])


def size(r: Reader, node: Node | None, path: str) -> int | None:
    if node is None:
        return None
    raw = r.text(node, path)
    value = parse_size(raw)
    if value is None or value <= 0:
        r.fail(node, path, SIZE_EXPECTED, repr(raw))
    return value


def sound(r: Reader, node: Node | None, path: str) -> str | None:
    if node is None:
        return None
    value = r.pattern(node, path, SOUND, SOUND_EXPECTED)
    if ".." in value.split("/"):
        r.fail(node, path, SOUND_EXPECTED, repr(value))
    return value


def promo_section(r: Reader, node: Node | None) -> PromoConfig:
    if node is None:
        return PromoConfig()
    m = r.mapping(node, "promo", {"length", "code_ttl", "prompt", "retry_prompt",
                                  "digit_timeout", "attempts", "operator_prefix",
                                  "check_digit"})
    prefix = r.choice_text(m.get("operator_prefix"), "promo.operator_prefix", {"*", "#"},
                           default="*")
    return PromoConfig(
        length=r.integer(m.get("length"), "promo.length", default=5, low=3, high=8),
        code_ttl=r.number(m.get("code_ttl"), "promo.code_ttl", default=86400.0, low=60,
                          high=90 * 86400),
        prompt=sound(r, m.get("prompt"), "promo.prompt") or "beep",
        retry_prompt=sound(r, m.get("retry_prompt"), "promo.retry_prompt"),
        digit_timeout=r.number(m.get("digit_timeout"), "promo.digit_timeout", default=8.0,
                               low=1, high=60),
        attempts=r.integer(m.get("attempts"), "promo.attempts", default=2, low=1, high=5),
        operator_prefix=prefix,
        check_digit=r.boolean(m.get("check_digit"), "promo.check_digit", default=True),
    )


def target_rule(r: Reader, node: Node | None, path: str,
                base: TargetRule | None = None) -> TargetRule | None:
    """`{min_talk_seconds, answered, unique_days}`; keys left out come from `base`."""
    if node is None:
        return base
    base = base or TargetRule()
    m = r.mapping(node, path, {"min_talk_seconds", "answered", "unique_days"})
    return TargetRule(
        min_talk_seconds=r.number(m.get("min_talk_seconds"), f"{path}.min_talk_seconds",
                                  default=base.min_talk_seconds, low=0, high=86400),
        answered=r.boolean(m.get("answered"), f"{path}.answered", default=base.answered),
        unique_days=r.integer(m.get("unique_days"), f"{path}.unique_days",
                              default=base.unique_days, low=0, high=3650),
    )


def hooks_section(r: Reader, node: Node | None) -> tuple[HookConfig, ...]:
    if node is None:
        return ()
    hooks: list[HookConfig] = []
    for key_node, value in r.entries(node, "hooks"):
        name = r.pattern(key_node, "hooks", KEY, "a hook name of letters, digits, '_', '.', '-'")
        path = f"hooks.{name}"
        m = r.mapping(value, path, {"events", "url", "command", "secret", "timeout",
                                    "max_attempts", "max_delay"})
        if ("url" in m) == ("command" in m):
            r.fail(value, path, "exactly one of url or command",
                   "both" if "url" in m else "neither")
        url = None
        if "url" in m:
            url = r.text(m["url"], f"{path}.url")
            if not re.match(r"^https?://[^\s/]+", url):
                r.fail(m["url"], f"{path}.url", "an http:// or https:// URL", repr(url))
        command = None
        if "command" in m:
            command = _argv(r, m["command"], f"{path}.command")
        events = tuple(_list(r, m.get("events"), f"{path}.events", list(HOOK_EVENTS)))
        for event_node, event in zip(_nodes(m.get("events")), events):
            if event not in HOOK_EVENTS:
                r.fail(event_node, f"{path}.events", "one of " + ", ".join(HOOK_EVENTS),
                       repr(event))
        hooks.append(HookConfig(
            name=name, events=events, url=url, command=command,
            secret=r.text(m.get("secret"), f"{path}.secret", default=None),
            timeout=r.number(m.get("timeout"), f"{path}.timeout", default=10.0, low=0.1,
                             high=300),
            max_attempts=r.integer(m.get("max_attempts"), f"{path}.max_attempts", default=20,
                                   low=1, high=1000),
            max_delay=r.number(m.get("max_delay"), f"{path}.max_delay", default=3600.0,
                               low=1, high=86400)))
    return tuple(hooks)


def retention_section(r: Reader, node: Node | None) -> RetentionConfig:
    if node is None:
        return RetentionConfig()
    path = "recordings.retention"
    m = r.mapping(node, path, {"max_age_days", "max_size", "min_free", "interval", "dry_run"})
    age = m.get("max_age_days")
    return RetentionConfig(
        max_age_days=(r.number(age, f"{path}.max_age_days", default=0.0, low=0.01, high=36500,
                               unit="days") if age is not None else None),
        max_bytes=size(r, m.get("max_size"), f"{path}.max_size"),
        min_free_bytes=size(r, m.get("min_free"), f"{path}.min_free"),
        interval=r.number(m.get("interval"), f"{path}.interval", default=3600.0, low=10,
                          high=7 * 86400),
        dry_run=r.boolean(m.get("dry_run"), f"{path}.dry_run", default=False),
    )


def _nodes(node: Node | None) -> list[Node]:
    return list(node.value) if isinstance(node, yaml.SequenceNode) else []


def _list(r: Reader, node: Node | None, path: str, default: list[str]) -> list[str]:
    if node is None:
        return default
    if not isinstance(node, yaml.SequenceNode) or not node.value:
        r.fail(node, path, "a non-empty list", r.describe(node))
    return [r.text(item, path) for item in node.value]


def _argv(r: Reader, node: Node, path: str) -> tuple[str, ...]:
    """A command as a list (no shell: nothing in an event can become shell syntax)."""
    if not isinstance(node, yaml.SequenceNode) or not node.value:
        r.fail(node, path, "a command as a non-empty list, such as [/usr/local/bin/notify, "
               "--missed]", r.describe(node))
    argv = tuple(r.text(item, path) for item in node.value)
    if not argv[0].startswith("/"):
        r.fail(node.value[0], path, "an absolute path to the program", repr(argv[0]))
    return argv


# -- exports (docs/exports.md) ----------------------------------------------------

GA4_ENDPOINT = "https://www.google-analytics.com/mp/collect"
_CURRENCY = re.compile(r"^[A-Z]{3}$")


@dataclass(frozen=True)
class Ga4Config:
    """GA4 Measurement Protocol: where `ctrackd export ga4 --send` posts."""

    measurement_id: str | None = None            # G-XXXXXXXXXX
    api_secret: str | None = field(default=None, repr=False)
    endpoint: str = GA4_ENDPOINT                 # tests point it at a local receiver
    event_name: str = "phone_call"


@dataclass(frozen=True)
class ExportsConfig:
    """Offline conversions: what a call is worth and how the receiving systems name it."""

    value: float | None = None                   # per qualifying call, when no channel value
    currency: str | None = None                  # ISO 4217, e.g. RUB
    channel_values: dict[str, float] = field(default_factory=dict)
    timezone: str = "UTC"                        # Google Ads files: Parameters:TimeZone
    call_conversion: str = "Phone call"          # Google Ads conversion action (calls)
    click_conversion: str = "Phone call"         # Google Ads conversion action (clicks)
    call_tracker_url: str | None = None          # Metrica CallTrackerURL; {call_id} filled in
    ga4: Ga4Config = field(default_factory=Ga4Config)

    def value_for(self, channel: str | None) -> float | None:
        """The channel's own value, else the global one (None: no value column filled)."""
        if channel is not None and channel in self.channel_values:
            return self.channel_values[channel]
        return self.value


def exports_section(r: Reader, node: Node | None, channels: Iterable[str]) -> ExportsConfig:
    if node is None:
        return ExportsConfig()
    m = r.mapping(node, "exports", {"value", "currency", "values", "timezone", "google_ads",
                                    "call_tracker_url", "ga4"})
    values: dict[str, float] = {}
    known = set(channels)
    if "values" in m:
        for key_node, value in r.entries(m["values"], "exports.values"):
            key = r.scalar_text(key_node)
            if key not in known:
                r.fail(key_node, "exports.values", "a channel key (" + (", ".join(sorted(known))
                       or "none defined") + ")", repr(key))
            values[key] = r.number(value, f"exports.values.{key}", default=0.0, low=0,
                                   high=1e12, unit="currency units")
    currency = r.text(m.get("currency"), "exports.currency", default=None)
    if currency is not None and not _CURRENCY.match(currency):
        r.fail(m["currency"], "exports.currency", "a three-letter ISO 4217 code such as RUB",
               repr(currency))
    timezone = r.text(m.get("timezone"), "exports.timezone", default="UTC")
    if not _is_zone(timezone):
        r.fail(m["timezone"], "exports.timezone", "a time zone name such as Europe/Moscow",
               repr(timezone))
    g = r.mapping(m["google_ads"], "exports.google_ads", {"call_conversion",
                                                          "click_conversion"}) \
        if "google_ads" in m else {}
    value = m.get("value")
    return ExportsConfig(
        value=r.number(value, "exports.value", default=0.0, low=0, high=1e12,
                       unit="currency units") if value is not None else None,
        currency=currency, channel_values=values, timezone=timezone,
        call_conversion=r.text(g.get("call_conversion"), "exports.google_ads.call_conversion",
                               default="Phone call"),
        click_conversion=r.text(g.get("click_conversion"),
                                "exports.google_ads.click_conversion", default="Phone call"),
        call_tracker_url=_url(r, m.get("call_tracker_url"), "exports.call_tracker_url"),
        ga4=_ga4(r, m.get("ga4")))


def _ga4(r: Reader, node: Node | None) -> Ga4Config:
    if node is None:
        return Ga4Config()
    m = r.mapping(node, "exports.ga4", {"measurement_id", "api_secret", "endpoint",
                                        "event_name"})
    name = r.text(m.get("event_name"), "exports.ga4.event_name", default="phone_call")
    if not re.match(r"^[A-Za-z][A-Za-z0-9_]{0,39}$", name):
        r.fail(m["event_name"], "exports.ga4.event_name", "an event name of letters, digits"
               " and '_', starting with a letter, at most 40 characters", repr(name))
    return Ga4Config(
        measurement_id=r.text(m.get("measurement_id"), "exports.ga4.measurement_id",
                              default=None),
        api_secret=r.text(m.get("api_secret"), "exports.ga4.api_secret", default=None),
        endpoint=_url(r, m.get("endpoint"), "exports.ga4.endpoint") or GA4_ENDPOINT,
        event_name=name)


def _url(r: Reader, node: Node | None, path: str) -> str | None:
    url = r.text(node, path, default=None)
    if url is not None and not re.match(r"^https?://[^\s/]+", url):
        r.fail(node, path, "an http:// or https:// URL", repr(url))
    return url


def _is_zone(name: str) -> bool:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


# -- spend (docs/reports.md) ------------------------------------------------------

#: the ad keys a spend row may carry, as the `spend` table names them
SPEND_KEYS = ("channel", "source", "medium", "campaign", "term")
SPEND_PERIODS = ("day", "week", "month")


@dataclass(frozen=True)
class Budget:
    """An amount per period (or for a span of days), spread evenly over its days.

    `per: month` gives each day of a month amount / days in that month, so a
    monthly budget adds up to itself whatever the month's length; without
    `per`, the amount is spread over `first`..`last` (a one-off: a week of
    newspaper ads). Days are the report's local calendar days.
    """

    amount: float
    per: str | None = None                       # day, week, month; None: first..last
    first: date | None = None                    # inclusive; None: since ever
    last: date | None = None                     # inclusive; None: for good
    keys: tuple[tuple[str, str], ...] = ()       # ((key, value), ...) of SPEND_KEYS

    def on(self, day: date) -> float:
        """The amount this budget spends on `day` (0 outside its days)."""
        if (self.first is not None and day < self.first) or (
                self.last is not None and day > self.last):
            return 0.0
        if self.per == "day":
            return self.amount
        if self.per == "week":
            return self.amount / 7
        if self.per == "month":
            return self.amount / calendar.monthrange(day.year, day.month)[1]
        assert self.first is not None and self.last is not None
        return self.amount / ((self.last - self.first).days + 1)


@dataclass(frozen=True)
class SpendConfig:
    """`spend:`: the budgets of the config (imported spend lives in the store)."""

    currency: str | None = None                  # of budgets and imports (None: exports.currency)
    budgets: tuple[Budget, ...] = ()


def spend_section(r: Reader, node: Node | None, channels: Iterable[str]) -> SpendConfig:
    if node is None:
        return SpendConfig()
    m = r.mapping(node, "spend", {"currency", "budgets"})
    currency = r.text(m.get("currency"), "spend.currency", default=None)
    if currency is not None and not _CURRENCY.match(currency):
        r.fail(m["currency"], "spend.currency", "a three-letter ISO 4217 code such as RUB",
               repr(currency))
    budgets = []
    known = set(channels)
    items = m.get("budgets")
    if items is not None and not isinstance(items, yaml.SequenceNode):
        r.fail(items, "spend.budgets", "a list of budgets ({channel, amount, per})",
               r.describe(items))
    for i, item in enumerate(_nodes(items)):
        path = f"spend.budgets[{i}]"
        b = r.mapping(item, path, {"amount", "per", "from", "until", *SPEND_KEYS},
                      required={"amount"})
        keys = tuple((key, r.text(b[key], f"{path}.{key}")) for key in SPEND_KEYS if key in b)
        channel = dict(keys).get("channel")
        if channel is not None and channel not in known:
            r.fail(b["channel"], f"{path}.channel", "a channel key (" + (
                ", ".join(sorted(known)) or "none defined") + ")", repr(channel))
        per = r.choice_text(b.get("per"), f"{path}.per", set(SPEND_PERIODS), default="") or None
        first, last = _date(r, b.get("from"), f"{path}.from"), _date(r, b.get("until"),
                                                                     f"{path}.until")
        if per is None and (first is None or last is None):
            r.fail(item, path, "per (day, week or month), or both from and until (a one-off"
                   " amount spread over those days)", "neither")
        if first is not None and last is not None and last < first:
            r.fail(b["until"], f"{path}.until", f"a day on or after from ({first})", str(last))
        budgets.append(Budget(
            amount=r.number(b["amount"], f"{path}.amount", default=0.0, low=0, high=1e12,
                            unit="currency units"),
            per=per, first=first, last=last, keys=keys))
    return SpendConfig(currency=currency, budgets=tuple(budgets))


def _date(r: Reader, node: Node | None, path: str) -> date | None:
    if node is None:
        return None
    raw = r.text(node, path)
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", raw):
            return date.fromisoformat(raw)
    except ValueError:
        pass
    r.fail(node, path, "an ISO date such as 2026-11-01", repr(raw))
