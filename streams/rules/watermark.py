"""The event-time watermark: how far event time has surely progressed, so timers may fire.

Event times are kept as integer microseconds since the Unix epoch (UTC) inside the rules:
exact to subtract and compare, cheap to serialise. `as_us`/`from_us`/`parse_us` convert.

The rule, exactly (all in microseconds; L = allowed_lateness, I = idle_after):

* `observe(t, wall)`: the event time is first capped at `wall + max_ahead` (a single source
  with a clock years ahead must not fire every timer and evict every order); then
  `max_event = max(max_event, t)` and `watermark = max(watermark, max_event - L)`.
  The watermark just after this event (`W_e`) and `wall` (`wall_e`) are remembered.
* `advance_idle(wall)`: when `wall - wall_e >= I`, i.e. no event arrived for `I` of wall time,
  `watermark = max(watermark, W_e + (wall - wall_e))`: event time is assumed to flow with the
  wall clock from where it stood at the last event, so time-based rules still fire when every
  feed is quiet. Before `I` has passed nothing moves (a short pause is not an outage), so the
  first idle advance is a step of at least `I`. Repeating the call with the same `wall` is a
  no-op; a wall clock stepping backwards never moves the watermark back.
* The watermark never goes backwards. Events behind it are still applied by the per-order
  state; they are only too late to hold back a timer that has already fired.
* Before the first event there is no watermark (None) and idle time does not create one.
* `advance_to(w, wall)`: a watermark computed upstream (see `SourceTime`) moves this one to
  `max(watermark, w)`; when it moves, that counts as activity for the idle rule (an upstream
  that keeps repeating one value is idle).

`SourceTime` is the upstream computation, across input partitions (ingest reads many):

* each partition keeps its own max event time (capped like above) and the wall time of its
  latest event; the wiring also tells it which partitions have a backlog (records in the
  log not read yet, from the consumer's positions and the log end offsets);
* a partition is *active* while it has a backlog or its latest event came less than I ago;
  a partition with a backlog and no event seen yet freezes the value (its time is unknown);
* `value(wall) = min(max event of the active partitions) - L`, or, when none is active,
  `max(max event of every partition) - L`; never decreasing.
  The slowest active partition sets the pace: a backlog on one topic (a connector catching
  up, or a replay the consumer reads unevenly) holds event time back instead of letting the
  other topics' events make its orders look late. A caught-up partition that went quiet
  stops holding it. Wall time alone cannot tell quiet from not-yet-fetched: hence backlogs.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, TypeVar

from pydantic import AwareDatetime, TypeAdapter, ValidationError

P = TypeVar("P")

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US = timedelta(microseconds=1)

DEFAULT_ALLOWED_LATENESS = timedelta(minutes=2)
DEFAULT_IDLE_AFTER = timedelta(seconds=60)
DEFAULT_MAX_AHEAD = timedelta(minutes=5)


def as_us(moment: datetime) -> int:
    """Microseconds since the Unix epoch of an aware datetime (exact; naive raises TypeError)."""
    return (moment - _EPOCH) // _ONE_US


def from_us(us: int) -> datetime:
    """The aware UTC datetime of a microsecond timestamp."""
    return _EPOCH + timedelta(microseconds=us)


def parse_us(text: str) -> int:
    """Microseconds since the epoch of an RFC 3339 timestamp with an offset."""
    return as_us(datetime.fromisoformat(text))


_AWARE: TypeAdapter[datetime] = TypeAdapter(AwareDatetime)


def event_time(value: Any) -> datetime:
    """An aware datetime from a timestamp in any form ingest accepted (RFC 3339 and the like)."""
    if isinstance(value, datetime):
        return value
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            pass
        else:
            if parsed.tzinfo is not None:
                return parsed
    # Rare forms ingest's AwareDatetime also takes (`z`, epoch numbers): parse them the same way.
    try:
        return _AWARE.validate_python(value)
    except ValidationError as exc:
        raise ValueError(f"not an aware timestamp: {value!r}") from exc


def occurred_us(event: Mapping[str, Any]) -> int:
    """A normalised event's event time in µs: ingest's `occurred_us`, else its `occurred_at`."""
    us = event.get("occurred_us")
    return as_us(event_time(event["occurred_at"])) if us is None else int(us)


def span_us(span: timedelta) -> int:
    """A timedelta in whole microseconds."""
    return span // _ONE_US


def _spans(
    allowed_lateness: timedelta, idle_after: timedelta, max_ahead: timedelta | None
) -> tuple[int, int, int | None]:
    # The settings every clock here shares, checked once, in µs.
    if allowed_lateness < timedelta(0) or idle_after <= timedelta(0):
        raise ValueError("allowed_lateness must be >= 0 and idle_after > 0")
    return (
        span_us(allowed_lateness),
        span_us(idle_after),
        None if max_ahead is None else span_us(max_ahead),
    )


def _capped(event_us: int, wall_us: int, ahead_us: int | None) -> int:
    # A source clock far ahead must not fire every timer: cap at wall + max_ahead.
    return event_us if ahead_us is None else min(event_us, wall_us + ahead_us)


class Watermark:
    """Max event time seen minus allowed lateness, with an idle wall-clock fallback."""

    __slots__ = (
        "_ahead_us",
        "_idle_us",
        "_last_wall_us",
        "_lateness_us",
        "_max_event_us",
        "_value",
        "_wm_at_last_us",
        "_wm_us",
        "clamped",
    )

    def __init__(
        self,
        allowed_lateness: timedelta = DEFAULT_ALLOWED_LATENESS,
        idle_after: timedelta = DEFAULT_IDLE_AFTER,
        max_ahead: timedelta | None = DEFAULT_MAX_AHEAD,
    ) -> None:
        self._lateness_us, self._idle_us, self._ahead_us = _spans(
            allowed_lateness, idle_after, max_ahead
        )
        self._max_event_us: int | None = None
        self._wm_us: int | None = None
        self._wm_at_last_us: int | None = None
        self._last_wall_us: int | None = None
        self._value: tuple[int, datetime] | None = None  # the last `value`, by its µs
        self.clamped = 0  # events whose time was capped at wall + max_ahead

    @property
    def value_us(self) -> int | None:
        """The watermark in microseconds since the epoch, None before the first event."""
        return self._wm_us

    @property
    def value(self) -> datetime | None:
        """The watermark as an aware UTC datetime, None before the first event."""
        us = self._wm_us
        if us is None:
            return None
        if self._value is None or self._value[0] != us:
            self._value = (us, from_us(us))  # read for every event; it moves far less often
        return self._value[1]

    @property
    def max_event(self) -> datetime | None:
        """The largest (capped) event time observed."""
        return None if self._max_event_us is None else from_us(self._max_event_us)

    def observe(self, event_time: datetime, wall_now: datetime) -> datetime | None:
        """Account for one event; returns the watermark after it."""
        self.observe_us(as_us(event_time), as_us(wall_now))
        return self.value

    def observe_us(self, event_us: int, wall_us: int) -> int:
        """`observe` in microseconds, for the hot path; returns the watermark."""
        capped = _capped(event_us, wall_us, self._ahead_us)
        if capped != event_us:
            event_us = capped
            self.clamped += 1
        if self._max_event_us is None or event_us > self._max_event_us:
            self._max_event_us = event_us
        candidate = self._max_event_us - self._lateness_us
        if self._wm_us is None or candidate > self._wm_us:
            self._wm_us = candidate
        self._wm_at_last_us = self._wm_us
        self._last_wall_us = wall_us
        return self._wm_us

    def advance_to_us(self, value_us: int, wall_us: int) -> int:
        """Move to an upstream watermark (never back); a move is activity for the idle rule."""
        if self._wm_us is None or value_us > self._wm_us:
            self._wm_us = value_us
            self._wm_at_last_us = value_us
            self._last_wall_us = wall_us
        return self._wm_us

    def advance_idle(self, wall_now: datetime) -> datetime | None:
        """Let event time flow with the wall clock once no event came for `idle_after`."""
        self.advance_idle_us(as_us(wall_now))
        return self.value

    def advance_idle_us(self, wall_us: int) -> int | None:
        """`advance_idle` in microseconds; returns the watermark."""
        if self._wm_at_last_us is None or self._last_wall_us is None or self._wm_us is None:
            return self._wm_us
        elapsed = wall_us - self._last_wall_us
        if elapsed >= self._idle_us:
            candidate = self._wm_at_last_us + elapsed
            if candidate > self._wm_us:
                self._wm_us = candidate
        return self._wm_us

    def to_json(self) -> dict[str, Any]:
        """A compact JSON-able form (settings are not included: they come from configuration)."""
        return {
            "m": self._max_event_us,
            "w": self._wm_us,
            "a": self._wm_at_last_us,
            "l": self._last_wall_us,
            "c": self.clamped,
        }

    @classmethod
    def from_json(
        cls,
        raw: dict[str, Any] | None,
        allowed_lateness: timedelta = DEFAULT_ALLOWED_LATENESS,
        idle_after: timedelta = DEFAULT_IDLE_AFTER,
        max_ahead: timedelta | None = DEFAULT_MAX_AHEAD,
    ) -> Watermark:
        """The inverse of to_json, with the given settings; None gives a fresh watermark."""
        mark = cls(allowed_lateness, idle_after, max_ahead)
        if raw:
            mark._max_event_us = raw.get("m")
            mark._wm_us = raw.get("w")
            mark._wm_at_last_us = raw.get("a")
            mark._last_wall_us = raw.get("l")
            mark.clamped = int(raw.get("c", 0))
        return mark


class SourceTime(Generic[P]):
    """Event time across input partitions: the slowest active partition sets the pace."""

    __slots__ = ("_ahead_us", "_backlog", "_idle_us", "_lateness_us", "_parts", "_wm_us")

    def __init__(
        self,
        allowed_lateness: timedelta = DEFAULT_ALLOWED_LATENESS,
        idle_after: timedelta = DEFAULT_IDLE_AFTER,
        max_ahead: timedelta | None = DEFAULT_MAX_AHEAD,
    ) -> None:
        self._lateness_us, self._idle_us, self._ahead_us = _spans(
            allowed_lateness, idle_after, max_ahead
        )
        self._parts: dict[P, list[int]] = {}  # partition -> [max event µs, last wall µs]
        self._backlog: set[P] = set()
        self._wm_us: int | None = None

    def backlog(self, partition: P, pending: bool) -> None:
        """Whether `partition` has records in its log that were not read yet."""
        if pending:
            self._backlog.add(partition)
        else:
            self._backlog.discard(partition)

    def observe_us(self, partition: P, event_us: int, wall_us: int) -> None:
        """Account for one event of `partition`."""
        event_us = _capped(event_us, wall_us, self._ahead_us)
        part = self._parts.get(partition)
        if part is None:
            self._parts[partition] = [event_us, wall_us]
            return
        if event_us > part[0]:
            part[0] = event_us
        if wall_us > part[1]:
            part[1] = wall_us

    def latest_us(self, partition: P) -> int | None:
        """The newest (capped) event time seen on `partition`."""
        part = self._parts.get(partition)
        return None if part is None else part[0]

    def value_us(self, wall_us: int) -> int | None:
        """The watermark at wall time `wall_us` (None before any event)."""
        if not self._parts or any(p not in self._parts for p in self._backlog):
            return self._wm_us
        active = [
            m
            for p, (m, w) in self._parts.items()
            if p in self._backlog or wall_us - w < self._idle_us
        ]
        base = min(active) if active else max(m for m, _ in self._parts.values())
        candidate = base - self._lateness_us
        if self._wm_us is None or candidate > self._wm_us:
            self._wm_us = candidate
        return self._wm_us

    def reset(self) -> None:
        """Forget every partition (after a reassignment); the value may start lower again."""
        self._parts.clear()
        self._backlog.clear()
        self._wm_us = None


class UpstreamMarks(Generic[P]):
    """Watermarks upstream workers publish on each partition of a topic, merged downstream.

    An upstream worker (an *origin*) appends its watermark to every partition after the
    records it covers, so a mark read on one partition says nothing about the records still
    unread on another. The merged value is therefore the minimum over the partitions read of
    each origin's latest mark on that partition, and the minimum of that over the origins
    heard from in the last `idle_after` of wall time (an origin that stopped, say a worker
    that left the group, stops holding it). An origin not yet heard on every partition read
    gives no value at all: its time on the others is unknown.

    An origin's watermark speaks only for the input partitions it reads (`covers`, out of
    `of` in all). While the origins heard from do not cover every input partition between
    them (a worker died and its partitions are not read by anyone yet, or are being handed
    to another), there is no value: events of the uncovered partitions may be of any age.
    A mark that names no coverage covers everything (one upstream worker reading all).
    """

    __slots__ = ("_covers", "_idle_us", "_marks", "_seen")

    def __init__(self, idle_after: timedelta = DEFAULT_IDLE_AFTER) -> None:
        self._idle_us = span_us(idle_after)
        self._marks: dict[str, dict[P, int]] = {}
        self._seen: dict[str, int] = {}
        # origin -> (the mark value, the input partitions it covers, of how many), or None
        # when its marks name no coverage (everything)
        self._covers: dict[str, tuple[int, frozenset[str], int] | None] = {}

    def observe_us(
        self,
        origin: str,
        partition: P,
        mark_us: int,
        wall_us: int,
        covers: Collection[str] | None = None,
        of: int | None = None,
    ) -> None:
        """Take one mark read from `partition`; `covers` names the input partitions the
        origin read when it made the mark, out of `of` (None: all of them)."""
        marks = self._marks.setdefault(origin, {})
        if mark_us > marks.get(partition, mark_us - 1):
            marks[partition] = mark_us
        # The coverage of the origin's newest mark; marks of one value read in any order
        # (partitions are read at their own pace) add up.
        known = self._covers.get(origin)
        if covers is None:
            self._covers[origin] = None
        elif known is None and origin in self._covers:
            pass  # a mark naming no coverage covers everything already
        elif known is None or mark_us > known[0]:
            self._covers[origin] = (mark_us, frozenset(covers), of or 0)
        elif mark_us == known[0]:
            self._covers[origin] = (mark_us, known[1] | frozenset(covers), max(known[2], of or 0))
        self._seen[origin] = max(self._seen.get(origin, wall_us), wall_us)

    def value_us(self, partitions: Collection[P] | None, wall_us: int) -> int | None:
        """The merged watermark over `partitions` (None: every partition marked so far)."""
        values: list[int] = []
        covered: set[str] = set()
        needed = 0
        whole = False
        for origin, marks in self._marks.items():
            if wall_us - self._seen[origin] >= self._idle_us:
                continue
            wanted = marks.keys() if partitions is None else partitions
            if not wanted or any(p not in marks for p in wanted):
                return None
            values.append(min(marks[p] for p in wanted))
            coverage = self._covers.get(origin)
            if coverage is None:
                whole = True
            else:
                covered.update(coverage[1])
                needed = max(needed, coverage[2])
        if not values or (not whole and len(covered) < needed):
            return None
        return min(values)

    def reset(self) -> None:
        """Forget every mark (after a reassignment)."""
        self._marks.clear()
        self._seen.clear()
        self._covers.clear()
