"""The scenario generator: determinism, validity, and labels that are exact ground truth.

The ghost labels are checked against an independent reading of the contract (`_Truth`), run
twice: on event time, and on the watermark as the publish order leaves it (late events count
from when they arrive), so the labels hold for a pipeline that runs either way.
"""

from __future__ import annotations

import collections
import hashlib
import itertools
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from concord.scenario import (
    BAD_INPUT_KINDS,
    GHOST_TYPES,
    SHANGHAI,
    Labels,
    Scenario,
    ScenarioConfig,
    encode,
    generate,
    iter_bench_events,
    write_jsonl,
    write_labels,
)
from schemas.events import ChangeEvent
from schemas.stages import PHASE_OF, Phase, Source, Stage
from schemas.status_map import default_status_map
from streams.rules.ingest import IngestRules, Origin, Outcome, RefState, Rejection, state_key
from streams.rules.watermark import as_us

MIN = 60.0
HOUR = 3600.0
STATUS_MAP = default_status_map()
# When ingest reads the scenarios (a day from 2026-03-02 00:00 +08:00): after their end.
RECEIVED = datetime(2026, 3, 3, 1, tzinfo=SHANGHAI)

Reports = dict[str, list[tuple[float, float, "Phase | None"]]]


@pytest.fixture(scope="module")
def day() -> Scenario:
    return generate(ScenarioConfig())


@pytest.fixture(scope="module")
def short() -> tuple[ScenarioConfig, Scenario]:
    config = ScenarioConfig(seed=11, hours=3, orders=150, bad_inputs=36)
    return config, generate(config)


def _good(scenario: Scenario) -> list[dict[str, Any]]:
    return [e for e in scenario.events if "_raw" not in e]


def _ts(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(event["occurred_at"]).timestamp()


def _end(config: ScenarioConfig) -> float:
    return (config.start + timedelta(hours=config.hours)).timestamp()


def _fingerprint(event: dict[str, Any]) -> tuple[str, frozenset[str]]:
    order = event["order"]
    return order["customer_id"], frozenset(line["sku"][:8] for line in order["lines"])


# --- an independent reading of the ghost definitions (contract §3, §5) ----------------------


@dataclass
class _Truth:
    missing: set[str] = field(default_factory=set)
    orphans: set[str] = field(default_factory=set)
    conflicts: set[str] = field(default_factory=set)
    contradictions: set[str] = field(default_factory=set)
    stalled: set[str] = field(default_factory=set)
    carrier_never_reported: set[str] = field(default_factory=set)  # ambiguous: never planted
    # per order: first CRM report after creation, first WMS report after allocation, longest
    # disagreement, longest wait for tracking while shipped (seconds)
    crm_first: dict[str, float] = field(default_factory=dict)
    wms_first: dict[str, float] = field(default_factory=dict)
    disagreement: dict[str, float] = field(default_factory=dict)
    tracking_gap: dict[str, float] = field(default_factory=dict)


def _phase(source: str, status: str) -> Phase | None:
    mapped = STATUS_MAP.lookup(Source(source), status)
    return PHASE_OF[mapped] if isinstance(mapped, Stage) else None


def _truth(scenario: Scenario, end: float, at_watermark: bool) -> _Truth:
    truth = _Truth()
    watermark = float("-inf")
    created: dict[str, float] = {}
    erp: dict[str, list[tuple[float, Phase | None]]] = collections.defaultdict(list)
    refs: dict[tuple[str, str], list[tuple[float, float, dict[str, Any]]]] = {}
    for event in _good(scenario):
        t = _ts(event)
        watermark = max(watermark, t)
        seen = watermark if at_watermark else t
        if event["source"] == "erp":
            if "order" in event:
                created[event["order_ref"]] = seen
            erp[event["order_ref"]].append((seen, _phase("erp", event["status"])))
        else:
            refs.setdefault((event["source"], event["order_ref"]), []).append((seen, t, event))

    # the crosswalk: a reference belongs to the first erp_order_id it carries, from then on
    systems: dict[str, dict[str, list[tuple[float, float, Phase | None]]]] = {}
    for (source, ref), items in refs.items():
        link_at, link = None, None
        for seen, _, event in items:
            if "erp_order_id" in event:
                link_at, link = seen, event["erp_order_id"]
                break
        if link is None or link not in created:
            if items[0][0] <= end - 30 * MIN:
                truth.orphans.add(ref)
            continue
        assert link_at is not None
        reports = systems.setdefault(link, {}).setdefault(source, [])
        for seen, t, event in items:
            reports.append((max(seen, link_at), t, _phase(source, event["status"])))

    for order_id, created_at in created.items():
        by_source = systems.get(order_id, {})
        for reports in by_source.values():
            reports.sort(key=lambda r: r[0])
        erp_changes = sorted((t, p) for t, p in erp[order_id] if p is not None)
        points = sorted(
            {created_at, end}
            | {t for t, _ in erp_changes}
            | {r[0] for reports in by_source.values() for r in reports if r[0] <= end}
        )

        def erp_phase(at: float, changes: list[tuple[float, Phase]] = erp_changes) -> Phase:
            current = changes[0][1]
            for t, p in changes:
                if t <= at:
                    current = p
            return current

        def state(
            source: str, at: float, by_source: Reports = by_source
        ) -> tuple[bool, Phase | None]:
            reports = [r for r in by_source.get(source, []) if r[0] <= at]
            phases = [(t, p) for _, t, p in reports if p is not None]
            return bool(reports), max(phases, key=lambda x: x[0])[1] if phases else None

        def first_report(source: str, by_source: Reports = by_source) -> float | None:
            reports = by_source.get(source, [])
            return reports[0][0] if reports else None

        crm = first_report("crm")
        truth.crm_first[order_id] = (crm if crm is not None else end) - created_at
        if truth.crm_first[order_id] > 15 * MIN:
            truth.missing.add(order_id)

        fulfilling = [t for t, p in erp_changes if p is Phase.FULFILLING]
        if fulfilling:
            wms = first_report("wms")
            truth.wms_first[order_id] = (wms if wms is not None else end) - fulfilling[0]
            deadline = fulfilling[0] + 2 * HOUR
            in_scope = erp_phase(deadline) in (Phase.FULFILLING, Phase.SHIPPED)
            if deadline < end and in_scope and (wms is None or wms > deadline):
                truth.missing.add(order_id)

        run_start: float | None = None
        longest = 0.0
        for a, b in itertools.pairwise(points):
            if a < created_at:
                continue
            p = erp_phase(a)
            phases = {p}
            for source in ("crm", "wms", "logistics"):
                reported, phase = state(source, a)
                shipped_or_later = phase in (Phase.SHIPPED, Phase.DELIVERED)
                if p is Phase.CANCELLED and shipped_or_later and source != "crm":
                    truth.contradictions.add(order_id)
                if source == "wms":
                    in_scope = p in (Phase.FULFILLING, Phase.SHIPPED) or (
                        p is Phase.CANCELLED and reported
                    )
                elif source == "logistics":
                    in_scope = p in (Phase.SHIPPED, Phase.DELIVERED) or (
                        p is Phase.CANCELLED and reported
                    )
                else:
                    in_scope = True
                if in_scope and phase is not None:
                    phases.add(phase)
            if len(phases) > 1:
                run_start = a if run_start is None else run_start
                longest = max(longest, b - run_start)
            else:
                run_start = None
        truth.disagreement[order_id] = longest
        if longest > 30 * MIN or order_id in truth.contradictions:
            truth.conflicts.add(order_id)

        shipped = [t for t, p in erp_changes if p is Phase.SHIPPED]
        if shipped:
            leave = [t for t, p in erp_changes if t > shipped[0] and p is not Phase.SHIPPED]
            until = min([end, *leave])
            marks = [shipped[0]]
            marks += [r[0] for r in by_source.get("logistics", []) if shipped[0] < r[0] < until]
            marks.append(until)
            gap = max(b - a for a, b in itertools.pairwise(marks))
            truth.tracking_gap[order_id] = gap
            if gap > 24 * HOUR:
                if first_report("logistics") is None:
                    truth.carrier_never_reported.add(order_id)
                else:
                    truth.stalled.add(order_id)
    return truth


def _assert_labels_are_truth(config: ScenarioConfig, scenario: Scenario) -> None:
    labels = scenario.labels
    planted = set().union(*(labels.ghosts[t] for t in GHOST_TYPES))
    for at_watermark in (False, True):
        truth = _truth(scenario, _end(config), at_watermark)
        assert truth.missing == labels.ghosts["missing_in_system"]
        assert truth.orphans == labels.ghosts["orphan_order"]
        assert truth.conflicts == labels.ghosts["status_conflict"]
        assert truth.contradictions == labels.contradictions
        assert truth.stalled == labels.ghosts["stalled_tracking"]
        assert truth.carrier_never_reported == set()
        # ordinary orders stay clear of every threshold by a margin ...
        ordinary = set(truth.crm_first) - planted
        assert max(truth.crm_first[o] for o in ordinary) <= 13 * MIN
        assert max(v for o, v in truth.wms_first.items() if o in ordinary) <= 100 * MIN
        assert max(truth.disagreement[o] for o in ordinary) <= 27 * MIN
        assert max(v for o, v in truth.tracking_gap.items() if o in ordinary) <= 20 * HOUR
        # ... and planted ones meet theirs with one
        for order_id in labels.ghosts["status_conflict"] - labels.contradictions:
            assert truth.disagreement[order_id] >= 60 * MIN
        for order_id in labels.ghosts["stalled_tracking"]:
            assert truth.tracking_gap[order_id] >= 25 * HOUR


# --- determinism -----------------------------------------------------------------------------


def _digest(config: ScenarioConfig, tmp: Path) -> str:
    scenario = generate(config)
    write_jsonl(scenario, tmp / "events.jsonl")
    write_labels(scenario.labels, tmp / "labels.json")
    data = (tmp / "events.jsonl").read_bytes() + (tmp / "labels.json").read_bytes()
    return hashlib.sha256(data).hexdigest()


def test_same_config_gives_identical_bytes(tmp_path: Path) -> None:
    config = ScenarioConfig(seed=3, hours=6, orders=400, bad_inputs=12)
    assert _digest(config, tmp_path) == _digest(config, tmp_path)
    other = ScenarioConfig(seed=4, hours=6, orders=400, bad_inputs=12)
    assert _digest(other, tmp_path) != _digest(config, tmp_path)


def test_output_does_not_depend_on_the_hash_seed(tmp_path: Path) -> None:
    script = (
        "import hashlib, sys\n"
        "from pathlib import Path\n"
        "from concord.scenario import ScenarioConfig, generate, write_jsonl, write_labels\n"
        "s = generate(ScenarioConfig(seed=3, hours=6, orders=400, bad_inputs=12))\n"
        "d = Path(sys.argv[1])\n"
        "write_jsonl(s, d / 'events.jsonl'); write_labels(s.labels, d / 'labels.json')\n"
        "print(hashlib.sha256((d / 'events.jsonl').read_bytes()"
        " + (d / 'labels.json').read_bytes()).hexdigest())\n"
    )
    digests = set()
    for hash_seed in ("1", "4242"):
        env = dict(os.environ, PYTHONHASHSEED=hash_seed)
        run = subprocess.run(
            [sys.executable, "-c", script, str(tmp_path)],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        digests.add(run.stdout.strip())
    assert len(digests) == 1


# --- validity --------------------------------------------------------------------------------


def _ingest(scenario: Scenario) -> tuple[collections.Counter[str], dict[str, RefState]]:
    rules = IngestRules(STATUS_MAP)
    states: dict[str, RefState] = {}
    outcomes: collections.Counter[str] = collections.Counter()
    for offset, entry in enumerate(scenario.events):
        source, raw = encode(entry)
        event = rules.decode(raw, Source(source), RECEIVED)
        if isinstance(event, Rejection):
            outcomes[event.reason.value] += 1
            continue
        state = states.setdefault(state_key(event.source, event.order_ref), RefState())
        applied = rules.apply(event, raw, state, RECEIVED, origin=Origin(0, offset, None))
        key = applied.rejection.reason.value if applied.rejection else applied.outcome.value
        outcomes[key] += 1
    # ERP events still waiting for their order's details once event time has moved on.
    for state in states.values():
        if expired := rules.expire_waiting(state, as_us(RECEIVED + timedelta(days=1))):
            outcomes["missing_order"] += len(expired)
    return outcomes, states


def test_every_event_is_valid_and_accepted(day: Scenario) -> None:
    assert all("_raw" not in e for e in day.events)
    outcomes, states = _ingest(day)
    assert set(outcomes) == {Outcome.ACCEPTED.value, Outcome.HELD.value}
    # what ingest still holds at the end is exactly the orphans that never name an ERP order
    still_held = {key.split("|", 1)[1] for key, state in states.items() if state.held}
    unlinked = {
        ref
        for ref in day.labels.ghosts["orphan_order"]
        if not any(e["order_ref"] == ref and "erp_order_id" in e for e in day.events)
    }
    assert still_held == unlinked
    assert unlinked
    assert unlinked != day.labels.ghosts["orphan_order"]


def test_events_validate_and_every_status_is_mapped(day: Scenario) -> None:
    languages: dict[str, set[bool]] = collections.defaultdict(set)
    for event in day.events:
        parsed = ChangeEvent.model_validate(event)
        assert STATUS_MAP.lookup(parsed.source, parsed.status) is not None, event
        languages[parsed.source.value].add(parsed.status.isascii())
    assert all(langs == {True, False} for langs in languages.values())
    assert set(languages) == {"erp", "crm", "wms", "logistics"}


def test_erp_creates_carry_realistic_orders(day: Scenario) -> None:
    creates = [e for e in day.events if "order" in e]
    erp_refs = {e["order_ref"] for e in day.events if e["source"] == "erp"}
    assert erp_refs == {e["order_ref"] for e in creates}
    first_seen: dict[str, dict[str, Any]] = {}
    for event in day.events:
        if event["source"] == "erp":
            first_seen.setdefault(event["order_ref"], event)
    assert all("order" in e for e in first_seen.values())
    vip = rush = 0
    for event in creates:
        order = event["order"]
        assert event["order_ref"].startswith("SO")
        assert len(event["order_ref"]) == 15
        assert 1 <= len(order["lines"]) <= 5
        assert order["currency"] == "CNY"
        assert order["customer_phone"].startswith("+86")
        digits = "".join(c for c in order["customer_phone"] if c.isdigit())
        assert len(digits) == 13
        assert digits[2] == "1"
        assert order["ship_to"][:2] in {
            "广东",
            "浙江",
            "江苏",
            "上海",
            "安徽",
            "佛山",
            "广州",
            "杭州",
            "宁波",
            "苏州",
            "南京",
            "合肥",
        }
        total = round(sum(ln["qty"] * ln["unit_price"] for ln in order["lines"]), 2)
        assert order["amount"] == total or (order["amount"] == round(total - 80, 2))
        assert order["channel"] in ScenarioConfig().channels
        vip += order["vip"]
        rush += order["priority"] == "rush"
        assert 380 <= len(encode(event)[1]) <= 1100
    assert 0.06 <= vip / len(creates) <= 0.16
    assert 0.05 <= rush / len(creates) <= 0.11


def test_sources_number_orders_their_own_way(day: Scenario) -> None:
    import re

    patterns = {
        "erp": r"SO\d{13}",
        "crm": r"CS-\d{5}",
        "wms": r"WMS-[1357]-\d{5}",
        "logistics": r"(SF\d{13}|7\d{13}|JDVB\d{11}|DPK\d{12})",
    }
    for event in day.events:
        assert re.fullmatch(patterns[event["source"]], event["order_ref"]), event
        if event["source"] == "logistics":
            assert event["tracking"]["carrier"] in {"顺丰速运", "中通快递", "京东物流", "德邦快递"}


def test_non_erp_links_use_the_crosswalk(day: Scenario) -> None:
    first: dict[tuple[str, str], dict[str, Any]] = {}
    later = collections.Counter[str]()
    relying = collections.Counter[str]()
    for event in day.events:
        if event["source"] == "erp":
            continue
        key = (event["source"], event["order_ref"])
        if key in first:
            later[event["source"]] += 1
            relying[event["source"]] += "erp_order_id" not in event
        else:
            first[key] = event
    for source in ("crm", "wms", "logistics"):
        firsts = [e for (s, _), e in first.items() if s == source]
        linked = sum("erp_order_id" in e for e in firsts) / len(firsts)
        assert linked > 0.9
        assert relying[source] / later[source] > 0.3
        if source != "logistics":
            assert linked < 1.0  # some first events arrive before their link exists


def test_crm_lags_like_a_real_integration(day: Scenario) -> None:
    erp_at: dict[tuple[str, Phase], float] = {}
    links: dict[str, str] = {}
    for event in day.events:
        phase = _phase(event["source"], event["status"])
        if event["source"] == "erp" and phase is not None:
            erp_at.setdefault((event["order_ref"], phase), _ts(event))
        if event["source"] == "crm" and "erp_order_id" in event:
            links.setdefault(event["order_ref"], event["erp_order_id"])
    lags: dict[tuple[str, Phase], float] = {}
    for event in day.events:
        phase = _phase("crm", event["status"]) if event["source"] == "crm" else None
        key = (links.get(event["order_ref"], ""), phase or Phase.RETURNED)
        if key in erp_at and key not in lags:
            lags[key] = _ts(event) - erp_at[key]
    ordered = sorted(lags.values())
    assert len(ordered) > 5000
    assert 30 <= ordered[len(ordered) // 2] <= 60  # median about 45 s
    assert 5 * MIN <= ordered[int(len(ordered) * 0.99)] <= 15 * MIN
    assert 15 * MIN < ordered[-1] <= 18 * MIN  # a tail past the 15-minute bar
    assert any(lag < 0 for lag in ordered)  # clock skew exists


def test_out_of_order_share(day: Scenario) -> None:
    late = 0
    watermark = float("-inf")
    erp_late = 0
    others = 0
    for event in day.events:
        t = _ts(event)
        if t < watermark - 1:
            if event["source"] == "erp":
                erp_late += 1
            late += 1
        watermark = max(watermark, t)
        others += event["source"] != "erp"
    assert erp_late == 0
    assert 0.01 <= late / others <= 0.03


# --- duplicates and look-alikes --------------------------------------------------------------


def test_duplicate_labels_are_exact(day: Scenario) -> None:
    creates = [e for e in day.events if "order" in e]
    by_fingerprint: dict[tuple[str, frozenset[str]], list[tuple[float, str, str]]] = {}
    for event in creates:
        placed = datetime.fromisoformat(event["order"]["placed_at"]).timestamp()
        entry = (placed, event["order_ref"], event["order"]["channel"])
        by_fingerprint.setdefault(_fingerprint(event), []).append(entry)
    within: set[frozenset[str]] = set()
    channels_differ = True
    straddling = 0
    for orders in by_fingerprint.values():
        for i, (t1, a, ch1) in enumerate(orders):
            for t2, b, ch2 in orders[i + 1 :]:
                if abs(t1 - t2) <= 15 * MIN:
                    within.add(frozenset((a, b)))
                    channels_differ &= ch1 != ch2
                    straddling += int(t1 // 900) != int(t2 // 900)
    labels = day.labels
    assert within == labels.duplicate_pairs
    assert channels_differ
    assert straddling >= len(within) / 4
    assert abs(len(within) - round(0.05 * len(creates))) <= len(creates) * 0.01
    by_ref = {e["order_ref"]: e for e in creates}
    same_parts = other_parts = 0
    for pair in labels.lookalike_pairs:
        first, second = (by_ref[x] for x in sorted(pair))
        gap = abs(
            datetime.fromisoformat(first["order"]["placed_at"])
            - datetime.fromisoformat(second["order"]["placed_at"])
        )
        assert _fingerprint(first)[0] == _fingerprint(second)[0]  # one customer
        if _fingerprint(first) == _fingerprint(second):
            same_parts += 1
            assert timedelta(minutes=25) <= gap <= timedelta(minutes=60)
        else:
            other_parts += 1
            assert gap <= timedelta(minutes=15)
    assert same_parts >= 10
    assert other_parts >= 10
    assert not labels.lookalike_pairs & labels.duplicate_pairs


# --- the promotion ---------------------------------------------------------------------------


def _breaker_ticks(scenario: Scenario, wms_too: bool) -> list[tuple[float, int, float]]:
    # §7: each order once; its reservation failed at its first allocation_failed from a
    # reserving system, else succeeded at its first allocation there.
    reserving = {"erp", "wms"} if wms_too else {"erp"}
    masters = {
        (e["source"], e["order_ref"]): e["erp_order_id"]
        for e in _good(scenario)
        if e.get("erp_order_id")
    }
    creates, failed_at, allocated_at = [], {}, {}
    for event in _good(scenario):
        if "order" in event:
            creates.append(_ts(event))
        if event["source"] not in reserving:
            continue
        mapped = STATUS_MAP.lookup(Source(event["source"]), event["status"])
        if mapped is None or mapped.value not in ("allocated", "allocation_failed"):
            continue
        master = event["order_ref"] if event["source"] == "erp" else None
        master = master or masters.get((event["source"], event["order_ref"]))
        if master is None:  # never linked to an ERP order
            continue
        firsts = failed_at if mapped.value == "allocation_failed" else allocated_at
        firsts[master] = min(firsts.get(master, _ts(event)), _ts(event))
    outcomes = [(t, True) for t in failed_at.values()]
    outcomes += [(t, False) for order, t in allocated_at.items() if order not in failed_at]
    ticks = []
    first = min(creates) // 600 * 600
    for k in range(int((max(creates) - first) // 600) + 2):
        tick = first + k * 600
        made = sum(tick - HOUR <= t < tick for t in creates)
        window = [failed for t, failed in outcomes if tick - HOUR <= t < tick]
        rate = sum(window) / len(window) if window else 0.0
        ticks.append((tick, made, rate))
    return ticks


@pytest.mark.parametrize("wms_too", [False, True])
def test_promo_hour_trips_breaker_stages_one_and_two(day: Scenario, wms_too: bool) -> None:
    begin, end = day.labels.promo_peak or pytest.fail("no promo label")
    inside = [
        e for e in day.events if "order" in e and begin.timestamp() <= _ts(e) < end.timestamp()
    ]
    assert len(inside) > 2200
    ticks = _breaker_ticks(day, wms_too)
    hot = [tick for tick, made, rate in ticks if made > 2200 and rate > 0.08]
    assert len(hot) >= 2
    assert any(b - a == 600 for a, b in itertools.pairwise(hot))
    assert all(begin.timestamp() < t <= end.timestamp() + HOUR for t in hot)


def test_no_promo_means_no_breaker(tmp_path: Path) -> None:
    scenario = generate(ScenarioConfig(hours=24, orders=1800, promo_peak=False, ghosts=False))
    assert scenario.labels.promo_peak is None
    assert max(made for _, made, _ in _breaker_ticks(scenario, False)) < 400


# --- ghosts ----------------------------------------------------------------------------------


def test_every_ghost_type_is_planted(day: Scenario) -> None:
    for ghost_type in GHOST_TYPES:
        assert len(day.labels.ghosts[ghost_type]) >= 3, ghost_type
    assert len(day.labels.contradictions) >= 3
    assert day.labels.contradictions < day.labels.ghosts["status_conflict"]
    orphan_sources = {
        e["source"] for e in day.events if e["order_ref"] in day.labels.ghosts["orphan_order"]
    }
    assert orphan_sources == {"crm", "wms", "logistics"}


def test_ghost_labels_are_exact_ground_truth(day: Scenario) -> None:
    _assert_labels_are_truth(ScenarioConfig(), day)


def test_one_stall_is_past_the_critical_mark(day: Scenario) -> None:
    truth = _truth(day, _end(ScenarioConfig()), at_watermark=False)
    assert any(truth.tracking_gap[o] > 72 * HOUR for o in day.labels.ghosts["stalled_tracking"])


def test_short_period_still_plants_everything(short: tuple[ScenarioConfig, Scenario]) -> None:
    config, scenario = short
    for ghost_type in GHOST_TYPES:
        assert len(scenario.labels.ghosts[ghost_type]) >= 3
    assert scenario.labels.promo_peak is not None
    _assert_labels_are_truth(config, scenario)


def test_without_ghosts_nothing_is_a_ghost() -> None:
    config = ScenarioConfig(seed=5, hours=12, orders=900, ghosts=False, promo_peak=False)
    scenario = generate(config)
    assert scenario.labels.ghosts == {t: set() for t in GHOST_TYPES}
    _assert_labels_are_truth(config, scenario)


# --- bad inputs ------------------------------------------------------------------------------


def test_bad_inputs_fail_as_labelled(short: tuple[ScenarioConfig, Scenario]) -> None:
    config, scenario = short
    raw = [e for e in scenario.events if "_raw" in e]
    assert len(raw) == config.bad_inputs
    assert sum(scenario.labels.bad_inputs.values()) == config.bad_inputs
    assert set(scenario.labels.bad_inputs) == set(BAD_INPUT_KINDS)
    assert all(b"\n" not in e["_raw"] for e in raw)
    outcomes, _ = _ingest(scenario)
    for kind, count in scenario.labels.bad_inputs.items():
        assert outcomes[kind] == count, kind
    assert outcomes["held_overflow"] == 0


# --- files -----------------------------------------------------------------------------------


def test_jsonl_and_labels_files(short: tuple[ScenarioConfig, Scenario], tmp_path: Path) -> None:
    _, scenario = short
    lines = write_jsonl(scenario, tmp_path / "e.jsonl")
    data = (tmp_path / "e.jsonl").read_bytes().split(b"\n")
    assert lines == len(scenario.events) == len(data) - 1
    for entry, line in zip(scenario.events, data, strict=False):
        if "_raw" in entry:
            assert line == entry["_raw"]
        else:
            assert json.loads(line) == entry
    write_labels(scenario.labels, tmp_path / "l.json")
    loaded = json.loads((tmp_path / "l.json").read_text(encoding="utf-8"))
    assert set(loaded) == set(Labels.__dataclass_fields__)
    assert len(loaded["duplicate_pairs"]) == len(scenario.labels.duplicate_pairs)
    assert loaded["promo_peak"][0].endswith("+08:00")


def test_config_is_checked() -> None:
    with pytest.raises(ValueError, match="offset"):
        ScenarioConfig(start=datetime(2026, 3, 2))
    with pytest.raises(ValueError, match="duplicate_rate"):
        ScenarioConfig(duplicate_rate=0.9)
    with pytest.raises(ValueError, match="channels"):
        ScenarioConfig(channels=("website",))


# --- benchmark feed --------------------------------------------------------------------------


def test_bench_events_are_many_valid_and_realistic() -> None:
    count = 0
    sources: collections.Counter[str] = collections.Counter()
    sample: list[tuple[str, bytes, bytes]] = []
    create_sizes = []
    for source, key, value in iter_bench_events(200_000):
        count += 1
        sources[source] += 1
        if count <= 30_000:
            sample.append((source, key, value))
        if source == "erp" and count % 97 == 0 and b'"order"' in value:
            create_sizes.append(len(value))
    assert count == 200_000
    assert set(sources) == {"erp", "crm", "wms", "logistics"}
    assert 0.06 <= sources["erp"] / count <= 0.4
    assert create_sizes
    assert min(create_sizes) >= 400
    assert max(create_sizes) <= 700

    rules = IngestRules(STATUS_MAP)
    states: dict[str, RefState] = {}
    relying = 0
    for offset, (source, key, value) in enumerate(sample):
        event = rules.decode(value, Source(source), RECEIVED)
        assert not isinstance(event, Rejection), value
        assert key == event.order_ref.encode()
        state = states.setdefault(state_key(event.source, event.order_ref), RefState())
        applied = rules.apply(event, value, state, RECEIVED, origin=Origin(0, offset, key))
        assert applied.outcome is Outcome.ACCEPTED, value
        relying += source != "erp" and event.erp_order_id is None
    assert relying > 1000
    assert list(iter_bench_events(500, seed=2)) == list(iter_bench_events(500, seed=2))
