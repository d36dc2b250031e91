"""The terminal view of a running worker: the three KPIs against their bars, the breaker,
open ghosts by type and team, duplicates, events/s and dead letters.

Read from the worker's own `/kpis` and `/metrics`, so it shows any worker, local or not
(`concord status --url …`), and the demo shows it live.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import httpx
from rich.console import Group
from rich.table import Table

from concord.worker_api import WorkerAPI
from sinks.metrics import metric_samples

# The seeds' bars (contract §4): beyond these, customers and teams feel it.
LATENCY_BAR_SECONDS = 15 * 60
CONSISTENCY_BAR = 0.92
AUTO_ROUTING_BAR = 0.65
BREAKER_STAGES = {0: "normal", 1: "warn", 2: "throttle (VIP only)", 3: "fallback"}


@dataclass(frozen=True)
class Snapshot:
    """One reading of a worker's /kpis and /metrics."""

    kpis: dict[str, Any]
    metrics: str
    at: float

    def total(self, name: str) -> float:
        """Sum of a labelled counter over all its series."""
        return sum(metric_samples(self.metrics, name).values())

    def by(self, name: str, label: str) -> dict[str, float]:
        """One labelled metric as label value -> value (summed over other labels)."""
        out: dict[str, float] = {}
        for labels, value in metric_samples(self.metrics, name).items():
            key = dict(labels).get(label, "")
            out[key] = out.get(key, 0.0) + value
        return out

    def gauge(self, name: str) -> float | None:
        """An unlabelled gauge's value, None when the page does not have it."""
        for line in self.metrics.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        return None


def fetch(api: WorkerAPI, timeout: float = 3.0) -> Snapshot | None:
    """Read the worker's /kpis and /metrics; None when it does not answer (or refuses)."""
    try:
        answer = api.get("/kpis", timeout=timeout)
        answer.raise_for_status()  # e.g. 401: a missing or wrong token
        kpis = answer.json()
        text = api.get("/metrics", timeout=timeout).text
    except (httpx.HTTPError, ValueError):
        return None
    return Snapshot(kpis, text, time.monotonic())


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _ratio(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


def _verdict(ok: bool | None) -> str:
    return "" if ok is None else ("[green]ok[/green]" if ok else "[red]below bar[/red]")


def render(snap: Snapshot, previous: Snapshot | None = None) -> Group:
    """The whole view for one snapshot (events/s from the previous one)."""
    kpis = snap.kpis
    latency = kpis.get("refresh_latency_seconds", {})
    crm = latency.get("crm", {}).get("24h", {})
    consistency = kpis.get("consistency", {})
    routing = kpis.get("auto_routing", {})

    table = Table(title=f"Concord — event time {kpis.get('watermark') or '—'}", expand=False)
    table.add_column("KPI")
    table.add_column("now", justify="right")
    table.add_column("bar", justify="right")
    table.add_column("")
    median = crm.get("median")
    table.add_row(
        "refresh latency, CRM median (24 h)",
        _duration(median),
        f"≤ {_duration(LATENCY_BAR_SECONDS)}",
        _verdict(None if median is None else median <= LATENCY_BAR_SECONDS),
    )
    for target in ("crm", "wms", "logistics"):
        figures = latency.get(target, {}).get("24h", {})
        table.add_row(
            f"  {target}: median / p95 (n)",
            f"{_duration(figures.get('median'))} / {_duration(figures.get('p95'))}"
            f" ({figures.get('count', 0)})",
            "",
            "",
        )
    ratio = consistency.get("ratio")
    table.add_row(
        "consistency ratio",
        _ratio(ratio),
        f"≥ {_ratio(CONSISTENCY_BAR)}",
        _verdict(None if ratio is None else ratio >= CONSISTENCY_BAR),
    )
    disagreeing = consistency.get("disagreeing", {})
    if disagreeing:
        worst = ", ".join(f"{s} {n}" for s, n in sorted(disagreeing.items(), key=lambda x: -x[1]))
        table.add_row("  orders each system disagrees on", worst, "", "")
    auto = routing.get("ratio")
    table.add_row(
        "auto-routing rate",
        f"{_ratio(auto)} of {routing.get('opened', 0)}",
        f"≥ {_ratio(AUTO_ROUTING_BAR)}",
        _verdict(None if auto is None else auto >= AUTO_ROUTING_BAR),
    )
    stage = int(snap.gauge("concord_breaker_stage") or 0)
    commands = snap.by("concord_commands_total", "kind")
    table.add_row(
        "intake breaker",
        BREAKER_STAGES.get(stage, str(stage)),
        "",
        ", ".join(f"{k} ×{int(n)}" for k, n in sorted(commands.items()) if n),
    )
    events = snap.total("concord_events_total")
    rate = None
    if previous is not None and snap.at > previous.at:
        rate = (events - previous.total("concord_events_total")) / (snap.at - previous.at)
    dead = snap.by("concord_deadletter_total", "reason")
    table.add_row(
        "events (per s now)",
        f"{int(events)}" + ("" if rate is None else f" ({rate:,.0f}/s)"),
        "",
        f"dead letters {int(sum(dead.values()))}",
    )
    duplicates = snap.by("concord_duplicates_total", "channel")
    table.add_row(
        "duplicate pairs",
        str(int(sum(duplicates.values()))),
        "",
        ", ".join(f"{c} {int(n)}" for c, n in sorted(duplicates.items()) if n),
    )

    ghosts = Table(title="open ghost orders and anomalies by owner")
    ghosts.add_column("type")
    ghosts.add_column("orders", justify="right")
    ghosts.add_column("by team")
    open_by: dict[str, dict[str, int]] = {}
    for labels, n in metric_samples(snap.metrics, "concord_open_anomalies").items():
        fields = dict(labels)
        if n:
            open_by.setdefault(fields["type"], {})[fields["team"]] = int(n)
    ghost_orders = kpis.get("ghost_orders", {})
    for type_ in sorted(set(ghost_orders) | set(open_by)):
        teams = open_by.get(type_, {})
        ghosts.add_row(
            type_,
            str(ghost_orders.get(type_, sum(teams.values()))),
            ", ".join(f"{t} {n}" for t, n in sorted(teams.items())),
        )
    silent = kpis.get("silent_sources") or []
    parts: list[Any] = [table, ghosts]
    if silent:
        parts.append(f"[red]silent sources: {', '.join(silent)}[/red]")
    return Group(*parts)
