"""The one change Concord makes inside Faust: an eager first step in the consumer's drain loop.

Faust's `Consumer._drain_messages` hands every fetched message to the conductor with
`wait_first(callback(message), suspend_flow.wait())`: four asyncio tasks made and three
cancelled per message, ~29% of a worker's CPU in profiles. `wait_first` is there so a
rebalance (flow suspended) can interrupt a callback blocked on a full stream buffer.

Here the callback's coroutine is first stepped inline. In the common case it finishes in
that step (flow not suspended, buffer not full: decode + put_nowait) and no task is made.
If it suspends, the half-run coroutine continues under exactly the `wait_first` Faust uses,
so a rebalance interrupts it as before. The method body is Faust 0.15.3's with that one
call changed; `FASTPATH_FAUST_VERSION` guards against running it under another release.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Generator
from typing import Any, cast

import faust
from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers import aiokafka as faust_aiokafka

FASTPATH_FAUST_VERSION = "0.15.3"


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


class FastpathConsumer(faust_aiokafka.Consumer):
    """Faust's aiokafka consumer with the eager first step in `_drain_messages`."""

    async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover - Faust's loop
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
                            self.log.dev(
                                "DROPPED MESSAGE ROFF %r: k=%r v=%r",
                                offset,
                                message.key,
                                message.value,
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


class FastpathTransport(faust_aiokafka.Transport):
    """Faust's aiokafka transport, consuming with FastpathConsumer."""

    Consumer = FastpathConsumer


def install(app: faust.App) -> None:
    """Make `app` consume through the fast path (before it starts)."""
    if faust.__version__ != FASTPATH_FAUST_VERSION:
        raise RuntimeError(
            f"streams.fastpath copies Faust {FASTPATH_FAUST_VERSION}'s drain loop; "
            f"found Faust {faust.__version__}: re-check the copy before upgrading"
        )
    app.transport = FastpathTransport(app.conf.broker_consumer, app)
