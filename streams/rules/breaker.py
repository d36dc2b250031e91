"""The intake circuit breaker, stages 1 and 2 (contract §7): a pure state machine on event time.

Stage 1 warns when, over the trailing window, more than `min_orders` ERP orders were created
*and* more than `failure_rate` of the orders whose stock reservation was attempted in the
window failed it. Stage 2 throttles intake to VIP orders after `warnings_to_throttle`
consecutive warnings with no `breaker.ack` in between, and lifts once the condition has been
clear for `clear_for`, or at once on `breaker.release`. Stage 3 is per order (stalled
tracking) and lives with the ghost rules; `Breaker.stage` reports 0, 1 or 2.

What is counted
---------------
Orders, not events: each order counts once per figure, in one minute of event time, however
many systems report it and however often (`streams.rules.intake.order_intake`).

* Created: in the minute of the ERP's earliest stage event (its creation in the ERP; an
  order keyed in from a spreadsheet at 15:00 is intake at 15:00, whatever its `placed_at`).
* Reservation: only the reserving systems count (`reserving_systems`, the ERP and the WMS
  by default; the CRM and the carrier only mirror the status and are refused). The order's
  reservation *failed* if any of them reported `allocation_failed` for it, counted in the
  minute of the earliest such report; else it *succeeded* if any reported `allocated` (or
  `picking`, later in the same phase), in the minute of the earliest; else it was not
  attempted. The other reserving system's mirror of the outcome, a re-send with a new event
  id, a later report: none counts again.
* Retry: a success after a failure (restocked, or moved from another warehouse, the seeds'
  跨仓调拨) leaves the order one *failed* reservation, at its first failure; the retry is
  not a second attempt. The seeds' users read the rate as stock pressure at intake in the
  peak hour (库存预占失败率 beside 单小时订单量): a failure retried an hour later was still
  an order the stock could not cover when it came in, and the retries are what the warning
  is about. Were a retry to erase its failure, automatic retries would hide a shortage
  exactly while it lasts: in concord.scenario three of four failed promotion reservations
  succeed 20 min to 3 h later, and the promotion would never warn. Likewise a failure after
  a success (the WMS short of stock at the pick) makes the order failed, at that failure.

An order's counts are a function of its per-order state, and that state is a function of
the set of its events (each field a min or max over them), so the counts do not depend on
arrival order, batching or re-sends. They are counted as of each instant: an evaluation at
instant I sees each order as its events up to I show it (`OrderState.as_of`), however far
ahead of I the rest were read. A success a later short pick takes back stays a success for
the evaluations before the short pick; from it on the order is failed, at the short pick
(streams.rules.intake: `IntakeTimes.history`, and `IntakeCounts.later` for the take-back,
seen from its cause on). Counting once at an order's first outcome, with no correction, was
the alternative: no negative counts, but the count would follow the first event to
*arrive* (a retry's success arriving before the failure it retried would count a success
for good). Moving the order's counts as its events arrive, each move from its event's time,
was the next: but then the counts followed the arrival order after all (a short pick read
before the success it takes back moved nothing, and the success never counted), and could
not be rebuilt from the states.

Counting across workers
-----------------------
The counts are global, so they must be exact and mergeable. Each worker keeps its orders'
counts per input partition in an `IntakeCounts`, one bucket per epoch minute of event time;
an order's events all come on its partition, so all of its counts are in one partition's.
They are a function of the partition's order states: updated event by event (an order
moves only when the event times its counts depend on change) and rebuilt from the states
after every assignment, to the same counts. After each batch the worker sends each
partition's counts whole, a snapshot, to a single-partition internal topic as
`{origin: "<topic>/<partition>", seq: <last input offset read>, snapshot:
counts.to_json(), wm: <its watermark>}` (the counts only when they changed since it last
sent them; the watermark always, so the quietest partition never holds the clock). One
breaker agent consumes that partition, so exactly one `Breaker` exists in the consumer
group; it keeps each origin's latest snapshot (`PartitionSnapshots`) and calls `tick` with
their sum at the minimum of the origins' watermarks, so every minute before an evaluation
instant has arrived from every partition when that instant is evaluated.

Why snapshots: after a crash the per-order stage reads its partitions again from the
committed offsets, in batches cut elsewhere. A delta per batch, folded once per (origin,
last offset), then overlapped one folded before the crash, and the orders in the overlap
counted twice. A snapshot at an offset is the same whatever the batches (the states at an
offset are those of the events up to it), so one sent again at an offset the breaker
already holds, or a lower one, is dropped, and a later one replaces what it held. A
partition's counts hold only the minutes a window can still see at the event time it last
reported, less the allowed lateness (no event on time can change an earlier one); the
breaker keeps the earlier minutes from the snapshots that held them. Minute buckets add up
exactly, in any order and any grouping, and evaluation instants sit on whole minutes, so a
window is a sum of whole buckets: no sampling, no approximation. `tick` expires the minutes
no later evaluation can see, which bounds memory at about one window of minutes per
partition.

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
from fractions import Fraction
from typing import Annotated, Any, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_settings import NoDecode

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
from schemas.stages import Source
from streams.rules.intake import (
    DEFAULT_WINDOW,
    EPOCH,
    MINUTE,
    STOCK_SYSTEMS,
    IntakeCounts,
    IntakeTotals,
    reserving_systems_named,
    utc,
)

SCOPE = "intake"
ROUTE = Route(team=Team.OPERATIONS, rule="breaker")
THROTTLE_PAYLOAD: dict[str, Any] = {"mode": "vip_only"}
STATE_VERSION = 1
# Enough to recognise a decision redelivered after a restart; decisions come at human pace.
REMEMBERED_DECISIONS = 64

Emit = Anomaly | Command


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
    # NoDecode: from the environment it is "erp,wms", as the stages are, not JSON.
    reserving_systems: Annotated[tuple[Source, ...], NoDecode] = Field(
        default=STOCK_SYSTEMS,
        description="the systems whose allocated / allocation_failed are stock reservations",
    )

    @field_validator("window", "evaluate_every")
    @classmethod
    def _whole_positive_minutes(cls, value: timedelta) -> timedelta:
        # Windows are sums of minute buckets: anything finer could not be counted exactly.
        if value <= timedelta(0) or value % MINUTE:
            raise ValueError("must be a positive whole number of minutes")
        return value

    @field_validator("reserving_systems", mode="before")
    @classmethod
    def _stock_systems(cls, value: Any) -> tuple[Source, ...]:
        return reserving_systems_named(value)

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
            at=utc(datetime.fromisoformat(raw["at"])),
            window_start=utc(datetime.fromisoformat(raw["from"])),
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
        elif minutes := counts.minutes():
            # The first tick starts with the first instant that sees the earliest count, so a
            # replayed day is evaluated from its beginning, not from where its first batch ended.
            instant = min(latest, _floor(EPOCH + MINUTE * min(minutes), step) + step)
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
        needed = self.needed_from()
        if needed is not None:
            counts.expire(needed)
        return emits

    def needed_from(self) -> datetime | None:
        """The earliest event time a later evaluation can still see; None before the first."""
        if self._last is None:
            return None
        step = self.settings.evaluate_every
        return _floor(self._last, step) + step - self.settings.window

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
            at = max(utc(decision.at), self._throttle.at)
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
            f"{figures.created} ERP orders created and {figures.failure_rate:.1%} of the "
            f"orders' stock reservations failed ({figures.failed} of {figures.attempts}) in the "
            f"{minutes} min to {_clock(opened.at)}"
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


def _parse(raw: str | None) -> datetime | None:
    return None if raw is None else utc(datetime.fromisoformat(raw))


def _first_seeing(
    counts: IntakeCounts, instant: datetime, window: timedelta, step: timedelta
) -> datetime:
    # The first aligned instant from which a window [at - window, at) sees the earliest count
    # the window of `instant` may see; far future when there is none.
    start = (utc(instant) - EPOCH) // MINUTE - window // MINUTE
    counted = min((m for m in counts.minutes() if m >= start), default=None)
    if counted is None:
        return datetime.max.replace(tzinfo=UTC)
    return _floor(EPOCH + MINUTE * counted, step) + step


def _floor(at: datetime, step: timedelta) -> datetime:
    # Aligned to the epoch, so every worker and every restart agrees on the instants.
    return EPOCH + ((utc(at) - EPOCH) // step) * step


def _clock(at: datetime) -> str:
    return at.strftime("%Y-%m-%d %H:%M UTC")
