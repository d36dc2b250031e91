"""Per-order stage wiring: normalised events in, the joined order state, KPIs and ghosts out.

The rules live in streams.rules (order_state, watermark, refresh_latency, consistency,
ghosts, freshness, lifecycle, routing); this class feeds them one batch of
`concord.normalized` (keyed by master order id) at a time, publishes what they emit, and
writes each touched order's state once per batch on its own changelog partition.

The KPI aggregates (latency windows, consistency population, timers, open ghosts, the phone
index) are derived from the order states this worker owns: they live in memory and are
rebuilt from the table after every partition assignment. They describe this worker's
partitions; with one worker (the default) that is every order.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from faust.types import Message, TableT

from schemas.anomalies import Anomaly, AnomalyState, Command, Decision
from schemas.routing import RoutingTable
from schemas.settings import Settings
from schemas.stages import PHASE_OF, Source
from sinks import metrics
from streams.breaker import snapshot_record
from streams.decisions import decision_dead_letter
from streams.dedupe import placement
from streams.outputs import anomaly_records, command_record
from streams.produce import Outgoing
from streams.rules.consistency import ConsistencyTracker
from streams.rules.freshness import SourceFreshness
from streams.rules.ghosts import GhostRules, GhostState, TimerWheel
from streams.rules.ingest import Reason
from streams.rules.intake import IntakeCounts, IntakeTimes, intake_times
from streams.rules.lifecycle import OpenGhosts, UnknownAnomaly, apply_decision
from streams.rules.order_state import (
    OrderJoin,
    OrderState,
    Outcome,
    counts_from_us,
    is_evictable,
    observations_of,
)
from streams.rules.refresh_latency import TARGETS, LatencyWindow, Observation
from streams.rules.routing import AutoRoutingRate
from streams.rules.watermark import UpstreamMarks, Watermark, as_us, from_us, occurred_us
from streams.stage import PartitionedStage, raw_key
from streams.topics import TopicNames
from streams.warehouse import Warehouse

log = logging.getLogger(__name__)

_SOURCES = {s.value: s for s in Source}

# Orders kept decoded once written (most recently touched stay): an order's next event then
# skips decoding its state. The table stays the truth; this is dropped at every assignment.
DECODED_ORDERS_KEPT = 20_000
# Orders changed and not yet written: past this many they are written at once, not only
# before the next offset commit.
UNWRITTEN_ORDERS_MAX = 20_000


def watermark_key(partition: int) -> bytes:
    """The state table's key of the per-order stage's watermark on one partition."""
    return b"\x00watermark/%d" % partition


def _table_value(value: Any) -> Any:
    # What the state table holds: an order's state (None deletes it) or a watermark record.
    return value.to_json() if isinstance(value, OrderEntry) else value


def stored(value: bytes | None) -> dict[str, Any] | None:
    """A table value as the stage reads it: the changelog's JSON bytes, decoded."""
    decoded = None if value is None else orjson.loads(value)
    return decoded if isinstance(decoded, dict) else None


@dataclass(slots=True)
class OrderEntry:
    """One order as the stage holds it during a batch."""

    partition: int
    state: OrderState
    ghosts: GhostState
    evict: bool = False

    def to_json(self) -> dict[str, Any] | None:
        """The table value (None deletes the order)."""
        if self.evict:
            return None
        value: dict[str, Any] = {"s": self.state.to_json()}
        if not self.ghosts.is_empty:
            value["g"] = self.ghosts.to_json()
        return value

    @classmethod
    def from_json(cls, partition: int, order_id: str, raw: dict[str, Any] | None) -> OrderEntry:
        """The inverse of to_json; None gives a new order."""
        if raw is None:
            return cls(partition, OrderState(order_id=order_id), GhostState.new(order_id))
        return cls(
            partition,
            OrderState.from_json(raw["s"]),
            GhostState.from_json(raw.get("g"), order_id),
        )


class OrderStage(PartitionedStage):
    """Joins the four systems per order and keeps the KPIs and ghost rules current."""

    def __init__(
        self,
        app: Any,
        table: TableT,
        topics: TopicNames,
        settings: Settings,
        routing: RoutingTable,
        join: OrderJoin,
        *,
        fingerprint: Callable[[dict[str, Any]], bytes],
        warehouse: Warehouse | None = None,
        end_marker_key: str | None,
    ):
        super().__init__(
            app,
            table,
            [topics.normalized],
            end_marker_key=end_marker_key,
            encode_key=raw_key,
            keep_encoded=True,
        )
        self.fingerprint = fingerprint
        self.warehouse = warehouse
        self._marks: UpstreamMarks[int] = UpstreamMarks(settings.source_idle_after)
        self._kpi_minute: int | None = None
        self._placements_marked: int | None = None
        self.topics = topics
        self.settings = settings
        self.join = join
        self.ghost_rules = GhostRules(routing=routing)
        self.freshness = SourceFreshness(routing=routing)
        self.watermark = self._new_watermark()
        self.latency = LatencyWindow()
        self.consistency = ConsistencyTracker()
        self.wheel = TimerWheel()
        self.open_ghosts = OpenGhosts()  # rebuilt from the order books
        # Reported by the other stages (ingest's orphans, duplicates, the breaker); they
        # re-report what is open after a restart where they can (ingest's orphans).
        self.other_open = OpenGhosts()
        self._gauged: set[tuple[str, str]] = set()
        self._latency_metrics: dict[Source, tuple[Any, Any]] = {}
        self.routing_rate = AutoRoutingRate()
        self.phones: dict[str, set[str]] = {}
        self.lock = asyncio.Lock()  # the agent and the timers never interleave on one state
        self._built_for: int | None = None
        self._partitions: list[int] = []
        # Orders changed since their state was last written (table + changelog), and those of
        # them the current batch changed. States are written before every offset commit
        # (`before_commit`), not after every batch: an order that several batches change
        # between two commits is encoded and written once.
        self._touched: dict[bytes, OrderEntry] = {}
        self._changed: dict[bytes, OrderEntry] = {}
        self._unwritten_new: set[bytes] = set()  # orders among them the table does not hold
        self._decoded: dict[bytes, OrderEntry] = {}  # least recently touched first
        # Each partition's intake counts (streams/breaker.py), the partitions whose counts
        # changed since they were last sent, and the watermark they were last sent with.
        self._intake: dict[int, IntakeCounts] = {}
        self._intake_unsent: set[int] = set()
        self._intake_sent_us: int | None = None
        self._reserving = settings.breaker.reserving_systems
        self._intake_sources = frozenset({Source.ERP, *self._reserving})
        self._outcomes: Counter[Outcome] = Counter()
        self._late: Counter[Source] = Counter()
        self._last_offset: dict[int, int] = {}
        self._out: list[Outgoing] = []
        self._watermark_written: int | None = None

    def _new_watermark(self) -> Watermark:
        return Watermark(self.settings.allowed_lateness, self.settings.watermark_idle_after)

    # --- the agent ------------------------------------------------------------------------

    async def process(self, messages: Sequence[Message]) -> None:
        """Apply a batch of normalised events to their orders and publish the results (the
        states they changed are written before the next offset commit)."""
        async with self.lock:
            await self._ensure_built()
            await self._baselines({m.tp for m in messages})
            started = time.perf_counter()
            wall = self.wall_clock()
            wall_us = as_us(wall)
            now = time.monotonic()
            for msg in messages:
                if not self._in_sequence(msg, now):
                    continue
                body = orjson.loads(msg.value)
                if "events" in body:
                    for inner in body["events"]:
                        self._apply(msg.partition, inner, wall, wall_us)
                    self._last_offset[msg.partition] = msg.offset
                    if self.warehouse is not None:
                        self.warehouse.events(body["events"])
                elif "watermark_us" in body:
                    self._mark(msg.partition, body, wall, wall_us)
                elif "decision" in body:
                    self._decide(msg, body, wall)
            self._ship_intake()
            await self._flush()
            for outcome, n in self._outcomes.items():
                metrics.ORDER_EVENTS.labels(outcome.value).inc(n)
            self._outcomes.clear()
            for source, n in self._late.items():
                metrics.LATE_EVENTS.labels(source.value).inc(n)
            self._late.clear()
            metrics.ORDER_BATCH_SECONDS.set(time.perf_counter() - started)

    def _mark(self, partition: int, body: dict[str, Any], wall: datetime, wall_us: int) -> None:
        # Ingest's event time across the source partitions (SourceTime), merged over the
        # partitions this worker reads and the ingest workers that report (UpstreamMarks).
        self._marks.observe_us(
            body["origin"],
            partition,
            body["watermark_us"],
            wall_us,
            covers=body.get("covers"),
            of=body.get("of"),
        )
        mine = [tp.partition for tp in self.assigned()]
        merged = self._marks.value_us(mine, wall_us)
        if merged is None:
            return
        before = self.watermark.value_us
        self.watermark.advance_to_us(merged, wall_us)
        if self.watermark.value_us != before:
            self._run_due(from_us(self.watermark.value_us), wall)  # type: ignore[arg-type]

    def _apply(self, partition: int, body: dict[str, Any], wall: datetime, wall_us: int) -> None:
        source = _SOURCES[body["source"]]
        event_us = occurred_us(body)
        caught = self.freshness.observe_us(
            source, event_us, wall_us, event_id=body["event_id"], status=body.get("status", "")
        )
        watermark = self.watermark.value
        watermark_us = self.watermark.value_us
        # From when the event counts for its order: its own time, or, if it waited in ingest
        # for its reference's link (or its order's details), the event that released it.
        known_us = counts_from_us(body, event_us)
        if watermark_us is not None and known_us < watermark_us:
            self._late[source] += 1  # applied all the same; timers already past may fire late
        if caught is not None:
            self.wheel.release(caught.source, watermark or from_us(event_us))
            if caught.anomaly is not None:
                self._emit(caught.anomaly)

        key = raw_key(body["order_id"])
        entry = self._entry(key, partition)
        had_facts = entry.state.facts
        had_phone = had_facts.phone_hash if had_facts else None
        # Only the ERP's and the reserving systems' events can change what the order counts for.
        counted = source in self._intake_sources
        had_intake = intake_times(entry.state, self._reserving) if counted else None
        change = self.join.apply(entry.state, body, event_us)
        self._outcomes[change.outcome] += 1
        if change.outcome is Outcome.DUPLICATE:
            return
        if had_intake is not None:
            self._count_intake(partition, entry.state, had_intake)
        if had_facts is None and entry.state.facts is not None:
            # The order's details, once, to the dedupe stage keyed by their fingerprint.
            self._out.append(
                Outgoing(
                    self.topics.placements,
                    self.fingerprint(body["order"]),
                    orjson.dumps(placement(entry.state.order_id, body, self.watermark.value_us)),
                )
            )
        for obs in change.observations:
            self._observe_latency(obs, record=not obs.revised)
        if self.warehouse is not None and change.observations:
            self.warehouse.latencies(change.observations)
        phone = entry.state.facts.phone_hash if entry.state.facts else None
        if phone != had_phone:
            self._index_phone(entry.state.order_id, had_phone, phone)
        if watermark_us is None or known_us > watermark_us:
            # The rules judge the order at event times the watermark has passed, on what was
            # true then (OrderState.as_of): this event counts once event time reaches it, so
            # the same events give the same anomalies however far ahead they were read.
            ghosts = entry.ghosts
            if ghosts.next_us is None or known_us < ghosts.next_us:
                ghosts.next_us = known_us
            self.wheel.schedule_by_us(entry.state.order_id, known_us)
        else:
            self._evaluate(entry, watermark, wall)  # a late event: judged where time is

    def _count_intake(self, partition: int, state: OrderState, had: IntakeTimes) -> None:
        # The order's counts follow its state, as of each instant (streams.rules.intake).
        now = intake_times(state, self._reserving)
        if now != had:
            counts = self._intake.setdefault(partition, IntakeCounts())
            counts.move(had.history(), now.history())
            self._intake_unsent.add(partition)

    def _ship_intake(self) -> None:
        # Every partition this worker owns reports the worker's watermark, even with nothing
        # counted, so the breaker's clock, the minimum over partitions, follows the slowest
        # worker rather than the quietest partition. Its counts go along, whole, when they
        # changed since it last sent them, with its last offset read: they are a function of
        # the events up to that offset, so the breaker drops them when sent again after a
        # crash. Each partition keeps only the minutes a window can still see at the event
        # time it last reported (less the allowed lateness): no event that is on time can
        # change an earlier one, and the breaker keeps those from the reports that held them.
        if self._intake_sent_us is not None:
            breaker = self.settings.breaker
            cut = from_us(self._intake_sent_us) - self.settings.allowed_lateness - breaker.window
            for counts in self._intake.values():
                counts.expire(cut)
        wm = self._intake_sent_us = self.watermark.value_us
        for tp in sorted(self.assigned()):
            partition = tp.partition
            counts = None
            if partition in self._intake_unsent:
                counts = self._intake.get(partition) or IntakeCounts()
            origin = f"{self.topics.normalized}/{partition}"
            offset = self._last_offset.get(partition, -1)
            self._out.append(snapshot_record(self.topics, origin, offset, counts, wm))
        self._intake_unsent.clear()

    def _decide(self, msg: Any, body: dict[str, Any], wall: datetime) -> None:
        # An anomaly.ack / anomaly.resolve the decisions stage routed to the anomaly's order.
        decision = Decision.model_validate(body["decision"])
        key = raw_key(body["order_id"])
        if key not in self._touched and key not in self.table.data:
            error = f"order {body['order_id']!r} is no longer held (evicted)"
            self._out.append(
                decision_dead_letter(
                    self.topics, msg, body["decision"], Reason.UNKNOWN_ANOMALY, error, wall
                )
            )
            return
        entry = self._entry(key, msg.partition)
        try:
            emits = apply_decision(entry.ghosts.book, decision, wall)
        except (UnknownAnomaly, ValueError) as exc:
            reason = (
                Reason.UNKNOWN_ANOMALY
                if isinstance(exc, UnknownAnomaly)
                else (Reason.INVALID_DECISION)
            )
            self._out.append(
                decision_dead_letter(self.topics, msg, body["decision"], reason, str(exc), wall)
            )
            return
        for anomaly in emits:
            self._emit(anomaly)

    def record_anomaly(self, anomaly: Anomaly) -> None:
        """Count an anomaly another stage of this worker published (open counts, routing)."""
        self.other_open.observe(anomaly)
        self._count_routing(anomaly)

    def open_counts(self) -> OpenGhosts:
        """Open anomalies of this worker: its orders' books and what other stages reported."""
        total = OpenGhosts()
        total.merge(self.open_ghosts)
        total.merge(self.other_open)
        return total

    def _count_routing(self, anomaly: Anomaly) -> None:
        if anomaly.state is AnomalyState.OPEN:
            self.routing_rate.add(anomaly.anomaly_id, anomaly.opened_at, anomaly.route.team)

    def _observe_latency(self, obs: Observation, *, record: bool) -> None:
        if self.latency.add(obs) and record:
            children = self._latency_metrics.get(obs.target)
            if children is None:  # labels() costs a lookup per call: once per target
                label = obs.target.value
                children = metrics.REFRESH_LATENCY.labels(label), metrics.REFRESH_SKEW.labels(label)
                self._latency_metrics[obs.target] = children
            histogram, skews = children
            histogram.observe(obs.latency_seconds)
            if obs.skew:
                skews.inc()

    def _entry(self, key: bytes, partition: int | None = None) -> OrderEntry:
        entry = self._changed.get(key)
        if entry is not None:
            return entry
        entry = self._touched.get(key)
        if entry is None:
            entry = self._decoded.pop(key, None)
            if entry is None:
                raw = stored(self.table.data.get(key))
                if partition is None:
                    partition = self._partition_of(key)
                entry = OrderEntry.from_json(partition, key.decode(), raw)
                if raw is None:
                    self._unwritten_new.add(key)
            self._touched[key] = entry
        self._changed[key] = entry
        return entry

    def _evaluate(
        self, entry: OrderEntry, now: datetime, wall: datetime, until_us: int | None = None
    ) -> None:
        # With `until_us`, again at each next instant up to it (the order's own chain of
        # event times and deadlines), without a round trip through the wheel for each.
        state = entry.state
        while True:
            outcome = self.ghost_rules.evaluate(
                state, entry.ghosts, now, wall, silent=self.freshness.silent
            )
            for source in outcome.held:
                self.wheel.hold(state.order_id, source)
            for emit in outcome.emits:
                self._emit(emit)
            next_us = outcome.next_us
            if until_us is None or next_us is None or next_us > until_us:
                break
            now = from_us(next_us)
        self.wheel.schedule_us(state.order_id, next_us)
        if outcome.judged is not None:
            # Consistency as of the time the order was last judged: events read ahead of
            # the watermark count from their own time, as for the ghost rules.
            self.consistency.update_from(outcome.judged)

    def _run_due(self, watermark: datetime, wall: datetime) -> None:
        # Each due order is looked at its own deadline, before the event that moved the
        # watermark is applied (see TimerWheel), then at each of its next instants up to
        # the watermark; repeat until nothing more is due.
        until_us = as_us(watermark)
        while due := self.wheel.due(watermark):
            for order_id, at in due:
                key = raw_key(order_id)
                if key not in self._touched and key not in self.table.data:
                    continue
                self._evaluate(self._entry(key), at, wall, until_us)

    def _emit(self, emit: Anomaly | Command) -> None:
        if isinstance(emit, Command):
            key = str(emit.payload.get("order_id") or "intake").encode()
            self._out.append(command_record(self.topics, emit, key))
            return
        self._out += anomaly_records(self.topics, emit, indexed=True)
        self.open_ghosts.observe(emit)
        self._count_routing(emit)

    def _index_phone(self, order_id: str, old: str | None, new: str | None) -> None:
        if old is not None:
            orders = self.phones.get(old)
            if orders is not None:
                orders.discard(order_id)
                if not orders:
                    del self.phones[old]
        if new is not None:
            self.phones.setdefault(new, set()).add(order_id)

    async def _flush(self) -> dict[bytes, OrderEntry]:
        # Outputs first, then (at the latest before the offset commit) the states that
        # record them: a crash repeats an anomaly (its id is deterministic, consumers dedupe)
        # but never loses one. Returns the orders changed since the last flush.
        await self._mark_placements()
        out, self._out = self._out, []
        changed, self._changed = self._changed, {}
        if out:
            await self.producer.send(out)
        if len(self._touched) > UNWRITTEN_ORDERS_MAX:
            await self._write_states()
        if self.warehouse is not None:
            self.warehouse.order_states(
                (e.state, bool(e.state.consistent)) for e in changed.values() if not e.evict
            )
            self._snapshot_kpis()
        self._publish_gauges()
        return changed

    async def before_commit(self) -> None:
        """Write every changed order's state before offsets are committed (a commit hook)."""
        async with self.lock:
            await self._write_states()

    async def _write_states(self, only: dict[bytes, OrderEntry] | None = None) -> None:
        # Each changed order (or those of `only`) once, on its own changelog partition; under
        # the lock. Writing a state ahead of its events' offsets is safe: the join is a max
        # or min over events, so their redelivery changes nothing.
        marks: dict[bytes, tuple[int, Any]] = {}
        if only is None:
            touched, self._touched = self._touched, {}
            self._unwritten_new.clear()
            marks = self._watermark_records()
        else:
            touched = only
            for key in only:
                self._touched.pop(key, None)
                self._unwritten_new.discard(key)
        if not touched and not marks:
            return
        records: dict[bytes, tuple[int, Any]] = {k: (e.partition, e) for k, e in touched.items()}
        written = await self._persist({**records, **marks}, _table_value)
        decoded = self._decoded
        for key, e in touched.items():
            if e.evict:
                decoded.pop(key, None)
            else:
                decoded[key] = e
        while len(decoded) > DECODED_ORDERS_KEPT:
            del decoded[next(iter(decoded))]
        kept = sum(not e.evict for e in touched.values())
        if kept:
            metrics.ORDER_STATE_BYTES.set(written / kept)

    def _watermark_records(self) -> dict[bytes, tuple[int, Any]]:
        # The watermark, on each of this worker's partitions, written with every order those
        # partitions changed: after a restart, event time resumes where the states it judged
        # were written (not at their latest event, which may be far ahead of it).
        watermark = self.watermark.value_us
        if watermark is None or watermark == self._watermark_written:
            return {}
        self._watermark_written = watermark
        return {
            watermark_key(tp.partition): (tp.partition, {"watermark_us": watermark})
            for tp in self.assigned()
        }

    async def _mark_placements(self) -> None:
        # After this batch's placements, on every placements partition: the dedupe stage's
        # clock (a partition no order reached lately must not hold it back).
        watermark = self.watermark.value_us
        if watermark is None or watermark == self._placements_marked:
            return
        self._placements_marked = watermark
        body = orjson.dumps({"wm": watermark})
        self._out += await self._to_every_partition(self.topics.placements, body)

    def _snapshot_kpis(self) -> None:
        # One KPI row set per minute of event time, at the watermark.
        assert self.warehouse is not None
        watermark = self.watermark.value
        if watermark is None:
            return
        minute = int(watermark.timestamp()) // 60
        if minute != self._kpi_minute:
            self._kpi_minute = minute
            self.warehouse.kpis(watermark, self.kpis())

    # --- timers ---------------------------------------------------------------------------

    async def tick(self) -> None:
        """Advance idle event time, fire due ghost timers, check source freshness (a timer)."""
        if self.app.rebalancing:
            return
        async with self.lock:
            await self._ensure_built()
            wall = self.wall_clock()
            before = self.watermark.value_us
            watermark = self.watermark.advance_idle(wall)
            if watermark is None:
                return
            if self.watermark.value_us != before:
                self._ship_intake()  # idle time moves the breaker's clock too
            self._run_due(watermark, wall)
            for anomaly in self.freshness.check(wall, watermark):
                self._emit(anomaly)
            for source in Source:
                metrics.SOURCE_SILENT.labels(source.value).set(
                    int(self.freshness.suppressed(source))
                )
            # What timers changed is tied to no offset, so no commit would write it: now.
            await self._write_states(await self._flush())

    async def evict(self) -> int:
        """Delete finished orders past their retention from the state table (a timer)."""
        if self.app.rebalancing:
            return 0
        async with self.lock:
            await self._ensure_built()
            watermark = self.watermark.value
            if watermark is None:
                return 0
            retention = self.settings.order_retention
            await self._write_states()  # the table is then current for the scan below
            for key, state, ghosts in self._held():
                if ghosts.book.has_open or not is_evictable(state, watermark, retention):
                    continue
                entry = OrderEntry(self._partition_of(key), state, ghosts, evict=True)
                self._touched[key] = entry
                self.consistency.remove(state.order_id)
                self.wheel.cancel(state.order_id)
                if state.facts is not None:
                    self._index_phone(state.order_id, state.facts.phone_hash, None)
            evicted = len(self._touched)
            await self._flush()
            await self._write_states()
            if evicted:
                log.info("evicted %d finished orders past %s", evicted, retention)
            return evicted

    # --- rebuilding after an assignment ---------------------------------------------------

    async def _ensure_built(self) -> None:
        generation = self.app.consumer_generation_id
        if generation == self._built_for:
            return
        self._built_for = generation
        # Orders changed since the last commit belong to offsets not committed: the new
        # assignment delivers those events again, onto the states in the table.
        self._touched.clear()
        self._changed.clear()
        self._unwritten_new.clear()
        self._decoded.clear()
        mine = {tp.partition for tp in self.assigned()}
        self._partitions = await self._partition_count()
        # Only this worker's partitions: not standby copies of another worker's.
        held = list(self._held(mine))
        states = [(state, ghosts) for _, state, ghosts in held]
        # Event time resumes only where every partition of this worker says where it stood:
        # a partition with none has events to come of any age.
        written = [stored(self.table.data.get(watermark_key(p))) for p in sorted(mine)]
        resumed = None
        if written and all(w is not None for w in written):
            resumed = min(w["watermark_us"] for w in written if w is not None)
        self.rebuild(states, self.wall_clock(), resumed)
        self._rebuild_intake(((self._partition_of(k), s) for k, s, _ in held), resumed)
        log.info("per-order state: %d orders on partitions %s", len(states), sorted(mine))

    def _rebuild_intake(
        self, orders: Iterable[tuple[int, OrderState]], watermark_us: int | None
    ) -> None:
        # Each partition's counts from its orders' states: what counting event by event gave.
        # Every partition sends them with its next report, at no offset: a breaker that holds
        # a snapshot of it drops them, one that holds none (a first start) takes them.
        self._intake = {}
        self._last_offset = {}
        for partition, state in orders:
            history = intake_times(state, self._reserving).history()
            if history:
                self._intake.setdefault(partition, IntakeCounts()).count(history)
        self._intake_unsent = {tp.partition for tp in self.assigned()}
        self._intake_sent_us = watermark_us

    def _held(
        self, partitions: set[int] | None = None
    ) -> Iterator[tuple[bytes, OrderState, GhostState]]:
        """The orders in the table, decoded; only those of `partitions` when given."""
        for key, value in list(self.table.data.items()):
            if partitions is not None and self._partition_of(key) not in partitions:
                continue
            raw = stored(value)
            if raw is None or "s" not in raw:
                continue  # not an order's state
            state = OrderState.from_json(raw["s"])
            yield key, state, GhostState.from_json(raw.get("g"), state.order_id)

    def rebuild(
        self,
        orders: Iterable[tuple[OrderState, GhostState]],
        wall: datetime,
        watermark_us: int | None = None,
    ) -> None:
        """Start the derived aggregates over from the order states this worker owns, with
        event time where it stood when they were written (`watermark_us`), if known."""
        orders = list(orders)
        self.watermark = self._new_watermark()
        self._watermark_written = watermark_us
        self._marks.reset()
        if watermark_us is not None:
            self.watermark.advance_to_us(watermark_us, as_us(wall))
        watermark = self.watermark.value
        self.latency = LatencyWindow()
        self.consistency.rebuild(
            (s if watermark is None else s.as_of(as_us(watermark)) for s, _ in orders), watermark
        )
        self.wheel = TimerWheel()
        self.open_ghosts = OpenGhosts()
        self.routing_rate = AutoRoutingRate()
        self.phones = {}
        for state, ghosts in orders:
            for obs in observations_of(state):
                self._observe_latency(obs, record=False)
            if ghosts.next_us is not None:
                self.wheel.schedule_us(state.order_id, ghosts.next_us)
            self.open_ghosts.add_book(ghosts.book)
            for entry in ghosts.book.entries.values():
                self.routing_rate.add(entry.anomaly_id, from_us(entry.opened_us), entry.team)
            if state.facts is not None and state.facts.phone_hash:
                self._index_phone(state.order_id, None, state.facts.phone_hash)
        if watermark is not None:
            self.latency.expire(watermark)
            self.routing_rate.expire(watermark)
        self._publish_gauges()

    async def _partition_count(self) -> list[int]:
        return await self.producer.partitions(self.topics.normalized)

    def _partition_of(self, key: bytes) -> int:
        # Kafka's default partitioner, as concord.normalized was keyed by the order id.
        if not self._partitions:
            return 0
        return self.producer.partition_for_key(key, self._partitions)

    # --- what the web views read ----------------------------------------------------------

    def kpis(self) -> dict[str, Any]:
        """The three KPIs on this worker's orders, at the watermark."""
        watermark = self.watermark.value
        latency: dict[str, Any] = {}
        if watermark is not None:
            for target in TARGETS:
                latency[target.value] = {
                    window: self.latency.stats(target, window, watermark).as_dict()
                    for window in self.latency.windows
                }
            self.consistency.expire(watermark)
            self.routing_rate.expire(watermark)
        counts = self.consistency.counts()
        routing = self.routing_rate.counts()
        return {
            "watermark": None if watermark is None else watermark.isoformat(),
            "orders_tracked": self._orders_tracked(),
            "refresh_latency_seconds": latency,
            "consistency": {
                "ratio": counts.ratio,
                "population": counts.population,
                "consistent": counts.consistent,
                "disagreeing": {s.value: n for s, n in counts.disagreeing.items()},
            },
            "auto_routing": {
                "ratio": routing.ratio(),
                "opened": routing.total,
                "routed": routing.auto,
            },
            "ghost_orders": {t.value: n for t, n in self.open_counts().ghost_orders().items()},
            "silent_sources": sorted(s.value for s in self.freshness.silent),
        }

    def order_view(self, order_id: str) -> dict[str, Any] | None:
        """The cross-system view of one order this worker owns, None when unknown."""
        key = raw_key(order_id)
        entry = self._touched.get(key)  # changed since its state was last written
        if entry is None:
            raw = stored(self.table.data.get(key))
            if raw is None:
                return None
            entry = OrderEntry.from_json(0, order_id, raw)
        elif entry.evict:
            return None
        return order_view(entry.state, entry.ghosts, self.watermark.value)

    def orders_by_phone(self, phone_hashes: Iterable[str]) -> list[dict[str, Any]]:
        """Views of this worker's orders placed with that phone (matched on any of its hashes:
        the current key's and, after a rotation, the previous key's)."""
        found = set().union(*(self.phones.get(h, ()) for h in phone_hashes))
        views = (self.order_view(o) for o in sorted(found))
        return [v for v in views if v is not None]

    def _publish_gauges(self) -> None:
        watermark = self.watermark.value
        if watermark is None:
            return
        metrics.WATERMARK.set(watermark.timestamp())
        self.consistency.expire(watermark)
        counts = self.consistency.counts()
        metrics.CONSISTENCY_POPULATION.set(counts.population)
        if counts.ratio is not None:
            metrics.CONSISTENCY_RATIO.set(counts.ratio)
        for source, n in counts.disagreeing.items():
            metrics.DISAGREEING.labels(source.value).set(n)
        for target in TARGETS:
            for window in self.latency.windows:
                stats = self.latency.stats(target, window, watermark)
                for quantile, value in (("0.5", stats.median), ("0.95", stats.p95)):
                    if value is not None:
                        metrics.REFRESH_LATENCY_EXACT.labels(target.value, window, quantile).set(
                            value
                        )
        self.routing_rate.expire(watermark)
        ratio = self.routing_rate.ratio()
        if ratio is not None:
            metrics.AUTO_ROUTING_RATIO.set(ratio)
        open_counts = self.open_counts()
        for type_, n in open_counts.ghost_orders().items():
            metrics.GHOST_ORDERS.labels(type_.value).set(n)
        now_open = {(t.value, m.value): n for (t, m), n in open_counts.open_anomalies().items()}
        for labels in self._gauged - now_open.keys():
            metrics.OPEN_ANOMALIES.labels(*labels).set(0)  # none open any more
        for labels, n in now_open.items():
            metrics.OPEN_ANOMALIES.labels(*labels).set(n)
        self._gauged = set(now_open)
        metrics.ORDERS_TRACKED.set(self._orders_tracked())

    def _orders_tracked(self) -> int:
        # The table (less its watermark records), and the new orders not written to it yet.
        data = self.table.data
        marks = sum(watermark_key(p) in data for p in self._partitions)
        return len(data) - marks + len(self._unwritten_new)


def order_view(state: OrderState, ghosts: GhostState, watermark: datetime | None) -> dict[str, Any]:
    """Order 360: each system's id, stage and last update, its lag behind the ERP, anomalies."""
    erp_phase = state.erp_phase
    disagreeing = state.disagreeing()
    scope = state.scope()
    entered_us = None if erp_phase is None else state.phase_entered_us(erp_phase)
    latencies = {
        obs.target: obs.latency_seconds
        for obs in observations_of(state)
        if erp_phase is not None and obs.phase is erp_phase
    }
    systems: dict[str, Any] = {}
    for source in Source:
        view = state.view(source)
        if view is None:
            systems[source.value] = {"reported": False, "in_scope": source in scope}
            continue
        behind: float | None = None
        if disagreeing and source in disagreeing and entered_us and watermark is not None:
            behind = max(0.0, (as_us(watermark) - entered_us) / 1e6)
        systems[source.value] = {
            "reported": True,
            "in_scope": source in scope,
            "order_ref": view.ref,
            "stage": None if view.stage is None else view.stage.value,
            "phase": None if view.stage is None else PHASE_OF[view.stage].value,
            "status": view.status,
            "updated_at": from_us(view.at_us).isoformat() if view.stage is not None else None,
            "last_seen_at": from_us(view.seen_us).isoformat(),
            "marker": None if view.marker is None else view.marker.value,
            "refresh_latency_seconds": latencies.get(source),
            "behind_erp_seconds": behind,
        }
    facts = state.facts
    now = watermark or datetime.now(UTC)
    return {
        "order_id": state.order_id,
        "erp_phase": None if erp_phase is None else erp_phase.value,
        "consistent": None if disagreeing is None else not disagreeing,
        "disagreeing": [s.value for s in disagreeing or ()],
        "order": None
        if facts is None
        else {
            "customer_id": facts.customer_id,
            "channel": facts.channel,
            "vip": facts.vip,
            "priority": facts.priority,
            "amount": facts.amount,
            "currency": facts.currency,
            "placed_at": from_us(facts.placed_at_us).isoformat() if facts.placed_at_us else None,
        },
        "tracking": {"carrier": state.carrier, "tracking_no": state.tracking_no},
        "systems": systems,
        "anomalies": [
            orjson.loads(e.anomaly(state.order_id, now).model_dump_json())
            for e in ghosts.book.open_entries()
        ],
        "watermark": None if watermark is None else watermark.isoformat(),
    }
