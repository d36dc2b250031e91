"""The intake circuit breaker, stages 1 and 2 (contract §7): a pure state machine on event time.

Stage 1 warns when, over the trailing window, ERP orders created exceed `min_orders` *and*
the stock-reservation failure rate (allocation_failed / (allocated + allocation_failed))
exceeds `failure_rate`. Stage 2 throttles intake to VIP orders after `warnings_to_throttle`
consecutive warnings with no `breaker.ack` in between, and lifts once the condition has been
clear for `clear_for`, or at once on `breaker.release`. Stage 3 is per order (stalled
tracking) and lives with the ghost rules; `Breaker.stage` reports 0, 1 or 2.

Counting across workers
-----------------------
The counts are global, so they must be exact and mergeable. Each worker counts the events
*ingest accepted* (re-sends are already dropped, so every event is counted once) into its
own `IntakeCounts`, one bucket per epoch minute of event time, per input partition. Every
few seconds it ships that delta to a single-partition internal topic as
`{origin: "<topic>/<partition>", seq: <last input offset counted>, counts: delta.to_json()}`
with its partition's watermark, and starts a fresh delta. One breaker agent consumes that
partition, so exactly one `Breaker` exists in the consumer group; it folds each delta into
the global counts with `apply_delta` (a redelivered message has a seq already applied and
is dropped) and calls `tick` with the minimum of the origins' watermarks, so every minute
before an evaluation instant has arrived from every partition when that instant is
evaluated. Minute buckets add up exactly, in any order and any grouping, and evaluation
instants sit on whole minutes, so a window is a sum of whole buckets: no sampling, no
approximation. `tick` expires the buckets no later evaluation can see, which bounds memory
at about one window of minutes; anything that arrives for an expired minute could not
change a later evaluation and is dropped.

Transitions
-----------
Evaluations happen at event-time instants aligned to multiples of `evaluate_every` (10:00,
10:10, ...), each over [instant - window, instant), from the first instant that sees the
earliest count (a replayed day is evaluated from its start). "Holds" means the stage-1 condition
holds at that evaluation; *n* counts consecutive holding evaluations since the last clear
evaluation, `breaker.ack` or `breaker.release`; *k* is `warnings_to_throttle` (2). "Clear
for" is measured from the first clear evaluation after the last holding one.

| state | input | next state | emits |
|---|---|---|---|
| normal (0) | evaluation, clear | normal | — |
| normal (0) | evaluation, holds, n < k | warning | W+ |
| warning (1) | evaluation, holds, n < k | warning | W-, W+ |
| normal, warning | evaluation, holds, n = k | throttled | W- (if open), W+, T+ |
| warning (1) | evaluation, clear | normal | W- |
| throttled (2) | evaluation, holds | throttled (clear clock stops) | W- (if open), W+ |
| throttled (2) | evaluation, clear for less than `clear_for` | throttled | W- (if open) |
| throttled (2) | evaluation, clear for `clear_for` (30 min) | normal | W- (if open), T- |
| throttled (2) | `breaker.release` | warning if the last evaluation held, else normal | T- |
| any | `breaker.ack` | same, n = 0 | D |
| normal, warning | `breaker.release` | same, n = 0 | D |

- W+: an `intake_overload` anomaly opens (warning, routed to operations, with the figures).
- W-: the open `intake_overload` resolves: "superseded" by the next warning, or "cleared".
- T+: command `intake.throttle` {"mode": "vip_only"}; an `intake_throttled` anomaly opens.
- T-: command `intake.resume`; `intake_throttled` resolves ("cleared" or "released").
- D: the open breaker anomaly (the one the decision targets, else the warning, else the
  throttle) is re-published with the decision recorded on it; none open, nothing emitted.

A warning stays open until the next evaluation, so at most one `intake_overload` is open and
it is open exactly while stage 1 holds. With `shadow` on, the same transitions run and the
anomalies go out, but no command does, except the `intake.resume` that lifts a throttle
which was really sent (so switching shadow on never strands a throttled intake); switched
off during a shadow throttle, the breaker sends `intake.throttle` at the next holding
evaluation, so the stage it reports is the stage the intake is really in. The
30-minute clear requirement is the hysteresis: figures hovering at the threshold re-arm
the clear clock at each holding evaluation instead of flapping throttle and resume.

Ids come from the type and the evaluation instant (`intake.resume` from the instant of the
throttle it lifts), so a replay or a restart never mints a second id.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from fractions import Fraction
from typing import Any, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, field_validator

from schemas.anomalies import (
    Anomaly,
    AnomalyState,
    AnomalyType,
    Command,
    CommandKind,
    Decision,
    DecisionKind,
    Route,
    Severity,
    Team,
    deterministic_id,
)
from streams.rules.watermark import as_us, span_us

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MINUTE = timedelta(minutes=1)
_MINUTE_US = span_us(MINUTE)
DEFAULT_WINDOW = timedelta(minutes=60)
SCOPE = "intake"
ROUTE = Route(team=Team.OPERATIONS, rule="breaker")
THROTTLE_PAYLOAD: dict[str, Any] = {"mode": "vip_only"}
STATE_VERSION = 1
# Enough to recognise a decision redelivered after a restart; decisions come at human pace.
REMEMBERED_DECISIONS = 64

Emit = Anomaly | Command


class IntakeKind(StrEnum):
    """What one counted intake event was."""

    CREATED = "created"  # an ERP order was created
    ALLOCATED = "allocated"  # a stock reservation succeeded
    ALLOCATION_FAILED = "allocation_failed"  # a stock reservation failed


_SLOT: dict[IntakeKind, int] = {
    IntakeKind.CREATED: 0,
    IntakeKind.ALLOCATED: 1,
    IntakeKind.ALLOCATION_FAILED: 2,
}


class IntakeTotals(NamedTuple):
    """Intake figures over one window."""

    created: int
    allocated: int
    failed: int

    @property
    def attempts(self) -> int:
        """Stock reservations attempted: allocated plus failed."""
        return self.allocated + self.failed

    @property
    def failure_rate(self) -> float:
        """Failed share of reservation attempts; 0.0 when there were none."""
        return self.failed / self.attempts if self.attempts else 0.0


@dataclass(slots=True)
class IntakeCounts:
    """Exact, mergeable intake counts in per-minute buckets of event time."""

    buckets: dict[int, list[int]] = field(default_factory=dict)  # epoch minute → [c, a, f]
    floor: int | None = None  # minutes below this were expired; additions there are dropped
    applied: dict[str, int] = field(default_factory=dict)  # origin → last delta seq folded in

    def add(self, kind: IntakeKind, at: datetime, n: int = 1) -> bool:
        """Count `n` events of `kind` at event time `at`; False if its minute has expired."""
        return self.add_us(kind, as_us(_utc(at)), n)

    def add_us(self, kind: IntakeKind, at_us: int, n: int = 1) -> bool:
        """`add` at event time `at_us` (µs since the epoch), for the hot path."""
        if n < 0:
            raise ValueError(f"cannot count {n} events")
        return self._add_to(at_us // _MINUTE_US, _SLOT[kind], n)

    def merge(self, other: IntakeCounts) -> int:
        """Add another set of counts into this one; returns how many events were too late."""
        dropped = 0
        for minute, row in other.buckets.items():
            for slot, n in enumerate(row):
                if n and not self._add_to(minute, slot, n):
                    dropped += n
        return dropped

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
        created = allocated = failed = 0
        for row in rows:
            if row is not None:
                created += row[0]
                allocated += row[1]
                failed += row[2]
        return IntakeTotals(created, allocated, failed)

    def expire(self, before: datetime) -> int:
        """Drop the minutes wholly before `before`, for good; returns how many buckets went."""
        cut = _minute_floor(before)
        if self.floor is not None and cut <= self.floor:
            return 0
        self.floor = cut
        old = [m for m in self.buckets if m < cut]
        for m in old:
            del self.buckets[m]
        return len(old)

    def __len__(self) -> int:
        """Number of minute buckets held."""
        return len(self.buckets)

    def to_json(self) -> dict[str, Any]:
        """A compact JSON-able form (also the wire form of a delta)."""
        out: dict[str, Any] = {"m": {str(m): row for m, row in sorted(self.buckets.items())}}
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
            if len(row) != len(_SLOT) or any(not isinstance(n, int) or n < 0 for n in row):
                raise ValueError(f"bad intake bucket {key!r}: {row!r}")
            buckets[int(key)] = [int(n) for n in row]
        floor = raw.get("f")
        return cls(
            buckets=buckets,
            floor=None if floor is None else int(floor),
            applied={str(k): int(v) for k, v in raw.get("s", {}).items()},
        )

    def _add_to(self, minute: int, slot: int, n: int) -> bool:
        if self.floor is not None and minute < self.floor:
            return False
        row = self.buckets.get(minute)
        if row is None:
            row = self.buckets[minute] = [0, 0, 0]
        row[slot] += n
        return True


class BreakerSettings(BaseModel):
    """Thresholds and timing of the intake breaker (all durations in event time)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    window: timedelta = Field(default=DEFAULT_WINDOW, description="trailing window counted")
    evaluate_every: timedelta = Field(
        default=timedelta(minutes=10), description="evaluation period, aligned to the epoch"
    )
    min_orders: int = Field(default=2200, ge=0, description="warn above this many orders")
    failure_rate: float = Field(
        default=0.08, ge=0, le=1, description="warn above this reservation failure rate"
    )
    warnings_to_throttle: int = Field(default=2, ge=1, description="consecutive warnings")
    clear_for: timedelta = Field(
        default=timedelta(minutes=30), description="clear time before a throttle lifts"
    )
    shadow: bool = Field(default=False, description="evaluate and report, issue no commands")

    @field_validator("window", "evaluate_every")
    @classmethod
    def _whole_positive_minutes(cls, value: timedelta) -> timedelta:
        # Windows are sums of minute buckets: anything finer could not be counted exactly.
        if value <= timedelta(0) or value % MINUTE:
            raise ValueError("must be a positive whole number of minutes")
        return value

    @field_validator("clear_for")
    @classmethod
    def _not_negative(cls, value: timedelta) -> timedelta:
        if value < timedelta(0):
            raise ValueError("must not be negative")
        return value


class Evaluation(NamedTuple):
    """One evaluation: its instant, the figures it saw, and the stage it left the breaker in."""

    at: datetime
    totals: IntakeTotals
    held: bool
    stage: int


@dataclass(slots=True)
class _Opened:
    """An open breaker anomaly, kept whole so that any later event can re-publish it."""

    at: datetime  # the evaluation instant that opened it
    window_start: datetime
    totals: IntakeTotals
    decisions: list[dict[str, Any]] = field(default_factory=list)
    commanded: bool = False  # throttle only: intake.throttle was really sent

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "at": self.at.isoformat(),
            "from": self.window_start.isoformat(),
            "totals": list(self.totals),
        }
        if self.decisions:
            out["d"] = self.decisions
        if self.commanded:
            out["c"] = 1
        return out

    @classmethod
    def from_json(cls, raw: dict[str, Any] | None) -> _Opened | None:
        if raw is None:
            return None
        created, allocated, failed = (int(n) for n in raw["totals"])
        return cls(
            at=_utc(datetime.fromisoformat(raw["at"])),
            window_start=_utc(datetime.fromisoformat(raw["from"])),
            totals=IntakeTotals(created, allocated, failed),
            decisions=list(raw.get("d", ())),
            commanded=bool(raw.get("c")),
        )


class Breaker:
    """Stages 1 and 2 of the intake breaker: feed it counts and the watermark, get emits."""

    def __init__(self, settings: BreakerSettings | None = None) -> None:
        self.settings = settings or BreakerSettings()
        self._rate_limit = Fraction(repr(self.settings.failure_rate))
        self._last: datetime | None = None  # last evaluation instant
        self._streak = 0  # consecutive holding evaluations since a clear one, ack or release
        self._held = False  # the condition held at the last evaluation
        self._clear_since: datetime | None = None  # first clear evaluation since the last hold
        self._warning: _Opened | None = None
        self._throttle: _Opened | None = None
        self._decided: list[str] = []  # recent decision ids, oldest first
        self._evaluations: list[Evaluation] = []  # of the last tick only; not state

    @property
    def stage(self) -> int:
        """0 normal, 1 warning held at the last evaluation, 2 throttled (or would be, in shadow)."""
        if self._throttle is not None:
            return 2
        return 1 if self._held else 0

    @property
    def evaluations(self) -> list[Evaluation]:
        """The evaluations the last tick ran (for breaker history), oldest first."""
        return list(self._evaluations)

    @property
    def last_evaluated(self) -> datetime | None:
        """The last evaluation instant, if any."""
        return self._last

    def holds(self, totals: IntakeTotals) -> bool:
        """Whether figures meet the stage-1 condition (both thresholds strictly exceeded)."""
        if totals.created <= self.settings.min_orders or not totals.attempts:
            return False
        # Integer arithmetic: 8.0% must not trip an 8% threshold through float rounding.
        limit = self._rate_limit
        return totals.failed * limit.denominator > limit.numerator * totals.attempts

    def tick(self, counts: IntakeCounts, watermark: datetime, detected_at: datetime) -> list[Emit]:
        """Evaluate each aligned instant reached since the last one; expire what none will need."""
        step = self.settings.evaluate_every
        window = self.settings.window
        latest = _floor(watermark, step)
        if self._last is not None:
            instant = _floor(self._last, step) + step
        elif counts.buckets:
            # The first tick starts with the first instant that sees the earliest count, so a
            # replayed day is evaluated from its beginning, not from where its first batch ended.
            instant = min(latest, _floor(EPOCH + MINUTE * min(counts.buckets), step) + step)
        else:
            instant = latest
        emits: list[Emit] = []
        self._evaluations = []
        while instant <= latest:
            if instant < latest and self._quiet():
                # Nothing open: every evaluation before the first whose window sees a count
                # would be clear and change nothing. Jump to it (or to the watermark), so the
                # cost is per counted minute, never per slot of an empty span of event time.
                instant = min(latest, max(instant, _first_seeing(counts, instant, window, step)))
            totals = counts.window_totals(instant, window)
            emits += self._evaluate(instant, totals, detected_at)
            self._last = instant
            self._evaluations.append(Evaluation(instant, totals, self._held, self.stage))
            instant += step
        if self._last is not None:
            counts.expire(_floor(self._last, step) + step - window)
        return emits

    def decide(self, decision: Decision, detected_at: datetime) -> list[Emit]:
        """Apply a breaker.ack or breaker.release decision."""
        if decision.kind not in (DecisionKind.BREAKER_ACK, DecisionKind.BREAKER_RELEASE):
            raise ValueError(f"the breaker takes breaker.* decisions, not {decision.kind.value}")
        if decision.decision_id in self._decided:
            return []
        self._decided.append(decision.decision_id)
        del self._decided[:-REMEMBERED_DECISIONS]
        self._streak = 0
        record = decision.model_dump(mode="json")
        release = decision.kind is DecisionKind.BREAKER_RELEASE
        if release and self._throttle is not None:
            self._throttle.decisions.append(record)
            at = max(_utc(decision.at), self._throttle.at)
            return self._lift(at, detected_at, "released", decision.by)
        target = self._target(decision.target)
        if target is None:
            return []
        kind, opened = target
        opened.decisions.append(record)
        return [self._anomaly(kind, opened, detected_at)]

    def to_json(self) -> dict[str, Any]:
        """The whole machine state, JSON-able; settings are not part of it."""
        return {
            "v": STATE_VERSION,
            "last": None if self._last is None else self._last.isoformat(),
            "streak": self._streak,
            "held": self._held,
            "clear_since": None if self._clear_since is None else self._clear_since.isoformat(),
            "warning": None if self._warning is None else self._warning.to_json(),
            "throttle": None if self._throttle is None else self._throttle.to_json(),
            "decided": list(self._decided),
        }

    @classmethod
    def from_json(
        cls, raw: dict[str, Any] | None, settings: BreakerSettings | None = None
    ) -> Breaker:
        """The inverse of to_json; None gives a fresh breaker."""
        breaker = cls(settings)
        if not raw:
            return breaker
        if raw.get("v") != STATE_VERSION:
            raise ValueError(f"unknown breaker state version {raw.get('v')!r}")
        breaker._last = _parse(raw.get("last"))
        breaker._streak = int(raw.get("streak", 0))
        breaker._held = bool(raw.get("held"))
        breaker._clear_since = _parse(raw.get("clear_since"))
        breaker._warning = _Opened.from_json(raw.get("warning"))
        breaker._throttle = _Opened.from_json(raw.get("throttle"))
        breaker._decided = [str(d) for d in raw.get("decided", ())]
        return breaker

    def _quiet(self) -> bool:
        # A clear evaluation from here changes no state and emits nothing.
        return self._last is not None and not self._held and self._throttle is None

    def _evaluate(self, at: datetime, totals: IntakeTotals, detected_at: datetime) -> list[Emit]:
        emits: list[Emit] = []
        held = self.holds(totals)
        previous, self._warning = self._warning, None
        if previous is not None:
            resolution = "superseded" if held else "cleared"
            emits.append(
                self._anomaly(
                    AnomalyType.INTAKE_OVERLOAD, previous, detected_at, at, resolution, None
                )
            )
        self._held = held
        if held:
            self._streak += 1
            self._clear_since = None
            self._warning = _Opened(at, at - self.settings.window, totals)
            emits.append(self._anomaly(AnomalyType.INTAKE_OVERLOAD, self._warning, detected_at))
            if self._throttle is None and self._streak >= self.settings.warnings_to_throttle:
                self._throttle = _Opened(at, at - self.settings.window, totals)
                if not self.settings.shadow:
                    emits.append(self._throttle_command(at))
                emits.append(
                    self._anomaly(AnomalyType.INTAKE_THROTTLED, self._throttle, detected_at)
                )
            elif (
                self._throttle is not None
                and not self._throttle.commanded
                and not self.settings.shadow
            ):
                # Opened in shadow mode, now live and still overloaded: throttle for real.
                emits.append(self._throttle_command(at))
        else:
            self._streak = 0
            if self._clear_since is None:
                self._clear_since = at
            if self._throttle is not None and at - self._clear_since >= self.settings.clear_for:
                emits += self._lift(at, detected_at, "cleared", None)
        return emits

    def _throttle_command(self, at: datetime) -> Command:
        assert self._throttle is not None
        self._throttle.commanded = True
        return Command(
            command_id=_command_id(CommandKind.INTAKE_THROTTLE, self._throttle.at),
            kind=CommandKind.INTAKE_THROTTLE,
            issued_at=at,
            payload=dict(THROTTLE_PAYLOAD),
        )

    def _lift(
        self, at: datetime, detected_at: datetime, resolution: str, by: str | None
    ) -> list[Emit]:
        throttle, self._throttle = self._throttle, None
        assert throttle is not None
        emits: list[Emit] = []
        # Lift only a throttle that went out, whatever the mode is now: shadow never sends
        # a resume nobody asked for, and never strands an intake it throttled while live.
        if throttle.commanded:
            emits.append(
                Command(
                    command_id=_command_id(CommandKind.INTAKE_RESUME, throttle.at),
                    kind=CommandKind.INTAKE_RESUME,
                    issued_at=at,
                    payload={
                        "reason": resolution,
                        "throttle_command_id": _command_id(
                            CommandKind.INTAKE_THROTTLE, throttle.at
                        ),
                    },
                )
            )
        emits.append(
            self._anomaly(AnomalyType.INTAKE_THROTTLED, throttle, detected_at, at, resolution, by)
        )
        return emits

    def _target(self, target: str) -> tuple[AnomalyType, _Opened] | None:
        # The anomaly the decision names, else the open warning, else the open throttle.
        candidates: list[tuple[AnomalyType, _Opened]] = []
        if self._warning is not None:
            candidates.append((AnomalyType.INTAKE_OVERLOAD, self._warning))
        if self._throttle is not None:
            candidates.append((AnomalyType.INTAKE_THROTTLED, self._throttle))
        for kind, opened in candidates:
            if _anomaly_id(kind, opened.at) == target:
                return kind, opened
        return candidates[0] if candidates else None

    def _anomaly(
        self,
        kind: AnomalyType,
        opened: _Opened,
        detected_at: datetime,
        resolved_at: datetime | None = None,
        resolution: str | None = None,
        by: str | None = None,
    ) -> Anomaly:
        figures = opened.totals
        extra: dict[str, Any] = {
            "orders_created": figures.created,
            "allocated": figures.allocated,
            "allocation_failed": figures.failed,
            "failure_rate": figures.failure_rate,
            "window_start": opened.window_start,
            "window_end": opened.at,
            "shadow": self.settings.shadow,
        }
        if kind is AnomalyType.INTAKE_THROTTLED:
            extra["mode"] = THROTTLE_PAYLOAD["mode"]
        if resolution is not None:
            extra["resolution"] = resolution
        return Anomaly.model_validate(
            {
                "anomaly_id": _anomaly_id(kind, opened.at),
                "type": kind,
                "state": AnomalyState.OPEN if resolved_at is None else AnomalyState.RESOLVED,
                "severity": (
                    Severity.WARNING if kind is AnomalyType.INTAKE_OVERLOAD else Severity.CRITICAL
                ),
                "opened_at": opened.at,
                "detected_at": detected_at,
                "resolved_at": resolved_at,
                "route": ROUTE,
                "summary": self._summary(kind, opened, resolved_at, resolution, by),
                "decisions": list(opened.decisions),
                **extra,
            }
        )

    def _summary(
        self,
        kind: AnomalyType,
        opened: _Opened,
        resolved_at: datetime | None,
        resolution: str | None,
        by: str | None,
    ) -> str:
        figures = opened.totals
        minutes = (opened.at - opened.window_start) // MINUTE
        facts = (
            f"{figures.created} ERP orders created and {figures.failure_rate:.1%} of stock "
            f"reservations failed ({figures.failed} of {figures.attempts}) in the {minutes} min "
            f"to {_clock(opened.at)}"
        )
        if kind is AnomalyType.INTAKE_OVERLOAD:
            if resolved_at is None:
                return f"Intake overload: {facts}."
            if resolution == "superseded":
                return f"Intake overload ({facts}), superseded at {_clock(resolved_at)}."
            return f"Intake overload ({facts}), clear at {_clock(resolved_at)}."
        verb = "would be throttled (shadow mode)" if self.settings.shadow else "throttled"
        opened_text = (
            f"Intake {verb} to VIP orders after {self.settings.warnings_to_throttle} "
            f"consecutive overload warnings: {facts}"
        )
        if resolved_at is None:
            return f"{opened_text}."
        if resolution == "released":
            return f"{opened_text}; released by {by} at {_clock(resolved_at)}."
        clear_minutes = self.settings.clear_for // MINUTE
        return f"{opened_text}; clear for {clear_minutes} min, resumed at {_clock(resolved_at)}."


def _anomaly_id(kind: AnomalyType, at: datetime) -> str:
    return deterministic_id("anomaly", kind.value, SCOPE, at.isoformat())


def _command_id(kind: CommandKind, at: datetime) -> str:
    return deterministic_id("command", kind.value, SCOPE, at.isoformat())


def _utc(at: datetime) -> datetime:
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(f"event time must carry an offset: {at.isoformat()}")
    return at.astimezone(UTC)


def _parse(raw: str | None) -> datetime | None:
    return None if raw is None else _utc(datetime.fromisoformat(raw))


def _first_seeing(
    counts: IntakeCounts, instant: datetime, window: timedelta, step: timedelta
) -> datetime:
    # The first aligned instant from which a window [at - window, at) sees the earliest count
    # the window of `instant` may see; far future when there is none.
    start = _minute_floor(instant) - window // MINUTE
    counted = min((m for m in counts.buckets if m >= start), default=None)
    if counted is None:
        return datetime.max.replace(tzinfo=UTC)
    return _floor(EPOCH + MINUTE * counted, step) + step


def _floor(at: datetime, step: timedelta) -> datetime:
    # Aligned to the epoch, so every worker and every restart agrees on the instants.
    return EPOCH + ((_utc(at) - EPOCH) // step) * step


def _minute_floor(at: datetime) -> int:
    return (_utc(at) - EPOCH) // MINUTE


def _exact_minute(at: datetime) -> int:
    offset = _utc(at) - EPOCH
    if offset % MINUTE:
        raise ValueError(f"window ends must be whole minutes: {at.isoformat()}")
    return offset // MINUTE


def _whole_minutes(span: timedelta, name: str) -> int:
    if span < timedelta(0) or span % MINUTE:
        raise ValueError(f"{name} must be a non-negative whole number of minutes: {span}")
    return span // MINUTE


def _clock(at: datetime) -> str:
    return at.strftime("%Y-%m-%d %H:%M UTC")
