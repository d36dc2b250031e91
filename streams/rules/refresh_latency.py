"""Status-refresh latency (contract §4.1): observations and exact rolling median / p95.

Definition, as implemented:

* t0(P) is the `occurred_at` of the ERP's earliest event at phase P (the event that moved the
  order into P, in event time). t1(S, P) is the `occurred_at` of target S's earliest event at
  phase P *or later* on the line `open < fulfilling < shipped < delivered`; `cancelled` and
  `returned` are off the line and match only themselves (a CRM `returned` does not show that
  the CRM knew the order was `delivered`). Ties on time are broken by the smaller event id.
* An observation exists for (order, S, P) when t0(P) and t1(S, P) are known and S is in scope
  for P (see `order_state.in_scope`); a phase the ERP skipped has none. latency = t1 - t0;
  a negative value counts as 0 with `skew=True` (the target's clock, or the ERP's, is off).
* Both are minima over a set of events, so the result does not depend on arrival order: the
  target may report before or after the ERP. An observation is emitted the moment it becomes
  known, once. Only when an event arrives out of event-time order *within one source* and
  lowers a minimum does the exact value change: the observation is emitted again with
  `revised=True`, and `LatencyWindow.add` replaces the earlier value under the same key.

Windows are keyed on t1, the moment the target showed the change: an observation belongs to
the window of length W at watermark wm when wm - W < t1 <= wm. Observations whose t1 is still
ahead of the watermark wait until it passes, so figures at a watermark do not depend on how
far ahead of it some feed happens to be.

Median of an even count is the mean of the two middle values. p95 is nearest-rank: the value
at 1-based rank ceil(0.95 * n) of the sorted sample (n = 5 gives the largest; n = 20 the 19th).

A window is exact over the observations it is given and holds all of them for 24 h (memory
grows with the observation rate). Medians do not add up across workers: for one global figure,
feed one window every observation (or ask ClickHouse's quantileExact), not per-worker windows.
"""

from __future__ import annotations

import heapq
from bisect import bisect_left, insort
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from schemas.stages import PHASE_RANK, Phase, Source
from streams.rules.watermark import as_us, from_us, span_us

TARGETS: tuple[Source, ...] = (Source.CRM, Source.WMS, Source.LOGISTICS)
LINE_PHASES: tuple[Phase, ...] = (Phase.OPEN, Phase.FULFILLING, Phase.SHIPPED, Phase.DELIVERED)

# Prometheus histogram buckets (seconds): fine enough to tell 5 s from 10 s and 2 h from 4 h.
HISTOGRAM_BUCKETS: tuple[float, ...] = (
    1.0,
    2.0,
    5.0,
    10.0,
    15.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    900.0,
    1800.0,
    3600.0,
    7200.0,
    14400.0,
    28800.0,
    86400.0,
)

DEFAULT_WINDOWS: Mapping[str, timedelta] = {"1h": timedelta(hours=1), "24h": timedelta(hours=24)}

FirstSeen = tuple[int, str]
"""(occurred_at in µs, event id) of a system's earliest event at some phase."""

ObservationKey = tuple[str, Source, Phase]


@dataclass(frozen=True, slots=True)
class Observation:
    """One status-refresh latency: how long target S took to show the ERP's phase P."""

    order_id: str
    target: Source
    phase: Phase
    t0_us: int  # the ERP's first event at the phase (µs since the epoch)
    t1_us: int  # the target's first event at it or past it on the line
    latency_seconds: float
    skew: bool
    erp_event_id: str
    target_event_id: str
    revised: bool = False

    @property
    def key(self) -> ObservationKey:
        """Identity of the observation: one per (order, target, phase)."""
        return (self.order_id, self.target, self.phase)

    @property
    def t0(self) -> datetime:
        """When the ERP entered the phase."""
        return from_us(self.t0_us)

    @property
    def t1(self) -> datetime:
        """When the target first showed it."""
        return from_us(self.t1_us)

    @property
    def latency_us(self) -> int:
        """The latency in whole microseconds, clamped at 0 (exact)."""
        return max(0, self.t1_us - self.t0_us)


def first_at_or_past(firsts: Mapping[Phase, FirstSeen], phase: Phase) -> FirstSeen | None:
    """A system's earliest event at `phase` or later on the line (off-line phases: equal only)."""
    rank = PHASE_RANK.get(phase)
    if rank is None:
        return firsts.get(phase)
    best: FirstSeen | None = None
    for seen_phase, first in firsts.items():
        seen_rank = PHASE_RANK.get(seen_phase)
        if seen_rank is not None and seen_rank >= rank and (best is None or first < best):
            best = first
    return best


def measure(
    order_id: str,
    target: Source,
    phase: Phase,
    erp_first: FirstSeen,
    target_first: FirstSeen,
    *,
    revised: bool = False,
) -> Observation:
    """The observation for ERP phase entry `erp_first` and the target's `target_first`."""
    t0_us, erp_event_id = erp_first
    t1_us, target_event_id = target_first
    raw = t1_us - t0_us
    return Observation(
        order_id,
        target,
        phase,
        t0_us,
        t1_us,
        max(0, raw) / 1_000_000,
        raw < 0,
        erp_event_id,
        target_event_id,
        revised,
    )


@dataclass(frozen=True, slots=True)
class LatencyStats:
    """Figures of one target over one window (seconds; None when the window is empty)."""

    count: int
    median: float | None
    p95: float | None
    skew_count: int

    def as_dict(self) -> dict[str, Any]:
        """The figures as a plain dict."""
        return {
            "count": self.count,
            "median": self.median,
            "p95": self.p95,
            "skew_count": self.skew_count,
        }


class SortedBag:
    """A sorted multiset of ints in chunks: O(√n) insert/remove, k-th by a walk over chunks."""

    __slots__ = ("_chunks", "_len", "_load", "_maxes")

    def __init__(self, load: int = 512) -> None:
        self._chunks: list[list[int]] = []
        self._maxes: list[int] = []
        self._len = 0
        self._load = load

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[int]:
        for chunk in self._chunks:
            yield from chunk

    def add(self, value: int) -> None:
        """Insert one value."""
        if not self._chunks:
            self._chunks.append([value])
            self._maxes.append(value)
            self._len = 1
            return
        i = bisect_left(self._maxes, value)
        if i == len(self._maxes):
            i -= 1
        chunk = self._chunks[i]
        insort(chunk, value)
        self._maxes[i] = chunk[-1]
        self._len += 1
        if len(chunk) > 2 * self._load:
            half = len(chunk) // 2
            self._chunks[i : i + 1] = [chunk[:half], chunk[half:]]
            self._maxes[i : i + 1] = [chunk[half - 1], chunk[-1]]

    def remove(self, value: int) -> None:
        """Remove one occurrence of a value (ValueError when absent)."""
        i = bisect_left(self._maxes, value)
        if i == len(self._maxes):
            raise ValueError(f"{value} not in bag")
        chunk = self._chunks[i]
        j = bisect_left(chunk, value)
        if j == len(chunk) or chunk[j] != value:
            raise ValueError(f"{value} not in bag")
        del chunk[j]
        self._len -= 1
        if chunk:
            self._maxes[i] = chunk[-1]
        else:
            del self._chunks[i]
            del self._maxes[i]

    def kth(self, k: int) -> int:
        """The k-th smallest value, 0-based."""
        if not 0 <= k < self._len:
            raise IndexError(k)
        for chunk in self._chunks:
            if k < len(chunk):
                return chunk[k]
            k -= len(chunk)
        raise AssertionError("unreachable: lengths out of sync")  # pragma: no cover


# Where an entry stands in one window.
_PENDING, _IN, _OUT = 0, 1, 2


class _Entry:
    __slots__ = ("key", "latency_us", "places", "seq", "skew", "t1_us")

    def __init__(
        self, key: ObservationKey, t1_us: int, latency_us: int, skew: bool, seq: int, windows: int
    ) -> None:
        self.key = key
        self.t1_us = t1_us
        self.latency_us = latency_us
        self.skew = skew
        self.seq = seq
        self.places = [_PENDING] * windows


_HeapItem = tuple[int, int, ObservationKey]


class LatencyWindow:
    """Exact rolling median and p95 of refresh latency per target, over event-time windows."""

    __slots__ = (
        "_bags",
        "_expiry",
        "_live",
        "_names",
        "_pending",
        "_seq",
        "_skews",
        "_spans",
        "_wm",
    )

    def __init__(self, windows: Mapping[str, timedelta] = DEFAULT_WINDOWS) -> None:
        if not windows:
            raise ValueError("at least one window")
        self._names: tuple[str, ...] = tuple(windows)
        self._spans: tuple[int, ...] = tuple(span_us(w) for w in windows.values())
        self._wm: int | None = None
        self._seq = 0
        self._live: dict[ObservationKey, _Entry] = {}
        self._pending: list[_HeapItem] = []
        self._expiry: list[list[_HeapItem]] = [[] for _ in self._names]
        self._bags: dict[tuple[Source, int], SortedBag] = {
            (target, w): SortedBag() for target in TARGETS for w in range(len(self._names))
        }
        self._skews: dict[tuple[Source, int], int] = dict.fromkeys(self._bags, 0)

    @property
    def windows(self) -> tuple[str, ...]:
        """The window names, e.g. ('1h', '24h')."""
        return self._names

    def __len__(self) -> int:
        return len(self._live)

    def add(self, obs: Observation) -> bool:
        """Take one observation (a revision replaces its key's value); False if nothing changed."""
        return self._add(obs.key, obs.t1_us, obs.latency_us, obs.skew)

    def _add(self, key: ObservationKey, t1_us: int, latency_us: int, skew: bool) -> bool:
        old = self._live.get(key)
        if old is not None:
            if (old.t1_us, old.latency_us, old.skew) == (t1_us, latency_us, skew):
                return False
            self._drop(old)
        self._seq += 1
        entry = _Entry(key, t1_us, latency_us, skew, self._seq, len(self._names))
        self._live[key] = entry
        if self._wm is not None and t1_us <= self._wm:
            self._admit(entry, self._wm)
        else:
            heapq.heappush(self._pending, (t1_us, entry.seq, key))
        return True

    def expire(self, watermark: datetime) -> None:
        """Move the windows to `watermark` (never backwards): admit what it passed, drop the old."""
        wm = as_us(watermark)
        if self._wm is not None and wm <= self._wm:
            return
        self._wm = wm
        pending = self._pending
        while pending and pending[0][0] <= wm:
            _, seq, key = heapq.heappop(pending)
            entry = self._live.get(key)
            if entry is not None and entry.seq == seq:
                self._admit(entry, wm)
        for w, span in enumerate(self._spans):
            heap = self._expiry[w]
            while heap and heap[0][0] <= wm - span:
                _, seq, key = heapq.heappop(heap)
                entry = self._live.get(key)
                if entry is not None and entry.seq == seq and entry.places[w] == _IN:
                    self._leave(entry, w)
                    entry.places[w] = _OUT
                    if all(place == _OUT for place in entry.places):
                        del self._live[key]

    def stats(self, target: Source, window: str, watermark: datetime) -> LatencyStats:
        """Count, median, p95 (nearest-rank) and skew count of `target` over `window`."""
        self.expire(watermark)
        if window not in self._names:
            raise KeyError(f"unknown window {window!r}; known: {', '.join(self._names)}")
        w = self._names.index(window)
        bag = self._bags[(target, w)]
        n = len(bag)
        skews = self._skews[(target, w)]
        if n == 0:
            return LatencyStats(0, None, None, skews)
        if n % 2:
            median = bag.kth(n // 2) / 1_000_000
        else:
            median = (bag.kth(n // 2 - 1) + bag.kth(n // 2)) / 2_000_000
        rank = (95 * n + 99) // 100  # ceil(0.95 n) without float rounding
        return LatencyStats(n, median, bag.kth(rank - 1) / 1_000_000, skews)

    def _admit(self, entry: _Entry, wm: int) -> None:
        target = entry.key[1]
        for w, span in enumerate(self._spans):
            if entry.t1_us > wm - span:
                self._bags[(target, w)].add(entry.latency_us)
                if entry.skew:
                    self._skews[(target, w)] += 1
                entry.places[w] = _IN
                heapq.heappush(self._expiry[w], (entry.t1_us, entry.seq, entry.key))
            else:
                entry.places[w] = _OUT
        if all(place == _OUT for place in entry.places):
            del self._live[entry.key]

    def _leave(self, entry: _Entry, w: int) -> None:
        target = entry.key[1]
        self._bags[(target, w)].remove(entry.latency_us)
        if entry.skew:
            self._skews[(target, w)] -= 1

    def _drop(self, entry: _Entry) -> None:
        # Heap items of a dropped entry are skipped later: their seq no longer matches.
        for w, place in enumerate(entry.places):
            if place == _IN:
                self._leave(entry, w)
        del self._live[entry.key]

    def to_json(self) -> dict[str, Any]:
        """A compact JSON-able form: the watermark and every observation still in a window."""
        return {
            "w": self._wm,
            "e": [
                [key[0], key[1].value, key[2].value, e.t1_us, e.latency_us, int(e.skew)]
                for key, e in self._live.items()
            ],
        }

    @classmethod
    def from_json(
        cls, raw: dict[str, Any] | None, windows: Mapping[str, timedelta] = DEFAULT_WINDOWS
    ) -> LatencyWindow:
        """The inverse of to_json; None gives an empty window."""
        window = cls(windows)
        if not raw:
            return window
        window._wm = raw.get("w")
        for order_id, target, phase, t1_us, latency_us, skew in raw.get("e", ()):
            window._add((order_id, Source(target), Phase(phase)), t1_us, latency_us, bool(skew))
        return window
