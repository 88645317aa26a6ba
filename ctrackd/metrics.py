"""Prometheus metrics: the table of what ctrackd exposes, and the endpoint that serves it.

A shared leaf (tests/test_layers.py SHARED): it imports no adapter. The
composition root makes one `Metrics` per `Daemon` (its own
`CollectorRegistry`, so tests can run several daemons in one process) and
hands it to what counts; docs/metrics.md lists every metric with PromQL.

Two ways a figure gets here, chosen by what it costs on the hot paths:
- **counted** where it happens (`Counter`/`Histogram` from the official
  client): a call that ends, an AGI session's latency (one `observe` per
  session, a few microseconds against milliseconds), a hook attempt.
- **pulled** at scrape time from plain attributes their owners keep anyway
  (`watch_*`): the AMI link's state and its event counts, AGI session
  counts, pools. An AMI event arrives thousands of times a second and a
  client-library `inc()` costs about a microsecond under its lock; reading
  an int every 15 s costs nothing. The outbox depth is a COUNT over the
  partial index of pending rows, run per scrape on the hook dispatcher's
  own thread (never on the event loop), bounded by `REFRESH_TIMEOUT`.

Label values are bounded: channel keys and hook names come from the config
(a call with no known channel counts as `none`), pool names likewise, route
names from the AGI route table (`unknown` for any other script), statuses
and outcomes from fixed lists.

The endpoint is an aiohttp app on its own address (`metrics.listen`), apart
from the visitors' web side, in the daemon's event loop: scrapes read the
daemon's state on the thread that changes it (no locks, no extra thread),
and it starts and stops with the daemon like every other listener.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Container, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import structlog
from aiohttp import web
from prometheus_client import (
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder

log = structlog.get_logger("ctrackd.metrics")

#: seconds a scrape waits for the outbox count before it serves the last one
REFRESH_TIMEOUT = 2.0
#: calls whose channel is remembered between their AGI session and their end (oldest go first)
CHANNELS_KEPT = 65_536
#: a call whose channel is unknown (untracked, fallback, open across a restart, evicted)
NO_CHANNEL = "none"
#: AGI latency buckets, seconds: a plain track session is a few ms (one commit), a promo
#: dialogue holds the caller for tens of seconds (prompt + keying)
AGI_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
               20.0, 40.0, 80.0)


@dataclass(frozen=True)
class Spec:
    """One metric: its name (counters get `_total` on the wire), kind, help and labels.

    `pulled`: read from its owner at scrape time; else counted as it happens.
    """

    name: str
    kind: str   # counter | gauge | histogram
    help: str
    labels: tuple[str, ...] = ()
    pulled: bool = False


#: Everything ctrackd exposes (besides the client's process_* and python_* basics).
TABLE: tuple[Spec, ...] = (
    Spec("ctrackd_calls", "counter",
         "Calls ended, by final status and channel key (none: no known channel)",
         ("status", "channel")),
    Spec("ctrackd_agi_session_seconds", "histogram",
         "FastAGI sessions that reached a route, from accept to the route's end; session="
         "dialog when the route held the caller (a promo line's code), else plain",
         ("route", "session")),
    Spec("ctrackd_agi_sessions", "counter",
         "FastAGI sessions by outcome: served, failed (sent to the dialplan's fallback),"
         " rejected (over max_sessions or stopping)", ("outcome",), pulled=True),
    Spec("ctrackd_agi_sessions_active", "gauge", "FastAGI sessions in progress", pulled=True),
    Spec("ctrackd_ami_connected", "gauge", "1 while logged in to AMI, else 0", pulled=True),
    Spec("ctrackd_ami_reconnects", "counter", "AMI links that came back after the first",
         pulled=True),
    Spec("ctrackd_ami_events", "counter",
         "AMI events received: parsed and queued for the tracker, or dropped unparsed by the"
         " prefilter (noise)", ("result",), pulled=True),
    Spec("ctrackd_pool_utilisation", "gauge",
         "Share of a pool's numbers held by visitor sessions (held / size)", ("pool",),
         pulled=True),
    Spec("ctrackd_pool_numbers_held", "gauge", "Numbers of the pool held now", ("pool",),
         pulled=True),
    Spec("ctrackd_pool_size", "gauge", "Numbers in the pool", ("pool",), pulled=True),
    Spec("ctrackd_pool_overflows", "counter",
         "Visitors given a number when none was free (since the pools were built)", ("pool",),
         pulled=True),
    Spec("ctrackd_hook_outbox_pending", "gauge",
         "Hook deliveries waiting in the outbox (not delivered, not given up)", ("hook",),
         pulled=True),
    Spec("ctrackd_hook_attempts", "counter",
         "Hook delivery attempts by outcome: delivered, failed (retried later), gave_up",
         ("hook", "outcome")),
)
SPECS = {spec.name: spec for spec in TABLE}


class AgiSource(Protocol):
    """What the AGI server keeps anyway (ctrackd/agi/server.py)."""

    @property
    def active(self) -> int: ...
    counters: Any   # .served .failed .rejected


class AmiSource(Protocol):
    """What the AMI connection keeps anyway (ctrackd/ami/connection.py)."""

    @property
    def connected(self) -> bool: ...
    reconnects: int
    events_received: int

    @property
    def events_dropped(self) -> int: ...


class PoolSource(Protocol):
    spec: Any       # .numbers
    overflows: int

    @property
    def held(self) -> int: ...


OutboxCounts = Callable[[], Awaitable[Mapping[str, int]]]


class Metrics:
    """The metric objects of one daemon, in their own registry."""

    def __init__(self, *, channels: Callable[[], Container[str]] = tuple,
                 hooks: Callable[[], Iterable[str]] = tuple) -> None:
        """`channels()` / `hooks()`: the configured keys, read when a value is counted, so
        a reload's new ones count and label values stay a bounded set."""
        self.registry = CollectorRegistry()
        self._channels = channels
        self._hooks = hooks
        self.calls = Counter("ctrackd_calls", SPECS["ctrackd_calls"].help,
                             SPECS["ctrackd_calls"].labels, registry=self.registry)
        agi = SPECS["ctrackd_agi_session_seconds"]
        self.agi_seconds = Histogram(agi.name, agi.help, agi.labels, buckets=AGI_BUCKETS,
                                     registry=self.registry)
        attempts = SPECS["ctrackd_hook_attempts"]
        self.hook_attempts = Counter(attempts.name, attempts.help, attempts.labels,
                                     registry=self.registry)
        self._agi: AgiSource | None = None
        self._ami: AmiSource | None = None
        self._pools: Callable[[], Mapping[str, PoolSource]] | None = None
        self._outbox: OutboxCounts | None = None
        self._outbox_last: dict[str, int] = {}
        self._call_channels: dict[str, str] = {}   # insertion order: oldest first
        self._agi_children: dict[tuple[str, bool], Any] = {}
        self.registry.register(_Pulled(self))
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)

    # -- counted as it happens -------------------------------------------------

    def agi_session(self, route: str, dialog: bool, seconds: float) -> None:
        """One AGI session's latency (route: a name of the route table, or `unknown`)."""
        child = self._agi_children.get((route, dialog))
        if child is None:
            child = self._agi_children[(route, dialog)] = self.agi_seconds.labels(
                route, "dialog" if dialog else "plain")
        child.observe(seconds)

    def call_attributed(self, call_id: str, channel: str | None) -> None:
        """Remember a call's channel until it ends (the AMI side does not know it)."""
        if channel is None:
            return
        kept = self._call_channels
        kept[call_id] = channel
        if len(kept) > CHANNELS_KEPT:  # calls that never ended here: forget the oldest
            del kept[next(iter(kept))]

    def call_ended(self, call_id: str, status: str) -> None:
        channel = self._call_channels.pop(call_id, None)
        if channel is None or channel not in self._channels():
            channel = NO_CHANNEL
        self.calls.labels(status, channel).inc()

    def hook_attempt(self, hook: str, outcome: str) -> None:
        """outcome: delivered, failed, gave_up."""
        self.hook_attempts.labels(hook, outcome).inc()

    # -- read at scrape time ----------------------------------------------------

    def watch_agi(self, agi: AgiSource) -> None:
        self._agi = agi

    def watch_ami(self, ami: AmiSource) -> None:
        self._ami = ami

    def watch_pools(self, pools: Callable[[], Mapping[str, PoolSource]]) -> None:
        """`pools()`: name -> live pool state (the current plan's; empty without pools)."""
        self._pools = pools

    def watch_outbox(self, counts: OutboxCounts) -> None:
        """`counts()`: pending deliveries per hook, awaited per scrape (off the loop's thread)."""
        self._outbox = counts

    async def refresh(self) -> None:
        """What must be fetched before a scrape renders: the outbox depth.

        A store that does not answer within REFRESH_TIMEOUT (locked, a disk
        in trouble) leaves the last figures: a scrape never hangs on it.
        """
        if self._outbox is None:
            return
        try:
            async with asyncio.timeout(REFRESH_TIMEOUT):
                counts = await self._outbox()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the figure goes stale; the scrape still answers
            log.warning("metrics_outbox_unreadable", error=repr(exc))
            return
        self._outbox_last = dict(counts)

    def samples(self) -> Iterator[Metric]:
        """The pulled metrics, as families (what `_Pulled.collect` yields)."""
        agi, ami = self._agi, self._ami
        if agi is not None:
            family = _family("ctrackd_agi_sessions")
            for outcome in ("served", "failed", "rejected"):
                family.add_metric([outcome], getattr(agi.counters, outcome))
            yield family
            yield _family("ctrackd_agi_sessions_active", value=agi.active)
        if ami is not None:
            yield _family("ctrackd_ami_connected", value=1 if ami.connected else 0)
            yield _family("ctrackd_ami_reconnects", value=ami.reconnects)
            family = _family("ctrackd_ami_events")
            family.add_metric(["parsed"], ami.events_received)
            family.add_metric(["dropped"], ami.events_dropped)
            yield family
        if self._pools is not None:
            pools = self._pools()
            families = [_family(name) for name in (
                "ctrackd_pool_utilisation", "ctrackd_pool_numbers_held", "ctrackd_pool_size",
                "ctrackd_pool_overflows")]
            for name, pool in sorted(pools.items()):
                size = len(pool.spec.numbers)
                for family, value in zip(families, (
                        pool.held / size if size else 0.0, pool.held, size, pool.overflows)):
                    family.add_metric([name], value)
            yield from families
        if self._outbox is not None:
            family = _family("ctrackd_hook_outbox_pending")
            counts = dict.fromkeys(self._hooks(), 0) | self._outbox_last
            for hook, count in sorted(counts.items()):
                family.add_metric([hook], count)
            yield family

    def render(self, accept: str = "") -> tuple[bytes, str]:
        """The exposition (text format, or OpenMetrics when asked) and its content type."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type


def _family(name: str, value: float | None = None) -> Any:
    spec = SPECS[name]
    cls = CounterMetricFamily if spec.kind == "counter" else GaugeMetricFamily
    if value is not None:
        return cls(name, spec.help, value=value)
    return cls(name, spec.help, labels=spec.labels)


class _Pulled:
    """A custom collector: the pulled part of TABLE, read when Prometheus scrapes."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        return self._metrics.samples()


class MetricsServer:
    """GET /metrics on its own address; `start()` returns once bound (host, port)."""

    def __init__(self, metrics: Metrics, *, host: str, port: int) -> None:
        self._metrics = metrics
        self._host, self._port = host, port
        self._runner: web.AppRunner | None = None

    async def start(self) -> tuple[str, int]:
        app = web.Application()
        app.router.add_get("/metrics", self._scrape)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()
        server = site._server  # aiohttp keeps the bound socket there; port 0 needs it
        assert server is not None and server.sockets
        host, port = server.sockets[0].getsockname()[:2]
        log.info("metrics_server_started", host=host, port=port)
        return host, port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _scrape(self, request: web.Request) -> web.Response:
        await self._metrics.refresh()
        body, content_type = self._metrics.render(request.headers.get("Accept", ""))
        return web.Response(body=body, headers={"Content-Type": content_type})
