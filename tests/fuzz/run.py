"""The fuzz through the real broker and a worker: publish every record, wait until ingest
has counted each (and the per-order stage has applied what ingest forwarded), read the
dead letters back, and audit."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import httpx
from aiokafka import AIOKafkaProducer

from concord.broker import read_to_end
from sinks.metrics import metric_samples
from tests.fuzz.audit import Audit, Sent, audit
from tests.fuzz.records import FuzzRecord
from tests.integration.harness import WorkerProcess, normalized_events

# The corpus holds records of megabytes (a producer configured for them; the contract's
# limit is the worker's to enforce, not the client's).
MAX_REQUEST_BYTES = 16 << 20
Progress = Callable[[str], None]


@dataclass
class FuzzRun:
    """A run's audit, and what the worker did meanwhile."""

    audit: Audit
    survived: bool  # the worker process never exited
    forwarded: int  # events ingest put on concord.normalized
    joined: float  # events the per-order stage applied
    settled: bool  # ingest counted every record in time


async def publish(
    bootstrap: str, prefix: str, records: Sequence[FuzzRecord], progress: Progress | None = None
) -> list[Sent]:
    """Send every record on its source's topic; where each one landed."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        linger_ms=20,
        acks="all",
        max_request_size=MAX_REQUEST_BYTES,
    )
    await producer.start()
    try:
        pending = []
        for i, record in enumerate(records, 1):
            topic = f"{prefix}.{record.source}.events"
            pending.append(await producer.send(topic, record.value, key=record.key))
            if progress is not None and i % 10_000 == 0:
                progress(f"published {i:,} of {len(records):,}")
        landed = await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return [Sent(r, m.topic, m.partition, m.offset) for r, m in zip(records, landed, strict=True)]


def counted(worker: WorkerProcess, name: str) -> dict[tuple[str, ...], float]:
    """A labelled counter's samples on the worker's /metrics: label values -> count."""
    text = httpx.get(worker.url("/metrics"), timeout=10).text
    return {
        tuple(value for _, value in labels): n for labels, n in metric_samples(text, name).items()
    }


def _counted_if_alive(
    worker: WorkerProcess, name: str, last: dict[tuple[str, ...], float]
) -> dict[tuple[str, ...], float]:
    # The counter now, or as last read from a worker that has gone.
    try:
        return counted(worker, name)
    except httpx.HTTPError:
        return last


def _wait(
    worker: WorkerProcess,
    done: Callable[[], bool],
    within: float,
    progress: Progress | None,
    what: Callable[[], str],
) -> bool:
    # Until `done()`, the worker's exit, or `within` seconds.
    deadline = time.monotonic() + within
    shown = time.monotonic()
    while not done():
        if worker.process is None or worker.process.poll() is not None:
            return False
        if time.monotonic() >= deadline:
            return False
        if progress is not None and time.monotonic() - shown >= 5:
            progress(what())
            shown = time.monotonic()
        time.sleep(0.5)
    return True


def fuzz(
    bootstrap: str,
    prefix: str,
    worker: WorkerProcess,
    records: Sequence[FuzzRecord],
    *,
    within: float = 90.0,
    progress: Progress | None = None,
) -> FuzzRun:
    """Publish `records` to a running worker and account for every one of them."""
    sent = asyncio.run(publish(bootstrap, prefix, records, progress))
    alive = lambda: worker.process is not None and worker.process.poll() is None  # noqa: E731
    outcomes: dict[tuple[str, ...], float] = {}

    def ingested() -> bool:
        nonlocal outcomes
        outcomes = _counted_if_alive(worker, "concord_events_total", outcomes)
        return sum(outcomes.values()) >= len(sent)

    settled = _wait(
        worker,
        ingested,
        within,
        progress,
        lambda: f"ingest counted {sum(outcomes.values()):,.0f} of {len(sent):,}",
    )
    normalized = asyncio.run(read_to_end(bootstrap, [f"{prefix}.normalized"]))
    forwarded = len(normalized_events(normalized))
    joined = 0.0

    def applied() -> bool:
        nonlocal joined
        joined = sum(_counted_if_alive(worker, "concord_order_events_total", {(): joined}).values())
        return joined >= forwarded

    if settled:
        _wait(
            worker,
            applied,
            within,
            progress,
            lambda: f"the per-order stage applied {joined:,.0f} of {forwarded:,}",
        )
    letters = asyncio.run(read_to_end(bootstrap, [f"{prefix}.deadletter"]))
    by_source = {(source, outcome): n for (outcome, source), n in outcomes.items()}
    result = audit(sent, [r.value for r in letters], by_source)
    return FuzzRun(result, alive(), forwarded, joined, settled)
