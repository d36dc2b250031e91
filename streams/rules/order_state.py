"""Per-order join state: what each system says about one order, and whether they agree (§3).

One `OrderState` per master order id holds, for each of erp/crm/wms/logistics, the source's
order_ref, its latest stage (hence phase), the time, id and native label of that event, its
last failure marker and the time of its earliest `allocation_failed` (the breaker's
reservation outcome, §7), and its earliest event per phase (for refresh latency, §4.1); plus
the ERP's order facts (the customer's phone only as `phone_hash`) and the carrier's tracking.

**Scope** — which systems must show the ERP's phase for the order to be consistent:

    ERP phase    in scope
    open         crm
    fulfilling   crm, wms
    shipped      crm, wms, logistics
    delivered    crm, logistics          (a warehouse's knowledge ends when goods leave it)
    cancelled    crm (+ wms if the ERP had reached fulfilling: it must stop the pick)
    returned     crm (+ wms if the ERP had reached fulfilling: it receives the goods back)

Logistics is never in scope for cancelled/returned: a carrier's feed cannot say `cancelled`,
and a shipped-then-cancelled order is a `status_conflict`, not a consistency question.

**Which event is a system's latest** — the maximum under one total order, so the state does
not depend on arrival order and re-applying an event changes nothing:

* a stage on the line (placed < … < closed) beats every lower stage whatever its time: a late
  `shipped` after `delivered` is seen (outcome `stale`) but not applied;
* the same stage again with a later `occurred_at` refreshes the label and time;
* `cancelled` and `returned` are off the line and beat every line stage: once a system shows
  one, it is final for that system; between the two the later `occurred_at` wins;
* remaining ties go to the larger event id.

Failure markers never move a system; the one with the latest (occurred_at, event id) is kept,
and the earliest `allocation_failed` time besides.
The order facts come from the latest ERP event carrying `order`; tracking from the latest
event carrying a carrier or tracking number, a logistics event beating any other source.

An order is in the consistency population once the ERP has reported a stage; it is
consistent when every in-scope system's latest phase equals the ERP's (a silent in-scope
system disagrees). The order turned terminal at the ERP's first event in its terminal phase.
"""

from __future__ import annotations

import base64
import hashlib
from bisect import bisect_right
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from schemas.privacy import PhoneHasher
from schemas.stages import PHASE_OF, STAGE_RANK, TERMINAL_PHASES, Marker, Phase, Source, Stage
from streams.rules.refresh_latency import (
    LINE_PHASES,
    TARGETS,
    FirstSeen,
    Observation,
    first_at_or_past,
    measure,
)
from streams.rules.watermark import as_us, event_time, from_us, occurred_us, span_us

DEFAULT_RETENTION = timedelta(days=35)
DEFAULT_MAX_IDS = 8
MAX_TIMES = 32  # carrier event times kept per order (`SystemView.times`)

_SCOPE: dict[Phase, tuple[Source, ...]] = {
    Phase.OPEN: (Source.CRM,),
    Phase.FULFILLING: (Source.CRM, Source.WMS),
    Phase.SHIPPED: (Source.CRM, Source.WMS, Source.LOGISTICS),
    Phase.DELIVERED: (Source.CRM, Source.LOGISTICS),
    Phase.CANCELLED: (Source.CRM,),
    Phase.RETURNED: (Source.CRM,),
}
_OFF_LINE_AFTER_FULFILLING: tuple[Source, ...] = (Source.CRM, Source.WMS)
_OFF_LINE: frozenset[Phase] = frozenset({Phase.CANCELLED, Phase.RETURNED})
_PAST_OPEN: tuple[Phase, ...] = (Phase.FULFILLING, Phase.SHIPPED, Phase.DELIVERED)


def in_scope(erp_phase: Phase, reached_fulfilling: bool = False) -> tuple[Source, ...]:
    """The systems expected to show `erp_phase` (see the module's scope table)."""
    if reached_fulfilling and erp_phase in _OFF_LINE:
        return _OFF_LINE_AFTER_FULFILLING
    return _SCOPE[erp_phase]


class Outcome(StrEnum):
    """What one event did to its order's state."""

    APPLIED = "applied"  # now the system's latest stage (or a later event at the same stage)
    STALE = "stale"  # behind what the system already showed: recorded, not applied
    MARKER = "marker"  # a failure marker, now the system's last one
    DUPLICATE = "duplicate"  # this (source, event_id) was applied before: nothing changed


@dataclass(slots=True)
class SystemView:
    """How one system sees the order."""

    seen_us: int  # latest occurred_at of any event of this system, stale and markers included
    ref: str | None = None
    stage: Stage | None = None
    status: str | None = None  # the source's own label of the latest stage event
    at_us: int = 0
    event_id: str = ""
    firsts: dict[Phase, FirstSeen] = field(default_factory=dict)  # earliest event per phase
    marker: Marker | None = None
    marker_status: str | None = None
    marker_at_us: int = 0
    marker_event_id: str = ""
    failed_us: int | None = None  # earliest allocation_failed: a stock reservation failed
    # The carrier's only: the distinct occurred_at of its events, ascending, the latest
    # MAX_TIMES kept (its scans within a phase move the stall rule's anchor; for the other
    # systems, what `as_of` needs is in `firsts` and the latest event).
    times: list[int] = field(default_factory=list)
    # From when the system's view counts for the order, when that is later than its earliest
    # event: events that waited in ingest for their reference's link (the ERP's: for the
    # order's details) count from the event that released them (`linked_us`), not from their
    # own time. None: every event from its own time.
    known_us: int | None = None

    @property
    def phase(self) -> Phase | None:
        """The phase of the latest stage, None when the system reported only markers."""
        return None if self.stage is None else PHASE_OF[self.stage]


@dataclass(slots=True)
class OrderFacts:
    """What the ERP says the order is (no clear personal data)."""

    at_us: int  # occurred_at of the ERP event these came from
    customer_id: str | None = None
    channel: str | None = None
    vip: bool = False
    priority: str = "normal"
    amount: str | None = None
    currency: str | None = None
    placed_at_us: int = 0
    phone_hash: str | None = None

    def _rank(self) -> tuple[Any, ...]:
        # Content breaks ties on time, so the winner does not depend on arrival order.
        return (
            self.at_us,
            self.customer_id or "",
            self.channel or "",
            self.vip,
            self.priority,
            self.amount or "",
            self.currency or "",
            self.placed_at_us,
            self.phone_hash or "",
        )


@dataclass(slots=True)
class OrderState:
    """Everything the join knows about one master order."""

    order_id: str
    systems: dict[Source, SystemView] = field(default_factory=dict)
    facts: OrderFacts | None = None
    carrier: str | None = None
    tracking_no: str | None = None
    tracking_key: tuple[int, int] | None = None  # (1 if from logistics, occurred_at µs)
    recent_ids: list[str] = field(default_factory=list)  # short digests of applied event ids

    def view(self, source: Source) -> SystemView | None:
        """One system's view of the order, None when it has not reported it."""
        return self.systems.get(source)

    @property
    def erp_phase(self) -> Phase | None:
        """The master phase, None before the ERP reported a stage."""
        erp = self.systems.get(Source.ERP)
        return None if erp is None or erp.stage is None else PHASE_OF[erp.stage]

    @property
    def reached_fulfilling(self) -> bool:
        """Whether the ERP ever showed the order at fulfilling or later on the line."""
        erp = self.systems.get(Source.ERP)
        return erp is not None and reached_fulfilling(erp)

    def scope(self) -> tuple[Source, ...]:
        """The systems in scope now (empty before the ERP reported a stage)."""
        phase = self.erp_phase
        return () if phase is None else in_scope(phase, self.reached_fulfilling)

    def disagreeing(self) -> tuple[Source, ...] | None:
        """In-scope systems whose phase differs from the ERP's; None when not in the population."""
        erp = self.systems.get(Source.ERP)
        if erp is None or erp.stage is None:
            return None
        phase = PHASE_OF[erp.stage]
        reached = phase in _OFF_LINE and reached_fulfilling(erp)
        out: list[Source] = []
        for source in in_scope(phase, reached):
            view = self.systems.get(source)
            if view is None or view.stage is None or PHASE_OF[view.stage] is not phase:
                out.append(source)
        return tuple(out)

    @property
    def consistent(self) -> bool | None:
        """Whether every in-scope system shows the ERP's phase; None when not in the population."""
        disagreeing = self.disagreeing()
        return None if disagreeing is None else not disagreeing

    def phase_entered_us(self, phase: Phase) -> int | None:
        """When the ERP first showed `phase` (µs), if it did."""
        erp = self.systems.get(Source.ERP)
        first = None if erp is None else erp.firsts.get(phase)
        return None if first is None else first[0]

    @property
    def terminal_at_us(self) -> int | None:
        """When the order turned terminal: the ERP's first event in its current terminal phase."""
        phase = self.erp_phase
        if phase is None or phase not in TERMINAL_PHASES:
            return None
        return self.phase_entered_us(phase)

    @property
    def last_event_us(self) -> int | None:
        """The latest occurred_at of any event of the order, any system."""
        return max((v.seen_us for v in self.systems.values()), default=None)

    def as_of(self, t: int) -> OrderState:
        """The order as its events known by `t` (µs) show it: those with occurred_at <= `t`,
        of the systems whose view counts by then (`SystemView.known_us`).

        Rules that judge the order at an event time use this, not the latest state: events
        already applied but later than `t` (a backlog on one source holds the watermark back
        while the others are read ahead) must not change what was true at `t`. Each system's
        phase is the highest it had reached by `t` (from `firsts`); its stage is its latest
        stage event when that is not later than `t`, else the first stage of that phase; the
        facts come from an ERP event at or before `t`. Tracking is the latest known (a
        carrier and its number do not change over an order's life). Itself when nothing is
        later than `t`.
        """
        last = self.last_event_us
        if (last is None or last <= t) and not self._hidden_at(t):
            return self
        systems: dict[Source, SystemView] = {}
        for source, view in self.systems.items():
            if view.known_us is not None and view.known_us > t:
                continue  # its events waited in ingest: they count later
            past = _view_as_of(view, t)
            if past is not None:
                systems[source] = past
        facts = self.facts if self.facts is not None and self.facts.at_us <= t else None
        return OrderState(
            order_id=self.order_id,
            systems=systems,
            facts=facts,
            carrier=self.carrier,
            tracking_no=self.tracking_no,
            tracking_key=self.tracking_key,
        )

    def next_event_after(self, t: int) -> int | None:
        """The earliest instant later than `t` (µs) from which an event applied to the order
        counts: its occurred_at, or when its system's view counts (`SystemView.known_us`)."""
        later: list[int] = []
        for view in self.systems.values():
            known = view.known_us
            for at in _event_times(view):
                counts = at if known is None or at >= known else known
                if counts > t:
                    later.append(counts)
        return min(later, default=None)

    def _hidden_at(self, t: int) -> bool:
        # Whether some system's view does not count yet at `t`.
        return any(v.known_us is not None and v.known_us > t for v in self.systems.values())

    def to_json(self) -> dict[str, Any]:
        """A compact, canonical JSON-able form: short keys, times as seconds from a base."""
        # About 1 KiB for a delivered order of 20 events, so the state table and its changelog
        # stay small: {"o": order id, "b": base µs, "s": {e|c|w|l: system}, "f": facts,
        # "t": tracking, "i": digests}. A system is a list [seen, firsts, ref, stage, status,
        # at, event id, marker, marker status, marker at, marker event id, failed, carrier
        # times, known], trailing nulls dropped; firsts are flat [phase, at, event id, ...];
        # enums are list indexes; `at` and event id are null when the latest event is its
        # phase's first, seen null when it equals `at`, ref 0 when it is the order id, failed
        # null when it is the marker's own time (the marker an allocation_failed) or there was
        # no such failure.
        base = self._base_us()
        out: dict[str, Any] = {"o": self.order_id, "b": base}
        out["s"] = {
            _SOURCE_CODE[source]: _view_to_json(view, base, self.order_id)
            for source in _SOURCE_CODE
            if (view := self.systems.get(source)) is not None
        }
        if self.facts is not None:
            f = self.facts
            out["f"] = _trim(
                [
                    _enc(f.at_us, base),
                    _enc(f.placed_at_us, base),
                    f.customer_id,
                    f.channel,
                    f.priority,
                    f.amount,
                    f.currency,
                    f.phone_hash,
                    int(f.vip),
                ]
            )
        if self.tracking_key is not None:
            out["t"] = [
                self.tracking_key[0],
                _enc(self.tracking_key[1], base),
                self.carrier,
                self.tracking_no,
            ]
        if self.recent_ids:
            out["i"] = "".join(self.recent_ids)
        return out

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> OrderState:
        """The inverse of to_json."""
        base: int = raw["b"]
        state = cls(order_id=raw["o"])
        for code, packed in raw.get("s", {}).items():
            state.systems[_SOURCE_OF_CODE[code]] = _view_from_json(
                packed, base, state.order_id, _SOURCE_OF_CODE[code]
            )
        facts = raw.get("f")
        if facts is not None:
            facts = [*facts, *[None] * (9 - len(facts))]
            state.facts = OrderFacts(
                at_us=_dec(facts[0], base),
                placed_at_us=_dec(facts[1], base),
                customer_id=facts[2],
                channel=facts[3],
                priority=facts[4] or "normal",
                amount=facts[5],
                currency=facts[6],
                phone_hash=facts[7],
                vip=bool(facts[8]),
            )
        tracking = raw.get("t")
        if tracking is not None:
            state.tracking_key = (tracking[0], _dec(tracking[1], base))
            state.carrier = tracking[2]
            state.tracking_no = tracking[3]
        ids = raw.get("i", "")
        state.recent_ids = [ids[i : i + _DIGEST_CHARS] for i in range(0, len(ids), _DIGEST_CHARS)]
        return state

    def _base_us(self) -> int:
        base: int | None = None
        for view in self.systems.values():
            for first in view.firsts.values():
                if base is None or first[0] < base:
                    base = first[0]
            if base is None or view.seen_us < base:
                base = view.seen_us
        return 0 if base is None else base


@dataclass(slots=True)
class Change:
    """What applying one event did to its order."""

    order_id: str
    source: Source
    event_id: str
    outcome: Outcome
    event_us: int  # the event's occurred_at, µs since the epoch
    old_phase: Phase | None  # the ERP phase before / after
    new_phase: Phase | None
    old_consistent: bool | None  # None: not in the population (no ERP stage yet)
    new_consistent: bool | None
    disagreeing: tuple[Source, ...]  # in-scope systems that disagree after the event
    terminal_us: int | None  # when the order turned terminal (µs), if it is
    observations: list[Observation] = field(default_factory=list)

    @property
    def event_time(self) -> datetime:
        """The event's occurred_at."""
        return from_us(self.event_us)

    @property
    def terminal_at(self) -> datetime | None:
        """When the order turned terminal, if it is."""
        return None if self.terminal_us is None else from_us(self.terminal_us)

    @property
    def in_population(self) -> bool:
        """Whether the order counts for the consistency ratio (before the 24 h terminal cut)."""
        return self.new_phase is not None

    @property
    def phase_changed(self) -> bool:
        """Whether the ERP phase moved."""
        return self.old_phase is not self.new_phase

    @property
    def consistency_changed(self) -> bool:
        """Whether the order's consistent flag (or population membership) changed."""
        return self.old_consistent is not self.new_consistent


class OrderJoin:
    """Applies normalised events to per-order state; pure, no clock."""

    __slots__ = ("max_ids", "phones")

    def __init__(self, phones: PhoneHasher, max_ids: int = DEFAULT_MAX_IDS) -> None:
        # The state itself is idempotent (every field is a max or min over events); the last
        # `max_ids` event digests only let a redelivery be reported as a duplicate.
        self.max_ids = max_ids
        # The customer's phone is kept only as its keyed hash.
        self.phones = phones

    def apply(
        self, state: OrderState, event: Mapping[str, Any], event_us: int | None = None
    ) -> Change:
        """Apply one normalised event (ingest's `_normalized` dict) to `state`, in place;
        `event_us` is its event time when the caller has read it already."""
        source = _SOURCES[event["source"]]
        event_id: str = event["event_id"]
        t = occurred_us(event) if event_us is None else event_us
        old_phase = state.erp_phase
        old_disagreeing = state.disagreeing()
        old_consistent = None if old_disagreeing is None else not old_disagreeing

        # A digest match does not short-circuit: the event is applied anyway (a true repeat
        # changes nothing, the state being a max/min over events), so a digest collision can
        # never lose an event; it can only mislabel a stale one as a duplicate.
        digest = _digest(source, event_id)
        repeat = digest in state.recent_ids
        if not repeat:
            state.recent_ids.append(digest)
            if len(state.recent_ids) > self.max_ids:
                del state.recent_ids[0]

        known = counts_from_us(event, t)
        view = state.systems.get(source)
        if view is None:
            view = state.systems[source] = SystemView(seen_us=t)
            if known > t:
                view.known_us = known
        else:
            _note_known(view, t, known)
            if t > view.seen_us:
                view.seen_us = t
        if source is Source.LOGISTICS:
            _note_time(view.times, t)

        observations: list[Observation] = []
        stage_value = event.get("stage")
        if stage_value is not None:
            stage = _STAGES[stage_value]
            phase = PHASE_OF[stage]
            mine = (t, event_id)
            first = view.firsts.get(phase)
            if first is None or mine < first:
                observations = _move_first(state, source, view, phase, mine)
            if view.stage is None or _line_key(stage, t, event_id) > _line_key(
                view.stage, view.at_us, view.event_id
            ):
                view.stage = stage
                view.status = event.get("status")
                view.at_us = t
                view.event_id = event_id
                view.ref = event.get("order_ref", view.ref)
                outcome = Outcome.APPLIED
            else:
                outcome = Outcome.STALE
        else:
            marker_value = event.get("marker")
            if marker_value is None:
                raise ValueError(f"event {event_id!r} has neither a stage nor a marker")
            if marker_value == Marker.ALLOCATION_FAILED and (
                view.failed_us is None or t < view.failed_us
            ):
                view.failed_us = t
            if view.marker is None or (t, event_id) > (view.marker_at_us, view.marker_event_id):
                view.marker = _MARKERS[marker_value]
                view.marker_status = event.get("status")
                view.marker_at_us = t
                view.marker_event_id = event_id
                if view.stage is None:
                    view.ref = event.get("order_ref", view.ref)
                outcome = Outcome.MARKER
            else:
                outcome = Outcome.STALE

        if repeat and outcome is Outcome.STALE:
            outcome = Outcome.DUPLICATE
        if source is Source.ERP:
            details = event.get("order")
            if isinstance(details, Mapping):
                _take_facts(state, details, t, self.phones)
        tracking = event.get("tracking")
        if isinstance(tracking, Mapping):
            _take_tracking(state, source, tracking, t)

        disagreeing = state.disagreeing()
        return Change(
            state.order_id,
            source,
            event_id,
            outcome,
            t,
            old_phase,
            state.erp_phase,
            old_consistent,
            None if disagreeing is None else not disagreeing,
            disagreeing or (),
            state.terminal_at_us,
            observations,
        )


def is_evictable(
    state: OrderState, watermark: datetime, retention: timedelta = DEFAULT_RETENTION
) -> bool:
    """Whether a finished order (or one the ERP never reported) can leave the state table."""
    last = state.last_event_us
    if last is None:
        return True
    if state.erp_phase is None:
        # Never matched to an ERP order: an orphan that would otherwise be kept forever.
        since = last
    else:
        terminal = state.terminal_at_us
        if terminal is None:
            return False
        since = max(terminal, last)
    return since + span_us(retention) <= as_us(watermark)


def counts_from_us(event: Mapping[str, Any], event_us: int) -> int:
    """From when a normalised event counts for its order (µs): its own time, or, when it
    waited in ingest for its reference's link or its order's details, the time of the event
    that released it (`linked_us`), if later."""
    linked = event.get("linked_us")
    return event_us if linked is None or linked <= event_us else int(linked)


def reached_fulfilling(erp: SystemView) -> bool:
    """Whether the ERP's view ever showed fulfilling or later on the line."""
    return not erp.firsts.keys().isdisjoint(_PAST_OPEN)


def observations_of(state: OrderState) -> list[Observation]:
    """Every latency observation the state implies now (for rebuilds and checks)."""
    out: list[Observation] = []
    erp = state.systems.get(Source.ERP)
    if erp is None:
        return out
    reached = reached_fulfilling(erp)
    for target in TARGETS:
        for phase in Phase:
            value = _observation_value(state, erp, reached, target, phase)
            if value is not None:
                out.append(measure(state.order_id, target, phase, value[0], value[1]))
    return out


# --- internals -------------------------------------------------------------------------------

_SOURCES: dict[str, Source] = {s.value: s for s in Source}
_STAGES: dict[str, Stage] = {s.value: s for s in Stage}
_MARKERS: dict[str, Marker] = {m.value: m for m in Marker}
_SOURCE_CODE: dict[Source, str] = {
    Source.ERP: "e",
    Source.CRM: "c",
    Source.WMS: "w",
    Source.LOGISTICS: "l",
}
_SOURCE_OF_CODE: dict[str, Source] = {code: source for source, code in _SOURCE_CODE.items()}
_STAGE_LIST: list[Stage] = list(Stage)
_STAGE_INDEX: dict[Stage, int] = {s: i for i, s in enumerate(_STAGE_LIST)}
_PHASE_LIST: list[Phase] = list(Phase)
_PHASE_INDEX: dict[Phase, int] = {p: i for i, p in enumerate(_PHASE_LIST)}
_MARKER_LIST: list[Marker] = list(Marker)
_MARKER_INDEX: dict[Marker, int] = {m: i for i, m in enumerate(_MARKER_LIST)}
_DIGEST_CHARS = 8
_DIGEST_PREFIX: dict[Source, bytes] = {s: f"{s.value}\x1f".encode() for s in Source}


def _digest(source: Source, event_id: str) -> str:
    # 48 bits: a false "duplicate" among one order's last few events is ~1e-13 likely.
    raw = hashlib.blake2b(_DIGEST_PREFIX[source] + event_id.encode(), digest_size=6).digest()
    return base64.urlsafe_b64encode(raw).decode()


def _line_key(stage: Stage, at_us: int, event_id: str) -> tuple[int, int, int, str]:
    rank = STAGE_RANK.get(stage)
    if rank is None:
        return (1, 0, at_us, event_id)
    return (0, rank, at_us, event_id)


def _candidates(source: Source, phase: Phase) -> tuple[tuple[Source, Phase], ...]:
    return _CANDIDATES[(source, phase)]


def _build_candidates() -> dict[tuple[Source, Phase], tuple[tuple[Source, Phase], ...]]:
    # The (target, phase) observations an event's new earliest-at-phase can create or revise.
    out: dict[tuple[Source, Phase], tuple[tuple[Source, Phase], ...]] = {}
    for phase in Phase:
        erp = [(target, phase) for target in TARGETS]
        if phase in _PAST_OPEN:
            # Reaching fulfilling puts the WMS in scope for a later cancel/return.
            erp += [(Source.WMS, Phase.CANCELLED), (Source.WMS, Phase.RETURNED)]
        out[(Source.ERP, phase)] = tuple(erp)
        for target in TARGETS:
            if phase in LINE_PHASES:
                upto = LINE_PHASES[: LINE_PHASES.index(phase) + 1]
                out[(target, phase)] = tuple((target, p) for p in upto)
            else:
                out[(target, phase)] = ((target, phase),)
    return out


_CANDIDATES = _build_candidates()


def _observation_value(
    state: OrderState, erp: SystemView, reached: bool, target: Source, phase: Phase
) -> tuple[FirstSeen, FirstSeen] | None:
    # (ERP's entry into `phase`, target's first showing of it) when both are known and the
    # target is in scope; `erp` is the ERP's view, `reached` whether it reached fulfilling.
    erp_first = erp.firsts.get(phase)
    if erp_first is None:
        return None
    if target not in in_scope(phase, reached):
        return None
    view = state.systems.get(target)
    if view is None:
        return None
    target_first = first_at_or_past(view.firsts, phase)
    return None if target_first is None else (erp_first, target_first)


def _move_first(
    state: OrderState, source: Source, view: SystemView, phase: Phase, first: FirstSeen
) -> list[Observation]:
    erp = state.systems.get(Source.ERP)
    if erp is None:  # no ERP phase entry: no observation, before or after
        view.firsts[phase] = first
        return []
    candidates = _candidates(source, phase)
    reached = reached_fulfilling(erp)
    before = [_observation_value(state, erp, reached, target, p) for target, p in candidates]
    view.firsts[phase] = first
    if view is erp:
        reached = reached_fulfilling(erp)
    out: list[Observation] = []
    for (target, p), old in zip(candidates, before, strict=True):
        new = _observation_value(state, erp, reached, target, p)
        if new is not None and new != old:
            out.append(measure(state.order_id, target, p, new[0], new[1], revised=old is not None))
    return out


def _take_facts(state: OrderState, details: Mapping[str, Any], t: int, phones: PhoneHasher) -> None:
    phone = details.get("customer_phone")
    placed = details.get("placed_at")
    amount = details.get("amount")
    facts = OrderFacts(
        at_us=t,
        customer_id=details.get("customer_id"),
        channel=details.get("channel"),
        vip=bool(details.get("vip", False)),
        priority=details.get("priority") or "normal",
        amount=None if amount is None else str(amount),
        currency=details.get("currency"),
        placed_at_us=t if placed is None else as_us(event_time(placed)),
        phone_hash=phones.phone_hash(phone) if phone else None,
    )
    if state.facts is None or facts._rank() > state.facts._rank():
        state.facts = facts


def _take_tracking(state: OrderState, source: Source, tracking: Mapping[str, Any], t: int) -> None:
    carrier = tracking.get("carrier")
    number = tracking.get("tracking_no")
    if carrier is None and number is None:
        return
    key = (1 if source is Source.LOGISTICS else 0, t)
    if state.tracking_key is not None:
        mine = (*key, carrier or "", number or "")
        theirs = (*state.tracking_key, state.carrier or "", state.tracking_no or "")
        if mine <= theirs:
            return
    state.tracking_key = key
    state.carrier = carrier
    state.tracking_no = number


def _note_known(view: SystemView, t: int, known: int) -> None:
    # Before the event at `t` (counting from `known`) is applied to an existing view: the
    # view counts from the earliest instant any of its events counts; `known_us` keeps it
    # only when that is later than the view's earliest event.
    if known <= t and view.known_us is None:
        return  # the common case: everything counts from its own time
    earliest = min(_event_times(view))
    since = min(earliest if view.known_us is None else view.known_us, known)
    view.known_us = since if since > min(earliest, t) else None


def _note_time(times: list[int], t: int) -> None:
    # Ascending and distinct; past MAX_TIMES the earliest go (judging an order far behind
    # its latest events is rare, and then the earliest kept time stands for those dropped).
    i = bisect_right(times, t)
    if i and times[i - 1] == t:
        return
    times.insert(i, t)
    if len(times) > MAX_TIMES:
        del times[0]


_LINE_PHASE_RANK: dict[Phase, int] = {
    Phase.OPEN: 0,
    Phase.FULFILLING: 1,
    Phase.SHIPPED: 2,
    Phase.DELIVERED: 3,
}
_FIRST_STAGE_OF: dict[Phase, Stage] = {}
for _stage in Stage:
    _FIRST_STAGE_OF.setdefault(PHASE_OF[_stage], _stage)


def _phase_reached(firsts: Mapping[Phase, FirstSeen]) -> Phase:
    # The phase of the latest stage under the join's order: off the line beats the line (the
    # later of cancelled and returned), else the highest line phase.
    off = [(first[0], phase) for phase, first in firsts.items() if phase in _OFF_LINE]
    if off:
        return max(off)[1]
    return max(firsts, key=_LINE_PHASE_RANK.__getitem__)


def _view_as_of(view: SystemView, t: int) -> SystemView | None:
    # One system's view from its events with occurred_at <= t; None if it had shown none.
    earlier = [at for at in _event_times(view) if at <= t]
    if not earlier:
        return None
    firsts = {phase: first for phase, first in view.firsts.items() if first[0] <= t}
    has_marker = view.marker is not None and view.marker_at_us <= t
    times = view.times[: bisect_right(view.times, t)]
    past = SystemView(
        seen_us=max(earlier), ref=view.ref, firsts=firsts, times=times, known_us=view.known_us
    )
    if view.stage is not None and view.at_us <= t:
        past.stage, past.status = view.stage, view.status
        past.at_us, past.event_id = view.at_us, view.event_id
    elif firsts:
        phase = _phase_reached(firsts)
        past.stage = _FIRST_STAGE_OF[phase]
        past.at_us, past.event_id = firsts[phase]
    if view.failed_us is not None and view.failed_us <= t:
        past.failed_us = view.failed_us
    if has_marker:
        past.marker, past.marker_status = view.marker, view.marker_status
        past.marker_at_us, past.marker_event_id = view.marker_at_us, view.marker_event_id
    return past


def _enc(us: int, base: int) -> int | float:
    # Seconds from the base: an int when whole, else a float that round-trips to the µs
    # (exact while |delta| < 2**53 µs, i.e. ~285 years).
    delta = us - base
    return delta // 1_000_000 if delta % 1_000_000 == 0 else delta / 1_000_000


def _dec(value: int | float, base: int) -> int:
    if isinstance(value, int):
        return base + value * 1_000_000
    return base + round(value * 1_000_000)


def _trim(items: list[Any]) -> list[Any]:
    while items and items[-1] is None:
        items.pop()
    return items


def _view_to_json(view: SystemView, base: int, order_id: str) -> list[Any]:
    firsts: list[Any] = []
    # Canonical order, so equal states serialise to equal bytes whatever the arrival order.
    for phase in _PHASE_LIST:
        first = view.firsts.get(phase)
        if first is not None:
            firsts += [_PHASE_INDEX[phase], _enc(first[0], base), first[1]]
    latest: list[Any]
    if view.stage is None:
        latest = [None, None, None, None]
    else:
        phase_first = view.firsts.get(PHASE_OF[view.stage])
        # Most latest events are also their phase's first: store them once.
        same = phase_first == (view.at_us, view.event_id)
        latest = [
            _STAGE_INDEX[view.stage],
            view.status,
            None if same else _enc(view.at_us, base),
            None if same else view.event_id,
        ]
    marker: list[Any] = []
    if view.marker is not None:
        # A system's one failure is its latest marker too: its time is not stored twice.
        failed = view.failed_us
        if view.marker is Marker.ALLOCATION_FAILED and failed == view.marker_at_us:
            failed = None
        marker = [
            _MARKER_INDEX[view.marker],
            view.marker_status,
            _enc(view.marker_at_us, base),
            view.marker_event_id,
            None if failed is None else _enc(failed, base),
        ]
    # 0 stands for "the master id itself", as the ERP's order_ref usually is.
    ref: str | int | None = 0 if view.ref == order_id else view.ref
    seen = None if view.stage is not None and view.seen_us == view.at_us else view.seen_us
    # Only the carrier's event times the rest of the view does not name (its scans between
    # its first at a phase and its latest), as gaps from the one before.
    known = _named_times(view)
    extra = [at for at in view.times if at not in known]
    times: list[Any] | None = None
    if extra:
        times, before = [], base
        for at in extra:
            times.append(_enc(at, before))
            before = at
    counts = None if view.known_us is None else _enc(view.known_us, base)
    packed = [None if seen is None else _enc(seen, base), firsts, ref, *latest]
    if marker or times is not None or counts is not None:
        packed += marker or [None] * 5
    if times is not None or counts is not None:
        packed.append(times)
    if counts is not None:
        packed.append(counts)
    return _trim(packed)


def _view_from_json(packed: list[Any], base: int, order_id: str, source: Source) -> SystemView:
    packed = [*packed, *[None] * (14 - len(packed))]
    seen, flat, ref, stage_i, status, at, eid, marker_i, m_status, m_at, m_eid, failed = packed[:12]
    gaps, known = packed[12], packed[13]
    view = SystemView(seen_us=0, ref=order_id if ref == 0 else ref)
    for i in range(0, len(flat or ()), 3):
        view.firsts[_PHASE_LIST[flat[i]]] = (_dec(flat[i + 1], base), flat[i + 2])
    if stage_i is not None:
        stage = _STAGE_LIST[stage_i]
        view.stage = stage
        view.status = status
        if at is None:
            view.at_us, view.event_id = view.firsts[PHASE_OF[stage]]
        else:
            view.at_us, view.event_id = _dec(at, base), eid
    view.seen_us = view.at_us if seen is None else _dec(seen, base)
    if marker_i is not None:
        view.marker = _MARKER_LIST[marker_i]
        view.marker_status = m_status
        view.marker_at_us = _dec(m_at, base)
        view.marker_event_id = m_eid
        if failed is not None:
            view.failed_us = _dec(failed, base)
        elif view.marker is Marker.ALLOCATION_FAILED:
            view.failed_us = view.marker_at_us
    if known is not None:
        view.known_us = _dec(known, base)
    if source is Source.LOGISTICS:
        times = _named_times(view)
        before = base
        for gap in gaps or ():
            before = _dec(gap, before)
            times.add(before)
        view.times = sorted(times)[-MAX_TIMES:]
    return view


def _named_times(view: SystemView) -> set[int]:
    # The event times a view names besides `times`: its earliest per phase, latest, marker.
    named = {view.seen_us, *(first[0] for first in view.firsts.values())}
    if view.stage is not None:
        named.add(view.at_us)
    if view.marker is not None:
        named.add(view.marker_at_us)
    if view.failed_us is not None:
        named.add(view.failed_us)
    return named


def _event_times(view: SystemView) -> set[int]:
    # Every event time of the system the state still knows.
    named = _named_times(view)
    named.update(view.times)
    return named
