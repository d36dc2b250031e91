"""Duplicate-order rules: fingerprint, sliding window, expiry, anomaly and decisions."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.anomalies import (
    Anomaly,
    AnomalyState,
    AnomalyType,
    CommandKind,
    Decision,
    DecisionKind,
    Route,
    Severity,
    Team,
)
from schemas.events import ChangeEvent, OrderDetails
from schemas.routing import default_routing
from streams.rules.dedupe import (
    DedupeRules,
    DuplicatePair,
    FingerprintWindow,
    apply_duplicate_decision,
    duplicate_anomaly,
    duplicate_anomaly_id,
)
from streams.rules.routing import RoutingFacts, route

T0 = datetime(2024, 11, 11, 15, 0, tzinfo=UTC)
MIN = timedelta(minutes=1)
SEC = timedelta(seconds=1)
ROUTE = Route(team=Team.SALES, rule="duplicate_order->sales")
RULES = DedupeRules()


def order(
    customer: str = "C-1001",
    skus: tuple[str, ...] = ("PUMP-0042-BLUE",),
    *,
    channel: str = "website",
    placed_at: datetime | None = None,
    ship_to: str | None = None,
) -> OrderDetails:
    return OrderDetails(
        customer_id=customer,
        channel=channel,
        lines=[{"sku": sku, "qty": 1, "unit_price": "9.90"} for sku in skus],
        amount="9.90",
        currency="CNY",
        placed_at=placed_at,
        ship_to=ship_to,
    )


def see(
    state: FingerprintWindow,
    order_id: str,
    placed_at: datetime,
    *,
    channel: str = "website",
    event_id: str | None = None,
    watermark: datetime | None = None,
    rules: DedupeRules = RULES,
) -> list[DuplicatePair]:
    """One ERP order-created event for the default customer and parts."""
    return rules.observe(
        state,
        order_id,
        order(channel=channel, placed_at=placed_at),
        event_id=event_id or f"ev-{order_id}",
        status="CREATED",
        occurred_at=placed_at + 2 * SEC,
        watermark=watermark,
    )


def keys(pairs: list[DuplicatePair]) -> set[tuple[str, str]]:
    return {p.key for p in pairs}


def restarted(state: FingerprintWindow) -> FingerprintWindow:
    """The state as a worker restored from the changelog would see it."""
    return FingerprintWindow.from_json(orjson.loads(orjson.dumps(state.to_json())))


# Fingerprint


def test_fingerprint_is_short_hex() -> None:
    fp = RULES.fingerprint(order())
    assert len(fp) == 16
    assert int(fp, 16) >= 0


@pytest.mark.parametrize(
    ("customer", "skus"),
    [
        ("C-1001", ("PUMP-0042-BLUE", "VALVE-77-X")),
        ("C-1001", ("VALVE-77-X", "PUMP-0042-BLUE")),
        ("  c-1001 ", ("pump-0042-blue", " valve-77-x")),
        ("C-\u30001001", ("PUMP- 0042-RED", "VALVE-77-Y\t")),
        ("Ｃ－１００１", ("ＰＵＭＰ-0042", "VALVE-77")),
    ],
)
def test_fingerprint_ignores_sku_order_case_whitespace_and_width(
    customer: str, skus: tuple[str, ...]
) -> None:
    reference = order("C-1001", ("PUMP-0042-BLUE", "VALVE-77-X"))
    assert RULES.fingerprint(order(customer, skus)) == RULES.fingerprint(reference)


def test_fingerprint_ignores_key_order() -> None:
    raw: dict[str, Any] = {
        "customer_id": "C-1001",
        "channel": "wechat",
        "lines": [{"sku": "PUMP-0042-BLUE", "qty": 2, "unit_price": "9.90", "note": "x"}],
        "amount": "19.80",
        "currency": "CNY",
    }
    shuffled = {k: raw[k] for k in reversed(raw)}
    shuffled["lines"] = [{k: line[k] for k in reversed(line)} for line in raw["lines"]]
    assert RULES.fingerprint(OrderDetails.model_validate(shuffled)) == RULES.fingerprint(
        OrderDetails.model_validate_json(orjson.dumps(raw))
    )


def test_fingerprint_of_multi_line_orders_is_the_set_of_sku_prefixes() -> None:
    # Lines sharing a prefix collapse; what follows the 8th character, qty and price do not count.
    two_lines = order(skus=("PUMP-004-A", "PUMP-004-B", "HOSE-1234"))
    assert RULES.fingerprint(two_lines) == RULES.fingerprint(order(skus=("HOSE-1234", "PUMP-004")))
    assert RULES.fingerprint(two_lines) != RULES.fingerprint(order(skus=("PUMP-004-A",)))
    assert RULES.fingerprint(two_lines) != RULES.fingerprint(order(skus=("PUMP-005-A", "HOSE-1")))


def test_fingerprint_tells_customers_and_parts_apart() -> None:
    base = RULES.fingerprint(order())
    assert RULES.fingerprint(order(customer="C-1002")) != base
    assert RULES.fingerprint(order(skus=("PUMP-0142-BLUE",))) != base


def test_ship_to_counts_only_when_configured_and_normalised() -> None:
    with_ship_to = DedupeRules(include_ship_to=True)
    home = order(ship_to="上海市浦东新区 张江路 1号, 3-201")
    same_home = order(ship_to="上海市浦东新区张江路1号，3—201 ")
    office = order(ship_to="北京市海淀区中关村大街 27号")
    assert with_ship_to.fingerprint(home) == with_ship_to.fingerprint(same_home)
    assert with_ship_to.fingerprint(home) != with_ship_to.fingerprint(office)
    assert with_ship_to.fingerprint(home) != with_ship_to.fingerprint(order())
    assert RULES.fingerprint(home) == RULES.fingerprint(office) == RULES.fingerprint(order())


def test_settings_open_new_keys() -> None:
    assert DedupeRules(sku_prefix_len=6).fingerprint(order()) != RULES.fingerprint(order())
    assert DedupeRules(include_ship_to=True).fingerprint(order()) != RULES.fingerprint(order())


@pytest.mark.parametrize(
    "kwargs", [{"window": timedelta(0)}, {"sku_prefix_len": 0}, {"max_orders": 1}]
)
def test_nonsense_settings_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="must be"):
        DedupeRules(**kwargs)


# Sliding window


def test_bucket_edge_pair_matches_where_bucket_floor_key_misses_it() -> None:
    before, after = T0 - 10 * SEC, T0 + 10 * SEC  # 14:59:50 and 15:00:10
    state = FingerprintWindow()
    assert see(state, "A", before) == []
    [pair] = see(state, "B", after)
    assert pair.key == ("A", "B")
    assert pair.gap == 20 * SEC
    assert RULES.bucket_floor_key(order(), before) != RULES.bucket_floor_key(order(), after)
    assert RULES.bucket_floor_key(order(), T0) == RULES.bucket_floor_key(order(), after)


@pytest.mark.parametrize(
    ("gap", "matches"),
    [
        (15 * MIN, True),
        (15 * MIN + timedelta(milliseconds=1), False),
        (15 * MIN - timedelta(microseconds=1), True),
    ],
)
@pytest.mark.parametrize("reversed_arrival", [False, True])
def test_window_boundary_is_inclusive(
    gap: timedelta, matches: bool, reversed_arrival: bool
) -> None:
    arrivals = [("A", T0), ("B", T0 + gap)]
    if reversed_arrival:
        arrivals.reverse()
    state = FingerprintWindow()
    found = [pair for order_id, at in arrivals for pair in see(state, order_id, at)]
    assert keys(found) == ({("A", "B")} if matches else set())


def test_window_compares_instants_across_offsets() -> None:
    shanghai = timezone(timedelta(hours=8))
    state = FingerprintWindow()
    see(state, "A", T0)
    [pair] = see(state, "B", (T0 + 15 * MIN).astimezone(shanghai))
    assert pair.gap == 15 * MIN


def test_reversed_arrival_finds_the_same_pair() -> None:
    state = FingerprintWindow()
    assert see(state, "B", T0 + 3 * MIN, channel="wechat") == []
    [pair] = see(state, "A", T0, channel="website")
    assert (pair.first.order_id, pair.second.order_id) == ("A", "B")
    assert pair.second.channel == "wechat"


def test_three_way_duplicates_raise_each_pair_once() -> None:
    state = FingerprintWindow()
    found = see(state, "A", T0) + see(state, "C", T0 + 9 * MIN) + see(state, "B", T0 + 4 * MIN)
    assert sorted(p.key for p in found) == [("A", "B"), ("A", "C"), ("B", "C")]
    assert see(state, "B", T0 + 4 * MIN, event_id="ev-B-again") == []


def test_same_order_resent_or_updated_is_not_a_duplicate() -> None:
    state = FingerprintWindow()
    assert see(state, "A", T0) == []
    assert see(state, "A", T0) == []  # redelivered
    assert see(state, "A", T0 + MIN, event_id="ev-A-update") == []  # updated
    assert list(state.orders) == ["A"]
    assert state.raised == set()


@pytest.mark.parametrize("gap_minutes", [25, 40, 60])
def test_same_customer_and_parts_far_apart_is_not_flagged(gap_minutes: int) -> None:
    state = FingerprintWindow()
    assert see(state, "A", T0) == []
    assert see(state, "B", T0 + gap_minutes * MIN) == []


def test_same_customer_other_parts_lands_elsewhere() -> None:
    assert RULES.fingerprint(order(skus=("HOSE-9999",))) != RULES.fingerprint(order())


def test_different_orders_pair_even_with_identical_event_data() -> None:
    # Two order ids are two orders, whatever else they share; only the order id means "the same".
    state = FingerprintWindow()
    see(state, "A", T0, event_id="ev-1")
    assert keys(see(state, "B", T0, event_id="ev-1")) == {("A", "B")}


def test_observe_event_reads_an_erp_order_created_event() -> None:
    def created(ref: str, at: datetime) -> ChangeEvent:
        return ChangeEvent(
            event_id=f"erp-{ref}",
            source="erp",
            order_ref=ref,
            status="CREATED",
            occurred_at=at + 5 * SEC,
            order=order(channel="douyin", placed_at=at),
        )

    state = FingerprintWindow()
    assert RULES.observe_event(state, created("SO-1", T0)) == []
    [pair] = RULES.observe_event(state, created("SO-2", T0 + MIN))
    assert pair.key == ("SO-1", "SO-2")
    assert (pair.second.event_id, pair.second.source, pair.second.placed_at) == (
        "erp-SO-2",
        "erp",
        T0 + MIN,
    )
    no_order = ChangeEvent(
        event_id="e", source="erp", order_ref="SO-3", status="PAID", occurred_at=T0
    )
    with pytest.raises(ValueError, match="no order details"):
        RULES.observe_event(state, no_order)


def test_placed_at_defaults_to_occurred_at() -> None:
    state = FingerprintWindow()
    RULES.observe(state, "A", order(), event_id="e", status="CREATED", occurred_at=T0)
    assert state.orders["A"].placed_at == T0


# Expiry and restarts


def test_expire_empties_the_state_once_the_watermark_is_past_the_window() -> None:
    state = FingerprintWindow()
    see(state, "A", T0)
    see(state, "B", T0 + 5 * MIN)
    assert RULES.expire(state, T0 + 15 * MIN) is False  # A can still meet an order at 15:15
    assert set(state.orders) == {"A", "B"}
    assert RULES.expire(state, T0 + 15 * MIN + SEC) is False
    assert set(state.orders) == {"B"}
    assert state.raised == {("A", "B")}  # B is still held: a redelivered A must not re-raise
    assert RULES.expire(state, T0 + 20 * MIN + SEC) is True
    assert state == FingerprintWindow()


def test_redelivery_after_partner_expired_does_not_reraise() -> None:
    state = FingerprintWindow()
    see(state, "A", T0)
    see(state, "B", T0 + 10 * MIN)
    RULES.expire(state, T0 + 16 * MIN)
    assert see(state, "A", T0, watermark=T0 + 16 * MIN) == []


def test_order_behind_the_watermark_misses_partners_already_expired() -> None:
    # The watermark promises nothing placed before it is still to come; lateness goes in it.
    state = FingerprintWindow()
    see(state, "A", T0)
    assert see(state, "B", T0 + 14 * MIN, watermark=T0 + 16 * MIN) == []
    assert see(state, "C", T0 + 20 * MIN, watermark=T0 + 16 * MIN) != []


def test_restart_from_json_never_reraises_a_pair() -> None:
    state = FingerprintWindow()
    see(state, "A", T0)
    see(state, "B", T0 + 2 * MIN)
    state = restarted(state)
    assert see(state, "A", T0) == []
    assert see(state, "B", T0 + 2 * MIN) == []
    assert keys(see(state, "C", T0 + 4 * MIN)) == {("A", "C"), ("B", "C")}
    state = restarted(state)
    RULES.expire(state, T0 + 18 * MIN)  # A and B gone, C holds the pairs it is in
    state = restarted(state)
    assert see(state, "A", T0) == []


def test_state_json_is_compact_plain_and_exact() -> None:
    shanghai = timezone(timedelta(hours=8))
    state = FingerprintWindow()
    see(state, "B", (T0 + timedelta(microseconds=1)).astimezone(shanghai))
    see(state, "A", T0)
    raw = state.to_json()
    assert orjson.loads(orjson.dumps(raw)) == raw
    assert raw["r"] == [["A", "B"]]
    assert [entry[0] for entry in raw["o"]] == ["A", "B"]
    back = FingerprintWindow.from_json(raw)
    assert back == state
    assert back.orders["B"].placed_at.utcoffset() == timedelta(hours=8)
    assert FingerprintWindow.from_json(None) == FingerprintWindow()


def test_burst_of_identical_orders_is_capped() -> None:
    rules = DedupeRules(max_orders=4)
    state = FingerprintWindow()
    for i in range(10):
        see(state, f"O{i}", T0 + i * SEC, rules=rules)
        assert len(state.orders) <= 4
    assert set(state.orders) == {"O6", "O7", "O8", "O9"}
    assert all(a in state.orders or b in state.orders for a, b in state.raised)


def test_memory_stays_bounded_over_a_simulated_week() -> None:
    # One order a minute for a week from 40 customers, some re-ordering within minutes;
    # the watermark trails by 2 min and expiry runs every 10 min of event time, as wired.
    rng = random.Random(20241111)
    table: dict[str, FingerprintWindow] = {}
    peak_orders = peak_pairs = pairs_found = 0
    customers = [f"C-{n}" for n in range(40)]
    last_expiry = T0
    for minute in range(7 * 24 * 60):
        placed_at = T0 + minute * MIN
        watermark = placed_at - 2 * MIN
        details = order(rng.choice(customers), placed_at=placed_at)
        fp = RULES.fingerprint(details)
        state = table.setdefault(fp, FingerprintWindow())
        pairs_found += len(
            RULES.observe(
                state,
                f"SO-{minute}",
                details,
                event_id=f"e{minute}",
                status="CREATED",
                occurred_at=placed_at,
                watermark=watermark,
            )
        )
        if placed_at - last_expiry >= 10 * MIN:
            last_expiry = placed_at
            for key in [k for k, s in table.items() if RULES.expire(s, watermark)]:
                del table[key]
        peak_orders = max(peak_orders, sum(len(s.orders) for s in table.values()))
        peak_pairs = max(peak_pairs, sum(len(s.raised) for s in table.values()))
    assert pairs_found > 1000  # the simulation does exercise the window
    # Held: orders placed within window + watermark lag + expiry period (+ the current one).
    assert peak_orders <= 15 + 2 + 10 + 1
    assert peak_pairs <= 200
    for key in [k for k, s in table.items() if RULES.expire(s, T0 + 8 * timedelta(days=1))]:
        del table[key]
    assert table == {}


@settings(max_examples=200, deadline=None)
@given(
    offsets=st.lists(
        st.tuples(st.integers(0, 160), st.sampled_from([0, 1, 999])).map(
            lambda t: t[0] * 15 * SEC + t[1] * timedelta(milliseconds=1)
        ),
        min_size=1,
        max_size=9,
    ),
    data=st.data(),
)
def test_pairs_found_do_not_depend_on_arrival_order(
    offsets: list[timedelta], data: st.DataObject
) -> None:
    placed = {f"O{i}": T0 + offset for i, offset in enumerate(offsets)}
    expected = {
        (a, b) for a in placed for b in placed if a < b and abs(placed[a] - placed[b]) <= 15 * MIN
    }
    arrival = data.draw(st.permutations(sorted(placed)))
    resends = data.draw(st.lists(st.sampled_from(sorted(placed)), max_size=4))
    at = data.draw(st.integers(0, len(arrival)))
    state = FingerprintWindow()
    found: list[DuplicatePair] = []
    for position, order_id in enumerate([*arrival, *resends]):
        if position == at:
            state = restarted(state)
        found += see(state, order_id, placed[order_id])
    assert sorted(p.key for p in found) == sorted(expected)


# Anomaly


def test_duplicate_anomaly_names_both_orders() -> None:
    state = FingerprintWindow()
    see(state, "SO-A", T0, channel="website")
    [pair] = see(state, "SO-B", T0 + 3 * MIN, channel="wechat")
    detected = T0 + timedelta(hours=1)
    anomaly = duplicate_anomaly(pair, detected, ROUTE)
    assert anomaly.anomaly_id == duplicate_anomaly_id("SO-B", "SO-A")
    assert (anomaly.type, anomaly.state, anomaly.severity) == (
        AnomalyType.DUPLICATE_ORDER,
        AnomalyState.OPEN,
        Severity.WARNING,
    )
    assert (anomaly.order_id, anomaly.opened_at, anomaly.detected_at) == (
        "SO-B",
        T0 + 3 * MIN,
        detected,
    )
    assert anomaly.systems == ["erp"]
    assert anomaly.route == ROUTE
    assert anomaly.summary == (
        "Order SO-B (wechat) looks like a duplicate of order SO-A (website): "
        "same customer and parts, placed 3 min apart."
    )
    dumped = orjson.loads(anomaly.model_dump_json())
    assert dumped["gap_seconds"] == 180.0
    assert dumped["order_ids"] == ["SO-A", "SO-B"]
    assert dumped["fingerprint"] == RULES.fingerprint(order())
    assert [
        (e["order_id"], e["channel"], e["source"], e["event_id"], e["status"])
        for e in dumped["evidence"]
    ] == [
        ("SO-A", "website", "erp", "ev-SO-A", "CREATED"),
        ("SO-B", "wechat", "erp", "ev-SO-B", "CREATED"),
    ]


def test_anomaly_id_does_not_depend_on_arrival_order() -> None:
    forward, backward = FingerprintWindow(), FingerprintWindow()
    see(forward, "A", T0)
    [pair_fwd] = see(forward, "B", T0 + 10 * SEC)
    see(backward, "B", T0 + 10 * SEC)
    [pair_bwd] = see(backward, "A", T0)
    assert duplicate_anomaly(pair_fwd, T0, ROUTE) == duplicate_anomaly(pair_bwd, T0, ROUTE)
    assert "placed 10 s apart" in duplicate_anomaly(pair_fwd, T0, ROUTE).summary


# Decisions


def anomaly_for(first: str = "A", second: str = "B") -> Anomaly:
    state = FingerprintWindow()
    see(state, first, T0)
    [pair] = see(state, second, T0 + 3 * MIN)
    # Through JSON, as the wiring reads it back from the anomalies table.
    return Anomaly.model_validate_json(duplicate_anomaly(pair, T0, ROUTE).model_dump_json())


def decision(kind: DecisionKind, target: str, decision_id: str = "d-1", **extra: Any) -> Decision:
    return Decision(
        decision_id=decision_id,
        kind=kind,
        target=target,
        by="li.na",
        at=T0 + 2 * 60 * MIN,
        **extra,
    )


def test_merge_keeps_the_earlier_order_and_resolves() -> None:
    anomaly = anomaly_for()
    merge = decision(DecisionKind.DUPLICATE_MERGE, anomaly.anomaly_id)
    resolved, [command] = apply_duplicate_decision(anomaly, merge, T0 + 3 * 60 * MIN)
    assert resolved.state == AnomalyState.RESOLVED
    assert resolved.resolved_at == merge.at
    assert [d["decision_id"] for d in resolved.decisions] == ["d-1"]
    assert anomaly.state == AnomalyState.OPEN  # the input is not mutated
    assert command.kind == CommandKind.ORDER_MERGE
    assert command.issued_at == T0 + 3 * 60 * MIN
    assert command.payload == {"keep": "A", "drop": "B", "anomaly_id": anomaly.anomaly_id}


def test_merge_may_name_the_order_to_keep() -> None:
    anomaly = anomaly_for()
    merge = decision(DecisionKind.DUPLICATE_MERGE, anomaly.anomaly_id, keep="B")
    _, [command] = apply_duplicate_decision(anomaly, merge, T0)
    assert (command.payload["keep"], command.payload["drop"]) == ("B", "A")
    stranger = decision(DecisionKind.DUPLICATE_MERGE, anomaly.anomaly_id, keep="Z")
    with pytest.raises(ValueError, match="neither"):
        apply_duplicate_decision(anomaly, stranger, T0)


def test_keep_resolves_without_commands() -> None:
    anomaly = anomaly_for()
    resolved, commands = apply_duplicate_decision(
        anomaly, decision(DecisionKind.DUPLICATE_KEEP, anomaly.anomaly_id), T0
    )
    assert resolved.state == AnomalyState.RESOLVED
    assert commands == []


def test_same_decision_again_is_idempotent() -> None:
    anomaly = anomaly_for()
    merge = decision(DecisionKind.DUPLICATE_MERGE, anomaly.anomaly_id, keep="B")
    resolved, first = apply_duplicate_decision(anomaly, merge, T0)
    resolved = Anomaly.model_validate_json(resolved.model_dump_json())
    again, second = apply_duplicate_decision(resolved, merge, T0 + MIN)
    assert again == resolved
    assert len(again.decisions) == 1
    assert [c.command_id for c in second] == [c.command_id for c in first]
    assert second[0].payload == first[0].payload


def test_a_new_decision_on_a_resolved_anomaly_is_refused() -> None:
    anomaly = anomaly_for()
    resolved, _ = apply_duplicate_decision(
        anomaly, decision(DecisionKind.DUPLICATE_KEEP, anomaly.anomaly_id), T0
    )
    late = decision(DecisionKind.DUPLICATE_MERGE, anomaly.anomaly_id, decision_id="d-2")
    with pytest.raises(ValueError, match="already resolved"):
        apply_duplicate_decision(resolved, late, T0)


def test_merge_command_ids_are_deterministic_and_distinct_per_pair() -> None:
    ab, ac = anomaly_for("A", "B"), anomaly_for("A", "C")
    _, [cmd_ab] = apply_duplicate_decision(
        ab, decision(DecisionKind.DUPLICATE_MERGE, ab.anomaly_id), T0
    )
    _, [cmd_ab_again] = apply_duplicate_decision(
        ab, decision(DecisionKind.DUPLICATE_MERGE, ab.anomaly_id), T0 + MIN
    )
    _, [cmd_ac] = apply_duplicate_decision(
        ac, decision(DecisionKind.DUPLICATE_MERGE, ac.anomaly_id), T0
    )
    assert cmd_ab.command_id == cmd_ab_again.command_id != cmd_ac.command_id


@pytest.mark.parametrize(
    "kind", [DecisionKind.ANOMALY_ACK, DecisionKind.ANOMALY_RESOLVE, DecisionKind.BREAKER_ACK]
)
def test_other_decision_kinds_are_refused(kind: DecisionKind) -> None:
    anomaly = anomaly_for()
    with pytest.raises(ValueError, match=r"not duplicate\.merge or duplicate\.keep"):
        apply_duplicate_decision(anomaly, decision(kind, anomaly.anomaly_id), T0)


def test_decision_about_another_anomaly_is_refused() -> None:
    anomaly = anomaly_for()
    other = anomaly_for("A", "C").anomaly_id
    with pytest.raises(ValueError, match="targets"):
        apply_duplicate_decision(anomaly, decision(DecisionKind.DUPLICATE_MERGE, other), T0)
    not_a_duplicate = anomaly.model_copy(update={"type": AnomalyType.STATUS_CONFLICT})
    with pytest.raises(ValueError, match="not a duplicate"):
        apply_duplicate_decision(
            not_a_duplicate, decision(DecisionKind.DUPLICATE_MERGE, anomaly.anomaly_id), T0
        )


def test_a_pair_is_routed_on_its_later_placed_order_whichever_arrived_first() -> None:
    # A VIP's rush order through a distributor, and the same order again on the website 5 min
    # later. Read in either order (other partitions set the pace upstream), the anomaly is the
    # same: raised on the later one, routed on its facts.
    t0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
    early = order(channel="distributor_api", placed_at=t0).model_copy(
        update={"vip": True, "priority": "rush"}
    )
    late = order(channel="website", placed_at=t0 + 5 * MIN)
    routing = default_routing()
    seen = []
    for arrivals in ((("SO-1", early), ("SO-2", late)), (("SO-2", late), ("SO-1", early))):
        window = FingerprintWindow()
        pairs = [
            pair
            for order_id, details in arrivals
            for pair in RULES.observe(
                restarted(window) if window.orders else window,
                order_id,
                details,
                event_id=f"ev-{order_id}",
                status="CREATED",
                occurred_at=details.placed_at or t0,
            )
        ]
        assert len(pairs) == 1
        anomaly = duplicate_anomaly(pairs[0], t0, route(pairs[0].routing_facts(), routing))
        seen.append(anomaly.model_dump(exclude={"detected_at"}))
    assert seen[0] == seen[1]
    assert seen[0]["order_id"] == "SO-2"
    by_later, by_earlier = (
        route(RoutingFacts.of(AnomalyType.DUPLICATE_ORDER, Severity.WARNING, ["erp"], o), routing)
        for o in (late, early)
    )
    assert by_later != by_earlier  # the arrival order used to pick one of these
    assert seen[0]["route"] == by_later.model_dump()
