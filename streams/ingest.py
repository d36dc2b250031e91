"""Ingest stage wiring: one batch of raw source events in, normalised events and dead letters out.

The rules live in streams.rules.ingest; this class only decodes a Faust batch, calls them,
and writes their results: normalised events (keyed by master order id), dead letters, and
the per-reference state (once per key per batch, on the key's own changelog partition).
"""

from __future__ import annotations

import base64
import logging
import time
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
from faust.types import EventT, TableT

from schemas.stages import Source
from sinks import metrics
from streams.produce import BatchProducer, Outgoing
from streams.rules.continuity import Admit, OffsetContinuity
from streams.rules.ingest import IngestRules, Outcome, RefState, Rejection, state_key
from streams.topics import TopicNames

log = logging.getLogger(__name__)


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


class IngestStage:
    """Processes one batch of source-topic events at a time."""

    def __init__(
        self,
        app: Any,
        table: TableT,
        rules: IngestRules,
        topics: TopicNames,
        *,
        end_marker_key: str | None,
    ):
        self.app = app
        self.table = table
        self.rules = rules
        self.topics = topics
        self.source_of = topics.source_of()
        self.end_marker_key = end_marker_key
        self.changelog = table.changelog_topic.get_topic_name()
        self.producer = BatchProducer(app)
        self.continuity: OffsetContinuity[Any] = OffsetContinuity()
        self._generation: int | None = None

    async def process(self, events: Sequence[EventT]) -> None:
        """Validate, dedupe, link and forward a batch; then persist the touched state."""
        started = time.perf_counter()
        received_at = datetime.now(UTC)
        out: list[Outgoing] = []
        touched: dict[str, tuple[int, RefState]] = {}
        counts: Counter[tuple[str, str]] = Counter()
        latest_event_time: dict[Source, datetime] = {}

        store = self.table.data  # the store itself: Table.get adds per-call bookkeeping
        await self._baselines({e.message.tp for e in events})
        now = time.monotonic()
        for event in events:
            msg = event.message
            if not await self._in_sequence(msg, now):
                continue
            source = self.source_of[msg.topic]
            raw: bytes | None = event.value
            decoded = self.rules.decode(raw, source)
            if isinstance(decoded, Rejection):
                out.append(self._dead(msg, raw, decoded, received_at))
                counts[(source.value, Outcome.REJECTED.value)] += 1
                continue
            assert raw is not None
            key = state_key(source, decoded.order_ref)
            entry = touched.get(key)
            state = entry[1] if entry else RefState.from_json(store.get(key))
            applied = self.rules.apply(decoded, raw, state, received_at)
            counts[(source.value, applied.outcome.value)] += 1
            if applied.rejection is not None:
                out.append(self._dead(msg, raw, applied.rejection, received_at))
                continue
            if applied.outcome is Outcome.DUPLICATE:
                continue
            touched[key] = (msg.partition, state)
            for order_id, body in applied.forward:
                out.append(Outgoing(self.topics.normalized, order_id.encode(), orjson.dumps(body)))
            seen = latest_event_time.get(source)
            if seen is None or decoded.occurred_at > seen:
                latest_event_time[source] = decoded.occurred_at

        await self._produce(out)
        await self._persist(touched)

        for (source_name, outcome), n in counts.items():
            metrics.EVENTS.labels(source_name, outcome).inc(n)
        for source, occurred in latest_event_time.items():
            metrics.EVENT_LAG.labels(source.value).set((received_at - occurred).total_seconds())
        metrics.INGEST_BATCH_SECONDS.set(time.perf_counter() - started)

    async def _baselines(self, partitions: set[Any]) -> None:
        # After every (re)assignment, each partition's first expected offset is its committed
        # offset, or the log start when the group has committed nothing there yet.
        generation = self.app.consumer_generation_id
        if generation != self._generation:
            self.continuity.reset()
            self._generation = generation
        consumer = self.app.consumer
        unknown = {tp for tp in partitions if not self.continuity.knows(tp)}
        if not unknown:
            return
        missing = set()
        for tp in unknown:
            committed = consumer._committed_offset.get(tp)
            if committed is not None:
                self.continuity.start_at(tp, committed)
            else:
                missing.add(tp)
        if missing:
            starts = {
                tp: offset if offset is not None and offset >= 0 else 0
                for tp, offset in (await consumer.earliest_offsets(*missing)).items()
            }
            for tp, offset in starts.items():
                self.continuity.start_at(tp, offset)
            # A group with no committed offset is where positions were seen to jump after a
            # restart: give every partition a committed starting point at once.
            await consumer._commit(starts)

    async def audit_positions(self) -> None:
        """Rewind partitions whose fetch position jumped past records silently (a timer)."""
        if self.app.rebalancing:
            return
        consumer = self.app.consumer
        # Every assigned source partition, including those no record has reached yet.
        await self._baselines({tp for tp in consumer.assignment() if tp.topic in self.source_of})
        now = time.monotonic()
        for tp in self.continuity.partitions():
            verdict = self.continuity.audit(tp, await consumer.position(tp), now)
            if verdict.admit is Admit.REWIND:
                assert verdict.rewind_to is not None
                await self._rewind(tp, verdict.rewind_to, "the fetch position is past it")

    async def _in_sequence(self, msg: Any, now: float) -> bool:
        verdict = self.continuity.admit(msg.tp, msg.offset, now)
        if verdict.admit is Admit.PROCESS:
            return True
        if verdict.admit is Admit.REWIND:
            assert verdict.rewind_to is not None
            await self._rewind(msg.tp, verdict.rewind_to, f"offset {msg.offset} arrived")
        # Held back: marked acknowledged so the batch ack does not record it (the offset
        # commit must not pass the gap); the rewound fetch delivers it again.
        msg.acked = True
        self.app.consumer._unacked_messages.discard(msg)
        return False

    async def _rewind(self, tp: Any, offset: int, why: str) -> None:
        log.warning("%s: rewinding to expected offset %d (%s)", tp, offset, why)
        metrics.INGEST_REWINDS.inc()
        await self.app.consumer.seek(tp, offset)

    def _dead(
        self, msg: Any, raw: bytes | None, rejection: Rejection, received_at: datetime
    ) -> Outgoing:
        metrics.DEADLETTERS.labels(rejection.reason.value).inc()
        value = dead_letter(
            msg.topic, msg.partition, msg.offset, msg.key, raw, rejection, received_at
        )
        return Outgoing(
            self.topics.deadletter,
            msg.key,
            value,
            [("concord-reason", rejection.reason.value.encode())],
        )

    async def _produce(self, out: list[Outgoing]) -> None:
        # Outputs are acknowledged before the state that records them is written, so a
        # crash can repeat an output (consumers dedupe on source+event_id) but never lose one.
        if out:
            await self.producer.send(out)

    async def _persist(self, touched: dict[str, tuple[int, RefState]]) -> None:
        # One changelog record per key per batch, on the partition of the key's own events
        # (Faust would use the partition of the batch's last event for every key). Sent and
        # acknowledged here rather than through Faust's send_soon buffer, whose flush gives
        # up after 0.1 s: the offset commit must never overtake the state it depends on.
        if not touched:
            return
        store = self.table.data
        records = []
        for key, (partition, state) in touched.items():
            value = state.to_json()
            store[key] = value
            records.append(
                Outgoing(self.changelog, orjson.dumps(key), orjson.dumps(value), None, partition)
            )
        await self.producer.send(records)
        if self.end_marker_key is not None:
            # tansu: close each touched partition with a one-record batch (streams/tansu.py).
            marker = orjson.dumps(self.end_marker_key)
            partitions = {partition for partition, _ in touched.values()}
            await self.producer.send(
                Outgoing(self.changelog, marker, None, None, p) for p in sorted(partitions)
            )
