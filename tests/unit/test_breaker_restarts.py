"""The intake breaker survives SIGKILL (issue 16, item 5): the worker's real stages in-process
(tests/stage_harness.py) on a generated day whose promotion peak trips the breaker, killed
every few batches and restarted, give the uninterrupted run's warnings, throttle and resume:
the same ids, states and times, the same command payloads, the same figures in each anomaly.
And those are the oracle's. After a restart each partition's counts, rebuilt from its order
states, are the counts it sent before.

Before the per-partition snapshots, the per-order stage sent the breaker per-batch deltas.
After a restart it read its partitions again from the committed offsets in batches cut
elsewhere, and the breaker folded a delta overlapping one it had folded before the kill: the
orders in the overlap counted twice. On this day that raised 2 to 9 breaker anomalies the
uninterrupted run never raised (a second throttle among them) and changed the figures of
others.
"""

from __future__ import annotations

import functools
import random
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime
from fractions import Fraction
from typing import Any

import pytest

from schemas.settings import Settings
from streams.rules.breaker import BreakerSettings
from streams.rules.intake import IntakeCounts
from streams.topics import TopicNames
from tests.logs import FeedLog, Knobs, generate_with
from tests.oracle import OracleSettings, expected
from tests.oracle.compare import Actual, diff
from tests.oracle.intake import BreakerRules
from tests.outputs import Outputs, content
from tests.stage_harness import Pipeline, batches

SETTINGS = Settings(
    topic_partitions=4,
    clickhouse_enabled=False,
    breaker=BreakerSettings(min_orders=40, failure_rate=0.1),
)
NAMES = TopicNames.from_settings(SETTINGS)
T0 = datetime(2026, 3, 2, tzinfo=UTC)  # the day's start: a mark that moves no event time
ORACLE = OracleSettings(breaker=BreakerRules(min_orders=40, failure_rate=Fraction(1, 10)))
BREAKER_TYPES = {"intake_overload", "intake_throttled"}
BREAKER_KINDS = {"intake.throttle", "intake.resume"}


@functools.cache
def promotion_day() -> FeedLog:
    """300 orders, half of them in a peak, 30% of reservations failing (some retried)."""
    knobs = replace(Knobs.draw(random.Random(7), 300), peak=0.5, reservation_failures=0.3)
    return generate_with(knobs, 7)


def run(crash_every: int | None = None, commit_every: int = 1) -> Pipeline:
    """The day published 400 events at a time, each read to the end in batches of 200, then
    the feeds quiet for a minute; SIGKILLed after every `crash_every` batches."""
    pipeline = Pipeline(SETTINGS, batch_size=200, commit_every=commit_every)
    for part in batches(promotion_day().events, 400):
        pipeline.publish(part)
        pipeline.run(crash_every=crash_every)
    pipeline.advance_wall(61)
    return pipeline


@functools.cache
def uninterrupted() -> Pipeline:
    """The day without a crash."""
    return run()


def breaker_outputs(outputs: Outputs) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """The breaker's anomalies (their last lifecycle event) and commands, as compared."""
    anomalies = {a: content(r) for a, r in outputs.final.items() if r["type"] in BREAKER_TYPES}
    commands = {c: content(r) for c, r in outputs.commands.items() if r["kind"] in BREAKER_KINDS}
    return anomalies, commands


def figures(outputs: Outputs) -> dict[str, tuple[Any, ...]]:
    """Each breaker anomaly's figures: (orders created, reservations attempted, failed)."""
    return {
        aid: (a["orders_created"], a["allocated"] + a["allocation_failed"], a["allocation_failed"])
        for aid, a in outputs.final.items()
        if a["type"] in BREAKER_TYPES
    }


def test_the_day_trips_the_breaker_as_the_oracle_says() -> None:
    pipeline = uninterrupted()
    outputs = pipeline.outputs()
    horizon = pipeline.stages.orders.watermark.value_us
    assert horizon is not None
    want = expected(promotion_day().events, horizon, ORACLE)
    got = Actual.fold(pipeline.anomalies(), pipeline.commands())
    assert diff(want, got, types=BREAKER_TYPES, kinds=BREAKER_KINDS) == []
    assert figures(outputs) == {
        aid: (r.extra["orders_created"], r.extra["attempted"], r.extra["failed"])
        for aid, r in want.anomalies.items()
        if r.type in BREAKER_TYPES
    }
    kinds = Counter(a["type"] for a in outputs.final.values() if a["type"] in BREAKER_TYPES)
    assert kinds == {"intake_overload": 10, "intake_throttled": 1}
    assert sorted(c["kind"] for c in outputs.commands.values() if c["kind"] in BREAKER_KINDS) == [
        "intake.resume",
        "intake.throttle",
    ]


@pytest.mark.parametrize(("commit_every", "crash_every"), [(3, 5), (2, 7), (3, 4)])
def test_killed_every_few_batches_the_breaker_says_what_it_said_uninterrupted(
    commit_every: int, crash_every: int
) -> None:
    crashed = run(crash_every, commit_every)
    # Killed often, with work past the last commit done again each time.
    assert crashed.crashes >= 10
    assert crashed.redelivered > 0
    got, want = crashed.outputs(), uninterrupted().outputs()
    # Ids, states, times, figures and payloads; a command sent again is sent the same.
    assert breaker_outputs(got) == breaker_outputs(want)
    assert figures(got) == figures(want)
    assert not set(got.conflicts) & set(breaker_outputs(got)[1])


def sent_counts(records: list[Any]) -> dict[str, tuple[int, IntakeCounts]]:
    """The last counts each partition sent on the breaker topic, with their offsets."""
    out = {}
    for record in records:
        body = record.json()
        if "snapshot" in body:
            out[body["origin"]] = (body["seq"], IntakeCounts.from_json(body["snapshot"]))
    return out


def from_floor(counts: IntakeCounts, floor: int) -> tuple[dict[Any, list[int]], ...]:
    """The minutes of `counts` from `floor` on."""
    later = {key: row for key, row in counts.later.items() if key[0] >= floor}
    return {m: row for m, row in counts.buckets.items() if m >= floor}, later


def test_a_restart_rebuilds_each_partitions_counts_from_its_order_states() -> None:
    pipeline = Pipeline(SETTINGS, batch_size=200)  # every batch committed
    events = promotion_day().events
    for part in batches(events[: len(events) // 2], 400):
        pipeline.publish(part)
        pipeline.run()
    before = sent_counts(pipeline.records(NAMES.breaker))
    sent = len(pipeline.records(NAMES.breaker))
    pipeline.crash()
    pipeline.publish_watermark(T0)  # a batch of the per-order stage with no event in it
    pipeline.run()
    after = sent_counts(pipeline.records(NAMES.breaker)[sent:])
    assert sorted(after) == sorted(before) == [f"{NAMES.normalized}/{p}" for p in range(4)]
    for origin, (offset, counts) in before.items():
        # Sent at no offset: a breaker holding the partition's counts at `offset` drops them.
        assert offset > 0
        assert after[origin][0] == -1
        rebuilt = after[origin][1]
        # The same counts, from the later of the two floors (the rebuilt counts keep what a
        # window can see at the event time the states were written with).
        assert counts.floor is not None
        assert rebuilt.floor is not None
        floor = max(counts.floor, rebuilt.floor)
        assert from_floor(rebuilt, floor) == from_floor(counts, floor)
        assert from_floor(counts, floor)[0]  # something to compare
