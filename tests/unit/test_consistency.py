"""Consistency ratio (§4.2): population with the 24 h terminal grace, breakdown, merging."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.stages import Source, Stage
from streams.rules.consistency import ConsistencyCounts, ConsistencyTracker
from streams.rules.order_state import OrderJoin, OrderState
from streams.rules.refresh_latency import TARGETS
from tests.phones import PHONES
from tests.unit.test_order_state import at, event, event_sets

ERP, CRM, WMS, LOG = Source.ERP, Source.CRM, Source.WMS, Source.LOGISTICS
H = 3600
JOIN = OrderJoin(PHONES)


def orders() -> dict[str, list[dict[str, Any]]]:
    """Seven orders around T0 (10:00), hand-labelled with their standing at 12:00."""
    e = event
    return {
        # open, CRM agrees: consistent
        "A": [e(ERP, 1, Stage.PLACED, 0, order_id="A"), e(CRM, 1, Stage.PLACED, 30, order_id="A")],
        # fulfilling, the WMS silent: inconsistent (wms)
        "B": [
            e(ERP, 1, Stage.ALLOCATED, 600, order_id="B"),
            e(CRM, 1, Stage.ALLOCATED, 700, order_id="B"),
        ],
        # shipped, CRM and logistics silent: inconsistent (crm, logistics)
        "C": [
            e(WMS, 1, Stage.SHIPPED, 1100, order_id="C"),
            e(ERP, 1, Stage.SHIPPED, 1200, order_id="C"),
        ],
        # delivered at 11:00, all agree: consistent, terminal, counted for 24 h
        "D": [
            e(LOG, 1, Stage.DELIVERED, 3500, order_id="D"),
            e(ERP, 1, Stage.DELIVERED, 3600, order_id="D"),
            e(CRM, 1, Stage.DELIVERED, 3700, order_id="D"),
        ],
        # cancelled 25 h before T0: out of the population
        "E": [
            e(ERP, 1, Stage.PLACED, -48 * H, order_id="E"),
            e(ERP, 2, Stage.CANCELLED, -25 * H, order_id="E"),
            e(CRM, 1, Stage.CANCELLED, -25 * H + 60, order_id="E"),
        ],
        # only the CRM knows it: not in the population
        "F": [e(CRM, 1, Stage.PLACED, 0, order_id="F")],
        # delivered an hour before T0, the CRM still says shipped: inconsistent (crm)
        "G": [
            e(LOG, 1, Stage.DELIVERED, -2 * H, order_id="G"),
            e(CRM, 1, Stage.SHIPPED, -3 * H, order_id="G"),
            e(ERP, 1, Stage.DELIVERED, -H, order_id="G"),
        ],
    }


def feed(tracker: ConsistencyTracker) -> dict[str, OrderState]:
    """Apply every order's events, recording each change in the tracker."""
    states = {}
    for order_id, events in orders().items():
        state = states[order_id] = OrderState(order_id)
        for e in events:
            tracker.apply(JOIN.apply(state, e))
    return states


def test_ratio_population_and_breakdown_by_hand() -> None:
    tracker = ConsistencyTracker()
    states = feed(tracker)
    assert len(tracker) == 6  # before any watermark, E still counts; F never does
    assert tracker.expire(at(2 * H)) == 1  # E: terminal at -25 h
    assert "E" not in tracker
    # A B C D G: consistent A, D
    assert tracker.ratio() == 2 / 5
    assert tracker.breakdown() == {CRM: 2, WMS: 1, LOG: 1}  # CRM: C, G; WMS: B; LOG: C
    assert tracker.counts() == ConsistencyCounts(5, 2, {CRM: 2, WMS: 1, LOG: 1})

    # G turned terminal at 09:00: it leaves at 09:00 the next day, D at 11:00.
    assert tracker.expire(at(23 * H) - timedelta(microseconds=1)) == 0
    assert tracker.expire(at(23 * H)) == 1
    assert tracker.ratio() == 2 / 4
    assert tracker.expire(at(25 * H)) == 1
    assert tracker.ratio() == 1 / 3
    assert tracker.breakdown() == {CRM: 1, WMS: 1, LOG: 1}

    # C converges.
    for e in [
        event(CRM, 1, Stage.SHIPPED, 25 * H, order_id="C"),
        event(LOG, 1, Stage.SHIPPED, 25 * H + 60, order_id="C"),
    ]:
        tracker.apply(JOIN.apply(states["C"], e))
    assert tracker.ratio() == 2 / 3

    # A late event on an order that already left keeps it out ...
    tracker.apply(JOIN.apply(states["D"], event(CRM, 2, Stage.CLOSED, 25 * H, order_id="D")))
    assert len(tracker) == 3
    # ... but a return is a new terminal change the systems must show: back in, for 24 h.
    tracker.apply(JOIN.apply(states["D"], event(ERP, 2, Stage.RETURNED, 25 * H, order_id="D")))
    assert len(tracker) == 4
    assert tracker.ratio() == 2 / 4
    assert tracker.breakdown() == {CRM: 1, WMS: 2, LOG: 0}  # D: CRM still delivered, WMS silent; B


def test_counts_merge_across_workers() -> None:
    whole, left, right = ConsistencyTracker(), ConsistencyTracker(), ConsistencyTracker()
    states = feed(whole)
    for i, state in enumerate(states.values()):
        (left if i % 2 else right).update_from(state)
    merged = left.counts() + right.counts()
    assert merged == whole.counts()
    assert merged.ratio == whole.ratio()
    assert ConsistencyCounts().ratio is None
    assert ConsistencyTracker().ratio() is None


def test_rebuild_from_the_states_matches_the_incremental_figures() -> None:
    tracker = ConsistencyTracker()
    states = feed(tracker)
    tracker.expire(at(2 * H))
    rebuilt = ConsistencyTracker()
    rebuilt.rebuild(states.values(), at(2 * H))
    assert rebuilt.counts() == tracker.counts()
    assert rebuilt.watermark == tracker.watermark
    for later in (at(23 * H), at(25 * H)):
        assert rebuilt.expire(later) == tracker.expire(later)
        assert rebuilt.counts() == tracker.counts()


def test_update_and_remove() -> None:
    tracker = ConsistencyTracker()
    tracker.update("A", True, False, [CRM, WMS], None)
    tracker.update("B", True, True, [], at(0))
    assert tracker.counts() == ConsistencyCounts(2, 1, {CRM: 1, WMS: 1, LOG: 0})
    tracker.update("A", True, True, [], None)  # converged
    assert tracker.ratio() == 1.0
    tracker.update("A", False, False, [], None)  # left the population
    tracker.remove("B")  # evicted / partition revoked
    tracker.remove("nobody")
    assert tracker.counts() == ConsistencyCounts(0, 0, dict.fromkeys(TARGETS, 0))
    assert tracker.expire(at(48 * H)) == 0  # B's heap entry is stale: nothing happens
    assert tracker.expire(at(0)) == 0  # never backwards


# --- against a brute-force model ----------------------------------------------------------------

_update = st.tuples(
    st.just("update"),
    st.integers(0, 6),  # order
    st.booleans(),  # in population
    st.sets(st.sampled_from(TARGETS)),  # disagreeing
    st.one_of(st.none(), st.integers(0, 96)),  # terminal at, hours
)
_expire = st.tuples(st.just("expire"), st.integers(0, 120))  # watermark, hours
_remove = st.tuples(st.just("remove"), st.integers(0, 6))


@settings(max_examples=300, deadline=None)
@given(ops=st.lists(st.one_of(_update, _update, _expire, _remove), max_size=60))
def test_tracker_matches_a_recount(ops: list[tuple[Any, ...]]) -> None:
    tracker = ConsistencyTracker()
    last: dict[str, tuple[bool, frozenset[Source], int | None]] = {}
    wm: int | None = None
    for op in ops:
        if op[0] == "update":
            _, n, in_pop, disagreeing, terminal = op
            order_id = f"O{n}"
            terminal_at = None if terminal is None else at(terminal * H)
            tracker.update(order_id, in_pop, not disagreeing, disagreeing, terminal_at)
            last[order_id] = (in_pop, frozenset(disagreeing), terminal)
        elif op[0] == "remove":
            tracker.remove(f"O{op[1]}")
            last.pop(f"O{op[1]}", None)
        else:
            wm = op[1] if wm is None else max(wm, op[1])
            tracker.expire(at(wm * H))
        members = [
            disagreeing
            for in_pop, disagreeing, terminal in last.values()
            if in_pop and (terminal is None or wm is None or terminal + 24 > wm)
        ]
        expected = ConsistencyCounts(
            len(members),
            sum(1 for d in members if not d),
            {s: sum(1 for d in members if s in d) for s in TARGETS},
        )
        assert tracker.counts() == expected


@settings(max_examples=100, deadline=None)
@given(sets=st.lists(event_sets(), min_size=1, max_size=4), data=st.data())
def test_incremental_equals_rebuild_for_any_arrival_order(
    sets: list[list[dict[str, Any]]], data: st.DataObject
) -> None:
    arrivals = [(f"O{i}", e) for i, events in enumerate(sets) for e in events]
    arrivals = data.draw(st.permutations(arrivals))
    wm = at(data.draw(st.integers(0, 60)) * H)
    tracker = ConsistencyTracker()
    states: dict[str, OrderState] = {}
    for order_id, e in arrivals:
        state = states.setdefault(order_id, OrderState(order_id))
        tracker.apply(JOIN.apply(state, e))
    tracker.expire(wm)
    rebuilt = ConsistencyTracker()
    rebuilt.rebuild(states.values(), wm)
    assert tracker.counts() == rebuilt.counts()
