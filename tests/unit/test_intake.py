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
    EPOCH,
    STOCK_SYSTEMS,
    IntakeCounts,
    IntakeKind,
    OrderIntake,
    PartitionSnapshots,
    intake_times,
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
    its order in the partition's counts, sent whole after each batch with the batch's last
    offset, and the breaker keeps the latest off the wire."""
    join, states, counts = OrderJoin(PHONES), dict[str, OrderState](), IntakeCounts()
    breaker, offset = PartitionSnapshots(), -1
    for batch in batches:
        for body in batch:
            state = states.setdefault(body["order_id"], OrderState(order_id=body["order_id"]))
            before = intake_times(state, reserving)
            join.apply(state, body)
            counts.move(before.history(), intake_times(state, reserving).history())
            offset += 1
        breaker.fold("concord.normalized/0", offset, wired(counts))
    return breaker.total()


def wired(counts: IntakeCounts) -> IntakeCounts:
    """`counts` as the breaker reads them off its topic."""
    return IntakeCounts.from_json(json.loads(json.dumps(counts.to_json())))


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
    assert counts.to_json() == count([original]).to_json()


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
    assert count([retried[3:], retried[:3]]).to_json() == counts.to_json()


def test_a_failure_after_a_success_makes_the_order_failed_at_that_failure() -> None:
    reserved = [
        ev(ERP, 1, Stage.PLACED, 0, "CREATED"),
        ev(ERP, 1, Stage.ALLOCATED, 2, "ALLOCATED"),
        ev(WMS, 1, Stage.ALLOCATED, 3, "已分配"),
    ]
    short_pick = [ev(WMS, 1, Marker.ALLOCATION_FAILED, 50, "SHORT_PICK")]
    assert window(count([reserved]), 0, 60) == (1, 1, 0)
    counts = count([reserved, short_pick])
    assert window(counts, 0, 30) == (1, 1, 0)  # as of 10:30, the short pick was to come
    assert window(counts, 0, 60) == (1, 0, 1)  # as of 11:00, the success was taken back
    assert window(counts, 30, 60) == (0, 0, 1)
    minute = as_us(T0) // 60_000_000
    assert sorted(counts.buckets) == [minute, minute + 2, minute + 50]
    assert counts.later == {(minute + 2, minute + 50): [0, -1, 0]}


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
    assert one_batch.to_json() == two_batches.to_json()  # the minute it left holds nothing


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
    assert counts.to_json() == count([SHUFFLED]).to_json()
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
    expected = count([events]).to_json()
    assert window(count([events]), 0, 60) == (1, 0, 1)
    for permutation in itertools.permutations(events):
        assert count([[e] for e in permutation]).to_json() == expected


# --- the counts themselves -------------------------------------------------------------------


def test_a_move_takes_back_where_the_order_counted_and_empty_minutes_go() -> None:
    minute = as_us(T0) // 60_000_000
    t0 = as_us(T0)
    reserved = ((t0, OrderIntake(minute)), (t0 + 120_000_000, OrderIntake(minute, minute + 2)))
    counts = IntakeCounts()
    counts.count(reserved)
    assert counts.buckets == {minute: [1, 0, 0], minute + 2: [0, 1, 0]}
    failed = (reserved[0], (t0 + 120_000_000, OrderIntake(minute, minute + 2, True)))
    counts.move(reserved, failed)
    assert counts.buckets == {minute: [1, 0, 0], minute + 2: [0, 0, 1]}
    later = (reserved[0], (t0 + 300_000_000, OrderIntake(minute, minute + 5, True)))
    counts.move(failed, later)
    assert counts.to_json() == {"m": {str(minute): [1, 0, 0], str(minute + 5): [0, 0, 1]}}
    counts.count(later, -1)
    assert counts.to_json() == {"m": {}}


def test_an_orders_minute_is_the_minute_add_counts_it_in() -> None:
    one_us = timedelta(microseconds=1)
    for at in (T0 - HOUR, T0 - one_us, T0, T0 - HOUR - one_us):
        state = OrderState(order_id="SO-0001")
        OrderJoin(PHONES).apply(
            state, {**ev(ERP, 1, Stage.PLACED, 0, "CREATED"), "occurred_at": at.isoformat()}
        )
        by_state, by_time = IntakeCounts(), IntakeCounts()
        by_state.count(intake_times(state).history())
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
    # From the short pick's own time (10:50:30): the evaluation at 10:50 sees the order as it
    # stood, however early the short pick was read.
    minute = as_us(T0) // 60_000_000
    events = [
        ev(ERP, 1, Stage.PLACED, 0, "CREATED"),
        ev(ERP, 1, Stage.ALLOCATED, 2, "ALLOCATED"),
        ev(WMS, 1, Marker.ALLOCATION_FAILED, 50.5, "SHORT_PICK"),
    ]
    for arrival in itertools.permutations(events):
        counts = count([list(arrival)])
        assert counts.to_json() == {
            "m": {str(minute): [1, 0, 0], str(minute + 2): [0, 1, 0], str(minute + 50): [0, 0, 1]},
            "l": [[minute + 2, minute + 51, 0, -1, 0]],
        }
        assert window(counts, -10, 50) == (1, 1, 0)
        assert window(counts, -9, 51) == (1, 0, 1)
    assert sorted(counts.minutes()) == [minute, minute + 2, minute + 2, minute + 50]


# --- as of each instant, and rebuilt from the states ----------------------------------------


def _linked(body: Event, minute: float) -> Event:
    # An event that waited in ingest for its reference's link, released at T0 + `minute`.
    return {**body, "linked_us": as_us(T0 + minute * MINUTE)}


HELD = [
    ev(ERP, 20, Stage.PLACED, 0, "CREATED"),
    _linked(ev(WMS, 20, Stage.ALLOCATED, 2, "已分配"), 12),  # counts from its link at 10:12
    _linked(ev(WMS, 20, Marker.ALLOCATION_FAILED, 4, "缺货"), 12),
    ev(ERP, 20, Stage.ALLOCATED, 3, "ALLOCATED"),
]


def _as_of(history: tuple[tuple[int, OrderIntake], ...], t: int) -> OrderIntake:
    # What a history says the order counts for at `t`.
    now = OrderIntake()
    for since, intake in history:
        if since <= t:
            now = intake
    return now


def test_an_orders_history_is_what_it_counts_for_as_of_every_instant() -> None:
    join, states = OrderJoin(PHONES), dict[str, OrderState]()
    for body in SHUFFLED + HELD:
        state = states.setdefault(body["order_id"], OrderState(order_id=body["order_id"]))
        join.apply(state, body)
    instants = {as_us(T0 + m * MINUTE) + d for m in range(-1, 120) for d in (-1, 0, 1)}
    for state in states.values():
        history = intake_times(state).history()
        for t in instants:
            assert _as_of(history, t) == order_intake(state.as_of(t)), (state.order_id, t)
    minute = as_us(T0) // 60_000_000
    # SO-0020: the ERP's success at 10:03 until the WMS's failure (10:04) counts, at 10:12.
    assert intake_times(states["SO-0020"]).history() == (
        (as_us(T0), OrderIntake(minute)),
        (as_us(T0 + 3 * MINUTE), OrderIntake(minute, minute + 3)),
        (as_us(T0 + 12 * MINUTE), OrderIntake(minute, minute + 4, True)),
    )


@settings(max_examples=60, deadline=None)
@given(order=st.permutations(range(len(SHUFFLED + HELD))))
def test_counts_rebuilt_from_the_states_are_the_counts_counted_event_by_event(
    order: list[int],
) -> None:
    # After a restart the orders stage rebuilds each partition's counts from the states in
    # its table: after every event, they must be what counting event by event gave.
    feed = SHUFFLED + HELD
    join, states, counts = OrderJoin(PHONES), dict[str, OrderState](), IntakeCounts()
    for i in order:
        body = feed[i]
        state = states.setdefault(body["order_id"], OrderState(order_id=body["order_id"]))
        before = intake_times(state)
        join.apply(state, body)
        counts.move(before.history(), intake_times(state).history())
        rebuilt = IntakeCounts()
        for held in states.values():
            rebuilt.count(intake_times(OrderState.from_json(held.to_json())).history())
        assert counts.to_json() == rebuilt.to_json()


def test_as_of_each_evaluation_whatever_was_read_first() -> None:
    # SO-0020's events in any arrival order: until 10:12 it had not failed (the WMS's events
    # count from their link), the ERP's success at 10:03 is in the window.
    for arrival in itertools.permutations(HELD):
        counts = count([[e] for e in arrival])
        assert window(counts, -50, 10) == (1, 1, 0)
        assert window(counts, -49, 11) == (1, 1, 0)
        assert window(counts, -48, 12) == (1, 0, 1)  # from the link (10:12) on


# --- the breaker's snapshots ------------------------------------------------------------------


def _snapshot(counts: dict[int, list[int]], floor: int | None = None) -> IntakeCounts:
    return wired(IntakeCounts(buckets={m: list(row) for m, row in counts.items()}, floor=floor))


def test_a_snapshot_sent_again_at_an_offset_already_taken_is_dropped() -> None:
    breaker = PartitionSnapshots()
    assert breaker.fold("normalized/0", 7, _snapshot({100: [3, 1, 0]}))
    # After a crash the partition is read again from its committed offset, in other batches:
    # the same offset again, or one before it, is older news.
    assert not breaker.fold("normalized/0", 7, _snapshot({100: [9, 9, 9]}))
    assert not breaker.fold("normalized/0", 5, _snapshot({100: [2, 1, 0]}))
    assert breaker.total().to_json() == {"m": {"100": [3, 1, 0]}}
    # A later offset replaces it (cumulative counts, not a delta to add).
    assert breaker.fold("normalized/0", 12, _snapshot({100: [4, 1, 0], 101: [1, 0, 1]}))
    assert breaker.total().to_json() == {"m": {"100": [4, 1, 0], "101": [1, 0, 1]}}


def test_the_partitions_snapshots_are_summed() -> None:
    breaker = PartitionSnapshots()
    breaker.fold("normalized/0", 12, _snapshot({100: [4, 1, 0], 101: [1, 0, 1]}))
    breaker.fold("normalized/1", 3, _snapshot({101: [2, 2, 0], 102: [1, 0, 0]}))  # its own offsets
    assert breaker.total().to_json() == {
        "m": {"100": [4, 1, 0], "101": [3, 2, 1], "102": [1, 0, 0]}
    }
    again = PartitionSnapshots.from_json(json.loads(json.dumps(breaker.to_json())))
    assert again == breaker
    assert not again.fold("normalized/1", 3, _snapshot({}))


def test_a_snapshot_keeps_the_minutes_before_its_floor_from_the_last_one() -> None:
    breaker = PartitionSnapshots()
    breaker.fold("normalized/0", 7, _snapshot({100: [1, 0, 0], 104: [2, 0, 0]}, floor=90))
    # The partition's event time moved on: it holds the minutes from 103 only.
    breaker.fold("normalized/0", 9, _snapshot({104: [3, 1, 0], 105: [1, 0, 0]}, floor=103))
    assert breaker.total().to_json() == {
        "m": {"100": [1, 0, 0], "104": [3, 1, 0], "105": [1, 0, 0]}
    }
    assert breaker.latest["normalized/0"][1].floor == 90
    breaker.expire(EPOCH + 101 * MINUTE)  # what the breaker's evaluations no longer see
    assert breaker.total().to_json() == {"m": {"104": [3, 1, 0], "105": [1, 0, 0]}}
