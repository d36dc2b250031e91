"""Ingest stage wiring: one batch of raw source events in, normalised events and dead letters out.

The rules live in streams.rules.ingest; this class only decodes a Faust batch, calls them,
and writes their results: normalised events (keyed by master order id), dead letters, and
the per-reference state (once per key per batch, on the key's own changelog partition).
"""

from __future__ import annotations

import base64
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import orjson
from faust.types import Message, TableT

from schemas.anomalies import Anomaly
from schemas.stages import Source
from sinks import metrics
from streams.outputs import anomaly_records
from streams.produce import Outgoing
from streams.rules.ghosts import GhostRules, GhostState, TimerWheel, evaluate_unlinked
from streams.rules.ingest import (
    IngestRules,
    Origin,
    Outcome,
    RefState,
    Rejection,
    state_key,
)
from streams.rules.order_state import OrderJoin
from streams.rules.watermark import SourceTime, as_us, from_us, occurred_us
from streams.stage import PartitionedStage
from streams.topics import TopicNames


def dead_letter(
    event_topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
    rejection: Rejection,
    received_at: datetime,
) -> bytes:
    """The dead-letter record's value: why, where from, and the original bytes."""
    body: dict[str, Any] = {
        "reason": rejection.reason.value,
        "error": rejection.error,
        "topic": event_topic,
        "partition": partition,
        "offset": offset,
        "key": key.decode("utf-8", "replace") if key is not None else None,
        "original_b64": base64.b64encode(value).decode() if value is not None else None,
        "received_at": received_at.isoformat(),
    }
    return orjson.dumps(body)


ENVELOPE_EVENTS = 500  # ~250 KB at most per record, well under Kafka's 1 MB default


SOURCE_TIME_PREFIX = "\x00time|"


def source_time_key(topic: str, partition: int) -> str:
    """The ingest table's key of a source partition's newest event time."""
    return f"{SOURCE_TIME_PREFIX}{topic}|{partition}"


def _table_value(value: Any) -> Any:
    # What the ingest table holds: a reference's state, or a partition's newest event time.
    return value.to_json() if isinstance(value, RefState) else value


def _unlinked_events(state: RefState) -> tuple[list[dict[str, Any]], int | None]:
    # What a reference is judged on as unlinked, and its link's event time once it came.
    if state.link is None:
        return state.held, None
    return state.unlinked, state.since_us


def envelope(events: Sequence[bytes]) -> bytes:
    """`{"events": [...]}` of events already encoded: the bytes orjson.dumps would give."""
    return b'{"events":[' + b",".join(events) + b"]}"


class IngestStage(PartitionedStage):
    """Processes one batch of source-topic events at a time."""

    def __init__(
        self,
        app: Any,
        table: TableT,
        rules: IngestRules,
        topics: TopicNames,
        source_time: SourceTime[Any],
        ghost_rules: GhostRules,
        join: OrderJoin,
        *,
        end_marker_key: str | None,
    ):
        super().__init__(app, table, topics.sources.values(), end_marker_key=end_marker_key)
        self.rules = rules
        self.topics = topics
        self.source_of = topics.source_of()
        self.source_time = source_time
        self.origin = uuid.uuid4().hex[:12]  # this worker, as a source of watermarks
        self._sent_mark: tuple[int | None, list[str]] = (None, [])  # watermark, coverage
        self._ends: dict[Any, int] = {}
        self._ends_at = 0.0
        # Unlinked references (events held for a link): orphan_order once they waited long.
        self.ghost_rules = ghost_rules
        self.join = join
        self.unlinked = TimerWheel()
        # ERP references whose events wait for the order's details: missing_order once too long.
        self.awaiting_details = TimerWheel()
        self.on_anomaly: Callable[[Anomaly], None] = lambda anomaly: None
        self._built_for: int | None = None

    async def process(self, messages: Sequence[Message]) -> None:
        """Validate, dedupe, link and forward a batch; then persist the touched state."""
        started = time.perf_counter()
        received_at = self.wall_clock()
        out: list[Outgoing] = []
        touched: dict[str, tuple[int, RefState]] = {}
        counts: Counter[tuple[Source, Outcome]] = Counter()
        latest_us: dict[Source, int] = {}

        store = self.table.data  # the store itself: Table.get adds per-call bookkeeping
        self._ensure_timers()
        await self._baselines({m.tp for m in messages})
        wall_us = as_us(received_at)
        now = time.monotonic()
        forward: list[tuple[str, bytes]] = []  # (order id, normalised event as JSON)
        for msg in messages:
            if not self._in_sequence(msg, now):
                continue
            source = self.source_of[msg.topic]
            raw: bytes | None = msg.value
            origin = Origin(msg.partition, msg.offset, msg.key)
            decoded = self.rules.decode(raw, source, received_at)
            if isinstance(decoded, Rejection):
                out.append(self._dead(msg.topic, origin, raw, decoded, received_at))
                counts[(source, Outcome.REJECTED)] += 1
                continue
            assert raw is not None
            event_us = as_us(decoded.occurred_at)
            self.source_time.observe_us(msg.tp, event_us, wall_us)
            key = state_key(source, decoded.order_ref)
            entry = touched.get(key)
            state = entry[1] if entry else RefState.from_json(store.get(key))
            applied = self.rules.apply(decoded, raw, state, received_at, event_us, origin=origin)
            counts[(source, applied.outcome)] += 1
            if applied.rejection is not None:
                out.append(self._dead(msg.topic, origin, raw, applied.rejection, received_at))
                continue
            if applied.outcome is Outcome.DUPLICATE:
                continue
            touched[key] = (msg.partition, state)
            if applied.outcome is Outcome.HELD:
                if state.waiting:
                    self.awaiting_details.schedule_us(key, self.rules.details_deadline_us(state))
                elif len(state.held) == 1:
                    self.unlinked.schedule_us(key, event_us)
            elif state.unlinked:
                # Linked: judged as the reference's own until event time reaches the link
                # (an earlier event that brings it, read later, moves the link earlier).
                assert state.since_us is not None  # set by the event that brought the link
                self.unlinked.schedule_by_us(key, state.since_us)
            elif key in self.awaiting_details:  # the details came: the waiting went with them
                self.awaiting_details.cancel(key)
            # Encoded at once: the dicts are garbage now, not alive through the batch.
            forward += [(order_id, orjson.dumps(body)) for order_id, body in applied.forward]
            seen = latest_us.get(source)
            if seen is None or event_us > seen:
                latest_us[source] = event_us

        out += await self._envelopes(forward)
        await self._mark_watermark(out, wall_us, touched)
        await self._produce(out)
        times = self._source_time_records({m.tp for m in messages})
        await self._persist({**touched, **times}, _table_value)

        for (source, outcome), n in counts.items():
            metrics.EVENTS.labels(source.value, outcome.value).inc(n)
        for source, occurred in latest_us.items():
            metrics.EVENT_LAG.labels(source.value).set((wall_us - occurred) / 1e6)
        metrics.INGEST_BATCH_SECONDS.set(time.perf_counter() - started)

    async def _envelopes(self, forward: list[tuple[str, bytes]]) -> list[Outgoing]:
        # The batch's events for concord.normalized, packed per partition (each event on the
        # partition of its order id, as keyed records would be) into envelopes of up to
        # ENVELOPE_EVENTS: the per-order stage then pays Faust's per-message cost once per
        # envelope instead of once per event. Order within a partition is kept.
        if not forward:
            return []
        topic = self.topics.normalized
        partitions = await self.producer.partitions(topic)
        by_partition: dict[int, list[bytes]] = {}
        for order_id, body in forward:
            partition = self.producer.partition_for_key(order_id.encode(), partitions)
            by_partition.setdefault(partition, []).append(body)
        out = []
        for partition, bodies in by_partition.items():
            for i in range(0, len(bodies), ENVELOPE_EVENTS):
                value = envelope(bodies[i : i + ENVELOPE_EVENTS])
                out.append(Outgoing(topic, None, value, None, partition))
        return out

    async def _mark_watermark(
        self, out: list[Outgoing], wall_us: int, touched: dict[str, tuple[int, RefState]]
    ) -> None:
        # After the batch's events, on every partition of concord.normalized: event time
        # across the source partitions this worker reads (the per-order stage's clock).
        await self._note_backlogs()
        watermark = self.source_time.value_us(wall_us)
        if watermark is None:
            return
        # Due whenever event time is past them, moved or not: a reference held again (a
        # re-send after its first wait ran out) is due at once.
        await self._unlinked_due(from_us(watermark), from_us(wall_us), out, touched)
        self._details_overdue(watermark, out, touched)
        # What the mark speaks for: the source partitions read here, out of all of them. A
        # mark goes out when either changes (after a hand-over the time may stand still
        # while the partitions it covers grow).
        covers = sorted(f"{tp.topic}/{tp.partition}" for tp in self.assigned())
        if (watermark, covers) == self._sent_mark:
            return
        self._sent_mark = (watermark, covers)
        of = 0
        for topic in self.topics.sources.values():
            of += len(await self.producer.partitions(topic))
        body = orjson.dumps(
            {"watermark_us": watermark, "origin": self.origin, "covers": covers, "of": of}
        )
        out += await self._to_every_partition(self.topics.normalized, body)

    async def _note_backlogs(self) -> None:
        # A source partition whose log end is past the next offset to process has events
        # waiting: it holds event time back, however long the consumer leaves it unread.
        # The log end is the larger of two readings, each wrong alone in one case: the high
        # watermark of the consumer's latest fetch (stale while Faust pauses a partition
        # whose buffer is full) and ListOffsets, asked at most once a second (tansu answers
        # it short by a batch). Records already handed to the stream and not yet processed
        # are a backlog too, whatever the log end says.
        if self.app.rebalancing:
            return
        consumer = self.app.consumer
        assigned = sorted(self.assigned())
        now = time.monotonic()
        if now - self._ends_at >= 1.0 and assigned:
            self._ends = dict(await consumer.highwaters(*assigned))
            self._ends_at = now
        for tp in assigned:
            fetched = consumer.highwater(tp)
            if fetched is None:
                # No fetch of it answered since the assignment: its end is unknown, and
                # ListOffsets alone may say "caught up" in the middle of tansu's last batch.
                self.source_time.backlog(tp, True)
                continue
            ends = [e for e in (fetched, self._ends.get(tp)) if e is not None]
            expected = self.continuity.expected(tp)
            pending = (expected is None or max(ends) > expected) or self._buffered(tp)
            self.source_time.backlog(tp, pending)

    async def tick(self) -> None:
        """Publish the watermark if it moved since a batch did (quiet partitions let it go)."""
        if self.app.rebalancing:
            return
        self._ensure_timers()
        out: list[Outgoing] = []
        touched: dict[str, tuple[int, RefState]] = {}
        await self._mark_watermark(out, as_us(self.wall_clock()), touched)
        await self._produce(out)
        await self._persist(touched, RefState.to_json)

    async def _unlinked_due(
        self,
        watermark: datetime,
        wall: datetime,
        out: list[Outgoing],
        touched: dict[str, tuple[int, RefState]],
    ) -> None:
        # References unlinked as of their timer's event time: the ghost rules (orphan_order
        # after `orphan_after`) on what they held, until event time reaches their link.
        store = self.table.data
        while due := self.unlinked.due(watermark):
            for key, at in due:
                held = touched.get(key)
                state = held[1] if held else RefState.from_json(store.get(key))
                events, link_us = _unlinked_events(state)
                if not events:
                    continue
                source_name, ref = key.split("|", 1)
                ghosts = GhostState.from_json(state.ghosts, ref)
                outcome = evaluate_unlinked(
                    self.ghost_rules, self.join, ref, events, ghosts, at, wall, link_us
                )
                self.unlinked.schedule_us(key, outcome.next_us)
                if link_us is not None and outcome.next_us is None:
                    state.unlinked = []  # judged up to its link: done
                    state.ghosts = None
                else:
                    state.ghosts = None if ghosts.is_empty else ghosts.to_json()
                if held is None:
                    topic = self.topics.sources[Source(source_name)]
                    touched[key] = (await self.producer.key_partition(topic, ref.encode()), state)
                for emit in outcome.emits:
                    if isinstance(emit, Anomaly):
                        out += self._anomalies(emit)

    def _details_overdue(
        self, watermark_us: int, out: list[Outgoing], touched: dict[str, tuple[int, RefState]]
    ) -> None:
        # ERP events that waited `order_details_wait` of event time for their order's details
        # in vain: dead-lettered missing_order with their original bytes, as they came.
        store = self.table.data
        topic, rejection = self.topics.sources[Source.ERP], self.rules.missing_details
        while due := self.awaiting_details.due(from_us(watermark_us)):
            for key, _ in due:
                entry = touched.get(key)
                state = entry[1] if entry else RefState.from_json(store.get(key))
                expired = self.rules.expire_waiting(state, watermark_us)
                self.awaiting_details.schedule_us(key, self.rules.details_deadline_us(state))
                for waited in expired:
                    received_at = datetime.fromisoformat(waited.event["received_at"])
                    out.append(self._dead(topic, waited.origin, waited.raw, rejection, received_at))
                if expired and entry is None:
                    touched[key] = (expired[0].origin.partition, state)

    def _anomalies(self, anomaly: Anomaly) -> list[Outgoing]:
        self.on_anomaly(anomaly)
        return anomaly_records(self.topics, anomaly, indexed=False)

    def _source_time_records(self, partitions: set[Any]) -> dict[str, tuple[int, Any]]:
        # Each source partition's newest event time, written with the references its batch
        # touched: after a restart, event time resumes from where the records read had taken
        # it, also on partitions that receive nothing new (`_ensure_timers`).
        records: dict[str, tuple[int, Any]] = {}
        for tp in partitions:
            latest = self.source_time.latest_us(tp)
            if latest is not None:
                records[source_time_key(tp.topic, tp.partition)] = (tp.partition, latest)
        return records

    def _ensure_timers(self) -> None:
        # After an assignment: event time where the assigned source partitions had taken it,
        # and a timer for every reference of this worker still unlinked.
        generation = self.app.consumer_generation_id
        if generation == self._built_for:
            return
        self._built_for = generation
        self.source_time.reset()
        wall_us = as_us(self.wall_clock())
        store = self.table.data
        for tp in self.assigned():
            latest = store.get(source_time_key(tp.topic, tp.partition))
            if isinstance(latest, int):
                self.source_time.observe_us(tp, latest, wall_us)  # idle in time, as if read now
        self.unlinked = TimerWheel()
        self.awaiting_details = TimerWheel()
        for key, raw in store.items():
            if key.startswith(SOURCE_TIME_PREFIX):
                continue
            if not isinstance(raw, dict):
                continue
            state = RefState.from_json(raw)
            if state.waiting:
                self.awaiting_details.schedule_us(key, self.rules.details_deadline_us(state))
            events, link_us = _unlinked_events(state)
            if not events:
                continue
            ref = key.split("|", 1)[1]
            ghosts = GhostState.from_json(state.ghosts, ref)
            # Judged before: when it asked to be; never: at its first event; by its link.
            due = ghosts.next_us if state.ghosts else min(occurred_us(e) for e in events)
            if link_us is not None and (due is None or link_us < due):
                due = link_us
            self.unlinked.schedule_us(key, due)
            for entry in ghosts.book.open_entries():  # counted again after a restart
                self.on_anomaly(entry.anomaly(ref, self.wall_clock()))

    def _dead(
        self,
        topic: str,
        origin: Origin,
        raw: bytes | None,
        rejection: Rejection,
        received_at: datetime,
    ) -> Outgoing:
        metrics.DEADLETTERS.labels(rejection.reason.value).inc()
        value = dead_letter(topic, *origin, raw, rejection, received_at)
        return Outgoing(
            self.topics.deadletter,
            origin.key,
            value,
            [("concord-reason", rejection.reason.value.encode())],
        )

    async def _produce(self, out: list[Outgoing]) -> None:
        # Outputs are acknowledged before the state that records them is written, so a
        # crash can repeat an output (consumers dedupe on source+event_id) but never lose one.
        if out:
            await self.producer.send(out)
