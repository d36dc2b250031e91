"""The event-time watermark: lateness, monotonicity, the idle fallback, the future cap."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.rules.watermark import (
    SourceTime,
    UpstreamMarks,
    Watermark,
    as_us,
    event_time,
    from_us,
    parse_us,
)

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


# --- SourceTime: event time across input partitions --------------------------------------

SEC_US = 1_000_000
MIN_US = 60 * SEC_US


def _source_time() -> SourceTime[str]:
    return SourceTime(timedelta(minutes=2), timedelta(seconds=60), max_ahead=None)


def test_the_slowest_active_partition_sets_the_pace():
    clock = _source_time()
    t0, wall = as_us(T0), as_us(WALL)
    clock.observe_us("erp/0", t0 + 120 * MIN_US, wall)  # the ERP topic is two hours ahead
    clock.observe_us("crm/0", t0 + 10 * MIN_US, wall)
    assert clock.value_us(wall) == t0 + 8 * MIN_US  # crm's 10:10 minus 2 min lateness
    clock.observe_us("crm/0", t0 + 100 * MIN_US, wall + SEC_US)
    assert clock.value_us(wall + SEC_US) == t0 + 98 * MIN_US


def test_a_quiet_partition_stops_holding_event_time_back():
    clock = _source_time()
    t0, wall = as_us(T0), as_us(WALL)
    clock.observe_us("logistics/3", t0, wall)
    clock.observe_us("erp/0", t0 + 30 * MIN_US, wall + 59 * SEC_US)
    assert clock.value_us(wall + 59 * SEC_US) == t0 - 2 * MIN_US
    assert clock.value_us(wall + 60 * SEC_US) == t0 + 28 * MIN_US  # idle for 60 s: left out


def test_all_quiet_uses_the_newest_event_and_never_goes_back():
    clock = _source_time()
    t0, wall = as_us(T0), as_us(WALL)
    clock.observe_us("a", t0 + 5 * MIN_US, wall)
    clock.observe_us("b", t0 + 9 * MIN_US, wall)
    assert clock.value_us(wall + 600 * SEC_US) == t0 + 7 * MIN_US
    clock.observe_us("c", t0, wall + 601 * SEC_US)  # a new, slower partition wakes up
    assert clock.value_us(wall + 601 * SEC_US) == t0 + 7 * MIN_US
    clock.reset()
    assert clock.value_us(wall) is None


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("abc"), st.integers(0, 10_000)), min_size=1))
def test_source_time_is_the_min_of_partition_maxima_while_all_are_active(events):
    clock = _source_time()
    wall = as_us(WALL)
    for part, minute in events:
        clock.observe_us(part, as_us(T0) + minute * MIN_US, wall)
    maxima: dict[str, int] = {}
    for part, minute in events:
        maxima[part] = max(maxima.get(part, 0), minute)
    assert clock.value_us(wall) == as_us(T0) + (min(maxima.values()) - 2) * MIN_US


def test_an_upstream_watermark_moves_it_forward_only_and_a_move_is_activity():
    mark = Watermark(timedelta(minutes=2), timedelta(seconds=60))
    wall = as_us(WALL)
    assert mark.advance_to_us(as_us(T0), wall) == as_us(T0)
    assert mark.advance_to_us(as_us(T0) + SEC_US, wall + SEC_US) == as_us(T0) + SEC_US
    assert mark.advance_to_us(as_us(T0), wall + 2 * SEC_US) == as_us(T0) + SEC_US  # repeated
    assert mark.advance_idle_us(wall + 60 * SEC_US) == as_us(T0) + SEC_US  # moved 59 s ago
    assert mark.advance_idle_us(wall + 61 * SEC_US) == as_us(T0) + 61 * SEC_US


def test_a_partition_with_a_backlog_holds_event_time_however_long_it_waits():
    clock = _source_time()
    t0, wall = as_us(T0), as_us(WALL)
    clock.observe_us("erp/0", t0, wall)
    clock.observe_us("crm/0", t0 + 90 * MIN_US, wall + 300 * SEC_US)
    clock.backlog("erp/0", pending=True)  # not fetched for five minutes, but not done
    assert clock.value_us(wall + 300 * SEC_US) == t0 - 2 * MIN_US
    clock.backlog("erp/0", pending=False)
    assert clock.value_us(wall + 300 * SEC_US) == t0 + 88 * MIN_US


def test_a_backlog_on_a_partition_never_read_freezes_event_time():
    clock = _source_time()
    t0, wall = as_us(T0), as_us(WALL)
    clock.observe_us("crm/0", t0 + 90 * MIN_US, wall)
    clock.backlog("erp/0", pending=True)
    assert clock.value_us(wall) is None
    clock.observe_us("erp/0", t0, wall)
    assert clock.value_us(wall) == t0 - 2 * MIN_US


def test_upstream_marks_take_the_slowest_partition_and_origin():
    marks: UpstreamMarks[int] = UpstreamMarks(timedelta(seconds=60))
    wall = as_us(WALL)
    marks.observe_us("ingest-a", 0, 500, wall)
    assert marks.value_us([0, 1], wall) is None  # partition 1 not marked yet: unknown
    marks.observe_us("ingest-a", 1, 300, wall)
    assert marks.value_us([0, 1], wall) == 300
    marks.observe_us("ingest-a", 1, 200, wall)  # an older mark never moves it back
    assert marks.value_us([0, 1], wall) == 300
    marks.observe_us("ingest-b", 0, 100, wall + SEC_US)
    marks.observe_us("ingest-b", 1, 100, wall + SEC_US)
    assert marks.value_us([0, 1], wall + SEC_US) == 100
    # ingest-b stops (it left the group): after a minute its marks no longer hold.
    marks.observe_us("ingest-a", 0, 900, wall + 61 * SEC_US)
    marks.observe_us("ingest-a", 1, 800, wall + 61 * SEC_US)
    assert marks.value_us([0, 1], wall + 61 * SEC_US) == 800
    assert marks.value_us(None, wall + 61 * SEC_US) == 800


def test_upstream_marks_need_every_input_partition_covered() -> None:
    # A worker restarting next to the dead member that still holds half the source partitions:
    # its marks speak for the half it reads. Until someone reads the other half, there is no
    # merged watermark (their events may be of any age), not the half's time.
    marks: UpstreamMarks[int] = UpstreamMarks(timedelta(seconds=60))
    wall = 0
    half = ["erp/0", "erp/2", "crm/0", "crm/2"]
    for partition in (0, 1):
        marks.observe_us("live", partition, 5_000, wall, covers=half, of=8)
    assert marks.value_us([0, 1], wall) is None
    # Its next marks, once it reads every source partition, count.
    everything = [*half, "erp/1", "erp/3", "crm/1", "crm/3"]
    for partition in (0, 1):
        marks.observe_us("live", partition, 6_000, wall, covers=everything, of=8)
    assert marks.value_us([0, 1], wall) == 6_000
    # Two workers splitting the sources between them: together they cover it all.
    split: UpstreamMarks[int] = UpstreamMarks(timedelta(seconds=60))
    for partition in (0, 1):
        split.observe_us("a", partition, 7_000, wall, covers=half, of=8)
        split.observe_us("b", partition, 6_500, wall, covers=everything[4:], of=8)
    assert split.value_us([0, 1], wall) == 6_500
    # Marks naming no coverage (one upstream worker reading all) count as before.
    plain: UpstreamMarks[int] = UpstreamMarks(timedelta(seconds=60))
    plain.observe_us("x", 0, 9_000, wall)
    assert plain.value_us([0], wall) == 9_000


def test_a_mark_that_only_widens_its_coverage_counts() -> None:
    # After a hand-over an origin's time may stand still while it reads more partitions: the
    # mark that says so (same value, more coverage) completes the coverage, in any read order.
    marks: UpstreamMarks[int] = UpstreamMarks(timedelta(seconds=60))
    half, other = ["erp/0", "crm/0"], ["erp/1", "crm/1"]
    marks.observe_us("live", 0, 5_000, 0, covers=[*half, *other], of=4)
    marks.observe_us("live", 1, 5_000, 0, covers=half, of=4)  # the older mark, read later
    assert marks.value_us([0, 1], 0) == 5_000
