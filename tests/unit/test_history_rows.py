"""Rows the warehouse derives for the history tables: duplicate pairs and breaker history."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from schemas.anomalies import Anomaly, Decision, DecisionKind, Route, Team
from sinks import rows
from streams.rules.breaker import Breaker, BreakerSettings
from streams.rules.dedupe import (
    DedupeRules,
    FingerprintWindow,
    apply_duplicate_decision,
    duplicate_anomaly,
)
from streams.rules.intake import IntakeCounts
from streams.warehouse import breaker_history_rows
from tests.phones import PHONES
from tests.unit.test_dedupe import order

T0 = datetime(2026, 3, 2, 9, tzinfo=UTC)
MIN = timedelta(minutes=1)


def pair_anomaly() -> Anomaly:
    rules, window = DedupeRules(), FingerprintWindow()
    for order_id, channel, at in (("SO-A", "wechat", T0), ("SO-B", "website", T0 + 4 * MIN)):
        pairs = rules.observe(
            window,
            order_id,
            order(channel=channel, placed_at=at),
            event_id=f"ev-{order_id}",
            status="CREATED",
            occurred_at=at,
        )
    [pair] = pairs
    return duplicate_anomaly(pair, T0 + 5 * MIN, Route(team=Team.SALES, rule="dup"))


def test_a_duplicate_anomaly_is_a_pair_row_that_follows_its_decision() -> None:
    anomaly = pair_anomaly()
    row = rows.duplicate_pair_of(anomaly, phones=PHONES)
    assert row is not None
    assert (row["order_a"], row["order_b"]) == ("SO-A", "SO-B")
    assert (row["channel_a"], row["channel_b"]) == ("wechat", "website")
    assert row["gap_seconds"] == 240.0
    assert (row["state"], row["decision"]) == ("open", "")
    keep = Decision(
        decision_id="d1",
        kind=DecisionKind.DUPLICATE_KEEP,
        target=anomaly.anomaly_id,
        by="li",
        at=T0 + 9 * MIN,
    )
    kept, _ = apply_duplicate_decision(anomaly, keep, T0 + 10 * MIN)
    later = rows.duplicate_pair_of(kept, phones=PHONES)
    assert later is not None
    assert (later["pair_id"], later["state"], later["decision"]) == (
        row["pair_id"],
        "kept",
        "duplicate.keep",
    )
    assert later["version"] > row["version"]  # the decided row replaces the open one


def test_other_anomalies_make_no_pair() -> None:
    anomaly = pair_anomaly().model_copy(update={"type": "orphan_order"})
    assert rows.duplicate_pair_of(anomaly, phones=PHONES) is None


def test_breaker_history_has_every_evaluation_and_each_transition() -> None:
    settings = BreakerSettings(min_orders=5, evaluate_every=timedelta(minutes=10))
    breaker, counts = Breaker(settings), IntakeCounts()
    minute = int(T0.timestamp()) // 60
    # 40 minutes of 1 order and 1 failed allocation a minute: past 5 orders, it holds.
    counts.merge(IntakeCounts(buckets={minute + m: [1, 0, 1] for m in range(40)}))
    emits = breaker.tick(counts, T0 + 40 * MIN, T0)
    history = [
        (r["at"] - T0, r["event"], r["stage"], r["orders_created"])
        for r in breaker_history_rows(breaker.evaluations, emits)
    ]
    assert history == [
        (10 * MIN, "evaluate", 1, 10),
        (20 * MIN, "evaluate", 2, 20),
        (30 * MIN, "evaluate", 2, 30),
        (40 * MIN, "evaluate", 2, 40),
        (10 * MIN, "warn", 1, 10),  # each warning, as its figures were
        (20 * MIN, "warn", 2, 20),
        (20 * MIN, "throttle", 2, 20),  # the second warning throttles
        (30 * MIN, "warn", 2, 30),
        (40 * MIN, "warn", 2, 40),
    ]
