"""What every keyed Faust stage here shares: in-order delivery per partition, and state
written once per key per batch on the key's own changelog partition.

A stage subclasses `PartitionedStage`, calls `_baselines` then `_in_sequence` for each record
of a batch in its `process`, and hands the states it touched to `_persist` after its outputs
are acknowledged. The worker runs each batch through `run_batch`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
from faust.types import TableT

from sinks import metrics
from streams.produce import BatchProducer, Outgoing
from streams.rules.continuity import Admit, OffsetContinuity

log = logging.getLogger(__name__)


def utc_now() -> datetime:
    """The wall clock, aware and in UTC."""
    return datetime.now(UTC)


def raw_key(key: Any) -> bytes:
    """A table key as its changelog carries it raw: bytes as they are, text as UTF-8."""
    return key if isinstance(key, bytes) else str(key).encode()


class PartitionedStage:
    """Offset continuity for the stage's input topics, and per-key state persistence."""

    def __init__(
        self,
        app: Any,
        table: TableT,
        input_topics: Iterable[str],
        *,
        end_marker_key: str | None,
        encode_key: Any = orjson.dumps,
        keep_encoded: bool = False,
    ):
        self.app = app
        # The table holds values as their changelog bytes (its value type must be bytes):
        # a fifth of the memory of decoded dicts, and a recovery that decodes nothing.
        self.keep_encoded = keep_encoded
        self.table = table
        self.input_topics = frozenset(input_topics)
        self.end_marker_key = end_marker_key
        self.encode_key = encode_key
        self.changelog = table.changelog_topic.get_topic_name()
        self.producer = BatchProducer(app)
        # Wall time as the stage reads it (received_at, detected_at, the idle rules); the
        # in-process harness (tests/stage_harness.py) gives the stages a clock it moves.
        self.wall_clock: Callable[[], datetime] = utc_now
        self.continuity: OffsetContinuity[Any] = OffsetContinuity()
        self._rewinds: dict[Any, tuple[int, str]] = {}
        self._generation: int | None = None

    def reassigned(self) -> bool:
        """Whether the group rebalanced since the last batch (then positions start over)."""
        return self.app.consumer_generation_id != self._generation

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

    def assigned(self) -> set[Any]:
        """This worker's partitions of the stage's input topics."""
        return {tp for tp in self.app.consumer.assignment() if tp.topic in self.input_topics}

    async def audit_positions(self) -> None:
        """Rewind partitions whose fetch position jumped past records silently (a timer)."""
        if self.app.rebalancing:
            return
        consumer = self.app.consumer
        # Every assigned input partition, including those no record has reached yet.
        await self._baselines(self.assigned())
        now = time.monotonic()
        for tp in self.continuity.partitions():
            position = await consumer.position(tp)
            if self._buffered(tp):
                # Handed over and waiting in the stream's buffer: a busy stage, not a jump.
                # (Under load the position runs ahead of processing for many seconds.)
                position = self.continuity.expected(tp)
            verdict = self.continuity.audit(tp, position, now)
            if verdict.admit is Admit.REWIND:
                assert verdict.rewind_to is not None
                await self._rewind(tp, verdict.rewind_to, "the fetch position is past it")

    def _buffered(self, tp: Any) -> bool:
        """Whether records of `tp` were handed to the stream and not processed yet."""
        delivered = self.app.consumer.handed_over.get(tp)  # the last offset handed over
        expected = self.continuity.expected(tp)
        return delivered is not None and expected is not None and delivered >= expected

    async def _to_every_partition(self, topic: str, value: bytes) -> list[Outgoing]:
        """One keyless record of `value` on each partition of `topic` (event-time marks)."""
        return [
            Outgoing(topic, None, value, None, p) for p in await self.producer.partitions(topic)
        ]

    def _in_sequence(self, msg: Any, now: float) -> bool:
        # Synchronous: it runs for every record. A rewind it asks for is done once the batch
        # is through (`run_batch`); later records of the partition are held back meanwhile,
        # as they are past the same gap.
        verdict = self.continuity.admit(msg.tp, msg.offset, now)
        if verdict.admit is Admit.PROCESS:
            return True
        if verdict.admit is Admit.REWIND:
            assert verdict.rewind_to is not None
            self._rewinds[msg.tp] = (verdict.rewind_to, f"offset {msg.offset} arrived")
        # Held back: marked acknowledged so the batch ack does not record it (the offset
        # commit must not pass the gap); the rewound fetch delivers it again.
        msg.acked = True
        self.app.consumer._unacked_messages.discard(msg)
        return False

    async def process(self, messages: Sequence[Any]) -> None:
        """Apply one batch of the stage's input records (each stage's own)."""
        raise NotImplementedError

    async def run_batch(self, messages: Sequence[Any]) -> None:
        """`process` a batch, then rewind the partitions whose records it held back."""
        await self.process(messages)
        rewinds, self._rewinds = self._rewinds, {}
        for tp, (offset, why) in rewinds.items():
            await self._rewind(tp, offset, why)

    async def _rewind(self, tp: Any, offset: int, why: str) -> None:
        log.warning("%s: rewinding to expected offset %d (%s)", tp, offset, why)
        metrics.INGEST_REWINDS.inc()
        await self.app.consumer.seek(tp, offset)

    async def _persist(
        self,
        touched: Mapping[Any, tuple[int, Any]],
        to_json: Callable[[Any], Any] | None = None,
    ) -> int:
        # One changelog record per key per batch, on the partition of the key's own events
        # (Faust would use the partition of the batch's last event for every key). Sent and
        # acknowledged here rather than through Faust's send_soon buffer, whose flush gives
        # up after 0.1 s: the offset commit must never overtake the state it depends on.
        # A value of None deletes the key (a tombstone). Values pass through `to_json` when
        # given, one at a time: with keep_encoded, each JSON tree is garbage at once rather
        # than all of them living until the end (and through garbage-collector passes).
        # Returns the bytes of values written.
        if not touched:
            return 0
        store = self.table.data
        records = []
        written = 0
        for key, (partition, state) in touched.items():
            value = state if to_json is None else to_json(state)
            encoded = None
            if value is None:
                store.pop(key, None)
            else:
                encoded = orjson.dumps(value)
                store[key] = encoded if self.keep_encoded else value
                written += len(encoded)
            records.append(Outgoing(self.changelog, self.encode_key(key), encoded, None, partition))
        await self.producer.send(records)
        if self.end_marker_key is not None:
            # tansu: close each touched partition with a one-record batch (streams/tansu.py).
            marker = self.encode_key(self.end_marker_key)
            partitions = {partition for partition, _ in touched.values()}
            await self.producer.send(
                Outgoing(self.changelog, marker, None, None, p) for p in sorted(partitions)
            )
        return written
