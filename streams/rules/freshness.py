"""Per-source freshness: tell a whole feed going quiet (a connector down) from an idle night.

A silent source is one fact, reported once as a `source_silent` anomaly, instead of
thousands of per-order ghost flags that would only repeat it (design notes, "silent source").

The rule, exactly (wall time, as the pipeline receives events; A = `silent_after`):

* A source S is **silent** at wall time w when, at a `check(w, ...)`:
  1. S has been quiet for A while the feed flowed: `w - max(last_wall(S), flow_since) >= A`
     (inclusive). last_wall(S) is the latest wall time an event of S was observed (never, if
     S sent nothing); flow_since is when the current flow began: the first event after a gap
     of at least A in which no source sent anything (or the first event seen, or the restart);
  2. the others are flowing now: at least `min_other_events` events arrived in the trailing
     window (w - A, w]. (S sent none in it, so they are all the others'.) The window is
     counted in buckets of A / `window_buckets` of wall time, so up to one bucket's worth of
     slightly older events may count.
  An idle night everywhere fails (2), so it is not a silence; and when traffic resumes in the
  morning, a source quiet all night has A from then to show up (1), like everyone else.
* S stays silent until it **catches up**: an event of S arrives and S's newest event time is
  within `caught_up_within` of the newest event time of the other sources. A connector that
  restarts and replays its backlog is therefore not caught up on its first (old) event, only
  once the backlog is through, so held-back orders are re-evaluated on complete data.
* While S is silent: one open `source_silent` anomaly (critical, no order, systems [S]),
  `suppressed(S)` is True and `silent` lists S, which the wiring passes to
  `GhostRules.evaluate` so flags S alone would cause are held back. On catch-up the anomaly
  resolves (resolution `caught_up`, at S's newest event time) and `observe` returns
  `CaughtUp`, telling the wiring to `TimerWheel.release` the orders it parked under S.

Restart: `from_json(..., resumed_at=wall)` starts a new flow at the restart's wall time and
forgets the flow window: the time the worker was down is no evidence of silence, and after a
restart the consumer reads each topic's backlog at its own pace. Open silences stay.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, model_validator

from schemas.anomalies import Anomaly, AnomalyType, Severity, deterministic_id
from schemas.routing import RoutingTable, default_routing
from schemas.stages import Source
from streams.rules.lifecycle import AnomalyBook, BookEntry, EvidenceItem
from streams.rules.routing import RoutingFacts, route
from streams.rules.watermark import as_us, from_us, span_us

_NAME: dict[Source, str] = {
    Source.ERP: "the ERP",
    Source.CRM: "the CRM",
    Source.WMS: "the warehouse system (WMS)",
    Source.LOGISTICS: "carrier tracking",
}


class FreshnessSettings(BaseModel):
    """When a source counts as silent, and when as caught up again."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    silent_after: timedelta = Field(
        default=timedelta(minutes=10), description="no event of a source for this long (wall)"
    )
    min_other_events: int = Field(
        default=10, ge=1, description="events of other sources in that window: they flow"
    )
    caught_up_within: timedelta = Field(
        default=timedelta(minutes=10),
        description="back when its newest event time is this close to the others' newest",
    )
    window_buckets: int = Field(default=10, ge=1, le=600, description="flow window resolution")
    sources: tuple[Source, ...] = Field(default=tuple(Source), min_length=2)

    @model_validator(mode="after")
    def _sane(self) -> FreshnessSettings:
        if self.silent_after <= timedelta(0) or self.caught_up_within < timedelta(0):
            raise ValueError("silent_after must be positive and caught_up_within not negative")
        if len(set(self.sources)) != len(self.sources):
            raise ValueError("sources must not repeat")
        return self


class CaughtUp(NamedTuple):
    """A silent source is back: release its parked orders and publish the resolution."""

    source: Source
    anomaly: Anomaly | None  # None when a decision already resolved the source_silent anomaly


class SourceFreshness:
    """Last event per source and the silent-source rule; pure, both clocks passed in."""

    __slots__ = (
        "_bucket_us",
        "_buckets",
        "_caught_up_us",
        "_evidence",
        "_flow_since",
        "_last_any",
        "_last_event",
        "_last_wall",
        "_silent",
        "_silent_us",
        "book",
        "routing",
        "settings",
    )

    def __init__(
        self, settings: FreshnessSettings | None = None, routing: RoutingTable | None = None
    ) -> None:
        self.settings = settings or FreshnessSettings()
        self.routing = routing if routing is not None else default_routing()
        self._silent_us = span_us(self.settings.silent_after)
        self._caught_up_us = span_us(self.settings.caught_up_within)
        self._bucket_us = max(1, self._silent_us // self.settings.window_buckets)
        self._last_event: dict[Source, int] = {}
        self._last_wall: dict[Source, int] = {}
        self._evidence: dict[Source, tuple[str, str]] = {}  # event id, status of the newest
        self._flow_since: int | None = None  # wall µs the current flow of events began
        self._last_any: int | None = None  # wall µs of the latest event of any source
        self._buckets: deque[list[int]] = deque()  # [wall bucket index, events]
        self._silent: dict[Source, str] = {}  # silent source → its source_silent anomaly id
        self.book = AnomalyBook(None)

    @property
    def silent(self) -> frozenset[Source]:
        """The sources silent now (pass to GhostRules.evaluate)."""
        return frozenset(self._silent)

    def suppressed(self, source: Source) -> bool:
        """Whether per-order flags caused by `source` are held back now."""
        return source in self._silent

    def last_event(self, source: Source) -> datetime | None:
        """The newest event time seen from a source."""
        at = self._last_event.get(source)
        return None if at is None else from_us(at)

    def last_wall(self, source: Source) -> datetime | None:
        """The wall time the source's latest event arrived."""
        at = self._last_wall.get(source)
        return None if at is None else from_us(at)

    def observe(
        self,
        source: Source,
        event_time: datetime,
        wall: datetime,
        *,
        event_id: str = "",
        status: str = "",
    ) -> CaughtUp | None:
        """Account for one accepted event; CaughtUp when it ends the source's silence."""
        return self.observe_us(
            source, as_us(event_time), as_us(wall), event_id=event_id, status=status
        )

    def observe_us(
        self, source: Source, event_us: int, wall_us: int, *, event_id: str = "", status: str = ""
    ) -> CaughtUp | None:
        """`observe` in µs, for the hot path."""
        if self._last_any is None or wall_us - self._last_any >= self._silent_us:
            self._flow_since = wall_us  # everything was quiet: a new flow starts
        if self._last_any is None or wall_us > self._last_any:
            self._last_any = wall_us
        if event_us >= self._last_event.get(source, event_us):
            self._last_event[source] = event_us
            self._evidence[source] = (event_id, status)
        if wall_us > self._last_wall.get(source, wall_us - 1):
            self._last_wall[source] = wall_us
        index = wall_us // self._bucket_us
        buckets = self._buckets
        if buckets and buckets[-1][0] >= index:
            buckets[-1][1] += 1  # same bucket, or a wall clock that stepped back
        else:
            buckets.append([index, 1])
            floor = index - self.settings.window_buckets - 1
            while buckets[0][0] < floor:
                buckets.popleft()
        if source in self._silent:
            return self._catch_up(source, wall_us)
        return None

    def check(self, wall: datetime, now: datetime) -> list[Anomaly]:
        """Declare the sources that went silent by wall time `wall`; `now` is the watermark."""
        w = as_us(wall)
        flow_since = self._flow_since
        if flow_since is None:
            return []
        flow = self._events_since(w - self._silent_us)
        if flow < self.settings.min_other_events:
            return []
        out: list[Anomaly] = []
        for source in self.settings.sources:
            if source in self._silent:
                continue
            if w - max(self._last_wall.get(source, flow_since), flow_since) >= self._silent_us:
                anomaly = self._open(source, w, as_us(now), wall, flow)
                if anomaly is not None:
                    out.append(anomaly)
        return out

    def to_json(self) -> dict[str, Any]:
        """A compact JSON-able form (settings and routing come from configuration)."""
        out: dict[str, Any] = {
            "e": {s.value: at for s, at in sorted(self._last_event.items())},
            "w": {s.value: at for s, at in sorted(self._last_wall.items())},
            "v": {s.value: list(ev) for s, ev in sorted(self._evidence.items())},
            "q": [list(b) for b in self._buckets],
            "x": {s.value: a for s, a in sorted(self._silent.items())},
            "b": self.book.to_json(),
        }
        if self._flow_since is not None:
            out["s"] = self._flow_since
        if self._last_any is not None:
            out["a"] = self._last_any
        return out

    @classmethod
    def from_json(
        cls,
        raw: Mapping[str, Any] | None,
        settings: FreshnessSettings | None = None,
        routing: RoutingTable | None = None,
        *,
        resumed_at: datetime | None = None,
    ) -> SourceFreshness:
        """The inverse of to_json; `resumed_at` (wall) restarts the silence clocks (see module)."""
        out = cls(settings, routing)
        if raw:
            out._last_event = {Source(s): int(at) for s, at in raw.get("e", {}).items()}
            out._last_wall = {Source(s): int(at) for s, at in raw.get("w", {}).items()}
            out._evidence = {Source(s): (e, st) for s, (e, st) in raw.get("v", {}).items()}
            out._buckets = deque([int(i), int(n)] for i, n in raw.get("q", ()))
            out._silent = {Source(s): a for s, a in raw.get("x", {}).items()}
            out._flow_since = raw.get("s")
            out._last_any = raw.get("a")
            out.book = AnomalyBook.from_json(raw.get("b"))
        if resumed_at is not None:
            resumed = as_us(resumed_at)
            out._buckets.clear()
            if out._flow_since is not None:
                out._flow_since = max(out._flow_since, resumed)
        return out

    def _events_since(self, start_us: int) -> int:
        first = start_us // self._bucket_us
        return sum(n for index, n in self._buckets if index >= first)

    def _open(
        self, source: Source, wall_us: int, now_us: int, wall: datetime, flow: int
    ) -> Anomaly | None:
        last_event = self._last_event.get(source)
        last_wall = self._last_wall.get(source, self._flow_since or wall_us)
        anomaly_id = deterministic_id(
            "anomaly", AnomalyType.SOURCE_SILENT.value, source.value, f"{last_event}:{last_wall}"
        )
        self._silent[source] = anomaly_id
        quiet = _span(wall_us - last_wall)
        owner = route(
            RoutingFacts(
                type=AnomalyType.SOURCE_SILENT,
                severity=Severity.CRITICAL,
                systems=frozenset({source.value}),
            ),
            self.routing,
        )
        evidence: tuple[EvidenceItem, ...] = ()
        known = self._evidence.get(source)
        if last_event is not None and known is not None and known[0]:
            evidence = ((source.value, known[0], known[1], last_event),)
        entry = BookEntry(
            anomaly_id=anomaly_id,
            type=AnomalyType.SOURCE_SILENT,
            severity=Severity.CRITICAL,
            opened_us=now_us,
            team=owner.team,
            rule=owner.rule,
            systems=(source.value,),
            summary=(
                f"No events from {_NAME[source]} for {quiet} while the other feeds kept "
                f"flowing ({flow} events); its per-order missing and stalled flags are held "
                "back until it catches up."
            ),
            evidence=evidence,
            extra={
                "source": source.value,
                "last_event_at": None if last_event is None else from_us(last_event).isoformat(),
                "silent_for_seconds": (wall_us - last_wall) / 1e6,
            },
        )
        return self.book.record(entry, wall)

    def _catch_up(self, source: Source, wall_us: int) -> CaughtUp | None:
        mine = self._last_event[source]
        others = [at for s, at in self._last_event.items() if s != source]
        if others and mine < max(others) - self._caught_up_us:
            return None  # still replaying its backlog
        anomaly_id = self._silent.pop(source)
        entry = self.book.get(anomaly_id)
        summary = None
        if entry is not None:
            summary = f"{entry.summary} Resolved: {_NAME[source]} has caught up."
        anomaly = self.book.resolve(
            anomaly_id, mine, from_us(wall_us), resolution="caught_up", summary=summary
        )
        return CaughtUp(source, anomaly)


def _span(us: int) -> str:
    seconds = max(0, us) / 1e6
    if seconds < 120:
        return f"{round(seconds):d} s"
    if seconds < 7200:
        return f"{round(seconds / 60):d} min"
    return f"{round(seconds / 3600, 1):g} h"
