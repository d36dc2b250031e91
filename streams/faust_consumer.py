"""Concord's Kafka consumer: Faust's aiokafka consumer with three changes, kept in this one place.

1. A fix: Faust 0.15.3 can commit past an offset no stream ever acknowledged. Its
   `Consumer._new_offset` refuses to commit across a gap at the head of the acked offsets
   only when `min(acked) - committed > 1`; but a committed offset is the *next* offset to
   read, so with `min(acked) == committed + 1` the message at `committed` is skipped for
   good. It happens around rebalances (a message dropped from the stream buffer while later
   ones are acked) and lost one event in some SIGKILL-restart runs here. Corrected below
   to `min(acked) > committed`.

2. Bulk delivery to the stages. Faust hands each fetched message to its conductor, which
makes an Event per message and queues it for the agent's stream; the stream then acks each
one. In profiles that per-message path (drain loop, conductor, stream iteration, take_events,
acks) cost more than the ingest rules themselves. Here each stage's topics have a
`RecordInbox`: the drain loop puts every partition's fetched run of records there whole,
and `serve` hands the stage batches of them and acks each batch once processed. The flow
and generation checks and the rebalance protocol are Faust's: a run is delivered only while
flow is active, an inbox is cleared with the stream buffers (`app.flow_control`), and every
delivered message is pending in `_unacked_messages` until acked, so a rebalance waits for
the batch in progress (`wait_empty`). Records of other topics (table changelogs) go through
Faust's conductor as before, each first stepped inline rather than under `wait_first`'s
four tasks per message.

3. A setting: `fetch_max_wait_ms` (None keeps Faust's 1500 ms). Faust hard-codes how long
a fetch may wait on the broker for data; a broker that holds every empty fetch that long
(tansu does, see streams/tansu.py) adds up to that much to every hop. Set only there.

4. A hook: `before_commit` callbacks (given to `install`) are awaited right before offsets
are committed, after Faust has decided which offsets are committable and before it flushes
the producer and writes them. A sink that buffers rows of processed events (the ClickHouse
warehouse) stores them there, so an offset is never committed ahead of its rows. A callback
that raises stops the worker (the uncommitted events are processed again after a restart).

The copied method bodies (`_new_offset`, and the drain loop with `getmany`'s checks) are
Faust 0.15.3's; `FAUST_VERSION` guards against running them under another release.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Generator, Iterable, Mapping, Sequence
from typing import Any, cast

import faust
from faust.transport.consumer import CONSUMER_FETCHING, ensure_TP
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP, Message
from faust.types.tuples import ack_lock
from faust.utils.functional import consecutive_numbers
from mode.utils.futures import notify
from mode.utils.queues import FlowControlEvent

FAUST_VERSION = "0.15.3"

BeforeCommit = Callable[[], Awaitable[None]]
ProcessBatch = Callable[[list[Message]], Awaitable[None]]

log = logging.getLogger(__name__)


class RecordInbox:
    """A stage's fetched records, as runs per partition, waiting for the stage.

    Holds about `limit` records (a run is never split). A partition whose run finds it full
    is paused (no more fetches for it, as Faust pauses a partition whose stream buffer is
    full) and resumed once the stage has taken records, so one busy stage never holds up
    the delivery to the others. Faust's flow control clears it on a rebalance, with the
    streams' buffers.
    """

    def __init__(self, name: str, topics: Iterable[str], limit: int):
        self.name = name
        self.topics = frozenset(topics)
        self.limit = limit
        self.size = 0
        self._runs: deque[list[Message]] = deque()
        self._changed = asyncio.Event()
        self._paused: dict[TP, Callable[[TP], None]] = {}
        self.flow_control: FlowControlEvent | None = None  # the app's, set by `install`

    @property
    def full(self) -> bool:
        """Whether the partitions delivering to it are paused until the stage takes records."""
        return self.size >= self.limit

    def clear(self) -> None:
        """Drop every waiting run, as Faust's flow control clears the stream buffers on a
        rebalance or a stop (flow suspended): they are fetched again after the seek. Paused
        partitions are forgotten, not resumed: the new assignment fetches from all.

        A clear while flow is active keeps the runs. Faust clears its queues when it resumes
        flow too, at the end of table recovery, *after* seeking to the committed offsets:
        what was fetched since belongs to the current assignment and no seek would fetch it
        again (dropping it stalled those partitions for good in a restart under load)."""
        if self.flow_control is not None and self.flow_control.is_active():
            return
        self._runs.clear()
        self._paused.clear()
        self.size = 0
        self._changed.set()

    def pause(self, tp: TP, resume: Callable[[TP], None]) -> None:
        """Note that `tp` is paused while the inbox is full; `resume(tp)` once it is not."""
        self._paused[tp] = resume

    def put_nowait(self, messages: list[Message]) -> None:
        """Add one partition's run of messages, in offset order."""
        self._runs.append(messages)
        self.size += len(messages)
        self._changed.set()

    async def take(self, max_records: int, within: float) -> list[Message]:
        """The next batch: runs totalling `max_records` or more, or what came in `within`
        seconds of the first run."""
        while not self._runs:
            self._changed.clear()
            await self._changed.wait()
        deadline = time.monotonic() + within
        while self.size < max_records:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), left)
            except TimeoutError:
                break
        batch: list[Message] = []
        while self._runs and len(batch) < max_records:
            run = self._runs.popleft()
            self.size -= len(run)
            batch += run
        if self._paused and not self.full:
            paused, self._paused = self._paused, {}
            for tp, resume in paused.items():
                resume(tp)
        return batch


async def serve(
    app: faust.App, inbox: RecordInbox, max_records: int, within: float, process: ProcessBatch
) -> None:
    """Run a stage: its inbox's batches through `process`, each acked once processed.

    A batch that raises stops the worker: its records are not acked, so they are processed
    again after a restart (nothing is skipped to keep going).
    """
    while not app.should_stop:
        batch = await inbox.take(max_records, within)
        if not batch:
            continue
        try:
            await process(batch)
        except Exception as exc:
            log.exception("stage %s failed on a batch of %d records", inbox.name, len(batch))
            await app.crash(exc)
            return
        app.consumer.ack_all(batch)


class _Continue:
    """Awaitable that resumes a coroutine already suspended on `waiting_on` outside a task."""

    __slots__ = ("coro", "waiting_on")

    def __init__(self, coro: Coroutine[Any, Any, Any], waiting_on: Any):
        self.coro = coro
        self.waiting_on = waiting_on

    def __await__(self) -> Generator[Any, None, Any]:
        waiting_on = self.waiting_on
        while True:
            try:
                # The enclosing task waits on the same future the coroutine yielded.
                yield waiting_on
            except BaseException as exc:  # cancellation and errors belong to the coroutine
                try:
                    waiting_on = self.coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
                continue
            try:
                waiting_on = self.coro.send(None)
            except StopIteration as stop:
                return stop.value


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """Faust's consumer thread, its aiokafka consumer fetching with `fetch_max_wait_ms`."""

    fetch_max_wait_ms: int | None = None

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        if self.fetch_max_wait_ms is not None:
            consumer._fetch_max_wait_ms = self.fetch_max_wait_ms  # read when it starts
        return consumer

    async def _seek_wait(self, consumer: Any, partitions: Mapping[TP, int]) -> None:
        # Recovery's seek to the committed offsets (Faust sets `_read_offset` to them).
        for tp in partitions:
            self.consumer.handed_over.pop(tp, None)
        await super()._seek_wait(consumer, partitions)


class ConcordConsumer(faust_aiokafka.Consumer):
    """Faust's aiokafka consumer: contiguous commits, bulk delivery, a commit hook."""

    inboxes: Mapping[str, RecordInbox] = {}
    before_commit: tuple[BeforeCommit, ...] = ()
    fetch_max_wait_ms: int | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The last offset handed to a stage since the partition's latest seek. Not Faust's
        # `_read_offset`: a seek sets that to the offset to read next, so a partition seeked
        # to its committed end, with nothing more to read, looked handed over and unprocessed
        # for good (ingest then held event time back forever after a restart).
        self.handed_over: dict[TP, int] = {}

    async def seek(self, partition: TP, offset: int) -> None:
        """Faust's seek; what was handed over before it is read again."""
        self.handed_over.pop(ensure_TP(partition), None)
        await super().seek(partition, offset)

    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        # Faust's body, with the thread below.
        thread = _ConsumerThread(self, loop=self.loop, beacon=self.beacon)
        thread.fetch_max_wait_ms = self.fetch_max_wait_ms
        return thread

    async def _commit_offsets(
        self, offsets: Mapping[TP, int], start_new_transaction: bool = True
    ) -> bool:
        # Here, not earlier: `offsets` are fixed, so rows added while a callback awaits belong
        # to events a later commit covers. A callback that raises is not swallowed: Faust has
        # already dropped these acks from its list, so skipping the commit would stall every
        # later one; the worker stops instead and the uncommitted events come again.
        for callback in self.before_commit:
            await callback()
        return bool(
            await super()._commit_offsets(offsets, start_new_transaction=start_new_transaction)
        )

    def _new_offset(self, tp: TP) -> int | None:
        acked = self._acked[tp]
        if not acked:
            return None
        max_offset = max(acked)
        gap_for_tp = self._gap[tp]
        if gap_for_tp:
            # Known gaps (e.g. compacted-away offsets) count as acknowledged.
            candidates = sorted(gap_for_tp.overlap(0, max_offset), key=lambda x: x.begin)
            if candidates:
                filler: list[int] = []
                for entry in candidates:
                    filler.extend(range(entry.begin, entry.end))
                acked.extend(filler)
                gap_for_tp.chop(0, max(filler[-1], max_offset + 1))
        acked.sort()
        committed = self._committed_offset[tp]
        # `committed` is the next offset to read: anything above it unacked is a gap.
        if committed is not None and min(acked) > committed:
            return None
        batch = next(consecutive_numbers(acked))
        acked[: len(batch)] = []
        self._acked_index[tp].difference_update(batch)
        return int(batch[-1]) + 1

    def ack_all(self, messages: Iterable[Message]) -> None:
        """Acknowledge a processed batch (messages held back are already marked acked).

        Faust's `ack` for each message, under one hold of its lock and with one wake-up of
        a commit waiting for acks, rather than both per message (the body is Faust 0.15's).
        """
        acks_enabled_for = self.app.topics.acks_enabled_for
        enabled: dict[str, bool] = {}
        committed_offset = self._committed_offset
        acked_index = self._acked_index
        acked = self._acked
        unacked = self._unacked_messages
        n = 0
        with ack_lock:
            try:
                for message in messages:
                    if message.acked:
                        continue
                    message.acked = True
                    topic = message.topic
                    on = enabled.get(topic)
                    if on is None:
                        on = enabled[topic] = acks_enabled_for(topic)
                    if not on:
                        continue
                    tp, offset = message.tp, message.offset
                    committed = committed_offset[tp]
                    if committed is None or offset >= committed:
                        index = acked_index[tp]
                        if offset not in index:
                            unacked.discard(message)
                            index.add(offset)
                            acked[tp].append(offset)
                            n += 1
            finally:
                self._n_acked += n
                notify(self._waiting_for_ack)

    async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover - Faust's loop
        # Faust's loop, fed by `_wait_next_records` directly: a fetched run of records for a
        # stage's topic goes to that stage's inbox whole; records of other topics (table
        # changelogs during recovery) go to Faust's conductor one by one, as in Faust.
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        set_flag = self.diag.set_flag
        unset_flag = self.diag.unset_flag
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                set_flag(CONSUMER_FETCHING)
                records, active = await self._wait_next_records(1.0)
                await self.sleep(0)
                if records and not self.should_stop:
                    await self._deliver(records, active)
                unset_flag(CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                self.log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            unset_flag(CONSUMER_FETCHING)

    async def _deliver(self, records: Mapping[TP, list[Any]], active: set[TP] | None) -> None:
        # Faust's `getmany`, less the per-message generator: the same flow, generation and
        # active-partition checks, then a run per partition into its stage's inbox.
        if not self.flow_active:
            self.log.dev("getmany called while flow not active. Seek back to committed offsets.")
            try:
                await self.perform_seek()
            except Exception as ex:
                self.log.warning(f"exception performing seek when flow not active {ex}")
            return
        generation = self.app.consumer_generation_id
        singles: dict[TP, list[Any]] = {}
        for tp, run in records.items():
            if not self.flow_active or self.app.consumer_generation_id != generation:
                return
            if active is not None and tp not in active and tp not in self._buffered_partitions:
                continue
            inbox = self.inboxes.get(tp.topic)
            if inbox is None:
                singles[tp] = run
            elif not await self._deliver_run(inbox, tp, run):
                return
        if singles:
            await self._deliver_singly(singles, generation)

    async def _deliver_run(self, inbox: RecordInbox, tp: TP, run: list[Any]) -> bool:
        # One partition's fetched records to its inbox as one run; False when a rebalance
        # suspended the flow meanwhile (the run is dropped: it is fetched again after the
        # seek to the committed offsets, as Faust's cleared stream buffers are). A full inbox
        # takes the run and pauses the partition: the loop goes on to the other stages.
        read_offset = self._read_offset.get(tp)
        acks = self.app.topics.acks_enabled_for(tp.topic)
        to_message = self._to_message
        track = self._unacked_messages.add
        messages = []
        for record in run:
            offset = record.offset
            if read_offset is not None and offset < read_offset:
                self.log.warning(
                    "dropped %r offset %r: already read up to %r", tp, offset, read_offset
                )
                continue
            if offset - (read_offset or 0) > 1 and read_offset and acks:
                await self._add_gap(tp, read_offset + 1, offset)
            message = to_message(tp, record)
            track(message)  # pending until acked: a rebalance waits for it (wait_empty)
            messages.append(message)
            read_offset = offset
        if not messages:
            return True
        commit_every = self._commit_every
        if commit_every is not None and self._n_acked >= commit_every:
            self._n_acked = 0
            await self.commit()
        if not self.app.flow_control.is_active():
            await self.wait_first(self.app.flow_control.acquire(), self.suspend_flow.wait())
            if not self.flow_active:
                return False
        inbox.put_nowait(messages)
        self.handed_over[tp] = read_offset
        if inbox.full and not self.app.in_recovery:
            paused = ensure_TP(tp)  # Faust's own TP in its partition sets
            self.on_buffer_full(paused)  # no more fetches for it until the stage takes records
            inbox.pause(paused, self.on_buffer_drop)
        self._read_offset[tp] = read_offset
        return True

    async def _deliver_singly(self, records: Mapping[TP, list[Any]], generation: int) -> None:
        # Faust's drain step per message, with the eager first step of the callback.
        callback = self.callback
        get_read_offset = self._read_offset.__getitem__
        set_read_offset = self._read_offset.__setitem__
        acks_enabled_for = self.app.topics.acks_enabled_for
        commit_every = self._commit_every
        num_since_yield = 0
        for tp, record in self.scheduler.iterate(records):
            if not self.flow_active or self.app.consumer_generation_id != generation:
                return
            num_since_yield += 1
            if num_since_yield > 100:
                await asyncio.sleep(0)
                num_since_yield = 0
            message = self._to_message(tp, record)
            offset = message.offset
            r_offset = get_read_offset(tp)
            if r_offset is None or offset >= r_offset:
                gap = offset - (r_offset or 0)
                if gap > 1 and r_offset and acks_enabled_for(message.topic):
                    await self._add_gap(tp, r_offset + 1, offset)
                if commit_every is not None and self._n_acked >= commit_every:
                    self._n_acked = 0
                    await self.commit()
                coro = cast(Coroutine[Any, Any, Any], callback(message))
                try:
                    waiting_on = coro.send(None)
                except StopIteration:
                    pass
                else:
                    await self.wait_first(_Continue(coro, waiting_on), self.suspend_flow.wait())
                set_read_offset(tp, offset)
            else:
                self.log.warning(
                    "dropped %r offset %r: already read up to %r", tp, offset, r_offset
                )


def install(
    app: faust.App,
    *,
    inboxes: Sequence[RecordInbox],
    before_commit: Sequence[BeforeCommit] = (),
    fetch_max_wait_ms: int | None = None,
) -> None:
    """Make `app` consume with ConcordConsumer (call before it starts).

    `inboxes`: where each stage's topics are delivered in bulk (see `serve`).
    `before_commit`: coroutine functions awaited, in order, before every offset commit.
    `fetch_max_wait_ms`: the consumer's fetch wait, None for Faust's.
    """
    if faust.__version__ != FAUST_VERSION:
        raise RuntimeError(
            f"streams.faust_consumer copies parts of Faust {FAUST_VERSION}; "
            f"found Faust {faust.__version__}: re-check them before upgrading"
        )
    consumer_cls = type(
        "ConcordConsumer",
        (ConcordConsumer,),
        {
            "inboxes": {topic: inbox for inbox in inboxes for topic in inbox.topics},
            "before_commit": tuple(before_commit),
            "fetch_max_wait_ms": fetch_max_wait_ms,
        },
    )
    transport_cls = type(
        "ConcordTransport", (faust_aiokafka.Transport,), {"Consumer": consumer_cls}
    )
    app.transport = transport_cls(app.conf.broker_consumer, app)
    for inbox in inboxes:
        inbox.flow_control = app.flow_control
        app.flow_control.manage_queue(inbox)  # type: ignore[arg-type]  # cleared like streams
