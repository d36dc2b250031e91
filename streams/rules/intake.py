"""The intake breaker's figures (contract §7): what one order counts for, and the exact,
mergeable per-minute counts of event time they add up to.

What is counted, and why an order's count is a function of its state rather than of the
event that changed it, is the "What is counted" part of streams.rules.breaker.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, NamedTuple

from schemas.stages import Phase, Source
from streams.rules.order_state import OrderState
from streams.rules.watermark import as_us, span_us

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MINUTE = timedelta(minutes=1)
_MINUTE_US = span_us(MINUTE)
DEFAULT_WINDOW = timedelta(minutes=60)
# The systems that reserve stock (§7). The CRM and the carrier only mirror the order's status:
# the CRM has no label for a failed reservation and the carrier none for a reservation, so
# counting them could only skew the rate.
STOCK_SYSTEMS: tuple[Source, ...] = (Source.ERP, Source.WMS)
_MIRRORS: frozenset[Source] = frozenset(Source) - frozenset(STOCK_SYSTEMS)


class IntakeKind(StrEnum):
    """What one count is."""

    CREATED = "created"  # an ERP order was created
    ALLOCATED = "allocated"  # an order's stock reservation succeeded
    ALLOCATION_FAILED = "allocation_failed"  # an order's stock reservation failed


_SLOT: dict[IntakeKind, int] = {
    IntakeKind.CREATED: 0,
    IntakeKind.ALLOCATED: 1,
    IntakeKind.ALLOCATION_FAILED: 2,
}


def reserving_systems_named(value: str | Iterable[str | Source]) -> tuple[Source, ...]:
    """The reserving systems a setting names ("erp,wms" or a list), in a canonical order."""
    names = value.split(",") if isinstance(value, str) else [str(v) for v in value]
    wanted: set[Source] = set()
    for raw in names:
        name = raw.strip().lower()
        if not name:
            continue
        if name in _MIRRORS:
            raise ValueError(
                f"{name} only mirrors the order's status and reserves no stock (§7); "
                f"give {' and/or '.join(STOCK_SYSTEMS)}"
            )
        if name not in STOCK_SYSTEMS:
            raise ValueError(f"unknown system {name!r}; give {' and/or '.join(STOCK_SYSTEMS)}")
        wanted.add(Source(name))
    if not wanted:
        raise ValueError(f"give at least one of {', '.join(STOCK_SYSTEMS)}")
    return tuple(source for source in STOCK_SYSTEMS if source in wanted)


class OrderIntake(NamedTuple):
    """What one order counts for: the minute it was created, and the minute and outcome of its
    stock reservation (epoch minutes of event time; None while there is none)."""

    created: int | None = None
    reserved: int | None = None
    failed: bool = False


NO_INTAKE = OrderIntake()


def order_intake(state: OrderState, reserving: Iterable[Source] = STOCK_SYSTEMS) -> OrderIntake:
    """What the order counts for now; a function of its events, whatever their arrival order."""
    created = None
    erp = state.systems.get(Source.ERP)
    if erp is not None and erp.firsts:
        created = min(at for at, _ in erp.firsts.values()) // _MINUTE_US
    failed_us = allocated_us = None
    for source in reserving:
        view = state.systems.get(source)
        if view is None:
            continue
        if view.failed_us is not None and (failed_us is None or view.failed_us < failed_us):
            failed_us = view.failed_us
        # `picking` is on the fulfilling phase too: a system picking the goods has them.
        first = view.firsts.get(Phase.FULFILLING)
        if first is not None and (allocated_us is None or first[0] < allocated_us):
            allocated_us = first[0]
    if failed_us is not None:
        return OrderIntake(created, failed_us // _MINUTE_US, True)
    if allocated_us is not None:
        return OrderIntake(created, allocated_us // _MINUTE_US, False)
    return OrderIntake(created)


class IntakeTotals(NamedTuple):
    """Intake figures over one window: orders created, and the orders whose stock reservation
    was attempted there by outcome."""

    created: int
    allocated: int
    failed: int

    @property
    def attempts(self) -> int:
        """Orders whose stock reservation was attempted: succeeded plus failed."""
        return self.allocated + self.failed

    @property
    def failure_rate(self) -> float:
        """Failed share of the attempted reservations; 0.0 when there were none."""
        return self.failed / self.attempts if self.attempts else 0.0


@dataclass(slots=True)
class IntakeCounts:
    """Exact, mergeable intake counts in per-minute buckets of event time.

    A delta may hold negative counts: an order whose count moved takes one back where it
    counted before. The sums over all deltas are never negative.

    A move counts from the event time of the event that caused it (`move(..., at_us)`): an
    evaluation at instant I sees an order as its events up to I show it, however far ahead
    of I they were read. A move that lands in a minute before the one its cause is in (the
    reservation a later short pick takes back) waits in `later` for the evaluations at or
    after its cause; every other move counts for every window that holds its minute."""

    buckets: dict[int, list[int]] = field(default_factory=dict)  # epoch minute → [c, a, f]
    # (epoch minute, the first evaluation minute that sees it) → [c, a, f]
    later: dict[tuple[int, int], list[int]] = field(default_factory=dict)
    floor: int | None = None  # minutes below this were expired; additions there are dropped
    applied: dict[str, int] = field(default_factory=dict)  # origin → last delta seq folded in

    def add(self, kind: IntakeKind, at: datetime, n: int = 1) -> bool:
        """Count `n` of `kind` at event time `at`; False if its minute has expired."""
        if n < 0:
            raise ValueError(f"cannot count {n} orders")
        return self._add_to(as_us(utc(at)) // _MINUTE_US, _SLOT[kind], n)

    def move(self, before: OrderIntake, after: OrderIntake, at_us: int | None = None) -> None:
        """Move one order's count from what it counted for to what it counts for now, from
        event time `at_us` on (the event that changed it; None: for every evaluation)."""
        seen = None if at_us is None else -(-at_us // _MINUTE_US)  # its minute, rounded up
        if before.created != after.created:
            if before.created is not None:
                self._add_from(before.created, seen, 0, -1)
            if after.created is not None:
                self._add_from(after.created, seen, 0, 1)
        if (before.reserved, before.failed) != (after.reserved, after.failed):
            if before.reserved is not None:
                self._add_from(before.reserved, seen, 2 if before.failed else 1, -1)
            if after.reserved is not None:
                self._add_from(after.reserved, seen, 2 if after.failed else 1, 1)

    def merge(self, other: IntakeCounts) -> int:
        """Add another set of counts into this one; returns how many counts were too late."""
        dropped = 0
        for minute, row in other.buckets.items():
            for slot, n in enumerate(row):
                if n and not self._add_to(minute, slot, n):
                    dropped += abs(n)
        for (minute, seen), row in other.later.items():
            for slot, n in enumerate(row):
                if n and not self._add_from(minute, seen, slot, n):
                    dropped += abs(n)
        return dropped

    def minutes(self) -> list[int]:
        """The minutes that hold counts, in any order."""
        return [*self.buckets, *(minute for minute, _ in self.later)]

    def apply_delta(self, origin: str, seq: int, delta: IntakeCounts) -> bool:
        """Merge one origin's delta unless a delta with this or a later seq was applied."""
        if origin in self.applied and seq <= self.applied[origin]:
            return False
        self.merge(delta)
        self.applied[origin] = seq
        return True

    def window_totals(self, end: datetime, span: timedelta = DEFAULT_WINDOW) -> IntakeTotals:
        """Totals over [end - span, end); `end` and `span` must be whole minutes."""
        end_minute = _exact_minute(end)
        start_minute = end_minute - _whole_minutes(span, "span")
        # Walk whichever is shorter: the window's minutes or the buckets held.
        if end_minute - start_minute <= len(self.buckets):
            rows = [self.buckets.get(m) for m in range(start_minute, end_minute)]
        else:
            rows = [row for m, row in self.buckets.items() if start_minute <= m < end_minute]
        rows += [
            row
            for (m, seen), row in self.later.items()
            if start_minute <= m < end_minute and seen <= end_minute
        ]
        created = allocated = failed = 0
        for row in rows:
            if row is not None:
                created += row[0]
                allocated += row[1]
                failed += row[2]
        return IntakeTotals(created, allocated, failed)

    def expire(self, before: datetime) -> int:
        """Drop the minutes wholly before `before`, for good; returns how many buckets went."""
        cut = (utc(before) - EPOCH) // MINUTE
        if self.floor is not None and cut <= self.floor:
            return 0
        self.floor = cut
        old = [m for m in self.buckets if m < cut]
        for m in old:
            del self.buckets[m]
        for key in [key for key in self.later if key[0] < cut]:
            del self.later[key]
        return len(old)

    def __len__(self) -> int:
        """Number of minute buckets held."""
        return len(self.buckets)

    def to_json(self) -> dict[str, Any]:
        """A compact JSON-able form (also the wire form of a delta)."""
        out: dict[str, Any] = {"m": {str(m): row for m, row in sorted(self.buckets.items())}}
        if self.later:
            out["l"] = [[m, seen, *row] for (m, seen), row in sorted(self.later.items())]
        if self.floor is not None:
            out["f"] = self.floor
        if self.applied:
            out["s"] = dict(self.applied)
        return out

    @classmethod
    def from_json(cls, raw: dict[str, Any] | None) -> IntakeCounts:
        """The inverse of to_json; None gives empty counts."""
        if not raw:
            return cls()
        buckets: dict[int, list[int]] = {}
        for key, row in raw.get("m", {}).items():
            if len(row) != len(_SLOT) or any(not isinstance(n, int) for n in row):
                raise ValueError(f"bad intake bucket {key!r}: {row!r}")
            buckets[int(key)] = [int(n) for n in row]
        later: dict[tuple[int, int], list[int]] = {}
        for entry in raw.get("l", ()):
            if len(entry) != 2 + len(_SLOT) or any(not isinstance(n, int) for n in entry):
                raise ValueError(f"bad intake entry {entry!r}")
            later[(entry[0], entry[1])] = [int(n) for n in entry[2:]]
        floor = raw.get("f")
        return cls(
            buckets=buckets,
            later=later,
            floor=None if floor is None else int(floor),
            applied={str(k): int(v) for k, v in raw.get("s", {}).items()},
        )

    def _add_from(self, minute: int, seen: int | None, slot: int, n: int) -> bool:
        # A count in `minute` that evaluations see from minute `seen` on: every window that
        # holds `minute` ends at `minute + 1` or later, so only a later `seen` must wait.
        if seen is None or seen <= minute + 1:
            return self._add_to(minute, slot, n)
        if self.floor is not None and minute < self.floor:
            return False
        row = self.later.get((minute, seen))
        if row is None:
            row = self.later[(minute, seen)] = [0, 0, 0]
        row[slot] += n
        if not any(row):
            del self.later[(minute, seen)]
        return True

    def _add_to(self, minute: int, slot: int, n: int) -> bool:
        if self.floor is not None and minute < self.floor:
            return False
        row = self.buckets.get(minute)
        if row is None:
            row = self.buckets[minute] = [0, 0, 0]
        row[slot] += n
        if not any(row):  # a count moved away and back: nothing left to carry
            del self.buckets[minute]
        return True


def utc(at: datetime) -> datetime:
    """`at` in UTC; an event time must carry an offset."""
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(f"event time must carry an offset: {at.isoformat()}")
    return at.astimezone(UTC)


def _exact_minute(at: datetime) -> int:
    offset = utc(at) - EPOCH
    if offset % MINUTE:
        raise ValueError(f"window ends must be whole minutes: {at.isoformat()}")
    return offset // MINUTE


def _whole_minutes(span: timedelta, name: str) -> int:
    if span < timedelta(0) or span % MINUTE:
        raise ValueError(f"{name} must be a non-negative whole number of minutes: {span}")
    return span // MINUTE
