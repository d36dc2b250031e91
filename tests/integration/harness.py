"""What integration tests drive: worker processes, raw produce, topic reads."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from concord.broker import free_port, partitions_of, read_to_end, worker_env
from sinks.metrics import metric_samples
from tests.outputs import Outputs


@dataclass
class WorkerProcess:
    """A `concord worker` subprocess with its own web port and log file."""

    env: dict[str, str]
    log_path: Path
    web_port: int
    process: subprocess.Popen[bytes] | None = None
    starts: int = field(default=0)

    def start(self, timeout: float = 60.0) -> None:
        """Start the worker and wait until its web server answers."""
        self.starts += 1
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "concord", "worker", "--web-port", str(self.web_port)],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited early:\n{self.log_tail()}")
            try:
                if httpx.get(self.url("/health"), timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"worker did not come up:\n{self.log_tail()}")

    def url(self, path: str) -> str:
        """A URL on the worker's web server."""
        return f"http://127.0.0.1:{self.web_port}{path}"

    def kill(self) -> None:
        """SIGKILL: no shutdown, no final commit."""
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM and wait; SIGKILL if it does not stop in time."""
        if not self.process or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def log_tail(self, lines: int = 60) -> str:
        """The end of the worker's log."""
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


PARTITIONS = 4  # per topic, in every integration test


def new_worker(broker_url: str, tmp: Path, prefix: str, **extra: str) -> WorkerProcess:
    """A worker process (not started yet) with its own topics, group and data dir."""
    env = worker_env(
        broker_url,
        tmp / "data",
        topic_prefix=prefix,
        app_id=prefix,
        topic_partitions=PARTITIONS,
        ingest_batch_within=0.2,
    )
    env.update(extra)
    return WorkerProcess(
        env=env,
        log_path=tmp / f"{prefix}-worker.log",
        web_port=free_port(),
    )


async def produce(bootstrap: str, records: Iterable[tuple[str, bytes | None, bytes]]) -> int:
    """Send (topic, key, value) records as they come; returns the count."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=10, acks="all")
    await producer.start()
    n = 0
    try:
        for topic, key, value in records:
            await producer.send(topic, value, key=key)
            n += 1
        await producer.flush()
    finally:
        await producer.stop()
    return n


# Worker settings that let event time settle where the feed ends: a source partition with
# nothing left stops holding it after 2 s, and it never follows the wall clock past there.
SETTLED_EVENT_TIME = {"CONCORD_SOURCE_IDLE_AFTER": "PT2S", "CONCORD_WATERMARK_IDLE_AFTER": "PT1H"}


def wait_until(
    what: str,
    check: Callable[[], Any],
    *,
    within: float = 120.0,
    workers: Iterable[WorkerProcess] = (),
    show: Callable[[], Any] | None = None,
) -> Any:
    """Call `check()` every half second until it returns something true, which is returned;
    fails naming `what`, with the last value (or HTTP error), `show()` when given, and the
    workers' log tails."""
    deadline = time.monotonic() + within
    while True:
        try:
            last = check()
        except httpx.HTTPError as exc:
            last = exc
        else:
            if last:
                return last
        if time.monotonic() >= deadline:
            logs = "\n".join(w.log_tail(30) for w in workers)
            shown = "" if show is None else f", {show()!r}"
            raise AssertionError(f"{what}: not within {within:g} s (last: {last!r}{shown})\n{logs}")
        time.sleep(0.5)


def metric_total(worker: WorkerProcess, name: str) -> float:
    """The sum of a labelled metric's samples on the worker's /metrics."""
    return sum(metric_samples(httpx.get(worker.url("/metrics"), timeout=10).text, name).values())


def watermark_of(worker: WorkerProcess) -> datetime | None:
    """The worker's event time, from /kpis."""
    token = worker.env.get("CONCORD_API_TOKEN")
    headers = {"Authorization": f"Bearer {token}"} if token else None
    mark = httpx.get(worker.url("/kpis"), headers=headers, timeout=10).json()["watermark"]
    return None if mark is None else datetime.fromisoformat(mark)


def event_time_reached(worker: WorkerProcess, target: datetime, within: float = 120.0) -> Any:
    """The worker's event time once it is `target`, or where it stands after `within` s
    (the caller asserts it; what was published meanwhile can be checked first)."""
    deadline = time.monotonic() + within
    while (reached := watermark_of(worker)) != target and time.monotonic() < deadline:
        time.sleep(0.5)
    return reached


async def published_outputs(bootstrap: str, prefix: str, *, quiet: bool = False) -> Outputs:
    """Everything on the anomalies and commands topics so far (with `quiet`, once nothing
    new came for 3 s), reduced: repeats counted."""
    topics = [f"{prefix}.anomalies", f"{prefix}.commands"]
    records = await (read_all(bootstrap, topics) if quiet else read_to_end(bootstrap, topics))
    anomalies = [orjson.loads(r.value) for r in records if r.topic.endswith(".anomalies")]
    commands = [orjson.loads(r.value) for r in records if r.topic.endswith(".commands")]
    return Outputs.reduce(anomalies, commands)


def assert_exactly(outputs: Outputs, want: dict[str, tuple[str, str]]) -> None:
    """The published anomalies are exactly `want` (id -> (type, order)), each opened once
    and still open (none raised and resolved); any repeat identical; no command."""
    found = {aid: (a["type"], a["order_id"]) for aid, a in outputs.final.items()}
    extra = found.keys() - want.keys()
    assert not extra, f"not planted: {outputs.census(extra)}"
    missing = sorted(want.keys() - found.keys())
    kinds = Counter(want[aid][0] for aid in missing)
    examples = [(aid, *want[aid]) for aid in missing[:5]]
    assert not missing, f"never raised: {len(missing)} {dict(kinds)}, e.g. {examples}"
    assert found == want
    not_open = [aid for aid, states in outputs.lifecycle.items() if states != ["open"]]
    assert not not_open, f"not open: {outputs.census(not_open)}"
    assert outputs.conflicts == []
    assert outputs.commands == {}


def normalized_events(records: list[Any]) -> list[tuple[Any, dict[str, Any]]]:
    """(record, event) for every event in concord.normalized records (envelopes unpacked;
    event-time marks and forwarded decisions left out)."""
    out = []
    for record in records:
        body = orjson.loads(record.value)
        out += [(record, event) for event in body.get("events", ())]
    return out


class ReadTimeoutError(AssertionError):
    """A read whose condition did not hold in time; `records` is what it read."""

    def __init__(self, what: str, records: list[Any]):
        topics = Counter(r.topic for r in records)
        last = [(r.topic, r.partition, r.offset, (r.value or b"")[:200]) for r in records[-3:]]
        super().__init__(f"{what}; read {len(records)} records {dict(topics)}, the last {last}")
        self.records = records


async def read_all(
    bootstrap: str, topics: list[str], *, until: Any = None, within: float = 90.0
) -> list[Any]:
    """Every record on `topics` from the start, read until `until(records)` holds, or without
    `until`, until nothing new came for 3 s. Raises ReadTimeoutError (with what it read) when
    that does not happen within `within` seconds."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    records: list[Any] = []
    try:
        partitions = [
            TopicPartition(t, p) for t in topics for p in sorted(await partitions_of(consumer, t))
        ]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        deadline = time.monotonic() + within
        quiet_since = time.monotonic()
        while True:
            batch = await consumer.getmany(timeout_ms=500, max_records=10_000)
            got = [m for msgs in batch.values() for m in msgs]
            records.extend(got)
            if got:
                quiet_since = time.monotonic()
            if until is not None and until(records):
                return records
            if until is None and time.monotonic() - quiet_since > 3:
                return records
            if time.monotonic() >= deadline:
                what = "the condition never held" if until else "records kept coming"
                raise ReadTimeoutError(f"{topics}: {what} within {within:g} s", records)
    finally:
        await consumer.stop()


async def committed_offsets(
    bootstrap: str, group: str, topics: list[str]
) -> dict[tuple[str, int], int]:
    """The consumer group's committed offsets on `topics`, by (topic, partition); a partition
    the group never committed is left out. Reads them without joining the group."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        partitions = [
            TopicPartition(t, p) for t in topics for p in sorted(await partitions_of(consumer, t))
        ]
        consumer.assign(partitions)
        committed = {tp: await consumer.committed(tp) for tp in partitions}
    finally:
        await consumer.stop()
    return {(tp.topic, tp.partition): n for tp, n in committed.items() if n is not None}
