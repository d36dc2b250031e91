"""Raw input logs for the oracle and the schedule tests: change events (contract §2) as the
four upstream systems would publish them, with faults planted and labelled.

New work, apart from `concord/scenario.py`: a small life model of an order (ERP, then the
CRM, the WMS and the carrier each following it with its own lag distribution) and knobs for
every fault issue 16 names. Everything is drawn from one `random.Random(seed)`, so a seed
and the knobs give the same log byte for byte.

- `generate(seed, orders=None)` draws the knobs from the seed too (`Knobs.draw`);
  `generate_with(knobs, seed)` takes them as given.
- `FeedLog.events` are dicts ready to JSON-encode, in publication order (the topic is each
  event's `source`); `FeedLog.ground_truth` says what was planted (for demo-style scoring).
- `feed_logs()` is a hypothesis strategy over seeds and knobs, for property tests.

Publication order is event time, except where planted: the events of a shuffled order are
published up to `lateness` after their time (so never further behind the newest event
published before them than the allowed lateness), a re-send comes again a little later, and
a quiet source publishes nothing in its last day.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from hypothesis import strategies as st

from tests.logs.by_hand import DETAILS, T0, TRACKING, HandLog, at
from tests.logs.knobs import CHANNELS, GroundTruth, Knobs, Lag, parse_us, us, valid_time
from tests.logs.lives import Builder

__all__ = [
    "CHANNELS",
    "DETAILS",
    "T0",
    "TRACKING",
    "FeedLog",
    "GroundTruth",
    "HandLog",
    "Knobs",
    "Lag",
    "at",
    "feed_logs",
    "generate",
    "generate_with",
    "us",
]


@dataclass
class FeedLog:
    """One input log: events in publication order and what was planted."""

    seed: int
    knobs: Knobs
    events: list[dict[str, Any]]
    ground_truth: GroundTruth

    @property
    def end_us(self) -> int:
        """The newest valid event time in the log (µs since the epoch)."""
        return max(parse_us(e["occurred_at"]) for e in self.events if valid_time(e))


def generate_with(knobs: Knobs, seed: int) -> FeedLog:
    """The log that `knobs` and `seed` make."""
    builder = Builder(knobs, seed)
    events = builder.build()
    return FeedLog(seed=seed, knobs=knobs, events=events, ground_truth=builder.truth)


def generate(seed: int, orders: int | None = None) -> FeedLog:
    """A log with knobs drawn from `seed` too (`orders` fixes their number)."""
    rng = random.Random(seed)
    knobs = Knobs.draw(rng, orders)
    return generate_with(knobs, rng.randrange(2**32))


def feed_logs(
    min_orders: int = 10, max_orders: int = 60, **fixed: Any
) -> st.SearchStrategy[FeedLog]:
    """Hypothesis: a seed and knobs (fault rates shrink towards none); `fixed` pins knobs."""
    rate = st.floats(0, 0.2)
    drawn: dict[str, st.SearchStrategy[Any]] = {
        "orders": st.integers(min_orders, max_orders),
        "hours": st.floats(1, 16),
        "channels": st.sampled_from([CHANNELS, ("website", "jd_pop"), ("excel", "pos", "wechat")]),
        "crm_lag": st.builds(Lag, st.just("lognormal"), st.floats(2, 600), st.floats(0.1, 2)),
        "wms_lag": st.builds(Lag, st.just("exponential"), st.floats(10, 3600)),
        "carrier_lag": st.builds(
            Lag, st.just("uniform"), st.floats(60, 3600), st.floats(3600, 36000)
        ),
        "missing": rate,
        "stuck": rate,
        "contradictions": rate,
        "stalls": rate,
        "orphans": rate,
        "late_links": rate,
        "duplicates": rate,
        "reservation_failures": rate,
        "cancellations": rate,
        "tail": st.sampled_from([timedelta(hours=h) for h in (4, 30, 100)]),
        "resends": st.sampled_from([0.0, 0.01, 0.05]),
        "shuffled": st.sampled_from([0.0, 0.2, 1.0]),
        "quiet_source": st.sampled_from([None, "crm", "wms", "logistics"]),
        "bad_inputs": st.floats(0, 0.05),
    }
    drawn.update({name: st.just(value) for name, value in fixed.items()})
    return st.builds(generate_with, st.builds(Knobs, **drawn), st.integers(0, 2**32 - 1))
