"""Token buckets per client: a burst, then one request per refill; clients apart; memory bounded."""

from __future__ import annotations

import pytest

from streams.rules.rate_limit import TokenBuckets


def test_a_burst_then_the_wait_until_the_next_token() -> None:
    buckets = TokenBuckets(burst=3, per_second=0.5)
    assert [buckets.take("10.0.0.1", now=100.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("10.0.0.1", now=100.0) == 2.0  # one token every 2 s
    assert buckets.take("10.0.0.1", now=101.0) == 1.0  # half a token back, refused again
    assert buckets.take("10.0.0.1", now=102.0) == 0.0  # a whole one: through
    assert buckets.take("10.0.0.1", now=102.0) == 2.0


def test_a_quiet_client_refills_to_the_burst_and_no_further() -> None:
    buckets = TokenBuckets(burst=2, per_second=1.0)
    buckets.take("a", now=0.0)
    buckets.take("a", now=0.0)
    assert [buckets.take("a", now=1000.0) for _ in range(3)] == [0.0, 0.0, 1.0]


def test_clients_have_buckets_of_their_own() -> None:
    buckets = TokenBuckets(burst=1, per_second=0.1)
    assert buckets.take("a", now=0.0) == 0.0
    assert buckets.take("a", now=0.0) == 10.0
    assert buckets.take("b", now=0.0) == 0.0


def test_past_max_clients_the_least_recently_seen_is_forgotten() -> None:
    buckets = TokenBuckets(burst=1, per_second=0.001, max_clients=2)
    assert buckets.take("a", now=0.0) == 0.0
    assert buckets.take("b", now=0.0) == 0.0
    assert buckets.take("a", now=0.0) == 1000.0  # a is now the most recently seen
    assert buckets.take("c", now=0.0) == 0.0  # b forgotten, not a
    assert buckets.take("a", now=0.0) == 1000.0
    assert buckets.take("b", now=0.0) == 0.0  # a fresh bucket


@pytest.mark.parametrize(
    ("burst", "per_second", "max_clients"), [(0, 1.0, 1), (1, 0.0, 1), (1, 1.0, 0)]
)
def test_nonsense_limits_are_refused(burst: int, per_second: float, max_clients: int) -> None:
    with pytest.raises(ValueError, match="burst"):
        TokenBuckets(burst, per_second, max_clients)
