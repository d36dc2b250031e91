"""The intake breaker (stages 1 and 2) and its exact, mergeable minute counts."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta, timezone
from fractions import Fraction
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
    Decision,
    DecisionKind,
    Severity,
    Team,
)
from streams.rules.breaker import Breaker, BreakerSettings, Emit, Evaluation
from streams.rules.intake import IntakeCounts, IntakeKind, IntakeTotals

T0 = datetime(2024, 5, 6, 10, 0, tzinfo=UTC)
WALL = datetime(2024, 5, 6, 10, 3, 7, tzinfo=UTC)
MINUTE = timedelta(minutes=1)
STEP = timedelta(minutes=10)
HOUR = timedelta(minutes=60)

# With a 10-minute window each evaluation sees exactly the slice fed before it, which
# lets a test script held / clear evaluation by evaluation.
QUICK = BreakerSettings(window=STEP)
HOT = (2300, 900, 100)  # 2300 orders, 10% reservations failed
COLD = (1000, 950, 50)  # 5%
# Per 10-minute slice for the default 60-minute window: six make 2400 orders at 9.1%.
HOT_SLICE = (400, 150, 15)
COLD_SLICE = (400, 150, 5)
Figures = tuple[int, int, int]


def spread(counts: IntakeCounts, start: datetime, end: datetime, figures: Figures) -> None:
    """Spread the figures evenly over the minutes of [start, end), off the minute marks."""
    minutes = (end - start) // MINUTE
    kinds = (IntakeKind.CREATED, IntakeKind.ALLOCATED, IntakeKind.ALLOCATION_FAILED)
    for kind, total in zip(kinds, figures, strict=True):
        for i in range(minutes):
            n = total // minutes + (1 if i < total % minutes else 0)
            if n:
                counts.add(kind, start + i * MINUTE + timedelta(seconds=31), n)


def decision(kind: DecisionKind, n: int, at: datetime, target: str = "intake") -> Decision:
    return Decision(decision_id=f"d-{n}", kind=kind, target=target, by="ops-lead", at=at)


def codes(emits: Iterable[Emit]) -> list[str]:
    """A readable trace: command kinds, and anomaly type:state(:resolution)."""
    out = []
    for emit in emits:
        if isinstance(emit, Command):
            out.append(emit.kind.value)
        else:
            extra = emit.model_extra or {}
            tail = f":{extra['resolution']}" if "resolution" in extra else ""
            out.append(f"{emit.type.value}:{emit.state.value}{tail}")
    return out


def dumps(emits: Iterable[Emit]) -> list[dict[str, Any]]:
    return [emit.model_dump(mode="json") for emit in emits]


def commands(emits: Iterable[Emit]) -> list[Command]:
    return [emit for emit in emits if isinstance(emit, Command)]


def anomalies(emits: Iterable[Emit]) -> list[Anomaly]:
    return [emit for emit in emits if isinstance(emit, Anomaly)]


class Run:
    """A breaker fed one 10-minute slice per step, ticked at the end of each slice."""

    def __init__(self, config: BreakerSettings = QUICK, wall: datetime = WALL) -> None:
        self.counts = IntakeCounts()
        self.breaker = Breaker(config)
        self.wall = wall
        self.at = T0
        self.decisions = 0
        assert self.breaker.tick(self.counts, T0, wall) == []

    def step(self, figures: Figures) -> list[Emit]:
        spread(self.counts, self.at, self.at + STEP, figures)
        self.at += STEP
        return self.breaker.tick(self.counts, self.at, self.wall)

    def decide(self, kind: DecisionKind, target: str = "intake") -> list[Emit]:
        self.decisions += 1
        made = decision(kind, self.decisions, self.at + 2 * MINUTE, target)
        return self.breaker.decide(made, self.wall)

    def apply(self, op: Figures | DecisionKind) -> list[Emit]:
        return self.decide(op) if isinstance(op, DecisionKind) else self.step(op)

    def restart(self, config: BreakerSettings | None = None) -> None:
        """Continue from serialised state only, as a new worker would."""
        state = json.loads(json.dumps(self.breaker.to_json()))
        counted = json.loads(json.dumps(self.counts.to_json()))
        self.breaker = Breaker.from_json(state, config or self.breaker.settings)
        self.counts = IntakeCounts.from_json(counted)


ACK = DecisionKind.BREAKER_ACK
RELEASE = DecisionKind.BREAKER_RELEASE
WARN = ["intake_overload:open"]
NEXT_WARN = ["intake_overload:resolved:superseded", "intake_overload:open"]
THROTTLE = [*NEXT_WARN, "intake.throttle", "intake_throttled:open"]
CLEARED = ["intake_overload:resolved:cleared"]
RESUME = ["intake.resume", "intake_throttled:resolved:cleared"]


def fresh_window(figures: Figures, config: BreakerSettings | None = None) -> list[Emit]:
    """Emits of a fresh breaker evaluating T0 over figures spread across [T0 - 60 min, T0)."""
    counts = IntakeCounts()
    spread(counts, T0 - HOUR, T0, figures)
    return Breaker(config).tick(counts, T0, WALL)


# Stage 1: the condition, exactly.


@pytest.mark.parametrize(
    ("figures", "warns"),
    [
        pytest.param((2200, 900, 100), False, id="2200-orders-is-not-more-than-2200"),
        pytest.param((2201, 900, 100), True, id="2201-orders"),
        pytest.param((2201, 920, 80), False, id="8.0%-is-not-more-than-8%"),
        pytest.param((2201, 919, 81), True, id="8.1%"),
        pytest.param((2201, 23, 2), False, id="2-of-25-is-exactly-8%"),
        pytest.param((2201, 11499, 1001), True, id="8.008%"),
        pytest.param((5000, 0, 0), False, id="no-reservations-at-all"),
        pytest.param((2201, 0, 3), True, id="every-reservation-failed"),
        pytest.param((100, 0, 100), False, id="failures-but-few-orders"),
    ],
)
def test_stage_one_thresholds_are_strict(figures: Figures, warns: bool) -> None:
    emits = fresh_window(figures)
    assert codes(emits) == (WARN if warns else [])


def test_a_warning_carries_the_figures_that_tripped_it() -> None:
    (warning,) = fresh_window((2201, 919, 81))
    assert isinstance(warning, Anomaly)
    assert warning.type is AnomalyType.INTAKE_OVERLOAD
    assert warning.state is AnomalyState.OPEN
    assert warning.severity is Severity.WARNING
    assert warning.route.team is Team.OPERATIONS
    assert warning.route.rule == "breaker"
    assert warning.order_id is None
    assert warning.opened_at == T0
    assert warning.detected_at == WALL
    extra = warning.model_dump(mode="json")
    assert extra["orders_created"] == 2201
    assert extra["allocated"] == 919
    assert extra["allocation_failed"] == 81
    assert extra["failure_rate"] == pytest.approx(0.081)
    assert extra["window_start"] == "2024-05-06T09:00:00Z"
    assert extra["window_end"] == "2024-05-06T10:00:00Z"
    assert extra["shadow"] is False
    assert "2201 ERP orders" in warning.summary
    assert "8.1%" in warning.summary


def test_zero_reservations_report_a_zero_failure_rate() -> None:
    assert IntakeTotals(5000, 0, 0).failure_rate == 0.0
    assert not Breaker().holds(IntakeTotals(5000, 0, 0))


@given(
    created=st.integers(0, 5000),
    allocated=st.integers(0, 3000),
    failed=st.integers(0, 400),
    limit=st.sampled_from([0.0, 0.05, 0.08, 0.1, 0.125, 0.3, 1.0]),
)
def test_the_condition_is_exact_rational_arithmetic(
    created: int, allocated: int, failed: int, limit: float
) -> None:
    breaker = Breaker(BreakerSettings(failure_rate=limit))
    attempts = allocated + failed
    expected = created > 2200 and attempts > 0 and Fraction(failed, attempts) > Fraction(str(limit))
    assert breaker.holds(IntakeTotals(created, allocated, failed)) is expected


def test_the_window_is_half_open_and_offsets_do_not_matter() -> None:
    counts = IntakeCounts()
    shanghai = timezone(timedelta(hours=8))
    counts.add(IntakeKind.CREATED, T0 - HOUR)  # first instant of the window
    counts.add(IntakeKind.CREATED, (T0 - timedelta(microseconds=1)).astimezone(shanghai))
    counts.add(IntakeKind.CREATED, T0)  # belongs to the next window
    counts.add(IntakeKind.CREATED, T0 - HOUR - timedelta(microseconds=1))  # the one before
    assert counts.window_totals(T0) == (2, 0, 0)
    assert counts.window_totals(T0.astimezone(shanghai)) == (2, 0, 0)
    assert counts.window_totals(T0 + MINUTE, span=MINUTE) == (1, 0, 0)


def test_window_ends_must_be_whole_minutes() -> None:
    with pytest.raises(ValueError, match="whole minutes"):
        IntakeCounts().window_totals(T0 + timedelta(seconds=30))
    with pytest.raises(ValueError, match="whole number of minutes"):
        IntakeCounts().window_totals(T0, span=timedelta(seconds=90))


def test_naive_times_are_refused() -> None:
    naive = datetime(2024, 5, 6, 10, 0)
    with pytest.raises(ValueError, match="offset"):
        IntakeCounts().add(IntakeKind.CREATED, naive)
    with pytest.raises(ValueError, match="offset"):
        Breaker().tick(IntakeCounts(), naive, WALL)


# Warnings and their lifecycle.


def test_a_warning_is_superseded_by_the_next_and_clears_with_the_condition() -> None:
    run = Run()
    first = run.step(HOT)
    second = run.step(COLD)
    assert codes(first) == WARN
    assert codes(second) == CLEARED
    assert anomalies(second)[0].anomaly_id == anomalies(first)[0].anomaly_id
    assert run.breaker.stage == 0

    run = Run(BreakerSettings(window=STEP, warnings_to_throttle=3))
    first = run.step(HOT)
    second = run.step(HOT)
    assert codes(second) == NEXT_WARN
    resolved, opened = anomalies(second)
    assert resolved.anomaly_id == anomalies(first)[0].anomaly_id
    assert resolved.resolved_at == T0 + 2 * STEP
    assert opened.anomaly_id != resolved.anomaly_id
    assert opened.opened_at == T0 + 2 * STEP
    assert run.breaker.stage == 1


def test_warnings_not_on_consecutive_evaluations_never_throttle() -> None:
    run = Run()
    trace = [codes(run.step(figures)) for figures in [HOT, COLD, HOT, COLD, HOT]]
    assert trace == [WARN, CLEARED, WARN, CLEARED, WARN]
    assert run.breaker.stage == 1


# Stage 2: throttle.


def test_two_consecutive_warnings_throttle_to_vip_only() -> None:
    run = Run()
    assert codes(run.step(COLD)) == []
    assert run.breaker.stage == 0
    assert codes(run.step(HOT)) == WARN
    assert run.breaker.stage == 1
    emits = run.step(HOT)
    assert codes(emits) == THROTTLE
    assert run.breaker.stage == 2
    (throttle,) = commands(emits)
    assert throttle.kind is CommandKind.INTAKE_THROTTLE
    assert throttle.payload == {"mode": "vip_only"}
    assert throttle.issued_at == run.at
    throttled = anomalies(emits)[-1]
    assert throttled.type is AnomalyType.INTAKE_THROTTLED
    assert throttled.severity is Severity.CRITICAL
    assert throttled.route.team is Team.OPERATIONS
    assert throttled.opened_at == run.at
    assert throttled.model_dump()["orders_created"] == 2300
    # Still overloaded: warnings go on, no second throttle.
    assert codes(run.step(HOT)) == NEXT_WARN
    assert run.breaker.stage == 2


def test_an_ack_between_warnings_prevents_the_throttle() -> None:
    run = Run()
    run.step(HOT)
    acked = run.decide(ACK)
    assert codes(acked) == ["intake_overload:open"]
    assert anomalies(acked)[0].decisions[0]["kind"] == "breaker.ack"
    assert codes(run.step(HOT)) == NEXT_WARN
    assert run.breaker.stage == 1
    # ...but not the next pair: an ack and then two more warnings throttle.
    assert codes(run.step(HOT)) == THROTTLE


def test_an_ack_after_every_warning_keeps_the_intake_open() -> None:
    run = Run()
    for _ in range(12):
        assert "intake.throttle" not in codes(run.step(HOT))
        run.decide(ACK)
    assert run.breaker.stage == 1


def test_more_warnings_to_throttle_take_more_evaluations() -> None:
    run = Run(BreakerSettings(window=STEP, warnings_to_throttle=3))
    assert codes(run.step(HOT)) == WARN
    assert codes(run.step(HOT)) == NEXT_WARN
    assert codes(run.step(HOT)) == THROTTLE

    run = Run(BreakerSettings(window=STEP, warnings_to_throttle=1))
    assert codes(run.step(HOT)) == [
        "intake_overload:open",
        "intake.throttle",
        "intake_throttled:open",
    ]


def test_release_lifts_the_throttle_at_once() -> None:
    run = Run()
    run.step(HOT)
    throttled_at = run.at + STEP
    throttle = commands(run.step(HOT))[0]
    released = run.decide(RELEASE)
    assert codes(released) == ["intake.resume", "intake_throttled:resolved:released"]
    resume, resolved = released
    assert isinstance(resume, Command)
    assert resume.issued_at == run.at + 2 * MINUTE  # the decision's time
    assert resume.payload == {"reason": "released", "throttle_command_id": throttle.command_id}
    assert isinstance(resolved, Anomaly)
    assert resolved.opened_at == throttled_at
    assert resolved.resolved_at == run.at + 2 * MINUTE
    assert [d["kind"] for d in resolved.decisions] == ["breaker.release"]
    assert "released by ops-lead" in resolved.summary
    assert run.breaker.stage == 1  # the last evaluation still held
    # A release acknowledges too: it takes two more consecutive warnings to throttle again.
    assert codes(run.step(HOT)) == NEXT_WARN
    again = run.step(HOT)
    assert codes(again) == THROTTLE
    assert commands(again)[0].command_id != throttle.command_id


def test_release_when_not_throttled_only_acknowledges() -> None:
    run = Run()
    run.step(HOT)
    released = run.decide(RELEASE)
    assert codes(released) == ["intake_overload:open"]
    assert codes(run.step(HOT)) == NEXT_WARN
    assert Run().decide(RELEASE) == []
    assert Run().decide(ACK) == []


def test_resume_after_thirty_minutes_clear_not_twenty() -> None:
    run = Run()
    run.step(HOT)
    run.step(HOT)
    assert codes(run.step(COLD)) == CLEARED  # first clear evaluation: the clock starts
    clear_since = run.at
    assert codes(run.step(COLD)) == []  # clear 10 min
    assert codes(run.step(COLD)) == []  # clear 20 min
    assert run.breaker.stage == 2
    emits = run.step(COLD)  # clear 30 min
    assert codes(emits) == RESUME
    resume, resolved = emits
    assert isinstance(resume, Command)
    assert resume.kind is CommandKind.INTAKE_RESUME
    assert resume.issued_at == clear_since + 30 * MINUTE
    assert resume.payload["reason"] == "cleared"
    assert isinstance(resolved, Anomaly)
    assert resolved.resolved_at == resume.issued_at
    assert run.breaker.stage == 0
    assert codes(run.step(COLD)) == []


def test_resume_with_the_default_sixty_minute_window() -> None:
    run = Run(BreakerSettings())
    trace = [codes(run.step(figures)) for figures in [HOT_SLICE] * 8 + [COLD_SLICE] * 8]
    assert trace[:5] == [[]] * 5  # 2000 orders in the first 50 minutes: not yet
    assert trace[5] == WARN  # 2400 in the hour to 11:00
    assert trace[6] == THROTTLE
    # The first cold slice leaves 8.2% in the hour; the second brings it to 7.2%.
    assert trace[8] == NEXT_WARN
    assert trace[9] == CLEARED
    assert trace[10:12] == [[], []]
    assert trace[12] == RESUME
    assert run.breaker.stage == 0


def test_figures_hovering_at_the_threshold_do_not_flap() -> None:
    run = Run()
    run.step(HOT)
    run.step(HOT)
    assert run.breaker.stage == 2
    hover = [(2201, 919, 81), (2200, 920, 80)] * 18  # just over, just under, for 6 hours
    trace = [code for figures in hover for code in codes(run.step(figures))]
    assert "intake.resume" not in trace
    assert "intake.throttle" not in trace
    assert run.breaker.stage == 2
    # Once it really stays clear for 30 minutes, it resumes, once.
    trace = [code for _ in range(4) for code in codes(run.step(COLD))]
    assert trace.count("intake.resume") == 1


def test_hovering_before_a_throttle_never_throttles() -> None:
    run = Run()
    trace = [code for _ in range(20) for code in codes(run.step(HOT)) + codes(run.step(COLD))]
    assert "intake.throttle" not in trace
    assert trace.count("intake_overload:open") == 20


@settings(max_examples=60, deadline=None)
@given(
    slices=st.lists(
        st.tuples(st.integers(355, 385), st.integers(85, 95), st.integers(6, 10)),
        min_size=14,
        max_size=40,
    ),
    acks=st.sets(st.integers(0, 39), max_size=6),
)
def test_no_flapping_around_the_default_thresholds(slices: list[Figures], acks: set[int]) -> None:
    """Throttle and resume alternate; each needs its full evidence; each is never late."""
    config = BreakerSettings()
    run = Run(config)
    held: list[bool] = []
    acked_before: list[bool] = []
    issued: list[tuple[int, Command]] = []
    pending_ack = False
    oracle = IntakeCounts()  # never expired, so it can check any window afterwards
    for i, figures in enumerate(slices):
        spread(oracle, run.at, run.at + STEP, figures)
        emits = run.step(figures)
        opened = [
            a for a in anomalies(emits) if a.state is AnomalyState.OPEN and a.opened_at == run.at
        ]
        held.append(any(a.type is AnomalyType.INTAKE_OVERLOAD for a in opened))
        acked_before.append(pending_ack)
        pending_ack = False
        issued += [(i, command) for command in commands(emits)]
        # Oracle for stage 1, computed independently of the machine.
        window = oracle.window_totals(run.at, HOUR)
        assert held[-1] is (window.created > 2200 and 100 * window.failed > 8 * window.attempts)
        if i in acks:
            run.decide(ACK)
            pending_ack = True

    kinds = [command.kind for _, command in issued]
    assert kinds == [
        CommandKind.INTAKE_THROTTLE if j % 2 == 0 else CommandKind.INTAKE_RESUME
        for j in range(len(kinds))
    ]
    throttled = False
    for i in range(len(slices)):
        now = [c for j, c in issued if j == i]
        if now and now[0].kind is CommandKind.INTAKE_THROTTLE:
            assert held[i]
            assert held[i - 1]
            assert not acked_before[i]
            throttled = True
        elif now:
            assert not any(held[i - 3 : i + 1])  # clear at 4 evaluations: 30 minutes
            throttled = False
        elif throttled:
            assert i < 3 or any(held[i - 3 : i + 1])  # never late to resume
        else:
            assert not (i >= 1 and held[i] and held[i - 1] and not acked_before[i])


# Shadow mode.


SCRIPT: list[Figures | DecisionKind] = [
    COLD,
    HOT,
    ACK,
    HOT,
    HOT,  # throttle
    HOT,
    ACK,
    COLD,
    COLD,
    HOT,  # hovering: the clear clock starts again
    COLD,
    COLD,
    COLD,
    COLD,  # resume
    HOT,
    HOT,  # throttle
    RELEASE,
    HOT,
    COLD,
    HOT,
    HOT,  # throttle
    COLD,
    COLD,
    COLD,
    COLD,  # resume
    COLD,
]


def play(
    config: BreakerSettings,
    script: Sequence[Figures | DecisionKind] = SCRIPT,
    wall: datetime = WALL,
) -> list[list[Emit]]:
    run = Run(config, wall)
    return [run.apply(op) for op in script]


def test_shadow_mode_reports_everything_but_issues_no_commands() -> None:
    live = play(QUICK)
    shadow = play(BreakerSettings(window=STEP, shadow=True))
    assert [c for emits in live for c in commands(emits)]
    assert not [c for emits in shadow for c in commands(emits)]
    live_anomalies = [a.anomaly_id for emits in live for a in anomalies(emits)]
    assert [a.anomaly_id for emits in shadow for a in anomalies(emits)] == live_anomalies
    reported = [a for emits in shadow for a in anomalies(emits)]
    assert all(a.model_dump()["shadow"] is True for a in reported)
    assert any(
        a.type is AnomalyType.INTAKE_THROTTLED and "would be throttled" in a.summary
        for a in reported
    )


def test_shadow_mode_still_reports_stage_two() -> None:
    run = Run(BreakerSettings(window=STEP, shadow=True))
    run.step(HOT)
    assert codes(run.step(HOT)) == [*NEXT_WARN, "intake_throttled:open"]
    assert run.breaker.stage == 2


def test_switching_shadow_on_still_lifts_a_real_throttle() -> None:
    run = Run()
    run.step(HOT)
    run.step(HOT)
    run.restart(BreakerSettings(window=STEP, shadow=True))
    trace = [code for _ in range(4) for code in codes(run.step(COLD))]
    assert trace == [*CLEARED, *RESUME]


def test_switching_shadow_off_throttles_for_real_if_still_overloaded() -> None:
    run = Run(BreakerSettings(window=STEP, shadow=True))
    run.step(HOT)
    run.step(HOT)
    run.restart(QUICK)
    emits = run.step(HOT)
    assert codes(emits) == [*NEXT_WARN, "intake.throttle"]
    assert trace_after_clear(run) == [*CLEARED, *RESUME]

    run = Run(BreakerSettings(window=STEP, shadow=True))
    run.step(HOT)
    run.step(HOT)
    run.restart(QUICK)
    # Cleared before any real throttle went out: nothing to resume.
    assert trace_after_clear(run) == [*CLEARED, "intake_throttled:resolved:cleared"]


def trace_after_clear(run: Run) -> list[str]:
    return [code for _ in range(4) for code in codes(run.step(COLD))]


# Decisions.


def test_only_breaker_decisions_are_taken() -> None:
    for kind in DecisionKind:
        if kind in (ACK, RELEASE):
            continue
        with pytest.raises(ValueError, match="breaker"):
            Breaker().decide(decision(kind, 1, T0), WALL)


def test_a_redelivered_decision_is_ignored() -> None:
    run = Run()
    run.step(HOT)
    ack = decision(ACK, 1, run.at)
    assert codes(run.breaker.decide(ack, WALL)) == WARN
    assert run.breaker.decide(ack, WALL) == []
    run.step(HOT)
    # The same ack again must not reset the streak a second time.
    assert run.breaker.decide(ack, WALL) == []
    assert codes(run.step(HOT)) == THROTTLE


def test_a_decision_is_recorded_on_the_anomaly_it_targets() -> None:
    run = Run()
    run.step(HOT)
    throttled = anomalies(run.step(HOT))[-1]
    emits = run.decide(ACK, target=throttled.anomaly_id)
    assert [(a.anomaly_id, len(a.decisions)) for a in anomalies(emits)] == [
        (throttled.anomaly_id, 1)
    ]
    # Untargeted, it goes to the open warning, and stays on it when it resolves.
    warning = run.decide(ACK)
    assert codes(warning) == WARN
    resolved = anomalies(run.step(COLD))[0]
    assert resolved.anomaly_id == anomalies(warning)[0].anomaly_id
    assert [d["decision_id"] for d in resolved.decisions] == ["d-2"]
    # The throttle keeps its own decisions through the resume.
    emits = [e for _ in range(3) for e in run.step(COLD)]
    assert [d["decision_id"] for d in anomalies(emits)[-1].decisions] == ["d-1"]


# Restart, replay, ids.


@pytest.mark.parametrize("shadow", [False, True], ids=["live", "shadow"])
def test_a_restart_at_any_point_continues_exactly(shadow: bool) -> None:
    config = BreakerSettings(window=STEP, shadow=shadow)
    reference = play(config)
    stages_seen = set()
    for cut in range(len(SCRIPT) + 1):
        run = Run(config)
        for op in SCRIPT[:cut]:
            run.apply(op)
        stages_seen.add(run.breaker.stage)
        run.restart()
        assert [dumps(run.apply(op)) for op in SCRIPT[cut:]] == [
            dumps(emits) for emits in reference[cut:]
        ]
    assert stages_seen == {0, 1, 2}


def test_a_restart_with_the_default_window_continues_exactly() -> None:
    script: list[Figures | DecisionKind] = [
        *[HOT_SLICE] * 7,
        ACK,
        *[HOT_SLICE] * 3,
        *[COLD_SLICE] * 8,
        RELEASE,
        *[HOT_SLICE] * 8,
        RELEASE,
        *[COLD_SLICE] * 4,
    ]
    reference = play(BreakerSettings(), script)
    for cut in range(0, len(script) + 1, 3):
        run = Run(BreakerSettings())
        for op in script[:cut]:
            run.apply(op)
        run.restart()
        assert [dumps(run.apply(op)) for op in script[cut:]] == [
            dumps(emits) for emits in reference[cut:]
        ]


def test_a_replay_mints_the_same_ids() -> None:
    first = play(QUICK)
    again = play(QUICK, wall=WALL + timedelta(days=3))

    def ids(runs: list[list[Emit]]) -> list[str]:
        return [
            e.command_id if isinstance(e, Command) else e.anomaly_id
            for emits in runs
            for e in emits
        ]

    assert ids(first) == ids(again)
    assert len(set(ids(first))) < len(ids(first))  # lifecycle events share their anomaly id
    throttles = [
        c.command_id
        for emits in first
        for c in commands(emits)
        if c.kind is CommandKind.INTAKE_THROTTLE
    ]
    assert len(set(throttles)) == len(throttles)
    assert first != again  # only detected_at differs


def test_state_round_trips_through_json() -> None:
    run = Run()
    for op in SCRIPT[:6]:
        run.apply(op)
    state = run.breaker.to_json()
    assert Breaker.from_json(json.loads(json.dumps(state)), QUICK).to_json() == state
    assert Breaker.from_json(None).to_json() == Breaker().to_json()
    with pytest.raises(ValueError, match="version"):
        Breaker.from_json({**state, "v": 99})


# Ticking: alignment, catch-up, a still watermark.


def test_evaluations_sit_on_aligned_instants() -> None:
    counts = IntakeCounts()
    spread(counts, T0 - HOUR, T0, HOT)
    breaker = Breaker()
    emits = breaker.tick(counts, T0 + 7 * MINUTE, WALL)
    assert breaker.last_evaluated == T0
    assert [a.opened_at for a in anomalies(emits)] == [T0]
    assert breaker.tick(counts, T0 + 9 * MINUTE + timedelta(seconds=59), WALL) == []
    shanghai = timezone(timedelta(hours=8))
    breaker.tick(counts, (T0 + STEP).astimezone(shanghai), WALL)
    assert breaker.last_evaluated == T0 + STEP


def test_a_watermark_that_does_not_move_emits_nothing() -> None:
    run = Run()
    run.step(HOT)
    for _ in range(5):
        assert run.breaker.tick(run.counts, run.at, WALL) == []
    assert run.breaker.tick(run.counts, run.at - HOUR, WALL) == []  # nor one going back
    assert codes(run.step(HOT)) == THROTTLE


def test_a_jumping_watermark_catches_up_every_evaluation() -> None:
    figures = [HOT_SLICE] * 9 + [COLD_SLICE] * 9
    stepwise = Run(BreakerSettings())
    expected = [e for f in figures for e in stepwise.step(f)]

    counts = IntakeCounts()
    for i, f in enumerate(figures):
        spread(counts, T0 + i * STEP, T0 + (i + 1) * STEP, f)
    breaker = Breaker()
    assert breaker.tick(counts, T0, WALL) == []
    caught_up = breaker.tick(counts, T0 + len(figures) * STEP + 5 * MINUTE, WALL)
    assert dumps(caught_up) == dumps(expected)
    assert "intake.throttle" in codes(caught_up)
    assert "intake.resume" in codes(caught_up)
    evaluated = breaker.evaluations
    assert [e.at for e in evaluated] == [T0 + (i + 1) * STEP for i in range(len(figures))]
    assert [e.stage for e in evaluated] == [0] * 5 + [1] + [2] * 7 + [0] * 5
    assert evaluated[5] == Evaluation(T0 + 6 * STEP, IntakeTotals(2400, 900, 90), True, 1)


@settings(max_examples=40, deadline=None)
@given(
    figures=st.lists(st.sampled_from([HOT, COLD, (2201, 919, 81)]), min_size=3, max_size=30),
    cuts=st.lists(st.integers(0, 30 * 10 + 20), max_size=12),
)
def test_any_watermark_path_gives_the_same_emits(figures: list[Figures], cuts: list[int]) -> None:
    def loaded() -> IntakeCounts:
        counts = IntakeCounts()
        for i, f in enumerate(figures):
            spread(counts, T0 + i * STEP, T0 + (i + 1) * STEP, f)
        return counts

    end = T0 + len(figures) * STEP
    one, many = Breaker(), Breaker()
    one_counts, many_counts = loaded(), loaded()
    assert one.tick(one_counts, T0, WALL) == many.tick(many_counts, T0, WALL) == []
    at_once = one.tick(one_counts, end, WALL)
    # Any path, even one that steps back now and then, ending at the same watermark.
    path = [T0 + min(minutes, len(figures) * 10) * MINUTE for minutes in cuts] + [end]
    by_steps = [e for watermark in path for e in many.tick(many_counts, watermark, WALL)]
    assert dumps(by_steps) == dumps(at_once)
    assert one.to_json() == many.to_json()


def test_a_huge_jump_is_cheap_and_still_resumes_on_time() -> None:
    run = Run()
    run.step(HOT)
    run.step(HOT)
    throttled_at = run.at
    started = time.perf_counter()
    emits = run.breaker.tick(run.counts, run.at + timedelta(days=365), WALL)
    assert time.perf_counter() - started < 1.0
    assert codes(emits) == [*CLEARED, *RESUME]
    assert commands(emits)[0].issued_at == throttled_at + 4 * STEP
    assert run.breaker.last_evaluated == throttled_at + timedelta(days=365)
    assert run.breaker.stage == 0
    assert len(run.counts) == 0


def test_a_long_quiet_jump_matches_stepping_through_it() -> None:
    stepwise, jumped = Run(), Run()
    for run in (stepwise, jumped):
        run.step(HOT)
        run.step(HOT)
    stepped = [
        e
        for i in range(1, 2 * 144 + 1)
        for e in stepwise.breaker.tick(stepwise.counts, stepwise.at + i * STEP, WALL)
    ]
    jump = jumped.breaker.tick(jumped.counts, jumped.at + 2 * 144 * STEP, WALL)
    assert dumps(jump) == dumps(stepped)
    assert jumped.breaker.to_json() == stepwise.breaker.to_json()


# Counts: exact, mergeable, bounded.


EVENTS = st.lists(
    st.tuples(
        st.sampled_from(list(IntakeKind)),
        st.integers(0, 3 * 3600 - 1),  # seconds after T0 - 2 h
        st.integers(0, 2),  # partition
    ),
    max_size=300,
)


@given(events=EVENTS)
def test_counts_merged_from_three_partitions_equal_counting_in_one(
    events: list[tuple[IntakeKind, int, int]],
) -> None:
    single = IntakeCounts()
    partitions = [IntakeCounts(), IntakeCounts(), IntakeCounts()]
    for kind, second, partition in events:
        at = T0 - 2 * HOUR + timedelta(seconds=second)
        single.add(kind, at)
        partitions[partition].add(kind, at)
    forward, backward = IntakeCounts(), IntakeCounts()
    for part in partitions:
        forward.merge(part)
    for part in reversed(partitions):
        backward.merge(IntakeCounts.from_json(json.loads(json.dumps(part.to_json()))))
    assert forward.to_json() == backward.to_json() == single.to_json()
    for end_minute in range(0, 181, 7):
        end = T0 - 2 * HOUR + end_minute * MINUTE
        expected = [0, 0, 0]
        for kind, second, _ in events:
            if end - HOUR <= T0 - 2 * HOUR + timedelta(seconds=second) < end:
                expected[list(IntakeKind).index(kind)] += 1
        assert forward.window_totals(end) == tuple(expected)


def test_expired_minutes_stay_gone() -> None:
    counts = IntakeCounts()
    counts.add(IntakeKind.CREATED, T0 - 2 * HOUR)
    counts.add(IntakeKind.CREATED, T0 - MINUTE)
    assert counts.expire(T0 - HOUR) == 1
    assert counts.expire(T0 - 2 * HOUR) == 0  # never backwards
    assert not counts.add(IntakeKind.CREATED, T0 - 2 * HOUR)  # too late to matter
    late = IntakeCounts()
    late.add(IntakeKind.ALLOCATED, T0 - 3 * HOUR, 4)
    late.add(IntakeKind.ALLOCATED, T0 - MINUTE, 1)
    assert counts.merge(late) == 4
    assert counts.window_totals(T0, span=3 * HOUR) == (1, 1, 0)
    assert IntakeCounts.from_json(counts.to_json()) == counts


def test_ticking_keeps_memory_bounded() -> None:
    run = Run(BreakerSettings())
    sizes = []
    for i in range(24 * 6):
        run.step(HOT_SLICE if (i // 9) % 2 else COLD_SLICE)
        sizes.append(len(run.counts))
    assert max(sizes) <= 60
    assert min(run.counts.buckets) >= int((run.at - HOUR).timestamp()) // 60


def test_counts_refuse_nonsense() -> None:
    with pytest.raises(ValueError, match="cannot count"):
        IntakeCounts().add(IntakeKind.CREATED, T0, -1)
    with pytest.raises(ValueError, match="bad intake bucket"):
        IntakeCounts.from_json({"m": {"1": [1, 2]}})
    assert IntakeCounts.from_json(None) == IntakeCounts()


# Settings.


@pytest.mark.parametrize(
    "overrides",
    [
        {"window": timedelta(seconds=90)},
        {"evaluate_every": timedelta(0)},
        {"clear_for": timedelta(minutes=-1)},
        {"failure_rate": 1.5},
        {"warnings_to_throttle": 0},
        {"min_orders": -1},
        {"surprise": 1},
    ],
)
def test_settings_refuse_what_cannot_be_counted_exactly(overrides: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        BreakerSettings(**overrides)


def test_settings_defaults_are_the_contract() -> None:
    config = BreakerSettings()
    assert config.window == HOUR
    assert config.evaluate_every == STEP
    assert config.min_orders == 2200
    assert config.failure_rate == 0.08
    assert config.warnings_to_throttle == 2
    assert config.clear_for == timedelta(minutes=30)
    assert config.shadow is False
    assert BreakerSettings.model_validate({"window": "PT2H", "clear_for": 1800}).window == (
        2 * HOUR
    )


def test_first_tick_of_a_replay_evaluates_from_its_earliest_count():
    # A replayed hour arrives in one batch: the watermark is already past its end, yet every
    # instant from the first that sees a count is evaluated, in order.
    breaker = Breaker(QUICK)
    counts = IntakeCounts()
    for k in range(3):
        spread(counts, T0 + k * STEP, T0 + (k + 1) * STEP, HOT)
    breaker.tick(counts, T0 + 3 * STEP + 5 * MINUTE, WALL)
    assert [e.at for e in breaker.evaluations] == [T0 + STEP, T0 + 2 * STEP, T0 + 3 * STEP]
    assert [e.stage for e in breaker.evaluations] == [1, 2, 2]


def test_first_tick_with_nothing_counted_starts_at_the_watermark():
    breaker = Breaker(QUICK)
    breaker.tick(IntakeCounts(), T0 + 25 * MINUTE, WALL)
    assert [e.at for e in breaker.evaluations] == [T0 + 2 * STEP]
