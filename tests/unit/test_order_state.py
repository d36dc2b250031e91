"""Per-order join state: scope, ordering, idempotence, facts, compact JSON, eviction."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.stages import PHASE_OF, Marker, Phase, Source, Stage
from streams.rules.order_state import (
    Change,
    OrderJoin,
    OrderState,
    Outcome,
    in_scope,
    is_evictable,
    observations_of,
)
from streams.rules.refresh_latency import Observation
from tests.phones import PHONES

T0 = datetime(2025, 12, 12, 10, 0, tzinfo=UTC)
ORDER = "SO2025121200123"
JOIN = OrderJoin(PHONES)

ERP, CRM, WMS, LOG = Source.ERP, Source.CRM, Source.WMS, Source.LOGISTICS

ORDER_DETAILS: dict[str, Any] = {
    "customer_id": "C-0042137",
    "channel": "douyin",
    "lines": [{"sku": "BRK-PAD-001", "qty": 2, "unit_price": "129.00"}],
    "amount": "258.00",
    "currency": "CNY",
    "customer_phone": "+86 138-0013-8000",
    "ship_to": "浙江省杭州市西湖区文三路100号",
    "vip": True,
    "priority": "rush",
}


def at(seconds: float) -> datetime:
    """T0 plus some seconds."""
    return T0 + timedelta(seconds=seconds)


def event(
    source: Source,
    n: int,
    what: Stage | Marker,
    seconds: float,
    *,
    order_id: str = ORDER,
    ref: str | None = None,
    event_id: str | None = None,
    status: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A normalised event as ingest forwards it (see ingest._normalized)."""
    when = at(seconds).astimezone(UTC).isoformat()
    body: dict[str, Any] = {
        "event_id": event_id or f"{source.value}-{order_id}-{n:02d}",
        "source": source.value,
        "order_ref": ref or (order_id if source is ERP else f"{source.value.upper()}-{order_id}"),
        "erp_order_id": order_id,
        "status": status or what.value.upper(),
        "occurred_at": when,
        "order_id": order_id,
        "received_at": when,
    }
    if isinstance(what, Stage):
        body["stage"] = what.value
        body["phase"] = PHASE_OF[what].value
    else:
        body["marker"] = what.value
    body.update(extra)
    return body


def run(events: list[dict[str, Any]], order_id: str = ORDER) -> tuple[OrderState, list[Change]]:
    """Apply events in the given order to a fresh state."""
    state = OrderState(order_id)
    return state, [JOIN.apply(state, e) for e in events]


def full_order(order_id: str = ORDER) -> list[dict[str, Any]]:
    """A typical delivered order: 20 events across the four systems, with a delivery hiccup."""
    crm_ref, wms_ref, waybill = "CRM-88123456", "WMS-OUT-5512301", "SF1234567890123"
    tracking = {"carrier": "SF", "tracking_no": waybill, "location": "杭州转运中心"}
    e = event
    return [
        e(ERP, 1, Stage.PLACED, 0, order_id=order_id, status="已下单", order=ORDER_DETAILS),
        e(CRM, 1, Stage.PLACED, 31, order_id=order_id, ref=crm_ref, status="新建"),
        e(ERP, 2, Stage.CONFIRMED, 120, order_id=order_id, status="已审核"),
        e(CRM, 2, Stage.CONFIRMED, 167, order_id=order_id, ref=crm_ref, status="已确认"),
        e(ERP, 3, Stage.ALLOCATED, 1800, order_id=order_id, status="库存已锁定"),
        e(WMS, 1, Stage.ALLOCATED, 1805, order_id=order_id, ref=wms_ref, status="已接单"),
        e(CRM, 3, Stage.ALLOCATED, 1860, order_id=order_id, ref=crm_ref, status="备货中"),
        e(WMS, 2, Stage.PICKING, 3605, order_id=order_id, ref=wms_ref, status="已拣货"),
        e(ERP, 4, Stage.PICKING, 3660, order_id=order_id, status="拣货中"),
        e(WMS, 3, Stage.SHIPPED, 14400, order_id=order_id, ref=wms_ref, status="已出库"),
        e(ERP, 5, Stage.SHIPPED, 14410, order_id=order_id, status="已发货", tracking=tracking),
        e(CRM, 4, Stage.SHIPPED, 14460, order_id=order_id, ref=crm_ref, status="已发货"),
        e(LOG, 1, Stage.SHIPPED, 15600, order_id=order_id, ref=waybill, tracking=tracking),
        e(LOG, 2, Stage.IN_TRANSIT, 37200, order_id=order_id, ref=waybill, tracking=tracking),
        e(LOG, 3, Marker.DELIVERY_EXCEPTION, 84000, order_id=order_id, ref=waybill),
        e(LOG, 4, Stage.IN_TRANSIT, 87600.25, order_id=order_id, ref=waybill, status="派送中"),
        e(LOG, 5, Stage.DELIVERED, 105600, order_id=order_id, ref=waybill, status="已签收"),
        e(ERP, 6, Stage.DELIVERED, 106200, order_id=order_id, status="已签收"),
        e(CRM, 5, Stage.DELIVERED, 106260, order_id=order_id, ref=crm_ref, status="已签收"),
        e(ERP, 7, Stage.CLOSED, 136800, order_id=order_id, status="已完成"),
    ]


def without_ids(state: OrderState) -> dict[str, Any]:
    """The state's JSON without the arrival-order-dependent digest ring."""
    raw = state.to_json()
    raw.pop("i", None)
    return raw


# --- scope ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("phase", "reached_fulfilling", "expected"),
    [
        (Phase.OPEN, False, (CRM,)),
        (Phase.FULFILLING, True, (CRM, WMS)),
        (Phase.SHIPPED, True, (CRM, WMS, LOG)),
        (Phase.DELIVERED, True, (CRM, LOG)),
        (Phase.CANCELLED, False, (CRM,)),
        (Phase.CANCELLED, True, (CRM, WMS)),
        (Phase.RETURNED, False, (CRM,)),
        (Phase.RETURNED, True, (CRM, WMS)),
    ],
)
def test_scope_table(phase: Phase, reached_fulfilling: bool, expected: tuple[Source, ...]) -> None:
    assert in_scope(phase, reached_fulfilling) == expected


def test_scope_follows_the_erp_phase_and_how_far_it_got() -> None:
    state, _ = run([event(ERP, 1, Stage.PLACED, 0), event(ERP, 2, Stage.CANCELLED, 60)])
    assert state.scope() == (CRM,)  # cancelled while open: the warehouse never had it

    state, _ = run([event(ERP, 1, Stage.ALLOCATED, 0), event(ERP, 2, Stage.CANCELLED, 60)])
    assert state.scope() == (CRM, WMS)  # cancelled mid-pick: the warehouse must stop

    state, _ = run(full_order()[:17])  # logistics delivered, ERP still shipped
    assert state.erp_phase is Phase.SHIPPED
    assert state.scope() == (CRM, WMS, LOG)
    state, _ = run(full_order())
    assert state.scope() == (CRM, LOG)


# --- consistency ----------------------------------------------------------------------------


def test_no_erp_event_means_not_in_the_population() -> None:
    state, changes = run([event(CRM, 1, Stage.PLACED, 0), event(WMS, 1, Stage.ALLOCATED, 5)])
    assert state.erp_phase is None
    assert state.consistent is None
    assert state.disagreeing() is None
    assert [c.in_population for c in changes] == [False, False]
    assert changes[-1].new_consistent is None
    assert changes[-1].disagreeing == ()


def test_consistency_along_a_full_order() -> None:
    _, changes = run(full_order())
    got = [(c.source, c.new_phase, c.new_consistent, c.disagreeing) for c in changes]
    o, f, s, d = Phase.OPEN, Phase.FULFILLING, Phase.SHIPPED, Phase.DELIVERED
    assert got == [
        (ERP, o, False, (CRM,)),  # CRM silent
        (CRM, o, True, ()),
        (ERP, o, True, ()),
        (CRM, o, True, ()),
        (ERP, f, False, (CRM, WMS)),
        (WMS, f, False, (CRM,)),
        (CRM, f, True, ()),
        (WMS, f, True, ()),
        (ERP, f, True, ()),
        (WMS, f, False, (WMS,)),  # the warehouse ahead of the ERP disagrees too
        (ERP, s, False, (CRM, LOG)),
        (CRM, s, False, (LOG,)),
        (LOG, s, True, ()),
        (LOG, s, True, ()),
        (LOG, s, True, ()),  # a delivery exception is a marker: nothing moves
        (LOG, s, True, ()),
        (LOG, s, False, (LOG,)),
        (ERP, d, False, (CRM,)),  # the WMS left the scope, logistics agrees
        (CRM, d, True, ()),
        (ERP, d, True, ()),
    ]
    assert [c.consistency_changed for c in changes[:3]] == [True, True, False]
    assert changes[4].phase_changed
    assert not changes[5].phase_changed


# --- ordering -------------------------------------------------------------------------------


def test_a_late_shipped_after_delivered_is_seen_but_not_applied() -> None:
    state, changes = run(
        [event(LOG, 2, Stage.DELIVERED, 7200), event(LOG, 1, Stage.SHIPPED, 3600, status="揽件")]
    )
    assert [c.outcome for c in changes] == [Outcome.APPLIED, Outcome.STALE]
    log = state.view(LOG)
    assert log is not None
    assert log.stage is Stage.DELIVERED
    assert log.status == "DELIVERED"
    assert log.at_us == changes[0].event_time.timestamp() * 1_000_000
    assert set(log.firsts) == {Phase.SHIPPED, Phase.DELIVERED}  # still counted for latency
    assert log.seen_us == log.at_us


def test_a_higher_stage_wins_even_with_an_earlier_time() -> None:
    state, changes = run([event(CRM, 1, Stage.PICKING, 600), event(CRM, 2, Stage.SHIPPED, 300)])
    assert [c.outcome for c in changes] == [Outcome.APPLIED, Outcome.APPLIED]
    view = state.view(CRM)
    assert view is not None
    assert view.stage is Stage.SHIPPED
    assert view.seen_us == int(at(600).timestamp()) * 1_000_000


def test_same_stage_later_refreshes_and_earlier_is_stale() -> None:
    state, changes = run(
        [
            event(LOG, 1, Stage.IN_TRANSIT, 100, status="ARRIVED_AT_HUB"),
            event(LOG, 2, Stage.IN_TRANSIT, 200, status="DEPARTED_HUB"),
            event(LOG, 3, Stage.IN_TRANSIT, 150, status="运输中"),
        ]
    )
    assert [c.outcome for c in changes] == [Outcome.APPLIED, Outcome.APPLIED, Outcome.STALE]
    view = state.view(LOG)
    assert view is not None
    assert (view.status, view.event_id) == ("DEPARTED_HUB", f"logistics-{ORDER}-02")


def test_cancelled_and_returned_are_off_the_line_and_final() -> None:
    state, changes = run(
        [
            event(ERP, 1, Stage.DELIVERED, 100),
            event(ERP, 2, Stage.CANCELLED, 50),  # earlier, but off the line: it applies
            event(ERP, 3, Stage.CLOSED, 200),  # a line stage never replaces an off-line one
            event(ERP, 4, Stage.RETURNED, 300),  # the later off-line stage wins
            event(ERP, 5, Stage.CANCELLED, 250),
        ]
    )
    assert [c.outcome for c in changes] == [
        Outcome.APPLIED,
        Outcome.APPLIED,
        Outcome.STALE,
        Outcome.APPLIED,
        Outcome.STALE,
    ]
    assert state.erp_phase is Phase.RETURNED
    assert state.terminal_at_us == int(at(300).timestamp()) * 1_000_000


def test_failure_markers_are_kept_and_do_not_move_the_order() -> None:
    state, changes = run(
        [
            event(ERP, 1, Stage.ALLOCATED, 0),
            event(WMS, 1, Marker.ALLOCATION_FAILED, 60, status="SHORT_PICK", ref="W-1"),
            event(WMS, 2, Marker.ALLOCATION_FAILED, 30, status="缺货", ref="W-1"),
        ]
    )
    assert [c.outcome for c in changes] == [Outcome.APPLIED, Outcome.MARKER, Outcome.STALE]
    wms = state.view(WMS)
    assert wms is not None
    assert wms.stage is None
    assert wms.phase is None
    assert (wms.marker, wms.marker_status, wms.ref) == (
        Marker.ALLOCATION_FAILED,
        "SHORT_PICK",
        "W-1",
    )
    assert state.disagreeing() == (CRM, WMS)  # a marker is not a phase


def test_an_event_with_neither_stage_nor_marker_is_refused() -> None:
    body = event(ERP, 1, Stage.PLACED, 0)
    del body["stage"]
    with pytest.raises(ValueError, match="neither a stage nor a marker"):
        JOIN.apply(OrderState(ORDER), body)


# --- idempotence ----------------------------------------------------------------------------


def test_a_redelivered_event_changes_nothing() -> None:
    events = full_order()
    state, _ = run(events)
    before = state.to_json()
    for e in events[-3:]:
        change = JOIN.apply(state, e)
        assert change.outcome is Outcome.DUPLICATE
        assert change.observations == []
        assert change.old_consistent == change.new_consistent
        assert change.old_phase is change.new_phase
    assert state.to_json() == before


def test_a_redelivery_older_than_the_digest_ring_still_changes_nothing() -> None:
    events = full_order()
    state, _ = run(events)
    before = without_ids(state)
    for e in events:
        change = JOIN.apply(state, e)
        assert change.outcome in (Outcome.STALE, Outcome.DUPLICATE)
        assert change.observations == []
    assert without_ids(state) == before
    assert len(state.recent_ids) == JOIN.max_ids


# --- facts and tracking ---------------------------------------------------------------------


def test_order_facts_keep_a_phone_hash_never_the_phone() -> None:
    state, _ = run(full_order())
    facts = state.facts
    assert facts is not None
    assert facts.phone_hash == PHONES.phone_hash("13800138000")
    assert (facts.customer_id, facts.channel, facts.vip, facts.priority) == (
        "C-0042137",
        "douyin",
        True,
        "rush",
    )
    assert (facts.amount, facts.currency) == ("258.00", "CNY")
    assert facts.placed_at_us == int(T0.timestamp()) * 1_000_000  # defaults to occurred_at
    blob = orjson.dumps(state.to_json())
    for clear in (b"13800138000", b"138-0013-8000", "文三路".encode()):
        assert clear not in blob


def test_the_latest_erp_order_details_win() -> None:
    amended = {**ORDER_DETAILS, "amount": 300, "placed_at": at(-60).isoformat(), "vip": False}
    state, _ = run(
        [
            event(ERP, 2, Stage.CONFIRMED, 60, order=amended),
            event(ERP, 1, Stage.PLACED, 0, order=ORDER_DETAILS),
            event(CRM, 1, Stage.PLACED, 0, order={**ORDER_DETAILS, "amount": 1}),  # not master
        ]
    )
    assert state.facts is not None
    assert (state.facts.amount, state.facts.vip) == ("300", False)
    assert state.facts.placed_at_us == int(at(-60).timestamp()) * 1_000_000


def test_tracking_from_logistics_beats_the_erp() -> None:
    state, _ = run(
        [
            event(LOG, 1, Stage.SHIPPED, 100, tracking={"carrier": "SF", "tracking_no": "SF1"}),
            event(ERP, 1, Stage.SHIPPED, 200, tracking={"carrier": "ZTO", "tracking_no": "Z9"}),
            event(LOG, 2, Stage.IN_TRANSIT, 300, tracking={"location": "杭州"}),  # no number
        ]
    )
    assert (state.carrier, state.tracking_no) == ("SF", "SF1")
    state, _ = run(
        [event(ERP, 1, Stage.SHIPPED, 200, tracking={"carrier": "ZTO", "tracking_no": "Z9"})]
    )
    assert (state.carrier, state.tracking_no) == ("ZTO", "Z9")


# --- serialisation --------------------------------------------------------------------------


def test_round_trip_of_a_full_order() -> None:
    state, _ = run(full_order())
    raw = orjson.loads(orjson.dumps(state.to_json()))
    assert OrderState.from_json(raw) == state
    assert OrderState.from_json(raw).to_json() == state.to_json()


def test_a_typical_full_order_fits_in_one_kib() -> None:
    state, _ = run(full_order())
    size = len(orjson.dumps(state.to_json()))
    assert size <= 1024, size
    shipped, _ = run(full_order()[:13])  # an open order mid-way: shipped, carrier picked up
    assert len(orjson.dumps(shipped.to_json())) <= 800


# --- eviction -------------------------------------------------------------------------------


def test_eviction_of_terminal_orders_after_the_retention() -> None:
    state, _ = run(full_order())
    last = at(136800)  # ERP closed; delivered (terminal) at 106200
    assert not is_evictable(state, last + timedelta(days=35) - timedelta(microseconds=1))
    assert is_evictable(state, last + timedelta(days=35))
    assert is_evictable(state, last + timedelta(days=2), retention=timedelta(days=2))


def test_open_orders_are_never_evicted_and_orphans_are() -> None:
    open_order, _ = run(full_order()[:12])
    assert not is_evictable(open_order, at(0) + timedelta(days=400))
    orphan, _ = run([event(CRM, 1, Stage.PLACED, 0)])
    assert not is_evictable(orphan, at(0) + timedelta(days=34))
    assert is_evictable(orphan, at(0) + timedelta(days=35))
    assert is_evictable(OrderState("empty"), at(0))


def test_terminal_time_is_the_first_event_of_the_terminal_phase() -> None:
    _, changes = run(full_order())
    assert changes[-1].terminal_at == at(106200)  # delivered, not closed
    assert changes[-4].terminal_at is None


# --- arrival order does not matter ------------------------------------------------------------

STAGES_BY_SOURCE: dict[Source, list[Stage | Marker]] = {
    ERP: [*Stage, Marker.ALLOCATION_FAILED],
    CRM: list(Stage),
    WMS: [
        Stage.ALLOCATED,
        Stage.PICKING,
        Stage.SHIPPED,
        Stage.CANCELLED,
        Stage.RETURNED,
        Marker.ALLOCATION_FAILED,
    ],
    LOG: [
        Stage.SHIPPED,
        Stage.IN_TRANSIT,
        Stage.DELIVERED,
        Stage.RETURNED,
        Marker.DELIVERY_EXCEPTION,
    ],
}


@st.composite
def event_sets(draw: st.DrawFn) -> list[dict[str, Any]]:
    """A fixed set of events for one order, redeliveries included."""
    events: list[dict[str, Any]] = []
    for source, kinds in STAGES_BY_SOURCE.items():
        for n in range(draw(st.integers(0 if source is not ERP else 1, 6))):
            # Few distinct times, so equal-time ties are exercised too.
            seconds = draw(st.integers(0, 40)) * 900 + draw(st.sampled_from([0, 0.5]))
            extra: dict[str, Any] = {}
            if source is ERP and draw(st.booleans()):
                extra["order"] = {**ORDER_DETAILS, "amount": draw(st.integers(1, 3))}
            if source in (ERP, LOG) and draw(st.booleans()):
                extra["tracking"] = {
                    "carrier": draw(st.sampled_from(["SF", "ZTO"])),
                    "tracking_no": "T1",
                }
            events.append(event(source, n, draw(st.sampled_from(kinds)), seconds, **extra))
    repeats = draw(st.lists(st.sampled_from(events), max_size=3))
    return events + repeats


def final_observations(changes: list[Change]) -> dict[tuple[Any, ...], Observation]:
    """The last observation emitted per key, without the `revised` flag."""
    out: dict[tuple[Any, ...], Observation] = {}
    for change in changes:
        for obs in change.observations:
            out[obs.key] = obs
    return {key: _unrevised(obs) for key, obs in out.items()}


def _unrevised(obs: Observation) -> Observation:
    return dataclasses.replace(obs, revised=False)


@settings(max_examples=300, deadline=None)
@given(events=event_sets(), data=st.data())
def test_results_do_not_depend_on_arrival_order(
    events: list[dict[str, Any]], data: st.DataObject
) -> None:
    state, changes = run(events)
    shuffled = data.draw(st.permutations(events))
    other, other_changes = run(shuffled)
    assert without_ids(other) == without_ids(state)
    assert other.consistent == state.consistent
    assert other.disagreeing() == state.disagreeing()
    assert final_observations(other_changes) == final_observations(changes)
    assert final_observations(changes) == {o.key: o for o in observations_of(state)}


@settings(max_examples=200, deadline=None)
@given(events=event_sets(), data=st.data())
def test_in_order_sources_emit_each_observation_once(
    events: list[dict[str, Any]], data: st.DataObject
) -> None:
    # Interleave the sources freely, but each source's own events in event-time order.
    shuffled = data.draw(st.permutations(events))
    by_source: dict[str, list[dict[str, Any]]] = {}
    for e in shuffled:
        by_source.setdefault(e["source"], []).append(e)
    for group in by_source.values():
        group.sort(key=lambda e: (e["occurred_at"], e["event_id"]))
    arrival = [by_source[e["source"]].pop(0) for e in shuffled]
    _, changes = run(arrival)
    keys = [obs.key for c in changes for obs in c.observations]
    assert len(keys) == len(set(keys))
    assert not any(obs.revised for c in changes for obs in c.observations)


@settings(max_examples=200, deadline=None)
@given(events=event_sets())
def test_serialisation_round_trip(events: list[dict[str, Any]]) -> None:
    state, _ = run(events)
    raw = orjson.loads(orjson.dumps(state.to_json()))
    restored = OrderState.from_json(raw)
    assert restored == state
    # and the restored state goes on exactly like the original
    more = event(CRM, 99, Stage.DELIVERED, 99_999)
    assert JOIN.apply(restored, more) == JOIN.apply(state, more)
    assert restored == state


# --- what waited in ingest counts from the event that released it ----------------------------


def test_a_view_that_waited_for_its_link_counts_from_the_link() -> None:
    # The CRM's ticket was tied to the order at 3600 s: its events of 60 and 1200 s count
    # from then, each with its own time.
    link = {"linked_us": int(at(3600).timestamp() * 1_000_000)}
    state, _ = run(
        [
            event(ERP, 1, Stage.PLACED, 0, order=ORDER_DETAILS),
            event(CRM, 1, Stage.PLACED, 60, **link),
            event(CRM, 2, Stage.ALLOCATED, 1200, **link),
            event(ERP, 2, Stage.ALLOCATED, 1800),
            event(CRM, 3, Stage.ALLOCATED, 3600),
        ]
    )
    us = {s: int(at(s).timestamp() * 1_000_000) for s in (60, 900, 1800, 3599, 3600)}
    assert state.systems[CRM].known_us == us[3600]
    assert CRM not in state.as_of(us[3599]).systems
    crm = state.as_of(us[3600]).systems[CRM]
    assert (crm.stage, crm.firsts[Phase.OPEN][0]) == (Stage.ALLOCATED, us[60])
    assert state.next_event_after(us[1800]) == us[3600]
    assert OrderState.from_json(orjson.loads(orjson.dumps(state.to_json()))) == state
    # An earlier event naming the order, read later: the view counts from it.
    JOIN.apply(state, event(CRM, 4, Stage.CONFIRMED, 900))
    assert state.systems[CRM].known_us == us[900]
