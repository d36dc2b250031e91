"""The oracle (tests/oracle) on small logs whose outputs are worked out by hand, and the log
generator (tests/logs) on what it plants."""

from __future__ import annotations

from datetime import datetime, timedelta
from fractions import Fraction
from typing import Any

from hypothesis import HealthCheck, given, settings

from schemas.anomalies import deterministic_id
from tests.logs import DETAILS, T0, TRACKING, HandLog, Knobs, at, feed_logs, generate, generate_with
from tests.oracle import OracleSettings, expected
from tests.oracle.contract import to_us
from tests.oracle.intake import BreakerRules


def aid(type_: str, order: str, trigger: str) -> str:
    return deterministic_id("anomaly", type_, order, trigger)


def summary(exp: Any) -> dict[str, tuple[str, str, int, int | None]]:
    return {
        a.anomaly_id: (a.type, a.severity, a.opened_us, a.resolved_us)
        for a in exp.anomalies.values()
    }


def catch_up_log() -> HandLog:
    """Issue 16's catch-up case: the WMS never reports; the ERP goes allocated, shipped,
    delivered; the CRM and the carrier follow closely."""
    log = HandLog()
    log.erp("SO1", "CREATED", at(0))
    log.crm("SO1", "NEW", at(1))
    log.erp("SO1", "ALLOCATED", at(10))
    log.crm("SO1", "PROCESSING", at(11))
    log.erp("SO1", "SHIPPED", at(hours=3))
    log.crm("SO1", "SHIPPED", at(1, hours=3))
    for hours, status in ((3.5, "PICKED_UP"), (13, "IN_TRANSIT"), (23, "IN_TRANSIT")):
        log.add(
            "logistics", "SF0001", status, at(hours=hours), erp_order_id="SO1", tracking=TRACKING
        )
    log.add("logistics", "SF0001", "DELIVERED", at(50, hours=29), erp_order_id="SO1")
    log.erp("SO1", "DELIVERED", at(hours=30))
    log.crm("SO1", "DELIVERED", at(1, hours=30))
    return log


def test_catch_up_missing_wms_opens_at_fulfilling_plus_2h_and_resolves_at_delivered():
    log = catch_up_log()
    exp = expected(log.events, at(hours=40))
    assert summary(exp) == {
        aid("missing_in_system", "SO1", "wms"): (
            "missing_in_system",
            "warning",
            at(10, hours=2),
            at(hours=30),
        )
    }
    (missing,) = exp.anomalies.values()
    assert missing.systems == ("erp", "wms")
    assert missing.team == "warehouse"
    assert exp.commands == {}


def test_a_deadline_fires_iff_it_is_at_or_before_the_horizon():
    log = catch_up_log()
    assert expected(log.events, at(10, hours=2) - 1).anomalies == {}
    (missing,) = expected(log.events, at(10, hours=2)).anomalies.values()
    assert (missing.opened_us, missing.resolved_us) == (at(10, hours=2), None)
    # The ERP's later events are in the log but not yet known at the horizon.
    assert expected(log.events, at(hours=30) - 1).anomalies[missing.anomaly_id].is_open


def test_publication_order_does_not_matter():
    log = catch_up_log()
    forward = expected(log.events, at(hours=40))
    backward = expected(list(reversed(log.events)), at(hours=40))
    assert summary(forward) == summary(backward)
    assert forward.dead_letters == backward.dead_letters == {}


def test_a_silent_wms_holds_its_missing_flag_back_until_it_is_back():
    log = catch_up_log()
    flag = aid("missing_in_system", "SO1", "wms")
    held = expected(log.events, at(hours=40), silent={"wms": [(at(hours=1), at(hours=5))]})
    # Raised when the silence ends, still opened when its rule first held.
    assert summary(held)[flag] == ("missing_in_system", "warning", at(10, hours=2), at(hours=30))
    gone = expected(log.events, at(hours=40), silent={"wms": [(at(hours=1), at(hours=31))]})
    assert gone.anomalies == {}  # it stopped holding while the WMS was silent: never raised
    other = expected(log.events, at(hours=40), silent={"crm": [(at(hours=1), at(hours=5))]})
    assert summary(other)[flag][2] == at(10, hours=2)  # another source's silence: no effect


def test_orphan_of_an_erp_id_opens_after_30_min_and_resolves_when_the_erp_reports():
    log = HandLog()
    log.crm("SO-X", "NEW", at(0))
    log.crm("SO-X", "CONFIRMED", at(10))
    log.erp("SO-X", "CREATED", at(50))
    log.erp("SO-X", "CONFIRMED", at(51))
    exp = expected(log.events, at(hours=2))
    assert summary(exp) == {
        aid("orphan_order", "SO-X", ""): ("orphan_order", "warning", at(30), at(50)),
    }
    assert exp.anomalies[aid("orphan_order", "SO-X", "")].systems == ("erp", "crm")


def test_an_unlinked_reference_is_an_orphan_by_its_own_ref_until_its_link():
    log = HandLog()
    log.erp("SO2", "CREATED", at(-5))
    log.add("crm", "CS-9", "NEW", at(0))  # no erp_order_id yet
    log.add("crm", "CS-9", "CONFIRMED", at(45), erp_order_id="SO2")  # the link
    log.erp("SO2", "CONFIRMED", at(44))
    exp = expected(log.events, at(hours=2))
    assert summary(exp) == {
        aid("orphan_order", "CS-9", ""): ("orphan_order", "warning", at(30), at(45)),
        # Until the link the CRM has shown nothing of SO2 (its ticket was not tied to it).
        aid("missing_in_system", "SO2", "crm"): ("missing_in_system", "warning", at(10), at(45)),
    }
    (held,) = [e for e in exp.ingested.orders["SO2"] if e.event_id == "crm-1"]
    assert (held.at, held.known) == (at(0), at(45))


def test_a_status_conflict_opens_30_min_after_the_disagreement_began():
    log = HandLog()
    log.erp("SO3", "CREATED", at(0))
    log.crm("SO3", "CONFIRMED", at(1))
    log.erp("SO3", "ALLOCATED", at(20))
    log.add("wms", "W3", "RECEIVED", at(21), erp_order_id="SO3")
    log.crm("SO3", "PROCESSING", at(hours=2))
    exp = expected(log.events, at(hours=3))
    conflict = aid("status_conflict", "SO3", str(at(20)))
    assert summary(exp) == {conflict: ("status_conflict", "warning", at(50), at(hours=2))}
    assert exp.anomalies[conflict].systems == ("erp", "crm")
    assert exp.anomalies[conflict].team == "integration"


def test_a_cancel_after_the_wms_shipped_is_critical_at_once():
    log = HandLog()
    log.erp("SO4", "CREATED", at(0))
    log.crm("SO4", "NEW", at(1))
    log.erp("SO4", "ALLOCATED", at(10))
    log.crm("SO4", "PROCESSING", at(11))
    log.add("wms", "W4", "RECEIVED", at(11), erp_order_id="SO4")
    log.add("wms", "W4", "SHIPPED", at(60), erp_order_id="SO4")
    log.erp("SO4", "CANCELLED", at(70))
    log.crm("SO4", "CANCELLED", at(71))
    exp = expected(log.events, at(hours=5))
    # The WMS ran ahead from 60 (in scope, shipped vs fulfilling): the run starts there.
    conflict = aid("status_conflict", "SO4", str(at(60)))
    assert summary(exp) == {conflict: ("status_conflict", "critical", at(70), None)}
    assert exp.anomalies[conflict].systems == ("erp", "crm", "wms")
    assert exp.anomalies[conflict].team == "warehouse"


def _shipped(log: HandLog, order: str, scans: list[float]) -> None:
    log.erp(order, "CREATED", at(0))
    log.crm(order, "NEW", at(1))
    log.erp(order, "SHIPPED", at(hours=1))
    log.crm(order, "SHIPPED", at(1, hours=1))
    log.add("wms", f"W-{order}", "SHIPPED", at(hours=1), erp_order_id=order)
    for i, hours in enumerate(scans):
        status = "PICKED_UP" if i == 0 else "IN_TRANSIT"
        log.add(
            "logistics",
            f"T-{order}",
            status,
            at(hours=hours),
            erp_order_id=order,
            tracking=TRACKING,
        )


def test_stalls_warn_at_24h_turn_critical_at_72h_and_send_two_commands_once():
    log = HandLog()
    _shipped(log, "SO5", [2])
    _shipped(log, "SO6", [2, 30])
    _shipped(log, "SO7", [])
    exp = expected(log.events, at(hours=82))
    s5 = aid("stalled_tracking", "SO5", str(at(hours=2)))
    s6a = aid("stalled_tracking", "SO6", str(at(hours=2)))
    s6b = aid("stalled_tracking", "SO6", str(at(hours=30)))
    missing = aid("missing_in_system", "SO7", "logistics")
    assert summary(exp) == {
        s5: ("stalled_tracking", "critical", at(hours=26), None),
        s6a: ("stalled_tracking", "warning", at(hours=26), at(hours=30)),
        s6b: ("stalled_tracking", "warning", at(hours=54), None),
        missing: ("missing_in_system", "warning", at(hours=25), None),
    }
    ticket = deterministic_id("command", "carrier.exception_ticket", s5)
    notify = deterministic_id("command", "customer.notify", s5)
    assert exp.commands[ticket].payload == {
        "order_id": "SO5",
        "carrier": "SF",
        "tracking_no": "SF0001",
        "anomaly_id": s5,
    }
    assert exp.commands[notify].payload == {
        "order_id": "SO5",
        "channel": "sms",
        "template": "shipment_delayed",
        "anomaly_id": s5,
    }
    assert len(exp.commands) == 6  # one pair per stall


def test_duplicates_pair_within_15_minutes_inclusive_across_a_bucket_edge():
    log = HandLog()
    placed = {"A": at(-1, hours=5), "B": at(1, hours=5), "C": at(16, hours=5), "D": at(hours=5)}
    for order, when in placed.items():
        details = dict(DETAILS, customer_id="C042 ", channel="jd_pop" if order == "C" else "pos")
        if order == "D":
            details["lines"] = [{"sku": "Z9999999", "qty": 1, "unit_price": "1.00"}]
        if order == "B":  # the same parts (first 8 characters), another variant
            details["lines"] = [{"sku": "a1234567-SV", "qty": 2, "unit_price": "10.00"}]
        log.erp(order, "CREATED", when, order=details)
    log.events.append(dict(log.events[0]))  # a re-send of A: idempotence, not a duplicate
    exp = expected(log.events, at(hours=6))
    ab = aid("duplicate_order", "A", "B")
    bc = aid("duplicate_order", "B", "C")
    assert {k: v for k, v in summary(exp).items() if v[0] == "duplicate_order"} == {
        ab: ("duplicate_order", "warning", placed["B"], None),
        bc: ("duplicate_order", "warning", placed["C"], None),
    }
    assert (exp.anomalies[ab].order_id, exp.anomalies[ab].team) == ("B", "sales")
    assert (exp.anomalies[bc].order_id, exp.anomalies[bc].team) == ("C", "manual")
    assert exp.resends == 1
    # Besides: the CRM never shows any of the four (integration's). One of six is manual.
    assert len(exp.of_type("missing_in_system")) == 4
    assert (exp.kpis.auto_routed, exp.kpis.routed) == (5, 6)


def test_the_breaker_warns_throttles_and_resumes():
    log = HandLog()
    for n in range(4):
        order = f"SO{n}"
        log.erp(order, "CREATED", at(1 + n))
        if n < 2:  # a failed reservation, then the retry
            log.erp(order, "STOCK_SHORTAGE", at(4.5))
        log.erp(order, "ALLOCATED", at(5))
        log.crm(order, "PROCESSING", at(6))  # mirrors only: not counted
    rules = BreakerRules(min_orders=2, failure_rate=Fraction(1, 4))
    exp = expected(log.events, at(hours=2), OracleSettings(breaker=rules))
    iso = {m: (T0 + timedelta(minutes=m)).isoformat() for m in range(0, 121, 10)}
    breaker = {k: v for k, v in summary(exp).items() if v[0].startswith("intake")}
    warnings = {
        aid("intake_overload", "intake", iso[m]): ("intake_overload", "warning", at(m), at(m + 10))
        for m in (10, 20, 30, 40, 50, 60)
    }
    throttled = {
        aid("intake_throttled", "intake", iso[20]): (
            "intake_throttled",
            "critical",
            at(20),
            at(100),
        )
    }
    assert breaker == warnings | throttled
    throttle = deterministic_id("command", "intake.throttle", "intake", iso[20])
    resume = deterministic_id("command", "intake.resume", "intake", iso[20])
    assert {c: (x.kind, x.payload) for c, x in exp.commands.items()} == {
        throttle: ("intake.throttle", {"mode": "vip_only"}),
        resume: ("intake.resume", {"reason": "cleared", "throttle_command_id": throttle}),
    }
    # Per order, from the reserving systems: 2 of 4 failed; at 50% it does not hold.
    half = BreakerRules(min_orders=2, failure_rate=Fraction(1, 2))
    assert expected(log.events, at(hours=2), OracleSettings(breaker=half)).commands == {}


def test_ingest_holds_what_waits_and_rejects_what_the_contract_rejects():
    log = HandLog()
    log.erp("SO8", "CONFIRMED", at(1), order=None)  # published before the details: held
    log.erp("SO8", "CREATED", at(2), order=DETAILS)
    log.erp("SO8", "APPROVED", at(0.5), order=None)  # earlier in event time than the details
    log.add("erp", "SO-LEGACY", "SHIPPED", at(3))  # no details, ever
    log.add("wms", "W8", "TELEPORTED", at(4), erp_order_id="SO8")
    log.add("crm", "CS8", "  new ", at(5), erp_order_id="SO8")  # trimmed, case-folded
    naive = log.add("crm", "CS8", "OPEN", at(6), erp_order_id="SO8")
    naive["occurred_at"] = "2026-03-02T10:06:00"
    log.events.append(dict(log.events[0]))
    exp = expected(log.events, at(hours=1))
    assert exp.dead_letters == {"missing_order": 1, "unknown_status": 1, "schema": 1}
    assert exp.resends == 1
    erp = {e.event_id: (e.at, e.known) for e in exp.ingested.orders["SO8"] if e.source == "erp"}
    assert erp == {
        "erp-0": (at(1), at(2)),
        "erp-1": (at(2), at(2)),
        "erp-2": (at(0.5), at(2)),
    }


def test_kpis_from_a_few_orders():
    log = HandLog()
    log.erp("K1", "CREATED", at(0))
    log.crm("K1", "NEW", at(0.5))
    log.erp("K1", "ALLOCATED", at(10))
    log.crm("K1", "PROCESSING", at(11.5))
    log.add("wms", "WK1", "RECEIVED", at(15), erp_order_id="K1")
    log.erp("K2", "CREATED", at(20))
    log.crm("K2", "CONFIRMED", at(19))  # ahead of the ERP: 0 s, counted as skew
    log.erp("K3", "CREATED", at(hours=-30))
    log.erp("K3", "CANCELLED", at(hours=-29))  # terminal more than 24 h ago: not counted
    log.erp("K4", "CREATED", at(30))  # the CRM never shows it
    exp = expected(log.events, at(hours=1))
    crm = exp.kpis.latency["crm"]["1h"]
    assert (crm.count, crm.median, crm.p95, crm.skew) == (3, 30.0, 90.0, 1)
    wms = exp.kpis.latency["wms"]["24h"]
    assert (wms.count, wms.median, wms.p95) == (1, 300.0, 300.0)
    assert (exp.kpis.consistent, exp.kpis.population) == (2, 3)
    # K4's missing CRM opened at 45 min; K3's, at -29:45 h, before the 24 h window.
    assert (exp.kpis.auto_routed, exp.kpis.routed) == (1, 1)


# --- the generator ---------------------------------------------------------------------------


def test_a_seed_gives_the_same_log_and_another_seed_another():
    assert generate(3).events == generate(3).events
    assert generate(3).events != generate(4).events
    assert len({e["source"] for e in generate(3, orders=200).events}) == 4


def test_a_faultless_log_has_no_orphans_duplicates_or_dead_letters():
    quiet = Knobs(
        orders=150,
        missing=0,
        stuck=0,
        contradictions=0,
        stalls=0,
        orphans=0,
        late_links=0,
        duplicates=0,
        reservation_failures=0,
        cancellations=0,
        resends=0,
        bad_inputs=0,
    )
    log = generate_with(quiet, 9)
    exp = expected(log.events, log.end_us)
    types = {a.type for a in exp.anomalies.values()}
    assert not types & {"orphan_order", "duplicate_order", "stalled_tracking"}
    assert exp.dead_letters == {}
    assert exp.resends == 0


def _first_at(log: Any, name: str) -> int | None:
    # When an order or reference named `name` first appears in the published log.
    times = [
        to_us(datetime.fromisoformat(e["occurred_at"]))
        for e in log.events
        if name in (e.get("erp_order_id"), e["order_ref"]) and "occurred_at" in e
    ]
    return min(times, default=None)


def _contradicted(log: Any) -> set[str]:
    # Orders the ERP cancelled while the WMS had shipped them (by the published log).
    cancelled = {
        e["order_ref"]
        for e in log.events
        if e["source"] == "erp" and e["status"] in ("CANCELLED", "已取消")
    }
    shipped = {
        e.get("erp_order_id")
        for e in log.events
        if e["source"] == "wms" and e["status"] in ("SHIPPED", "已出库")
    }
    return cancelled & shipped


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(log=feed_logs(max_orders=80))
def test_what_the_generator_plants_the_oracle_finds(log: Any) -> None:
    exp = expected(log.events, log.end_us)
    truth = log.ground_truth
    assert exp.dead_letters == truth.dead_letters
    assert exp.resends == truth.resends
    pairs = {tuple(a.extra["order_ids"]) for a in exp.of_type("duplicate_order")}
    assert pairs == truth.duplicates
    assert not pairs & truth.near_duplicates
    critical = {a.order_id for a in exp.of_type("status_conflict") if a.severity == "critical"}
    assert _contradicted(log) & truth.contradictions <= critical
    orphans = {a.order_id for a in exp.of_type("orphan_order")}
    for name in truth.orphans:
        first = _first_at(log, name)
        if first is not None and first + 30 * 60 * 10**6 <= log.end_us:
            assert name in orphans


def test_three_thousand_orders_take_seconds_not_minutes() -> None:
    log = generate(1, orders=3000)
    exp = expected(log.events, log.end_us)
    assert len(exp.ingested.orders) >= 2900
