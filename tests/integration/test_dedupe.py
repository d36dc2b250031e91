"""Duplicates and decisions through the real broker: a pair across a bucket edge is raised
once, a merge decision resolves it and commands the merge, bad decisions are dead-lettered."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import datetime, timedelta, timezone

import httpx
import orjson
import pytest

from tests.integration.harness import produce, read_all

pytestmark = pytest.mark.integration

CST = timezone(timedelta(hours=8))
EDGE = datetime(2026, 3, 2, 15, 0, tzinfo=CST)


def _create(order_id: str, placed: datetime, channel: str, skus: list[str]) -> dict:
    return {
        "event_id": f"erp-{order_id}-1",
        "source": "erp",
        "order_ref": order_id,
        "status": "CREATED",
        "occurred_at": (placed + timedelta(seconds=5)).isoformat(),
        "order": {
            "customer_id": "C-4711",
            "channel": channel,
            "lines": [{"sku": s, "qty": 2, "unit_price": "35.00"} for s in skus],
            "amount": "140.00",
            "currency": "CNY",
            "customer_phone": "+86 138 0013 8000",
            "placed_at": placed.isoformat(),
        },
    }


def test_duplicate_raised_once_and_closed_by_a_decision(broker, spawn, prefix):
    worker = spawn()
    bootstrap = f"127.0.0.1:{broker.port}"
    erp = f"{prefix}.erp.events"
    events = [
        # 14:59:50 and 15:00:10: one pair, though a 15-minute bucket floor splits them.
        _create("SO-A", EDGE - timedelta(seconds=10), "wechat", ["BRK-PAD-0001-X", "OIL-FLT-22"]),
        _create("SO-B", EDGE + timedelta(seconds=10), "website", ["OIL-FLT-22-Y", "BRK-PAD-0001"]),
        # Look-alikes: same customer and parts 40 min later; same customer, other parts.
        _create("SO-C", EDGE + timedelta(minutes=40), "pos", ["BRK-PAD-0001", "OIL-FLT-22"]),
        _create("SO-D", EDGE + timedelta(seconds=30), "pos", ["SPK-PLG-9"]),
    ]
    records = [(erp, e["order_ref"].encode(), orjson.dumps(e)) for e in events]
    records.append(records[1])  # a re-send is idempotence, not a second pair
    asyncio.run(produce(bootstrap, records))

    anomalies = asyncio.run(
        read_all(
            bootstrap,
            [f"{prefix}.anomalies"],
            until=lambda rs: any(b"duplicate_order" in r.value for r in rs),
        )
    )
    # SO-C moves event time 40 min on: the CRM never heard of SO-A, a ghost beside the pair.
    duplicates = [orjson.loads(r.value) for r in anomalies]
    duplicates = [a for a in duplicates if a["type"] == "duplicate_order"]
    assert len(duplicates) == 1
    pair = duplicates[0]
    assert pair["state"] == "open"
    assert sorted(pair["order_ids"]) == ["SO-A", "SO-B"]
    assert pair["gap_seconds"] == 20.0
    assert {e["event_id"] for e in pair["evidence"]} == {"erp-SO-A-1", "erp-SO-B-1"}

    metrics = httpx.get(worker.url("/metrics"), timeout=10).text
    assert 'concord_duplicates_total{channel="website"} 1.0' in metrics

    decisions = f"{prefix}.decisions"
    merge = {
        "decision_id": "dec-1",
        "kind": "duplicate.merge",
        "target": pair["anomaly_id"],
        "by": "li.wei@sales",
        "at": (EDGE + timedelta(hours=1)).isoformat(),
        "note": "same PO, sent twice",
    }
    unknown = {**merge, "decision_id": "dec-2", "kind": "anomaly.ack", "target": "anomaly-nope"}
    asyncio.run(
        produce(
            bootstrap,
            [
                (decisions, b"k", orjson.dumps(merge)),
                (decisions, b"k", orjson.dumps(merge)),  # redelivered: same outcome, same ids
                (decisions, b"k", orjson.dumps(unknown)),
                (decisions, b"k", b"{not json"),
            ],
        )
    )
    out = asyncio.run(
        read_all(
            bootstrap,
            [f"{prefix}.anomalies", f"{prefix}.commands", f"{prefix}.deadletter"],
            until=lambda rs: (
                sum(r.topic.endswith("deadletter") for r in rs) >= 2
                and any(r.topic.endswith("commands") for r in rs)
            ),
        )
    )
    by_topic: dict[str, list[dict]] = {}
    for r in out:
        by_topic.setdefault(r.topic.rsplit(".", 1)[1], []).append(orjson.loads(r.value))
    resolved = [a for a in by_topic["anomalies"] if a["state"] == "resolved"]
    assert resolved
    assert all(a["anomaly_id"] == pair["anomaly_id"] for a in resolved)
    assert resolved[0]["decisions"][0]["decision_id"] == "dec-1"
    merges = {c["command_id"]: c for c in by_topic["commands"] if c["kind"] == "order.merge"}
    assert len(merges) == 1
    (command,) = merges.values()
    assert command["payload"]["keep"] == "SO-A"
    assert command["payload"]["drop"] == "SO-B"
    reasons = Counter(d["reason"] for d in by_topic["deadletter"])
    assert reasons == {"unknown_anomaly": 1, "invalid_json": 1}
