"""The consumer's before-commit hook (streams.faust_consumer), without a broker."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import faust
import pytest
from faust.transport import consumer as faust_consumer_base
from faust.types import TP

from streams import faust_consumer


def consumer_with(*callbacks: Any) -> Any:
    app = faust.App("t-before-commit", broker="kafka://127.0.0.1:1")
    faust_consumer.install(app, eager_drain=True, before_commit=callbacks)
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
    faust_consumer.install(app, eager_drain=False)
    assert app.transport.Consumer.before_commit == ()
