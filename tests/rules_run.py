"""Today's pure rules driven the way the worker drives them, for the oracle comparison.

`RulesRun(schedule).run(events, horizon_us)` reads a log in publication order, in batches of
`schedule.batch` records, and does per batch what the stages do with it:

* ingest (streams/ingest.py `IngestStage.process` and `_mark_watermark`): decode, apply to
  the reference's state, hold and forward, resolve an unlinked reference's orphan when its
  link comes; then event time across the source topics, the unlinked references' timers and
  the ERP events that waited too long for their details (dead-lettered `missing_order`) at
  that watermark, and the watermark mark;
* the per-order stage (streams/orders.py `OrderStage._apply`, `_mark`, `_run_due`,
  `_evaluate`, `_ship_intake`): each forwarded event joined to its order, its intake count
  moved, its details placed once, latency and consistency updated; an event ahead of the
  watermark is judged when event time reaches it (its order's timer at the event's own
  time), one at or behind it at the watermark; then the mark moves the watermark and every
  order due by it is judged at its own deadline;
* dedupe (streams/dedupe.py) on each placement, its clock the per-order watermark it carries
  less `REPLAY_SLACK`; the breaker (streams/breaker.py) ticked with the counts at
  the per-order watermark.

This is a copy of the stages' loops, line for line, not the stages themselves (the in-process
harness of the real stages, tests/stage_harness.py, is not on this branch); keep it in step
with them. The wall clock stands still (`WALL`): the rules defined on wall time (a source
judged silent, the idle fallback of the watermark) never act, as in a replay that does not
pause. At the end, event time is moved to the horizon, as the idle fallback would.

Two clocks (`Schedule.clock`): `newest` is one partition's watermark (the newest event time
read, less the allowed lateness); `sources` is ingest's `SourceTime` over the four source
topics read all at once, where a topic with records left unread holds event time back
(a catch-up: the slowest topic sets the pace and the others are read far ahead of it).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from schemas.anomalies import Anomaly, AnomalyState, Command
from schemas.events import OrderDetails
from schemas.routing import default_routing
from schemas.stages import Source
from schemas.status_map import default_status_map
from streams.dedupe import REPLAY_SLACK, placement
from streams.rules.breaker import Breaker, BreakerSettings
from streams.rules.consistency import ConsistencyTracker
from streams.rules.dedupe import DedupeRules, FingerprintWindow, duplicate_anomaly
from streams.rules.ghosts import GhostRules, GhostState, TimerWheel, evaluate_unlinked
from streams.rules.ingest import IngestRules, Origin, Outcome, RefState, Rejection, state_key
from streams.rules.intake import IntakeCounts, IntakeTotals, intake_times
from streams.rules.order_state import OrderJoin, OrderState, counts_from_us
from streams.rules.order_state import Outcome as JoinOutcome
from streams.rules.refresh_latency import LatencyWindow
from streams.rules.routing import AutoRoutingRate, route
from streams.rules.watermark import (
    DEFAULT_ALLOWED_LATENESS,
    SourceTime,
    Watermark,
    as_us,
    from_us,
    occurred_us,
    parse_us,
    span_us,
)
from tests.oracle.compare import Actual
from tests.phones import PHONES

# Later than every log the tests build (event times are never capped at wall + max_ahead),
# and within a year of them (none is implausibly old).
WALL = datetime(2026, 4, 1, tzinfo=UTC)
_WALL_US = as_us(WALL)
_LATENESS_US = span_us(DEFAULT_ALLOWED_LATENESS)
_SLACK_US = span_us(REPLAY_SLACK)
_STATUS_MAP = default_status_map()
_ROUTING = default_routing()


@dataclass(frozen=True)
class Schedule:
    """How the log is read: records per batch, and which clock sets event time."""

    batch: int = 1
    clock: str = "newest"  # or "sources"


@dataclass
class _Order:
    state: OrderState
    ghosts: GhostState


class RulesRun:
    """One run of the rules over one log (see the module docstring)."""

    def __init__(
        self, schedule: Schedule | None = None, breaker: BreakerSettings | None = None
    ) -> None:
        self.schedule = schedule or Schedule()
        routing = _ROUTING
        self.routing = routing
        self.ingest = IngestRules(_STATUS_MAP)
        self.join = OrderJoin(PHONES)
        self.ghost_rules = GhostRules(routing=routing)
        self.dedupe = DedupeRules()
        self.breaker = Breaker(breaker)
        self.reserving = self.breaker.settings.reserving_systems
        # ingest
        self.refs: dict[str, RefState] = {}
        self.unlinked = TimerWheel()
        self.awaiting_details = TimerWheel()
        self.source_time: SourceTime[Source] = SourceTime()
        self.one_clock = Watermark()
        self.sent_watermark: int | None = None
        # the per-order stage
        self.watermark = Watermark()
        self.orders: dict[str, _Order] = {}
        self.wheel = TimerWheel()
        self.latency = LatencyWindow()
        self.consistency = ConsistencyTracker()
        self.routing_rate = AutoRoutingRate()
        self.intake = IntakeCounts()  # the orders' counts, as of each instant
        # dedupe and the breaker
        self.windows: dict[str, FingerprintWindow] = {}
        self.dedupe_clock = Watermark()
        self.figures: dict[int, IntakeTotals] = {}  # evaluation instant (µs) -> its figures
        # outputs
        self.anomalies: list[Anomaly] = []
        self.commands: list[Command] = []
        self.dead_letters: Counter[str] = Counter()
        self.never_detailed: set[str] = set()  # ids of the ERP events dead-lettered missing_order
        self.events_applied = 0

    # --- the run --------------------------------------------------------------------------

    def run(self, events: Iterable[Mapping[str, Any]], horizon_us: int) -> Actual:
        """Every output of `events` (publication order) with event time moved to the horizon."""
        records = [(Source(e["source"]), orjson.dumps(e)) for e in events]
        unread = Counter(source for source, _ in records)
        step = max(1, self.schedule.batch)
        for start in range(0, len(records), step):
            batch = records[start : start + step]
            for source, _ in batch:
                unread[source] -= 1
            forward, mark = self._ingest(batch, unread)
            self._orders(forward, mark)
        self._ingest_mark(horizon_us)
        self._orders([], horizon_us)
        return Actual.fold(self.anomalies, self.commands)

    def still_waiting(self) -> set[str]:
        """The ids of the ERP events still waiting for their order's details."""
        return {w.event["event_id"] for state in self.refs.values() for w in state.waiting}

    def kpis(self) -> dict[str, Any]:
        """The KPI figures at the per-order watermark, as `OrderStage.kpis` reads them."""
        watermark = self.watermark.value
        assert watermark is not None
        self.consistency.expire(watermark)
        self.routing_rate.expire(watermark)
        consistency = self.consistency.counts()
        routing = self.routing_rate.counts()
        latency = {
            (target.value, window): (s.count, _seconds(s.median), _seconds(s.p95), s.skew_count)
            for target in (Source.CRM, Source.WMS, Source.LOGISTICS)
            for window in ("1h", "24h")
            if (s := self.latency.stats(target, window, watermark))
        }
        return {
            "latency": latency,
            "consistency": (consistency.consistent, consistency.population),
            "routing": (routing.auto, routing.total),
        }

    # --- ingest ---------------------------------------------------------------------------

    def _ingest(
        self, batch: list[tuple[Source, bytes]], unread: Counter[Source]
    ) -> tuple[list[dict[str, Any]], int | None]:
        forward: list[dict[str, Any]] = []
        for offset, (source, raw) in enumerate(batch):
            decoded = self.ingest.decode(raw, source, WALL)
            if isinstance(decoded, Rejection):
                self.dead_letters[decoded.reason.value] += 1
                continue
            event_us = as_us(decoded.occurred_at)
            self.source_time.observe_us(source, event_us, _WALL_US)
            self.one_clock.observe_us(event_us, _WALL_US)
            key = state_key(source, decoded.order_ref)
            state = self.refs.setdefault(key, RefState())
            origin = Origin(0, offset, decoded.order_ref.encode())
            applied = self.ingest.apply(decoded, raw, state, WALL, event_us, origin=origin)
            if applied.rejection is not None:
                self.dead_letters[applied.rejection.reason.value] += 1
                continue
            if applied.outcome is Outcome.DUPLICATE:
                continue
            if applied.outcome is Outcome.HELD:
                if state.waiting:
                    self.awaiting_details.schedule_us(key, self.ingest.details_deadline_us(state))
                elif len(state.held) == 1:
                    self.unlinked.schedule_us(key, event_us)
            elif state.unlinked:
                assert state.since_us is not None
                self.unlinked.schedule_by_us(key, state.since_us)
            elif key in self.awaiting_details:
                self.awaiting_details.cancel(key)
            # Through JSON, as the normalised topic carries them.
            forward += [orjson.loads(orjson.dumps(body)) for _, body in applied.forward]
        for source in Source:
            self.source_time.backlog(source, unread[source] > 0)
        if self.schedule.clock == "sources":
            watermark = self.source_time.value_us(_WALL_US)
        else:
            watermark = self.one_clock.value_us
        if watermark is None or watermark == self.sent_watermark:
            return forward, None
        self._ingest_mark(watermark)
        return forward, watermark

    def _ingest_mark(self, watermark_us: int) -> None:
        # IngestStage._unlinked_due and _details_overdue at ingest's watermark.
        watermark = from_us(watermark_us)
        while due := self.unlinked.due(watermark):
            for key, at in due:
                state = self.refs[key]
                link_us = None if state.link is None else state.since_us
                events = state.held if state.link is None else state.unlinked
                if not events:
                    continue
                ref = key.split("|", 1)[1]
                ghosts = GhostState.from_json(state.ghosts, ref)
                outcome = evaluate_unlinked(
                    self.ghost_rules, self.join, ref, events, ghosts, at, WALL, link_us
                )
                self.unlinked.schedule_us(key, outcome.next_us)
                if link_us is not None and outcome.next_us is None:
                    state.unlinked = []
                    state.ghosts = None
                else:
                    state.ghosts = None if ghosts.is_empty else ghosts.to_json()
                self._emit_all(outcome.emits)
        while due := self.awaiting_details.due(watermark):
            for key, _ in due:
                state = self.refs[key]
                expired = self.ingest.expire_waiting(state, watermark_us)
                self.awaiting_details.schedule_us(key, self.ingest.details_deadline_us(state))
                self.dead_letters["missing_order"] += len(expired)
                self.never_detailed.update(w.event["event_id"] for w in expired)
        self.sent_watermark = watermark_us

    # --- the per-order stage --------------------------------------------------------------

    def _orders(self, forward: list[dict[str, Any]], mark: int | None) -> None:
        for body in forward:
            self._apply(body)
        if mark is not None:
            before = self.watermark.value_us
            self.watermark.advance_to_us(mark, _WALL_US)
            if self.watermark.value_us != before:
                self._run_due(mark)
        watermark = self.watermark.value_us
        if watermark is not None:
            self.routing_rate.expire(from_us(watermark))
            # _ship_intake: the counts, then the breaker at the per-order watermark.
            self._emit_all(self.breaker.tick(self.intake, from_us(watermark), WALL))
            for evaluation in self.breaker.evaluations:
                self.figures[as_us(evaluation.at)] = evaluation.totals

    def _apply(self, body: dict[str, Any]) -> None:
        self.events_applied += 1
        event_us = occurred_us(body)
        watermark_us = self.watermark.value_us
        known_us = counts_from_us(body, event_us)
        order_id = body["order_id"]
        entry = self.orders.get(order_id)
        if entry is None:
            entry = self.orders[order_id] = _Order(OrderState(order_id), GhostState.new(order_id))
        had_facts = entry.state.facts
        had_intake = intake_times(entry.state, self.reserving)
        change = self.join.apply(entry.state, body, event_us)
        if change.outcome is JoinOutcome.DUPLICATE:
            return
        intake = intake_times(entry.state, self.reserving)
        if intake != had_intake:
            self.intake.move(had_intake.history(), intake.history())
        if had_facts is None and entry.state.facts is not None:
            self._place(placement(order_id, body, watermark_us))
        for obs in change.observations:
            self.latency.add(obs)
        self.consistency.apply(change)
        if watermark_us is None or known_us > watermark_us:
            ghosts = entry.ghosts
            if ghosts.next_us is None or known_us < ghosts.next_us:
                ghosts.next_us = known_us
            self.wheel.schedule_by_us(order_id, known_us)
        else:
            self._evaluate(entry, from_us(watermark_us))

    def _evaluate(self, entry: _Order, now: datetime) -> None:
        outcome = self.ghost_rules.evaluate(entry.state, entry.ghosts, now, WALL)
        self.wheel.schedule_us(entry.state.order_id, outcome.next_us)
        self._emit_all(outcome.emits)

    def _run_due(self, watermark_us: int) -> None:
        while due := self.wheel.due(from_us(watermark_us)):
            for order_id, at in due:
                self._evaluate(self.orders[order_id], at)

    # --- dedupe ---------------------------------------------------------------------------

    def _place(self, body: dict[str, Any]) -> None:
        if body.get("wm") is not None:
            self.dedupe_clock.advance_to_us(body["wm"] - _SLACK_US, _WALL_US)
        details = OrderDetails.model_validate(body["order"])
        window = self.windows.setdefault(self.dedupe.fingerprint(details), FingerprintWindow())
        pairs = self.dedupe.observe(
            window,
            body["order_id"],
            details,
            event_id=body["event_id"],
            status=body["status"],
            occurred_at=from_us(parse_us(body["occurred_at"])),
            watermark=self.dedupe_clock.value,
        )
        for pair in pairs:
            self._emit(duplicate_anomaly(pair, WALL, route(pair.routing_facts(), self.routing)))

    # --- outputs --------------------------------------------------------------------------

    def _emit_all(self, emits: Iterable[Anomaly | Command]) -> None:
        for emit in emits:
            self._emit(emit)

    def _emit(self, emit: Anomaly | Command) -> None:
        if isinstance(emit, Command):
            self.commands.append(emit)
            return
        self.anomalies.append(emit)
        if emit.state is AnomalyState.OPEN:
            self.routing_rate.add(emit.anomaly_id, emit.opened_at, emit.route.team)


def _seconds(value: float | None) -> float | None:
    # To the µs: a mean of two middle values may differ in its last bit by formula.
    return None if value is None else round(value, 6)
