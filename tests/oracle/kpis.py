"""The three KPIs (§4) at a horizon, from the accepted events known by then.

* **Refresh latency.** For each order and phase P the ERP has shown, t0 = the ERP's earliest
  event at P; for each target S in scope for P (the scope of §3, with "got that far" read
  over the ERP's whole history), t1 = S's earliest event at P or later on the line (off the
  line: at P itself). Latency max(0, t1 - t0), counted as skew when negative. A window of
  length W at horizon H holds the observations with H - W < t1 <= H. Median: the middle
  value, or the mean of the two middle ones; p95: nearest rank, the ceil(0.95 n)-th value.
* **Consistency ratio.** The population: orders whose ERP has shown a stage, except those
  whose ERP phase is terminal and was entered (its first event at that phase) 24 h or more
  before H. Consistent: every in-scope system's latest phase equals the ERP's.
* **Auto-routing rate.** Of the anomalies opened in (H - 24 h, H], the share not routed to
  `manual`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from tests.oracle.contract import (
    HOUR,
    PHASE,
    TARGETS,
    TERMINAL,
    AnomalyRecord,
    reaches,
    scope,
)
from tests.oracle.ghosts import snapshot
from tests.oracle.ingest import Accepted

WINDOWS: Mapping[str, int] = {"1h": HOUR, "24h": 24 * HOUR}


@dataclass(frozen=True)
class LatencyFigures:
    """One target over one window, seconds."""

    count: int
    median: float | None
    p95: float | None
    skew: int


@dataclass
class Kpis:
    """The KPIs at one horizon."""

    horizon_us: int
    latency: dict[str, dict[str, LatencyFigures]] = field(default_factory=dict)  # target, window
    consistent: int = 0
    population: int = 0
    auto_routed: int = 0
    routed: int = 0

    @property
    def consistency_ratio(self) -> float | None:
        """consistent / population."""
        return self.consistent / self.population if self.population else None

    @property
    def auto_routing_rate(self) -> float | None:
        """auto-routed / opened in the window."""
        return self.auto_routed / self.routed if self.routed else None


def median(values: list[float]) -> float | None:
    """The median; the mean of the middle two for an even count."""
    if not values:
        return None
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def p95(values: list[float]) -> float | None:
    """Nearest-rank 95th percentile."""
    if not values:
        return None
    return sorted(values)[math.ceil(0.95 * len(values)) - 1]


def observations(events: list[Accepted]) -> list[tuple[str, int, int]]:
    """(target, t0, t1) of every refresh-latency observation of one order's events."""
    erp = [e for e in events if e.source == "erp" and e.stage is not None]
    if not erp:
        return []
    entered: dict[str, int] = {}
    for e in erp:
        phase = PHASE[e.stage or ""]
        entered[phase] = min(entered.get(phase, e.at), e.at)
    reached = any(p in entered for p in ("fulfilling", "shipped", "delivered"))
    out: list[tuple[str, int, int]] = []
    for phase, t0 in entered.items():
        for target in scope(phase, reached):
            shown = [
                e.at
                for e in events
                if e.source == target and e.stage is not None and reaches(PHASE[e.stage], phase)
            ]
            if shown:
                out.append((target, t0, min(shown)))
    return out


def kpis(
    orders: Mapping[str, list[Accepted]], anomalies: Iterable[AnomalyRecord], horizon: int
) -> Kpis:
    """The three KPIs at `horizon`."""
    out = Kpis(horizon)
    observed: list[tuple[str, int, int]] = []
    for events in orders.values():
        known = [e for e in events if e.known <= horizon]
        observed += observations(known)
        state = snapshot(known, horizon)
        erp = state.views.get("erp")
        if erp is None or erp.phase is None:
            continue
        if erp.phase in TERMINAL and erp.firsts[erp.phase] + 24 * HOUR <= horizon:
            continue
        out.population += 1
        reached = any(p in erp.firsts for p in ("fulfilling", "shipped", "delivered"))
        in_scope = scope(erp.phase, reached)
        out.consistent += all(
            s in state.views and state.views[s].phase == erp.phase for s in in_scope
        )
    for target in TARGETS:
        out.latency[target] = {}
        for name, span in WINDOWS.items():
            inside = [
                (t0, t1) for s, t0, t1 in observed if s == target and horizon - span < t1 <= horizon
            ]
            values = [max(0, t1 - t0) / 1e6 for t0, t1 in inside]
            skew = sum(1 for t0, t1 in inside if t1 < t0)
            out.latency[target][name] = LatencyFigures(
                len(values), median(values), p95(values), skew
            )
    for record in anomalies:
        if horizon - 24 * HOUR < record.opened_us <= horizon:
            out.routed += 1
            out.auto_routed += record.team != "manual"
    return out
