"""The intake breaker through the real broker: a promotion-peak hour trips it to throttle,
and it resumes after the condition has been clear for 30 minutes of event time."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta, timezone

import httpx
import orjson
import pytest

from tests.integration.harness import produce, read_all

pytestmark = pytest.mark.integration

CST = timezone(timedelta(hours=8))
T0 = datetime(2026, 3, 2, 10, 0, tzinfo=CST)


def _order(n: int, at: datetime, failed: bool) -> list[dict]:
    order_id = f"SO-{n:04d}"
    create = {
        "event_id": f"{order_id}-1",
        "source": "erp",
        "order_ref": order_id,
        "status": "CREATED",
        "occurred_at": at.isoformat(),
        "order": {
            "customer_id": f"C-{n}",
            "channel": "douyin",
            "lines": [{"sku": f"BRK-PAD-{n:04d}", "qty": 1, "unit_price": "99.00"}],
            "amount": "99.00",
            "currency": "CNY",
        },
    }
    allocation = {
        "event_id": f"{order_id}-2",
        "source": "erp",
        "order_ref": order_id,
        "status": "ALLOCATION_FAILED" if failed else "ALLOCATED",
        "occurred_at": (at + timedelta(seconds=30)).isoformat(),
    }
    return [create, allocation]


def _records(prefix: str, events: list[dict]) -> list[tuple[str, bytes, bytes]]:
    return [(f"{prefix}.erp.events", e["order_ref"].encode(), orjson.dumps(e)) for e in events]


def _watermark(worker) -> datetime | None:
    # Generous: a worker opening its embedded ClickHouse can be slow to answer at first.
    wm = httpx.get(worker.url("/kpis"), timeout=30).json()["watermark"]
    return None if wm is None else datetime.fromisoformat(wm)


def test_promo_peak_throttles_then_resumes(broker, spawn, prefix):
    # Thresholds scaled down 100x on orders (2200 -> 20); the failure rate stays 8%.
    worker = spawn(
        CONCORD_BREAKER__MIN_ORDERS="20",
        CONCORD_SOURCE_IDLE_AFTER="PT2S",
        CONCORD_WATERMARK_IDLE_AFTER="PT1H",
    )
    bootstrap = f"127.0.0.1:{broker.port}"

    # The peak: one order a minute from 10:00 to 10:59, every fifth reservation failing (20%).
    peak = [e for n in range(60) for e in _order(n, T0 + timedelta(minutes=n), n % 5 == 4)]
    asyncio.run(produce(bootstrap, _records(prefix, peak)))
    deadline = time.monotonic() + 60
    while (_watermark(worker) or T0) < T0 + timedelta(minutes=57):
        assert time.monotonic() < deadline, (_watermark(worker), worker.log_tail())
        time.sleep(0.5)
    # Then a quiet afternoon, one order every ten minutes, live in event-time order.
    quiet = [
        e
        for n in range(10)
        for e in _order(100 + n, T0 + timedelta(hours=2, minutes=10 * n), failed=False)
    ]
    asyncio.run(produce(bootstrap, _records(prefix, quiet)))

    out = asyncio.run(
        read_all(
            bootstrap,
            [f"{prefix}.commands", f"{prefix}.anomalies"],
            until=lambda rs: any(b"intake.resume" in r.value for r in rs),
        )
    )
    commands = [orjson.loads(r.value) for r in out if r.topic.endswith("commands")]
    assert [c["kind"] for c in commands] == ["intake.throttle", "intake.resume"]
    assert commands[0]["payload"] == {"mode": "vip_only"}
    # 10:30 is the first evaluation over 20 orders: warned; 10:40 the second: throttled.
    assert commands[0]["issued_at"].startswith("2026-03-02T02:40:00")
    # Clear from 11:40 (20 orders in [10:40, 11:40) is not above 20); resumes 30 min later.
    assert commands[1]["issued_at"].startswith("2026-03-02T04:10:00")

    anomalies = [orjson.loads(r.value) for r in out if r.topic.endswith("anomalies")]
    breaker = [a for a in anomalies if a["type"] in ("intake_overload", "intake_throttled")]
    throttled = [a["state"] for a in breaker if a["type"] == "intake_throttled"]
    assert throttled == ["open", "resolved"]
    overloads = {a["anomaly_id"] for a in breaker if a["type"] == "intake_overload"}
    assert len(overloads) == 7  # one per holding evaluation, 10:30 to 11:30
    assert all(a["route"]["team"] == "operations" for a in breaker)

    metrics = httpx.get(worker.url("/metrics"), timeout=10).text
    assert "concord_breaker_stage 0.0" in metrics
