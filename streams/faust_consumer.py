"""Concord's Kafka consumer: Faust's aiokafka consumer with three changes, kept in this one place.

1. A fix: Faust 0.15.3 can commit past an offset no stream ever acknowledged. Its
   `Consumer._new_offset` refuses to commit across a gap at the head of the acked offsets
   only when `min(acked) - committed > 1`; but a committed offset is the *next* offset to
   read, so with `min(acked) == committed + 1` the message at `committed` is skipped for
   good. It happens around rebalances (a message dropped from the stream buffer while later
   ones are acked) and lost one event in some SIGKILL-restart runs here. Corrected below
   to `min(acked) > committed`.

2. A speed-up (setting `consumer_fastpath`, on by default): an eager first step in the
   drain loop. Faust's `Consumer._drain_messages` hands every fetched message to the conductor with
`wait_first(callback(message), suspend_flow.wait())`: four asyncio tasks made and three
cancelled per message, ~29% of a worker's CPU in profiles. `wait_first` is there so a
rebalance (flow suspended) can interrupt a callback blocked on a full stream buffer.

Here the callback's coroutine is first stepped inline. In the common case it finishes in
that step (flow not suspended, buffer not full: decode + put_nowait) and no task is made.
If it suspends, the half-run coroutine continues under exactly the `wait_first` Faust uses,
so a rebalance interrupts it as before.

3. A setting: `fetch_max_wait_ms` (None keeps Faust's 1500 ms). Faust hard-codes how long
a fetch may wait on the broker for data; a broker that holds every empty fetch that long
(tansu does, see streams/tansu.py) adds up to that much to every hop. Set only there.

4. A hook: `before_commit` callbacks (given to `install`) are awaited right before offsets
are committed, after Faust has decided which offsets are committable and before it flushes
the producer and writes them. A sink that buffers rows of processed events (the ClickHouse
warehouse) stores them there, so an offset is never committed ahead of its rows. A callback
that raises stops the worker (the uncommitted events are processed again after a restart).

Both copied method bodies are Faust 0.15.3's with the one change each; `FAUST_VERSION` guards
against running them under another release.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Generator, Mapping, Sequence
from typing import Any, cast

import faust
from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP
from faust.utils.functional import consecutive_numbers

FAUST_VERSION = "0.15.3"

BeforeCommit = Callable[[], Awaitable[None]]


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


class ConcordConsumer(faust_aiokafka.Consumer):
    """Faust's aiokafka consumer, committing only contiguous acks (and optionally eager)."""

    eager_drain = True
    before_commit: tuple[BeforeCommit, ...] = ()
    fetch_max_wait_ms: int | None = None

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

    async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover - Faust's loop
        if not self.eager_drain:
            await super()._drain_messages(fetcher)
            return
        callback = self.callback
        getmany = self.getmany
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set

        get_read_offset = self._read_offset.__getitem__
        set_read_offset = self._read_offset.__setitem__
        set_flag = self.diag.set_flag
        unset_flag = self.diag.unset_flag
        commit_every = self._commit_every
        acks_enabled_for = self.app.topics.acks_enabled_for

        yield_every = 100
        num_since_yield = 0
        sleep = asyncio.sleep

        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                set_flag(CONSUMER_FETCHING)
                ait = getmany(timeout=1.0)
                await self.sleep(0)
                if not self.should_stop:
                    async for tp, message in ait:
                        num_since_yield += 1
                        if num_since_yield > yield_every:
                            await sleep(0)
                            num_since_yield = 0

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
                                await self.wait_first(
                                    _Continue(coro, waiting_on), self.suspend_flow.wait()
                                )
                            set_read_offset(tp, offset)
                        else:
                            self.log.warning(
                                "dropped %r offset %r: already read up to %r", tp, offset, r_offset
                            )
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


def install(
    app: faust.App,
    *,
    eager_drain: bool,
    before_commit: Sequence[BeforeCommit] = (),
    fetch_max_wait_ms: int | None = None,
) -> None:
    """Make `app` consume with ConcordConsumer (call before it starts).

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
            "eager_drain": eager_drain,
            "before_commit": tuple(before_commit),
            "fetch_max_wait_ms": fetch_max_wait_ms,
        },
    )
    transport_cls = type(
        "ConcordTransport", (faust_aiokafka.Transport,), {"Consumer": consumer_cls}
    )
    app.transport = transport_cls(app.conf.broker_consumer, app)
