"""The `metrics` config section: where the Prometheus endpoint listens (docs/metrics.md).

Off unless the section is there. Its own address, apart from the web side's:
the figures (call counts per channel, pool sizes, hook names) are for the
admin's monitoring, not for the site's visitors, so the default is loopback
and docs/metrics.md says how to reach it from elsewhere (a firewall rule for
the Prometheus host, or a reverse proxy with auth).
"""

from __future__ import annotations

from dataclasses import dataclass

from ctrackd.configschema import Node, Reader

DEFAULT_PORT = 9273


@dataclass(frozen=True)
class MetricsConfig:
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT

    @property
    def loopback(self) -> bool:
        """Whether only this machine can scrape it (the daemon warns otherwise)."""
        return self.host in ("localhost", "::1") or self.host.startswith("127.")


def metrics_section(r: Reader, node: Node | None) -> MetricsConfig | None:
    """`metrics: {listen: "127.0.0.1:9273"}`; `metrics: {}` listens on the default."""
    if node is None:
        return None
    m = r.mapping(node, "metrics", {"listen"})
    if "listen" not in m:
        return MetricsConfig()
    host, port = r.address(m["listen"], "metrics.listen")
    return MetricsConfig(host=host, port=port)
