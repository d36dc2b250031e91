"""Latency under load: event → /orders/{id}, and event → anomaly on its topic.

    python scripts/bench_latency.py [--rate 1500] [--seconds 60] [--probes 120]
                                    [--lateness PT2M] [--batch-within 0.5]
                                    [--clickhouse on|off]

A `concord worker` takes the ingest benchmark's realistic events at a steady `--rate` (events
per second; the pipeline's capacity is what bench_ingest.py measures) while probe orders go
through the same topics, one every `seconds / probes`:

1. the probe's ERP create is published; /orders/{id} is polled every 5 ms until it answers:
   the time from publishing to the effect (an upper bound on arrival → effect, it includes
   the producer and the broker);
2. its WMS reports it shipped, then its ERP cancels it: a contradiction, which the ghost
   rules raise as a critical `status_conflict` once event time reaches it. The time from
   publishing the cancel to the anomaly record's timestamp on `concord.anomalies` (set by
   the worker's producer; one clock, one machine) is the detection latency.

Event time decides when a rule is true: the watermark (newest event time minus the allowed
lateness) must pass the contradiction. The detection latency is therefore the time event
time takes to move on by `--lateness` (at the load's pace; in a live feed, the lateness
itself) plus the pipeline's own work; `--lateness PT0S` measures the latter alone.

Prints p50 / p99 / max of both, probes missed, and the rate the worker sustained. Machines
here are shared: compare figures from one run, not across runs.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from concord.broker import free_port, start_broker, worker_env
from concord.scenario import iter_bench_events
from schemas.settings import Settings
from schemas.stages import Source
from sinks.metrics import metric_samples
from streams.topics import TopicNames, ensure_topics

PREFIX = "lat"


class Load:
    """Publishes the benchmark's events at a steady rate; knows the newest event time sent."""

    def __init__(self, producer: AIOKafkaProducer, names: TopicNames, rate: int) -> None:
        self.producer = producer
        self.names = names
        self.rate = rate
        self.sent = 0
        self.first_event_time = self.event_time = "2026-03-02T09:00:00.000+08:00"

    async def run(self, seconds: float) -> None:
        events = iter_bench_events(int(self.rate * seconds) + 1)
        started = time.perf_counter()
        tick = 0.05
        for source, key, value in events:
            due = started + self.sent / self.rate
            if due - time.perf_counter() > tick:
                await self.producer.flush()
                await asyncio.sleep(due - time.perf_counter())
            await self.producer.send(self.names.sources[Source(source)], value, key=key)
            if source == "erp":
                self.event_time = orjson.loads(value)["occurred_at"]
            self.sent += 1
        await self.producer.flush()


def probe_events(k: int, at: str) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(ERP create, WMS shipped, ERP cancelled) of probe order k, all at event time `at`."""
    order = f"PRB{k:06d}"
    create = {
        "event_id": f"erp-{order}-01",
        "source": "erp",
        "order_ref": order,
        "status": "CREATED",
        "occurred_at": at,
        "order": {
            # A customer and SKU of its own: a probe is never a duplicate of another order.
            "customer_id": f"PROBE-{k}",
            "channel": "website",
            "lines": [{"sku": f"PROBE-SKU-{k}", "qty": 1, "unit_price": 10.0}],
            "amount": 10.0,
            "currency": "CNY",
            "priority": "normal",
            "placed_at": at,
        },
    }
    shipped = {
        "event_id": f"wms-{order}-shipped",
        "source": "wms",
        "order_ref": f"WMS-{order}",
        "erp_order_id": order,
        "status": "SHIPPED",
        "occurred_at": at,
    }
    cancelled = {
        "event_id": f"erp-{order}-cancelled",
        "source": "erp",
        "order_ref": order,
        "status": "CANCELLED",
        "occurred_at": at,
    }
    return create, shipped, cancelled


async def send(producer: AIOKafkaProducer, names: TopicNames, event: dict[str, Any]) -> float:
    """Publish one event and wait for the broker's ack; the wall time it was handed over."""
    handed = time.time()
    await (
        await producer.send(
            names.sources[Source(event["source"])],
            orjson.dumps(event),
            key=event["order_ref"].encode(),
        )
    )
    return handed


async def watch_anomalies(bootstrap: str, topic: str, found: dict[str, float]) -> None:
    """order id → timestamp (s) of its first status_conflict record, for probe orders."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    try:
        while True:
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                for record in records:
                    body = orjson.loads(record.value)
                    order = body.get("order_id") or ""
                    if body.get("type") == "status_conflict" and order.startswith("PRB"):
                        found.setdefault(order, record.timestamp / 1000)
    finally:
        await consumer.stop()


async def run(args: argparse.Namespace, broker_url: str, tmp: Path) -> None:
    bootstrap = broker_url.removeprefix("kafka://")
    settings = Settings(broker_url=broker_url, topic_prefix=PREFIX, embedded_broker=True)
    names = TopicNames.from_settings(settings)
    await ensure_topics(settings)

    port = free_port()
    env = worker_env(
        broker_url,
        tmp / "worker",
        topic_prefix=PREFIX,
        app_id=f"{PREFIX}-concord",
        web_port=port,
        clickhouse_enabled=str(args.clickhouse == "on").lower(),
        allowed_lateness=args.lateness,
        ingest_batch_within=args.batch_within,
    )
    log = (tmp / "worker.log").open("wb")
    worker = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "concord", "worker", env=env, stdout=log, stderr=log
    )
    base = f"http://127.0.0.1:{port}"
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks="all")
    probe_producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0, acks="all")
    await producer.start()
    await probe_producer.start()
    found: dict[str, float] = {}
    watcher = asyncio.create_task(watch_anomalies(bootstrap, names.anomalies, found))
    try:
        async with httpx.AsyncClient(timeout=5) as http:
            await wait_ready(http, base)
            joined_before = await joined(http, base)
            load = Load(producer, names, args.rate)
            loading = asyncio.create_task(load.run(args.seconds))
            started = time.perf_counter()
            effect: list[float] = []
            cancelled_at: dict[str, float] = {}
            # Probes start once the load is under way and stop well before it does: event
            # time must still move on past the last one.
            warmup, tail = min(5.0, args.seconds / 4), max(10.0, args.seconds / 5)
            interval = (args.seconds - warmup - tail) / args.probes
            effect_missed: list[str] = []

            async def probe(k: int, at: str) -> None:
                create, shipped, cancel = probe_events(k, at)
                sent = await send(probe_producer, names, create)
                seen = await poll_order(http, base, create["order_ref"], within=30)
                if seen is None:
                    effect_missed.append(create["order_ref"])
                else:
                    effect.append(seen - sent)
                await send(probe_producer, names, shipped)
                cancelled_at[cancel["order_ref"]] = await send(probe_producer, names, cancel)

            probes = []
            for k in range(args.probes):  # on a schedule, each on its own: probes overlap
                next_at = started + warmup + k * interval
                await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
                probes.append(asyncio.create_task(probe(k, load.event_time)))
            await asyncio.gather(*probes)
            missed_effect = len(effect_missed)
            await loading
            elapsed = time.perf_counter() - started
            for _ in range(120):  # up to a minute for the last anomalies
                if set(cancelled_at) <= set(found):
                    break
                await asyncio.sleep(0.5)
            joined_after = await joined(http, base)
    finally:
        watcher.cancel()
        await producer.stop()
        await probe_producer.stop()
        worker.terminate()
        await worker.wait()
        log.close()

    detection = [found[o] - t for o, t in cancelled_at.items() if o in found]
    span = datetime.fromisoformat(load.event_time) - datetime.fromisoformat(load.first_event_time)
    print(
        f"load                : {load.sent:,} events at {load.sent / elapsed:,.0f}/s offered; "
        f"event time ran ×{span.total_seconds() / elapsed:,.0f} wall time"
    )
    print(
        f"worker              : {(joined_after - joined_before) / elapsed:,.0f} events/s "
        f"applied by the per-order stage over the run"
    )
    report("event → /orders/{id}", effect, missed_effect)
    report("event → anomaly     ", detection, len(cancelled_at) - len(detection))


def report(label: str, values: list[float], missed: int) -> None:
    if not values:
        print(f"{label}: no measurement ({missed} missed)")
        return
    ms = sorted(v * 1000 for v in values)
    p99 = ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))]
    print(
        f"{label}: p50 {statistics.median(ms):,.0f} ms, p99 {p99:,.0f} ms, max {ms[-1]:,.0f} ms"
        f" ({len(ms)} probes, {missed} missed)"
    )


async def wait_ready(http: httpx.AsyncClient, base: str, within: float = 120) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            if (await http.get(f"{base}/kpis")).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        await asyncio.sleep(0.5)
    raise RuntimeError("the worker did not come up")


async def joined(http: httpx.AsyncClient, base: str) -> float:
    text = (await http.get(f"{base}/metrics")).text
    return sum(metric_samples(text, "concord_order_events_total").values())


async def poll_order(http: httpx.AsyncClient, base: str, order: str, within: float) -> float | None:
    """Wall time at which /orders/{order} first answers 200; None if it never does."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            if (await http.get(f"{base}/orders/{order}")).status_code == 200:
                return time.time()
        except httpx.HTTPError:
            pass
        await asyncio.sleep(0.005)
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=int, default=1500, help="load, events/s")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--probes", type=int, default=120)
    parser.add_argument("--clickhouse", choices=["on", "off"], default="on")
    parser.add_argument(
        "--lateness", default="PT2M", help="the worker's allowed lateness (ISO 8601 duration)"
    )
    parser.add_argument(
        "--batch-within", type=float, default=0.5, help="the worker's batch wait, seconds"
    )
    args = parser.parse_args()
    if args.rate <= 0 or args.probes <= 0:
        parser.error("--rate and --probes must be positive")
    if args.seconds < 30:
        parser.error("--seconds must be at least 30 (warm-up, probes, and a tail of load)")
    with tempfile.TemporaryDirectory(prefix="concord-latency-") as tmp:
        broker = start_broker(log_path=Path(tmp) / "tansu.log")
        try:
            asyncio.run(run(args, broker.url, Path(tmp)))
        finally:
            broker.stop()


if __name__ == "__main__":
    main()
