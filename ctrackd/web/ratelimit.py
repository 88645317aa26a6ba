"""Per-client token buckets: a flood from one address cannot starve the site's visitors.

Each client address gets `burst` tokens, refilled at `per_minute / 60` a
second; a request costs one. The table of buckets is bounded (least recently
seen evicted first), so a spray of spoofed addresses costs memory once, not
forever. Time comes in as an argument: the tests drive it.
"""

from __future__ import annotations

from collections import OrderedDict


class RateLimiter:
    def __init__(self, *, per_minute: int, burst: int, max_clients: int = 100_000) -> None:
        self._rate = per_minute / 60.0
        self._burst = float(burst)
        self._max_clients = max_clients
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # tokens, when
        self.refused = 0

    def allow(self, client: str, now: float) -> float:
        """0.0 when the request may go on, else the seconds until a token is back."""
        tokens, last = self._buckets.pop(client, (self._burst, now))
        tokens = min(self._burst, tokens + max(0.0, now - last) * self._rate)
        if tokens >= 1.0:
            self._remember(client, tokens - 1.0, now)
            return 0.0
        self._remember(client, tokens, now)
        self.refused += 1
        return (1.0 - tokens) / self._rate

    def _remember(self, client: str, tokens: float, now: float) -> None:
        self._buckets[client] = (tokens, now)
        if len(self._buckets) > self._max_clients:
            self._buckets.popitem(last=False)
