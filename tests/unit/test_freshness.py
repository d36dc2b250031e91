"""Per-source freshness: silent sources, catching up, restart, and the ghost flags held back."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from schemas.anomalies import (
    Anomaly,
    AnomalyState,
    AnomalyType,
    Decision,
    DecisionKind,
    Severity,
    Team,
)
from schemas.settings import Settings
from schemas.stages import PHASE_OF, Source, Stage
from streams.orders import OrderStage
from streams.rules.freshness import CaughtUp, FreshnessSettings, SourceFreshness
from streams.rules.lifecycle import apply_decision
from tests.stage_harness import Pipeline

T0 = datetime(2025, 12, 12, 2, 0, tzinfo=UTC)
SEC = timedelta(seconds=1)
MIN = timedelta(minutes=1)
HOUR = timedelta(hours=1)
ERP, CRM, WMS, LOG = Source.ERP, Source.CRM, Source.WMS, Source.LOGISTICS
OTHERS = (ERP, WMS, LOG)


def at(offset: timedelta) -> datetime:
    """T0 plus an offset."""
    return T0 + offset


def flow(
    fresh: SourceFreshness,
    sources: tuple[Source, ...],
    start: timedelta,
    end: timedelta,
    every: timedelta = 30 * SEC,
) -> None:
    """Live events (event time = wall time) from `sources` every `every` in [start, end]."""
    t = start
    while t <= end:
        for source in sources:
            assert fresh.observe(source, at(t), at(t), event_id=f"{source}-{t}") is None
        t += every


def test_a_source_that_stops_while_the_others_flow_is_silent_once() -> None:
    fresh = SourceFreshness()
    fresh.observe(CRM, at(-MIN), at(0 * MIN), event_id="crm-77", status="已下单")
    flow(fresh, OTHERS, 0 * MIN, 10 * MIN)
    assert fresh.check(at(10 * MIN - SEC), at(10 * MIN - SEC)) == []
    assert fresh.silent == frozenset()

    (silent,) = fresh.check(at(10 * MIN), at(9 * MIN))
    assert silent.type is AnomalyType.SOURCE_SILENT
    assert silent.state is AnomalyState.OPEN
    assert silent.severity is Severity.CRITICAL
    assert silent.order_id is None
    assert silent.systems == ["crm"]
    assert silent.opened_at == at(9 * MIN)  # the watermark: event time
    assert silent.detected_at == at(10 * MIN)
    assert (silent.route.team, silent.route.rule) == (Team.INTEGRATION, "source_silent")
    assert [(e.source, e.event_id, e.status, e.occurred_at) for e in silent.evidence] == [
        ("crm", "crm-77", "已下单", at(-MIN))
    ]
    assert silent.summary.startswith("No events from the CRM for 10 min while the other feeds")
    assert (silent.model_extra or {})["silent_for_seconds"] == 600.0

    assert fresh.silent == frozenset({CRM})
    assert fresh.suppressed(CRM)
    assert not fresh.suppressed(ERP)
    flow(fresh, OTHERS, 10 * MIN + 30 * SEC, 30 * MIN)
    assert fresh.check(at(30 * MIN), at(30 * MIN)) == []  # said once


def test_an_idle_night_everywhere_is_not_a_silence() -> None:
    fresh = SourceFreshness()
    flow(fresh, (*OTHERS, CRM), 0 * MIN, 5 * MIN)
    assert fresh.check(at(3 * HOUR), at(3 * HOUR)) == []
    # Morning: the ERP starts again. The CRM, quiet all night, gets 10 min like anyone.
    flow(fresh, OTHERS, 3 * HOUR, 3 * HOUR + 10 * MIN)
    assert fresh.check(at(3 * HOUR + 10 * MIN - SEC), at(3 * HOUR + 10 * MIN)) == []
    (silent,) = fresh.check(at(3 * HOUR + 10 * MIN), at(3 * HOUR + 10 * MIN))
    assert silent.systems == ["crm"]


def test_a_trickle_from_the_others_is_not_enough() -> None:
    fresh = SourceFreshness(FreshnessSettings(min_other_events=10))
    fresh.observe(CRM, at(0 * MIN), at(0 * MIN))
    flow(fresh, (ERP,), 0 * MIN, 20 * MIN, every=3 * MIN)  # 7 events in 20 min
    assert fresh.check(at(20 * MIN), at(20 * MIN)) == []


def test_a_source_never_heard_from_goes_silent_too() -> None:
    fresh = SourceFreshness()
    flow(fresh, (ERP, CRM, WMS), 0 * MIN, 10 * MIN)
    (silent,) = fresh.check(at(10 * MIN), at(10 * MIN))
    assert silent.systems == ["logistics"]
    assert silent.evidence == []
    assert (silent.model_extra or {})["last_event_at"] is None


def test_only_configured_sources_are_watched() -> None:
    fresh = SourceFreshness(FreshnessSettings(sources=(ERP, CRM)))
    flow(fresh, (ERP, CRM), 0 * MIN, 20 * MIN)
    assert fresh.check(at(20 * MIN), at(20 * MIN)) == []


def test_a_source_is_back_only_once_its_backlog_has_caught_up() -> None:
    fresh = SourceFreshness()
    fresh.observe(CRM, at(0 * MIN), at(0 * MIN))
    flow(fresh, OTHERS, 0 * MIN, 30 * MIN)
    (opened,) = fresh.check(at(30 * MIN), at(30 * MIN))
    # The connector restarts and replays: its old events are not "caught up".
    assert fresh.observe(CRM, at(MIN), at(31 * MIN)) is None
    assert fresh.observe(CRM, at(20 * MIN - SEC), at(31 * MIN)) is None
    assert fresh.silent == frozenset({CRM})
    back = fresh.observe(CRM, at(20 * MIN), at(31 * MIN))  # within 10 min of the others
    assert isinstance(back, CaughtUp)
    assert back.source is CRM
    resolved = back.anomaly
    assert resolved is not None
    assert resolved.anomaly_id == opened.anomaly_id
    assert resolved.state is AnomalyState.RESOLVED
    assert resolved.resolved_at == at(30 * MIN)  # never before it opened
    assert (resolved.model_extra or {})["resolution"] == "caught_up"
    assert resolved.summary.endswith("Resolved: the CRM has caught up.")
    assert fresh.silent == frozenset()
    assert fresh.observe(CRM, at(31 * MIN), at(31 * MIN)) is None
    assert fresh.last_event(CRM) == at(31 * MIN)
    assert fresh.last_wall(CRM) == at(31 * MIN)
    assert fresh.last_event(Source.WMS) == at(30 * MIN)


def test_a_decision_can_resolve_the_anomaly_but_not_the_silence() -> None:
    fresh = SourceFreshness()
    fresh.observe(CRM, at(0 * MIN), at(0 * MIN))
    flow(fresh, OTHERS, 0 * MIN, 10 * MIN)
    (opened,) = fresh.check(at(10 * MIN), at(10 * MIN))
    decided = Decision(
        decision_id="d-1",
        kind=DecisionKind.ANOMALY_RESOLVE,
        target=opened.anomaly_id,
        by="ops",
        at=at(12 * MIN),
    )
    (resolved,) = apply_decision(fresh.book, decided, at(12 * MIN))
    assert resolved.state is AnomalyState.RESOLVED
    assert fresh.suppressed(CRM)  # the feed is still down
    assert fresh.observe(CRM, at(12 * MIN), at(12 * MIN)) == CaughtUp(CRM, None)
    assert not fresh.suppressed(CRM)


def test_freshness_survives_a_restart_and_never_raises_twice() -> None:
    fresh = SourceFreshness()
    fresh.observe(CRM, at(0 * MIN), at(0 * MIN))
    flow(fresh, OTHERS, 0 * MIN, 10 * MIN)
    (opened,) = fresh.check(at(10 * MIN), at(10 * MIN))
    raw = json.loads(json.dumps(fresh.to_json()))
    again = SourceFreshness.from_json(raw)
    assert again.to_json() == fresh.to_json()
    assert again.silent == frozenset({CRM})
    flow(again, OTHERS, 10 * MIN, 20 * MIN)
    assert again.check(at(20 * MIN), at(20 * MIN)) == []
    back = again.observe(CRM, at(20 * MIN), at(20 * MIN))
    assert back is not None
    assert back.anomaly is not None
    assert back.anomaly.anomaly_id == opened.anomaly_id
    assert SourceFreshness.from_json(None).to_json()["x"] == {}


def test_after_a_restart_the_time_the_worker_was_down_is_not_a_silence() -> None:
    fresh = SourceFreshness()
    flow(fresh, (*OTHERS, CRM), 0 * MIN, 5 * MIN)
    raw = json.loads(json.dumps(fresh.to_json()))
    # Down for an hour; on restart the ERP topic's backlog is read before the CRM's.
    again = SourceFreshness.from_json(raw, resumed_at=at(HOUR + 5 * MIN))
    flow(again, OTHERS, HOUR + 5 * MIN, HOUR + 10 * MIN)
    assert again.check(at(HOUR + 10 * MIN), at(HOUR + 10 * MIN)) == []
    flow(again, OTHERS, HOUR + 10 * MIN, HOUR + 15 * MIN)
    (silent,) = again.check(at(HOUR + 15 * MIN), at(HOUR + 15 * MIN))
    assert silent.systems == ["crm"]


def test_nothing_is_silent_before_the_first_event() -> None:
    assert SourceFreshness().check(at(HOUR), at(HOUR)) == []


def test_freshness_settings_are_validated() -> None:
    with pytest.raises(ValidationError):
        FreshnessSettings(silent_after=timedelta(0))
    with pytest.raises(ValidationError):
        FreshnessSettings(sources=(CRM, CRM))
    with pytest.raises(ValidationError):
        FreshnessSettings(sources=(CRM,))
    with pytest.raises(ValidationError):
        FreshnessSettings(min_other_events=0)


# --- the whole story: a silent CRM, held flags, the CRM back ---------------------------------


def _event(source: Source, stage: Stage, order_id: str, t: timedelta, n: int = 0) -> dict[str, Any]:
    return {
        "event_id": f"{source.value}-{order_id}-{stage.value}-{n}",
        "source": source.value,
        "order_ref": order_id if source is ERP else f"C-{order_id}",
        "erp_order_id": order_id,
        "order_id": order_id,
        "status": stage.value.upper(),
        "occurred_at": at(t).isoformat(),
        "stage": stage.value,
        "phase": PHASE_OF[stage].value,
    }


# What other orders' traffic looks like: events of one order that none of them disturbs.
_TRAFFIC = {ERP: Stage.CONFIRMED, CRM: Stage.CONFIRMED, WMS: Stage.ALLOCATED, LOG: Stage.IN_TRANSIT}


class _Worker:
    """The worker's per-order stage in-process (tests/stage_harness.py), event time kept at
    wall time: every move of the wall clock is preceded by a watermark mark at the new time."""

    def __init__(self) -> None:
        settings = Settings(topic_partitions=1, clickhouse_enabled=False)
        self.pipeline = Pipeline(settings, wall=at(-MIN))
        self.sent = 0

    @property
    def stage(self) -> OrderStage:
        return self.pipeline.stages.orders

    def move_to(self, t: timedelta) -> None:
        """Event time, then the wall clock to T0 + t (the stage's 1-second timers run)."""
        self.pipeline.publish_watermark(at(t))
        self.pipeline.run()
        self.pipeline.advance_wall_to(at(t))

    def send(self, *events: dict[str, Any]) -> None:
        """Events into the stage, now."""
        self.pipeline.publish_normalized(events)
        self.pipeline.run()

    def traffic(self, sources: tuple[Source, ...], t: timedelta) -> None:
        """Other orders' events from `sources` at T0 + t."""
        for source in sources:
            self.sent += 1
            self.send(_event(source, _TRAFFIC[source], "SO-0", t, n=self.sent))

    def anomalies(self) -> list[Anomaly]:
        return [Anomaly.model_validate(a) for a in self.pipeline.anomalies()]


def test_a_silent_crm_is_one_anomaly_and_held_flags_fire_only_if_still_true() -> None:
    w = _Worker()
    w.move_to(0 * MIN)
    w.send(_event(CRM, Stage.PLACED, "SO-0", 0 * MIN))  # the CRM's last sign
    orders = [f"SO-{i}" for i in range(1, 6)]
    for minute in range(60):
        now = minute * MIN
        w.move_to(now)
        if 1 <= minute <= 5:  # five new orders; the CRM connector is down
            w.send(_event(ERP, Stage.PLACED, orders[minute - 1], now))
        flowing = (ERP, WMS, LOG) if minute <= 40 else (ERP, CRM, WMS, LOG)
        w.traffic(flowing, now)
        if minute == 30:  # every order is past its 15 min, and parked rather than flagged
            assert w.stage.wheel.held(CRM) == frozenset(orders)
            assert [a.type for a in w.anomalies()] == [AnomalyType.SOURCE_SILENT]
        if minute == 40:
            # The connector is back and replays its backlog, then live events. The CRM never
            # got SO-5, so that one is a true ghost.
            for i, order_id in enumerate(orders[:4], 1):
                w.send(_event(CRM, Stage.PLACED, order_id, (i + 1) * MIN))
            w.send(_event(CRM, Stage.CONFIRMED, "SO-0", now))
        w.move_to(now + 30 * SEC)
        w.traffic(flowing, now + 30 * SEC)

    out = w.anomalies()
    silent = [a for a in out if a.type is AnomalyType.SOURCE_SILENT]
    assert [(a.state, a.systems) for a in silent] == [
        (AnomalyState.OPEN, ["crm"]),
        (AnomalyState.RESOLVED, ["crm"]),
    ]
    assert silent[1].resolved_at == at(40 * MIN)
    missing = [a for a in out if a.type is AnomalyType.MISSING_IN_SYSTEM]
    # Held while the CRM was down, SO-1..4 converged from the backlog and never fired; SO-5
    # fired when the CRM caught up, opened at its own deadline.
    assert [(a.order_id, a.state, a.opened_at) for a in missing] == [
        ("SO-5", AnomalyState.OPEN, at(20 * MIN))
    ]
    assert missing[0].detected_at == at(40 * MIN + SEC)  # at the stage's next 1-second timer
    assert w.stage.wheel.held(CRM) == frozenset()
    assert w.stage.freshness.silent == frozenset()
