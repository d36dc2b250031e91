"""Batched produce through the worker's own aiokafka producer.

Faust's per-message produce path (Topic.send -> FutureMessage, sensors, callbacks) cost
more than the send itself in profiles. Records here are grouped per topic-partition into
record batches and handed to aiokafka whole: one future per batch, not per record. The
producer is Faust's, so the offset commit (which flushes it) still waits for these.
"""

from __future__ import annotations

import asyncio
import functools
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import murmur2


@functools.lru_cache(maxsize=1 << 17)
def _murmur2_index(key: bytes, count: int) -> int:
    # murmur2 is pure Python (~4 µs a key); an order's events share one key, so remember it.
    return (murmur2(key) & 0x7FFFFFFF) % count


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A record to produce; no partition means "by key, as Kafka's default partitioner"."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] | None = None
    partition: int | None = None


class BatchProducer:
    """Sends many records as few record batches and waits until the broker has them all."""

    def __init__(self, app: Any):
        self.app = app
        # Sees every record once the broker has it (the ClickHouse feed of outputs).
        self.tap: Callable[[list[Outgoing]], None] | None = None
        self._partitions: dict[str, list[int]] = {}

    def _aiokafka(self) -> AIOKafkaProducer:
        # Faust's aiokafka driver owns the producer; this is the one public way in.
        return self.app.producer._ensure_producer()  # type: ignore[no-any-return]

    async def _partition_of(self, record: Outgoing) -> int:
        # A record without a partition: by key, as Kafka's default partitioner.
        partitions = await self.partitions(record.topic)
        if record.key is None:
            return random.choice(partitions)
        return self.partition_for_key(record.key, partitions)

    async def partitions(self, topic: str) -> list[int]:
        """The topic's partition numbers, from the producer's metadata."""
        partitions = self._partitions.get(topic)
        if partitions is None:
            partitions = sorted(await self._aiokafka().partitions_for(topic))
            self._partitions[topic] = partitions
        return partitions

    @staticmethod
    def partition_for_key(key: bytes, partitions: list[int]) -> int:
        """Kafka's default partition of a key (murmur2), as every client computes it."""
        return partitions[_murmur2_index(key, len(partitions))]

    async def key_partition(self, topic: str, key: bytes) -> int:
        """The partition of `topic` that `key` goes to."""
        return self.partition_for_key(key, await self.partitions(topic))

    async def send(self, records: Iterable[Outgoing]) -> int:
        """Produce `records`, preserving their order per partition; return the batch count."""
        producer = self._aiokafka()
        groups: dict[tuple[str, int], list[Outgoing]] = {}
        for record in records:
            partition = record.partition
            if partition is None:  # most records name theirs: no coroutine per record
                partition = await self._partition_of(record)
            groups.setdefault((record.topic, partition), []).append(record)
        pending = []
        for (topic, partition), group in groups.items():
            batch = producer.create_batch()
            for record in group:
                if (
                    batch.append(
                        key=record.key,
                        value=record.value,
                        timestamp=None,
                        headers=record.headers or [],
                    )
                    is None
                ):
                    pending.append(await producer.send_batch(batch, topic, partition=partition))
                    batch = producer.create_batch()
                    batch.append(
                        key=record.key,
                        value=record.value,
                        timestamp=None,
                        headers=record.headers or [],
                    )
            pending.append(await producer.send_batch(batch, topic, partition=partition))
        if pending:
            await asyncio.gather(*pending)
        if self.tap is not None:
            self.tap([r for group in groups.values() for r in group])
        return len(pending)
