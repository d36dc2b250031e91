"""Status-refresh latency (§4.1): observations from the join, exact rolling median and p95."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.stages import Phase, Source, Stage
from streams.rules.order_state import OrderJoin, OrderState
from streams.rules.refresh_latency import (
    HISTOGRAM_BUCKETS,
    LatencyStats,
    LatencyWindow,
    Observation,
    SortedBag,
    first_at_or_past,
    measure,
)
from streams.rules.watermark import as_us
from tests.phones import PHONES
from tests.unit.test_order_state import at, event

ERP, CRM, WMS, LOG = Source.ERP, Source.CRM, Source.WMS, Source.LOGISTICS
HOUR = 3600
JOIN = OrderJoin(PHONES)


def observe(events: list[dict[str, Any]], order_id: str) -> list[Observation]:
    """Every observation emitted while applying `events` in this order."""
    state = OrderState(order_id)
    return [obs for e in events for obs in JOIN.apply(state, e).observations]


def placed(order_id: str, erp_s: float, crm_s: float, *, crm_first: bool = False) -> list[Any]:
    """ERP and CRM `placed` events of one order (CRM arriving first or second)."""
    erp = event(ERP, 1, Stage.PLACED, erp_s, order_id=order_id)
    crm = event(CRM, 1, Stage.PLACED, crm_s, order_id=order_id)
    return [crm, erp] if crm_first else [erp, crm]


def synthetic(order_id: str, latency_s: float, t1_s: float, target: Source = CRM) -> Observation:
    """An observation with a given latency that became visible at T0 + t1_s."""
    t1 = as_us(at(t1_s))
    t0 = t1 - round(latency_s * 1_000_000)
    return measure(order_id, target, Phase.OPEN, (t0, "e"), (t1, "t"))


# --- a day of orders, hand-computed -------------------------------------------------------------


def test_a_day_of_crm_latencies() -> None:
    window = LatencyWindow()
    # Orders A–E placed two hours apart; the CRM shows them 30 s, 45 s, 47 s, 10 min, 20 min later.
    day = [("A", 0, 30), ("B", 2, 45), ("C", 4, 47), ("D", 6, 600), ("E", 8, 1200)]
    for order_id, hour, latency in day:
        erp_s = hour * HOUR
        (obs,) = observe(placed(order_id, erp_s, erp_s + latency, crm_first=hour == 4), order_id)
        assert (obs.target, obs.phase, obs.latency_seconds, obs.skew) == (
            CRM,
            Phase.OPEN,
            latency,
            False,
        )
        assert window.add(obs)

    wm = at(8 * HOUR + 1800)  # 18:30; E became visible at 18:20
    assert window.stats(CRM, "24h", wm) == LatencyStats(
        5, 47.0, 1200.0, 0
    )  # p95: rank ceil(4.75)=5
    assert window.stats(CRM, "1h", wm) == LatencyStats(1, 1200.0, 1200.0, 0)

    # F: the CRM's clock shows the order a minute before the ERP placed it -> 0, skew.
    (skewed,) = observe(placed("F", 8 * HOUR + 2460, 8 * HOUR + 2400), "F")
    assert (skewed.latency_seconds, skewed.skew) == (0.0, True)
    window.add(skewed)
    wm = at(9 * HOUR)  # 19:00
    assert window.stats(CRM, "24h", wm) == LatencyStats(6, 46.0, 1200.0, 1)  # (45 + 47) / 2
    assert window.stats(CRM, "1h", wm) == LatencyStats(2, 600.0, 1200.0, 1)  # E and F

    # Next day 10:00:30: A (visible at 10:00:30 the day before) has just left the 24 h window.
    wm = at(24 * HOUR + 30)
    assert window.stats(CRM, "24h", wm) == LatencyStats(5, 47.0, 1200.0, 1)
    assert window.stats(CRM, "1h", wm) == LatencyStats(0, None, None, 0)
    assert window.stats(WMS, "24h", wm).count == 0


def test_wms_and_logistics_are_reported_too() -> None:
    window = LatencyWindow()
    events = [
        event(ERP, 1, Stage.ALLOCATED, 600, order_id="A"),
        event(WMS, 1, Stage.ALLOCATED, 605, order_id="A"),
        event(WMS, 2, Stage.SHIPPED, 7200, order_id="A"),
        event(ERP, 2, Stage.SHIPPED, 7260, order_id="A"),
        event(LOG, 1, Stage.SHIPPED, 7260 + 4 * HOUR, order_id="A"),
    ]
    observations = observe(events, "A")
    got = {(o.target, o.phase): (o.latency_seconds, o.skew) for o in observations}
    assert got == {
        (WMS, Phase.FULFILLING): (5.0, False),
        (WMS, Phase.SHIPPED): (0.0, True),
        (LOG, Phase.SHIPPED): (14400.0, False),
    }
    for obs in observations:
        window.add(obs)
    wm = at(7260 + 4 * HOUR)
    assert window.stats(WMS, "24h", wm) == LatencyStats(2, 2.5, 5.0, 1)
    assert window.stats(LOG, "1h", wm) == LatencyStats(1, 14400.0, 14400.0, 0)


def test_erp_and_target_arrival_order_give_the_same_observation() -> None:
    after = observe(placed("A", 0, 47), "A")
    before = observe(placed("A", 0, 47, crm_first=True), "A")
    assert after == before
    (obs,) = after
    assert (obs.t0, obs.t1, obs.erp_event_id, obs.target_event_id) == (
        at(0),
        at(47),
        "erp-A-01",
        "crm-A-01",
    )


def test_each_observation_is_produced_once() -> None:
    events = [
        event(ERP, 1, Stage.PLACED, 0, order_id="A"),
        event(CRM, 1, Stage.PLACED, 30, order_id="A"),
        event(CRM, 2, Stage.CONFIRMED, 60, order_id="A"),  # later, same phase: nothing new
        event(ERP, 2, Stage.CONFIRMED, 90, order_id="A"),  # the ERP stays in `open`: nothing
        event(CRM, 3, Stage.ALLOCATED, 100, order_id="A"),  # past open: open is already known
        event(CRM, 1, Stage.PLACED, 30, order_id="A"),  # a redelivery
    ]
    observations = observe(events, "A")
    assert [(o.phase, o.latency_seconds) for o in observations] == [(Phase.OPEN, 30.0)]


def test_a_target_that_skips_phases_shows_them_with_its_first_later_event() -> None:
    events = [
        event(ERP, 1, Stage.PLACED, 0, order_id="A"),
        event(ERP, 2, Stage.ALLOCATED, 600, order_id="A"),
        event(ERP, 3, Stage.SHIPPED, 3600, order_id="A"),
        event(CRM, 1, Stage.SHIPPED, 3900, order_id="A"),  # the CRM's first word on the order
    ]
    got = {o.phase: o.latency_seconds for o in observe(events, "A") if o.target is CRM}
    assert got == {Phase.OPEN: 3900.0, Phase.FULFILLING: 3300.0, Phase.SHIPPED: 300.0}


def test_off_line_phases_compare_only_equal() -> None:
    events = [
        event(ERP, 1, Stage.ALLOCATED, 0, order_id="A"),
        event(ERP, 2, Stage.CANCELLED, 600, order_id="A"),
        event(CRM, 1, Stage.RETURNED, 700, order_id="A"),  # not a cancel
        event(WMS, 1, Stage.CANCELLED, 900, order_id="A"),
        event(CRM, 2, Stage.CANCELLED, 1200, order_id="A"),
    ]
    got = {(o.target, o.phase): o.latency_seconds for o in observe(events, "A")}
    assert got == {(WMS, Phase.CANCELLED): 300.0, (CRM, Phase.CANCELLED): 600.0}


def test_systems_out_of_scope_give_no_observation() -> None:
    events = [
        event(ERP, 1, Stage.PLACED, 0, order_id="A"),
        event(WMS, 1, Stage.ALLOCATED, 10, order_id="A"),  # the WMS is not in scope for open
        event(ERP, 2, Stage.CANCELLED, 40, order_id="A"),  # cancelled while open: nor here
        event(WMS, 2, Stage.CANCELLED, 50, order_id="A"),
    ]
    assert observe(events, "A") == []
    events = [
        event(ERP, 1, Stage.ALLOCATED, 0, order_id="B"),
        event(LOG, 1, Stage.SHIPPED, 10, order_id="B"),  # logistics not in scope for fulfilling
        event(WMS, 1, Stage.SHIPPED, 20, order_id="B"),
        event(ERP, 2, Stage.DELIVERED, 30, order_id="B"),  # the WMS not for delivered
    ]
    got = {(o.target, o.phase) for o in observe(events, "B")}
    assert got == {(WMS, Phase.FULFILLING)}


def test_an_earlier_event_arriving_late_revises_the_observation() -> None:
    window = LatencyWindow()
    first = observe(
        [
            event(ERP, 1, Stage.SHIPPED, 0, order_id="A"),
            event(CRM, 2, Stage.SHIPPED, 600, order_id="A"),
        ],
        "A",
    )
    state = OrderState("A")
    for e in [
        event(ERP, 1, Stage.SHIPPED, 0, order_id="A"),
        event(CRM, 2, Stage.SHIPPED, 600, order_id="A"),
    ]:
        JOIN.apply(state, e)
    for obs in first:
        window.add(obs)
    late = JOIN.apply(state, event(CRM, 1, Stage.IN_TRANSIT, 300, order_id="A")).observations
    shipped = [o for o in late if o.phase is Phase.SHIPPED]
    assert [(o.latency_seconds, o.revised) for o in shipped] == [(300.0, True)]
    for obs in late:
        window.add(obs)
    stats = window.stats(CRM, "24h", at(3600))
    assert (stats.count, stats.median) == (1, 300.0)
    assert not window.add(shipped[0])  # the same value again changes nothing


def test_an_observation_counts_once_the_watermark_passed_its_t1() -> None:
    window = LatencyWindow()
    window.expire(at(0))
    window.add(synthetic("A", 47, t1_s=120))
    assert window.stats(CRM, "1h", at(119)).count == 0
    assert window.stats(CRM, "1h", at(120)) == LatencyStats(1, 47.0, 47.0, 0)
    assert window.stats(CRM, "1h", at(120 + HOUR - 1)).count == 1
    assert window.stats(CRM, "1h", at(120 + HOUR)).count == 0  # t1 == wm - 1h: out
    assert window.stats(CRM, "24h", at(120 + HOUR)).count == 1
    window.expire(at(0))  # the watermark never goes back
    assert window.stats(CRM, "24h", at(120 + 24 * HOUR)).count == 0
    assert len(window) == 0


def test_an_observation_already_out_of_every_window_is_dropped() -> None:
    window = LatencyWindow()
    window.expire(at(48 * HOUR))
    window.add(synthetic("A", 5, t1_s=0))
    assert len(window) == 0
    assert window.stats(CRM, "24h", at(48 * HOUR)).count == 0


def test_median_of_an_even_count_and_nearest_rank_p95() -> None:
    window = LatencyWindow()
    for i in range(1, 21):
        window.add(synthetic(f"O{i}", i, t1_s=i))
    # 1..20 s: median (10 + 11) / 2; p95 rank ceil(0.95 * 20) = 19.
    assert window.stats(CRM, "1h", at(60)) == LatencyStats(20, 10.5, 19.0, 0)
    window.add(synthetic("O21", 21, t1_s=21))
    # 21 values: median the 11th; p95 rank ceil(19.95) = 20.
    assert window.stats(CRM, "1h", at(60)) == LatencyStats(21, 11.0, 20.0, 0)


def test_latency_is_exact_to_the_microsecond() -> None:
    t0 = as_us(at(0))
    obs = measure("A", CRM, Phase.OPEN, (t0, "e"), (t0 + 47_000_001, "t"))
    assert obs.latency_us == 47_000_001
    assert obs.latency_seconds == 47.000001
    window = LatencyWindow()
    window.add(obs)
    window.add(synthetic("B", 47.000003, t1_s=60))
    assert window.stats(CRM, "1h", at(60)).median == 47.000002


def test_window_round_trip() -> None:
    window = LatencyWindow()
    for i, latency in enumerate([30, 45, 47, 600, 1200, 0]):
        window.add(synthetic(f"O{i}", latency, t1_s=i * HOUR))
    window.expire(at(3 * HOUR))  # the last two are still ahead of the watermark
    raw = orjson.loads(orjson.dumps(window.to_json()))
    restored = LatencyWindow.from_json(raw)
    for wm in (at(3 * HOUR), at(6 * HOUR), at(27 * HOUR)):
        for name in ("1h", "24h"):
            assert restored.stats(CRM, name, wm) == window.stats(CRM, name, wm)
    assert LatencyWindow.from_json(None).to_json() == {"w": None, "e": []}


def test_histogram_buckets_resolve_seconds_and_hours() -> None:
    assert list(HISTOGRAM_BUCKETS) == sorted(set(HISTOGRAM_BUCKETS))
    assert {5.0, 10.0, 14400.0, 28800.0} <= set(HISTOGRAM_BUCKETS)


def test_first_at_or_past() -> None:
    firsts = {Phase.SHIPPED: (30, "s"), Phase.DELIVERED: (20, "d"), Phase.RETURNED: (10, "r")}
    assert first_at_or_past(firsts, Phase.OPEN) == (20, "d")
    assert first_at_or_past(firsts, Phase.DELIVERED) == (20, "d")
    assert first_at_or_past(firsts, Phase.RETURNED) == (10, "r")
    assert first_at_or_past(firsts, Phase.CANCELLED) is None


def test_unknown_window_name() -> None:
    with pytest.raises(KeyError, match="7d"):
        LatencyWindow().stats(CRM, "7d", at(0))


# --- exactness against brute force --------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(ops=st.lists(st.tuples(st.integers(0, 50), st.integers(-100, 500)), max_size=200))
def test_sorted_bag_matches_a_sorted_list(ops: list[tuple[int, int]]) -> None:
    bag = SortedBag(load=4)
    model: list[int] = []
    for action, value in ops:
        if action < 35 or not model:
            bag.add(value)
            model.append(value)
        else:
            victim = model[value % len(model)]
            bag.remove(victim)
            model.remove(victim)
        model.sort()
        assert list(bag) == model
        assert len(bag) == len(model)
    for k, value in enumerate(model):
        assert bag.kth(k) == value
    with pytest.raises(ValueError, match="not in bag"):
        bag.remove(10_000)


def _brute(values: list[int]) -> tuple[int, float | None, float | None]:
    values = sorted(values)
    n = len(values)
    if not n:
        return 0, None, None
    mid = n // 2
    median = values[mid] if n % 2 else (values[mid - 1] + values[mid]) / 2
    rank = -(-95 * n // 100)
    return n, median, values[rank - 1]


@settings(max_examples=150, deadline=None)
@given(
    items=st.lists(
        st.tuples(
            st.integers(0, 30),  # order
            st.integers(0, 48 * 4),  # t1 in quarter hours
            st.integers(-5, 2000),  # latency in seconds (negative: skew)
            st.integers(0, 48 * 4),  # watermark step after this add
        ),
        max_size=60,
    )
)
def test_window_stats_match_brute_force(items: list[tuple[int, int, int, int]]) -> None:
    window = LatencyWindow()
    live: dict[str, tuple[int, int]] = {}  # key -> (t1 s, latency s) as last added
    wm = 0
    for order, quarter, latency, step in items:
        t1 = quarter * 900
        obs = synthetic(f"O{order}", latency, t1_s=t1)
        window.add(obs)
        live[f"O{order}"] = (t1, latency)
        wm = max(wm, step * 900)
        for name, span in (("1h", HOUR), ("24h", 24 * HOUR)):
            inside = [max(0, lat) for t, lat in live.values() if wm - span < t <= wm]
            skews = sum(1 for t, lat in live.values() if wm - span < t <= wm and lat < 0)
            n, median, p95 = _brute(inside)
            stats = window.stats(CRM, name, at(wm))
            assert (stats.count, stats.skew_count) == (n, skews)
            assert stats.median == median
            assert stats.p95 == p95
    assert LatencyStats(1, 2.0, 3.0, 0).as_dict() == {
        "count": 1,
        "median": 2.0,
        "p95": 3.0,
        "skew_count": 0,
    }
