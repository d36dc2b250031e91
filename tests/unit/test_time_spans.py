"""No rule's cost depends on the distance between event times: the breaker and the timers
jump over empty spans, so events 2,000 years apart cost what events a minute apart do.

Ingest refuses such times (`implausible_time`); these rules must not depend on that."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from streams.rules.breaker import Breaker
from streams.rules.ghosts import TimerWheel
from streams.rules.intake import IntakeCounts, IntakeKind
from streams.rules.watermark import SourceTime, Watermark, as_us

LONG_AGO = datetime(26, 3, 2, 10, 3, tzinfo=UTC)
NOW = datetime(2026, 3, 2, 10, 3, tzinfo=UTC)
WALL = datetime(2026, 3, 2, 10, 31, tzinfo=UTC)
STEP = timedelta(minutes=10)


def test_the_breaker_evaluates_the_slots_that_see_a_count_and_jumps_the_years_between():
    counts = IntakeCounts()
    counts.add(IntakeKind.CREATED, LONG_AGO)
    counts.add(IntakeKind.CREATED, NOW)
    breaker = Breaker()
    # Before: every 10-minute slot of the 2,000 years, about 10^8 evaluations.
    assert breaker.tick(counts, datetime(2026, 3, 2, 10, 30, tzinfo=UTC), WALL) == []
    first = datetime(26, 3, 2, 10, 10, tzinfo=UTC)
    # The six slots whose 60-minute window sees the old count, then today's three.
    assert [e.at for e in breaker.evaluations] == [first + STEP * i for i in range(6)] + [
        datetime(2026, 3, 2, 10, 10, tzinfo=UTC) + STEP * i for i in range(3)
    ]
    assert [e.totals.created for e in breaker.evaluations] == [1] * 9
    assert breaker.stage == 0
    assert len(counts) == 1  # the old minute expired


def test_a_quiet_breaker_jumps_to_the_next_counted_minute_from_its_last_evaluation():
    counts = IntakeCounts()
    counts.add(IntakeKind.CREATED, LONG_AGO)
    breaker = Breaker()
    breaker.tick(counts, datetime(26, 3, 2, 12, tzinfo=UTC), WALL)
    assert breaker.last_evaluated == datetime(26, 3, 2, 12, tzinfo=UTC)
    counts.add(IntakeKind.CREATED, NOW)
    breaker.tick(counts, datetime(2026, 3, 2, 10, 20, tzinfo=UTC), WALL)
    assert [e.at for e in breaker.evaluations] == [
        datetime(2026, 3, 2, 10, 10, tzinfo=UTC),
        datetime(2026, 3, 2, 10, 20, tzinfo=UTC),
    ]


def test_timers_and_watermarks_take_times_two_thousand_years_apart_in_one_step():
    wheel = TimerWheel()
    wheel.schedule("old", LONG_AGO)
    wheel.schedule("new", NOW)
    assert [d.order_id for d in wheel.due(NOW)] == ["old", "new"]
    assert wheel.due(NOW + timedelta(days=365 * 1000)) == []

    mark = Watermark(allowed_lateness=timedelta(0), max_ahead=None)
    mark.observe(LONG_AGO, WALL)
    assert mark.observe(NOW, WALL) == NOW

    across: SourceTime[int] = SourceTime(timedelta(0), max_ahead=None)
    across.observe_us(0, as_us(LONG_AGO), as_us(WALL))
    across.observe_us(1, as_us(NOW), as_us(WALL))
    assert across.value_us(as_us(WALL)) == as_us(LONG_AGO)  # the slowest partition's time
