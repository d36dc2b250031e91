"""The worker's real stages in-process: records and wall time in, every produced record out.

A test harness in the manner of Flink's operator harnesses. `Pipeline` builds the stages
exactly as the worker does (`streams.app.build_stages`: ingest, the per-order stage, dedupe,
the anomaly index and decisions, the breaker) on an in-memory log instead of a broker and a
small fake of what the stages touch on Faust's app (the consumer's offsets and positions,
the producer, the tables). Nothing of the stages' own code is replaced:

    pipeline = Pipeline(settings)
    pipeline.publish(change_events)          # onto the source topics, keyed by order_ref
    pipeline.run(batch_size=7)               # every stage, batch by batch, until all is read
    pipeline.advance_wall(120)               # the worker's 1-second timers, wall clock moving
    pipeline.crash()                         # SIGKILL: memory gone, tables from changelogs
    pipeline.run()                           # uncommitted records come again
    pipeline.outputs(), pipeline.anomalies(), pipeline.records(topic)

Schedules are deterministic: the stages take turns in pipeline order, each taking one batch
of up to `batch_size` records, gathered round-robin over its input partitions in runs of
up to `run_length` records per partition (Faust hands a stage each partition's fetched run).
Offsets are committed every `commit_every` batches, after the per-order stage's
before-commit hook writes its states, as the worker's commit does. The wall clock stands
still unless moved (`advance_wall`, `wall_per_batch`): event-time rules then see the same
wall time whatever the schedule.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from aiokafka.partitioner import murmur2
from faust.types import TP

from schemas.settings import Settings
from schemas.stages import Source
from streams.app import Stages, build_stages
from streams.decisions import route_decisions
from streams.ingest import envelope
from streams.rules.watermark import as_us
from streams.topics import TopicNames
from tests.outputs import Outputs
from tests.phones import PHONES

# Later than every feed the tests build: event times are never capped at wall + max_ahead.
WALL_START = datetime(2026, 4, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Record:
    """One record on the in-memory log."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()

    def json(self) -> Any:
        """The value, decoded."""
        return None if self.value is None else orjson.loads(self.value)


class Log:
    """The broker: topics of partitions of records, kept across crashes."""

    def __init__(self, settings: Settings, names: TopicNames):
        self.settings = settings
        self._single = {names.breaker, f"{settings.app_id}-breaker-changelog"}
        self.partitions: dict[str, list[list[Record]]] = {}
        self.produced: list[Record] = []  # every record, in the order it was produced

    def count(self, topic: str) -> int:
        """The topic's partition count (the breaker's topic and table have one)."""
        return 1 if topic in self._single else self.settings.topic_partitions

    def topic(self, name: str) -> list[list[Record]]:
        """The partitions of `name`, created on first use."""
        parts = self.partitions.get(name)
        if parts is None:
            parts = self.partitions[name] = [[] for _ in range(self.count(name))]
        return parts

    def append(
        self, topic: str, partition: int, key: bytes | None, value: bytes | None, headers: Any
    ) -> None:
        """Add one record at the partition's end."""
        log = self.topic(topic)[partition]
        record = Record(topic, partition, len(log), key, value, tuple(headers or ()))
        log.append(record)
        self.produced.append(record)

    def end(self, tp: TP) -> int:
        """The offset the partition's next record gets."""
        return len(self.topic(tp.topic)[tp.partition])


# --- the fakes of what the stages touch on Faust's app ------------------------------------


@dataclass(eq=False)
class _Message:
    """What Faust's Message gives a stage: the record and whether it was acknowledged."""

    tp: TP
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]
    acked: bool = False

    @property
    def topic(self) -> str:
        return self.tp.topic

    @property
    def partition(self) -> int:
        return self.tp.partition


class _Batch:
    """aiokafka's record batch builder: takes records until it is full."""

    SIZE = 256  # records: small, so the producer's batch-is-full path runs too

    def __init__(self) -> None:
        self.records: list[tuple[bytes | None, bytes | None, Any]] = []

    def append(self, *, key: Any, value: Any, timestamp: Any, headers: Any) -> object | None:
        if len(self.records) >= self.SIZE:
            return None
        self.records.append((key, value, headers))
        return object()


class _Producer:
    """The aiokafka producer under BatchProducer: batches land on the log at once."""

    def __init__(self, log: Log):
        self.log = log

    def _ensure_producer(self) -> _Producer:
        return self

    async def partitions_for(self, topic: str) -> set[int]:
        return set(range(self.log.count(topic)))

    def create_batch(self) -> _Batch:
        return _Batch()

    async def send_batch(self, batch: _Batch, topic: str, partition: int) -> asyncio.Future[None]:
        for key, value, headers in batch.records:
            self.log.append(topic, partition, key, value, headers)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


class _Consumer:
    """Faust's consumer as the stages read it: assignment, offsets, positions, log ends."""

    def __init__(self, log: Log, assignment: set[TP], committed: dict[TP, int]):
        self.log = log
        self._assignment = assignment
        self._committed_offset = committed  # the group's, kept across crashes
        self.positions = {tp: committed.get(tp, 0) for tp in assignment}
        self.handed_over: dict[TP, int] = {}  # the last offset handed to a stage
        self._unacked_messages: set[_Message] = set()
        self.acked: dict[TP, int] = {}  # the next offset after the last one acknowledged

    def assignment(self) -> set[TP]:
        return set(self._assignment)

    async def earliest_offsets(self, *tps: TP) -> dict[TP, int]:
        return dict.fromkeys(tps, 0)

    async def _commit(self, offsets: dict[TP, int]) -> bool:
        self._committed_offset.update(offsets)
        return True

    async def seek(self, tp: TP, offset: int) -> None:
        self.positions[tp] = offset
        self.handed_over.pop(tp, None)

    async def position(self, tp: TP) -> int:
        return self.positions[tp]

    async def highwaters(self, *tps: TP) -> dict[TP, int]:
        return {tp: self.log.end(tp) for tp in tps}

    def highwater(self, tp: TP) -> int:
        return self.log.end(tp)


@dataclass
class _ChangelogTopic:
    name: str

    def get_topic_name(self) -> str:
        return self.name


@dataclass
class _Table:
    """A Faust table as the stages use it: `.data` and the changelog topic's name."""

    changelog_topic: _ChangelogTopic
    raw_keys: bool
    raw_values: bool
    data: dict[Any, Any] = field(default_factory=dict)

    def recover(self, log: Log) -> None:
        """Fill `data` from the changelog, as Faust's recovery does: last value per key."""
        for partition in log.topic(self.changelog_topic.name):
            for record in partition:
                key = record.key if self.raw_keys else orjson.loads(record.key or b"null")
                if record.value is None:
                    self.data.pop(key, None)
                else:
                    self.data[key] = record.value if self.raw_values else orjson.loads(record.value)


class _App:
    """What the stages read on `app`, for one run of the worker (one generation)."""

    def __init__(self, settings: Settings, log: Log, consumer: _Consumer, generation: int):
        self.settings = settings
        self.log = log
        self.consumer = consumer
        self.consumer_generation_id = generation
        self.rebalancing = False
        self.producer = _Producer(log)
        self.tables: dict[str, _Table] = {}

    def Table(  # noqa: N802 - Faust's name
        self, name: str, *, key_type: Any = None, value_type: Any = None, partitions: Any = None
    ) -> _Table:
        table = _Table(
            _ChangelogTopic(f"{self.settings.app_id}-{name}-changelog"),
            raw_keys=key_type is bytes,
            raw_values=value_type is bytes,
        )
        table.recover(self.log)
        self.tables[name] = table
        return table


# --- the harness ----------------------------------------------------------------------------


@dataclass
class _StageRun:
    """One stage as the worker runs it: its input topics and its batch function."""

    name: str
    topics: list[str]
    process: Callable[[list[Any]], Awaitable[None]]
    cursor: int = 0  # where the next batch's round-robin over partitions begins


class Pipeline:
    """The worker's stages on an in-memory log, driven batch by batch (see the module doc)."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        batch_size: int = 5000,
        run_length: int = 500,
        commit_every: int = 1,
        wall: datetime = WALL_START,
        wall_per_batch: timedelta = timedelta(0),
    ):
        self.settings = settings or Settings(topic_partitions=4, clickhouse_enabled=False)
        self.names = TopicNames.from_settings(self.settings)
        self.log = Log(self.settings, self.names)
        self.batch_size = batch_size
        self.run_length = run_length
        self.commit_every = commit_every
        self.wall = wall
        self.wall_per_batch = wall_per_batch
        self.committed: dict[TP, int] = {}
        # The offset after the last record ever handed to a stage, per partition (kept across
        # crashes), and how many records were handed over again after a crash.
        self._delivered: dict[TP, int] = {}
        self.redelivered = 0
        self.generation = 0
        self.batches = 0  # batches since the last (re)start
        self.crashes = 0
        self._next_second = wall + timedelta(seconds=1)
        self._start()

    # --- the worker's life ----------------------------------------------------------------

    def _start(self) -> None:
        self.generation += 1
        self.batches = 0
        self._audited = False
        inputs = [
            *self.names.sources.values(),
            self.names.normalized,
            self.names.placements,
            self.names.decisions,
            self.names.anomaly_index,
            self.names.breaker,
        ]
        assignment = {TP(t, p) for t in inputs for p in range(self.log.count(t))}
        self.consumer = _Consumer(self.log, assignment, self.committed)
        self.app = _App(self.settings, self.log, self.consumer, self.generation)
        self.stages: Stages = build_stages(self.app, self.settings, None, PHONES)
        for stage in self.stages.all():
            stage.wall_clock = self.clock
        names = self.names
        decisions = self.stages.decisions
        self._runs = [
            _StageRun("ingest", list(names.sources.values()), self.stages.ingest.run_batch),
            _StageRun("orders", [names.normalized], self.stages.orders.run_batch),
            _StageRun("dedupe", [names.placements], self.stages.dedupe.run_batch),
            _StageRun(
                "decisions",
                [names.decisions],
                lambda batch: route_decisions(decisions.producer, names, batch),
            ),
            _StageRun("anomaly-index", [names.anomaly_index], decisions.run_batch),
            _StageRun("breaker", [names.breaker], self.stages.breaker.run_batch),
        ]

    def clock(self) -> datetime:
        """The wall clock every stage reads."""
        return self.wall

    def crash(self) -> None:
        """SIGKILL and restart: every in-memory state is gone; the tables come back from
        their changelogs as written so far, and reading resumes at the committed offsets."""
        self.crashes += 1
        self._start()

    async def commit(self) -> None:
        """The worker's offset commit: the before-commit hook, then every acked offset."""
        await self.stages.orders.before_commit()
        self.committed.update(self.consumer.acked)

    # --- input ----------------------------------------------------------------------------

    def publish(self, events: Iterable[dict[str, Any] | tuple[str, bytes | None, bytes]]) -> int:
        """Append change events (dicts, published on their source's topic keyed by their
        `order_ref`) or raw (topic, key, value) records, as a Kafka client partitions them."""
        n = 0
        for event in events:
            if isinstance(event, dict):
                topic = self.names.sources[Source(event["source"])]
                key: bytes | None = str(event.get("order_ref", "")).encode()
                value = orjson.dumps(event)
            else:
                topic, key, value = event
            count = self.log.count(topic)
            partition = n % count if key is None else (murmur2(key) & 0x7FFFFFFF) % count
            self.log.append(topic, partition, key, value, None)
            n += 1
        return n

    def publish_normalized(self, events: Iterable[dict[str, Any]]) -> None:
        """Change events as ingest forwards them (each with its `order_id`), straight onto
        `concord.normalized`: one envelope per event, on its order's partition."""
        topic = self.names.normalized
        count = self.log.count(topic)
        for event in events:
            partition = (murmur2(event["order_id"].encode()) & 0x7FFFFFFF) % count
            self.log.append(topic, partition, None, envelope([orjson.dumps(event)]), None)

    def publish_watermark(self, at: datetime, origin: str = "harness") -> None:
        """An event-time mark as ingest sends it, on every partition of `concord.normalized`."""
        topic = self.names.normalized
        value = orjson.dumps({"watermark_us": as_us(at), "origin": origin})
        for partition in range(self.log.count(topic)):
            self.log.append(topic, partition, None, value, None)

    # --- running --------------------------------------------------------------------------

    def run(self, *, crash_every: int | None = None) -> int:
        """Every stage, batch by batch in turn, until no input is left; the batch count.
        With `crash_every`, the worker crashes after every that many batches since its start
        (commit_every must be at most crash_every, or it never gets anywhere)."""
        return asyncio.run(self._run(crash_every))

    async def _run(self, crash_every: int | None) -> int:
        if crash_every is not None and self.commit_every > crash_every:
            raise ValueError("commit_every > crash_every: nothing would ever be committed")
        total = 0
        if not self._audited:
            await self._audit()
        while True:
            progressed = False
            for stage in self._runs:
                batch = self._take(stage)
                if not batch:
                    continue
                progressed = True
                total += 1
                await self._process(stage, batch)
                if crash_every is not None and self.batches % crash_every == 0:
                    self.crash()
                    break  # the new worker starts again from the first stage
            if not progressed:
                return total

    async def _process(self, stage: _StageRun, batch: list[_Message]) -> None:
        consumer = self.consumer
        consumer._unacked_messages.update(batch)
        await stage.process(batch)
        for msg in batch:
            consumer._unacked_messages.discard(msg)
            if not msg.acked:  # held back by offset continuity: not acknowledged
                msg.acked = True
                consumer.acked[msg.tp] = max(consumer.acked.get(msg.tp, 0), msg.offset + 1)
        self.batches += 1
        if self.batches % self.commit_every == 0:
            await self.commit()
        if self.wall_per_batch:
            await self._move_wall(self.wall + self.wall_per_batch)

    def _take(self, stage: _StageRun) -> list[_Message]:
        # Round-robin over the stage's partitions, a run of up to run_length from each.
        consumer = self.consumer
        tps = [TP(t, p) for t in stage.topics for p in range(self.log.count(t))]
        batch: list[_Message] = []
        progressed = True
        while len(batch) < self.batch_size and progressed:
            progressed = False
            for i in range(len(tps)):
                tp = tps[(stage.cursor + i) % len(tps)]
                start = consumer.positions[tp]
                want = min(self.run_length, self.batch_size - len(batch))
                records = self.log.topic(tp.topic)[tp.partition][start : start + want]
                if not records:
                    continue
                progressed = True
                batch += [_Message(tp, r.offset, r.key, r.value, r.headers) for r in records]
                end = start + len(records)
                self.redelivered += max(0, min(end, self._delivered.get(tp, 0)) - start)
                self._delivered[tp] = max(end, self._delivered.get(tp, 0))
                consumer.positions[tp] = start + len(records)
                consumer.handed_over[tp] = start + len(records) - 1
                if len(batch) >= self.batch_size:
                    stage.cursor = (stage.cursor + i + 1) % len(tps)
                    break
        return batch

    def advance_wall(self, seconds: float) -> None:
        """Move the wall clock, running the worker's timers at each whole second passed (and
        the stages on what they produce)."""
        self.advance_wall_to(self.wall + timedelta(seconds=seconds))

    def advance_wall_to(self, moment: datetime) -> None:
        """`advance_wall` up to `moment` (never back)."""
        asyncio.run(self._move_wall(moment, drain=True))

    async def _move_wall(self, to: datetime, *, drain: bool = False) -> None:
        if to < self.wall:
            raise ValueError(f"the wall clock does not go back ({to} < {self.wall})")
        while self._next_second <= to:
            self.wall = self._next_second
            self._next_second += timedelta(seconds=1)
            await self._tick()
            if drain:
                await self._run(None)
        self.wall = to

    async def _audit(self) -> None:
        # The offset audit (a 2-second timer in the worker): it gives every assigned
        # partition its starting offset, so an empty one is known to have no backlog.
        self._audited = True
        for stage in self.stages.all():
            await stage.audit_positions()

    async def _tick(self) -> None:
        # The worker's timers (streams/app.py): event time every second, the offset audit
        # every 2 s, eviction and expired dedupe windows every 300 s. The first audit runs
        # before the first batch of each start.
        second = int(self.wall.timestamp())
        if second % 2 == 0:
            await self._audit()
        await self.stages.ingest.tick()
        await self.stages.orders.tick()
        if second % 300 == 0:
            await self.stages.orders.evict()
            await self.stages.dedupe.expire_windows()

    # --- output ---------------------------------------------------------------------------

    def records(self, topic: str) -> list[Record]:
        """Every record produced on `topic` (repeats after a crash included), in order."""
        return [r for r in self.log.produced if r.topic == topic]

    def anomalies(self) -> list[dict[str, Any]]:
        """Every anomaly lifecycle event on concord.anomalies, in the order produced."""
        return [r.json() for r in self.records(self.names.anomalies)]

    def commands(self) -> list[dict[str, Any]]:
        """Every command on concord.commands, in the order produced."""
        return [r.json() for r in self.records(self.names.commands)]

    def outputs(self) -> Outputs:
        """The anomalies and commands published so far, reduced (tests/outputs.py)."""
        return Outputs.reduce(self.anomalies(), self.commands())


def batches(values: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    """`values` in consecutive slices of `size`."""
    it = iter(values)
    while chunk := list(itertools.islice(it, size)):
        yield chunk
