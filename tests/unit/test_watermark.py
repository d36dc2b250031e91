"""The event-time watermark: lateness, monotonicity, the idle fallback, the future cap."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.rules.watermark import Watermark, as_us, event_time, from_us, parse_us

T0 = datetime(2025, 12, 12, 10, 0, tzinfo=UTC)
WALL = datetime(2025, 12, 13, 9, 0, tzinfo=UTC)  # replaying yesterday: wall time is ahead
S = timedelta(seconds=1)


def mark(lateness: int = 120, idle: int = 60) -> Watermark:
    """A watermark with lateness and idle_after in seconds."""
    return Watermark(allowed_lateness=lateness * S, idle_after=idle * S)


def test_time_helpers_are_exact() -> None:
    assert parse_us("1970-01-01T00:00:01.000001Z") == 1_000_001
    assert parse_us("2025-12-12T18:00:00+08:00") == as_us(T0)
    assert from_us(as_us(T0)) == T0
    assert from_us(as_us(T0)).tzinfo is UTC
    moment = datetime(2025, 12, 12, 18, 0, 0, 123456, tzinfo=timezone(timedelta(hours=8)))
    assert from_us(as_us(moment)) == moment
    with pytest.raises(TypeError):
        as_us(datetime(2025, 1, 1))  # naive: refused


def test_no_watermark_before_the_first_event() -> None:
    wm = mark()
    assert wm.value is None
    assert wm.advance_idle(WALL + timedelta(days=1)) is None
    assert wm.max_event is None


def test_max_event_time_minus_allowed_lateness() -> None:
    wm = mark(lateness=120)
    assert wm.observe(T0, WALL) == T0 - 120 * S
    assert wm.observe(T0 + 300 * S, WALL) == T0 + 180 * S
    assert wm.max_event == T0 + 300 * S


def test_late_events_never_move_it_back() -> None:
    wm = mark(lateness=120)
    wm.observe(T0 + 300 * S, WALL)
    assert wm.observe(T0, WALL + S) == T0 + 180 * S
    assert wm.observe(T0 + 200 * S, WALL + 2 * S) == T0 + 180 * S
    assert wm.max_event == T0 + 300 * S


def test_idle_feeds_let_event_time_flow_with_the_wall_clock() -> None:
    wm = mark(lateness=120, idle=60)
    wm.observe(T0, WALL)  # watermark T0 - 2 min
    assert wm.advance_idle(WALL + 59 * S) == T0 - 120 * S  # a short pause moves nothing
    assert wm.advance_idle(WALL + 60 * S) == T0 - 60 * S  # idle: + the whole 60 s
    assert wm.advance_idle(WALL + 60 * S) == T0 - 60 * S  # same wall time: no-op
    assert wm.advance_idle(WALL + 3600 * S) == T0 + 3480 * S
    assert wm.advance_idle(WALL + 1800 * S) == T0 + 3480 * S  # wall clock stepped back
    # An event behind the advanced watermark does not pull it back, and idle time then
    # flows from where the watermark stood.
    assert wm.observe(T0 + 600 * S, WALL + 3700 * S) == T0 + 3480 * S
    assert wm.advance_idle(WALL + 3759 * S) == T0 + 3480 * S
    assert wm.advance_idle(WALL + 3800 * S) == T0 + 3580 * S


def test_a_clock_far_ahead_is_capped() -> None:
    wm = Watermark(allowed_lateness=0 * S, max_ahead=timedelta(minutes=5))
    assert wm.observe(WALL + timedelta(days=365), WALL) == WALL + timedelta(minutes=5)
    assert wm.clamped == 1
    assert wm.observe(WALL + timedelta(minutes=4), WALL) == WALL + timedelta(minutes=5)
    assert wm.clamped == 1
    uncapped = Watermark(allowed_lateness=0 * S, max_ahead=None)
    assert uncapped.observe(WALL + timedelta(days=365), WALL) == WALL + timedelta(days=365)


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="idle_after"):
        Watermark(idle_after=timedelta(0))
    with pytest.raises(ValueError, match="allowed_lateness"):
        Watermark(allowed_lateness=-S)


def test_round_trip() -> None:
    wm = mark()
    wm.observe(T0, WALL)
    wm.observe(WALL + timedelta(days=1), WALL)
    wm.advance_idle(WALL + 90 * S)
    raw = orjson.loads(orjson.dumps(wm.to_json()))
    restored = Watermark.from_json(raw, allowed_lateness=120 * S, idle_after=60 * S)
    assert restored.to_json() == wm.to_json()
    assert restored.value == wm.value
    assert restored.advance_idle(WALL + 900 * S) == wm.advance_idle(WALL + 900 * S)
    assert Watermark.from_json(None).value is None


@settings(max_examples=300, deadline=None)
@given(
    steps=st.lists(
        st.tuples(st.booleans(), st.integers(-86_400, 86_400), st.integers(0, 600)),
        min_size=1,
        max_size=50,
    )
)
def test_never_backwards_and_never_past_the_evidence(steps: list[tuple[bool, int, int]]) -> None:
    wm = mark(lateness=120, idle=60)
    wall = WALL
    previous: datetime | None = None
    seen_event = False
    for is_event, offset, wall_step in steps:
        wall += wall_step * S
        if is_event:
            wm.observe(T0 + offset * S, wall)
            seen_event = True
            last_wall = wall
        else:
            wm.advance_idle(wall)
        value = wm.value
        if not seen_event:
            assert value is None
            continue
        assert value is not None
        assert previous is None or value >= previous
        max_event = wm.max_event
        assert max_event is not None
        # Never further than the newest event (less lateness) plus the idle time since.
        assert value <= max(max_event - 120 * S, previous or value) + (wall - last_wall)
        previous = value


@pytest.mark.parametrize(
    "raw",
    [
        "2025-12-12T10:00:00Z",
        "2025-12-12T18:00:00+08:00",
        "2025-12-12t10:00:00z",
        "2025-12-12T10:00:00.000000000Z",
        1765533600,
        T0,
    ],
)
def test_event_times_in_every_form_ingest_accepts(raw: object) -> None:
    assert event_time(raw) == T0


def test_a_naive_or_broken_event_time_is_refused() -> None:
    with pytest.raises(ValueError, match="aware"):
        event_time("2025-12-12T10:00:00")
    with pytest.raises(ValueError, match="aware"):
        event_time("yesterday")
