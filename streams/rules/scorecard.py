"""The order health scorecard: the seeds' self-assessment, scored from measured figures.

The seeds' questionnaire asks a team to rate itself 1–5 on five dimensions and bands the
total: ≤ 10 needs rebuilding, 11–18 has local bottlenecks, ≥ 19 is healthy. Here every score
comes from what the pipeline measured over one day, with the thresholds below (the README
lists them). Next to it, the plant's three hard figures and their targets.

Pure: it takes one day's figures (read from ClickHouse by `sinks.scorecard`, or built in a
test) and returns the card. A dimension without data is not guessed: it scores None, and a
card with such a dimension has a partial total and no band.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError


def zone(name: str) -> ZoneInfo:
    """An IANA time zone by name, with an error that says what was asked for."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {name!r} (an IANA name, e.g. Asia/Shanghai)") from exc


def zone_name(name: str) -> str:
    """The name back when it is a known IANA time zone, else ValueError."""
    zone(name)
    return name


def day_bounds(day: date, timezone: str) -> tuple[datetime, datetime]:
    """[start, end) of a calendar day in a time zone, in UTC (23 or 25 h on DST changes)."""
    tz = zone(timezone)
    start = datetime.combine(day, time(), tzinfo=tz)
    end = datetime.combine(day + timedelta(days=1), time(), tzinfo=tz)
    return start.astimezone(UTC), end.astimezone(UTC)


class Band(StrEnum):
    """The seeds' reading of a total over five dimensions (5–25)."""

    URGENT = "urgent"  # ≤ 10: the order flow needs rebuilding
    BOTTLENECKS = "bottlenecks"  # 11–18: local bottlenecks
    HEALTHY = "healthy"  # ≥ 19: relatively healthy


def band_of(total: int) -> Band:
    """The band of a total over all five dimensions."""
    if total <= 10:
        return Band.URGENT
    if total <= 18:
        return Band.BOTTLENECKS
    return Band.HEALTHY


@dataclass(frozen=True, slots=True)
class Dimension:
    """One scored dimension: the bounds that earn 5, 4, 3 and 2; anything worse earns 1."""

    key: str
    title: str
    unit: str
    bounds: tuple[float, float, float, float]
    higher_is_better: bool = False

    def score(self, value: float | None) -> int | None:
        """1–5 for a measured value; None when nothing was measured."""
        if value is None:
            return None
        for points, bound in zip((5, 4, 3, 2), self.bounds, strict=True):
            if (value >= bound) if self.higher_is_better else (value <= bound):
                return points
        return 1

    def describe(self) -> list[str]:
        """The thresholds as a person reads them, best first (for the README and the CLI)."""
        points = zip((5, 4, 3, 2), self.bounds, strict=True)
        lines = [f"{p}: {_bound(b, self.unit, self.higher_is_better)}" for p, b in points]
        worse = "<" if self.higher_is_better else ">"
        return [*lines, f"1: {worse} {self.bounds[-1]:g} {self.unit}"]


def _bound(value: float, unit: str, higher_is_better: bool) -> str:
    """A bound as a person reads it, e.g. "≤ 15 min" or "≥ 98.5 %"."""
    return f"{'≥' if higher_is_better else '≤'} {value:g} {unit}"


FIRST_SYNC = Dimension(
    "first_sync_delay",
    "ERP create → first CRM/WMS sight, median",
    "s",
    (30, 60, 120, 180),  # the seeds score "> 3 min" as 1
)
REFRESH_LATENCY = Dimension(
    "status_refresh_latency",
    "status-refresh latency ERP → CRM, median",
    "s",
    (60, 300, 900, 3600),  # 15 min is the seeds' bar for customer anxiety
)
INCONSISTENT = Dimension(
    "inconsistent_per_100",
    "orders whose systems disagree, per 100",
    "per 100",
    (1, 3, 8, 20),  # the seeds score "> 8 in a sample of 100" as 2
)
AUTO_ROUTING = Dimension(
    "auto_routing_rate",
    "anomalies routed to a team without a person",
    "%",
    (90, 80, 65, 30),  # 65% is the seeds' bar; "> 70% sorted by hand" scores 1
    higher_is_better=True,
)
DUPLICATE_RATE = Dimension(
    "duplicate_rate",
    "duplicate orders per 100 orders placed",
    "%",
    (1, 3, 5, 10),  # the plant started at 23%
)

DIMENSIONS: tuple[Dimension, ...] = (
    FIRST_SYNC,
    REFRESH_LATENCY,
    INCONSISTENT,
    AUTO_ROUTING,
    DUPLICATE_RATE,
)


@dataclass(frozen=True, slots=True)
class Target:
    """One of the plant's hard figures and its target."""

    key: str
    title: str
    unit: str
    target: float
    higher_is_better: bool = False

    def met(self, value: float | None) -> bool | None:
        """Whether a measured value meets the target; None when nothing was measured."""
        if value is None:
            return None
        return value >= self.target if self.higher_is_better else value <= self.target


PROCESSING_TIME = Target(
    "order_processing_time", "order processing time, placed → confirmed, mean", "min", 15
)
FIRST_PASS = Target(
    "first_pass_accuracy",
    "orders needing no correction (no anomaly raised on them)",
    "%",
    98.5,
    higher_is_better=True,
)
RUSH_RESPONSE = Target("rush_response_delay", "rush order placed → stock allocated, mean", "h", 2)

TARGETS: tuple[Target, ...] = (PROCESSING_TIME, FIRST_PASS, RUSH_RESPONSE)


@dataclass(frozen=True, slots=True)
class OrderTimes:
    """What the scorecard needs of one order placed that day (times are event times)."""

    order_id: str
    placed_at: datetime
    rush: bool = False
    first_sync_at: datetime | None = None  # first CRM or WMS event
    confirmed_at: datetime | None = None  # first ERP event at `confirmed` or later
    allocated_at: datetime | None = None  # first ERP or WMS event at `allocated` or later
    corrected: bool = False  # an anomaly was raised on it (a duplicate included)
    inconsistent: bool = False  # its systems disagree in its latest joined state


def _seconds(start: datetime, end: datetime | None) -> float | None:
    # A system whose clock runs behind can report before the ERP did: that is 0, not negative.
    return None if end is None else max(0.0, (end - start).total_seconds())


@dataclass(frozen=True, slots=True)
class DayFigures:
    """One day's measured figures, the scorecard's input."""

    day: date
    timezone: str
    orders_placed: int
    first_sync_median_seconds: float | None
    first_sync_seen: int  # orders placed that day that the CRM or the WMS reported
    crm_latency_median_seconds: float | None
    crm_latency_observations: int
    inconsistent_orders: int  # orders placed that day whose systems disagree in their state
    anomalies_opened: int
    anomalies_routed: int
    duplicate_orders: int  # orders placed that day found to duplicate another
    processing_mean_seconds: float | None
    processing_confirmed: int
    first_pass_orders: int
    rush_orders: int
    rush_response_mean_seconds: float | None
    rush_allocated: int

    @classmethod
    def from_orders(
        cls,
        day: date,
        timezone: str,
        orders: Sequence[OrderTimes],
        *,
        crm_latencies: Iterable[float],
        anomalies_opened: int,
        anomalies_routed: int,
        duplicate_orders: int,
    ) -> DayFigures:
        """Aggregate per-order times and the day's other measurements."""
        sync = [s for o in orders if (s := _seconds(o.placed_at, o.first_sync_at)) is not None]
        confirm = [s for o in orders if (s := _seconds(o.placed_at, o.confirmed_at)) is not None]
        rush = [o for o in orders if o.rush]
        allocate = [s for o in rush if (s := _seconds(o.placed_at, o.allocated_at)) is not None]
        latencies = list(crm_latencies)
        return cls(
            day=day,
            timezone=timezone,
            orders_placed=len(orders),
            first_sync_median_seconds=statistics.median(sync) if sync else None,
            first_sync_seen=len(sync),
            crm_latency_median_seconds=statistics.median(latencies) if latencies else None,
            crm_latency_observations=len(latencies),
            inconsistent_orders=sum(1 for o in orders if o.inconsistent),
            anomalies_opened=anomalies_opened,
            anomalies_routed=anomalies_routed,
            duplicate_orders=duplicate_orders,
            processing_mean_seconds=statistics.fmean(confirm) if confirm else None,
            processing_confirmed=len(confirm),
            first_pass_orders=sum(1 for o in orders if not o.corrected),
            rush_orders=len(rush),
            rush_response_mean_seconds=statistics.fmean(allocate) if allocate else None,
            rush_allocated=len(allocate),
        )

    def values(self) -> dict[str, float | None]:
        """Each dimension's and target's value, in its unit."""
        placed = self.orders_placed
        return {
            FIRST_SYNC.key: self.first_sync_median_seconds,
            REFRESH_LATENCY.key: self.crm_latency_median_seconds,
            INCONSISTENT.key: None if not placed else 100 * self.inconsistent_orders / placed,
            AUTO_ROUTING.key: None
            if not self.anomalies_opened
            else 100 * self.anomalies_routed / self.anomalies_opened,
            DUPLICATE_RATE.key: None if not placed else 100 * self.duplicate_orders / placed,
            PROCESSING_TIME.key: None
            if self.processing_mean_seconds is None
            else self.processing_mean_seconds / 60,
            FIRST_PASS.key: None if not placed else 100 * self.first_pass_orders / placed,
            RUSH_RESPONSE.key: None
            if self.rush_response_mean_seconds is None
            else self.rush_response_mean_seconds / 3600,
        }

    def basis(self) -> dict[str, str]:
        """What each value was measured on, in words."""
        return {
            FIRST_SYNC.key: f"{self.first_sync_seen} of {self.orders_placed} orders seen",
            REFRESH_LATENCY.key: f"{self.crm_latency_observations} observations",
            INCONSISTENT.key: f"{self.inconsistent_orders} of {self.orders_placed} orders",
            AUTO_ROUTING.key: f"{self.anomalies_routed} of {self.anomalies_opened} anomalies",
            DUPLICATE_RATE.key: f"{self.duplicate_orders} of {self.orders_placed} orders",
            PROCESSING_TIME.key: f"{self.processing_confirmed} orders confirmed",
            FIRST_PASS.key: f"{self.first_pass_orders} of {self.orders_placed} orders",
            RUSH_RESPONSE.key: f"{self.rush_allocated} of {self.rush_orders} rush orders",
        }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def scorecard(figures: DayFigures) -> dict[str, Any]:
    """The card for one day: scores, total, band, the hard figures (a JSON-ready dict)."""
    values = figures.values()
    basis = figures.basis()
    dimensions = []
    scores: list[int | None] = []
    for dim in DIMENSIONS:
        value = values[dim.key]
        scores.append(dim.score(value))
        dimensions.append(
            {
                "key": dim.key,
                "title": dim.title,
                "unit": dim.unit,
                "value": _rounded(value),
                "score": scores[-1],
                "basis": basis[dim.key],
                "thresholds": dim.describe(),
            }
        )
    known = [s for s in scores if s is not None]
    complete = len(known) == len(DIMENSIONS)
    total = sum(known)
    targets = []
    for target in TARGETS:
        value = values[target.key]
        targets.append(
            {
                "key": target.key,
                "title": target.title,
                "unit": target.unit,
                "value": _rounded(value),
                "target": _bound(target.target, target.unit, target.higher_is_better),
                "met": target.met(value),
                "basis": basis[target.key],
            }
        )
    return {
        "day": figures.day.isoformat(),
        "timezone": figures.timezone,
        "orders_placed": figures.orders_placed,
        "dimensions": dimensions,
        "total": total,
        "out_of": 5 * len(known),
        "band": band_of(total).value if complete else None,
        "unscored": [d.key for d, s in zip(DIMENSIONS, scores, strict=True) if s is None],
        "targets": targets,
    }
