"""Config sections of dynamic tracking: `pools`, `utm_rules` and `web`.

Apart from `config.py` so that each file reads as the list of settings it
holds; the checks and error wording are the same (configschema.Reader).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import yaml

from ctrackd.attribution.numbers import normalise_number
from ctrackd.attribution.plan import Channel, TrackingNumber
from ctrackd.attribution.pools import OVERFLOW_SHARED, PoolSpec
from ctrackd.attribution.sessions import UtmRule
from ctrackd.configschema import DIAL, DIAL_EXPECTED, KEY, Node, Reader


@dataclass(frozen=True)
class RateLimit:
    per_minute: int = 120     # sustained requests a minute per client address
    burst: int = 30           # what a client may send at once


@dataclass(frozen=True)
class WebConfig:
    """The HTTP side (numbers and promo codes for the website): off unless configured."""

    host: str = "127.0.0.1"
    port: int = 8080
    origins: tuple[str, ...] = ()        # the sites allowed to ask (CORS)
    replace: tuple[str, ...] = ()        # office numbers (E.164) the snippet swaps
    heartbeat_seconds: int = 30
    max_body_bytes: int = 8192
    rate_limit: RateLimit = field(default_factory=RateLimit)
    trust_forwarded: bool = False        # take the client address from X-Forwarded-For


def _did(r: Reader, node: Node, path: str, region: str) -> str:
    raw = r.text(node, path)
    did = normalise_number(raw, region)
    if not did or not did.startswith("+"):
        r.fail(node, path, "a phone number such as +74950000101", repr(raw))
    return did


def pools_section(r: Reader, node: Node | None, channels: dict[str, Channel],
                  static: dict[str, TrackingNumber], region: str) -> tuple[PoolSpec, ...]:
    if node is None:
        return ()
    pools: list[PoolSpec] = []
    taken: dict[str, str] = {}  # DID -> the pool that has it
    fixed_overflows: list[tuple[str, Node, str]] = []
    for key_node, value in r.entries(node, "pools"):
        name = r.pattern(key_node, "pools", KEY, "a pool name of letters, digits, '_', '.', '-'")
        path = f"pools.{name}"
        m = r.mapping(value, path, {"numbers", "hold_seconds", "grace_seconds", "overflow",
                                    "channel", "forward_to"}, required={"numbers"})
        numbers_node = m["numbers"]
        if not isinstance(numbers_node, yaml.SequenceNode) or not numbers_node.value:
            r.fail(numbers_node, f"{path}.numbers", "a list of phone numbers",
                   r.describe(numbers_node))
        numbers = []
        for item in numbers_node.value:
            did = _did(r, item, f"{path}.numbers", region)
            where = taken.get(did) or ("numbers" if did in static else None)
            if where or did in numbers:
                r.fail(item, f"{path}.numbers", f"a number used once (it is {did}, already "
                       f"in {where or 'this pool'})", "a duplicate")
            taken[did] = path
            numbers.append(did)
        overflow = OVERFLOW_SHARED
        if "overflow" in m:
            text = r.text(m["overflow"], f"{path}.overflow")
            overflow = text if text == OVERFLOW_SHARED else _did(
                r, m["overflow"], f"{path}.overflow", region)
            if overflow != OVERFLOW_SHARED:
                fixed_overflows.append((overflow, m["overflow"], f"{path}.overflow"))
        channel = m.get("channel")
        channel_key = r.text(channel, f"{path}.channel") if channel is not None else None
        if channel_key is not None and channel_key not in channels:
            r.fail(channel, f"{path}.channel",
                   f"one of the channels ({', '.join(sorted(channels))})", repr(channel_key))
        forward = m.get("forward_to")
        try:
            pools.append(PoolSpec(
                name=name, numbers=tuple(numbers),
                hold_seconds=r.number(m.get("hold_seconds"), f"{path}.hold_seconds",
                                      default=900.0, low=10, high=86_400),
                grace_seconds=r.number(m.get("grace_seconds"), f"{path}.grace_seconds",
                                       default=3600.0, low=0, high=7 * 86_400),
                overflow=overflow, channel=channel_key,
                forward_to=(r.pattern(forward, f"{path}.forward_to", DIAL, DIAL_EXPECTED)
                            if forward is not None else None)))
        except ValueError as exc:  # the core's own consistency checks
            r.fail(value, path, "a consistent pool", str(exc))
    for did, node, path in fixed_overflows:
        # Shown to everyone when the pool is full: were it a pool number too,
        # its calls would go to whichever session holds it there.
        if did in taken:
            r.fail(node, path, f"a number in no pool (it is {did}, in {taken[did]})",
                   "a pool number")
    return tuple(pools)


def utm_rules_section(r: Reader, node: Node | None,
                      channels: dict[str, Channel]) -> tuple[UtmRule, ...]:
    if node is None:
        return ()
    if not isinstance(node, yaml.SequenceNode):
        r.fail(node, "utm_rules", "a list of rules such as {source: yandex, channel: ...}",
               r.describe(node))
    rules = []
    for index, item in enumerate(node.value):
        path = f"utm_rules[{index}]"
        m = r.mapping(item, path, {"source", "medium", "campaign", "channel"},
                      required={"channel"})
        channel = r.text(m["channel"], f"{path}.channel")
        if channel not in channels:
            r.fail(m["channel"], f"{path}.channel",
                   f"one of the channels ({', '.join(sorted(channels)) or 'none defined'})",
                   repr(channel))
        if not {"source", "medium", "campaign"} & m.keys():
            r.fail(item, path, "at least one of source, medium, campaign", "none")
        rules.append(UtmRule(channel=channel,
                             source=r.text(m.get("source"), f"{path}.source", default=None),
                             medium=r.text(m.get("medium"), f"{path}.medium", default=None),
                             campaign=r.text(m.get("campaign"), f"{path}.campaign",
                                             default=None)))
    return tuple(rules)


_ORIGIN = re.compile(r"^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?$")


def web_section(r: Reader, node: Node | None, region: str) -> WebConfig | None:
    if node is None:
        return None
    m = r.mapping(node, "web", {"listen", "origins", "replace", "heartbeat_seconds",
                                "max_body_bytes", "rate_limit", "trust_forwarded"},
                  required={"origins"})
    host, port = r.address(m["listen"], "web.listen") if "listen" in m else ("127.0.0.1", 8080)
    origins = tuple(_origin(r.pattern(item, "web.origins", _ORIGIN,
                                      "an origin such as https://example.com (scheme, host, "
                                      "port)"))
                    for item in _items(r, m["origins"], "web.origins"))
    # Optional: a promo-only site (no pools) has no number to swap.
    replace = tuple(_did(r, item, "web.replace", region)
                    for item in _items(r, m["replace"], "web.replace")) if "replace" in m else ()
    limit = RateLimit()
    if "rate_limit" in m:
        lm = r.mapping(m["rate_limit"], "web.rate_limit", {"per_minute", "burst"})
        limit = RateLimit(
            per_minute=r.integer(lm.get("per_minute"), "web.rate_limit.per_minute",
                                 default=120, low=1, high=1_000_000),
            burst=r.integer(lm.get("burst"), "web.rate_limit.burst", default=30, low=1,
                            high=100_000))
    return WebConfig(
        host=host, port=port, origins=origins, replace=replace,
        heartbeat_seconds=r.integer(m.get("heartbeat_seconds"), "web.heartbeat_seconds",
                                    default=30, low=5, high=600),
        max_body_bytes=r.integer(m.get("max_body_bytes"), "web.max_body_bytes", default=8192,
                                 low=512, high=1_048_576),
        rate_limit=limit,
        trust_forwarded=r.boolean(m.get("trust_forwarded"), "web.trust_forwarded",
                                  default=False))


def _origin(text: str) -> str:
    """As a browser sends it: lower-case, no default port (else it never matches)."""
    scheme, _, rest = text.lower().partition("://")
    default = {"http": ":80", "https": ":443"}[scheme]
    return f"{scheme}://{rest.removesuffix(default)}"


def check_web_against_pools(r: Reader, node: Node | None, web: WebConfig | None,
                            pools: tuple[PoolSpec, ...]) -> None:
    """Pool holds shorter than two heartbeats would let numbers lapse between beats.

    A web side without pools is fine: its sessions still get promo codes
    (a site with only a promo line, or operators keying `*` + code).
    """
    if web is None or node is None:
        return
    if pools and not web.replace:
        r.fail(node, "web.replace", "the office number(s) the snippet swaps for a pool number",
               "no web.replace while pools are configured")
    for spec in pools:
        if spec.hold_seconds < 2 * web.heartbeat_seconds:
            r.fail(node, "web.heartbeat_seconds",
                   f"at most half of every pool's hold_seconds (pool {spec.name!r} holds "
                   f"{spec.hold_seconds:g} s)", str(web.heartbeat_seconds))


def _items(r: Reader, node: Node, path: str) -> list[Node]:
    if not isinstance(node, yaml.SequenceNode) or not node.value:
        r.fail(node, path, "a non-empty list", r.describe(node))
    return list(node.value)


