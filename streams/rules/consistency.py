"""Cross-system consistency ratio (contract §4.2), kept incrementally from per-order changes.

Population, at watermark wm: orders the ERP has reported a stage for, whose ERP phase is not
terminal, plus terminal ones that turned terminal in the last 24 h — an order that turned
terminal at T is counted while `T + 24 h > wm` and leaves when `wm >= T + 24 h`. A terminal
order that receives events after it left does not come back, unless its terminal time moves
(delivered, then returned: the return is a fresh change the systems must show).

The ratio is consistent / population. A tracker sees only its worker's partitions, so it
reports plain counts (`counts()`) that add up across workers: the global ratio is
sum(consistent) / sum(population), never an average of ratios. The tracker holds nothing
that the order states do not: after a restart or a rebalance, `rebuild` it from the table.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from schemas.stages import Source
from streams.rules.order_state import Change, OrderState
from streams.rules.refresh_latency import TARGETS
from streams.rules.watermark import as_us, from_us, span_us

TERMINAL_GRACE = timedelta(hours=24)

_BIT: dict[Source, int] = {source: 1 << i for i, source in enumerate(TARGETS)}

# (consistent, bit mask of disagreeing systems, terminal_at µs or None)
_Member = tuple[bool, int, int | None]


@dataclass(frozen=True, slots=True)
class ConsistencyCounts:
    """Mergeable figures: add the counts of every worker, then take the ratio."""

    population: int = 0
    consistent: int = 0
    disagreeing: Mapping[Source, int] = field(default_factory=lambda: dict.fromkeys(TARGETS, 0))

    @property
    def ratio(self) -> float | None:
        """consistent / population, None when the population is empty."""
        return None if self.population == 0 else self.consistent / self.population

    def __add__(self, other: ConsistencyCounts) -> ConsistencyCounts:
        return ConsistencyCounts(
            self.population + other.population,
            self.consistent + other.consistent,
            {
                s: self.disagreeing.get(s, 0) + other.disagreeing.get(s, 0)
                for s in (*self.disagreeing, *other.disagreeing)
            },
        )


class ConsistencyTracker:
    """The population and its consistent share, updated per order change (no scans)."""

    __slots__ = ("_consistent", "_disagree", "_expiry", "_grace_us", "_members", "_wm")

    def __init__(self, terminal_grace: timedelta = TERMINAL_GRACE) -> None:
        self._grace_us = span_us(terminal_grace)
        self._members: dict[str, _Member] = {}
        self._consistent = 0
        self._disagree: dict[Source, int] = dict.fromkeys(TARGETS, 0)
        self._expiry: list[tuple[int, str]] = []  # (terminal_at, order_id); stale items skipped
        self._wm: int | None = None

    def __len__(self) -> int:
        return len(self._members)

    def __contains__(self, order_id: object) -> bool:
        return order_id in self._members

    @property
    def watermark(self) -> datetime | None:
        """The watermark of the last `expire`."""
        return None if self._wm is None else from_us(self._wm)

    def update(
        self,
        order_id: str,
        in_population: bool,
        consistent: bool,
        disagreeing_systems: Iterable[Source],
        terminal_at: datetime | None,
    ) -> None:
        """Record an order's current standing (call after each change to the order)."""
        terminal_us = None if terminal_at is None else as_us(terminal_at)
        mask = 0
        for source in disagreeing_systems:
            mask |= _BIT.get(source, 0)
        self._set(order_id, in_population, consistent, mask, terminal_us)

    def apply(self, change: Change) -> None:
        """Record the standing an order has after `change`."""
        mask = 0
        for source in change.disagreeing:
            mask |= _BIT.get(source, 0)
        self._set(
            change.order_id,
            change.in_population,
            bool(change.new_consistent),
            mask,
            change.terminal_us,
        )

    def update_from(self, state: OrderState) -> None:
        """Record an order's current standing straight from its state."""
        disagreeing = state.disagreeing()
        mask = 0
        for source in disagreeing or ():
            mask |= _BIT.get(source, 0)
        self._set(
            state.order_id,
            disagreeing is not None,
            not disagreeing,
            mask,
            state.terminal_at_us,
        )

    def remove(self, order_id: str) -> None:
        """Forget an order (evicted, or its partition moved to another worker)."""
        old = self._members.pop(order_id, None)
        if old is not None:
            self._count(old, -1)

    def expire(self, watermark: datetime) -> int:
        """Move to `watermark` (never backwards), dropping orders terminal for 24 h; how many."""
        wm = as_us(watermark)
        if self._wm is not None and wm <= self._wm:
            return 0
        self._wm = wm
        dropped = 0
        heap = self._expiry
        while heap and heap[0][0] + self._grace_us <= wm:
            terminal_us, order_id = heapq.heappop(heap)
            member = self._members.get(order_id)
            if member is not None and member[2] == terminal_us:
                del self._members[order_id]
                self._count(member, -1)
                dropped += 1
        return dropped

    def ratio(self) -> float | None:
        """consistent / population on this worker, None when the population is empty."""
        return None if not self._members else self._consistent / len(self._members)

    def breakdown(self) -> dict[Source, int]:
        """Per system, how many orders of the population it disagrees on (silent included)."""
        return dict(self._disagree)

    def counts(self) -> ConsistencyCounts:
        """This worker's mergeable figures."""
        return ConsistencyCounts(len(self._members), self._consistent, dict(self._disagree))

    def rebuild(self, states: Iterable[OrderState], watermark: datetime | None) -> None:
        """Start over from the order states this worker holds, at `watermark`."""
        self._members.clear()
        self._expiry.clear()
        self._consistent = 0
        self._disagree = dict.fromkeys(TARGETS, 0)
        self._wm = None if watermark is None else as_us(watermark)
        for state in states:
            self.update_from(state)

    def _set(
        self,
        order_id: str,
        in_population: bool,
        consistent: bool,
        mask: int,
        terminal_us: int | None,
    ) -> None:
        old = self._members.get(order_id)
        include = in_population and (
            terminal_us is None or self._wm is None or terminal_us + self._grace_us > self._wm
        )
        new: _Member | None = (consistent, mask, terminal_us) if include else None
        if old == new:
            return
        if old is not None:
            self._count(old, -1)
        if new is None:
            self._members.pop(order_id, None)
            return
        self._members[order_id] = new
        self._count(new, 1)
        if terminal_us is not None and (old is None or old[2] != terminal_us):
            heapq.heappush(self._expiry, (terminal_us, order_id))

    def _count(self, member: _Member, sign: int) -> None:
        consistent, mask, _ = member
        if consistent:
            self._consistent += sign
        if mask:
            for source, bit in _BIT.items():
                if mask & bit:
                    self._disagree[source] += sign
