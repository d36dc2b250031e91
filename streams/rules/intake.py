"""The intake breaker's figures (contract §7): what one order counts for at each instant of
event time, the exact, mergeable per-minute counts they add up to, and how the breaker holds
each input partition's counts.

What one order counts for (why these, the "What is counted" part of streams.rules.breaker):

* created: in the minute of the ERP's earliest stage event;
* its stock reservation, from the reserving systems only: failed in the minute of its
  earliest `allocation_failed` if there is one, else succeeded in the minute of its earliest
  event at `fulfilling` (`allocated` or `picking`), else not attempted.

As of an instant T, the order counts for what its events up to T (by event time, from when
they count for the order: `SystemView.known_us`) show: `OrderState.as_of(T)`. Each figure is
a min over events, so an event changes what the order counts for only from the instant it
counts on: a failure at t2 after a success at t1 makes the order failed at t2 for the
evaluations from t2 on, and leaves it a success at t1 for those before. `intake_times` reads
the few event times this depends on from the order's state; `IntakeTimes.history` turns them
into what the order counts for from each instant that changes it; `IntakeCounts.count` adds
that history up in minute buckets, each count visible from the instant it holds
(`IntakeCounts.later`). The counts of a set of orders are therefore a function of their
states alone: whatever the arrival order, batching, re-sends or crashes, the same states
give the same counts, and rebuilding them from the states gives what counting event by event
gave.

A partition's counts travel whole (`PartitionSnapshots`): the breaker keeps each input
partition's latest snapshot by offset and sums them; see streams/breaker.py.
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

IntakeHistory = tuple[tuple[int, OrderIntake], ...]
"""What an order counts for from each instant that changes it (µs, ascending); () for none."""


class IntakeTimes(NamedTuple):
    """The event times an order's counts depend on, each as (when it happened, from when it
    counts for the order): the later of the two when its system's events waited in ingest."""

    created: tuple[int, int] | None = None  # the ERP's earliest stage event
    # The reserving systems' earliest failures and earliest events at `fulfilling`, those of
    # them that can be the earliest counted at some instant (usually one).
    failures: tuple[tuple[int, int], ...] = ()
    reservations: tuple[tuple[int, int], ...] = ()

    def history(self) -> IntakeHistory:
        """What the order counts for as of every instant (that of `OrderState.as_of`), as the
        few instants at which it changes."""
        # (from when it counts, what: 0 created, 1 reserved, 2 failed, when it happened)
        marks = [(since, 1, at) for at, since in self.reservations]
        marks += [(since, 2, at) for at, since in self.failures]
        if self.created is not None:
            marks.append((self.created[1], 0, self.created[0]))
        marks.sort()
        steps: list[tuple[int, OrderIntake]] = []
        last = NO_INTAKE
        created = reserved = failed = None
        for i, (since, what, at) in enumerate(marks):
            if what == 0:
                created = at // _MINUTE_US
            elif what == 1:
                reserved = at if reserved is None else min(reserved, at)
            else:
                failed = at if failed is None else min(failed, at)
            if i + 1 < len(marks) and marks[i + 1][0] == since:
                continue  # the order as of `since` takes every mark there
            if failed is not None:
                now = OrderIntake(created, failed // _MINUTE_US, True)
            else:
                now = OrderIntake(created, None if reserved is None else reserved // _MINUTE_US)
            if now != last:
                steps.append((since, now))
                last = now
        return tuple(steps)


def intake_times(state: OrderState, reserving: Iterable[Source] = STOCK_SYSTEMS) -> IntakeTimes:
    """The event times the order's counts depend on; a function of its events, whatever their
    arrival order (compare them before and after an event: they change far less often)."""
    systems = state.systems
    created = None
    erp = systems.get(Source.ERP)
    if erp is not None and erp.firsts:
        at = min(erp.firsts.values())[0]  # each is (time, event id)
        created = (at, _counts_from(at, erp.known_us))
    failures: tuple[tuple[int, int], ...] = ()
    reservations: tuple[tuple[int, int], ...] = ()
    for source in reserving:
        view = systems.get(source)
        if view is None:
            continue
        if view.failed_us is not None:
            failures = _with(failures, view.failed_us, _counts_from(view.failed_us, view.known_us))
        # `picking` is on the fulfilling phase too: a system picking the goods has them.
        first = view.firsts.get(Phase.FULFILLING)
        if first is not None:
            at = first[0]
            reservations = _with(reservations, at, _counts_from(at, view.known_us))
    return IntakeTimes(created, failures, reservations)


def order_intake(state: OrderState, reserving: Iterable[Source] = STOCK_SYSTEMS) -> OrderIntake:
    """What the order counts for once all its events count."""
    history = intake_times(state, reserving).history()
    return history[-1][1] if history else NO_INTAKE


def _with(times: tuple[tuple[int, int], ...], at: int, since: int) -> tuple[tuple[int, int], ...]:
    # `times` and (at, since), less any that is never the earliest counted: one that happened
    # no earlier and counts no sooner than another (the WMS's mirror of the ERP's
    # reservation). The common case keeps one.
    if not times:
        return ((at, since),)
    kept = [(at, since)]
    for a, s in times:
        if a <= at and s <= since:
            return times
        if at > a or since > s:
            kept.append((a, s))
    return tuple(kept)


def _counts_from(at_us: int, known_us: int | None) -> int:
    # An event counts for its order from its own time, or from when its system's view does.
    return at_us if known_us is None or known_us <= at_us else known_us


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

    An order counts as its history gives it (`count`): at each instant that changes what it
    counts for, -1 where it counted and +1 where it counts now, seen by the evaluations at or
    after that instant. Most steps land in a minute no earlier than their instant and count
    for every window that holds their minute; a step that takes back an earlier minute's
    count (the success a later short pick takes back) waits in `later` for the evaluations
    from its instant on. Buckets may hold negative counts; the sums over every order never
    are."""

    buckets: dict[int, list[int]] = field(default_factory=dict)  # epoch minute → [c, a, f]
    # (epoch minute, the first evaluation minute that sees it) → [c, a, f]
    later: dict[tuple[int, int], list[int]] = field(default_factory=dict)
    floor: int | None = None  # minutes below this were expired; additions there are dropped

    def add(self, kind: IntakeKind, at: datetime, n: int = 1) -> bool:
        """Count `n` of `kind` at event time `at`; False if its minute has expired."""
        if n < 0:
            raise ValueError(f"cannot count {n} orders")
        return self._add_to(as_us(utc(at)) // _MINUTE_US, _SLOT[kind], n)

    def count(self, history: IntakeHistory, sign: int = 1) -> None:
        """Count one order as its history gives it (`sign` -1: take it back)."""
        self._walk(NO_INTAKE, history, sign)

    def move(self, before: IntakeHistory, after: IntakeHistory) -> None:
        """Move one order from what its history gave to what it gives now (only the steps
        after what the two share)."""
        shared = 0
        for old, new in zip(before, after, strict=False):
            if old != new:
                break
            shared += 1
        start = before[shared - 1][1] if shared else NO_INTAKE
        self._walk(start, before[shared:], -1)
        self._walk(start, after[shared:], 1)

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

    def keep_before(self, older: IntakeCounts) -> None:
        """Take `older`'s minutes before this one's floor (which this one no longer holds)."""
        if self.floor is None:
            return
        cut = self.floor
        self.buckets.update({m: list(row) for m, row in older.buckets.items() if m < cut})
        self.later.update({key: list(row) for key, row in older.later.items() if key[0] < cut})
        self.floor = None if older.floor is None else min(older.floor, cut)

    def minutes(self) -> list[int]:
        """The minutes that hold counts, in any order."""
        return [*self.buckets, *(minute for minute, _ in self.later)]

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
        """A compact JSON-able form (also the wire form of a snapshot)."""
        out: dict[str, Any] = {"m": {str(m): row for m, row in sorted(self.buckets.items())}}
        if self.later:
            out["l"] = [[m, seen, *row] for (m, seen), row in sorted(self.later.items())]
        if self.floor is not None:
            out["f"] = self.floor
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
        )

    def _walk(self, start: OrderIntake, steps: IntakeHistory, sign: int) -> None:
        previous = start
        for at_us, now in steps:
            self._step(previous, now, -(-at_us // _MINUTE_US), sign)  # its minute, rounded up
            previous = now

    def _step(self, before: OrderIntake, after: OrderIntake, seen: int, sign: int) -> None:
        # One order's counts from `before` to `after`, for the evaluations from minute `seen`.
        if before.created != after.created:
            if before.created is not None:
                self._add_from(before.created, seen, 0, -sign)
            if after.created is not None:
                self._add_from(after.created, seen, 0, sign)
        if (before.reserved, before.failed) != (after.reserved, after.failed):
            if before.reserved is not None:
                self._add_from(before.reserved, seen, 2 if before.failed else 1, -sign)
            if after.reserved is not None:
                self._add_from(after.reserved, seen, 2 if after.failed else 1, sign)

    def _add_from(self, minute: int, seen: int, slot: int, n: int) -> bool:
        # A count in `minute` that evaluations see from minute `seen` on: every window that
        # holds `minute` ends at `minute + 1` or later, so only a later `seen` must wait.
        if seen <= minute + 1:
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


@dataclass(slots=True)
class PartitionSnapshots:
    """The breaker's intake counts: the latest snapshot of each input partition's counts (its
    cumulative `IntakeCounts` at an offset), summed for an evaluation.

    A partition's counts at an offset are a function of its orders' states there, and those
    of the events up to it, so a snapshot sent again after a crash (at the same or a lower
    offset, however the batches were cut) is dropped and a later one replaces the last. A
    snapshot holds the minutes from its floor on, those a window can still see at its
    partition's event time; the earlier ones are kept from the snapshots before it, which held
    them when no event within the allowed lateness could change them any more."""

    latest: dict[str, tuple[int, IntakeCounts]] = field(default_factory=dict)

    def fold(self, origin: str, offset: int, snapshot: IntakeCounts) -> bool:
        """Take `origin`'s counts at `offset` unless a snapshot at this or a later offset was."""
        held = self.latest.get(origin)
        if held is not None:
            if offset <= held[0]:
                return False
            snapshot.keep_before(held[1])
        self.latest[origin] = (offset, snapshot)
        return True

    def total(self) -> IntakeCounts:
        """Every partition's counts, summed."""
        total = IntakeCounts()
        for _, counts in self.latest.values():
            total.merge(counts)
        return total

    def expire(self, before: datetime) -> None:
        """Drop every partition's minutes wholly before `before`."""
        for _, counts in self.latest.values():
            counts.expire(before)

    def to_json(self) -> dict[str, Any]:
        """A JSON-able form: origin → [offset, counts]."""
        return {
            origin: [offset, counts.to_json()] for origin, (offset, counts) in self.latest.items()
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any] | None) -> PartitionSnapshots:
        """The inverse of to_json; None gives none."""
        return cls(
            {
                str(origin): (int(offset), IntakeCounts.from_json(counts))
                for origin, (offset, counts) in (raw or {}).items()
            }
        )


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
