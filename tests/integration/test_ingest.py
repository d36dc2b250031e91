"""Ingest through the real broker and a real worker process: nothing lost, nothing doubled."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import httpx
import orjson
import pytest

from tests.feeds import build_feed
from tests.integration.harness import produce, read_all

pytestmark = pytest.mark.integration


def _audit(records, prefix: str) -> tuple[Counter, Counter, dict]:
    normalized: Counter = Counter()
    owners: dict = {}
    reasons: Counter = Counter()
    for rec in records:
        if rec.topic == f"{prefix}.normalized" and rec.key is None:
            continue  # a watermark mark, not an event
        body = orjson.loads(rec.value)
        if rec.topic == f"{prefix}.normalized":
            key = (body["source"], body["event_id"])
            normalized[key] += 1
            owners[key] = body["order_id"]
            assert rec.key.decode() == body["order_id"]
        else:
            reasons[body["reason"]] += 1
    return normalized, reasons, owners


def test_ingest_forwards_each_valid_event_once_and_dead_letters_the_rest(broker, spawn, prefix):
    feed = build_feed(prefix, orders=600)
    worker = spawn()
    sent = asyncio.run(produce(f"127.0.0.1:{broker.port}", feed.records))
    assert sent == len(feed.records)

    want_normalized = len(feed.expected)
    want_dead = sum(feed.deadletters.values())
    records = asyncio.run(
        read_all(
            f"127.0.0.1:{broker.port}",
            [f"{prefix}.normalized", f"{prefix}.deadletter"],
            until=lambda rs: (
                sum(r.key is not None or r.topic.endswith("deadletter") for r in rs)
                >= want_normalized + want_dead
            ),
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
