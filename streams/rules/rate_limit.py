"""Token buckets per client: how often one client may search customers by phone.

Pure: the caller passes the (monotonic) time of each request.
"""

from __future__ import annotations

from collections import OrderedDict

# Clients remembered at once. Past it the least recently seen is forgotten (its next
# request finds a full bucket): the memory stays bounded whatever addresses arrive.
MAX_CLIENTS = 10_000


class TokenBuckets:
    """A bucket of `burst` tokens per client, refilled at `per_second`; a request takes one."""

    __slots__ = ("_buckets", "burst", "max_clients", "per_second")

    def __init__(self, burst: int, per_second: float, max_clients: int = MAX_CLIENTS) -> None:
        if burst < 1 or per_second <= 0 or max_clients < 1:
            raise ValueError("burst and max_clients must be ≥ 1 and per_second > 0")
        self.burst = burst
        self.per_second = per_second
        self.max_clients = max_clients
        # client -> (tokens left, at); least recently seen first
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, client: str, now: float) -> float:
        """0.0 when `client` may go ahead (a token is taken), else the seconds until it may."""
        tokens, at = self._buckets.pop(client, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + max(0.0, now - at) * self.per_second)
        wait = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait = (1.0 - tokens) / self.per_second
        self._buckets[client] = (tokens, now)
        while len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)
        return wait
