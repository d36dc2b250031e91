"""The anomaly book: raise once, escalate, resolve, decisions, restart; the open-anomaly gauges."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from schemas.anomalies import (
    Anomaly,
    AnomalyState,
    AnomalyType,
    Decision,
    DecisionKind,
    Severity,
    Team,
)
from streams.rules.lifecycle import (
    MAX_DECISIONS,
    AnomalyBook,
    BookEntry,
    OpenGhosts,
    UnknownAnomaly,
    apply_decision,
    books_open,
)
from streams.rules.watermark import as_us

T0 = datetime(2025, 12, 12, 10, 0, tzinfo=UTC)
WALL = datetime(2025, 12, 12, 10, 0, 9, tzinfo=UTC)
MIN = timedelta(minutes=1)
ORDER = "SO2025121200123"
STALL = AnomalyType.STALLED_TRACKING
MISSING = AnomalyType.MISSING_IN_SYSTEM


def entry(
    anomaly_id: str = "anomaly-1",
    *,
    type_: AnomalyType = STALL,
    severity: Severity = Severity.WARNING,
    opened: timedelta = timedelta(0),
    team: Team = Team.LOGISTICS,
    summary: str = "Order SO1 shipped 26 h ago but the carrier has sent no scan since.",
    extra: dict[str, Any] | None = None,
) -> BookEntry:
    """A book entry opened `opened` after T0."""
    return BookEntry(
        anomaly_id=anomaly_id,
        type=type_,
        severity=severity,
        opened_us=as_us(T0 + opened),
        team=team,
        rule="stalled_tracking",
        systems=("erp", "logistics"),
        summary=summary,
        evidence=(("erp", "e-1", "SHIPPED", as_us(T0 - 24 * 60 * MIN)),),
        extra=extra if extra is not None else {"carrier": "顺丰"},
    )


def decision(
    kind: DecisionKind, target: str = "anomaly-1", n: int = 1, at: timedelta = 10 * MIN
) -> Decision:
    """A decision taken `at` after T0."""
    return Decision(
        decision_id=f"d-{n}", kind=kind, target=target, by="li.wei", at=T0 + at, note="seen"
    )


def test_a_new_anomaly_opens_once() -> None:
    book = AnomalyBook(ORDER)
    opened = book.record(entry(), WALL)
    assert opened is not None
    assert opened.state is AnomalyState.OPEN
    assert opened.order_id == ORDER
    assert opened.opened_at == T0
    assert opened.detected_at == WALL
    assert opened.route.team is Team.LOGISTICS
    assert opened.evidence[0].event_id == "e-1"
    assert (opened.model_extra or {}) == {"carrier": "顺丰"}
    assert book.has_open
    assert book.record(entry(), WALL) is None  # the same id again: nothing
    assert book.record(entry(summary="another text"), WALL) is None
    assert len(book) == 1


def test_a_higher_severity_re_emits_the_same_id_and_keeps_opened_at() -> None:
    book = AnomalyBook(ORDER)
    book.record(entry(), WALL)
    critical = book.record(
        entry(severity=Severity.CRITICAL, opened=48 * 60 * MIN, summary="72 h now"), WALL
    )
    assert critical is not None
    assert critical.severity is Severity.CRITICAL
    assert critical.opened_at == T0
    assert critical.summary == "72 h now"
    assert book.record(entry(severity=Severity.WARNING), WALL) is None  # never back down
    assert book.record(entry(severity=Severity.CRITICAL), WALL) is None


def test_resolve_sets_resolved_at_and_time_to_resolve() -> None:
    book = AnomalyBook(ORDER)
    book.record(entry(), WALL)
    resolved = book.resolve("anomaly-1", T0 + 90 * MIN, WALL, summary="scanned again")
    assert resolved is not None
    assert resolved.state is AnomalyState.RESOLVED
    assert resolved.resolved_at == T0 + 90 * MIN
    extra = resolved.model_extra or {}
    assert extra["time_to_resolve_seconds"] == 5400.0
    assert extra["resolution"] == "converged"
    assert resolved.summary == "scanned again"
    assert not book.has_open
    assert book.resolve("anomaly-1", T0 + 99 * MIN, WALL) is None
    assert book.resolve("nope", T0, WALL) is None
    # A resolved id is never raised again, even at a higher severity.
    assert book.record(entry(severity=Severity.CRITICAL), WALL) is None


def test_resolved_at_is_never_before_opened_at() -> None:
    book = AnomalyBook(ORDER)
    book.record(entry(opened=10 * MIN), WALL)
    resolved = book.resolve("anomaly-1", T0, WALL)
    assert resolved is not None
    assert resolved.resolved_at == T0 + 10 * MIN
    assert (resolved.model_extra or {})["time_to_resolve_seconds"] == 0.0


def test_the_book_keeps_only_recently_resolved_entries() -> None:
    book = AnomalyBook(ORDER, keep_resolved=2)
    for i in range(4):
        book.record(entry(f"a-{i}"), WALL)
    book.record(entry("still-open"), WALL)
    for i in range(4):
        book.resolve(f"a-{i}", T0 + i * MIN, WALL)
    assert sorted(book.entries) == ["a-2", "a-3", "still-open"]
    assert [e.anomaly_id for e in book.open_entries()] == ["still-open"]
    with pytest.raises(ValueError, match="keep_resolved"):
        AnomalyBook(ORDER, keep_resolved=-1)


def test_resolve_all_closes_everything_open() -> None:
    book = AnomalyBook(ORDER)
    book.record(entry("a"), WALL)
    book.record(entry("b", opened=MIN), WALL)
    book.resolve("a", T0 + MIN, WALL)
    closed = book.resolve_all(T0 + 5 * MIN, WALL, "evicted")
    assert [(a.anomaly_id, (a.model_extra or {})["resolution"]) for a in closed] == [
        ("b", "evicted")
    ]
    assert not book.has_open


# --- decisions --------------------------------------------------------------------------------


def test_ack_records_the_decision_keeps_it_open_and_re_emits() -> None:
    book = AnomalyBook(ORDER)
    book.record(entry(), WALL)
    (acked,) = apply_decision(book, decision(DecisionKind.ANOMALY_ACK), WALL)
    assert acked.state is AnomalyState.OPEN
    assert (acked.model_extra or {})["acknowledged"] is True
    assert [d["decision_id"] for d in acked.decisions] == ["d-1"]
    assert acked.decisions[0]["by"] == "li.wei"
    assert book.has_open
    # Redelivered: the same anomaly, the decision not recorded twice.
    (again,) = apply_decision(book, decision(DecisionKind.ANOMALY_ACK), WALL)
    assert again == acked
    # An acknowledged anomaly still escalates, with its decisions.
    critical = book.record(entry(severity=Severity.CRITICAL), WALL)
    assert critical is not None
    assert (critical.model_extra or {})["acknowledged"] is True
    assert len(critical.decisions) == 1


def test_resolve_decision_resolves_now() -> None:
    book = AnomalyBook(ORDER)
    book.record(entry(), WALL)
    (resolved,) = apply_decision(book, decision(DecisionKind.ANOMALY_RESOLVE, at=30 * MIN), WALL)
    assert resolved.state is AnomalyState.RESOLVED
    assert resolved.resolved_at == T0 + 30 * MIN
    extra = resolved.model_extra or {}
    assert extra["resolution"] == "decision"
    assert extra["time_to_resolve_seconds"] == 1800.0
    assert resolved.decisions[0]["kind"] == "anomaly.resolve"
    assert not book.has_open
    # Redelivered: unchanged. A later ack on the resolved anomaly is recorded, not reopened.
    (again,) = apply_decision(book, decision(DecisionKind.ANOMALY_RESOLVE, at=30 * MIN), WALL)
    assert again == resolved
    (late,) = apply_decision(book, decision(DecisionKind.ANOMALY_ACK, n=2), WALL)
    assert late.state is AnomalyState.RESOLVED
    assert late.resolved_at == T0 + 30 * MIN
    assert len(late.decisions) == 2


def test_a_decision_for_an_unknown_anomaly_raises_unknown_anomaly() -> None:
    book = AnomalyBook(ORDER)
    with pytest.raises(UnknownAnomaly, match="anomaly-x") as caught:
        apply_decision(book, decision(DecisionKind.ANOMALY_ACK, target="anomaly-x"), WALL)
    assert caught.value.anomaly_id == "anomaly-x"
    assert caught.value.order_id == ORDER
    assert isinstance(caught.value, LookupError)
    with pytest.raises(UnknownAnomaly, match="intake-wide"):
        AnomalyBook(None).emit("anomaly-x", WALL)


def test_other_decision_kinds_are_refused() -> None:
    book = AnomalyBook(ORDER)
    book.record(entry(), WALL)
    for kind in (DecisionKind.DUPLICATE_MERGE, DecisionKind.BREAKER_ACK):
        with pytest.raises(ValueError, match=r"not anomaly\.ack or anomaly\.resolve"):
            apply_decision(book, decision(kind), WALL)


def test_decisions_per_anomaly_are_capped() -> None:
    book = AnomalyBook(ORDER)
    book.record(entry(), WALL)
    for n in range(MAX_DECISIONS):
        apply_decision(book, decision(DecisionKind.ANOMALY_ACK, n=n), WALL)
    with pytest.raises(ValueError, match="already has"):
        apply_decision(book, decision(DecisionKind.ANOMALY_ACK, n=MAX_DECISIONS), WALL)


# --- restart ----------------------------------------------------------------------------------


def test_the_book_survives_a_restart() -> None:
    book = AnomalyBook(ORDER)
    book.record(entry("a"), WALL)
    book.record(entry("b", type_=MISSING, extra={}), WALL)
    apply_decision(book, decision(DecisionKind.ANOMALY_ACK, target="a"), WALL)
    book.resolve("b", T0 + MIN, WALL)
    raw = json.loads(json.dumps(book.to_json()))
    again = AnomalyBook.from_json(raw)
    assert again.order_id == ORDER
    assert again.to_json() == book.to_json()
    assert again.has_open
    assert again.emit("a", WALL) == book.emit("a", WALL)
    assert again.emit("b", WALL) == book.emit("b", WALL)
    # Never raised twice, whatever happened before the restart.
    assert again.record(entry("a"), WALL) is None
    assert again.record(entry("b", type_=MISSING), WALL) is None
    assert AnomalyBook.from_json(None).entries == {}


# --- the gauges -------------------------------------------------------------------------------


def _anomaly(
    anomaly_id: str,
    type_: AnomalyType = MISSING,
    team: Team = Team.INTEGRATION,
    order_id: str | None = ORDER,
    state: AnomalyState = AnomalyState.OPEN,
) -> Anomaly:
    return Anomaly.model_validate(
        {
            "anomaly_id": anomaly_id,
            "type": type_,
            "state": state,
            "severity": "warning",
            "order_id": order_id,
            "opened_at": T0,
            "detected_at": WALL,
            "route": {"team": team, "rule": "r"},
            "summary": "s",
        }
    )


def test_open_ghosts_counts_orders_by_type_and_anomalies_by_type_and_team() -> None:
    gauges = OpenGhosts()
    assert gauges.observe(_anomaly("crm"))
    assert gauges.observe(_anomaly("wms", team=Team.WAREHOUSE))  # same order, same type
    assert gauges.observe(_anomaly("other", order_id="SO9"))
    assert gauges.observe(_anomaly("dup", AnomalyType.DUPLICATE_ORDER, Team.SALES))
    assert gauges.observe(_anomaly("silent", AnomalyType.SOURCE_SILENT, order_id=None))
    assert not gauges.observe(_anomaly("crm"))  # a re-emit counts once
    assert gauges.ghost_orders() == {
        MISSING: 2,
        AnomalyType.ORPHAN_ORDER: 0,
        AnomalyType.STALLED_TRACKING: 0,
        AnomalyType.STATUS_CONFLICT: 0,
    }
    assert gauges.open_anomalies() == {
        (AnomalyType.DUPLICATE_ORDER, Team.SALES): 1,
        (MISSING, Team.INTEGRATION): 2,
        (MISSING, Team.WAREHOUSE): 1,
        (AnomalyType.SOURCE_SILENT, Team.INTEGRATION): 1,
    }
    assert gauges.observe(_anomaly("crm", state=AnomalyState.RESOLVED))
    assert gauges.ghost_orders()[MISSING] == 2  # the WMS one keeps the order a ghost
    assert gauges.observe(_anomaly("wms", state=AnomalyState.RESOLVED))
    assert gauges.ghost_orders()[MISSING] == 1
    assert not gauges.observe(_anomaly("never-seen", state=AnomalyState.RESOLVED))
    assert len(gauges) == 3


def test_an_escalation_that_changes_team_moves_the_anomaly() -> None:
    gauges = OpenGhosts()
    conflict = AnomalyType.STATUS_CONFLICT
    gauges.observe(_anomaly("c", conflict, Team.WAREHOUSE))
    gauges.observe(_anomaly("c", conflict, Team.LOGISTICS))
    assert gauges.open_anomalies() == {(conflict, Team.LOGISTICS): 1}
    assert gauges.ghost_orders()[conflict] == 1


def test_open_ghosts_merge_restart_and_rebuild() -> None:
    a, b = OpenGhosts(), OpenGhosts()
    a.observe(_anomaly("x"))
    b.observe(_anomaly("x"))
    b.observe(_anomaly("y", order_id="SO9"))
    a.merge(b)
    a.merge(b)  # idempotent
    assert a.open_anomalies() == {(MISSING, Team.INTEGRATION): 2}
    assert sorted(a) == ["x", "y"]
    again = OpenGhosts.from_json(json.loads(json.dumps(a.to_json())))
    assert again.to_json() == a.to_json()
    assert again.ghost_orders() == a.ghost_orders()
    assert OpenGhosts.from_json(None).open_anomalies() == {}

    book = AnomalyBook(ORDER)
    book.record(entry("s1"), WALL)
    book.record(entry("s2"), WALL)
    book.resolve("s2", T0, WALL)
    rebuilt = books_open([book, AnomalyBook("SO9")])
    assert rebuilt.open_anomalies() == {(STALL, Team.LOGISTICS): 1}
    assert rebuilt.ghost_orders()[STALL] == 1
