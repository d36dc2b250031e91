"""Issue 18's promotion hour through a real worker: what the intake breaker saw.

    PYTHONPATH=. python scripts/breaker_peak.py [--orders 2600] [--failed 0.12] [--resent 0.05]

Publishes to a fresh embedded broker three hours of an auto-parts distributor (09:00-12:00,
Asia/Shanghai): a promotion hour 10:00-11:00 of `--orders` orders, `--failed` of whose stock
reservations the ERP reports failed (three in four then restocked and reserved 20-90 min
later, the rest cancelled), 600 ordinary orders an hour around it (3% failed), the CRM
mirroring every ERP status it has a label for and the WMS every reservation it receives,
their connectors re-sending `--resent` of their events under new ids. One `concord worker`
(the code of the current directory: run it from another checkout to compare) takes it all,
then the breaker's evaluations and transitions are read back from its ClickHouse
(`breaker_history`) and printed, with the true failure rate of the orders whose first
reservation fell in each window.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import orjson
from aiokafka import AIOKafkaProducer

from concord.broker import free_port, start_broker, worker_env
from sinks.clickhouse import connect

CST = timezone(timedelta(hours=8))
START = datetime(2026, 11, 11, 9, 0, tzinfo=CST)
PROMO = START + timedelta(hours=1)
MINUTE = timedelta(minutes=1)
PREFIX = "peak"
ORDINARY_PER_HOUR = 600
ORDINARY_FAILED = 0.03


@dataclass
class Feed:
    """The events, and per order the time and outcome of its first reservation."""

    events: list[dict[str, Any]]
    first_reservation: list[tuple[datetime, bool]]


def build_feed(orders: int, failed: float, resent: float, seed: int) -> Feed:
    """The three hours' events, in event-time order."""
    rng = random.Random(seed)
    placed = [
        (START + timedelta(seconds=rng.uniform(0, 3600)), ORDINARY_FAILED)
        for _ in range(ORDINARY_PER_HOUR)
    ]
    placed += [(PROMO + timedelta(seconds=rng.uniform(0, 3600)), failed) for _ in range(orders)]
    placed += [
        (PROMO + timedelta(hours=1, seconds=rng.uniform(0, 3600)), ORDINARY_FAILED)
        for _ in range(ORDINARY_PER_HOUR)
    ]
    feed = Feed([], [])
    for n, (at, failure_rate) in enumerate(sorted(placed)):
        _Order(n, rng, resent, feed).live(at, failure_rate)
    # The ERP's first event carries the order's details: it goes before anything of its second.
    feed.events.sort(key=lambda e: (datetime.fromisoformat(e["occurred_at"]), "order" not in e))
    return feed


@dataclass
class _Order:
    n: int
    rng: random.Random
    resent: float
    feed: Feed

    def live(self, at: datetime, failure_rate: float) -> None:
        """Created, confirmed, reserved (or failed, then restocked or cancelled), mirrored."""
        rng = self.rng
        self.mirrored("CREATED", "NEW", at)["order"] = _details(self.n, rng)
        confirmed = at + timedelta(seconds=rng.uniform(5, 90))
        self.mirrored("CONFIRMED", "CONFIRMED", confirmed)
        attempt = confirmed + timedelta(seconds=rng.uniform(40, 600))
        fails = rng.random() < failure_rate
        self.feed.first_reservation.append((attempt, fails))
        if fails:
            self.said(
                "erp", "库存不足", attempt
            )  # the CRM has no label for it, the WMS never got it
            if rng.random() < 0.25:
                self.mirrored("CANCELLED", "CANCELLED", attempt + rng.uniform(30, 120) * MINUTE)
                return
            attempt += rng.uniform(20, 90) * MINUTE  # restocked, or moved from another warehouse
        self.mirrored("ALLOCATED", "PROCESSING", attempt)
        self.said("wms", "已分配", attempt + timedelta(seconds=rng.uniform(20, 480)))

    def mirrored(self, status: str, crm_status: str, at: datetime) -> dict[str, Any]:
        """An ERP status and the CRM's mirror of it, minutes later."""
        self.said("crm", crm_status, at + timedelta(seconds=self.rng.uniform(10, 300)))
        return self.said("erp", status, at)

    def said(self, source: str, status: str, at: datetime) -> dict[str, Any]:
        """One event; the CRM's and the WMS's connectors sometimes send theirs again."""
        order_id = f"SO-{self.n:05d}"
        event = {
            "event_id": f"{order_id}-{source}-{len(self.feed.events)}",
            "source": source,
            "order_ref": order_id if source == "erp" else f"{source.upper()}-{self.n:05d}",
            "erp_order_id": order_id,
            "status": status,
            "occurred_at": at.isoformat(timespec="seconds"),
        }
        self.feed.events.append(event)
        if source != "erp" and self.rng.random() < self.resent:
            again = at + timedelta(seconds=self.rng.uniform(1, 30))
            self.feed.events.append(
                {
                    **event,
                    "event_id": f"{event['event_id']}-again",
                    "occurred_at": again.isoformat(timespec="seconds"),
                }
            )
        return event


def _details(n: int, rng: random.Random) -> dict[str, Any]:
    return {
        "customer_id": f"C-{rng.randrange(20_000):05d}",
        "channel": rng.choice(["douyin", "website", "wechat", "distributor_api"]),
        "lines": [{"sku": f"BRK-PAD-{n:05d}", "qty": 1, "unit_price": "129.00"}],
        "amount": "129.00",
        "currency": "CNY",
        "vip": rng.random() < 0.1,
    }


async def publish(bootstrap: str, events: list[dict[str, Any]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, acks="all")
    await producer.start()
    try:
        for e in events:
            topic = f"{PREFIX}.{e['source']}.events"
            await producer.send(topic, orjson.dumps(e), key=e["order_ref"].encode())
        await producer.flush()
    finally:
        await producer.stop()


def run_worker(feed: Feed, data_dir: Path) -> None:
    """Run one worker over the feed until its event time passes the feed's end."""
    broker = start_broker()
    port = free_port()
    env = worker_env(
        broker.url,
        data_dir,
        topic_prefix=PREFIX,
        app_id=PREFIX,
        topic_partitions=4,
        source_idle_after="PT2S",
        watermark_idle_after="PT1H",
    )
    log = (data_dir / "worker.log").open("ab")
    worker = subprocess.Popen(
        [sys.executable, "-m", "concord", "worker", "--web-port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        _wait(lambda: httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200)
        asyncio.run(publish(f"{broker.host}:{broker.port}", feed.events))
        end = datetime.fromisoformat(feed.events[-1]["occurred_at"]) - timedelta(minutes=3)

        def caught_up() -> bool:
            mark = httpx.get(f"http://127.0.0.1:{port}/kpis", timeout=30).json()["watermark"]
            return mark is not None and datetime.fromisoformat(mark) >= end

        _wait(caught_up, timeout=600)
        time.sleep(5)  # the last deltas reach the breaker
    finally:
        worker.terminate()
        worker.wait(120)
        log.close()
        broker.stop()


def _wait(ready: Any, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if ready():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit("the worker did not get there in time; see its log")


def report(feed: Feed, data_dir: Path) -> None:
    client = connect(f"chdb://{data_dir / 'clickhouse'}", "concord")
    rows = client.query(
        "SELECT at, stage, event, orders_created, allocated, allocation_failed, failure_rate "
        "FROM breaker_history FINAL ORDER BY at, event"
    ).result_rows
    print(
        f"{'window end (CST)':<17} {'event':<9} {'stage':>5} {'orders':>6} "
        f"{'allocated':>9} {'failed':>6} {'rate':>6}  true rate"
    )
    for at, stage, event, created, allocated, failed, rate in rows:
        at = at.astimezone(CST)
        if not PROMO <= at <= PROMO + timedelta(hours=2):
            continue
        window = [f for t, f in feed.first_reservation if at - timedelta(hours=1) <= t < at]
        true = sum(window) / len(window) if window else 0.0
        print(
            f"{at:%m-%d %H:%M}      {event:<9} {stage:>5} {created:>6} {allocated:>9} "
            f"{failed:>6} {rate:>6.1%}  {true:.1%} of {len(window)}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=2600)
    parser.add_argument("--failed", type=float, default=0.12)
    parser.add_argument("--resent", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=18)
    args = parser.parse_args()
    feed = build_feed(args.orders, args.failed, args.resent, args.seed)
    print(f"{len(feed.events)} events, {len(feed.first_reservation)} orders", flush=True)
    with tempfile.TemporaryDirectory(prefix="breaker-peak-") as tmp:
        data_dir = Path(tmp)
        run_worker(feed, data_dir)
        report(feed, data_dir)


if __name__ == "__main__":
    main()
