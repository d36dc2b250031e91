"""The intake breaker through the real broker: a promotion-peak hour trips it to throttle,
and it resumes after the condition has been clear for 30 minutes of event time. The CRM and
the WMS mirror every status, their connectors re-send every event under a new id, and failed
reservations are retried: each order still counts once (§7)."""

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
    """One order as the ERP, the CRM and the WMS report it; a failed reservation is retried
    (restocked) 20 minutes later, and every system mirrors each step."""
    order_id = f"SO-{n:04d}"
    details = {
        "customer_id": f"C-{n}",
        "channel": "douyin",
        "lines": [{"sku": f"BRK-PAD-{n:04d}", "qty": 1, "unit_price": "99.00"}],
        "amount": "99.00",
        "currency": "CNY",
    }
    steps = [("erp", "CREATED", 0), ("crm", "NEW", 40)]
    if failed:
        later = 20 * 60  # restocked: the retry succeeds
        steps += [("erp", "ALLOCATION_FAILED", 30), ("wms", "缺货", 50)]
        steps += [("erp", "ALLOCATED", later + 30), ("crm", "PROCESSING", later + 45)]
        steps += [("wms", "已分配", later + 55)]
    else:
        steps += [("erp", "ALLOCATED", 30), ("crm", "PROCESSING", 45), ("wms", "已分配", 55)]
    events = [
        {
            "event_id": f"{order_id}-{source}-{k}",
            "source": source,
            "order_ref": order_id if source == "erp" else f"{source.upper()}-{n:04d}",
            "erp_order_id": order_id,
            "status": status,
            "occurred_at": (at + timedelta(seconds=seconds)).isoformat(),
        }
        for k, (source, status, seconds) in enumerate(steps)
    ]
    events[0]["order"] = details
    # The CRM's and the WMS's connectors publish everything twice, under new ids.
    resent = [{**e, "event_id": f"{e['event_id']}-again"} for e in events if e["source"] != "erp"]
    return events + resent


def _records(prefix: str, events: list[dict]) -> list[tuple[str, bytes, bytes]]:
    return [
        (f"{prefix}.{e['source']}.events", e["order_ref"].encode(), orjson.dumps(e)) for e in events
    ]


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
    throttled = [a for a in breaker if a["type"] == "intake_throttled"]
    assert [a["state"] for a in throttled] == ["open", "resolved"]
    # [09:40, 10:40): the 40 orders of the peak so far, each once: 8 failed, 32 reserved.
    figures = [(a["orders_created"], a["allocated"], a["allocation_failed"]) for a in throttled]
    assert figures == [(40, 32, 8)] * 2
    assert throttled[0]["mode"] == "vip_only"
    overloads = {a["anomaly_id"] for a in breaker if a["type"] == "intake_overload"}
    assert len(overloads) == 7  # one per holding evaluation, 10:30 to 11:30
    assert all(a["route"]["team"] == "operations" for a in breaker)

    metrics = httpx.get(worker.url("/metrics"), timeout=10).text
    assert "concord_breaker_stage 0.0" in metrics
