"""Ghost-order rules at their thresholds, stage-3 commands, silent-source holds, timers, restart."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from schemas.anomalies import (
    Anomaly,
    AnomalyState,
    AnomalyType,
    Command,
    CommandKind,
    Severity,
    Team,
)
from schemas.routing import RoutingTable
from schemas.settings import Settings
from schemas.stages import PHASE_OF, Marker, Source, Stage
from streams.rules.ghosts import (
    Due,
    Emit,
    GhostOutcome,
    GhostRules,
    GhostSettings,
    GhostState,
    TimerWheel,
    evaluate_unlinked,
    ghost_anomaly_id,
    next_deadline,
)
from streams.rules.order_state import OrderJoin, OrderState
from streams.rules.watermark import as_us
from tests.phones import PHONES
from tests.stage_harness import Pipeline

T0 = datetime(2025, 12, 12, 10, 0, tzinfo=UTC)
WALL = datetime(2025, 12, 12, 10, 0, 7, tzinfo=UTC)
ORDER = "SO2025121200123"
SEC = timedelta(seconds=1)
MIN = timedelta(minutes=1)
HOUR = timedelta(hours=1)
JOIN = OrderJoin(PHONES)
RULES = GhostRules()

ERP, CRM, WMS, LOG = Source.ERP, Source.CRM, Source.WMS, Source.LOGISTICS
MISSING = AnomalyType.MISSING_IN_SYSTEM
ORPHAN = AnomalyType.ORPHAN_ORDER
CONFLICT = AnomalyType.STATUS_CONFLICT
STALL = AnomalyType.STALLED_TRACKING

DETAILS: dict[str, Any] = {
    "customer_id": "C-0042137",
    "channel": "douyin",
    "lines": [{"sku": "BRK-PAD-001", "qty": 2, "unit_price": "129.00"}],
    "amount": "258.00",
    "currency": "CNY",
    "vip": False,
    "priority": "normal",
}


def event(
    source: Source,
    what: Stage | Marker,
    at: timedelta,
    *,
    n: int = 0,
    order_id: str = ORDER,
    status: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A normalised event as ingest forwards it, `at` after T0."""
    when = (T0 + at).isoformat()
    body: dict[str, Any] = {
        "event_id": f"{source.value}-{order_id}-{what.value}-{n}",
        "source": source.value,
        "order_ref": order_id if source is ERP else f"{source.value.upper()}-{order_id}",
        "erp_order_id": order_id,
        "status": status or what.value.upper(),
        "occurred_at": when,
    }
    if isinstance(what, Stage):
        body["stage"] = what.value
        body["phase"] = PHASE_OF[what].value
    else:
        body["marker"] = what.value
    if source is ERP and what is Stage.PLACED:
        body.setdefault("order", DETAILS)
    body.update(extra)
    return body


def state_of(*events: dict[str, Any], order_id: str = ORDER) -> OrderState:
    """The join state after some events."""
    state = OrderState(order_id)
    for e in events:
        JOIN.apply(state, e)
    return state


def run(
    state: OrderState,
    ghosts: GhostState,
    at: timedelta,
    silent: Iterable[Source] = (),
    rules: GhostRules = RULES,
) -> GhostOutcome:
    """Evaluate at T0 + at."""
    return rules.evaluate(state, ghosts, T0 + at, WALL, frozenset(silent))


def anomalies(outcome: GhostOutcome) -> list[Anomaly]:
    """The anomalies an evaluation emitted."""
    return [e for e in outcome.emits if isinstance(e, Anomaly)]


def commands(outcome: GhostOutcome) -> list[Command]:
    """The commands an evaluation emitted."""
    return [e for e in outcome.emits if isinstance(e, Command)]


def only(outcome: GhostOutcome, type_: AnomalyType | None = None) -> Anomaly:
    """The one anomaly emitted (of a type)."""
    found = [a for a in anomalies(outcome) if type_ is None or a.type is type_]
    assert len(found) == 1, found
    return found[0]


def placed(at: timedelta = timedelta(0)) -> dict[str, Any]:
    """The ERP's order-created event."""
    return event(ERP, Stage.PLACED, at)


# --- missing_in_system --------------------------------------------------------------------


def test_missing_in_crm_fires_at_15_minutes_not_a_second_before() -> None:
    state, ghosts = state_of(placed()), GhostState.new(ORDER)
    before = run(state, ghosts, 15 * MIN - SEC)
    assert before.emits == []
    assert before.next_deadline == T0 + 15 * MIN

    at = run(state, ghosts, 15 * MIN)
    missing = only(at)
    assert missing.type is MISSING
    assert missing.severity is Severity.WARNING
    assert missing.state is AnomalyState.OPEN
    assert missing.systems == ["erp", "crm"]
    assert missing.opened_at == T0 + 15 * MIN
    assert missing.detected_at == WALL
    assert missing.order_id == ORDER
    assert missing.route.team is Team.INTEGRATION
    assert missing.route.rule == "missing_in_crm"
    assert missing.anomaly_id == ghost_anomaly_id(MISSING, ORDER, "crm")
    assert [(e.source, e.event_id, e.status) for e in missing.evidence] == [
        ("erp", f"erp-{ORDER}-placed-0", "PLACED")
    ]
    assert missing.summary == (
        f"Order {ORDER} was created in the ERP 15 min ago but the CRM has not shown it yet."
    )
    assert at.next_deadline is None

    after = run(state, ghosts, 15 * MIN + SEC)
    assert after.emits == []  # open already: never raised twice


@pytest.mark.parametrize(
    ("target", "history", "entry", "threshold", "rule"),
    [
        (CRM, [placed()], timedelta(0), 15 * MIN, "missing_in_crm"),
        (
            WMS,
            [
                placed(),
                event(CRM, Stage.PLACED, MIN),
                event(ERP, Stage.ALLOCATED, HOUR),
                event(CRM, Stage.ALLOCATED, HOUR + MIN),
            ],
            HOUR,
            2 * HOUR,
            "missing_in_wms",
        ),
        (
            LOG,
            [
                placed(),
                event(CRM, Stage.PLACED, MIN),
                event(ERP, Stage.ALLOCATED, HOUR),
                event(CRM, Stage.ALLOCATED, HOUR + MIN),
                event(WMS, Stage.ALLOCATED, HOUR + MIN),
                event(ERP, Stage.SHIPPED, 5 * HOUR),
                event(CRM, Stage.SHIPPED, 5 * HOUR + MIN),
                event(WMS, Stage.SHIPPED, 5 * HOUR + MIN),
            ],
            5 * HOUR,
            24 * HOUR,
            "missing_at_carrier",
        ),
    ],
)
def test_missing_in_system_thresholds(
    target: Source,
    history: list[dict[str, Any]],
    entry: timedelta,
    threshold: timedelta,
    rule: str,
) -> None:
    state, ghosts = state_of(*history), GhostState.new(ORDER)
    deadline = entry + threshold
    assert [a.type for a in anomalies(run(state, ghosts, deadline - SEC))] == []
    assert ghosts.next_deadline == T0 + deadline
    missing = only(run(state, ghosts, deadline), MISSING)
    assert missing.systems == ["erp", target.value]
    assert missing.opened_at == T0 + deadline
    assert missing.route.rule == rule
    assert (missing.model_extra or {})["system"] == target.value
    assert anomalies(run(state, ghosts, deadline + SEC)) == []


def test_a_report_exactly_at_the_deadline_is_in_time() -> None:
    state = state_of(placed(), event(CRM, Stage.PLACED, 15 * MIN))
    assert run(state, GhostState.new(ORDER), 15 * MIN).emits == []


def test_missing_resolves_when_the_system_reports() -> None:
    state, ghosts = state_of(placed()), GhostState.new(ORDER)
    opened = only(run(state, ghosts, 15 * MIN))
    JOIN.apply(state, event(CRM, Stage.PLACED, 20 * MIN))
    resolved = only(run(state, ghosts, 20 * MIN))
    assert resolved.anomaly_id == opened.anomaly_id
    assert resolved.state is AnomalyState.RESOLVED
    assert resolved.resolved_at == T0 + 20 * MIN
    assert resolved.opened_at == opened.opened_at
    assert (resolved.model_extra or {})["time_to_resolve_seconds"] == 300.0
    assert (resolved.model_extra or {})["resolution"] == "converged"
    assert resolved.summary.endswith("Resolved after 5 min: the CRM shows the order now.")
    assert run(state, ghosts, 40 * MIN).emits == []


def test_a_late_report_ahead_of_the_watermark_counts_from_its_event_time() -> None:
    # The CRM showed the order 16 min after creation; the event is in the state before the
    # watermark reaches 15 min. In event time the order was missing for one minute.
    state, ghosts = state_of(placed(), event(CRM, Stage.PLACED, 16 * MIN)), GhostState.new(ORDER)
    first = run(state, ghosts, 14 * MIN)
    assert first.emits == []
    assert first.next_deadline == T0 + 15 * MIN
    opened = run(state, ghosts, 15 * MIN)
    assert only(opened).state is AnomalyState.OPEN
    assert opened.next_deadline == T0 + 16 * MIN  # when the report resolves it
    resolved = only(run(state, ghosts, 16 * MIN))
    assert resolved.state is AnomalyState.RESOLVED
    assert resolved.resolved_at == T0 + 16 * MIN


def test_missing_resolves_when_the_system_leaves_scope() -> None:
    state = state_of(
        placed(),
        event(CRM, Stage.PLACED, MIN),
        event(ERP, Stage.ALLOCATED, HOUR),
        event(CRM, Stage.ALLOCATED, HOUR),
    )
    ghosts = GhostState.new(ORDER)
    assert only(run(state, ghosts, 3 * HOUR)).systems == ["erp", "wms"]
    JOIN.apply(state, event(ERP, Stage.DELIVERED, 4 * HOUR))  # WMS no longer expected
    JOIN.apply(state, event(CRM, Stage.DELIVERED, 4 * HOUR))
    resolved = [a for a in anomalies(run(state, ghosts, 4 * HOUR)) if a.type is MISSING]
    assert [a.state for a in resolved] == [AnomalyState.RESOLVED]
    assert "no longer needs to show it" in resolved[0].summary


def test_an_order_that_left_scope_before_the_deadline_is_not_missing() -> None:
    state = state_of(
        placed(),
        event(CRM, Stage.PLACED, MIN),
        event(ERP, Stage.ALLOCATED, HOUR),
        event(ERP, Stage.DELIVERED, 2 * HOUR),
        event(CRM, Stage.DELIVERED, 2 * HOUR),
        event(LOG, Stage.DELIVERED, 2 * HOUR),
    )
    ghosts = GhostState.new(ORDER)
    assert run(state, ghosts, 10 * HOUR).emits == []
    assert ghosts.next_deadline is None


# --- orphan_order ---------------------------------------------------------------------------


def test_orphan_fires_30_minutes_after_the_first_non_erp_event() -> None:
    state = state_of(event(CRM, Stage.PLACED, 5 * MIN), event(WMS, Stage.ALLOCATED, 7 * MIN))
    ghosts = GhostState.new(ORDER)
    before = run(state, ghosts, 35 * MIN - SEC)
    assert before.emits == []
    assert before.next_deadline == T0 + 35 * MIN
    orphan = only(run(state, ghosts, 35 * MIN))
    assert orphan.type is ORPHAN
    assert orphan.opened_at == T0 + 35 * MIN
    assert orphan.systems == ["erp", "crm", "wms"]
    assert orphan.route.team is Team.INTEGRATION
    assert orphan.anomaly_id == ghost_anomaly_id(ORPHAN, ORDER, "")
    assert (orphan.model_extra or {})["refs"] == {"crm": f"CRM-{ORDER}", "wms": f"WMS-{ORDER}"}
    assert "but the ERP has no such order" in orphan.summary
    assert run(state, ghosts, 35 * MIN + SEC).emits == []

    JOIN.apply(state, placed(50 * MIN))
    resolved = only(run(state, ghosts, 50 * MIN), ORPHAN)
    assert resolved.state is AnomalyState.RESOLVED
    assert (resolved.model_extra or {})["time_to_resolve_seconds"] == 15 * 60


def test_no_orphan_when_the_erp_order_arrives_in_time() -> None:
    state, ghosts = state_of(event(CRM, Stage.PLACED, 0 * MIN)), GhostState.new(ORDER)
    assert run(state, ghosts, 10 * MIN).emits == []
    JOIN.apply(state, placed(-MIN))  # the ERP's event is older, it only arrived late
    assert [a.type for a in anomalies(run(state, ghosts, 2 * HOUR))] == []


# --- status_conflict ------------------------------------------------------------------------


def _lagging_crm() -> OrderState:
    # The ERP moves to fulfilling at 10 min; the CRM keeps showing the order open.
    return state_of(
        placed(),
        event(CRM, Stage.PLACED, MIN),
        event(ERP, Stage.ALLOCATED, 10 * MIN),
        event(WMS, Stage.ALLOCATED, 10 * MIN),
    )


def test_conflict_fires_after_30_minutes_of_disagreement() -> None:
    state, ghosts = _lagging_crm(), GhostState.new(ORDER)
    before = run(state, ghosts, 40 * MIN - SEC)
    assert before.emits == []
    assert before.next_deadline == T0 + 40 * MIN
    assert ghosts.conflict_since_us is not None
    conflict = only(run(state, ghosts, 40 * MIN))
    assert conflict.type is CONFLICT
    assert conflict.severity is Severity.WARNING
    assert conflict.systems == ["erp", "crm"]
    assert conflict.opened_at == T0 + 40 * MIN
    assert conflict.route.rule == "conflict_crm"
    trigger = str(int((T0 + 10 * MIN).timestamp() * 1_000_000))
    assert conflict.anomaly_id == ghost_anomaly_id(CONFLICT, ORDER, trigger)
    assert (conflict.model_extra or {})["phases"] == {"erp": "fulfilling", "crm": "open"}
    assert conflict.summary == (
        f"The systems have disagreed on order {ORDER} for 30 min: the ERP shows it "
        "fulfilling, the CRM shows it open."
    )
    assert run(state, ghosts, 40 * MIN + SEC).emits == []

    JOIN.apply(state, event(CRM, Stage.ALLOCATED, 55 * MIN))
    resolved = only(run(state, ghosts, 55 * MIN))
    assert resolved.anomaly_id == conflict.anomaly_id
    assert resolved.state is AnomalyState.RESOLVED
    assert resolved.resolved_at == T0 + 55 * MIN
    assert (resolved.model_extra or {})["time_to_resolve_seconds"] == 15 * 60
    assert ghosts.conflict_since_us is None


def test_disagreement_is_measured_continuously_across_phase_changes() -> None:
    state, ghosts = _lagging_crm(), GhostState.new(ORDER)
    run(state, ghosts, 10 * MIN)
    JOIN.apply(state, event(ERP, Stage.SHIPPED, 30 * MIN))  # still ahead of the CRM
    JOIN.apply(state, event(WMS, Stage.SHIPPED, 30 * MIN))
    JOIN.apply(state, event(LOG, Stage.IN_TRANSIT, 30 * MIN))
    assert run(state, ghosts, 30 * MIN).next_deadline == T0 + 40 * MIN
    assert only(run(state, ghosts, 40 * MIN)).opened_at == T0 + 40 * MIN


def test_an_interrupted_disagreement_starts_over_with_a_new_id() -> None:
    state, ghosts = _lagging_crm(), GhostState.new(ORDER)
    run(state, ghosts, 10 * MIN)
    JOIN.apply(state, event(CRM, Stage.ALLOCATED, 35 * MIN))  # agree for a while
    assert run(state, ghosts, 35 * MIN).emits == []
    JOIN.apply(state, event(ERP, Stage.SHIPPED, HOUR))
    JOIN.apply(state, event(WMS, Stage.SHIPPED, HOUR))
    JOIN.apply(state, event(LOG, Stage.IN_TRANSIT, HOUR))
    assert run(state, ghosts, HOUR + 29 * MIN).emits == []
    conflict = only(run(state, ghosts, HOUR + 30 * MIN))
    trigger = str(int((T0 + HOUR).timestamp() * 1_000_000))
    assert conflict.anomaly_id == ghost_anomaly_id(CONFLICT, ORDER, trigger)


def _shipped_by_warehouse() -> list[dict[str, Any]]:
    return [
        placed(),
        event(CRM, Stage.PLACED, MIN),
        event(ERP, Stage.ALLOCATED, 10 * MIN),
        event(CRM, Stage.ALLOCATED, 11 * MIN),
        event(WMS, Stage.PICKING, 12 * MIN),
        event(WMS, Stage.SHIPPED, HOUR),
    ]


def test_a_contradiction_is_critical_at_once() -> None:
    state, ghosts = state_of(*_shipped_by_warehouse()), GhostState.new(ORDER)
    JOIN.apply(state, event(ERP, Stage.CANCELLED, 2 * HOUR))
    JOIN.apply(state, event(CRM, Stage.CANCELLED, 2 * HOUR))
    conflict = only(run(state, ghosts, 2 * HOUR))
    assert conflict.type is CONFLICT
    assert conflict.severity is Severity.CRITICAL
    assert conflict.opened_at == T0 + 2 * HOUR
    assert conflict.systems == ["erp", "wms"]
    assert conflict.route.rule == "cancelled_but_shipped"
    assert conflict.route.team is Team.WAREHOUSE
    assert conflict.summary == (
        f"Order {ORDER} is cancelled in the ERP but the warehouse system (WMS) shows it shipped."
    )
    assert (conflict.model_extra or {})["contradiction"] is True


def test_a_carrier_contradiction_counts_although_the_carrier_is_out_of_scope() -> None:
    history = [*_shipped_by_warehouse(), event(LOG, Stage.IN_TRANSIT, HOUR)]
    state, ghosts = state_of(*history), GhostState.new(ORDER)
    JOIN.apply(state, event(ERP, Stage.CANCELLED, 2 * HOUR))
    JOIN.apply(state, event(CRM, Stage.CANCELLED, 2 * HOUR))
    JOIN.apply(state, event(WMS, Stage.CANCELLED, 2 * HOUR))
    conflict = only(run(state, ghosts, 2 * HOUR))
    assert conflict.systems == ["erp", "logistics"]
    assert conflict.severity is Severity.CRITICAL
    assert conflict.route.rule == "cancelled_but_with_carrier"


def test_a_warning_conflict_escalates_to_critical_under_the_same_id() -> None:
    # The WMS ships while the ERP still says fulfilling: a warning after 30 min ...
    state, ghosts = state_of(*_shipped_by_warehouse()), GhostState.new(ORDER)
    warning = only(run(state, ghosts, HOUR + 30 * MIN))
    assert warning.severity is Severity.WARNING
    assert warning.route.rule == "conflict_wms"
    # ... then the ERP cancels: a contradiction, re-emitted critical, same id and opened_at.
    JOIN.apply(state, event(ERP, Stage.CANCELLED, 2 * HOUR))
    JOIN.apply(state, event(CRM, Stage.CANCELLED, 2 * HOUR))
    critical = only(run(state, ghosts, 2 * HOUR))
    assert critical.anomaly_id == warning.anomaly_id
    assert critical.severity is Severity.CRITICAL
    assert critical.opened_at == warning.opened_at
    assert critical.route.rule == "cancelled_but_shipped"
    assert run(state, ghosts, 3 * HOUR).emits == []


# --- stalled_tracking and stage 3 -----------------------------------------------------------

TRACKING = {"carrier": "顺丰", "tracking_no": "SF1234567890"}


def _shipped(scan_at: timedelta | None = None) -> OrderState:
    # Shipped at 2 h, every system in step; the carrier scans once (at `scan_at`).
    history = [
        placed(),
        event(CRM, Stage.PLACED, MIN),
        event(ERP, Stage.ALLOCATED, 10 * MIN),
        event(CRM, Stage.ALLOCATED, 11 * MIN),
        event(WMS, Stage.ALLOCATED, 11 * MIN),
        event(ERP, Stage.SHIPPED, 2 * HOUR),
        event(CRM, Stage.SHIPPED, 2 * HOUR),
        event(WMS, Stage.SHIPPED, 2 * HOUR),
        event(LOG, Stage.SHIPPED, scan_at or 2 * HOUR, tracking=TRACKING),
    ]
    return state_of(*history)


def test_stall_warns_at_24_hours_and_issues_stage_3_commands_once() -> None:
    state, ghosts = _shipped(2 * HOUR + 30 * MIN), GhostState.new(ORDER)
    anchor = 2 * HOUR + 30 * MIN
    before = run(state, ghosts, anchor + 24 * HOUR - SEC)
    assert before.emits == []
    assert before.next_deadline == T0 + anchor + 24 * HOUR

    at = run(state, ghosts, anchor + 24 * HOUR)
    stall = only(at)
    assert stall.type is STALL
    assert stall.severity is Severity.WARNING
    assert stall.opened_at == T0 + anchor + 24 * HOUR
    assert stall.systems == ["erp", "logistics"]
    assert stall.route.team is Team.LOGISTICS
    extra = stall.model_extra or {}
    assert extra["carrier"] == "顺丰"
    assert extra["tracking_no"] == "SF1234567890"
    assert extra["age_seconds"] == 24 * 3600
    assert [(e.source, e.status) for e in stall.evidence] == [
        ("erp", "SHIPPED"),
        ("logistics", "SHIPPED"),
    ]
    assert at.next_deadline == T0 + anchor + 72 * HOUR

    ticket, notify = commands(at)
    assert ticket.kind is CommandKind.CARRIER_EXCEPTION_TICKET
    assert ticket.payload == {
        "order_id": ORDER,
        "carrier": "顺丰",
        "tracking_no": "SF1234567890",
        "anomaly_id": stall.anomaly_id,
    }
    assert notify.kind is CommandKind.CUSTOMER_NOTIFY
    assert notify.payload == {
        "order_id": ORDER,
        "channel": "sms",
        "template": "shipment_delayed",
        "anomaly_id": stall.anomaly_id,
    }
    assert ticket.command_id != notify.command_id
    assert ticket.issued_at == T0 + anchor + 24 * HOUR

    assert run(state, ghosts, anchor + 24 * HOUR + SEC).emits == []
    assert run(state, ghosts, anchor + 48 * HOUR).emits == []


def test_stall_turns_critical_at_72_hours_under_the_same_id_without_new_commands() -> None:
    state, ghosts = _shipped(), GhostState.new(ORDER)
    warning = only(run(state, ghosts, 26 * HOUR))
    assert run(state, ghosts, 74 * HOUR - SEC).emits == []
    critical = run(state, ghosts, 74 * HOUR)
    assert commands(critical) == []
    escalated = only(critical)
    assert escalated.anomaly_id == warning.anomaly_id
    assert escalated.severity is Severity.CRITICAL
    assert escalated.opened_at == warning.opened_at
    assert critical.next_deadline is None
    assert run(state, ghosts, 100 * HOUR).emits == []


def test_the_summary_says_what_a_support_agent_needs() -> None:
    state, ghosts = _shipped(), GhostState.new(ORDER)
    stall = only(run(state, ghosts, 28 * HOUR))
    assert stall.summary == (
        f"Order {ORDER} shipped from the ERP 26 h ago but the carrier (顺丰, tracking "
        "SF1234567890) has sent no scan since."
    )


def test_a_new_scan_resolves_the_stall_and_a_later_stall_is_a_new_one() -> None:
    state, ghosts = _shipped(), GhostState.new(ORDER)
    first = run(state, ghosts, 26 * HOUR)
    stall = only(first)
    JOIN.apply(state, event(LOG, Stage.IN_TRANSIT, 30 * HOUR, tracking=TRACKING))
    resolved = only(run(state, ghosts, 30 * HOUR))
    assert resolved.anomaly_id == stall.anomaly_id
    assert resolved.state is AnomalyState.RESOLVED
    assert resolved.summary.endswith("the carrier scanned it again.")

    assert run(state, ghosts, 54 * HOUR - SEC).emits == []
    second = run(state, ghosts, 54 * HOUR)
    again = only(second)
    assert again.anomaly_id != stall.anomaly_id
    assert "(last: IN_TRANSIT)" in again.summary
    old_ids = {c.command_id for c in commands(first)}
    new_ids = {c.command_id for c in commands(second)}
    assert len(new_ids) == 2
    assert old_ids.isdisjoint(new_ids)


def test_a_marker_from_the_carrier_counts_as_a_sign_of_life() -> None:
    state, ghosts = _shipped(), GhostState.new(ORDER)
    JOIN.apply(state, event(LOG, Marker.DELIVERY_EXCEPTION, 20 * HOUR))
    assert run(state, ghosts, 43 * HOUR).emits == []
    assert ghosts.next_deadline == T0 + 44 * HOUR


def test_stall_resolves_when_the_erp_moves_on() -> None:
    state, ghosts = _shipped(), GhostState.new(ORDER)
    only(run(state, ghosts, 26 * HOUR))
    JOIN.apply(state, event(ERP, Stage.DELIVERED, 27 * HOUR))
    resolved = [a for a in anomalies(run(state, ghosts, 27 * HOUR)) if a.type is STALL]
    assert resolved[0].state is AnomalyState.RESOLVED
    assert resolved[0].summary.endswith("the ERP shows it delivered now.")


def test_a_carrier_that_never_reported_is_missing_not_stalled() -> None:
    state = state_of(
        placed(),
        event(CRM, Stage.PLACED, MIN),
        event(ERP, Stage.SHIPPED, 2 * HOUR),
        event(CRM, Stage.SHIPPED, 2 * HOUR),
        event(WMS, Stage.SHIPPED, 2 * HOUR),
    )
    found = anomalies(run(state, GhostState.new(ORDER), 80 * HOUR))
    assert [(a.type, a.systems) for a in found] == [(MISSING, ["erp", "logistics"])]


def test_a_scan_before_the_erp_shipped_anchors_on_the_erp() -> None:
    state, ghosts = _shipped(HOUR), GhostState.new(ORDER)
    assert run(state, ghosts, 2 * HOUR).next_deadline == T0 + 26 * HOUR


# --- routing facts come from the order ------------------------------------------------------


def test_routing_sees_vip_priority_and_channel() -> None:
    table = RoutingTable.model_validate(
        {
            "rules": [
                {
                    "name": "vip_rush_douyin",
                    "match": {"vip": True, "priority": "rush", "channel": "DOUYIN"},
                    "team": "sales",
                }
            ]
        }
    )
    rules = GhostRules(routing=table)
    vip = event(ERP, Stage.PLACED, timedelta(0), order={**DETAILS, "vip": True, "priority": "rush"})
    missing = only(run(state_of(vip), GhostState.new(ORDER), HOUR, rules=rules))
    assert (missing.route.team, missing.route.rule) == (Team.SALES, "vip_rush_douyin")
    plain = only(run(state_of(placed()), GhostState.new(ORDER), HOUR, rules=rules))
    assert (plain.route.team, plain.route.rule) == (Team.MANUAL, "no_match")


# --- silent sources hold flags back ---------------------------------------------------------


def test_a_silent_crm_holds_back_missing_in_crm() -> None:
    state, ghosts = state_of(placed()), GhostState.new(ORDER)
    held = run(state, ghosts, 20 * MIN, silent={CRM})
    assert held.emits == []
    assert held.held == frozenset({CRM})
    assert held.next_deadline is None  # parked, not polled
    # Still silent at the next look: still held.
    assert run(state, ghosts, 30 * MIN, silent={CRM}).held == frozenset({CRM})
    # Back, and the order is still missing in the CRM: it fires, opened at its deadline.
    fired = only(run(state, ghosts, 40 * MIN))
    assert fired.opened_at == T0 + 15 * MIN


def test_held_flags_never_fire_when_the_backlog_converges_the_order() -> None:
    state, ghosts = state_of(placed()), GhostState.new(ORDER)
    assert run(state, ghosts, 20 * MIN, silent={CRM}).held == frozenset({CRM})
    JOIN.apply(state, event(CRM, Stage.PLACED, 2 * MIN))  # the connector's backlog
    assert run(state, ghosts, 40 * MIN).emits == []
    assert ghosts.book.entries == {}


def test_silence_of_another_source_holds_nothing_back() -> None:
    state, ghosts = state_of(placed()), GhostState.new(ORDER)
    outcome = run(state, ghosts, 20 * MIN, silent={WMS})
    assert only(outcome).type is MISSING
    assert outcome.held == frozenset()


def test_an_open_flag_stays_open_while_its_source_is_silent() -> None:
    state, ghosts = state_of(placed()), GhostState.new(ORDER)
    only(run(state, ghosts, 20 * MIN))
    assert run(state, ghosts, 30 * MIN, silent={CRM}).emits == []
    assert ghosts.book.has_open


def test_a_silent_carrier_holds_back_the_stall_and_its_escalation() -> None:
    state, ghosts = _shipped(), GhostState.new(ORDER)
    held = run(state, ghosts, 26 * HOUR, silent={LOG})
    assert held.emits == []
    assert held.held == frozenset({LOG})
    warning = run(state, ghosts, 27 * HOUR)
    assert only(warning).severity is Severity.WARNING
    assert len(commands(warning)) == 2
    assert run(state, ghosts, 75 * HOUR, silent={LOG}).held == frozenset({LOG})
    assert only(run(state, ghosts, 76 * HOUR)).severity is Severity.CRITICAL


def test_a_silent_erp_holds_back_orphans() -> None:
    state, ghosts = state_of(event(CRM, Stage.PLACED, timedelta(0))), GhostState.new(ORDER)
    assert run(state, ghosts, HOUR, silent={ERP}).held == frozenset({ERP})
    assert only(run(state, ghosts, 2 * HOUR)).type is ORPHAN


def test_conflicts_are_held_when_the_blamed_feed_or_the_erp_is_silent() -> None:
    for silent in ({CRM}, {ERP}):
        state, ghosts = _lagging_crm(), GhostState.new(ORDER)
        assert run(state, ghosts, HOUR, silent=silent).held == frozenset(silent)
    state, ghosts = _lagging_crm(), GhostState.new(ORDER)
    assert only(run(state, ghosts, HOUR, silent={LOG})).type is CONFLICT


def test_a_contradiction_is_never_held_back() -> None:
    state, ghosts = state_of(*_shipped_by_warehouse()), GhostState.new(ORDER)
    JOIN.apply(state, event(ERP, Stage.CANCELLED, 2 * HOUR))
    JOIN.apply(state, event(CRM, Stage.CANCELLED, 2 * HOUR))
    outcome = run(state, ghosts, 2 * HOUR, silent={WMS})
    assert only(outcome).severity is Severity.CRITICAL


# --- restart ----------------------------------------------------------------------------------


def test_a_restart_never_raises_an_anomaly_again() -> None:
    state, ghosts = _shipped(), GhostState.new(ORDER)
    JOIN.apply(state, event(CRM, Stage.DELIVERED, 3 * HOUR))  # a conflict too
    first = run(state, ghosts, 27 * HOUR)
    assert {a.type for a in anomalies(first)} == {STALL, CONFLICT}
    raw = json.dumps({"state": state.to_json(), "ghosts": ghosts.to_json()})

    loaded = json.loads(raw)
    state2 = OrderState.from_json(loaded["state"])
    ghosts2 = GhostState.from_json(loaded["ghosts"])
    assert ghosts2.to_json() == ghosts.to_json()
    assert run(state2, ghosts2, 28 * HOUR).emits == []
    # ... and it still knows what it raised: escalation keeps the id, no second commands.
    critical = run(state2, ghosts2, 74 * HOUR)
    assert commands(critical) == []
    (escalated,) = [a for a in anomalies(critical) if a.type is STALL]
    assert escalated.anomaly_id in {a.anomaly_id for a in anomalies(first)}


def test_ghost_state_json_round_trip_and_emptiness() -> None:
    empty = GhostState.new(ORDER)
    assert empty.is_empty
    assert GhostState.from_json(None, ORDER).book.order_id == ORDER
    assert GhostState.from_json(json.loads(json.dumps(empty.to_json())), ORDER).is_empty
    state = _lagging_crm()
    run(state, empty, 20 * MIN)
    assert not empty.is_empty  # a disagreement is being timed
    again = GhostState.from_json(json.loads(json.dumps(empty.to_json())))
    assert again.conflict_since_us == empty.conflict_since_us
    assert again.next_us == empty.next_us


# --- settings -------------------------------------------------------------------------------


def test_settings_are_thresholds_and_validated() -> None:
    fast = GhostSettings(crm_missing_after=5 * MIN)
    rules = GhostRules(fast)
    state = state_of(placed())
    assert run(state, GhostState.new(ORDER), 5 * MIN - SEC, rules=rules).emits == []
    assert only(run(state, GhostState.new(ORDER), 5 * MIN, rules=rules)).type is MISSING
    assert fast.missing_after(CRM) == 5 * MIN
    with pytest.raises(ValueError, match="master"):
        fast.missing_after(ERP)
    with pytest.raises(ValidationError):
        GhostSettings(orphan_after=timedelta(0))
    with pytest.raises(ValidationError):
        GhostSettings(stall_after=72 * HOUR, stall_critical_after=24 * HOUR)
    with pytest.raises(ValidationError):
        GhostSettings(stall_afterr=HOUR)  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        fast.orphan_after = HOUR  # type: ignore[misc]


def test_next_deadline_function_agrees_with_evaluate() -> None:
    state, ghosts = _lagging_crm(), GhostState.new(ORDER)
    expected = RULES.next_deadline(state, ghosts, T0 + 20 * MIN)
    assert next_deadline(state, ghosts, GhostSettings(), T0 + 20 * MIN) == expected
    assert run(state, ghosts, 20 * MIN).next_deadline == expected == T0 + 40 * MIN


# --- the timer wheel ------------------------------------------------------------------------


def test_timer_wheel_keeps_the_latest_schedule_per_order() -> None:
    wheel = TimerWheel()
    wheel.schedule("a", T0 + HOUR)
    wheel.schedule("a", T0 + 2 * HOUR)  # later wins
    wheel.schedule("b", T0 + 3 * HOUR)
    wheel.schedule("b", T0 + MIN)  # earlier wins too: the latest call decides
    assert len(wheel) == 2
    assert wheel.scheduled("a") == T0 + 2 * HOUR
    assert wheel.next_at == T0 + MIN
    assert wheel.due(T0) == []
    assert wheel.due(T0 + HOUR) == [Due("b", T0 + MIN)]  # the stale 1 h entry of a is gone
    assert wheel.due(T0 + 2 * HOUR) == [Due("a", T0 + 2 * HOUR)]
    assert len(wheel) == 0
    assert wheel.due(T0 + 10 * HOUR) == []
    assert wheel.next_at is None


def test_timer_wheel_pops_everything_due_in_time_order() -> None:
    wheel = TimerWheel()
    for i, name in enumerate("dcba"):
        wheel.schedule(name, T0 + (4 - i) * MIN)
    wheel.schedule("z", T0 + HOUR)
    wheel.schedule("c", None)  # cancelled
    assert [d.order_id for d in wheel.due(T0 + 4 * MIN)] == ["a", "b", "d"]
    assert "z" in wheel
    wheel.cancel("z")
    assert "z" not in wheel
    assert wheel.due(T0 + 2 * HOUR) == []


def test_timer_wheel_is_bounded() -> None:
    wheel = TimerWheel(max_entries=10)
    for i in range(25):
        wheel.schedule(f"o{i:02d}", T0 + i * MIN)
    assert len(wheel) <= 10
    assert len(wheel) + wheel.dropped == 25
    # The soonest survive: dropping the farthest loses the least.
    assert [d.order_id for d in wheel.due(T0 + 3 * MIN)] == ["o00", "o01", "o02", "o03"]
    for i in range(1000):  # rescheduling one order does not grow the heap without bound
        wheel.schedule("o05", T0 + i * SEC)
    assert len(wheel._heap) <= 2 * len(wheel) + 65
    with pytest.raises(ValueError, match="max_entries"):
        TimerWheel(0)


wheel_ops = st.lists(
    st.one_of(
        st.tuples(st.just("schedule"), st.sampled_from("abcde"), st.integers(0, 40)),
        st.tuples(st.just("cancel"), st.sampled_from("abcde"), st.none()),
        st.tuples(st.just("due"), st.none(), st.integers(0, 40)),
    ),
    max_size=60,
)


@given(wheel_ops)
@settings(max_examples=300, deadline=None)
def test_timer_wheel_matches_one_deadline_per_order(ops: list[tuple[str, Any, Any]]) -> None:
    # The model: a dict of deadlines; `due` pops those at or before the watermark, earliest
    # first (ties by order id). The wheel must agree however deadlines moved in between.
    wheel, model = TimerWheel(), {}
    for op, order, minutes in ops:
        if op == "schedule":
            wheel.schedule(order, T0 + minutes * MIN)
            model[order] = T0 + minutes * MIN
        elif op == "cancel":
            wheel.cancel(order)
            model.pop(order, None)
        else:
            limit = T0 + minutes * MIN
            expected = sorted((at, o) for o, at in model.items() if at <= limit)
            assert wheel.due(limit) == [Due(o, at) for at, o in expected]
            for _, o in expected:
                del model[o]
        assert len(wheel) == len(model)
        assert wheel.next_at == min(model.values(), default=None)


def test_timer_wheel_moving_a_deadline_later_does_not_grow_the_heap() -> None:
    wheel = TimerWheel()
    for i in range(1000):  # an order rescheduled at each of its events, as event time starts
        wheel.schedule("o", T0 + i * SEC)
    assert len(wheel._heap) == 1
    assert wheel.due(T0 + 500 * SEC) == []
    assert wheel.due(T0 + 999 * SEC) == [Due("o", T0 + 999 * SEC)]


def test_timer_wheel_holds_and_releases_orders_per_source() -> None:
    wheel = TimerWheel()
    wheel.hold("a", CRM)
    wheel.hold("b", CRM)
    wheel.hold("c", LOG)
    wheel.schedule("b", T0 + 10 * HOUR)
    wheel.schedule("a", T0 + MIN)
    assert wheel.held(CRM) == frozenset({"a", "b"})
    assert wheel.release(CRM, T0 + HOUR) == 2
    assert wheel.held(CRM) == frozenset()
    assert wheel.scheduled("a") == T0 + MIN  # already earlier: kept
    assert wheel.scheduled("b") == T0 + HOUR  # pulled forward
    assert wheel.release(CRM, T0 + HOUR) == 0
    small = TimerWheel(max_entries=1)
    small.hold("a", CRM)
    small.hold("b", CRM)
    assert small.held(CRM) == frozenset({"a"})
    assert small.dropped == 1


def test_timer_wheel_json_round_trip_and_rebuild() -> None:
    wheel = TimerWheel()
    wheel.schedule("a", T0 + MIN)
    wheel.schedule("b", T0 + HOUR)
    wheel.hold("c", WMS)
    again = TimerWheel.from_json(json.loads(json.dumps(wheel.to_json())))
    assert again.to_json() == wheel.to_json()
    assert again.held(WMS) == frozenset({"c"})
    assert TimerWheel.from_json(None).to_json() == {"t": []}
    rebuilt = TimerWheel.rebuild([("a", wheel._at["a"]), ("x", None)])
    assert rebuilt.due(T0 + HOUR) == [Due("a", T0 + MIN)]


# --- timers, not scans: the same anomalies either way ---------------------------------------

STEP = 5 * MIN  # every threshold is a multiple, so every deadline falls on the scan grid
HORIZON = 1200  # steps: 100 h, past the 72 h escalation
ORDERS = ("SO-A", "SO-B")

_stages = st.sampled_from([*Stage, Marker.DELIVERY_EXCEPTION])
_sources = st.sampled_from(list(Source))
_events = st.lists(
    st.tuples(
        st.sampled_from(ORDERS),
        _sources,
        _stages,
        st.one_of(st.integers(0, 40), st.integers(0, HORIZON)),
    ),
    max_size=14,
)


_delay = st.one_of(st.none(), st.integers(0, 12))  # steps; None: the system never shows it


@st.composite
def _stories(draw: st.DrawFn) -> list[tuple[str, Source, Stage | Marker, int]]:
    """A lifelike order: the ERP leads, the others follow late or never, the carrier scans."""
    order = "SO-A"
    evs: list[tuple[str, Source, Stage | Marker, int]] = [(order, ERP, Stage.PLACED, 0)]
    crm = draw(_delay)
    if crm is not None:
        evs.append((order, CRM, Stage.PLACED, crm))
    t = 0
    for stage in (Stage.ALLOCATED, Stage.SHIPPED, Stage.DELIVERED):
        # Long enough in shipped for stalls (24 h = 288 steps) and their escalation (864).
        t += draw(st.integers(1, 1000 if stage is Stage.DELIVERED else 300))
        evs.append((order, ERP, stage, t))
        for source in (CRM, WMS):
            delay = draw(_delay)
            if delay is not None:
                evs.append((order, source, stage, t + delay))
        if stage is Stage.SHIPPED:
            for _ in range(draw(st.integers(0, 3))):
                evs.append((order, LOG, Stage.IN_TRANSIT, t + draw(st.integers(0, 1000))))
        if draw(st.integers(0, 3)) == 0:
            evs.append((order, ERP, Stage.CANCELLED, t + draw(st.integers(1, 50))))
            break
    if draw(st.booleans()):
        evs.append(
            ("SO-B", draw(st.sampled_from([CRM, WMS])), Stage.PLACED, draw(st.integers(0, 50)))
        )
    return evs


History = Sequence[tuple[str, Source, Stage | Marker, int]]  # (order, source, what, grid step)


def _bodies(evs: History) -> dict[int, list[dict[str, Any]]]:
    """The normalised events of a history, by grid step."""
    by_step: dict[int, list[dict[str, Any]]] = {}
    for i, (order, source, what, step) in enumerate(evs):
        body = event(source, what, step * STEP, n=i, order_id=order)
        by_step.setdefault(step, []).append({**body, "order_id": order})
    return by_step


def _scan(evs: History) -> tuple[set[tuple[Any, ...]], set[str]]:
    """The reference: the rules on every order at every grid instant, no timers."""
    states = {o: OrderState(o) for o in ORDERS}
    ghosts = {o: GhostState.new(o) for o in ORDERS}
    emitted: list[Emit] = []
    by_step = _bodies(evs)
    for step in range(HORIZON + 1):
        now = T0 + step * STEP
        for order in ORDERS:
            emitted += RULES.evaluate(states[order], ghosts[order], now, WALL).emits
        for body in by_step.get(step, ()):
            order = body["order_id"]
            JOIN.apply(states[order], body)
            emitted += RULES.evaluate(states[order], ghosts[order], now, WALL).emits
    anomalies_seen = {
        (a.anomaly_id, a.state, a.severity, a.opened_at, a.resolved_at)
        for a in emitted
        if isinstance(a, Anomaly)
    }
    return anomalies_seen, {c.command_id for c in emitted if isinstance(c, Command)}


def _through_the_stage(evs: History) -> tuple[set[tuple[Any, ...]], set[str]]:
    """The same history through the worker's per-order stage (its timer wheel, its loop),
    in-process: at every grid instant a watermark mark, then that instant's events."""
    pipeline = Pipeline(Settings(topic_partitions=1, clickhouse_enabled=False))
    by_step = _bodies(evs)
    for step in range(HORIZON + 1):
        pipeline.publish_watermark(T0 + step * STEP)
        pipeline.publish_normalized(by_step.get(step, ()))
    pipeline.run()
    anomalies_seen = {
        (a.anomaly_id, a.state, a.severity, a.opened_at, a.resolved_at)
        for a in map(Anomaly.model_validate, pipeline.anomalies())
    }
    return anomalies_seen, {c["command_id"] for c in pipeline.commands()}


@settings(max_examples=60, deadline=None)
@given(evs=st.one_of(_events, _stories()))
def test_the_stage_timers_give_the_same_anomalies_as_a_scan(
    evs: list[tuple[str, Source, Stage | Marker, int]],
) -> None:
    assert _through_the_stage(evs) == _scan(evs)


def test_the_stage_and_a_scan_agree_on_a_full_story() -> None:
    story = [
        ("SO-A", ERP, Stage.PLACED, 0),
        ("SO-A", ERP, Stage.ALLOCATED, 2),
        ("SO-A", CRM, Stage.PLACED, 5),  # CRM 25 min late: missing, then resolved
        ("SO-A", ERP, Stage.SHIPPED, 40),  # no WMS at all: missing; CRM lags: conflict
        ("SO-A", LOG, Stage.SHIPPED, 41),
        ("SO-A", LOG, Stage.IN_TRANSIT, 400),  # a stall before this scan
        ("SO-B", CRM, Stage.PLACED, 10),  # an orphan
        ("SO-B", WMS, Stage.ALLOCATED, 30),
    ]
    stage, scan = _through_the_stage(story), _scan(story)
    assert stage == scan
    seen, command_ids = stage
    # missing in CRM and WMS, a conflict, an orphan, two stalls
    assert len({a[0] for a in seen}) == 6
    assert len(command_ids) == 2 * 2  # two stalls, two commands each


def test_an_unlinked_reference_is_an_orphan_after_30_minutes_named_by_its_own_ref():
    # A CRM ticket no ERP order was ever linked to: ingest holds its events (no order id).
    held = [
        {
            k: v
            for k, v in event(Source.CRM, Stage.PLACED, timedelta(0)).items()
            if k != "erp_order_id"
        }
    ]
    ghosts = GhostState.new("CRM-ORPHAN-1")
    early = evaluate_unlinked(
        RULES, JOIN, "CRM-ORPHAN-1", held, ghosts, T0 + timedelta(minutes=29), WALL
    )
    assert early.emits == []
    assert early.next_deadline == T0 + timedelta(minutes=30)
    due = evaluate_unlinked(
        RULES, JOIN, "CRM-ORPHAN-1", held, ghosts, T0 + timedelta(minutes=30), WALL
    )
    (orphan,) = due.emits
    assert isinstance(orphan, Anomaly)
    assert orphan.type is AnomalyType.ORPHAN_ORDER
    assert orphan.order_id == "CRM-ORPHAN-1"
    assert orphan.systems == ["erp", "crm"]
    again = evaluate_unlinked(
        RULES, JOIN, "CRM-ORPHAN-1", held, ghosts, T0 + timedelta(hours=2), WALL
    )
    assert again.emits == []  # raised once
    (resolved,) = ghosts.book.resolve_all(T0 + timedelta(hours=3), WALL, "linked")
    assert resolved.state is AnomalyState.RESOLVED


def test_an_unlinked_reference_read_with_its_link_is_judged_up_to_the_link():
    # Ingest read the ticket's link (dated 45 min) before any of its timers came up: it was
    # an orphan from 30 to 45 min all the same. Linked at 20 min: it never was one.
    held = [
        {
            k: v
            for k, v in event(Source.CRM, Stage.PLACED, timedelta(0)).items()
            if k != "erp_order_id"
        }
    ]
    link = as_us(T0 + timedelta(minutes=45))
    ghosts = GhostState.new("CRM-1")
    first = evaluate_unlinked(RULES, JOIN, "CRM-1", held, ghosts, T0, WALL, link)
    assert (first.emits, first.next_deadline) == ([], T0 + timedelta(minutes=30))
    due = evaluate_unlinked(
        RULES, JOIN, "CRM-1", held, ghosts, T0 + timedelta(minutes=30), WALL, link
    )
    (orphan,) = due.emits
    assert isinstance(orphan, Anomaly)
    assert (orphan.opened_at, due.next_deadline) == (
        T0 + timedelta(minutes=30),
        T0 + timedelta(minutes=45),
    )
    done = evaluate_unlinked(
        RULES, JOIN, "CRM-1", held, ghosts, T0 + timedelta(minutes=45), WALL, link
    )
    (resolved,) = done.emits
    assert isinstance(resolved, Anomaly)
    assert (resolved.state, resolved.resolved_at) == (
        AnomalyState.RESOLVED,
        T0 + timedelta(minutes=45),
    )
    assert done.next_us is None
    early = as_us(T0 + timedelta(minutes=20))
    other = GhostState.new("CRM-2")
    first = evaluate_unlinked(RULES, JOIN, "CRM-2", held, other, T0, WALL, early)
    assert (first.emits, first.next_deadline) == ([], T0 + timedelta(minutes=20))
    done = evaluate_unlinked(
        RULES, JOIN, "CRM-2", held, other, T0 + timedelta(minutes=20), WALL, early
    )
    assert (done.emits, done.next_us) == ([], None)


# --- judged as of the evaluation's event time, not on the latest state ----------------------


def test_a_backlogged_wms_is_missing_at_its_deadline_though_later_erp_events_were_read() -> None:
    # A catch-up: the ERP's whole life (allocated, shipped, delivered) is read while a slow
    # source holds event time back. The WMS never reports. At allocated + 2 h the order was
    # fulfilling, so the WMS was missing then; delivered later takes it out of scope.
    state = state_of(
        event(ERP, Stage.PLACED, 0 * MIN),
        event(CRM, Stage.PLACED, 1 * MIN),
        event(ERP, Stage.ALLOCATED, 10 * MIN),
        event(CRM, Stage.ALLOCATED, 11 * MIN),
        event(ERP, Stage.SHIPPED, 5 * HOUR),
        event(CRM, Stage.SHIPPED, 5 * HOUR + MIN),
        event(LOG, Stage.SHIPPED, 5 * HOUR + 30 * MIN),
        event(LOG, Stage.IN_TRANSIT, 20 * HOUR, n=2),
        event(LOG, Stage.DELIVERED, 29 * HOUR + 50 * MIN),
        event(ERP, Stage.DELIVERED, 30 * HOUR),
        event(CRM, Stage.DELIVERED, 30 * HOUR + MIN),
    )
    ghosts = GhostState.new(ORDER)
    opened = run(state, ghosts, 2 * HOUR + 10 * MIN)
    wms_missing = ghost_anomaly_id(MISSING, ORDER, WMS.value)
    assert [(e.anomaly_id, e.state, e.opened_at) for e in anomalies(opened)] == [
        (wms_missing, AnomalyState.OPEN, T0 + 2 * HOUR + 10 * MIN)
    ]
    # Looked at next when the ERP's shipped event counts (event time 5 h), not at the end.
    assert opened.next_us == int((T0 + 5 * HOUR).timestamp() * 1e6)
    later = []
    while ghosts.next_us is not None:
        at = datetime.fromtimestamp(ghosts.next_us / 1e6, UTC) - T0
        later += [(e.anomaly_id, e.state, e.resolved_at) for e in anomalies(run(state, ghosts, at))]
    # Shipped keeps the WMS in scope; delivered (30 h) takes it out: that alone resolves it.
    assert later == [(wms_missing, AnomalyState.RESOLVED, T0 + 30 * HOUR)]


def test_a_stall_counts_from_the_carrier_scan_before_it_not_from_a_later_one() -> None:
    # The carrier scanned at 1 h and again at 30 h; read together, ahead of event time. At
    # shipped + 24 h nothing had come from the carrier for 24 h: the stall is real, and the
    # 30 h scan resolves it.
    state = state_of(
        event(ERP, Stage.PLACED, 0 * MIN),
        event(CRM, Stage.PLACED, 1 * MIN),
        event(WMS, Stage.SHIPPED, 0 * MIN),
        event(ERP, Stage.SHIPPED, 0 * MIN),
        event(CRM, Stage.SHIPPED, 1 * MIN),
        event(LOG, Stage.SHIPPED, 1 * HOUR),
        event(LOG, Stage.IN_TRANSIT, 30 * HOUR, n=2),
    )
    ghosts = GhostState.new(ORDER)
    stall = ghost_anomaly_id(STALL, ORDER, str(int((T0 + HOUR).timestamp() * 1e6)))
    opened = run(state, ghosts, 25 * HOUR)
    assert [(e.anomaly_id, e.opened_at) for e in anomalies(opened)] == [(stall, T0 + 25 * HOUR)]
    assert sorted(c.kind for c in opened.emits if isinstance(c, Command)) == [
        CommandKind.CARRIER_EXCEPTION_TICKET,
        CommandKind.CUSTOMER_NOTIFY,
    ]
    resolved = anomalies(run(state, ghosts, 30 * HOUR))
    assert [(e.anomaly_id, e.state) for e in resolved] == [(stall, AnomalyState.RESOLVED)]


def test_the_state_as_of_an_event_time_round_trips_through_json() -> None:
    carrier_scans = [event(LOG, Stage.IN_TRANSIT, h * HOUR, n=h) for h in range(1, 40)]
    state = state_of(event(ERP, Stage.SHIPPED, 0 * MIN), *carrier_scans)
    again = OrderState.from_json(json.loads(json.dumps(state.to_json())))
    for h in (0, 5, 20, 39):
        t = int((T0 + h * HOUR).timestamp() * 1e6)
        assert again.as_of(t) == state.as_of(t)
        assert again.next_event_after(t) == state.next_event_after(t)


def test_an_order_is_never_judged_back_in_time() -> None:
    # An orphan opened at its deadline; judged again at an earlier time (a timer rebuilt at
    # the reference's first event after a restart, a late event) it stays open.
    state = state_of(event(CRM, Stage.PLACED, 0 * MIN))
    ghosts = GhostState.new(ORDER)
    orphan = ghost_anomaly_id(ORPHAN, ORDER, "")
    assert [e.anomaly_id for e in anomalies(run(state, ghosts, 30 * MIN))] == [orphan]
    restored = GhostState.from_json(json.loads(json.dumps(ghosts.to_json())), ORDER)
    assert run(state, restored, 0 * MIN).emits == []
    assert restored.book.get(orphan) is not None
    assert restored.book.has_open
