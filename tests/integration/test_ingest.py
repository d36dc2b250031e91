"""Ingest through the real broker and a real worker process: nothing lost, nothing doubled."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import httpx
import orjson
import pytest
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
