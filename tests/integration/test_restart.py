"""SIGKILL the worker mid-stream, restart it, and audit every event id."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
import pytest

from sinks.metrics import metric_samples
from tests.feeds import build_feed
from tests.integration.harness import (
    SETTLED_EVENT_TIME,
    assert_exactly,
    committed_offsets,
    event_time_reached,
    metric_total,
    normalized_events,
    produce,
    published_outputs,
    read_all,
    read_to_end,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _sources(prefix: str) -> list[str]:
    return [f"{prefix}.{source}.events" for source in ("erp", "crm", "wms", "logistics")]


def _first_copies(records: list[Any]) -> dict[tuple[str, str], tuple[tuple[str, int], int]]:
    """(source, event_id) -> (topic, partition) and offset of the event's first copy on its
    source topic (bad inputs left out)."""
    first: dict[tuple[str, str], tuple[tuple[str, int], int]] = {}
    for rec in sorted(records, key=lambda r: r.offset):
        try:
            body = orjson.loads(rec.value)
            key = (body["source"], body["event_id"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            continue
        first.setdefault(key, ((rec.topic, rec.partition), rec.offset))
    return first


def _forwarded_uncommitted(bootstrap: str, prefix: str) -> tuple[set[tuple[str, str]], int, int]:
    """The events on concord.normalized whose source record is at or past the group's
    committed offset (processed, not committed), how many have been forwarded, and how
    many source records the group has committed."""
    first = _first_copies(asyncio.run(read_to_end(bootstrap, _sources(prefix))))
    committed = asyncio.run(committed_offsets(bootstrap, prefix, _sources(prefix)))
    forwarded = normalized_events(asyncio.run(read_to_end(bootstrap, [f"{prefix}.normalized"])))
    keys = {(body["source"], body["event_id"]) for _, body in forwarded}
    return {k for k in keys if k in first and first[k][1] >= committed.get(first[k][0], 0)}


def test_sigkill_mid_stream_loses_nothing(broker, spawn, prefix, workers):
    bootstrap = f"127.0.0.1:{broker.port}"
    feed = build_feed(prefix, orders=3000)
    first = spawn(**SETTLED_EVENT_TIME)

    publisher = threading.Thread(target=lambda: asyncio.run(produce(bootstrap, feed.records)))
    publisher.start()

    # Kill once part of the stream is through and committed, while the rest is still
    # arriving, at a moment the worker has forwarded events it has not committed yet.
    # (Anomalies are raised once event time reaches them, so how many are out by then
    # depends on the schedule; the restart must carry on whatever was.)
    # (Read cheaply: more events forwarded than source records committed means some were
    # processed past the committed offsets; exactly which is read after the kill.)
    def interrupted() -> bool:
        normalized = asyncio.run(read_to_end(bootstrap, [f"{prefix}.normalized"]))
        forwarded = len(normalized_events(normalized))
        committed = sum(
            asyncio.run(committed_offsets(bootstrap, prefix, _sources(prefix))).values()
        )
        return forwarded >= 3000 and 0 < committed < forwarded

    wait_until("forwarded events not committed yet", interrupted, workers=[first])
    killed_at = datetime.now(UTC)
    first.kill()
    sent_before = len(asyncio.run(read_to_end(bootstrap, _sources(prefix))))  # about
    publisher.join()
    assert first.process.returncode != 0  # it was killed, not stopped

    # Where the group's offsets stand now is where the next worker resumes: the events the
    # killed worker forwarded past there were processed and not committed.
    uncommitted = _forwarded_uncommitted(bootstrap, prefix)
    raised_before = asyncio.run(published_outputs(bootstrap, prefix)).final
    assert uncommitted, "the kill interrupted nothing: every forwarded event was committed"
    committed = asyncio.run(committed_offsets(bootstrap, prefix, _sources(prefix)))
    source_records = asyncio.run(read_to_end(bootstrap, _sources(prefix)))
    redelivered = sum(r.offset >= committed.get((r.topic, r.partition), 0) for r in source_records)

    second = spawn(**SETTLED_EVENT_TIME)
    topics = [f"{prefix}.normalized", f"{prefix}.deadletter"]

    def complete(records) -> bool:
        ids = {
            (b["source"], b["event_id"])
            for _, b in normalized_events([r for r in records if r.topic == topics[0]])
        }
        return ids >= set(feed.expected)

    asyncio.run(read_all(bootstrap, topics, until=complete, within=120))
    # The restarted worker was handed every source record from the committed offsets on,
    # the interrupted ones among them, each once.
    wait_until(
        f"the restarted worker takes the {redelivered} records past the committed offsets",
        lambda: metric_total(second, "concord_events_total") >= redelivered,
        workers=[second],
    )
    time.sleep(2.0)
    records = asyncio.run(read_all(bootstrap, topics))
    assert metric_total(second, "concord_events_total") == redelivered

    seen: dict[tuple[str, str], list[dict]] = {}
    dead_offsets: dict[tuple[str, int, int], str] = {}
    for _, body in normalized_events([r for r in records if r.topic == topics[0]]):
        seen.setdefault((body["source"], body["event_id"]), []).append(body)
    for rec in records:
        if rec.topic != topics[0]:
            body = orjson.loads(rec.value)
            dead_offsets[(body["topic"], body["partition"], body["offset"])] = body["reason"]

    # Nothing lost: every valid event reached its order, with the right owner.
    assert set(seen) == set(feed.expected)
    assert {k: v[0]["order_id"] for k, v in seen.items()} == feed.expected
    # Nothing doubled in effect: an event repeats only when the killed worker had forwarded
    # it without committing its offset; the copy is the same event for the same order (the
    # per-order stage drops it on source+event_id), and no event repeats twice.
    doubled = {k: v for k, v in seen.items() if len(v) > 1}
    for copies in doubled.values():
        assert len(copies) == 2
        assert len({(c["order_id"], c["status"], c["occurred_at"]) for c in copies}) == 1
        assert min(datetime.fromisoformat(c["received_at"]) for c in copies) <= killed_at
    # Every bad input dead-lettered, each exactly once by its source offset.
    reasons: dict[str, int] = {}
    for reason in dead_offsets.values():
        reasons[reason] = reasons.get(reason, 0) + 1
    assert reasons == feed.deadletters

    # The anomalies: exactly those the feed plants, as an uninterrupted run raises them once
    # event time has reached the feed's end; each opened once and still open (none raised
    # and resolved), any repeat identical; no command.
    watermark = feed.settled_watermark()
    reached = event_time_reached(second, watermark)
    outputs = asyncio.run(published_outputs(bootstrap, prefix))
    assert_exactly(outputs, feed.anomalies_at(reached or watermark))
    assert reached == watermark, "event time stopped short of the feed's end"
    print(
        f"\nrestart audit: {len(seen)} events, {len(uncommitted)} forwarded and not committed "
        f"at the kill, {redelivered} records redelivered, {len(doubled)} events re-sent, "
        f"{len(raised_before)} anomalies raised before the kill, {outputs.repeats} repeated, "
        f"{sent_before} of {len(feed.records)} records published at the kill"
    )


def test_restarted_worker_remembers_every_reference(broker, spawn, prefix):
    """After a restart, a re-send of every event is recognised: state recovery is complete.

    On tansu this holds only with the changelog end markers (streams/tansu.py): without them
    recovery stops short of the last batch and the re-sends pass as new events.
    """
    bootstrap = f"127.0.0.1:{broker.port}"
    feed = build_feed(prefix, orders=400)
    normalized = f"{prefix}.normalized"
    first = spawn()
    asyncio.run(produce(bootstrap, feed.records))
    asyncio.run(
        read_all(
            bootstrap,
            [normalized],
            until=lambda rs: len(normalized_events(rs)) >= len(feed.expected),
        )
    )
    assert first.stop() == 0

    second = spawn()
    asyncio.run(produce(bootstrap, feed.records))
    dead_before = sum(feed.deadletters.values())
    # Every rejected record is rejected again, each time it comes; an ERP event whose order
    # details never came is held again and set aside once event time is past its wait, which
    # a re-sent past event may or may not meet again (README, "Dead letters").
    rejected = dead_before - feed.deadletters.get("missing_order", 0)

    def rejected_twice(records: list[Any]) -> bool:
        reasons = [orjson.loads(r.value)["reason"] for r in records]
        return sum(reason != "missing_order" for reason in reasons) >= 2 * rejected

    asyncio.run(read_all(bootstrap, [f"{prefix}.deadletter"], until=rejected_twice))
    # Every valid record comes round again (a few of the first pass may be read twice when
    # the stopping worker's last commit did not land) and is recognised as a re-send.
    resent = len(feed.records) - dead_before

    def recognised() -> float:
        metrics = httpx.get(second.url("/metrics")).text
        return sum(
            n
            for labels, n in metric_samples(metrics, "concord_events_total").items()
            if ("outcome", "duplicate") in labels
        )

    deadline = time.monotonic() + 60
    while recognised() < resent and time.monotonic() < deadline:
        time.sleep(0.5)
    assert recognised() >= resent
    records = normalized_events(asyncio.run(read_all(bootstrap, [normalized])))
    assert len(records) == len(feed.expected), "a re-send after restart passed as new"
