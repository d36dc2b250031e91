"""The §4 KPI definitions computed the slow, obvious way, to check the pipeline against.

It reads normalised events (ingest's output: `order_id`, `source`, `stage`, `phase`,
`occurred_at`, `event_id`) and shares no code with streams.rules except the contract's own
stage table.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

from schemas.stages import STAGE_RANK, Stage

LINE = ["open", "fulfilling", "shipped", "delivered"]
OFF_LINE = {"cancelled", "returned"}
TERMINAL = {"delivered", "cancelled", "returned"}
SCOPE = {
    "open": ["crm"],
    "fulfilling": ["crm", "wms"],
    "shipped": ["crm", "wms", "logistics"],
    "delivered": ["crm", "logistics"],
    "cancelled": ["crm"],
    "returned": ["crm"],
}


def _at(event: Mapping[str, Any]) -> datetime:
    return datetime.fromisoformat(event["occurred_at"])


def _scope(phase: str, reached_fulfilling: bool) -> list[str]:
    if phase in OFF_LINE and reached_fulfilling:
        return ["crm", "wms"]
    return SCOPE[phase]


def _latest_key(event: Mapping[str, Any]) -> tuple[Any, ...]:
    # Off-line stages beat the line; on the line a higher stage beats a lower one whatever
    # its time; then the later time, then the larger event id.
    if event["phase"] in OFF_LINE:
        return (1, 0, _at(event), event["event_id"])
    return (0, STAGE_RANK[Stage(event["stage"])], _at(event), event["event_id"])


def _reaches(target_phase: str, phase: str) -> bool:
    if phase in OFF_LINE or target_phase in OFF_LINE:
        return phase == target_phase
    return LINE.index(target_phase) >= LINE.index(phase)


class Oracle:
    """Per-order event lists and the KPIs over them."""

    def __init__(self, events: Iterable[Mapping[str, Any]]):
        self.orders: dict[str, dict[str, list[Mapping[str, Any]]]] = defaultdict(
            lambda: defaultdict(list)
        )
        for event in events:
            if event.get("stage") is None:
                continue  # a failure marker: no phase
            self.orders[event["order_id"]][event["source"]].append(event)

    def latencies(self, target: str, wm: datetime, window: timedelta) -> list[float]:
        """Every latency observation of `target` whose t1 lies in (wm - window, wm]."""
        out = []
        for systems in self.orders.values():
            erp = systems.get("erp", [])
            reached = any(e["phase"] in ("fulfilling", "shipped", "delivered") for e in erp)
            for phase in {e["phase"] for e in erp}:
                if target not in _scope(phase, reached):
                    continue
                t0 = min((_at(e), e["event_id"]) for e in erp if e["phase"] == phase)[0]
                shown = [
                    (_at(e), e["event_id"])
                    for e in systems.get(target, [])
                    if _reaches(e["phase"], phase)
                ]
                if not shown:
                    continue
                t1 = min(shown)[0]
                if wm - window < t1 <= wm:
                    out.append(max(0.0, (t1 - t0).total_seconds()))
        return out

    def consistency(self, wm: datetime) -> tuple[int, int]:
        """(consistent, population) at watermark `wm`."""
        population = consistent = 0
        for systems in self.orders.values():
            erp = systems.get("erp")
            if not erp:
                continue
            phase = max(erp, key=_latest_key)["phase"]
            if phase in TERMINAL:
                entered = min(_at(e) for e in erp if e["phase"] == phase)
                if entered + timedelta(hours=24) <= wm:
                    continue
            population += 1
            reached = any(e["phase"] in ("fulfilling", "shipped", "delivered") for e in erp)
            agree = all(
                systems.get(s) and max(systems[s], key=_latest_key)["phase"] == phase
                for s in _scope(phase, reached)
            )
            consistent += bool(agree)
        return consistent, population


def median(values: list[float]) -> float | None:
    """The median (mean of the middle two for an even count)."""
    return statistics.median(values) if values else None


def p95(values: list[float]) -> float | None:
    """Nearest-rank p95."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[math.ceil(0.95 * len(ordered)) - 1]
