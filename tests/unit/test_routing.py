"""Routing rules, the router and the auto-routing rate."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas.anomalies import AnomalyType, Route, Severity, Team
from schemas.events import OrderDetails, OrderLine
from schemas.routing import (
    NO_MATCH,
    RoutingError,
    RoutingMatch,
    RoutingRule,
    RoutingTable,
    default_routing,
    load_routing,
)
from schemas.stages import Source
from streams.rules.routing import (
    AutoRoutingRate,
    RoutingCounts,
    RoutingFacts,
    matches,
    route,
)

T = AnomalyType
S = Severity
T0 = datetime(2026, 1, 12, 9, 0, tzinfo=UTC)


def facts(
    type_: AnomalyType,
    severity: Severity = S.WARNING,
    systems: tuple[str, ...] = (),
    *,
    vip: bool | None = None,
    priority: str | None = None,
    channel: str | None = None,
) -> RoutingFacts:
    return RoutingFacts(
        type=type_,
        severity=severity,
        systems=frozenset(systems),
        vip=vip,
        priority=priority,  # type: ignore[arg-type]
        channel=channel,
    )


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "routing.yaml"
    path.write_text(text, encoding="utf-8")
    return path


# --- the shipped defaults ----------------------------------------------------------------

DEFAULT_CASES = [
    (facts(T.INTAKE_OVERLOAD, S.WARNING, ("erp",)), "intake_breaker", Team.OPERATIONS),
    (facts(T.INTAKE_THROTTLED, S.CRITICAL), "intake_breaker", Team.OPERATIONS),
    (facts(T.SOURCE_SILENT, S.WARNING, ("wms",)), "source_silent", Team.INTEGRATION),
    (
        facts(T.STATUS_CONFLICT, S.CRITICAL, ("erp", "logistics"), vip=True, channel="website"),
        "cancelled_but_with_carrier",
        Team.LOGISTICS,
    ),
    (
        facts(T.STATUS_CONFLICT, S.CRITICAL, ("erp", "wms")),
        "cancelled_but_shipped",
        Team.WAREHOUSE,
    ),
    (facts(T.STATUS_CONFLICT, S.WARNING, ("erp", "crm")), "conflict_crm", Team.INTEGRATION),
    (facts(T.STATUS_CONFLICT, S.WARNING, ("erp", "wms")), "conflict_wms", Team.WAREHOUSE),
    (
        facts(T.STATUS_CONFLICT, S.WARNING, ("erp", "logistics")),
        "conflict_carrier",
        Team.LOGISTICS,
    ),
    (
        facts(T.MISSING_IN_SYSTEM, S.WARNING, ("erp", "logistics")),
        "missing_at_carrier",
        Team.LOGISTICS,
    ),
    (facts(T.MISSING_IN_SYSTEM, S.WARNING, ("erp", "wms")), "missing_in_wms", Team.WAREHOUSE),
    (
        facts(T.MISSING_IN_SYSTEM, S.WARNING, ("erp", "crm"), vip=True),
        "missing_in_crm",
        Team.INTEGRATION,
    ),
    (facts(T.ORPHAN_ORDER, S.WARNING, ("logistics",)), "orphan_order", Team.INTEGRATION),
    (
        facts(T.STALLED_TRACKING, S.CRITICAL, ("erp", "logistics"), vip=True),
        "stalled_tracking",
        Team.LOGISTICS,
    ),
    (
        facts(T.DUPLICATE_ORDER, S.WARNING, ("erp",), vip=True, channel="douyin"),
        "duplicate_vip",
        Team.SALES,
    ),
    (
        facts(T.DUPLICATE_ORDER, S.WARNING, ("erp",), vip=False, channel="Excel"),
        "duplicate_b2b",
        Team.SALES,
    ),
    (
        facts(T.DUPLICATE_ORDER, S.WARNING, ("erp",), vip=False, channel="distributor_api"),
        "duplicate_b2b",
        Team.SALES,
    ),
    (
        facts(T.DUPLICATE_ORDER, S.WARNING, ("erp",), vip=False, channel="website"),
        "duplicate_self_service",
        Team.CUSTOMER_SERVICE,
    ),
]


@pytest.mark.parametrize(("the_facts", "rule", "team"), DEFAULT_CASES)
def test_default_rule_routes(the_facts: RoutingFacts, rule: str, team: Team) -> None:
    assert route(the_facts, default_routing()) == Route(team=team, rule=rule)


def test_every_default_rule_is_reachable() -> None:
    table = default_routing()
    reached = {route(f, table).rule for f, _, _ in DEFAULT_CASES}
    assert reached == {r.name for r in table.rules}


def test_every_anomaly_type_has_a_default_rule() -> None:
    named: set[AnomalyType] = set()
    for rule in default_routing().rules:
        assert rule.match.type is not None
        named |= rule.match.type
    assert named == set(AnomalyType)


def test_every_default_rule_says_why_and_none_routes_to_manual() -> None:
    for rule in default_routing().rules:
        assert rule.why
        assert rule.team is not Team.MANUAL


def test_load_without_a_file_gives_the_defaults() -> None:
    assert load_routing(None) == default_routing()


@pytest.mark.parametrize(
    "the_facts",
    [
        # Marketplace channels have no owner here: a person decides.
        facts(T.DUPLICATE_ORDER, vip=False, channel="jd_pop"),
        # No order details: no channel, no VIP flag, so no duplicate rule applies.
        facts(T.DUPLICATE_ORDER),
        # Anomalies naming no system a rule can pin them on.
        facts(T.MISSING_IN_SYSTEM, S.WARNING, ("erp",)),
        facts(T.STATUS_CONFLICT, S.CRITICAL, ()),
    ],
)
def test_unclear_cases_fall_to_manual(the_facts: RoutingFacts) -> None:
    assert route(the_facts, default_routing()) == Route(team=Team.MANUAL, rule=NO_MATCH)


# --- matching semantics ------------------------------------------------------------------


def table_of(*rules: tuple[str, dict[str, object], Team]) -> RoutingTable:
    return RoutingTable(
        rules=tuple(
            RoutingRule.model_validate({"name": n, "match": m, "team": t}) for n, m, t in rules
        )
    )


def test_first_match_wins() -> None:
    table = table_of(
        ("vip_first", {"vip": True}, Team.CUSTOMER_SERVICE),
        ("dups", {"type": "duplicate_order"}, Team.SALES),
    )
    assert route(facts(T.DUPLICATE_ORDER, vip=True), table).rule == "vip_first"
    assert route(facts(T.DUPLICATE_ORDER, vip=False), table).rule == "dups"


def test_first_match_wins_in_the_defaults() -> None:
    # Both contradiction rules match a parcel that left the warehouse and reached the carrier.
    both = facts(T.STATUS_CONFLICT, S.CRITICAL, ("erp", "wms", "logistics"))
    assert route(both, default_routing()) == Route(
        team=Team.LOGISTICS, rule="cancelled_but_with_carrier"
    )


def test_empty_table_routes_everything_to_manual() -> None:
    assert route(facts(T.ORPHAN_ORDER), RoutingTable()) == Route(team=Team.MANUAL, rule=NO_MATCH)


def test_empty_match_matches_everything() -> None:
    table = table_of(("catch_all", {}, Team.OPERATIONS))
    assert route(facts(T.SOURCE_SILENT), table).team is Team.OPERATIONS


def test_systems_match_when_any_listed_system_is_involved() -> None:
    match = RoutingMatch.model_validate({"systems": ["wms", "logistics"]})
    assert matches(match, facts(T.STATUS_CONFLICT, systems=("erp", "logistics")))
    assert not matches(match, facts(T.STATUS_CONFLICT, systems=("erp", "crm")))
    assert not matches(match, facts(T.STATUS_CONFLICT, systems=()))


def test_all_given_fields_must_hold() -> None:
    match = RoutingMatch.model_validate(
        {
            "type": ["duplicate_order", "orphan_order"],
            "severity": "critical",
            "vip": True,
            "priority": "rush",
            "channel": "pos",
        }
    )
    hit = facts(T.ORPHAN_ORDER, S.CRITICAL, vip=True, priority="rush", channel="pos")
    assert matches(match, hit)
    for miss in [
        facts(T.STALLED_TRACKING, S.CRITICAL, vip=True, priority="rush", channel="pos"),
        facts(T.ORPHAN_ORDER, S.WARNING, vip=True, priority="rush", channel="pos"),
        facts(T.ORPHAN_ORDER, S.CRITICAL, vip=False, priority="rush", channel="pos"),
        facts(T.ORPHAN_ORDER, S.CRITICAL, vip=True, priority="normal", channel="pos"),
        facts(T.ORPHAN_ORDER, S.CRITICAL, vip=True, priority="rush", channel="website"),
    ]:
        assert not matches(match, miss)


def test_unknown_facts_meet_no_constraint() -> None:
    unknown = facts(T.ORPHAN_ORDER)
    for field, value in [("vip", False), ("priority", "normal"), ("channel", "pos")]:
        assert not matches(RoutingMatch.model_validate({field: value}), unknown)


def test_channels_compare_trimmed_and_case_folded() -> None:
    match = RoutingMatch.model_validate({"channel": [" WeChat "]})
    assert match.channel == frozenset({"wechat"})
    assert matches(match, facts(T.DUPLICATE_ORDER, channel="WECHAT "))


def test_facts_from_order_details() -> None:
    order = OrderDetails(
        customer_id="c-1",
        channel="pos",
        lines=[OrderLine(sku="BRK-PAD-01", qty=2, unit_price=Decimal("80"))],
        amount=Decimal("160"),
        currency="CNY",
        vip=True,
        priority="rush",
    )
    got = RoutingFacts.of(T.DUPLICATE_ORDER, S.WARNING, ["erp"], order)
    assert got == RoutingFacts(
        type=T.DUPLICATE_ORDER,
        severity=S.WARNING,
        systems=frozenset({"erp"}),
        vip=True,
        priority="rush",
        channel="pos",
    )
    assert RoutingFacts.of(T.ORPHAN_ORDER, S.WARNING, ["crm"]).vip is None


_matches = st.builds(
    RoutingMatch,
    type=st.none() | st.frozensets(st.sampled_from(AnomalyType), min_size=1),
    systems=st.none() | st.frozensets(st.sampled_from(Source), min_size=1),
    severity=st.none() | st.frozensets(st.sampled_from(Severity), min_size=1),
    vip=st.none() | st.booleans(),
    priority=st.none() | st.sampled_from(["rush", "normal"]),
    channel=st.none() | st.frozensets(st.sampled_from(["pos", "excel", "website"]), min_size=1),
)
_facts = st.builds(
    RoutingFacts,
    type=st.sampled_from(AnomalyType),
    severity=st.sampled_from(Severity),
    systems=st.frozensets(st.sampled_from([s.value for s in Source])),
    vip=st.none() | st.booleans(),
    priority=st.none() | st.sampled_from(["rush", "normal"]),
    channel=st.none() | st.sampled_from(["pos", "excel", "website", "douyin"]),
)


@given(_matches, _matches, _facts)
def test_covers_is_sound(a: RoutingMatch, b: RoutingMatch, f: RoutingFacts) -> None:
    # The dead-rule check must never reject a rule that could in fact match something.
    if a.covers(b) and matches(b, f):
        assert matches(a, f)


# --- override files and their errors -----------------------------------------------------


def test_override_file_replaces_the_defaults(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
- name: everything_stuck
  match: {type: [stalled_tracking, missing_in_system], systems: logistics}
  team: customer_service
""",
    )
    table = load_routing(path)
    assert [r.name for r in table.rules] == ["everything_stuck"]
    stalled = facts(T.STALLED_TRACKING, S.WARNING, ("erp", "logistics"))
    assert route(stalled, table) == Route(team=Team.CUSTOMER_SERVICE, rule="everything_stuck")
    # Not merged: what the defaults would route is manual now.
    assert route(facts(T.INTAKE_OVERLOAD), table).team is Team.MANUAL


def test_explicit_empty_list_means_all_manual(tmp_path: Path) -> None:
    assert load_routing(write(tmp_path, "[]\n")).rules == ()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "- name: dup\n  match: {type: duplicat_order}\n  team: sales\n",
            "rule #1 'dup': match.type.0: Input should be",
        ),
        (
            "- name: ok\n  match: {}\n  team: sales\n"
            "- name: typo\n  match: {sytems: wms}\n  team: warehouse\n",
            "rule #2 'typo': match.sytems: Extra inputs are not permitted",
        ),
        (
            "- name: to_people\n  match: {type: orphan_order}\n  team: manual\n",
            "rule #1 'to_people': team: manual is where unmatched anomalies go",
        ),
        (
            "- name: nobody\n  match: {type: orphan_order}\n  team: board\n",
            "rule #1 'nobody': team: Input should be",
        ),
        (
            "- name: empty\n  match: {channel: []}\n  team: sales\n",
            "rule #1 'empty': match.channel: an empty list matches nothing",
        ),
        (
            "- name: sys\n  match: {systems: [erp, sap]}\n  team: integration\n",
            "rule #1 'sys': match.systems.1: Input should be",
        ),
        (
            "- name: no_match\n  match: {}\n  team: sales\n",
            "rule #1 'no_match': name: 'no_match' is reserved",
        ),
        (
            "- name: has space\n  match: {}\n  team: sales\n",
            "rule #1 'has space': name: String should match pattern",
        ),
        ("- match: {}\n  team: sales\n", "rule #1: name: Field required"),
        ("- name: x\n  team: sales\n", "rule #1 'x': match: Field required"),
        ("- name: x\n  match: {}\n  team: sales\n  teem: x\n", "rule #1 'x': teem: Extra inputs"),
        ("- just a string\n", "rule #1: expected a mapping with name, match and team"),
        (
            "- name: a\n  match: {type: orphan_order}\n  team: integration\n"
            "- name: a\n  match: {type: source_silent}\n  team: integration\n",
            "rule #2 'a': name already used by rule #1",
        ),
        (
            "- name: all_dups\n  match: {type: duplicate_order}\n  team: sales\n"
            "- name: vip_dups\n  match: {type: duplicate_order, vip: true}\n"
            "  team: customer_service\n",
            "rule #2 'vip_dups': can never match, rule #1 'all_dups' above it",
        ),
        ("rules: []\n", "expected a list of rules"),
        ("", "expected a list of rules (the file is empty)"),
        ("- name: [unclosed\n", "while parsing"),
    ],
)
def test_bad_file_names_the_rule_and_field(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(RoutingError) as caught:
        load_routing(path)
    assert str(path) in str(caught.value)
    assert expected in str(caught.value)


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "- name: a\n  match: {type: nope}\n  team: sales\n- name: b\n  match: {}\n  team: manual\n",
    )
    with pytest.raises(RoutingError, match=r"(?s)rule #1 'a'.*rule #2 'b'"):
        load_routing(path)


def test_missing_file_is_a_routing_error(tmp_path: Path) -> None:
    with pytest.raises(RoutingError, match=r"absent\.yaml"):
        load_routing(tmp_path / "absent.yaml")


def test_table_built_in_code_is_checked_too() -> None:
    rule = RoutingRule.model_validate({"name": "a", "match": {}, "team": "sales"})
    with pytest.raises(ValueError, match="name already used"):
        RoutingTable(rules=(rule, rule))


# --- the auto-routing rate ---------------------------------------------------------------


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def test_rate_is_auto_over_total() -> None:
    # The case study's 86.4%: 108 of 125 anomalies routed to a team, 17 left to people.
    teams = [t for t in Team if t is not Team.MANUAL]
    rate = AutoRoutingRate()
    for i in range(125):
        rate.add(f"a-{i}", at(i), Team.MANUAL if i >= 108 else teams[i % len(teams)])
    assert rate.counts() == RoutingCounts(auto=108, total=125)
    assert rate.ratio() == pytest.approx(0.864)


def test_rate_is_none_without_anomalies() -> None:
    assert AutoRoutingRate().ratio() is None
    assert RoutingCounts().ratio() is None


def test_add_is_idempotent_per_anomaly_id() -> None:
    rate = AutoRoutingRate()
    assert rate.add("a-1", at(0), Team.LOGISTICS)
    assert not rate.add("a-1", at(0), Team.LOGISTICS)
    assert not rate.add("a-1", at(5), Team.MANUAL)  # a later report of the same anomaly
    assert rate.add("a-2", at(1), Team.MANUAL)
    assert rate.counts() == RoutingCounts(auto=1, total=2)


def test_disagreeing_reports_resolve_the_same_in_any_order() -> None:
    reports = [("a-1", at(3), Team.SALES), ("a-1", at(1), Team.MANUAL), ("a-1", at(1), Team.SALES)]
    results = set()
    for order in (reports, reports[::-1], reports[1:] + reports[:1]):
        rate = AutoRoutingRate()
        for report in order:
            rate.add(*report)
        results.add(json.dumps(rate.to_json()))
    assert len(results) == 1
    # Earliest opening wins, then the lower team name ("manual" < "sales").
    assert rate.counts() == RoutingCounts(auto=0, total=1)


def test_window_expiry() -> None:
    rate = AutoRoutingRate(timedelta(hours=24))
    rate.add("old", at(0), Team.MANUAL)
    rate.add("edge", at(1), Team.WAREHOUSE)
    rate.add("new", at(60), Team.LOGISTICS)
    # The window is (watermark - 24 h, watermark]: "old" sits exactly on the boundary.
    assert rate.expire(at(0) + timedelta(hours=24)) == 1
    assert rate.counts() == RoutingCounts(auto=2, total=2)
    assert rate.ratio() == 1.0
    assert rate.expire(at(60) + timedelta(hours=24)) == 2
    assert rate.ratio() is None


def test_watermark_never_goes_back_and_late_anomalies_are_not_counted() -> None:
    rate = AutoRoutingRate(timedelta(hours=1))
    rate.expire(at(120))
    rate.expire(at(30))
    assert rate.watermark == at(120)
    assert not rate.add("late", at(60), Team.SALES)  # at the boundary, already expired
    assert rate.add("inside", at(61), Team.SALES)
    assert len(rate) == 1


def test_expire_skips_entries_replaced_by_an_earlier_report() -> None:
    rate = AutoRoutingRate(timedelta(hours=1))
    rate.add("a", at(50), Team.SALES)
    rate.add("a", at(10), Team.SALES)
    assert rate.expire(at(70)) == 1  # the at(10) opening is out; its stale at(50) is ignored
    assert rate.expire(at(200)) == 0
    assert len(rate) == 0


def test_merge_sums_disjoint_workers() -> None:
    one, two = AutoRoutingRate(), AutoRoutingRate()
    for i in range(10):
        one.add(f"p0-{i}", at(i), Team.WAREHOUSE if i < 9 else Team.MANUAL)
        two.add(f"p1-{i}", at(i), Team.LOGISTICS if i < 6 else Team.MANUAL)
    assert one.counts() + two.counts() == RoutingCounts(auto=15, total=20)
    one.merge(two)
    assert one.counts() == RoutingCounts(auto=15, total=20)
    assert one.ratio() == 0.75


def test_merge_is_commutative_and_idempotent() -> None:
    def worker(ids: range, team: Team, watermark: datetime) -> AutoRoutingRate:
        rate = AutoRoutingRate(timedelta(hours=1))
        for i in ids:
            rate.add(f"a-{i}", at(i), team)
        rate.expire(watermark)
        return rate

    ab = worker(range(50), Team.SALES, at(50))
    ab.merge(worker(range(40, 90), Team.MANUAL, at(90)))
    ba = worker(range(40, 90), Team.MANUAL, at(90))
    ba.merge(worker(range(50), Team.SALES, at(50)))
    assert ab.to_json() == ba.to_json()
    # The later watermark (at 90) applies to both: openings after minute 30 remain, and the
    # ten ids both saw (40-49) resolve to the lower team name, manual.
    assert ab.counts() == RoutingCounts(auto=9, total=59)
    again = AutoRoutingRate.from_json(ab.to_json(), window=timedelta(hours=1))
    again.merge(ab)
    assert again.to_json() == ab.to_json()


def test_merge_refuses_a_different_window() -> None:
    with pytest.raises(ValueError, match="cannot merge"):
        AutoRoutingRate(timedelta(hours=1)).merge(AutoRoutingRate(timedelta(hours=2)))


def test_json_round_trip() -> None:
    rate = AutoRoutingRate()
    rate.add("a-1", at(0), Team.WAREHOUSE)
    rate.add("a-2", at(5).astimezone(timezone(timedelta(hours=8))), Team.MANUAL)
    rate.expire(at(10))
    raw = json.loads(json.dumps(rate.to_json()))
    back = AutoRoutingRate.from_json(raw)
    assert back.to_json() == rate.to_json()
    assert back.counts() == rate.counts() == RoutingCounts(auto=1, total=2)
    assert back.watermark == at(10)
    assert AutoRoutingRate.from_json(None).counts() == RoutingCounts()


def test_a_shorter_window_setting_applies_on_restore() -> None:
    rate = AutoRoutingRate()
    rate.add("a-1", at(0), Team.WAREHOUSE)
    rate.add("a-2", at(120), Team.WAREHOUSE)
    rate.expire(at(150))
    back = AutoRoutingRate.from_json(rate.to_json(), window=timedelta(hours=1))
    assert back.counts() == RoutingCounts(auto=1, total=1)


def test_naive_times_and_bad_windows_are_refused() -> None:
    rate = AutoRoutingRate()
    with pytest.raises(ValueError, match="timezone-aware"):
        rate.add("a", datetime(2026, 1, 1), Team.SALES)
    with pytest.raises(ValueError, match="timezone-aware"):
        rate.expire(datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="positive"):
        AutoRoutingRate(timedelta(0))
    assert AutoRoutingRate().window == timedelta(hours=24)
