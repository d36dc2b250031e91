"""What a generated log is made of (its knobs) and what it plants (its ground truth)."""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

CST = timezone(timedelta(hours=8))
START = datetime(2026, 3, 2, 8, 0, tzinfo=CST)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
SECOND = 1_000_000  # µs per second
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE

CHANNELS = ("website", "wechat", "douyin", "pos", "excel", "distributor_api", "jd_pop")
SOURCES = ("erp", "crm", "wms", "logistics")
CARRIERS = ("SF", "ZTO", "JD")


@dataclass(frozen=True)
class Lag:
    """A delay distribution, in seconds: lognormal(median, spread), exponential(mean) or
    uniform(low, high)."""

    kind: str
    a: float
    b: float = 0.0

    def draw(self, rng: random.Random) -> float:
        """One delay, seconds (never negative)."""
        if self.kind == "lognormal":
            return rng.lognormvariate(math.log(self.a), self.b)
        if self.kind == "exponential":
            return rng.expovariate(1 / self.a)
        return rng.uniform(self.a, self.b)


@dataclass(frozen=True)
class Knobs:
    """What a log is made of. Fractions are of orders unless said otherwise."""

    orders: int = 200
    hours: float = 14.0  # orders are placed over this span from START
    channels: tuple[str, ...] = CHANNELS
    crm_lag: Lag = Lag("lognormal", 40, 1.0)
    wms_lag: Lag = Lag("exponential", 300)
    carrier_lag: Lag = Lag("uniform", 1800, 4 * 3600)  # pickup after the ERP ships
    missing: float = 0.03  # one system never reports the order
    stuck: float = 0.03  # one system stops at an older phase
    contradictions: float = 0.01  # the ERP cancels an order the WMS shipped
    stalls: float = 0.02  # the carrier goes quiet after its pickup; the ERP stays shipped
    orphans: float = 0.02  # CRM/WMS orders with no ERP counterpart
    late_links: float = 0.03  # the CRM sees the order before it knows the ERP id
    duplicates: float = 0.03  # a second order, same customer and parts, within 15 min
    reservation_failures: float = 0.05  # ERP or WMS fails a reservation, then retries
    cancellations: float = 0.03
    tail: timedelta = timedelta(hours=50)  # the feed is cut this long after the last placement
    resends: float = 0.01  # of events: published again, same source and event_id
    shuffled: float = 0.1  # orders whose events are published out of order (within lateness)
    lateness: timedelta = timedelta(minutes=2)
    quiet_source: str | None = None  # publishes nothing in the log's last day
    quiet_for: timedelta = timedelta(days=1)
    bad_inputs: float = 0.005  # of orders: an extra event the contract rejects
    peak: float = 0.0  # share of orders placed in one busy hour (trips the breaker at scale)

    @classmethod
    def draw(cls, rng: random.Random, orders: int | None = None) -> Knobs:
        """Knobs varied by `rng`: lags, fault rates, channels, a quiet source now and then."""
        channels = tuple(c for c in CHANNELS if rng.random() < 0.7) or ("website",)
        return cls(
            orders=orders if orders is not None else rng.randint(10, 400),
            hours=rng.uniform(2, 16),
            channels=channels,
            crm_lag=rng.choice(
                [
                    Lag("lognormal", rng.uniform(5, 120), rng.uniform(0.3, 1.5)),
                    Lag("uniform", 1, 600),
                ]
            ),
            wms_lag=rng.choice(
                [Lag("exponential", rng.uniform(30, 1800)), Lag("lognormal", 600, 1.2)]
            ),
            carrier_lag=Lag("uniform", rng.uniform(600, 3600), rng.uniform(2, 10) * 3600),
            missing=rng.uniform(0, 0.08),
            stuck=rng.uniform(0, 0.08),
            contradictions=rng.uniform(0, 0.03),
            stalls=rng.uniform(0, 0.05),
            orphans=rng.uniform(0, 0.05),
            late_links=rng.uniform(0, 0.08),
            duplicates=rng.uniform(0, 0.06),
            reservation_failures=rng.uniform(0, 0.12),
            cancellations=rng.uniform(0, 0.06),
            tail=timedelta(hours=rng.uniform(6, 80)),
            resends=rng.choice([0.0, 0.01, 0.03]),
            shuffled=rng.choice([0.0, 0.1, 0.5]),
            quiet_source=rng.choice([None, None, None, "wms", "crm", "logistics"]),
            bad_inputs=rng.uniform(0, 0.02),
        )


@dataclass
class GroundTruth:
    """What was planted. Order ids unless said otherwise."""

    missing: set[tuple[str, str]] = field(default_factory=set)  # (order, system)
    stuck: set[tuple[str, str]] = field(default_factory=set)  # (order, system)
    contradictions: set[str] = field(default_factory=set)
    stalls: set[str] = field(default_factory=set)
    orphans: set[str] = field(default_factory=set)  # the id each is named by
    late_links: dict[str, int] = field(default_factory=dict)  # CRM ref -> link time µs
    duplicates: set[tuple[str, str]] = field(default_factory=set)  # sorted pairs
    near_duplicates: set[tuple[str, str]] = field(default_factory=set)  # just outside 15 min
    reservation_failures: set[str] = field(default_factory=set)
    cancelled: set[str] = field(default_factory=set)
    shuffled: set[str] = field(default_factory=set)
    resends: int = 0
    quiet_source: tuple[str, int] | None = None  # (source, µs from which it published nothing)
    dead_letters: Counter[str] = field(default_factory=Counter)  # reason -> count


def us(moment: datetime) -> int:
    """µs since the epoch of an aware datetime."""
    return (moment - _EPOCH) // timedelta(microseconds=1)


def iso(t_us: int) -> str:
    """RFC 3339 text of µs since the epoch, at +08:00, to the millisecond."""
    return (
        (_EPOCH + timedelta(microseconds=t_us)).astimezone(CST).isoformat(timespec="milliseconds")
    )


def parse_us(text: str) -> int:
    """µs since the epoch of RFC 3339 text."""
    return us(datetime.fromisoformat(text))


def valid_time(event: dict[str, Any]) -> bool:
    """Whether an event has an `occurred_at` with an offset."""
    value = event.get("occurred_at")
    if not isinstance(value, str):
        return False
    try:
        return datetime.fromisoformat(value).tzinfo is not None
    except ValueError:
        return False
