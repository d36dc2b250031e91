"""An independent reference for Concord's outputs: what contract §4–§7 say should come out
of an input log, computed by brute force in event-time order (issue 16, item 2).

`expected(events, horizon_us)` reads raw change events as published (tests/logs) and
gives every anomaly with its final state at the horizon, every command, the dead letters
and the KPIs. It shares no code with `streams/` (it reads the shipped status map and
routing rules as data, and uses the contract's id function).

Everything is evaluated continuously in event time up to the horizon: a rule's deadline at
T fires iff T <= horizon, on the state as of T. Where the contract leaves a choice, the one
made here is in the docstring of the module that makes it (ingest, ghosts, intake, kpis);
where the pipeline's rules read the contract otherwise, tests/unit/test_oracle_vs_rules.py
and the README say which.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from tests.oracle.contract import AnomalyRecord, CommandRecord
from tests.oracle.ghosts import Thresholds, order_ghosts, unlinked_orphan
from tests.oracle.ingest import Ingested, ingest
from tests.oracle.intake import BreakerRules, Figures, breaker, duplicates, intake_figures
from tests.oracle.kpis import Kpis, kpis

__all__ = ["AnomalyRecord", "CommandRecord", "Expected", "OracleSettings", "expected"]


def _us(span: timedelta) -> int:
    return span // timedelta(microseconds=1)


@dataclass(frozen=True)
class OracleSettings:
    """The contract's defaults (§5, §7); override to match a pipeline's settings."""

    crm_missing_after: timedelta = timedelta(minutes=15)
    wms_missing_after: timedelta = timedelta(hours=2)
    logistics_missing_after: timedelta = timedelta(hours=24)
    orphan_after: timedelta = timedelta(minutes=30)
    conflict_after: timedelta = timedelta(minutes=30)
    stall_after: timedelta = timedelta(hours=24)
    stall_critical_after: timedelta = timedelta(hours=72)
    duplicate_window: timedelta = timedelta(minutes=15)
    breaker: BreakerRules = field(default_factory=BreakerRules)

    def thresholds(self) -> Thresholds:
        """The ghost delays in µs."""
        return Thresholds(
            missing={
                "crm": _us(self.crm_missing_after),
                "wms": _us(self.wms_missing_after),
                "logistics": _us(self.logistics_missing_after),
            },
            orphan=_us(self.orphan_after),
            conflict=_us(self.conflict_after),
            stall=_us(self.stall_after),
            stall_critical=_us(self.stall_critical_after),
        )


@dataclass
class Expected:
    """What should come out of a log, as of the horizon."""

    horizon_us: int
    anomalies: dict[str, AnomalyRecord]
    commands: dict[str, CommandRecord]
    dead_letters: Counter[str]
    resends: int
    kpis: Kpis
    ingested: Ingested
    figures: list[Figures]  # the breaker's stage-1 figures at each evaluation instant

    def of_type(self, type_: str) -> list[AnomalyRecord]:
        """The anomalies of one type."""
        return [a for a in self.anomalies.values() if a.type == type_]


def expected(
    events: Iterable[Mapping[str, Any]],
    horizon_us: int,
    settings: OracleSettings | None = None,
    silent: Mapping[str, Sequence[tuple[int, int]]] | None = None,
) -> Expected:
    """Every output the contract asks of `events` (in publication order), up to `horizon_us`.

    `silent` gives, per source, the event-time intervals [a, b) in which it is judged silent
    (see tests/oracle/ghosts.py); by default no source is.
    """
    settings = settings or OracleSettings()
    th = settings.thresholds()
    log = ingest(events)
    anomalies: list[AnomalyRecord] = []
    commands: list[CommandRecord] = []
    for order_id, order_events in log.orders.items():
        book = order_ghosts(order_id, order_events, horizon_us, th, silent or {})
        anomalies += book.anomalies.values()
        commands += book.commands
    for unlinked in log.unlinked:
        orphan = unlinked_orphan(unlinked, horizon_us, th)
        if orphan is not None:
            anomalies.append(orphan)
    anomalies += duplicates(log.orders, horizon_us, _us(settings.duplicate_window))
    figures = intake_figures(log.orders, horizon_us, settings.breaker)
    overloads, intake_commands = breaker(figures, settings.breaker)
    anomalies += overloads
    commands += intake_commands
    by_id = {a.anomaly_id: a for a in anomalies}
    if len(by_id) != len(anomalies):
        raise AssertionError("two anomalies share an id: the log reuses an id across kinds")
    return Expected(
        horizon_us=horizon_us,
        anomalies=by_id,
        commands={c.command_id: c for c in commands},
        dead_letters=log.dead_letters,
        resends=log.resends,
        kpis=kpis(log.orders, anomalies, horizon_us),
        ingested=log,
        figures=figures,
    )
