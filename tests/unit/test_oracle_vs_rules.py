"""The pipeline's rules against the independent oracle (tests/oracle), over generated logs.

tests/rules_run.py drives today's rules as the worker's stages do (ingest, the per-order
stage, dedupe, the breaker), reading the log in publication order in batches under one of
two clocks; `compare` lists every difference from what the oracle expects at the horizon:
anomaly ids with their types, severities, `opened_at`/`resolved_at` and teams, command ids
and payloads, dead letters, the KPIs and the breaker's figures at each evaluation. This is
the only test module that puts `streams` next to the oracle: it is the code under test.

The hand-written logs at the end are the cases where the two once disagreed, each now with
the oracle's answer written out: a change that breaks one of them breaks the contract's
reading the README gives.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import replace
from datetime import timedelta
from fractions import Fraction
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.anomalies import deterministic_id
from streams.rules.breaker import BreakerSettings
from streams.rules.watermark import from_us
from tests.logs import DETAILS, TRACKING, HandLog, Knobs, at, feed_logs, generate_with
from tests.oracle import Expected, OracleSettings, expected
from tests.oracle.compare import diff
from tests.oracle.contract import parse_time
from tests.oracle.intake import BreakerRules, intake_figures
from tests.rules_run import RulesRun, Schedule

SCHEDULES = st.builds(
    Schedule,
    batch=st.sampled_from([1, 7, 64, 500]),
    clock=st.sampled_from(["newest", "sources"]),
)


def oracle_settings(breaker: BreakerSettings) -> OracleSettings:
    """The oracle's settings matching the breaker's."""
    return OracleSettings(
        breaker=BreakerRules(
            min_orders=breaker.min_orders,
            failure_rate=Fraction(repr(breaker.failure_rate)),
            window=breaker.window // timedelta(microseconds=1),
            evaluate_every=breaker.evaluate_every // timedelta(microseconds=1),
            warnings_to_throttle=breaker.warnings_to_throttle,
            clear_for=breaker.clear_for // timedelta(microseconds=1),
        )
    )


def run_both(
    log: Any,
    horizon_us: int | None = None,
    breaker: BreakerSettings | None = None,
    schedule: Schedule | None = None,
) -> tuple[Expected, RulesRun, Any]:
    """The oracle's answer and the rules' run on the log's events up to the horizon."""
    horizon = log.end_us if horizon_us is None else horizon_us
    events = [
        e for e in log.events if (t := parse_time(e.get("occurred_at"))) is None or t <= horizon
    ]
    b = breaker or BreakerSettings()
    want = expected(events, horizon, oracle_settings(b))
    rules = RulesRun(schedule, b)
    got = rules.run(events, horizon)
    return want, rules, got


def compare(
    log: Any,
    horizon_us: int | None = None,
    breaker: BreakerSettings | None = None,
    schedule: Schedule | None = None,
    **scope: Any,
) -> list[str]:
    """Every difference between the rules and the oracle on one log (`scope`: diff's)."""
    want, rules, got = run_both(log, horizon_us, breaker, schedule)
    out = diff(want, got, **scope)
    # ERP events whose details never come, by id: one still waiting at the horizon is not
    # dead-lettered yet (it waits `order_details_wait` of event time), and a re-send of one
    # is dropped as a re-send while it waits, dead-lettered again once it was (the README's
    # "Dead letters"): the oracle, which knows the details never come, rejects every copy.
    never = rules.never_detailed | rules.still_waiting()
    if never != want.ingested.never_detailed:
        out.append(f"missing_order: expected {want.ingested.never_detailed}, got {never}")
    counted = {r: n for r, n in want.dead_letters.items() if r != "missing_order"}
    if {r: n for r, n in rules.dead_letters.items() if r != "missing_order"} != counted:
        out.append(f"dead letters: expected {dict(want.dead_letters)}, got {rules.dead_letters}")
    mine, theirs = oracle_kpis(want), rules.kpis()
    for name in mine:
        if mine[name] != theirs[name]:
            out.append(f"KPI {name}: expected {mine[name]}, got {theirs[name]}")
    out += figure_differences(want, rules)
    return out


def oracle_kpis(exp: Expected) -> dict[str, Any]:
    """The oracle's KPI figures in the shape of `RulesRun.kpis`."""
    k = exp.kpis
    return {
        "latency": {
            (target, window): (f.count, _seconds(f.median), _seconds(f.p95), f.skew)
            for target, windows in k.latency.items()
            for window, f in windows.items()
        },
        "consistency": (k.consistent, k.population),
        "routing": (k.auto_routed, k.routed),
    }


def figure_differences(want: Expected, rules: RulesRun) -> list[str]:
    """The breaker's figures (created, attempted, failed) at every instant either evaluated,
    against the oracle's; an instant the breaker skipped must have had nothing to count."""
    oracle = {instant: (created, tried, failed) for instant, created, tried, failed in want.figures}
    got = {instant: (t.created, t.attempts, t.failed) for instant, t in rules.figures.items()}
    out = []
    for instant in sorted(oracle.keys() | got.keys()):
        mine, theirs = oracle.get(instant, (0, 0, 0)), got.get(instant, (0, 0, 0))
        if mine != theirs:
            out.append(f"breaker at {from_us(instant).isoformat()}: expected {mine}, got {theirs}")
    return out


def _seconds(value: float | None) -> float | None:
    # To the µs: a mean of two middle values may differ in its last bit by formula.
    return None if value is None else round(value, 6)


# --- generated logs ------------------------------------------------------------------------


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(log=feed_logs(max_orders=60), schedule=SCHEDULES)
def test_the_rules_give_what_the_oracle_expects(log: Any, schedule: Schedule) -> None:
    assert compare(log, schedule=schedule) == []


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(log=feed_logs(max_orders=40), cut=st.floats(0.2, 1.0), schedule=SCHEDULES)
def test_the_rules_give_what_the_oracle_expects_at_any_horizon(
    log: Any, cut: float, schedule: Schedule
) -> None:
    first = min(parse_time(e.get("occurred_at")) or log.end_us for e in log.events)
    horizon = first + int((log.end_us - first) * cut)
    assert compare(log, horizon, schedule=schedule) == []


def test_the_rules_give_what_the_oracle_expects_on_a_day_of_1000_orders() -> None:
    log = generate_with(Knobs.draw(random.Random(16), 1000), 16)
    want, rules, got = run_both(log, schedule=Schedule(64, "sources"))
    assert diff(want, got) == []
    assert figure_differences(want, rules) == []
    # A day with every fault: each kind of anomaly is there to be compared.
    assert Counter(a.type for a in want.anomalies.values()) == {
        "status_conflict": 220,
        "missing_in_system": 92,
        "orphan_order": 54,
        "stalled_tracking": 17,
        "duplicate_order": 16,
    }
    assert len(want.commands) == 34


def test_a_breaker_that_trips_warns_throttles_and_resumes_as_the_oracle_says() -> None:
    knobs = replace(Knobs.draw(random.Random(7), 300), peak=0.5, reservation_failures=0.3)
    log = generate_with(knobs, 7)
    trips = BreakerSettings(min_orders=40, failure_rate=0.1)
    for schedule in (Schedule(1, "newest"), Schedule(500, "sources")):
        assert compare(log, breaker=trips, schedule=schedule) == []
    want, _, _ = run_both(log, breaker=trips)
    assert Counter(a.type for a in want.anomalies.values() if a.order_id is None) == {
        "intake_overload": 10,
        "intake_throttled": 1,
    }
    assert Counter(c.kind for c in want.commands.values() if "order_id" not in c.payload) == {
        "intake.throttle": 1,
        "intake.resume": 1,
    }


# --- the logs on which the rules and the oracle once disagreed ------------------------------


def _iso(minutes: float = 0, hours: float = 0) -> str:
    return from_us(at(minutes, hours)).isoformat()


def _aid(type_: str, scope: str, trigger: str = "") -> str:
    return deterministic_id("anomaly", type_, scope, trigger)


def _summary(want: Expected) -> dict[str, tuple[str, str | None, int, int | None, str]]:
    return {
        a.anomaly_id: (a.type, a.order_id, a.opened_us, a.resolved_us, a.team)
        for a in want.anomalies.values()
    }


BOTH = (Schedule(1, "newest"), Schedule(500, "sources"))


def test_a_late_link_counts_from_the_link_and_raises_no_conflict_nobody_could_see() -> None:
    # The CRM's ticket is tied to SO1 only at 60 min. Until then the CRM has not shown SO1
    # (missing 15–60) and the ticket is nobody's (its own orphan, 31–60); from 60 on the
    # CRM's events count for SO1, all at once: it shows fulfilling as the ERP does. The
    # rules once applied the held events one by one at 60 and judged between them: "still
    # open" against the ERP's fulfilling since 20, a conflict opened at 50.
    log = HandLog()
    log.erp("SO1", "CREATED", at(0))
    log.add("crm", "CS1", "NEW", at(1))
    log.erp("SO1", "ALLOCATED", at(20))
    log.add("crm", "CS1", "PROCESSING", at(21))
    log.add("crm", "CS1", "PROCESSING", at(60), erp_order_id="SO1")
    want = expected(log.events, at(180))
    assert _summary(want) == {
        _aid("missing_in_system", "SO1", "crm"): (
            "missing_in_system",
            "SO1",
            at(15),
            at(60),
            "integration",
        ),
        _aid("orphan_order", "CS1"): ("orphan_order", "CS1", at(31), at(60), "integration"),
        _aid("missing_in_system", "SO1", "wms"): (
            "missing_in_system",
            "SO1",
            at(20, hours=2),
            None,
            "warehouse",
        ),
    }
    for schedule in BOTH:
        assert compare(log, at(180), schedule=schedule) == []


def test_a_late_link_names_an_orphan_from_the_link_on() -> None:
    # SO-X (never reported by the ERP) is first named at 50 min by a ticket opened at 0. The
    # ticket is nobody's from 30 to 50 (its own orphan); SO-X's orphan is known from 50 on.
    # The rules once dated it from 30 as well: two orphans for one fact, overlapping.
    log = HandLog()
    log.add("crm", "CS2", "NEW", at(0))
    log.add("crm", "CS2", "CONFIRMED", at(50), erp_order_id="SO-X")
    want = expected(log.events, at(120))
    assert _summary(want) == {
        _aid("orphan_order", "CS2"): ("orphan_order", "CS2", at(30), at(50), "integration"),
        _aid("orphan_order", "SO-X"): ("orphan_order", "SO-X", at(50), None, "integration"),
    }
    for schedule in BOTH:
        assert compare(log, at(120), schedule=schedule) == []


def test_a_ticket_linked_before_its_orphan_was_due_is_no_orphan() -> None:
    # Linked at 20, read while event time stood at 0: neither the ticket nor SO1 is an orphan
    # at any event time. Linked at 45 and read as early: the ticket was one from 30 to 45,
    # though no timer of it had come up when the link was read.
    for link, orphan in ((20, None), (45, (at(30), at(45)))):
        log = HandLog()
        log.add("crm", "CS3", "NEW", at(0))
        log.add("crm", "CS3", "CONFIRMED", at(link), erp_order_id="SO1")
        log.erp("SO1", "CREATED", at(link + 1))
        want = expected(log.events, at(120))
        ticket = want.anomalies.get(_aid("orphan_order", "CS3"))
        assert (ticket and (ticket.opened_us, ticket.resolved_us)) == orphan
        for schedule in BOTH:
            assert compare(log, at(120), schedule=schedule) == []


def test_a_duplicate_is_routed_by_the_later_placed_order() -> None:
    # A keyed in from Excel (placed 10:00, entered 10:35), B from the website (10:05). The
    # anomaly is raised on B, the later placed, and routed with B's details (customer
    # service), whichever of the two arrived second (the rules once routed it with A's).
    log = HandLog()
    log.erp("B", "CREATED", at(5), order=dict(DETAILS, channel="website"))
    log.erp("A", "CREATED", at(35), order=dict(DETAILS, channel="excel", placed_at=_iso(0)))
    pair = _aid("duplicate_order", "A", "B")
    assert _summary(expected(log.events, at(40)))[pair] == (
        "duplicate_order",
        "B",
        at(5),
        None,
        "customer_service",
    )
    for schedule in BOTH:
        assert compare(log, at(40), schedule=schedule) == []


def test_the_breaker_counts_orders_from_the_reserving_systems_not_mirrors() -> None:
    # Three orders; one failed its reservation once, then all three were allocated; the CRM
    # mirrors each allocation. §7: 1 of the 3 orders whose reservation was attempted failed
    # (33%), from the ERP and the WMS only (the rules once counted 1 failure in 7 allocation
    # events, the CRM's included: 14%, and warned at neither bar).
    log = HandLog()
    for n in (1, 2, 3):
        log.erp(f"SO{n}", "CREATED", at(n))
        if n == 1:
            log.erp("SO1", "STOCK_SHORTAGE", at(4))
        log.erp(f"SO{n}", "ALLOCATED", at(5))
        log.crm(f"SO{n}", "PROCESSING", at(6))
    bar_30 = BreakerSettings(min_orders=2, failure_rate=0.3)
    want = expected(log.events, at(120), oracle_settings(bar_30))
    warnings = {
        _aid("intake_overload", "intake", _iso(m)): (
            "intake_overload",
            None,
            at(m),
            at(m + 10),
            "operations",
        )
        for m in (10, 20, 30, 40, 50, 60)
    }
    breaker = {a: s for a, s in _summary(want).items() if s[0].startswith("intake")}
    assert breaker == warnings | {
        _aid("intake_throttled", "intake", _iso(20)): (
            "intake_throttled",
            None,
            at(20),
            at(100),
            "operations",
        )
    }
    for schedule in BOTH:
        assert compare(log, at(120), bar_30, schedule) == []


def test_a_reservation_taken_back_counts_where_it_stood_at_each_evaluation() -> None:
    # SO1's stock is reserved at 5 (ERP), then the WMS reports it short at 24 (a short pick
    # after the allocation). As of 10:10 and 10:20 the order's reservation had succeeded at
    # 5; from 10:30 on it failed at 24. Counting by the order's latest state changed the
    # 10:10 and 10:20 figures with the speed of the read (the short pick read ahead).
    log = HandLog()
    log.erp("SO1", "CREATED", at(0))
    log.erp("SO1", "ALLOCATED", at(5))
    log.add("wms", "W1", "OUT_OF_STOCK", at(24), erp_order_id="SO1")
    log.erp("SO2", "CREATED", at(30))
    want = expected(log.events, at(40))
    figures = intake_figures(want.ingested.orders, at(40), BreakerRules())
    assert [(f[0], *f[1:]) for f in figures] == [
        (at(10), 1, 1, 0),
        (at(20), 1, 1, 0),
        (at(30), 1, 1, 1),
        (at(40), 2, 1, 1),
    ]
    for schedule in BOTH:
        assert compare(log, at(40), schedule=schedule) == []


def test_a_reservation_taken_back_counts_where_it_stood_whichever_was_read_first() -> None:
    # The same order, the WMS's short pick (24) read before the ERP's allocation (5) it takes
    # back, both before event time reaches 10:10. As of 10:10 and 10:20 the reservation had
    # succeeded at 5. Moving the order's counts in the order its events were read put the
    # success in only to take it back at once: 10:10 and 10:20 counted no attempt.
    log = HandLog()
    log.erp("SO1", "CREATED", at(0))
    log.add("wms", "W1", "OUT_OF_STOCK", at(24), erp_order_id="SO1")
    log.erp("SO1", "ALLOCATED", at(5))
    log.erp("SO2", "CREATED", at(30))
    want = expected(log.events, at(40))
    figures = intake_figures(want.ingested.orders, at(40), BreakerRules())
    assert [(f[0], *f[1:]) for f in figures] == [
        (at(10), 1, 1, 0),
        (at(20), 1, 1, 0),
        (at(30), 1, 1, 1),
        (at(40), 2, 1, 1),
    ]
    # Read in one batch (with one record a batch the allocation comes after event time
    # passed 10:20: late, and the evaluations it belonged to are gone).
    for schedule in (Schedule(500, "newest"), Schedule(500, "sources")):
        assert compare(log, at(40), schedule=schedule) == []


def test_an_erp_event_before_its_details_waits_for_them() -> None:
    # §2: an ERP event that arrives before the one carrying `order` is held until the details
    # come. Published 20 s apart in the other order (well within the allowed lateness): the
    # rules once dead-lettered the first to arrive as missing_order.
    log = HandLog()
    created = log.erp("SO1", "CREATED", at(0))
    confirmed = log.erp("SO1", "CONFIRMED", at(0.5))
    log.events = [confirmed, created]
    want = expected(log.events, at(60))
    assert want.dead_letters == {}
    assert [(e.event_id, e.known) for e in want.ingested.orders["SO1"]] == [
        (created["event_id"], at(0)),
        (confirmed["event_id"], at(0.5)),
    ]
    for schedule in BOTH:
        assert compare(log, at(60), schedule=schedule) == []


def test_a_timer_reads_the_order_as_of_its_own_time() -> None:
    # Issue 16's catch-up: the WMS never reports; the ERP's shipped (3 h) and delivered
    # (30 h) are read before the order's timer at allocated + 2 h comes due (the CRM's and
    # the carrier's topics hold event time back). At 2 h 10 the WMS was in scope and silent:
    # missing_in_system opens there and resolves at 30 h. The rules once read the latest
    # state (delivered: the WMS out of scope) and raised nothing.
    log = HandLog()
    log.erp("SO1", "CREATED", at(0))
    log.crm("SO1", "NEW", at(1))
    log.erp("SO1", "ALLOCATED", at(10))
    log.crm("SO1", "PROCESSING", at(11))
    log.erp("SO1", "SHIPPED", at(hours=3))
    log.crm("SO1", "SHIPPED", at(1, hours=3))
    log.erp("SO1", "DELIVERED", at(hours=30))
    log.crm("SO1", "DELIVERED", at(1, hours=30))
    for hours, status in (
        (3.5, "PICKED_UP"),
        (13, "IN_TRANSIT"),
        (23, "IN_TRANSIT"),
        (30, "DELIVERED"),
    ):
        log.add("logistics", "SF1", status, at(hours=hours), erp_order_id="SO1", tracking=TRACKING)
    # The ERP's and the CRM's whole day published first, the carrier's after.
    log.events.sort(key=lambda e: e["source"] == "logistics")
    wms = _aid("missing_in_system", "SO1", "wms")
    assert _summary(expected(log.events, at(hours=40))) == {
        wms: ("missing_in_system", "SO1", at(10, hours=2), at(hours=30), "warehouse")
    }
    # Under the topics' clock the carrier's unread topic holds event time back (there is
    # none until its first record is read): the ERP's and the CRM's day is read first.
    assert compare(log, at(hours=40), schedule=Schedule(1, "sources")) == []


def test_a_resend_is_dropped_and_a_record_the_schema_rejects_is_a_dead_letter() -> None:
    log = HandLog()
    first = log.erp("SO1", "CREATED", at(0))
    log.events.append(dict(first))
    log.events.append({"event_id": "x", "source": "crm"})
    want, rules, _ = run_both(log, at(10))
    assert (want.resends, dict(want.dead_letters)) == (1, {"schema": 1})
    assert rules.events_applied == 1
    assert rules.dead_letters == {"schema": 1}
