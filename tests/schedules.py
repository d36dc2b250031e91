"""One input log through the real broker and worker under a schedule, and what came out.

A schedule is how the log reaches the pipeline and what happens to the workers meanwhile:
everything at once or paced in event-time order, SIGKILLs at random moments (each followed
by a restart, as a supervisor would), a second worker of the same group joining and leaving.
Whatever the schedule, the outputs must be the same: the anomalies (by id, with their final
state and every version published) and the commands (by id, with their payloads). A record
published again after a crash is allowed only with the same id and the same content, and is
counted (`Published.folded`, tests/oracle/compare.py); the same id with other content is a
disagreement.

Wall time decides only when an output appears: `detected_at` is left out of the content.
Event time settles at the newest event minus the allowed lateness (quiet source partitions
let go after 2 s; the wall-clock fallback is pushed out of reach), so a run's outputs are
read once the per-order stage's watermark is there and the output topics stop growing.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from concord.scenario import encode
from tests.integration.harness import WorkerProcess, new_worker, produce
from tests.oracle.compare import Actual

ALLOWED_LATENESS = timedelta(minutes=2)
SETTINGS = {
    "CONCORD_SOURCE_IDLE_AFTER": "PT2S",
    "CONCORD_WATERMARK_IDLE_AFTER": "PT24H",
    "CONCORD_CLICKHOUSE_ENABLED": "false",
}


@dataclass
class Published:
    """What a run published, in order, and how late some of its input came."""

    records: list[dict[str, Any]] = field(default_factory=list)  # every anomaly record
    command_records: list[dict[str, Any]] = field(default_factory=list)  # every command
    late_events: float = 0.0  # events the per-order stage applied behind its watermark

    def folded(self) -> Actual:
        """One final record per id, identical repeats counted, inconsistencies noted."""
        return Actual.fold(self.records, self.command_records)


@dataclass(frozen=True)
class Schedule:
    """How a log reaches the pipeline, and what happens to its workers meanwhile."""

    name: str
    kills: int = 0  # SIGKILLs while the log is processed, each followed by a restart
    second_worker: bool = False  # another worker of the group joins mid-feed and leaves
    chunks: int = 1  # the log published in this many slices of event time, with pauses
    seed: int = 0


def records_of(events: Sequence[dict[str, Any]], prefix: str) -> list[tuple[str, bytes, bytes]]:
    """The log as (topic, key, value) records, in the log's order."""
    out = []
    for entry in events:
        source, value = encode(entry)
        out.append((f"{prefix}.{source}.events", str(entry["order_ref"]).encode(), value))
    return out


def run(
    broker_url: str,
    bootstrap: str,
    tmp: Path,
    prefix: str,
    events: Sequence[dict[str, Any]],
    schedule: Schedule,
    *,
    settle_within: float = 300.0,
    log: Callable[[str], None] = lambda line: None,
) -> Published:
    """Run `events` through fresh workers under `schedule`; the outputs once settled."""
    rng = random.Random(schedule.seed)
    worker = new_worker(broker_url, tmp, prefix, **SETTINGS)
    workers = [worker]
    try:
        worker.start()
        publisher = threading.Thread(
            target=_publish, args=(bootstrap, records_of(events, prefix), schedule.chunks)
        )
        publisher.start()
        if schedule.second_worker:
            time.sleep(rng.uniform(1.0, 3.0))
            second = new_worker(broker_url, tmp, prefix, **SETTINGS)
            workers.append(second)
            second.start()
            time.sleep(rng.uniform(5.0, 15.0))
            second.stop()
            log(f"second worker joined and left ({second.log_path.name})")
        for n in range(schedule.kills):
            time.sleep(rng.uniform(0.5, 4.0))
            worker.kill()
            log(f"SIGKILL {n + 1}")
            worker.start()
        publisher.join()
        newest = max(datetime.fromisoformat(str(e["occurred_at"])) for e in events)
        _settle(worker, bootstrap, prefix, newest - ALLOWED_LATENESS, settle_within)
        outputs = asyncio.run(_read_outputs(bootstrap, prefix))
        outputs.late_events = _late_events(worker)
        return outputs
    finally:
        for each in workers:
            each.stop()


def _late_events(worker: WorkerProcess) -> float:
    # What this worker process applied behind its watermark (concord_late_events_total).
    text = httpx.get(worker.url("/metrics"), timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("concord_late_events_total{")
    )


def _publish(bootstrap: str, records: list[tuple[str, bytes, bytes]], chunks: int) -> None:
    size = max(1, -(-len(records) // chunks))
    for start in range(0, len(records), size):
        asyncio.run(produce(bootstrap, records[start : start + size]))
        if chunks > 1:
            time.sleep(0.5)


def _settle(
    worker: WorkerProcess, bootstrap: str, prefix: str, watermark: datetime, within: float
) -> None:
    # The per-order stage at the feed's end, then the output topics still for a few seconds
    # (the dedupe and breaker stages follow the per-order stage's marks).
    deadline = time.monotonic() + within
    while True:
        try:
            mark = httpx.get(worker.url("/kpis"), timeout=10).json().get("watermark")
        except httpx.HTTPError:
            mark = None
        if mark is not None and datetime.fromisoformat(mark) >= watermark:
            break
        if time.monotonic() > deadline:
            raise AssertionError(f"watermark {mark} never reached {watermark}\n{worker.log_tail()}")
        time.sleep(0.5)
    last, still_since = -1, time.monotonic()
    while time.monotonic() - still_since < 5.0:
        ends = asyncio.run(_end_offsets(bootstrap, [f"{prefix}.anomalies", f"{prefix}.commands"]))
        total = sum(ends.values())
        if total != last:
            last, still_since = total, time.monotonic()
        if time.monotonic() > deadline:
            raise AssertionError(f"the output topics never settled\n{worker.log_tail()}")
        time.sleep(1.0)


async def _end_offsets(bootstrap: str, topics: list[str]) -> dict[TopicPartition, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [
            TopicPartition(t, p) for t in topics for p in consumer.partitions_for_topic(t) or ()
        ]
        return await consumer.end_offsets(partitions) if partitions else {}
    finally:
        await consumer.stop()


async def read_topic(bootstrap: str, topic: str) -> list[bytes]:
    """Every value on `topic` now, partition by partition in order.

    A partition is read to the high watermark its fetches report, not to ListOffsets: tansu
    answers ListOffsets with the last batch's base offset + 1 (README, the embedded broker),
    which would leave the rest of the last batch unread.
    """
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    values: list[bytes] = []
    try:
        await consumer._client.force_metadata_update()
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        if not partitions:
            return values
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        deadline = time.monotonic() + 120.0
        while True:
            batch = await consumer.getmany(timeout_ms=500, max_records=10_000)
            for messages in batch.values():
                values += [m.value for m in messages]
            ends = {tp: consumer.highwater(tp) for tp in partitions}
            behind = [
                tp for tp, end in ends.items() if end is None or await consumer.position(tp) < end
            ]
            if not batch and not behind:
                return values
            if time.monotonic() > deadline:
                raise AssertionError(f"{topic}: could not read up to {ends}")
    finally:
        await consumer.stop()


async def _read_outputs(bootstrap: str, prefix: str) -> Published:
    anomalies = await read_topic(bootstrap, f"{prefix}.anomalies")
    commands = await read_topic(bootstrap, f"{prefix}.commands")
    return Published([orjson.loads(v) for v in anomalies], [orjson.loads(v) for v in commands])
