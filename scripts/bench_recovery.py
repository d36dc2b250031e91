"""Recovery of the per-order state: how long a worker takes to be back after SIGKILL.

    python scripts/bench_recovery.py [--orders 1000000] [--partitions 8]

Writes the order-state changelog of N orders straight to the broker (realistic states: the
joined states of a generated scenario day, each copied under new order ids, so their sizes
are the real ones), exactly as the per-order stage writes it: one record per order on the
partition of the order's events, each partition closed by an end marker on tansu. Then:

1. starts a `concord worker` and times it until `/kpis` counts all N orders and
   `/orders/{id}` answers for the last one (the first start recovers from the changelog);
2. SIGKILLs it, starts it again and times the same: the recovery after a crash.

Prints both times, the recovery rate (orders/s) and the worker's resident memory. Writing
the changelog directly skips hours of feeding events through the pipeline; what is timed,
reading the changelog back into the table and rebuilding the stage's aggregates from it, is
what a restart does.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import orjson
from aiokafka import AIOKafkaProducer

from concord.broker import REPLAY_MAX_EVENT_AGE, free_port, start_broker, worker_env
from concord.scenario import ScenarioConfig, encode, generate
from schemas.privacy import PhoneHasher
from schemas.settings import Settings
from schemas.stages import Source
from schemas.status_map import load_status_map
from streams.produce import BatchProducer
from streams.rules.ingest import (
    IngestRules,
    InputLimits,
    Origin,
    Outcome,
    RefState,
    Rejection,
    state_key,
)
from streams.rules.order_state import OrderJoin, OrderState
from streams.tansu import END_MARKER_KEY
from streams.topics import TopicNames, ensure_topics

PREFIX = "rec"
APP_ID = f"{PREFIX}-concord"


def template_states(seed: int = 7) -> list[tuple[bytes, bytes]]:
    """(order id, changelog value) of every joined ERP order of a scenario day."""
    scenario = generate(ScenarioConfig(seed=seed, orders=1800))
    ingest = IngestRules(load_status_map(None), limits=InputLimits(max_age=REPLAY_MAX_EVENT_AGE))
    join = OrderJoin(PhoneHasher(os.urandom(32)))
    refs: dict[str, RefState] = {}
    orders: dict[str, OrderState] = {}
    wall = datetime.now(UTC)
    for offset, (source_name, value) in enumerate(encode(e) for e in scenario.events):
        event = ingest.decode(value, Source(source_name), wall)
        if isinstance(event, Rejection):
            continue
        ref = refs.setdefault(state_key(event.source, event.order_ref), RefState())
        applied = ingest.apply(event, value, ref, wall, origin=Origin(0, offset, None))
        if applied.outcome is not Outcome.ACCEPTED:
            continue
        for order_id, body in applied.forward:
            join.apply(orders.setdefault(order_id, OrderState(order_id=order_id)), body)
    return [
        (order_id.encode(), orjson.dumps({"s": state.to_json()}))
        for order_id, state in sorted(orders.items())
        if state.facts is not None
    ]


def changelog_records(n: int) -> Iterator[tuple[bytes, bytes]]:
    """N (key, value) records: the templates in turn, each under a new order id."""
    templates = template_states()
    for i in range(n):
        old_id, value = templates[i % len(templates)]
        new_id = f"SO9{i:011d}".encode()
        yield new_id, value.replace(b'"' + old_id + b'"', b'"' + new_id + b'"')


async def write_changelog(bootstrap: str, topic: str, n: int, partitions: int) -> tuple[str, int]:
    """Produce the changelog; returns the last order id and the bytes of values written."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=20, max_batch_size=1_048_576, acks="all"
    )
    await producer.start()
    numbers = list(range(partitions))
    last, size, started = "", 0, time.perf_counter()
    try:
        for i, (key, value) in enumerate(changelog_records(n)):
            partition = BatchProducer.partition_for_key(key, numbers)
            await producer.send(topic, value, key=key, partition=partition)
            last, size = key.decode(), size + len(value)
            if i and i % 100_000 == 0:
                rate = i / (time.perf_counter() - started)
                print(f"  changelog: {i:,} of {n:,} written ({rate:,.0f}/s)", flush=True)
        await producer.flush()
        # tansu: each partition's last batch must hold one record (streams/tansu.py, 3).
        for partition in numbers:
            marker = await producer.send(
                topic, None, key=END_MARKER_KEY.encode(), partition=partition
            )
            await marker
    finally:
        await producer.stop()
    return last, size


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def time_recovery(
    env: dict[str, str], log: Path, port: int, n: int, last: str
) -> tuple[subprocess.Popen[bytes], float]:
    """Start a worker; seconds until it tracks all N orders and answers for the last one."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "concord", "worker"],
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    shown = 0.0
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the worker stopped; see {log}")
        try:
            tracked = httpx.get(f"{base}/kpis", timeout=30).json().get("orders_tracked", 0)
            if tracked >= n and httpx.get(f"{base}/orders/{last}", timeout=30).status_code == 200:
                return proc, time.perf_counter() - started
        except (httpx.HTTPError, ValueError):
            tracked = 0
        now = time.perf_counter() - started
        if now - shown >= 10:
            shown = now
            print(f"  {now:5.0f} s: {tracked:,} orders tracked", flush=True)
        if now > 3600:
            raise RuntimeError("no recovery within an hour")
        time.sleep(0.25)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=1_000_000)
    parser.add_argument("--partitions", type=int, default=8)
    args = parser.parse_args()
    if args.orders < 1 or args.partitions < 1:
        parser.error("--orders and --partitions must be positive")

    with tempfile.TemporaryDirectory(prefix="concord-recovery-") as tmp:
        broker = start_broker(log_path=Path(tmp) / "tansu.log")
        try:
            settings = Settings(
                broker_url=broker.url,
                topic_prefix=PREFIX,
                app_id=APP_ID,
                topic_partitions=args.partitions,
                embedded_broker=True,
            )
            changelog = f"{APP_ID}-order-state-changelog"
            topics = [*TopicNames.from_settings(settings).all(), changelog]
            asyncio.run(ensure_topics(settings, topics))
            t0 = time.perf_counter()
            bootstrap = broker.url.removeprefix("kafka://")
            last, size = asyncio.run(
                write_changelog(bootstrap, changelog, args.orders, args.partitions)
            )
            print(
                f"changelog           : {args.orders:,} orders, {size / args.orders:,.0f} bytes "
                f"per order, written in {time.perf_counter() - t0:,.0f} s"
            )
            port = free_port()
            env = worker_env(
                broker.url,
                Path(tmp) / "worker",
                topic_prefix=PREFIX,
                app_id=APP_ID,
                web_port=port,
                topic_partitions=args.partitions,
                clickhouse_enabled="false",
            )
            log = Path(tmp) / "worker.log"
            proc, first = time_recovery(env, log, port, args.orders, last)
            print(
                f"first start         : {first:,.1f} s to all {args.orders:,} orders "
                f"({args.orders / first:,.0f} orders/s), worker RSS {rss_mib(proc.pid):,.0f} MiB"
            )
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            proc, again = time_recovery(env, log, port, args.orders, last)
            print(
                f"after SIGKILL       : {again:,.1f} s to all {args.orders:,} orders "
                f"({args.orders / again:,.0f} orders/s), worker RSS {rss_mib(proc.pid):,.0f} MiB"
            )
            proc.terminate()
            proc.wait(60)
        finally:
            broker.stop()


if __name__ == "__main__":
    main()
