"""Ghost-order rules (contract §5) and stage 3 of the breaker (§7), on one order at a time.

`GhostRules.evaluate(state, ghosts, now, detected_at, silent)` looks at one order's join
state at event time `now` and returns what to publish plus the next event time at which the
answer could change on its own. The wiring keeps that time in a `TimerWheel`, so an order is
looked at when one of its events arrives or its timer is due, never by scanning the table.

The rules, exactly (all thresholds are `GhostSettings` fields; µs precision):

* **missing_in_system** (warning; systems [erp, S]) for S in the order's current scope
  (`OrderState.scope()`): deadline = scope entry + 15 min (CRM) / 2 h (WMS) / 24 h
  (logistics), where the scope entry is the ERP's first event (CRM), the ERP's first event at
  fulfilling or shipped (WMS), at shipped or delivered (logistics). It holds at `now` when
  `now >= deadline` and S has no event with `occurred_at <= now`. It resolves once S has
  reported (at the report's event time, via the timer, if the report is ahead of `now`) or
  is out of scope. Trigger: S, so there is one per order and system.
* **orphan_order** (warning; systems [erp, the systems that have it]): the order has events
  from CRM/WMS/logistics but none from the ERP at or before `now`, and `now` is at least 30 min
  after the first non-ERP event. Resolves when the ERP reports the order. Trigger: none (one
  per order).
* **status_conflict**: the *blamed* systems are the in-scope systems whose latest phase
  differs from the ERP's (a system that has not reported is `missing_in_system`, not a
  conflict), plus, while the ERP says `cancelled`, a WMS or carrier showing `shipped` or
  `delivered` in or out of scope (a *contradiction*). `GhostState.conflict_since_us` keeps when
  the current, uninterrupted disagreement began: the latest phase entry (ERP's and each
  blamed system's) of the configuration that started it. Warning at `since + 30 min`;
  critical at once (at the contradiction's own time) for a contradiction, escalating an open
  warning under the same id. Resolves when no system is blamed. Trigger: `since`.
* **stalled_tracking** (stage 3): ERP phase `shipped` and the carrier has reported at least
  once; anchor = max(ERP's first shipped event, carrier's latest event); warning at
  `anchor + 24 h`, critical at `anchor + 72 h` (same id, re-emitted). A new carrier event
  moves the anchor: the stall resolves, and a later one is a new stall. A carrier that never
  reported is `missing_in_system` (logistics) instead, not two flags for one fact. When a
  stall opens, and only then, commands `carrier.exception_ticket` and `customer.notify` go
  out with ids derived from the anomaly id. Trigger: the anchor.

Thresholds are inclusive: a rule "after D" fires when `now - start >= D` (at the deadline to
the microsecond, not one µs later), so "more than 30 min" reads as "30 min or more".
`opened_at` is the deadline (the event time the condition became true); `resolved_at` is the
`now` of the evaluation that saw it go; severity never goes down.

Silent sources (see streams.rules.freshness): while a source is silent, a flag it alone would
cause is *held back* rather than opened or escalated: missing_in_system for that system,
stalled_tracking while the carrier feed is silent, orphan_order while the ERP is silent, and
a non-contradiction status_conflict when the ERP or every blamed system is silent. Anomalies
already open stay open. `GhostOutcome.held` names the sources that held something back; the
wiring parks the order under them (`TimerWheel.hold`) and re-evaluates it when the source
catches up (`TimerWheel.release`): the flags then fire if still true.

**As of `now`.** Every rule judges the order as its events with `occurred_at <= now` show
it (`OrderState.as_of`), never its latest state: when one source's backlog holds the watermark
back while the others are read far ahead, a deadline at T still sees the order as it stood at
T. Events that waited in ingest for their reference's link (or, the ERP's, for the order's
details) count from the event that released them (`SystemView.known_us`): before then the
order is judged without them, and a rule they make true holds from then at the earliest
(its `opened_at` is not dated before anyone could know). The next evaluation asked for is
the earlier of the rules' next deadline and the next instant from which an event already
applied counts. An order is never judged at an earlier time
than it was last judged (`GhostState.judged_us`): a late event or a timer rebuilt after a
restart is judged at that time instead.

Wiring, per event for order X (watermark `wm`; `silent` from freshness):

    for due in wheel.due(wm) until empty:      # before applying the event
        evaluate(due.order_id, now=due.at)     # each at its own deadline
    join.apply(state_X, event)
    t = counts_from_us(event)                  # its time, or its link's if it waited
    if t > wm: wheel.schedule_by(X, t)         # judged once time reaches it
    else: out = rules.evaluate(state_X, ghosts_X, wm, wall, silent)   # a late event
        wheel.schedule(X, out.next_deadline); for s in out.held: wheel.hold(X, s)

and on every idle watermark advance, the same `due` loop. So an order is judged exactly at
its events' times and its deadlines, in event-time order, whatever the batching, the read
order within the allowed lateness, or how far the watermark jumped.
"""

from __future__ import annotations

import heapq
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, model_validator

from schemas.anomalies import (
    GHOST_TYPES,
    Anomaly,
    AnomalyType,
    Command,
    CommandKind,
    Severity,
    deterministic_id,
)
from schemas.routing import Priority, RoutingTable, default_routing
from schemas.stages import PHASE_OF, Phase, Source
from streams.rules.lifecycle import SEVERITY_RANK, AnomalyBook, BookEntry, EvidenceItem
from streams.rules.order_state import (
    OrderJoin,
    OrderState,
    SystemView,
    in_scope,
    reached_fulfilling,
)
from streams.rules.routing import RoutingFacts, route
from streams.rules.watermark import as_us, from_us, span_us

NOTIFY_PAYLOAD: dict[str, str] = {"channel": "sms", "template": "shipment_delayed"}
DEFAULT_MAX_TIMERS = 1_000_000

Emit = Anomaly | Command


class GhostSettings(BaseModel):
    """Thresholds of the ghost-order rules (contract §5 defaults), all in event time."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    crm_missing_after: timedelta = Field(
        default=timedelta(minutes=15), description="CRM silent this long after ERP creation"
    )
    wms_missing_after: timedelta = Field(
        default=timedelta(hours=2), description="WMS silent this long after ERP fulfilling"
    )
    logistics_missing_after: timedelta = Field(
        default=timedelta(hours=24), description="carrier silent this long after ERP shipped"
    )
    orphan_after: timedelta = Field(
        default=timedelta(minutes=30), description="no ERP order this long after a first event"
    )
    conflict_after: timedelta = Field(
        default=timedelta(minutes=30), description="in-scope systems disagree this long"
    )
    stall_after: timedelta = Field(
        default=timedelta(hours=24), description="shipped and no carrier event this long"
    )
    stall_critical_after: timedelta = Field(
        default=timedelta(hours=72), description="a stall turns critical after this long"
    )

    @model_validator(mode="after")
    def _sane(self) -> GhostSettings:
        for name in type(self).model_fields:
            value = getattr(self, name)
            if value <= timedelta(0):
                raise ValueError(f"{name} must be positive, got {value}")
        if self.stall_critical_after <= self.stall_after:
            raise ValueError("stall_critical_after must be longer than stall_after")
        return self

    def missing_after(self, source: Source) -> timedelta:
        """The missing_in_system threshold of one target system."""
        if source is Source.CRM:
            return self.crm_missing_after
        if source is Source.WMS:
            return self.wms_missing_after
        if source is Source.LOGISTICS:
            return self.logistics_missing_after
        raise ValueError(f"the ERP is the master; it cannot be missing an order ({source})")


@dataclass(slots=True)
class GhostState:
    """What the ghost rules remember about one order, next to its join state."""

    book: AnomalyBook
    conflict_since_us: int | None = None  # start of the current uninterrupted disagreement
    next_us: int | None = None  # the deadline last asked for (rebuilds the timer wheel)
    judged_us: int | None = None  # the event time of the last evaluation (kept with a book)

    @classmethod
    def new(cls, order_id: str) -> GhostState:
        """An empty state for one order."""
        return cls(AnomalyBook(order_id))

    @property
    def next_deadline(self) -> datetime | None:
        """The deadline the last evaluation asked for."""
        return None if self.next_us is None else from_us(self.next_us)

    @property
    def is_empty(self) -> bool:
        """Nothing worth keeping: the table entry can be deleted."""
        return not self.book.entries and self.conflict_since_us is None and self.next_us is None

    def to_json(self) -> dict[str, Any]:
        """A compact JSON-able form."""
        out: dict[str, Any] = {"b": self.book.to_json()}
        if self.conflict_since_us is not None:
            out["c"] = self.conflict_since_us
        if self.next_us is not None:
            out["n"] = self.next_us
        if self.judged_us is not None and self.book.entries:
            out["j"] = self.judged_us
        return out

    @classmethod
    def from_json(cls, raw: Mapping[str, Any] | None, order_id: str | None = None) -> GhostState:
        """The inverse of to_json; None gives an empty state for `order_id`."""
        if not raw:
            return cls(AnomalyBook(order_id))
        book = AnomalyBook.from_json(raw.get("b"))
        if book.order_id is None:
            book.order_id = order_id
        return cls(book, raw.get("c"), raw.get("n"), raw.get("j"))


@dataclass(slots=True)
class GhostOutcome:
    """What one evaluation produced."""

    emits: list[Emit]
    next_us: int | None  # schedule the order's timer here, µs (None: cancel it)
    held: frozenset[Source] = frozenset()  # silent sources that held a flag back
    judged: OrderState | None = None  # the order as of the evaluation's time

    @property
    def next_deadline(self) -> datetime | None:
        """The order's next deadline (None: cancel its timer)."""
        return None if self.next_us is None else from_us(self.next_us)


class GhostRules:
    """The ghost-order rules on one order's state; pure, event time passed in."""

    __slots__ = ("_th", "routing", "settings")

    def __init__(
        self, settings: GhostSettings | None = None, routing: RoutingTable | None = None
    ) -> None:
        self.settings = settings or GhostSettings()
        self.routing = routing if routing is not None else default_routing()
        self._th = _Thresholds.of(self.settings)

    def evaluate(
        self,
        state: OrderState,
        ghosts: GhostState,
        now: datetime,
        detected_at: datetime,
        silent: Collection[Source] = frozenset(),
    ) -> GhostOutcome:
        """Open, escalate and resolve the order's ghost anomalies as of event time `now`."""
        # Never back in time: an order judged at T is not judged again at an earlier time (a
        # late event, a timer rebuilt after a restart), which would undo what T found.
        now_us = as_us(now)
        if ghosts.judged_us is not None and now_us < ghosts.judged_us:
            now_us = ghosts.judged_us
            now = from_us(now_us)
        ghosts.judged_us = now_us
        state, findings, next_us, since = _judge(self._th, state, ghosts.conflict_since_us, now_us)
        ghosts.conflict_since_us = since
        ghosts.next_us = next_us
        book = ghosts.book
        if not findings and not book.has_open:
            return GhostOutcome([], next_us, judged=state)
        emits: list[Emit] = []
        held: set[Source] = set()
        live: set[str] = set()
        for finding in findings:
            anomaly_id = ghost_anomaly_id(finding.type, state.order_id, finding.trigger)
            live.add(anomaly_id)
            known = book.get(anomaly_id)
            if known is not None and (
                not known.is_open
                or SEVERITY_RANK[finding.severity] <= SEVERITY_RANK[known.severity]
            ):
                continue
            blocked = finding.held_by(silent)
            if blocked:
                held.update(blocked)
                continue
            entry = self._entry(state, finding, anomaly_id, now_us)
            anomaly = book.record(entry, detected_at)
            if anomaly is None:
                continue
            emits.append(anomaly)
            if known is None and finding.type is AnomalyType.STALLED_TRACKING:
                emits += stall_commands(state, anomaly_id, now)
        if book.has_open:
            for entry in book.open_entries():
                if entry.type in GHOST_TYPES and entry.anomaly_id not in live:
                    summary = f"{entry.summary} {_resolution_note(state, entry, now_us)}"
                    resolved = book.resolve(entry.anomaly_id, now_us, detected_at, summary=summary)
                    if resolved is not None:
                        emits.append(resolved)
        return GhostOutcome(emits, next_us, frozenset(held), judged=state)

    def next_deadline(
        self, state: OrderState, ghosts: GhostState, now: datetime
    ) -> datetime | None:
        """The earliest event time after `now` at which a rule on this order could change."""
        _, _, next_us, _ = _judge(self._th, state, ghosts.conflict_since_us, as_us(now))
        return None if next_us is None else from_us(next_us)

    def _entry(
        self, state: OrderState, finding: _Finding, anomaly_id: str, now_us: int
    ) -> BookEntry:
        systems = tuple(s.value for s in finding.systems)
        facts = _routing_facts(state, finding.type, finding.severity, systems)
        owner = route(facts, self.routing)
        summary, evidence, extra = _DESCRIBE[finding.type](state, finding, now_us)
        return BookEntry(
            anomaly_id=anomaly_id,
            type=finding.type,
            severity=finding.severity,
            opened_us=finding.opened_us,
            team=owner.team,
            rule=owner.rule,
            systems=systems,
            summary=summary,
            evidence=tuple(evidence),
            extra=extra,
        )


def next_deadline(
    state: OrderState, ghosts: GhostState, settings: GhostSettings, now: datetime
) -> datetime | None:
    """The earliest event time after `now` at which some ghost rule on this order could change."""
    th = _Thresholds.of(settings)
    _, _, next_us, _ = _judge(th, state, ghosts.conflict_since_us, as_us(now))
    return None if next_us is None else from_us(next_us)


def evaluate_unlinked(
    rules: GhostRules,
    join: OrderJoin,
    ref: str,
    held: Iterable[Mapping[str, Any]],
    ghosts: GhostState,
    now: datetime,
    detected_at: datetime,
    link_us: int | None = None,
) -> GhostOutcome:
    """The ghost rules on a source reference no ERP order is linked to (yet, as of `now`).

    Ingest holds such a reference's events until a link arrives; they are joined here into an
    order named after the reference, so `orphan_order` opens once it has waited `orphan_after`
    (its id, summary and routing as for any order). `link_us` is the event time of its link,
    once one was read: before it the reference is judged as unlinked (ingest reads ahead of
    event time, so a link can be read before the reference's deadlines come up); at or after
    it, its orphan, if open, resolves at the link (or where it was last judged, for a link
    read behind event time) and nothing more is asked.
    """
    if link_us is not None and as_us(now) >= link_us:
        resolved = max(link_us, ghosts.judged_us or link_us)
        emits: list[Emit] = [*ghosts.book.resolve_all(resolved, detected_at, "linked")]
        return GhostOutcome(emits, None)
    state = OrderState(order_id=ref)
    for event in held:
        # As the reference's own: from their own times (not from the link, once it came).
        join.apply(state, {**event, "order_id": ref, "linked_us": None})
    outcome = rules.evaluate(state, ghosts, now, detected_at)
    if link_us is not None and (outcome.next_us is None or outcome.next_us > link_us):
        outcome.next_us = link_us
    return outcome


def ghost_anomaly_id(type_: AnomalyType, order_id: str, trigger: str) -> str:
    """The deterministic id of a ghost anomaly: type, order and what triggered it."""
    return deterministic_id("anomaly", type_.value, order_id, trigger)


def stall_commands(state: OrderState, anomaly_id: str, issued_at: datetime) -> list[Command]:
    """Stage 3 (§7) for one stall: a carrier exception ticket and a delay SMS to the customer."""
    return [
        Command(
            command_id=deterministic_id(
                "command", CommandKind.CARRIER_EXCEPTION_TICKET.value, anomaly_id
            ),
            kind=CommandKind.CARRIER_EXCEPTION_TICKET,
            issued_at=issued_at,
            payload={
                "order_id": state.order_id,
                "carrier": state.carrier,
                "tracking_no": state.tracking_no,
                "anomaly_id": anomaly_id,
            },
        ),
        Command(
            command_id=deterministic_id("command", CommandKind.CUSTOMER_NOTIFY.value, anomaly_id),
            kind=CommandKind.CUSTOMER_NOTIFY,
            issued_at=issued_at,
            payload={"order_id": state.order_id, **NOTIFY_PAYLOAD, "anomaly_id": anomaly_id},
        ),
    ]


# --- the timer wheel -----------------------------------------------------------------------


class Due(NamedTuple):
    """An order whose timer is due, and the event time it asked to be looked at."""

    order_id: str
    at: datetime


class TimerWheel:
    """One pending deadline per order, popped when the watermark passes it; pure, bounded.

    `schedule` replaces the order's previous deadline (the latest call wins, earlier or later).
    `due(watermark)` pops every deadline `<= watermark`, earliest first. Evaluate each order at
    its own `at` (not at the watermark), before applying the event that moved the watermark:
    the result then does not depend on how far the watermark jumped. An evaluation that
    schedules another deadline already `<= watermark` is popped by the next `due` call, so
    call it until it returns nothing.

    `hold(order, source)` parks an order whose flag a silent source held back; `release(source,
    at)` makes the parked orders due at `at` (or earlier, if already scheduled earlier).

    Bounded: past `max_entries` scheduled orders, the farthest tenth is dropped (counted in
    `dropped`; `GhostState.next_us` keeps each order's deadline, so a table scan can rebuild
    them); holds past `max_entries` are dropped the same way.

    Moving a deadline later pushes nothing: the heap keeps the earlier entry, which is moved
    to the current deadline when it reaches the top (an order rescheduled on each of its
    events, as before event time starts, then costs no heap growth).
    """

    __slots__ = ("_at", "_heap", "_held", "dropped", "max_entries")

    def __init__(self, max_entries: int = DEFAULT_MAX_TIMERS) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1, got {max_entries}")
        self.max_entries = max_entries
        self._at: dict[str, int] = {}
        # Min-heap with lazy deletion: an item whose time no longer matches _at is stale.
        self._heap: list[tuple[int, str]] = []
        self._held: dict[Source, set[str]] = {}
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._at)

    def __contains__(self, order_id: object) -> bool:
        return order_id in self._at

    def scheduled(self, order_id: str) -> datetime | None:
        """The order's pending deadline, if any."""
        at = self._at.get(order_id)
        return None if at is None else from_us(at)

    @property
    def next_at(self) -> datetime | None:
        """The earliest pending deadline."""
        self._skip_stale()
        return from_us(self._heap[0][0]) if self._heap else None

    def schedule(self, order_id: str, at: datetime | None) -> None:
        """Set the order's one deadline (None cancels it)."""
        self.schedule_us(order_id, None if at is None else as_us(at))

    def schedule_us(self, order_id: str, at_us: int | None) -> None:
        """`schedule` in µs, for the hot path."""
        if at_us is None:
            self._at.pop(order_id, None)
            return
        current = self._at.get(order_id)
        if current == at_us:
            return
        self._at[order_id] = at_us
        if current is not None and current < at_us:
            # Later: the heap's entry for `current` (or an earlier one) stands in for it.
            return
        heapq.heappush(self._heap, (at_us, order_id))
        if len(self._at) > self.max_entries:
            self._shed()
        elif len(self._heap) > 2 * len(self._at) + 64:
            self._compact()

    def schedule_by_us(self, order_id: str, at_us: int) -> None:
        """Make the order due no later than `at_us` (an earlier deadline stays)."""
        current = self._at.get(order_id)
        if current is None or at_us < current:
            self.schedule_us(order_id, at_us)

    def cancel(self, order_id: str) -> None:
        """Forget the order's deadline and holds (it left the state table)."""
        self._at.pop(order_id, None)
        for parked in self._held.values():
            parked.discard(order_id)

    def due(self, watermark: datetime) -> list[Due]:
        """Pop every deadline at or before `watermark`, earliest first."""
        limit = as_us(watermark)
        out: list[Due] = []
        heap = self._heap
        while True:
            self._skip_stale()
            if not heap or heap[0][0] > limit:
                return out
            at_us, order_id = heapq.heappop(heap)
            del self._at[order_id]
            out.append(Due(order_id, from_us(at_us)))

    def hold(self, order_id: str, source: Source) -> None:
        """Park an order until `source` catches up."""
        parked = self._held.setdefault(source, set())
        if order_id in parked:
            return
        if sum(len(p) for p in self._held.values()) >= self.max_entries:
            self.dropped += 1
            return
        parked.add(order_id)

    def held(self, source: Source) -> frozenset[str]:
        """The orders parked under a source."""
        return frozenset(self._held.get(source, ()))

    def release(self, source: Source, at: datetime) -> int:
        """Make every order parked under `source` due by `at`; returns how many."""
        parked = self._held.pop(source, set())
        at_us = as_us(at)
        for order_id in sorted(parked):
            current = self._at.get(order_id)
            if current is None or current > at_us:
                self.schedule_us(order_id, at_us)
        return len(parked)

    def to_json(self) -> dict[str, Any]:
        """A compact JSON-able form: deadlines in µs, holds by source."""
        out: dict[str, Any] = {"t": [[o, at] for o, at in sorted(self._at.items())]}
        held = {s.value: sorted(p) for s, p in sorted(self._held.items()) if p}
        if held:
            out["h"] = held
        if self.dropped:
            out["d"] = self.dropped
        return out

    @classmethod
    def from_json(
        cls, raw: Mapping[str, Any] | None, max_entries: int = DEFAULT_MAX_TIMERS
    ) -> TimerWheel:
        """The inverse of to_json; None gives an empty wheel."""
        wheel = cls(max_entries)
        if not raw:
            return wheel
        for order_id, at_us in raw.get("t", ()):
            wheel.schedule_us(order_id, int(at_us))
        for source, orders in raw.get("h", {}).items():
            for order_id in orders:
                wheel.hold(order_id, Source(source))
        wheel.dropped += int(raw.get("d", 0))
        return wheel

    @classmethod
    def rebuild(
        cls, deadlines: Iterable[tuple[str, int | None]], max_entries: int = DEFAULT_MAX_TIMERS
    ) -> TimerWheel:
        """A wheel from (order id, GhostState.next_us) pairs, e.g. a scan of the state table."""
        wheel = cls(max_entries)
        for order_id, at_us in deadlines:
            if at_us is not None:
                wheel.schedule_us(order_id, at_us)
        return wheel

    def _skip_stale(self) -> None:
        # Until the top entry is a current deadline: a stale one (cancelled, or an earlier
        # entry was pushed since) is dropped, one whose deadline moved later is moved.
        heap = self._heap
        while heap:
            at_us, order_id = heap[0]
            current = self._at.get(order_id)
            if current == at_us:
                return
            if current is None or current < at_us:
                heapq.heappop(heap)
            else:
                heapq.heapreplace(heap, (current, order_id))

    def _compact(self) -> None:
        self._heap = [(at, o) for o, at in self._at.items()]
        heapq.heapify(self._heap)

    def _shed(self) -> None:
        # Amortised: one sort per max_entries/10 schedules, not one per schedule.
        keep = self.max_entries - max(1, self.max_entries // 10)
        ordered = sorted(self._at.items(), key=lambda item: (item[1], item[0]))
        self.dropped += len(ordered) - keep
        self._at = dict(ordered[:keep])
        self._compact()


# --- the scan: plain ints, no pydantic ------------------------------------------------------

_TARGET_ORDER: tuple[Source, ...] = (Source.CRM, Source.WMS, Source.LOGISTICS)
_ENTRY_PHASES: dict[Source, tuple[Phase, ...]] = {
    Source.WMS: (Phase.FULFILLING, Phase.SHIPPED),
    Source.LOGISTICS: (Phase.SHIPPED, Phase.DELIVERED),
}
_CONTRADICTING: frozenset[Phase] = frozenset({Phase.SHIPPED, Phase.DELIVERED})


@dataclass(frozen=True, slots=True)
class _Thresholds:
    missing: Mapping[Source, int]
    orphan: int
    conflict: int
    stall: int
    stall_critical: int

    @classmethod
    def of(cls, settings: GhostSettings) -> _Thresholds:
        return cls(
            missing={s: span_us(settings.missing_after(s)) for s in _TARGET_ORDER},
            orphan=span_us(settings.orphan_after),
            conflict=span_us(settings.conflict_after),
            stall=span_us(settings.stall_after),
            stall_critical=span_us(settings.stall_critical_after),
        )


@dataclass(slots=True)
class _Finding:
    """A rule that holds at `now`, before it is given an id, a route and words."""

    type: AnomalyType
    trigger: str
    severity: Severity
    opened_us: int
    systems: tuple[Source, ...]
    anchor_us: int  # what the rule measured from (scope entry, first event, since, anchor)
    contradiction: bool = False
    blame: tuple[Source, ...] = field(default_factory=tuple)  # silent ones hold it back

    def held_by(self, silent: Collection[Source]) -> frozenset[Source]:
        """The silent sources that hold this flag back (empty: raise it)."""
        if not silent or self.contradiction:
            return frozenset()
        if self.type is AnomalyType.STATUS_CONFLICT:
            # Caused by a silent feed when the ERP lags, or when every blamed system does.
            if Source.ERP in silent:
                return frozenset({Source.ERP})
            if all(s in silent for s in self.blame):
                return frozenset(self.blame)
            return frozenset()
        return frozenset(s for s in self.blame if s in silent)


def _earliest(view: SystemView) -> int:
    # The system's first report: its earliest event at any phase, or its marker.
    best = view.marker_at_us if view.marker is not None else view.seen_us
    for at, _ in view.firsts.values():
        if at < best:
            best = at
    return best


def _scope_entry(erp: SystemView, source: Source, phase: Phase) -> int | None:
    firsts = erp.firsts
    if source is Source.CRM:
        return min((at for at, _ in firsts.values()), default=None)
    best: int | None = None
    for p in _ENTRY_PHASES[source]:
        first = firsts.get(p)
        if first is not None and (best is None or first[0] < best):
            best = first[0]
    if best is None:
        # In scope without having passed the usual phase (a return of an order the ERP took
        # from open to delivered): expected from the current phase's entry.
        first = firsts.get(phase)
        best = None if first is None else first[0]
    return best


def _counted(view: SystemView, at: int) -> int:
    # `at`, or the instant the view started to count for the order if later: a rule that
    # depends on the view holds from then at the earliest (SystemView.known_us).
    known = view.known_us
    return at if known is None or known <= at else known


def _soonest(current: int | None, candidate: int) -> int:
    return candidate if current is None or candidate < current else current


def _judge(
    th: _Thresholds, latest: OrderState, since_us: int | None, now: int
) -> tuple[OrderState, list[_Finding], int | None, int | None]:
    """(the order as of `now`, the rules that hold then, the next instant > now something can
    change, the new conflict since): events applied already but later than `now` count from
    their own time on, so the next look is due by the first of them."""
    state = latest.as_of(now)
    findings, next_us, since = _scan(th, state, since_us, now)
    coming = None if state is latest else latest.next_event_after(now)
    if coming is not None and (next_us is None or coming < next_us):
        next_us = coming
    return state, findings, next_us, since


def _scan(
    th: _Thresholds, state: OrderState, since_us: int | None, now: int
) -> tuple[list[_Finding], int | None, int | None]:
    """(rules that hold at `now`, the next instant > now something can change, new since)."""
    findings: list[_Finding] = []
    nxt: int | None = None
    systems = state.systems
    erp = systems.get(Source.ERP)

    # orphan_order: others have the order, the ERP has not (as of now).
    erp_first = None if erp is None else _earliest(erp)
    if erp_first is None or erp_first > now:
        start: int | None = None
        opens: int | None = None  # the first instant it held: a view may count late
        present: list[Source] = []
        for source in _TARGET_ORDER:
            view = systems.get(source)
            if view is not None:
                present.append(source)
                first = _earliest(view)
                start = _soonest(start, first)
                opens = _soonest(opens, _counted(view, first + th.orphan))
        if start is not None and opens is not None:
            deadline = start + th.orphan
            if now >= deadline:
                findings.append(
                    _Finding(
                        AnomalyType.ORPHAN_ORDER,
                        "",
                        Severity.WARNING,
                        opens,
                        (Source.ERP, *present),
                        start,
                        blame=(Source.ERP,),
                    )
                )
                if erp_first is not None:
                    nxt = _soonest(nxt, erp_first)
            elif erp_first is None or erp_first > deadline:
                nxt = _soonest(nxt, deadline)

    if erp is None or erp.stage is None:
        return findings, nxt, None
    phase = PHASE_OF[erp.stage]
    reached = reached_fulfilling(erp)
    scope = in_scope(phase, reached)

    # missing_in_system: an in-scope system that has not reported by its deadline.
    for source in scope:
        entry = _scope_entry(erp, source, phase)
        if entry is None:
            continue
        deadline = entry + th.missing[source]
        view = systems.get(source)
        reported = None if view is None else _earliest(view)
        if reported is not None and reported <= now:
            continue
        if now >= deadline:
            findings.append(
                _Finding(
                    AnomalyType.MISSING_IN_SYSTEM,
                    source.value,
                    Severity.WARNING,
                    _counted(erp, deadline),
                    (Source.ERP, source),
                    entry,
                    blame=(source,),
                )
            )
            if reported is not None:
                nxt = _soonest(nxt, reported)  # the report ahead of `now` resolves it
        elif reported is None or reported > deadline:
            nxt = _soonest(nxt, deadline)

    # status_conflict: blamed systems, and since when the disagreement has lasted.
    erp_entered = _counted(erp, erp.firsts[phase][0])
    began = erp_entered
    blamed: list[Source] = []
    contradiction_us: int | None = None
    for source in _TARGET_ORDER:
        view = systems.get(source)
        if view is None or view.stage is None:
            continue
        theirs = PHASE_OF[view.stage]
        contradicts = (
            phase is Phase.CANCELLED and source is not Source.CRM and theirs in _CONTRADICTING
        )
        if contradicts or (source in scope and theirs is not phase):
            blamed.append(source)
            entered = _counted(view, view.firsts[theirs][0])
            if entered > began:
                began = entered
            if contradicts:
                contradiction_us = _soonest(contradiction_us, max(erp_entered, entered))
    if not blamed:
        since_us = None
    else:
        if since_us is None:
            since_us = began
        opened = warn_at = since_us + th.conflict
        critical_at: int | None = None
        if contradiction_us is not None:
            critical_at = max(since_us, contradiction_us)
            opened = min(warn_at, critical_at)
        if now >= opened:
            critical = critical_at is not None and now >= critical_at
            findings.append(
                _Finding(
                    AnomalyType.STATUS_CONFLICT,
                    str(since_us),
                    Severity.CRITICAL if critical else Severity.WARNING,
                    opened,
                    (Source.ERP, *blamed),
                    since_us,
                    contradiction=critical,
                    blame=tuple(blamed),
                )
            )
            if critical_at is not None and not critical:
                nxt = _soonest(nxt, critical_at)
        else:
            nxt = _soonest(nxt, opened)

    # stalled_tracking: shipped, the carrier reported once and then went quiet.
    if phase is Phase.SHIPPED:
        carrier = systems.get(Source.LOGISTICS)
        if carrier is not None:
            anchor = max(erp.firsts[Phase.SHIPPED][0], carrier.seen_us)
            warn_at = anchor + th.stall
            critical_at = anchor + th.stall_critical
            if now >= warn_at:
                critical = now >= critical_at
                findings.append(
                    _Finding(
                        AnomalyType.STALLED_TRACKING,
                        str(anchor),
                        Severity.CRITICAL if critical else Severity.WARNING,
                        _counted(carrier, _counted(erp, warn_at)),
                        (Source.ERP, Source.LOGISTICS),
                        anchor,
                        blame=(Source.LOGISTICS,),
                    )
                )
                if not critical:
                    nxt = _soonest(nxt, critical_at)
            else:
                nxt = _soonest(nxt, warn_at)
    return findings, nxt, since_us


# --- words: summaries, evidence, extra fields ----------------------------------------------

_NAME: dict[Source, str] = {
    Source.ERP: "the ERP",
    Source.CRM: "the CRM",
    Source.WMS: "the warehouse system (WMS)",
    Source.LOGISTICS: "the carrier",
}

_Description = tuple[str, list[EvidenceItem], dict[str, Any]]


def _span(us: int) -> str:
    seconds = max(0, us) / 1e6
    if seconds < 120:
        return f"{round(seconds):d} s"
    if seconds < 7200:
        return f"{round(seconds / 60):d} min"
    return f"{round(seconds / 3600, 1):g} h"


def _iso(us: int) -> str:
    return from_us(us).isoformat()


def _carrier(state: OrderState) -> str:
    parts = [p for p in (state.carrier, state.tracking_no and f"tracking {state.tracking_no}") if p]
    return f" ({', '.join(parts)})" if parts else ""


def _latest(source: Source, view: SystemView) -> EvidenceItem:
    if view.stage is not None and (view.marker is None or view.at_us >= view.marker_at_us):
        return (source.value, view.event_id, view.status or view.stage.value, view.at_us)
    marker = view.marker.value if view.marker is not None else ""
    return (source.value, view.marker_event_id, view.marker_status or marker, view.marker_at_us)


def _first(source: Source, view: SystemView, phase: Phase) -> EvidenceItem | None:
    first = view.firsts.get(phase)
    if first is None:
        return None
    # Only the latest event's native label is kept; an older one is shown by its phase.
    status = view.status if first[1] == view.event_id and view.status else phase.value
    return (source.value, first[1], status, first[0])


def _entry_evidence(erp: SystemView, at_us: int) -> EvidenceItem | None:
    for phase, (at, _) in erp.firsts.items():
        if at == at_us:
            return _first(Source.ERP, erp, phase)
    return None


def _describe_missing(state: OrderState, f: _Finding, now: int) -> _Description:
    source = f.systems[1]
    erp = state.systems[Source.ERP]
    ago = _span(now - f.anchor_us)
    oid = state.order_id
    if source is Source.CRM:
        summary = f"Order {oid} was created in the ERP {ago} ago but the CRM has not shown it yet."
    elif source is Source.WMS:
        entered = next((p for p, (at, _) in erp.firsts.items() if at == f.anchor_us), None)
        step = "shipped" if entered is Phase.SHIPPED else f"went to {entered or 'fulfilling'}"
        summary = (
            f"Order {oid} {step} in the ERP {ago} ago but the warehouse system (WMS) has no "
            "record of it."
        )
    else:
        summary = (
            f"Order {oid} shipped from the ERP {ago} ago but the carrier{_carrier(state)} "
            "has never reported it."
        )
    evidence = [e for e in (_entry_evidence(erp, f.anchor_us), _latest(Source.ERP, erp)) if e]
    extra = {"system": source.value, "expected_since": _iso(f.anchor_us)}
    return summary, _unique(evidence), extra


def _describe_orphan(state: OrderState, f: _Finding, now: int) -> _Description:
    views = [(s, state.systems[s]) for s in f.systems[1:]]
    where = " and ".join(f"{_NAME[s]} (as {v.ref or state.order_id})" for s, v in views)
    summary = (
        f"Order {state.order_id} has been in {where} for {_span(now - f.anchor_us)} "
        "but the ERP has no such order."
    )
    refs = {s.value: v.ref for s, v in views if v.ref is not None}
    extra = {"refs": refs, "first_seen_at": _iso(f.anchor_us)}
    return summary, [_latest(s, v) for s, v in views], extra


def _describe_conflict(state: OrderState, f: _Finding, now: int) -> _Description:
    erp = state.systems[Source.ERP]
    erp_phase = PHASE_OF[erp.stage] if erp.stage is not None else None
    phases = {Source.ERP.value: erp_phase.value if erp_phase else None}
    says: list[str] = []
    evidence = [_latest(Source.ERP, erp)]
    for source in f.systems[1:]:
        view = state.systems[source]
        theirs = PHASE_OF[view.stage] if view.stage is not None else None
        phases[source.value] = theirs.value if theirs else None
        says.append(f"{_NAME[source]} shows it {theirs.value if theirs else 'unknown'}")
        evidence.append(_latest(source, view))
    oid = state.order_id
    if f.contradiction:
        summary = f"Order {oid} is cancelled in the ERP but {' and '.join(says)}."
    else:
        summary = (
            f"The systems have disagreed on order {oid} for {_span(now - f.anchor_us)}: the ERP "
            f"shows it {erp_phase.value if erp_phase else 'unknown'}, {', '.join(says)}."
        )
    extra = {
        "disagreeing_since": _iso(f.anchor_us),
        "phases": phases,
        "contradiction": f.contradiction,
    }
    return summary, evidence, extra


def _describe_stall(state: OrderState, f: _Finding, now: int) -> _Description:
    erp = state.systems[Source.ERP]
    carrier = state.systems[Source.LOGISTICS]
    shipped = erp.firsts[Phase.SHIPPED][0]
    ago = _span(now - f.anchor_us)
    oid = state.order_id
    if f.anchor_us == shipped:
        summary = (
            f"Order {oid} shipped from the ERP {ago} ago but the carrier{_carrier(state)} "
            "has sent no scan since."
        )
    else:
        last = _latest(Source.LOGISTICS, carrier)[2]
        summary = (
            f"Order {oid} is shipped in the ERP but the carrier{_carrier(state)} has sent no "
            f"scan for {ago} (last: {last})."
        )
    evidence = [
        e
        for e in (_first(Source.ERP, erp, Phase.SHIPPED), _latest(Source.LOGISTICS, carrier))
        if e is not None
    ]
    extra = {
        "last_scan_at": _iso(f.anchor_us),
        "age_seconds": max(0, now - f.anchor_us) / 1e6,
        "carrier": state.carrier,
        "tracking_no": state.tracking_no,
    }
    return summary, _unique(evidence), extra


_DESCRIBE = {
    AnomalyType.MISSING_IN_SYSTEM: _describe_missing,
    AnomalyType.ORPHAN_ORDER: _describe_orphan,
    AnomalyType.STATUS_CONFLICT: _describe_conflict,
    AnomalyType.STALLED_TRACKING: _describe_stall,
}


def _unique(items: list[EvidenceItem]) -> list[EvidenceItem]:
    return list(dict.fromkeys(items))


def _resolution_note(state: OrderState, entry: BookEntry, now: int) -> str:
    after = _span(now - entry.opened_us)
    phase = state.erp_phase
    if entry.type is AnomalyType.MISSING_IN_SYSTEM:
        source = Source(entry.extra.get("system", Source.CRM.value))
        view = state.systems.get(source)
        if view is not None and _earliest(view) <= now:
            return f"Resolved after {after}: {_NAME[source]} shows the order now."
        return f"Resolved after {after}: {_NAME[source]} no longer needs to show it."
    if entry.type is AnomalyType.ORPHAN_ORDER:
        return f"Resolved after {after}: the ERP has the order now."
    if entry.type is AnomalyType.STALLED_TRACKING and phase is Phase.SHIPPED:
        return f"Resolved after {after}: the carrier scanned it again."
    if entry.type is AnomalyType.STALLED_TRACKING and phase is not None:
        return f"Resolved after {after}: the ERP shows it {phase.value} now."
    return f"Resolved after {after}: the systems agree again."


def _routing_facts(
    state: OrderState, type_: AnomalyType, severity: Severity, systems: tuple[str, ...]
) -> RoutingFacts:
    facts = state.facts
    if facts is None:
        return RoutingFacts(type=type_, severity=severity, systems=frozenset(systems))
    priority: Priority | None = (
        "rush" if facts.priority == "rush" else "normal" if facts.priority == "normal" else None
    )
    return RoutingFacts(
        type=type_,
        severity=severity,
        systems=frozenset(systems),
        vip=facts.vip,
        priority=priority,
        channel=facts.channel,
    )
