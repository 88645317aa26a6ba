"""The YAML config, validated into typed objects with errors that point at the line.

An admin edits this file over SSH; a typo must not pass silently and must
not cost a call at the next reload. So: every key is known (an unknown key
is an error), every value is checked, and an error reads
`FILE:LINE:COL: key.path: expected ..., found ...`.

We walk PyYAML's node tree (`yaml.compose`) rather than the loaded dict,
because nodes keep their marks (line, column) and the raw scalar text: a DID
written `74950000001` stays that text, not an int, and `0495...` is not
read as octal.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import phonenumbers
import yaml

from ctrackd.attribution.numbers import normalise_number
from ctrackd.attribution.plan import Channel, StaticPlan, TargetRule, TrackingNumber
from ctrackd.attribution.pools import PoolSpec
from ctrackd.attribution.sessions import UtmRule
from ctrackd.configdynamic import (
    WebConfig,
    check_web_against_pools,
    pools_section,
    utm_rules_section,
    web_section,
)
from ctrackd.configcalls import (
    ExportsConfig,
    HookConfig,
    PromoConfig,
    RetentionConfig,
    SpendConfig,
    exports_section,
    hooks_section,
    promo_section,
    retention_section,
    sound,
    spend_section,
    target_rule,
)
from ctrackd.configmetrics import MetricsConfig, metrics_section
from ctrackd.configschema import DIAL, DIAL_EXPECTED, KEY, Node, Reader


class ConfigError(Exception):
    """A config problem; str() is the full `FILE:LINE:COL: key.path: ...` line."""


@dataclass(frozen=True)
class AmiConfig:
    username: str
    secret: str = field(repr=False)
    host: str = "127.0.0.1"
    port: int = 5038
    events: str = "system,call,cdr,user,dtmf"
    ping_interval: float = 10.0
    liveness_timeout: float = 30.0
    action_timeout: float = 5.0
    reconnect_max: float = 30.0


@dataclass(frozen=True)
class AgiConfig:
    host: str = "127.0.0.1"
    port: int = 4573
    max_sessions: int = 256
    session_timeout: float = 10.0
    env_timeout: float = 2.0


@dataclass(frozen=True)
class StoreConfig:
    path: Path
    synchronous: str = "normal"


@dataclass(frozen=True)
class RecordingsConfig:
    dir: str | None = None
    retention: RetentionConfig = field(default_factory=RetentionConfig)


@dataclass(frozen=True)
class DefaultsConfig:
    forward_to: str
    ring_timeout: int = 30
    whisper: str | None = None      # sound played to the operator before the bridge
    sip_headers: bool = False       # X-CTrack-Channel / X-CTrack-Campaign on the INVITE


@dataclass(frozen=True)
class LogConfig:
    level: str = "info"
    format: str = "auto"
    show_numbers: bool = False


@dataclass(frozen=True)
class Config:
    source: Path
    ami: AmiConfig
    agi: AgiConfig
    store: StoreConfig
    recordings: RecordingsConfig
    defaults: DefaultsConfig
    phone_region: str = "RU"
    channels: dict[str, Channel] = field(default_factory=dict)
    numbers: dict[str, TrackingNumber] = field(default_factory=dict)
    log: LogConfig = field(default_factory=LogConfig)
    pools: tuple[PoolSpec, ...] = ()
    utm_rules: tuple[UtmRule, ...] = ()
    web: WebConfig | None = None
    promo: PromoConfig = field(default_factory=PromoConfig)
    targets: TargetRule = field(default_factory=TargetRule)  # the global target rule
    hooks: tuple[HookConfig, ...] = ()
    exports: ExportsConfig = field(default_factory=ExportsConfig)   # docs/exports.md
    spend: SpendConfig = field(default_factory=SpendConfig)         # docs/reports.md
    metrics: MetricsConfig | None = None   # the Prometheus endpoint, off unless set

    def static_plan(self) -> StaticPlan:
        return StaticPlan(channels=self.channels, numbers=self.numbers,
                          default_forward=self.defaults.forward_to,
                          default_ring_timeout=self.defaults.ring_timeout,
                          region=self.phone_region, recordings_dir=self.recordings.dir,
                          default_whisper=self.defaults.whisper,
                          default_sip_headers=self.defaults.sip_headers)

    def target_rule(self, channel: str | None) -> tuple[str, TargetRule]:
        """(rule name, rule) that judges a call of `channel`: its own, or the global one."""
        own = self.channels[channel].target if channel in self.channels else None
        return (f"channel {channel}", own) if own is not None else ("default", self.targets)

    @property
    def has_promo_lines(self) -> bool:
        return any(n.tracking == "promo" for n in self.numbers.values())


def load_config(path: str | Path) -> Config:
    """Read and validate the config file; raise ConfigError with FILE:LINE:COL."""
    source = Path(path)
    try:
        text = source.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{source}: config file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{source}: cannot read the config file: {exc}") from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else str(source)
        raise ConfigError(f"{where}: invalid YAML: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: invalid YAML: {exc}") from None
    reader = Reader(source, ConfigError)
    if root is None:
        raise ConfigError(f"{source}:1:1: (top level): expected a mapping of settings, "
                          f"found an empty file")
    return _build(reader, reader.mapping(root, "", {
        "ami", "agi", "store", "recordings", "phone_region", "defaults", "channels",
        "numbers", "log", "pools", "utm_rules", "web", "promo", "targets", "hooks",
        "exports", "metrics", "spend"},
        required={"ami", "store", "defaults"}), source)


def _build(r: Reader, top: dict[str, Node], source: Path) -> Config:
    region = r.choice_text(top.get("phone_region"), "phone_region", None, default="RU",
                           check=_is_region, expected="a two-letter region code such as RU")
    targets = target_rule(r, top.get("targets"), "targets") or TargetRule()
    channels = _channels(r, top.get("channels"), targets)
    defaults = _defaults(r, top["defaults"])
    numbers = _numbers(r, top.get("numbers"), channels, region)
    pools = pools_section(r, top.get("pools"), channels, numbers, region)
    web = web_section(r, top.get("web"), region)
    check_web_against_pools(r, top.get("web"), web, pools)
    agi = _agi(r, top.get("agi"))
    exports = exports_section(r, top.get("exports"), channels)
    spend = spend_section(r, top.get("spend"), channels)
    metrics = metrics_section(r, top.get("metrics"))
    _check_across(r, top, agi=agi, web=web, metrics=metrics, exports=exports, spend=spend)
    return Config(
        source=source, ami=_ami(r, top["ami"]), agi=agi,
        store=_store(r, top["store"], source), recordings=_recordings(r, top.get("recordings")),
        defaults=defaults, phone_region=region, channels=channels, numbers=numbers,
        log=_log(r, top.get("log")),
        pools=pools, utm_rules=utm_rules_section(r, top.get("utm_rules"), channels), web=web,
        promo=promo_section(r, top.get("promo")), targets=targets,
        hooks=hooks_section(r, top.get("hooks")),
        exports=exports, spend=spend, metrics=metrics,
    )


def _check_across(r: Reader, top: dict[str, Node], *, agi: AgiConfig, web: WebConfig | None,
                  metrics: Any, exports: Any, spend: Any) -> None:
    """Settings that are fine alone and wrong together: caught here, not at the first
    report or at the daemon's start."""
    if metrics is not None:
        for name, taken in (("agi.listen", (agi.host, agi.port)),
                            ("web.listen", (web.host, web.port) if web else None)):
            if metrics.port and taken == (metrics.host, metrics.port):  # 0: any free port
                r.fail(top["metrics"], "metrics.listen", f"an address other than {name}'s",
                       f"{metrics.host}:{metrics.port} for both")
    if spend.currency and exports.currency and spend.currency != exports.currency:
        r.fail(top["spend"], "spend.currency", f"the currency of exports ({exports.currency}):"
               " a report adds one currency", repr(spend.currency))


def _is_region(value: str) -> bool:
    return value.upper() == value and value in phonenumbers.SUPPORTED_REGIONS


def _ami(r: Reader, node: Node) -> AmiConfig:
    m = r.mapping(node, "ami", {"host", "port", "username", "secret", "events", "ping_interval",
                                "liveness_timeout", "action_timeout", "reconnect_max"},
                  required={"username", "secret"})
    return AmiConfig(
        host=r.text(m.get("host"), "ami.host", default="127.0.0.1"),
        port=r.integer(m.get("port"), "ami.port", default=5038, low=1, high=65535),
        username=r.text(m["username"], "ami.username"),
        secret=r.text(m["secret"], "ami.secret"),
        events=r.text(m.get("events"), "ami.events", default="system,call,cdr,user,dtmf"),
        ping_interval=r.number(m.get("ping_interval"), "ami.ping_interval", default=10.0,
                               low=0.5, high=3600),
        liveness_timeout=r.number(m.get("liveness_timeout"), "ami.liveness_timeout",
                                  default=30.0, low=1, high=3600),
        action_timeout=r.number(m.get("action_timeout"), "ami.action_timeout", default=5.0,
                                low=0.1, high=600),
        reconnect_max=r.number(m.get("reconnect_max"), "ami.reconnect_max", default=30.0,
                               low=0.5, high=3600),
    )


def _agi(r: Reader, node: Node | None) -> AgiConfig:
    if node is None:
        return AgiConfig()
    m = r.mapping(node, "agi", {"listen", "max_sessions", "session_timeout", "env_timeout"})
    host, port = "127.0.0.1", 4573
    if "listen" in m:
        host, port = r.address(m["listen"], "agi.listen")
    return AgiConfig(
        host=host, port=port,
        max_sessions=r.integer(m.get("max_sessions"), "agi.max_sessions", default=256,
                               low=1, high=100_000),
        session_timeout=r.number(m.get("session_timeout"), "agi.session_timeout",
                                 default=10.0, low=0.1, high=3600),
        env_timeout=r.number(m.get("env_timeout"), "agi.env_timeout", default=2.0,
                             low=0.05, high=60),
    )


def _store(r: Reader, node: Node, source: Path) -> StoreConfig:
    m = r.mapping(node, "store", {"path", "synchronous"}, required={"path"})
    raw = Path(r.text(m["path"], "store.path"))
    # Relative to the config file, not to wherever `ctrackd calls` is typed.
    path = raw if raw.is_absolute() else (source.parent / raw)
    return StoreConfig(path=Path(_normpath(path)), synchronous=r.choice_text(
        m.get("synchronous"), "store.synchronous", {"normal", "full"}, default="normal"))


def _normpath(path: Path) -> str:
    import os.path
    return os.path.normpath(os.path.abspath(path))


def _recordings(r: Reader, node: Node | None) -> RecordingsConfig:
    if node is None:
        return RecordingsConfig()
    m = r.mapping(node, "recordings", {"dir", "retention"})
    retention = retention_section(r, m.get("retention"))
    directory = r.text(m.get("dir"), "recordings.dir", default=None)
    if directory is not None and not directory.startswith("/"):
        # Asterisk's own folder: relative to nothing we know (systemd runs us in /).
        r.fail(m["dir"], "recordings.dir", "an absolute path such as /var/spool/asterisk/monitor",
               repr(directory))
    if retention.enabled and directory is None:
        r.fail(m["retention"], "recordings.retention", "recordings.dir to be set (retention"
               " prunes that folder)", "no recordings.dir")
    return RecordingsConfig(dir=directory, retention=retention)


def _defaults(r: Reader, node: Node) -> DefaultsConfig:
    m = r.mapping(node, "defaults", {"forward_to", "ring_timeout", "whisper", "sip_headers"},
                  required={"forward_to"})
    return DefaultsConfig(
        whisper=sound(r, m.get("whisper"), "defaults.whisper"),
        sip_headers=r.boolean(m.get("sip_headers"), "defaults.sip_headers", default=False),
        forward_to=r.pattern(m["forward_to"], "defaults.forward_to", DIAL, DIAL_EXPECTED),
        ring_timeout=r.integer(m.get("ring_timeout"), "defaults.ring_timeout", default=30,
                               low=1, high=600),
    )


def _channels(r: Reader, node: Node | None, targets: TargetRule) -> dict[str, Channel]:
    channels: dict[str, Channel] = {}
    if node is None:
        return channels
    for key_node, value in r.entries(node, "channels"):
        key = r.pattern(key_node, "channels", KEY,
                        "a channel key of letters, digits, '_', '.', '-'")
        path = f"channels.{key}"
        m = r.mapping(value, path, {"source", "medium", "campaign", "label", "forward_to",
                                    "whisper", "sip_headers", "target"}, required={"label"})
        forward = m.get("forward_to")
        channels[key] = Channel(
            key=key, label=r.text(m["label"], f"{path}.label"),
            source=r.text(m.get("source"), f"{path}.source", default=None),
            medium=r.text(m.get("medium"), f"{path}.medium", default=None),
            campaign=r.text(m.get("campaign"), f"{path}.campaign", default=None),
            forward_to=(r.pattern(forward, f"{path}.forward_to", DIAL, DIAL_EXPECTED)
                        if forward is not None else None),
            whisper=sound(r, m.get("whisper"), f"{path}.whisper"),
            sip_headers=(r.boolean(m["sip_headers"], f"{path}.sip_headers", default=False)
                         if "sip_headers" in m else None),
            target=target_rule(r, m.get("target"), f"{path}.target", targets)
            if "target" in m else None,
        )
    return channels


def _numbers(r: Reader, node: Node | None, channels: dict[str, Channel],
             region: str) -> dict[str, TrackingNumber]:
    numbers: dict[str, TrackingNumber] = {}
    seen: dict[str, Any] = {}
    if node is None:
        return numbers
    for key_node, value in r.entries(node, "numbers"):
        raw = r.scalar_text(key_node)
        did = normalise_number(raw, region)
        if not did or not did.startswith("+"):
            r.fail(key_node, "numbers", "a phone number (DID) such as +74950000001", repr(raw))
        path = f"numbers.{raw}"
        if did in seen:
            first = seen[did]
            r.fail(key_node, path, f"each number once (it is {did}, already at line "
                   f"{first.start_mark.line + 1})", "a duplicate")
        seen[did] = key_node
        m = r.mapping(value, path, {"channel", "forward_to", "tracking"}, required={"channel"})
        channel = r.text(m["channel"], f"{path}.channel")
        if channel not in channels:
            known = ", ".join(sorted(channels)) or "none defined"
            r.fail(m["channel"], f"{path}.channel", f"one of the channels ({known})",
                   repr(channel))
        forward = m.get("forward_to")
        numbers[did] = TrackingNumber(
            did=did, channel=channel,
            tracking=r.choice_text(m.get("tracking"), f"{path}.tracking", {"static", "promo"},
                                   default="static"),
            forward_to=(r.pattern(forward, f"{path}.forward_to", DIAL, DIAL_EXPECTED)
                        if forward is not None else None))
    return numbers


def _log(r: Reader, node: Node | None) -> LogConfig:
    if node is None:
        return LogConfig()
    m = r.mapping(node, "log", {"level", "format", "show_numbers"})
    return LogConfig(
        level=r.choice_text(m.get("level"), "log.level", {"debug", "info", "warning", "error"},
                            default="info"),
        format=r.choice_text(m.get("format"), "log.format", {"auto", "console", "json"},
                             default="auto"),
        show_numbers=r.boolean(m.get("show_numbers"), "log.show_numbers", default=False),
    )
