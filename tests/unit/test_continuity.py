"""Offset continuity rules."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from streams.rules.continuity import Admit, OffsetContinuity


def test_in_order_offsets_are_processed():
    c: OffsetContinuity[str] = OffsetContinuity()
    c.start_at("p", 5)
    assert [c.admit("p", o, 0.0).admit for o in (5, 6, 7)] == [Admit.PROCESS] * 3


def test_a_jump_rewinds_then_holds_until_the_rewound_fetch_arrives():
    c: OffsetContinuity[str] = OffsetContinuity(settle_seconds=3.0)
    c.start_at("p", 8)
    verdict = c.admit("p", 859, now=10.0)
    assert verdict.admit is Admit.REWIND
    assert verdict.rewind_to == 8
    assert c.admit("p", 860, now=10.1).admit is Admit.HOLD  # stale prefetch
    assert c.admit("p", 8, now=10.5).admit is Admit.PROCESS  # the rewound fetch
    assert c.admit("p", 9, now=10.6).admit is Admit.PROCESS
    assert c.rewinds == 1
    assert c.accepted_gaps == 0


def test_a_gap_that_survives_a_settled_rewind_is_real():
    c: OffsetContinuity[str] = OffsetContinuity(settle_seconds=3.0)
    c.start_at("p", 10)
    assert c.admit("p", 12, now=0.0).admit is Admit.REWIND
    assert c.admit("p", 12, now=2.9).admit is Admit.HOLD
    assert c.admit("p", 12, now=3.0).admit is Admit.PROCESS  # offset 10-11 do not exist
    assert c.admit("p", 13, now=3.1).admit is Admit.PROCESS
    assert c.accepted_gaps == 1


def test_redeliveries_below_the_expected_offset_are_processed_without_moving_back():
    c: OffsetContinuity[str] = OffsetContinuity()
    c.start_at("p", 0)
    for o in range(5):
        c.admit("p", o, 0.0)
    assert c.admit("p", 2, 0.0).admit is Admit.PROCESS
    assert c.admit("p", 5, 0.0).admit is Admit.PROCESS


def test_unknown_partition_takes_its_first_offset_as_baseline_and_reset_forgets():
    c: OffsetContinuity[str] = OffsetContinuity()
    assert not c.knows("p")
    assert c.admit("p", 40, 0.0).admit is Admit.PROCESS
    assert c.knows("p")
    c.reset()
    assert not c.knows("p")


@given(st.lists(st.integers(min_value=0, max_value=50), min_size=1, max_size=40))
def test_nothing_past_a_hole_is_processed_before_the_hole(offsets):
    """Whatever order records arrive in, processed offsets never skip an offset."""
    c: OffsetContinuity[str] = OffsetContinuity(settle_seconds=1e9)
    c.start_at("p", 0)
    processed: set[int] = set()
    for o in offsets:
        if c.admit("p", o, 0.0).admit is Admit.PROCESS:
            processed.add(o)
    assert processed == set(range(len(processed)))


def test_a_silent_jump_of_the_fetch_position_is_rewound_after_the_stall_time():
    c: OffsetContinuity[str] = OffsetContinuity(settle_seconds=3.0, stall_seconds=5.0)
    c.start_at("p", 0)
    c.admit("p", 0, now=0.0)
    assert c.audit("p", 900, now=1.0).admit is Admit.PROCESS  # may be prefetch
    assert c.audit("p", 900, now=5.9).admit is Admit.PROCESS
    verdict = c.audit("p", 900, now=6.0)
    assert verdict.admit is Admit.REWIND
    assert verdict.rewind_to == 1


def test_records_in_flight_after_a_quiet_spell_are_not_a_jump():
    # The consumer fetched the partition's next records (its position moved) and hands
    # them over a moment later: the first audit to see that starts the clock.
    c: OffsetContinuity[str] = OffsetContinuity(settle_seconds=3.0, stall_seconds=5.0)
    c.start_at("p", 0)
    c.admit("p", 0, now=0.0)
    assert c.audit("p", 1, now=60.0).admit is Admit.PROCESS  # caught up, quiet
    assert c.audit("p", 40, now=120.0).admit is Admit.PROCESS  # fetched, not handed over
    for offset in range(1, 40):
        assert c.admit("p", offset, now=120.5).admit is Admit.PROCESS
    assert c.audit("p", 80, now=126.0).admit is Admit.PROCESS  # progress since: clock anew
    assert c.audit("p", 80, now=131.0).admit is Admit.REWIND  # and then none for 5 s
    assert c.rewinds == 1


def test_audit_sees_progress_as_healthy():
    c: OffsetContinuity[str] = OffsetContinuity(stall_seconds=5.0)
    c.start_at("p", 0)
    for second in range(20):
        c.admit("p", second, now=float(second))
        assert c.audit("p", second + 100, now=float(second) + 0.5).admit is Admit.PROCESS
    assert c.audit("p", 19 + 1, now=100.0).admit is Admit.PROCESS  # caught up


def test_a_trailing_real_gap_is_accepted_after_one_settled_rewind():
    c: OffsetContinuity[str] = OffsetContinuity(settle_seconds=3.0, stall_seconds=1.0)
    c.start_at("p", 10)
    assert c.audit("p", 12, now=0.0).admit is Admit.PROCESS
    assert c.audit("p", 12, now=1.0).admit is Admit.REWIND
    assert c.audit("p", 12, now=2.0).admit is Admit.PROCESS  # waiting, nothing to do
    assert c.audit("p", 12, now=4.0).admit is Admit.PROCESS
    assert c.accepted_gaps == 1
    assert c.audit("p", 12, now=100.0).admit is Admit.PROCESS
    assert c.rewinds == 1
