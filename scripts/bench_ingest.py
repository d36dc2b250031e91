"""Pipeline benchmark: a Concord worker vs a plain aiokafka loop on the same broker, same run.

    python scripts/bench_ingest.py --events 200000 [--clickhouse off|on|both] [--profile out.svg]

Publishes N realistic events once, then lets each contender consume all of them from the
start under its own consumer group: the plain loop (consume -> orjson decode -> dict
update -> produce, commit and flush every second), a `concord worker` running the ingest
stage alone (CONCORD_STAGES=ingest: the same work as the plain loop, plus validation, the
re-send check, the crosswalk and the state changelog), and a worker running every stage.
The figures are the ratios to the plain loop; absolute numbers move ±30% on shared machines.
The worker's CPU time per event moves far less: what other tenants take is not in it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from concord.broker import free_port, start_broker, worker_env
from concord.scenario import iter_bench_events
from schemas.settings import Settings
from sinks.metrics import metric_samples
from streams.topics import TopicNames, ensure_topics

PREFIX = "bench"


async def publish(bootstrap: str, names: TopicNames, n: int) -> float:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=50, max_batch_size=262_144, acks="all"
    )
    await producer.start()
    started = time.perf_counter()
    try:
        from schemas.stages import Source

        for source, key, value in iter_bench_events(n):
            await producer.send(names.sources[Source(source)], value, key=key)
        await producer.flush()
    finally:
        await producer.stop()
    return n / (time.perf_counter() - started)


async def plain_loop(bootstrap: str, names: TopicNames, n: int) -> float:
    """consume -> decode -> dict update -> produce; commit and flush every second."""
    consumer = AIOKafkaConsumer(
        *names.sources.values(),
        bootstrap_servers=bootstrap,
        group_id="bench-plain",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=50, max_batch_size=262_144)
    await consumer.start()
    await producer.start()
    state: dict[bytes, dict] = {}
    seen = 0
    started = None
    last_commit = time.monotonic()
    try:
        while seen < n:
            batch = await consumer.getmany(timeout_ms=500, max_records=5000)
            for messages in batch.values():
                for msg in messages:
                    if started is None:
                        started = time.perf_counter()
                    body = orjson.loads(msg.value)
                    state[msg.key] = {"status": body["status"], "at": body["occurred_at"]}
                    await producer.send(f"{PREFIX}.plain.out", orjson.dumps(body), key=msg.key)
                    seen += 1
            if time.monotonic() - last_commit > 1.0:
                await producer.flush()
                await consumer.commit()
                last_commit = time.monotonic()
        await producer.flush()
        await consumer.commit()
    finally:
        await consumer.stop()
        await producer.stop()
    assert started is not None
    return n / (time.perf_counter() - started)


def profile_format(path: str) -> str:
    return "raw" if path.endswith(".txt") else "flamegraph"


def figures(port: int) -> tuple[float, float, float]:
    """(events ingest took, events the per-order stage applied, mean order-state bytes)."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    ingested = sum(metric_samples(text, "concord_events_total").values())
    joined = sum(metric_samples(text, "concord_order_events_total").values())
    state = next(
        (
            float(line.split()[1])
            for line in text.splitlines()
            if line.startswith("concord_order_state_bytes ")
        ),
        0.0,
    )
    return ingested, joined, state


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc): unlike wall time, what
    other tenants of a shared machine take does not count."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def faust_worker(
    broker_url: str,
    prefix: str,
    n: int,
    data_dir: Path,
    profile: str | None,
    clickhouse: bool,
    batch_within: float,
    stages: str = "all",
) -> dict[str, float]:
    """Rates of a `concord worker` running `stages` over the published events: ingest, and
    (all stages) the whole pipeline (ingest + join + KPIs + ghosts + dedupe + breaker
    [+ ClickHouse])."""
    port = free_port()
    env = worker_env(
        broker_url,
        data_dir,
        topic_prefix=prefix,
        app_id=f"{prefix}-concord",
        web_port=port,
        clickhouse_enabled=str(clickhouse).lower(),
        ingest_batch_within=batch_within,
        stages=stages,
    )
    cmd = [sys.executable, "-m", "concord", "worker"]
    log = (data_dir / "worker.log").open("wb")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    spy = None
    try:
        started = ingest_done = None
        last_joined, last_change = 0.0, time.perf_counter()
        cpu_start = cpu_end = 0.0
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            try:
                ingested, joined, state_bytes = figures(port)
            except httpx.HTTPError:
                ingested = joined = state_bytes = 0.0
            now = time.perf_counter()
            if ingested > 0 and started is None:
                started = now
                cpu_start = cpu_seconds(proc.pid)
                if profile:
                    spy = subprocess.Popen(
                        [
                            *(str(Path(sys.executable).parent / "py-spy"), "record", "-o", profile),
                            *("-p", str(proc.pid)),
                            *("-r", "200", "-f", profile_format(profile)),
                        ],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
            if ingested >= n and ingest_done is None:
                ingest_done = now
                if stages == "ingest":
                    cpu_end = cpu_seconds(proc.pid)
            if joined > last_joined:
                last_joined, last_change = joined, now
                cpu_end = cpu_seconds(proc.pid)
            # Done once every event is joined (ingested, for ingest alone); a stage quiet for
            # 15 s is done with fewer.
            quiet = now - last_change > 15
            joined_all = last_joined >= n or stages == "ingest"
            if ingest_done is not None and started is not None and (joined_all or quiet):
                text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
                rewinds = next(
                    (
                        float(line.split()[1])
                        for line in text.splitlines()
                        if line.startswith("concord_ingest_rewinds_total ")
                    ),
                    0.0,
                )
                return {
                    "rewinds": rewinds,
                    "ingest": n / (ingest_done - started),
                    "pipeline": last_joined / (last_change - started) if last_joined else 0.0,
                    "joined": last_joined,
                    "state_bytes": state_bytes,
                    "cpu_us": 1e6 * (cpu_end - cpu_start) / (last_joined or n),
                }
            if proc.poll() is not None:
                raise RuntimeError(f"worker died; see {data_dir / 'worker.log'}")
            time.sleep(0.25)
        raise RuntimeError("worker did not finish in 15 min")
    finally:
        if spy is not None:
            spy.send_signal(2)
            spy.wait(60)
        proc.terminate()
        proc.wait(30)
        log.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument(
        "--profile", help="py-spy profile of the worker: .svg (flame graph) or .txt (stacks)"
    )
    parser.add_argument(
        "--clickhouse",
        choices=["on", "off", "both"],
        default="off",
        help="the worker's ClickHouse feed (embedded chdb); both = two worker runs",
    )
    parser.add_argument(
        "--batch-within", type=float, default=0.5, help="the worker's batch wait, seconds"
    )
    parser.add_argument(
        "--ingest-alone",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="first a worker running the ingest stage alone",
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="concord-bench-") as tmp:
        broker = start_broker(log_path=Path(tmp) / "tansu.log")
        try:
            bootstrap = f"127.0.0.1:{broker.port}"
            settings = Settings(
                broker_url=broker.url,
                topic_prefix=PREFIX,
                topic_partitions=args.partitions,
                embedded_broker=True,
            )
            names = TopicNames.from_settings(settings)
            asyncio.run(ensure_topics(settings, [*names.all(), f"{PREFIX}.plain.out"]))
            pub = asyncio.run(publish(bootstrap, names, args.events))
            print(f"published {args.events} events at {pub:,.0f}/s")
            plain = asyncio.run(plain_loop(bootstrap, names, args.events))
            print(f"plain aiokafka loop : {plain:>9,.0f} events/s")
            runs = [("ingest", False)] if args.ingest_alone else []
            runs += [
                ("all", clickhouse)
                for clickhouse in {"on": [True], "off": [False], "both": [False, True]}[
                    args.clickhouse
                ]
            ]
            for i, (stages, clickhouse) in enumerate(runs):
                data_dir = Path(tmp) / f"worker-{i}"
                data_dir.mkdir()
                prefix = PREFIX
                if i:  # each worker run reads the same events from topics of its own
                    prefix = f"{PREFIX}{i}"
                    run = Settings(**{**settings.model_dump(), "topic_prefix": prefix})
                    asyncio.run(ensure_topics(run))
                    asyncio.run(publish(bootstrap, TopicNames.from_settings(run), args.events))
                got = faust_worker(
                    broker.url,
                    prefix,
                    args.events,
                    data_dir,
                    args.profile if stages == "all" else None,
                    clickhouse,
                    args.batch_within,
                    stages,
                )
                if stages == "ingest":
                    print(
                        f"ingest alone        : {got['ingest']:>9,.0f} events/s "
                        f"(ratio {got['ingest'] / plain:.2f}; CONCORD_STAGES=ingest; "
                        f"{got['cpu_us']:.0f} CPU µs per event)"
                    )
                    continue
                label = f"ClickHouse {'on' if clickhouse else 'off'}"
                rate = got["ingest"]
                print(f"concord ingest      : {rate:>9,.0f} events/s ({label}, all stages)")
                print(
                    f"concord pipeline    : {got['pipeline']:>9,.0f} events/s through ingest, "
                    f"join, KPIs, ghosts, dedupe, breaker ({got['joined']:,.0f} joined)"
                )
                print(f"ratio pipeline/plain: {got['pipeline'] / plain:.2f}")
                print(
                    f"worker CPU          : {got['cpu_us']:.0f} µs per event joined "
                    f"({1e6 / got['cpu_us']:,.0f} events per CPU-second)"
                )
                print(f"order state         : {got['state_bytes']:,.0f} bytes per order (mean)")
                print(f"consumer rewinds    : {got['rewinds']:.0f}")
        finally:
            broker.stop()


if __name__ == "__main__":
    main()
