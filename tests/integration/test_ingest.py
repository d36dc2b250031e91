"""Ingest through the real broker and a real worker process: nothing lost, nothing doubled."""

from __future__ import annotations

import asyncio
import base64
import time
from collections import Counter
from datetime import datetime, timedelta, timezone

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.partitioner import murmur2

from sinks.metrics import metric_samples
from tests.feeds import build_feed
from tests.integration.harness import PARTITIONS, normalized_events, produce, read_all

pytestmark = pytest.mark.integration


def _audit(records, prefix: str) -> tuple[Counter, Counter, dict]:
    normalized: Counter = Counter()
    owners: dict = {}
    reasons: Counter = Counter()
    topic = f"{prefix}.normalized"
    for rec, body in normalized_events([r for r in records if r.topic == topic]):
        key = (body["source"], body["event_id"])
        normalized[key] += 1
        owners[key] = body["order_id"]
        # On the partition its order id hashes to, as a keyed record would be.
        assert rec.partition == (murmur2(body["order_id"].encode()) & 0x7FFFFFFF) % PARTITIONS
    for rec in records:
        if rec.topic != topic:
            reasons[orjson.loads(rec.value)["reason"]] += 1
    return normalized, reasons, owners


def _count(records, prefix: str) -> int:
    topic = f"{prefix}.normalized"
    return len(normalized_events([r for r in records if r.topic == topic])) + sum(
        r.topic != topic for r in records
    )


@pytest.mark.parametrize("stages", ["all", "ingest"])
def test_ingest_forwards_each_valid_event_once_and_dead_letters_the_rest(
    broker, spawn, prefix, stages
):
    feed = build_feed(prefix, orders=600)
    worker = spawn(CONCORD_STAGES=stages)
    sent = asyncio.run(produce(f"127.0.0.1:{broker.port}", feed.records))
    assert sent == len(feed.records)

    want_normalized = len(feed.expected)
    want_dead = sum(feed.deadletters.values())
    records = asyncio.run(
        read_all(
            f"127.0.0.1:{broker.port}",
            [f"{prefix}.normalized", f"{prefix}.deadletter"],
            until=lambda rs: _count(rs, prefix) >= want_normalized + want_dead,
        )
    )
    time.sleep(1.0)  # anything extra (a double) would arrive now
    records = asyncio.run(
        read_all(f"127.0.0.1:{broker.port}", [f"{prefix}.normalized", f"{prefix}.deadletter"])
    )
    normalized, reasons, owners = _audit(records, prefix)

    assert set(normalized) == set(feed.expected)
    assert max(normalized.values()) == 1, "an event was forwarded twice"
    assert owners == feed.expected
    assert dict(reasons) == feed.deadletters

    metrics = httpx.get(worker.url("/metrics")).text
    assert (
        f'concord_events_total{{outcome="duplicate",source="erp"}} {float(feed.resends)}' in metrics
    )
    assert 'concord_events_total{outcome="held",source="crm"}' in metrics
    for reason, n in feed.deadletters.items():
        assert f'concord_deadletter_total{{reason="{reason}"}} {float(n)}' in metrics
    if stages == "ingest":  # a worker of ingest alone leaves concord.normalized to others
        assert "concord_order_events_total{" not in metrics
    else:  # the per-order stage applies every forwarded event, whatever its timestamp's form
        assert _joined(worker, want=len(feed.expected)) == len(feed.expected)


def _joined(worker, want: int, within: float = 60.0) -> float:
    """The events the per-order stage applied, once at least `want`; fails with the count
    (and the worker's log) if it never gets there."""
    deadline = time.monotonic() + within
    while True:
        text = httpx.get(worker.url("/metrics")).text
        joined = sum(metric_samples(text, "concord_order_events_total").values())
        if joined >= want:
            return joined
        assert time.monotonic() < deadline, (
            f"{joined:g} of {want} events applied within {within:g} s\n{worker.log_tail()}"
        )
        time.sleep(0.5)


# --- ERP events before their order's details -----------------------------------------------

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=timezone(timedelta(hours=8)))
DETAILS = {
    "customer_id": "W0001",
    "channel": "website",
    "lines": [{"sku": "BRK-PAD-001", "qty": 1, "unit_price": "88.00"}],
    "amount": "88.00",
    "currency": "CNY",
}


def _erp(ref: str, event_id: str, status: str, minute: int, details: bool = False) -> bytes:
    event: dict = {
        "event_id": event_id,
        "source": "erp",
        "order_ref": ref,
        "status": status,
        "occurred_at": (T0 + timedelta(minutes=minute)).isoformat(),
    }
    if details:
        event["order"] = DETAILS
    return orjson.dumps(event)


def _partition(key: str) -> int:
    return (murmur2(key.encode()) & 0x7FFFFFFF) % PARTITIONS


async def _send(bootstrap: str, topic: str, records: list[tuple[str, bytes]]) -> list[int]:
    """Send (key, value) records one by one; their offsets."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        return [
            (await producer.send_and_wait(topic, value, key=key.encode())).offset
            for key, value in records
        ]
    finally:
        await producer.stop()


async def _committed(bootstrap: str, group: str, topic: str, partition: int) -> int | None:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group)
    await consumer.start()
    try:
        return await consumer.committed(TopicPartition(topic, partition))
    finally:
        await consumer.stop()


def test_erp_events_before_their_details_wait_through_a_crash_then_follow_or_dead_letter(
    broker, spawn, prefix
):
    bootstrap = f"127.0.0.1:{broker.port}"
    topic = f"{prefix}.erp.events"
    topics = [f"{prefix}.normalized", f"{prefix}.deadletter"]
    first = spawn()
    # SO-A's confirmation and allocation come before its creation (with the details); SO-B's
    # confirmation comes and its details never do within 30 min of event time.
    a2, a3, b2 = (
        _erp("SO-A", "a2", "CONFIRMED", 1),
        _erp("SO-A", "a3", "ALLOCATED", 2),
        _erp("SO-B", "b2", "CONFIRMED", 5),
    )
    offsets = asyncio.run(_send(bootstrap, topic, [("SO-A", a2), ("SO-A", a3), ("SO-B", b2)]))

    # Held in the state table, offsets committed past them: a crash now loses nothing.
    deadline = time.monotonic() + 60
    for ref, offset in (("SO-A", offsets[1]), ("SO-B", offsets[2])):
        while (asyncio.run(_committed(bootstrap, prefix, topic, _partition(ref))) or 0) <= offset:
            assert time.monotonic() < deadline, "ingest never committed past the held events"
            time.sleep(0.5)
    first.kill()
    worker = spawn()

    # The details of SO-A, then event time moves past 09:05 + 30 min on every partition.
    clocks = [f"SO-C{k}" for k in range(40)]
    assert {_partition(ref) for ref in clocks} == set(range(PARTITIONS))
    asyncio.run(
        _send(
            bootstrap,
            topic,
            [("SO-A", _erp("SO-A", "a1", "CREATED", 0, details=True))]
            + [(ref, _erp(ref, f"{ref}-1", "CREATED", 40, details=True)) for ref in clocks],
        )
    )

    def dead(records) -> list[dict]:
        return [orjson.loads(r.value) for r in records if r.topic == topics[1]]

    records = asyncio.run(read_all(bootstrap, topics, until=lambda rs: dead(rs)))
    [letter] = dead(records)
    assert letter["reason"] == "missing_order"
    assert base64.b64decode(letter["original_b64"]) == b2
    assert (letter["topic"], letter["partition"], letter["offset"], letter["key"]) == (
        topic,
        _partition("SO-B"),
        offsets[2],
        "SO-B",
    )
    assert "within 0:30:00 of event time" in letter["error"]

    # SO-B's details, late: taken, without the confirmation already dead-lettered.
    asyncio.run(_send(bootstrap, topic, [("SO-B", _erp("SO-B", "b1", "CREATED", 4, True))]))

    def forwarded(records) -> list[tuple[str, str]]:
        return [
            (body["order_id"], body["event_id"])
            for _, body in normalized_events([r for r in records if r.topic == topics[0]])
        ]

    records = asyncio.run(
        read_all(bootstrap, topics, until=lambda rs: ("SO-B", "b1") in forwarded(rs))
    )
    time.sleep(1.0)  # anything extra would arrive now
    records = asyncio.run(read_all(bootstrap, topics))
    events = forwarded(records)
    assert [e for e in events if e[0] == "SO-A"] == [("SO-A", "a1"), ("SO-A", "a2"), ("SO-A", "a3")]
    assert [e for e in events if e[0] == "SO-B"] == [("SO-B", "b1")]
    assert len(events) == 3 + len(clocks) + 1
    assert len(dead(records)) == 1
    metrics = httpx.get(worker.url("/metrics")).text
    assert 'concord_deadletter_total{reason="missing_order"} 1.0' in metrics
