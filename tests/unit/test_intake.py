"""What the intake breaker counts (§7): each order once, from the systems that reserve stock,
whatever the mirrors, re-sends, retries, arrival order and batching. Windows hand-computed."""

from __future__ import annotations

import itertools
import json
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from schemas.settings import Settings
from schemas.stages import Marker, Source, Stage
from streams.rules.breaker import BreakerSettings
from streams.rules.intake import (
    NO_INTAKE,
    STOCK_SYSTEMS,
    IntakeCounts,
    IntakeKind,
    OrderIntake,
    order_intake,
)
from streams.rules.order_state import OrderJoin, OrderState
from streams.rules.watermark import as_us
from tests.phones import PHONES

CST = timezone(timedelta(hours=8))
T0 = datetime(2026, 3, 2, 10, 0, tzinfo=CST)  # a whole minute
MINUTE = timedelta(minutes=1)
HOUR = timedelta(hours=1)
ERP, CRM, WMS, LOG = Source.ERP, Source.CRM, Source.WMS, Source.LOGISTICS
Event = dict[str, Any]


def ev(
    source: Source,
    order: int,
    what: Stage | Marker,
    minute: float,
    status: str,
    event_id: str | None = None,
) -> Event:
    """A normalised event of order SO-<order> at T0 + `minute`, as ingest forwards it."""
    order_id = f"SO-{order:04d}"
    when = (T0 + minute * MINUTE).isoformat()
    body: Event = {
        "event_id": event_id or f"{source.value}-{order_id}-{status}-{minute}",
        "source": source.value,
        "order_ref": order_id if source is ERP else f"{source.value.upper()}-{order_id}",
        "erp_order_id": order_id,
        "order_id": order_id,
        "status": status,
        "occurred_at": when,
    }
    body["stage" if isinstance(what, Stage) else "marker"] = what.value
    if source is ERP and what is Stage.PLACED:
        body["order"] = {"customer_id": f"C-{order}", "channel": "douyin", "vip": False}
    return body


def count(
    batches: list[list[Event]], reserving: tuple[Source, ...] = STOCK_SYSTEMS
) -> IntakeCounts:
    """The breaker's counts once the orders stage applied `batches` in turn: each event moves
    its order's count in the batch's delta, and the breaker folds the deltas in off the wire."""
    join, states, total = OrderJoin(PHONES), dict[str, OrderState](), IntakeCounts()
    for seq, batch in enumerate(batches):
        delta = IntakeCounts()
        for body in batch:
            state = states.setdefault(body["order_id"], OrderState(order_id=body["order_id"]))
            before = order_intake(state, reserving)
            join.apply(state, body)
            delta.move(before, order_intake(state, reserving))
        wire = json.loads(json.dumps(delta.to_json()))
        total.apply_delta("concord.normalized/0", seq, IntakeCounts.from_json(wire))
    return total


def window(counts: IntakeCounts, start: float, end: float) -> tuple[int, int, int]:
    """(created, reservations succeeded, failed) over [T0 + start min, T0 + end min)."""
    return tuple(counts.window_totals(T0 + end * MINUTE, (end - start) * MINUTE))  # type: ignore[return-value]


# --- a promotion's first ten minutes, mirrored by the CRM and the WMS ------------------------

FAILED = {3, 7}


def mirrored(order: int) -> list[Event]:
    """Order `order`, created at minute `order`: the ERP reserves at +2 (orders 3 and 7 fail),
    the CRM mirrors every stage it has a label for, the WMS mirrors the reservation at +4,
    the carrier reports the pickup."""
    at, failed = float(order), order in FAILED
    events = [
        ev(ERP, order, Stage.PLACED, at, "CREATED"),
        ev(CRM, order, Stage.PLACED, at + 1, "NEW"),
        ev(ERP, order, Stage.CONFIRMED, at + 1, "CONFIRMED"),
        ev(CRM, order, Stage.CONFIRMED, at + 2, "已确认"),
    ]
    if failed:
        events += [
            ev(ERP, order, Marker.ALLOCATION_FAILED, at + 2, "库存不足"),
            ev(WMS, order, Marker.ALLOCATION_FAILED, at + 4, "缺货"),
        ]
    else:
        events += [
            ev(ERP, order, Stage.ALLOCATED, at + 2, "ALLOCATED"),
            ev(CRM, order, Stage.ALLOCATED, at + 3, "PROCESSING"),
            ev(WMS, order, Stage.ALLOCATED, at + 4, "已分配"),
            ev(WMS, order, Stage.PICKING, at + 20, "拣货中"),
            ev(ERP, order, Stage.SHIPPED, at + 30, "SHIPPED"),
            ev(LOG, order, Stage.SHIPPED, at + 31, "已揽收"),
        ]
    return events


FEED = [e for order in range(10) for e in mirrored(order)]


def test_mirrors_from_the_crm_and_the_wms_count_each_order_once() -> None:
    counts = count([FEED])
    # 10 orders; 8 reserved, 2 failed (orders 3, 7): 20%, not 4 of 28 "allocations" (12.5%).
    assert window(counts, 0, 60) == (10, 8, 2)
    # Created at minutes 0-4; reserved at 2, 3, 4 (orders 0-2), all succeeded.
    assert window(counts, 0, 5) == (5, 3, 0)
    # Created at 5-9; reserved at 5-9: orders 3 and 7 failed, 4, 5 and 6 succeeded.
    assert window(counts, 5, 10) == (5, 3, 2)
    # Orders 8 and 9 reserved at 10 and 11; the WMS picking at 20+ adds nothing.
    assert window(counts, 10, 60) == (0, 2, 0)


def test_resends_with_new_event_ids_count_once() -> None:
    original = [
        ev(ERP, 1, Stage.PLACED, 0, "CREATED"),
        ev(ERP, 1, Marker.ALLOCATION_FAILED, 2, "库存不足"),
        ev(WMS, 1, Marker.ALLOCATION_FAILED, 3, "缺货"),
        ev(ERP, 2, Stage.PLACED, 1, "CREATED"),
        ev(ERP, 2, Stage.ALLOCATED, 4, "ALLOCATED"),
        ev(CRM, 2, Stage.ALLOCATED, 5, "PROCESSING"),
    ]
    resent = [{**e, "event_id": f"{e['event_id']}-resent-{n}"} for n in (1, 2) for e in original]
    # A connector that re-publishes a report minutes later, under yet another id.
    later = [
        ev(ERP, 1, Marker.ALLOCATION_FAILED, 9, "STOCK_SHORTAGE", "erp-again"),
        ev(WMS, 2, Stage.ALLOCATED, 8, "RESERVED", "wms-again"),
    ]
    counts = count([original, resent, later])
    assert window(counts, 0, 60) == (2, 1, 1)
    assert window(counts, 2, 3) == (0, 0, 1)  # order 1 at its first failure
    assert window(counts, 4, 5) == (0, 1, 0)  # order 2 at its first reservation
    assert counts.buckets == count([original]).buckets


def test_a_retry_after_a_failure_is_one_failed_reservation_at_the_first_failure() -> None:
    # Out of stock at 10:05, restocked (or moved from another warehouse) and reserved at 10:40.
    retried = [
        ev(ERP, 1, Stage.PLACED, 0, "CREATED"),
        ev(ERP, 1, Marker.ALLOCATION_FAILED, 5, "库存不足"),
        ev(WMS, 1, Marker.ALLOCATION_FAILED, 6, "缺货"),
        ev(ERP, 1, Stage.ALLOCATED, 40, "库存已锁定"),
        ev(CRM, 1, Stage.ALLOCATED, 41, "PROCESSING"),
        ev(WMS, 1, Stage.ALLOCATED, 42, "已分配"),
    ]
    counts = count([retried])
    assert window(counts, 0, 60) == (1, 0, 1)
    assert window(counts, 5, 6) == (0, 0, 1)
    assert window(counts, 30, 90) == (0, 0, 0)  # the retry is not a second attempt
    # Whichever arrives first, and however batched.
    assert count([retried[3:], retried[:3]]).buckets == counts.buckets


def test_a_failure_after_a_success_makes_the_order_failed_at_that_failure() -> None:
    reserved = [
        ev(ERP, 1, Stage.PLACED, 0, "CREATED"),
        ev(ERP, 1, Stage.ALLOCATED, 2, "ALLOCATED"),
        ev(WMS, 1, Stage.ALLOCATED, 3, "已分配"),
    ]
    short_pick = [ev(WMS, 1, Marker.ALLOCATION_FAILED, 50, "SHORT_PICK")]
    assert window(count([reserved]), 0, 60) == (1, 1, 0)
    counts = count([reserved, short_pick])
    assert window(counts, 0, 30) == (1, 0, 0)  # the success at 10:02 was taken back
    assert window(counts, 30, 60) == (0, 0, 1)
    assert sorted(counts.buckets) == [as_us(T0) // 60_000_000 + m for m in (0, 50)]


def test_only_the_reserving_systems_count() -> None:
    feed = [
        ev(ERP, 1, Stage.PLACED, 0, "CREATED"),
        ev(ERP, 1, Stage.ALLOCATED, 2, "ALLOCATED"),
        ev(WMS, 1, Marker.ALLOCATION_FAILED, 3, "OUT_OF_STOCK"),
        ev(ERP, 2, Stage.PLACED, 1, "CREATED"),
        ev(WMS, 2, Stage.ALLOCATED, 4, "已分配"),
        ev(CRM, 3, Stage.ALLOCATED, 5, "PROCESSING"),  # the CRM's word only: no ERP order
    ]
    assert window(count([feed]), 0, 60) == (2, 1, 1)
    assert window(count([feed], (ERP,)), 0, 60) == (2, 1, 0)
    assert window(count([feed], (WMS,)), 0, 60) == (2, 1, 1)
    assert window(count([feed], (WMS,)), 3, 4) == (0, 0, 1)


def test_an_order_is_created_at_the_erps_earliest_event_however_late_it_arrives() -> None:
    feed = [
        ev(ERP, 1, Stage.CONFIRMED, 3, "CONFIRMED"),
        ev(ERP, 1, Stage.PLACED, 1, "CREATED"),
    ]
    one_batch, two_batches = count([feed]), count([feed[:1], feed[1:]])
    assert window(one_batch, 1, 2) == (1, 0, 0)
    assert window(one_batch, 0, 60) == (1, 0, 0)
    assert one_batch.buckets == two_batches.buckets  # the minute it left holds nothing


# --- any arrival order, any batching ---------------------------------------------------------


def _shuffled_feed() -> list[Event]:
    feed = list(FEED)
    feed += [
        ev(ERP, 3, Stage.ALLOCATED, 40, "库存已锁定"),  # order 3 retried
        ev(WMS, 3, Stage.ALLOCATED, 41, "已分配"),
        {**FEED[5], "event_id": "resent-1"},
        ev(WMS, 5, Marker.ALLOCATION_FAILED, 45, "SHORT_PICK"),  # order 5 short at the pick
    ]
    return feed


SHUFFLED = _shuffled_feed()


@settings(max_examples=60, deadline=None)
@given(
    order=st.permutations(range(len(SHUFFLED))),
    cuts=st.lists(st.integers(0, len(SHUFFLED)), max_size=6),
)
def test_arrival_order_and_batching_change_no_bucket(order: list[int], cuts: list[int]) -> None:
    arrived = [SHUFFLED[i] for i in order]
    bounds = [0, *sorted(cuts), len(arrived)]
    batches = [arrived[a:b] for a, b in itertools.pairwise(bounds)]
    counts = count(batches)
    assert counts.buckets == count([SHUFFLED]).buckets
    # Orders 3 and 7 failed at minutes 5 and 9, order 5 at 45; the retry adds nothing.
    assert window(counts, 0, 60) == (10, 7, 3)
    assert window(counts, 30, 90) == (0, 0, 1)


def test_every_permutation_of_one_order_gives_the_same_counts() -> None:
    events = [
        ev(ERP, 1, Stage.PLACED, 0, "CREATED"),
        ev(ERP, 1, Marker.ALLOCATION_FAILED, 5, "库存不足"),
        ev(WMS, 1, Marker.ALLOCATION_FAILED, 6, "缺货"),
        ev(ERP, 1, Stage.ALLOCATED, 40, "库存已锁定"),
        ev(WMS, 1, Stage.ALLOCATED, 42, "已分配"),
    ]
    expected = count([events]).buckets
    assert window(count([events]), 0, 60) == (1, 0, 1)
    for permutation in itertools.permutations(events):
        assert count([[e] for e in permutation]).buckets == expected


# --- the counts themselves -------------------------------------------------------------------


def test_a_move_takes_back_where_the_order_counted_and_empty_minutes_go() -> None:
    minute = as_us(T0) // 60_000_000
    counts = IntakeCounts()
    counts.move(NO_INTAKE, OrderIntake(minute, minute + 2, failed=False))
    assert counts.buckets == {minute: [1, 0, 0], minute + 2: [0, 1, 0]}
    counts.move(OrderIntake(minute, minute + 2, False), OrderIntake(minute, minute + 2, True))
    assert counts.buckets == {minute: [1, 0, 0], minute + 2: [0, 0, 1]}
    delta = IntakeCounts()
    delta.move(OrderIntake(minute, minute + 2, True), OrderIntake(minute, minute + 5, True))
    assert delta.to_json() == {"m": {str(minute + 2): [0, 0, -1], str(minute + 5): [0, 0, 1]}}
    counts.merge(IntakeCounts.from_json(json.loads(json.dumps(delta.to_json()))))
    assert counts.buckets == {minute: [1, 0, 0], minute + 5: [0, 0, 1]}


def test_an_orders_minute_is_the_minute_add_counts_it_in() -> None:
    one_us = timedelta(microseconds=1)
    for at in (T0 - HOUR, T0 - one_us, T0, T0 - HOUR - one_us):
        state = OrderState(order_id="SO-0001")
        OrderJoin(PHONES).apply(
            state, {**ev(ERP, 1, Stage.PLACED, 0, "CREATED"), "occurred_at": at.isoformat()}
        )
        by_state, by_time = IntakeCounts(), IntakeCounts()
        by_state.move(NO_INTAKE, order_intake(state))
        by_time.add(IntakeKind.CREATED, at)
        assert by_state.to_json() == by_time.to_json()


def test_the_earliest_failure_survives_later_markers_and_the_state_round_trip() -> None:
    state, join = OrderState(order_id="SO-0001"), OrderJoin(PHONES)
    for body in (
        ev(ERP, 1, Marker.ALLOCATION_FAILED, 9, "库存不足"),
        ev(ERP, 1, Marker.ALLOCATION_FAILED, 5, "STOCK_SHORTAGE"),
        ev(ERP, 1, Marker.DELIVERY_EXCEPTION, 20, "EXCEPTION"),  # a site's own status map
        ev(WMS, 1, Marker.ALLOCATION_FAILED, 7, "缺货"),
    ):
        join.apply(state, body)
    failed_at = as_us(T0 + 5 * MINUTE)
    assert state.systems[ERP].failed_us == failed_at
    assert state.systems[WMS].failed_us == as_us(T0 + 7 * MINUTE)
    again = OrderState.from_json(json.loads(json.dumps(state.to_json())))
    assert again == state
    assert order_intake(again) == OrderIntake(None, failed_at // 60_000_000, True)


def test_a_state_written_before_the_failure_was_kept_reads_its_last_failure() -> None:
    state = OrderState(order_id="SO-0001")
    OrderJoin(PHONES).apply(state, ev(WMS, 1, Marker.ALLOCATION_FAILED, 5, "缺货"))
    raw = state.to_json()
    assert len(raw["s"]["w"]) == 11  # one failure, the marker itself: its time is not repeated
    assert OrderState.from_json(raw).systems[WMS].failed_us == as_us(T0 + 5 * MINUTE)


# --- the setting -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "systems"),
    [
        ("erp,wms", (ERP, WMS)),
        (" WMS , erp,wms", (ERP, WMS)),
        ("wms", (WMS,)),
        (["erp"], (ERP,)),
    ],
)
def test_reserving_systems_are_named_erp_and_wms(value: Any, systems: tuple[Source, ...]) -> None:
    assert BreakerSettings(reserving_systems=value).reserving_systems == systems


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ("erp,crm", "crm only mirrors the order's status and reserves no stock"),
        ("logistics", "logistics only mirrors"),
        ("erp,sap", "unknown system 'sap'; give erp and/or wms"),
        (" , ", "give at least one of erp, wms"),
    ],
)
def test_mirrors_and_unknown_systems_are_refused(value: str, error: str) -> None:
    with pytest.raises(ValidationError, match=error):
        BreakerSettings(reserving_systems=value)


def test_reserving_systems_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().breaker.reserving_systems == (ERP, WMS)
    monkeypatch.setenv("CONCORD_BREAKER__RESERVING_SYSTEMS", "wms")
    assert Settings().breaker.reserving_systems == (WMS,)
    monkeypatch.setenv("CONCORD_BREAKER__RESERVING_SYSTEMS", "erp,crm")
    with pytest.raises(ValidationError, match="crm only mirrors"):
        Settings()


def test_a_success_taken_back_counts_for_the_evaluations_from_the_short_pick_on() -> None:
    # As the orders stage moves it: from the short pick's own time (10:50:30), so the
    # evaluation at 10:50 sees the order as it stood, however early the short pick was read.
    minute = as_us(T0) // 60_000_000
    counts = IntakeCounts()
    counts.move(NO_INTAKE, OrderIntake(minute, minute + 2, False), as_us(T0 + 2 * MINUTE))
    delta = IntakeCounts()
    short_pick = as_us(T0 + 50.5 * MINUTE)
    delta.move(
        OrderIntake(minute, minute + 2, False), OrderIntake(minute, minute + 50, True), short_pick
    )
    assert delta.to_json() == {
        "m": {str(minute + 50): [0, 0, 1]},
        "l": [[minute + 2, minute + 51, 0, -1, 0]],
    }
    counts.apply_delta(
        "concord.normalized/0", 1, IntakeCounts.from_json(json.loads(json.dumps(delta.to_json())))
    )
    assert window(counts, -10, 50) == (1, 1, 0)
    assert window(counts, -9, 51) == (1, 0, 1)
    assert sorted(counts.minutes()) == [minute, minute + 2, minute + 2, minute + 50]
