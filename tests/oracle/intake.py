"""Duplicates (§5 `duplicate_order`) and breaker stages 1–2 (§7), by brute force.

Duplicates: every ERP order with details (its earliest event carrying `order`) has a
fingerprint — its customer and the set of its SKUs cut to their first 8 characters, both
compared NFKC-normalised, case-folded and without whitespace — and a `placed_at` (the
details' own, else that event's time). Two orders pair when their fingerprints are equal and
their `placed_at` are at most 15 min apart (inclusive). Each pair is one open anomaly, id
from the two order ids sorted, raised on the later-placed order (ties: the larger id),
`opened_at` its `placed_at`, routed with that order's details. Nothing resolves it but a
decision (not modelled here).

Breaker: evaluated at every multiple of 10 min of event time (from the epoch) after the
first counted event, up to the horizon, over the trailing window [I - 60 min, I), on each
order as its events known by I show it (the README's "Breaker figures", which pin down the
contract's "each order counted once"):
* created: an order is created at its ERP's earliest stage event;
* its stock reservation, from the reserving systems only (ERP and WMS): failed at its first
  `allocation_failed` if there is one, else succeeded at its first event at `fulfilling`
  (`allocated` or `picking`); a retry that succeeds leaves the one failure;
* counted in the window that holds that instant: orders created, orders whose reservation
  was attempted (succeeded or failed), and of those the failed.
Stage 1 holds when created > 2200 and rate > 8% (strictly). Each holding evaluation opens
an `intake_overload` (warning) and resolves the previous one; a clear evaluation resolves
it. The `warnings_to_throttle`-th consecutive holding evaluation (2) throttles:
`intake.throttle` {"mode": "vip_only"} and an `intake_throttled` (critical) anomaly. The
throttle lifts at the first evaluation at least 30 min after the first clear evaluation that
followed the last holding one: `intake.resume` and the anomaly resolves. Decisions (ack,
release) are not modelled.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction
from itertools import combinations
from typing import Any

from tests.oracle.contract import (
    MINUTE,
    PHASE,
    AnomalyRecord,
    CommandRecord,
    anomaly_id,
    command_id,
    from_us,
    normalized,
    parse_time,
    team_of,
)
from tests.oracle.ingest import Accepted


@dataclass(frozen=True)
class _Placed:
    order_id: str
    fingerprint: tuple[str, frozenset[str]]
    placed_us: int
    details: Mapping[str, Any]


def duplicates(
    orders: Mapping[str, list[Accepted]], horizon: int, window: int
) -> list[AnomalyRecord]:
    """Every pair of look-alike orders placed within `window` of each other."""
    placed: list[_Placed] = []
    for order_id, events in orders.items():
        with_details = [
            e for e in events if e.source == "erp" and e.body.get("order") and e.known <= horizon
        ]
        if not with_details:
            continue
        first = min(with_details, key=lambda e: (e.at, e.event_id))
        details = first.body["order"]
        fingerprint = (
            normalized(details["customer_id"]),
            frozenset(normalized(line["sku"])[:8] for line in details["lines"]),
        )
        at = parse_time(details.get("placed_at")) or first.at
        placed.append(_Placed(order_id, fingerprint, at, details))
    alike: dict[tuple[str, frozenset[str]], list[_Placed]] = {}
    for one in placed:
        alike.setdefault(one.fingerprint, []).append(one)
    out: list[AnomalyRecord] = []
    for group in alike.values():
        out += _pairs(group, window)
    return out


def _pairs(group: list[_Placed], window: int) -> list[AnomalyRecord]:
    out: list[AnomalyRecord] = []
    for a, b in combinations(group, 2):
        if abs(a.placed_us - b.placed_us) > window:
            continue
        _, later = sorted((a, b), key=lambda p: (p.placed_us, p.order_id))
        low, high = sorted((a.order_id, b.order_id))
        facts = {k: later.details.get(k) for k in ("vip", "priority", "channel")}
        facts["vip"] = bool(facts["vip"])
        out.append(
            AnomalyRecord(
                anomaly_id("duplicate_order", low, high),
                "duplicate_order",
                later.order_id,
                "warning",
                later.placed_us,
                None,
                team_of("duplicate_order", "warning", ("erp",), facts),
                ("erp",),
                {"order_ids": [low, high]},
            )
        )
    return out


@dataclass(frozen=True)
class BreakerRules:
    """§7 stages 1–2 settings (µs)."""

    min_orders: int = 2200
    failure_rate: Fraction = Fraction(8, 100)
    window: int = 60 * MINUTE
    evaluate_every: int = 10 * MINUTE
    warnings_to_throttle: int = 2
    clear_for: int = 30 * MINUTE
    reserving: tuple[str, ...] = ("erp", "wms")


def _iso(at_us: int) -> str:
    return from_us(at_us).isoformat()


Figures = tuple[int, int, int, int]
"""(evaluation instant, orders created, orders with a reservation attempt, of them failed)."""


def intake_figures(
    orders: Mapping[str, list[Accepted]], horizon: int, rules: BreakerRules
) -> list[Figures]:
    """The stage-1 figures at every evaluation instant up to `horizon`."""
    counted = [e for events in orders.values() for e in events if _counts(e, rules)]
    if not counted:
        return []
    # Each order as of each instant one of its counted events became known (it is the same
    # in between): (instants, what it counts for from each).
    lives = []
    for events in orders.values():
        instants = sorted({e.known for e in events if _counts(e, rules)})
        lives.append((instants, [_as_of(events, t, rules) for t in instants]))
    out: list[Figures] = []
    step = rules.evaluate_every
    instant = min(e.at for e in counted) // step * step + step
    while instant <= horizon:
        start = instant - rules.window
        created = tried = failed = 0
        for instants, states in lives:
            i = bisect_right(instants, instant) - 1
            if i < 0:
                continue
            made, reserved, fails = states[i]
            created += made is not None and start <= made < instant
            if reserved is not None and start <= reserved < instant:
                tried += 1
                failed += fails
        out.append((instant, created, tried, failed))
        instant += step
    return out


def _counts(e: Accepted, rules: BreakerRules) -> bool:
    # An event that can make an order count: an ERP stage, or a reserving system's
    # reservation (fulfilling) or failure.
    if e.source == "erp" and e.stage is not None:
        return True
    fulfilling = e.stage is not None and PHASE[e.stage] == "fulfilling"
    return e.source in rules.reserving and (fulfilling or e.marker == "allocation_failed")


def _as_of(
    events: list[Accepted], instant: int, rules: BreakerRules
) -> tuple[int | None, int | None, bool]:
    # (created at, reservation at, whether it failed) of one order, from its events known
    # by `instant`.
    known = [e for e in events if e.known <= instant]
    erp = [e.at for e in known if e.source == "erp" and e.stage is not None]
    mine = [e for e in known if e.source in rules.reserving]
    failures = [e.at for e in mine if e.marker == "allocation_failed"]
    reserved = [e.at for e in mine if e.stage is not None and PHASE[e.stage] == "fulfilling"]
    created = min(erp, default=None)
    if failures:
        return created, min(failures), True
    return created, min(reserved, default=None), False


def breaker(
    figures: list[Figures], rules: BreakerRules
) -> tuple[list[AnomalyRecord], list[CommandRecord]]:
    """The breaker's anomalies and commands from its figures at each evaluation."""
    anomalies: list[AnomalyRecord] = []
    commands: list[CommandRecord] = []
    streak = 0
    warning: AnomalyRecord | None = None
    throttle: AnomalyRecord | None = None
    clear_since: int | None = None
    for instant, created, tried, failed in figures:
        holds = (
            created > rules.min_orders
            and tried > 0
            and Fraction(failed, tried) > rules.failure_rate
        )
        if warning is not None:
            warning.resolved_us = instant
            warning = None
        if not holds:
            streak = 0
            clear_since = instant if clear_since is None else clear_since
            if throttle is not None and instant - clear_since >= rules.clear_for:
                throttle.resolved_us = instant
                commands.append(_resume(throttle.opened_us, instant))
                throttle = None
            continue
        streak += 1
        clear_since = None
        warning = _breaker_anomaly("intake_overload", "warning", instant, created, tried, failed)
        anomalies.append(warning)
        if throttle is None and streak >= rules.warnings_to_throttle:
            throttle = _breaker_anomaly(
                "intake_throttled", "critical", instant, created, tried, failed
            )
            anomalies.append(throttle)
            kind = "intake.throttle"
            commands.append(
                CommandRecord(
                    command_id(kind, "intake", _iso(instant)), kind, instant, {"mode": "vip_only"}
                )
            )
    return anomalies, commands


def _resume(throttled_at: int, at: int) -> CommandRecord:
    kind = "intake.resume"
    return CommandRecord(
        command_id(kind, "intake", _iso(throttled_at)),
        kind,
        at,
        {
            "reason": "cleared",
            "throttle_command_id": command_id("intake.throttle", "intake", _iso(throttled_at)),
        },
    )


def _breaker_anomaly(
    type_: str, severity: str, at: int, created: int, tried: int, failed: int
) -> AnomalyRecord:
    return AnomalyRecord(
        anomaly_id(type_, "intake", _iso(at)),
        type_,
        None,
        severity,
        at,
        None,
        team_of(type_, severity, ()),
        (),
        {"orders_created": created, "attempted": tried, "failed": failed},
    )
