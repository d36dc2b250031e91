"""Concord's consumer (streams.faust_consumer) without a broker: the before-commit hook and
the stages' record inboxes."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any
from weakref import WeakSet

import faust
import pytest
from faust.transport import consumer as faust_consumer_base
from faust.types import TP, Message

from streams import faust_consumer


def consumer_with(*callbacks: Any) -> Any:
    app = faust.App("t-before-commit", broker="kafka://127.0.0.1:1")
    faust_consumer.install(app, inboxes=[], before_commit=callbacks)
    consumer_cls = app.transport.Consumer
    assert consumer_cls.before_commit == callbacks
    return object.__new__(consumer_cls)  # only _commit_offsets is exercised


async def test_callbacks_run_before_faust_commits(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Any] = []

    async def faust_commit(self: Any, offsets: Mapping[TP, int], **kwargs: Any) -> bool:
        calls.append(("commit", dict(offsets)))
        return True

    async def flush_a() -> None:
        calls.append("a")

    async def flush_b() -> None:
        calls.append("b")

    monkeypatch.setattr(faust_consumer_base.Consumer, "_commit_offsets", faust_commit)
    consumer = consumer_with(flush_a, flush_b)
    tp = TP("t", 0)
    assert await consumer._commit_offsets({tp: 5}) is True
    assert calls == ["a", "b", ("commit", {tp: 5})]


async def test_a_failing_callback_stops_the_commit(monkeypatch: pytest.MonkeyPatch) -> None:
    committed: list[Any] = []

    async def faust_commit(self: Any, offsets: Mapping[TP, int], **kwargs: Any) -> bool:
        committed.append(offsets)
        return True

    async def broken() -> None:
        raise OSError("disk full")

    monkeypatch.setattr(faust_consumer_base.Consumer, "_commit_offsets", faust_commit)
    with pytest.raises(OSError, match="disk full"):
        await consumer_with(broken)._commit_offsets({TP("t", 0): 5})
    assert committed == []


def test_no_callbacks_by_default() -> None:
    app = faust.App("t-before-commit-default", broker="kafka://127.0.0.1:1")
    faust_consumer.install(app, inboxes=[])
    assert app.transport.Consumer.before_commit == ()


def test_each_stage_topic_is_delivered_to_its_inbox_and_cleared_with_the_streams() -> None:
    app = faust.App("t-inboxes", broker="kafka://127.0.0.1:1")
    ingest = faust_consumer.RecordInbox("ingest", ["erp", "crm"], limit=10)
    orders = faust_consumer.RecordInbox("orders", ["normalized"], limit=10)
    faust_consumer.install(app, inboxes=[ingest, orders])
    assert app.transport.Consumer.inboxes == {"erp": ingest, "crm": ingest, "normalized": orders}
    ingest.put_nowait(["m1", "m2"])  # type: ignore[list-item]
    app.flow_control.suspend()  # a rebalance or a stop: flow suspended, buffers cleared
    app.flow_control.clear()
    assert ingest.size == 0


async def test_an_inbox_keeps_its_runs_when_flow_resumes_after_the_seek() -> None:
    # Faust's recovery seeks to the committed offsets, then resumes flow, which clears the
    # queues it manages: runs fetched in between are the assignment's and are not refetched.
    app = faust.App("t-inbox-resume", broker="kafka://127.0.0.1:1")
    inbox = faust_consumer.RecordInbox("ingest", ["erp"], limit=10)
    faust_consumer.install(app, inboxes=[inbox])
    app.flow_control.resume()
    inbox.put_nowait(["m1", "m2"])  # type: ignore[list-item]
    app.flow_control.resume()  # the end of recovery
    assert inbox.size == 2
    assert await asyncio.wait_for(inbox.take(2, within=0.0), 1.0) == ["m1", "m2"]


async def test_an_inbox_batches_whole_runs_in_order() -> None:
    inbox = faust_consumer.RecordInbox("s", ["t"], limit=100)
    inbox.put_nowait([1, 2, 3])  # type: ignore[list-item]
    inbox.put_nowait([4, 5])  # type: ignore[list-item]
    inbox.put_nowait([6])  # type: ignore[list-item]
    # Runs are never split: the batch reaches its size with the run that crosses it.
    assert await inbox.take(4, within=5.0) == [1, 2, 3, 4, 5]
    assert inbox.size == 1
    # Fewer than the size: what came within the wait.
    assert await inbox.take(4, within=0.01) == [6]
    assert inbox.size == 0


async def test_an_inbox_waits_for_its_first_run_then_lingers_for_more() -> None:
    inbox = faust_consumer.RecordInbox("s", ["t"], limit=100)
    taking = asyncio.ensure_future(inbox.take(3, within=5.0))
    await asyncio.sleep(0.01)
    assert not taking.done()  # nothing yet
    inbox.put_nowait([1])  # type: ignore[list-item]
    await asyncio.sleep(0.01)
    assert not taking.done()  # lingering for the rest of the batch
    inbox.put_nowait([2, 3])  # type: ignore[list-item]
    assert await asyncio.wait_for(taking, 1.0) == [1, 2, 3]


async def test_a_full_inbox_resumes_its_paused_partitions_once_the_stage_takes() -> None:
    inbox = faust_consumer.RecordInbox("s", ["t"], limit=4)
    resumed: list[TP] = []
    inbox.put_nowait([1, 2, 3])  # type: ignore[list-item]
    inbox.put_nowait([4, 5])  # type: ignore[list-item]
    inbox.put_nowait([6, 7])  # type: ignore[list-item]
    assert inbox.full
    inbox.pause(TP("t", 0), resumed.append)  # what the drain loop does on a full inbox
    inbox.pause(TP("t", 1), resumed.append)
    assert await inbox.take(2, within=0.0) == [1, 2, 3]
    assert resumed == []  # still full (4 records left)
    assert await inbox.take(2, within=0.0) == [4, 5]
    assert resumed == [TP("t", 0), TP("t", 1)]
    assert await inbox.take(2, within=0.0) == [6, 7]
    assert resumed == [TP("t", 0), TP("t", 1)]  # once each


async def test_a_cleared_inbox_forgets_its_paused_partitions() -> None:
    inbox = faust_consumer.RecordInbox("s", ["t"], limit=1)
    resumed: list[TP] = []
    inbox.put_nowait([1])  # type: ignore[list-item]
    inbox.pause(TP("t", 0), resumed.append)
    inbox.clear()  # a rebalance: the new assignment fetches every partition again
    inbox.put_nowait([2])  # type: ignore[list-item]
    assert await inbox.take(1, within=0.0) == [2]
    assert resumed == []


def _bare_consumer(acks_off: set[str]) -> Any:
    consumer = consumer_with()
    consumer.app = SimpleNamespace(
        topics=SimpleNamespace(acks_enabled_for=lambda topic: topic not in acks_off)
    )
    consumer._acked = defaultdict(list)
    consumer._acked_index = defaultdict(set)
    consumer._committed_offset = defaultdict(lambda: None)
    consumer._committed_offset[TP("in", 1)] = 10
    consumer._unacked_messages = WeakSet()
    consumer._n_acked = 0
    consumer._waiting_for_ack = None
    return consumer


def _messages() -> list[Message]:
    made = []
    for topic, partition, offset in [
        ("in", 0, 3),
        ("in", 0, 4),
        ("in", 0, 4),
        ("in", 1, 9),
        ("in", 1, 10),
        ("in", 1, 12),
        ("quiet", 0, 1),
        ("in", 0, 5),
    ]:
        made.append(Message(topic, partition, offset, 0.0, 0, None, None, b"v", None))
    made[-1].acked = True  # held back by the stage: already marked
    return made


async def test_acking_a_batch_keeps_fausts_books_as_acking_each_message() -> None:
    each, batch = _bare_consumer({"quiet"}), _bare_consumer({"quiet"})
    one_by_one, together = _messages(), _messages()
    for consumer, messages in ((each, one_by_one), (batch, together)):
        consumer._unacked_messages.update(messages)
    waiting = batch._waiting_for_ack = asyncio.get_running_loop().create_future()
    for message in one_by_one:
        faust_consumer_base.Consumer.ack(each, message)
    batch.ack_all(together)
    assert dict(batch._acked) == dict(each._acked) == {TP("in", 0): [3, 4], TP("in", 1): [10, 12]}
    assert dict(batch._acked_index) == dict(each._acked_index)
    assert batch._n_acked == each._n_acked == 4
    assert [m.acked for m in together] == [m.acked for m in one_by_one] == [True] * 8
    assert {(m.tp, m.offset) for m in batch._unacked_messages} == {
        (m.tp, m.offset) for m in each._unacked_messages
    }
    assert waiting.done()  # a commit waiting for acks is woken
