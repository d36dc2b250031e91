"""The contract's small tables (§3), the shipped status map and routing rules (read as data),
and the records the oracle gives. Nothing here comes from `streams/` or `schemas.stages`.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from schemas.anomalies import deterministic_id

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"

SOURCES = ("erp", "crm", "wms", "logistics")
TARGETS = ("crm", "wms", "logistics")  # in the order anomalies list them

# §3: stages on the line, in order; cancelled/returned are off it; markers move nothing.
LINE_STAGES = (
    *("placed", "confirmed", "allocated", "picking"),
    *("shipped", "in_transit", "delivered", "closed"),
)
OFF_LINE_STAGES = ("cancelled", "returned")
MARKERS = ("allocation_failed", "delivery_exception")
PHASE = {
    "placed": "open",
    "confirmed": "open",
    "allocated": "fulfilling",
    "picking": "fulfilling",
    "shipped": "shipped",
    "in_transit": "shipped",
    "delivered": "delivered",
    "closed": "delivered",
    "cancelled": "cancelled",
    "returned": "returned",
}
LINE_PHASES = ("open", "fulfilling", "shipped", "delivered")
TERMINAL = ("delivered", "cancelled", "returned")


def scope(phase: str, reached_fulfilling: bool) -> tuple[str, ...]:
    """§3 scope: the CRM always; the WMS from fulfilling on and for shipped (and for a cancel
    or return of an order that got that far); logistics from shipped on."""
    if phase == "open":
        return ("crm",)
    if phase == "fulfilling":
        return ("crm", "wms")
    if phase == "shipped":
        return ("crm", "wms", "logistics")
    if phase == "delivered":
        return ("crm", "logistics")
    return ("crm", "wms") if reached_fulfilling else ("crm",)


def reaches(shown: str, phase: str) -> bool:
    """Whether a system showing phase `shown` shows `phase` or later (§4.1: off the line,
    only itself)."""
    if shown in LINE_PHASES and phase in LINE_PHASES:
        return LINE_PHASES.index(shown) >= LINE_PHASES.index(phase)
    return shown == phase


def latest_key(stage: str, at_us: int, event_id: str) -> tuple[int, int, int, str]:
    """What makes one stage event a system's latest: off-line beats the line, a higher stage
    on the line beats a lower one whatever its time, then time, then event id."""
    if stage in OFF_LINE_STAGES:
        return (1, 0, at_us, event_id)
    return (0, LINE_STAGES.index(stage), at_us, event_id)


@cache
def status_map() -> dict[str, dict[str, str]]:
    """The shipped default labels, source -> {trimmed case-folded label: stage or marker}."""
    raw = yaml.safe_load((SCHEMAS / "status_maps.yaml").read_text(encoding="utf-8"))
    return {
        source: {str(label).strip().casefold(): target for label, target in labels.items()}
        for source, labels in raw.items()
    }


# --- time ----------------------------------------------------------------------------------

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
SECOND = 1_000_000
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE


def to_us(moment: datetime) -> int:
    """µs since the epoch of an aware datetime."""
    return (moment - EPOCH) // timedelta(microseconds=1)


def from_us(at_us: int) -> datetime:
    """The UTC datetime of µs since the epoch."""
    return EPOCH + timedelta(microseconds=at_us)


def parse_time(value: Any) -> int | None:
    """µs of an RFC 3339 text with an offset; None when it is not one."""
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return None if moment.tzinfo is None else to_us(moment)


# --- routing (schemas/routing_rules.yaml, read as data) --------------------------------------


@cache
def routing_rules() -> list[dict[str, Any]]:
    """The shipped routing rules, in order."""
    rules: list[dict[str, Any]] = yaml.safe_load(
        (SCHEMAS / "routing_rules.yaml").read_text(encoding="utf-8")
    )
    return rules


def _any_of(value: Any) -> set[Any]:
    return set(value) if isinstance(value, list) else {value}


def team_of(
    type_: str,
    severity: str,
    systems: tuple[str, ...],
    facts: dict[str, Any] | None = None,
) -> str:
    """The first matching rule's team, else `manual`; `facts` are the order's vip, priority
    and channel (unknown matches no rule that asks for them)."""
    facts = facts or {}
    for rule in routing_rules():
        match = rule.get("match") or {}
        if "type" in match and type_ not in _any_of(match["type"]):
            continue
        if "severity" in match and severity not in _any_of(match["severity"]):
            continue
        if "systems" in match and not _any_of(match["systems"]) & set(systems):
            continue
        if "vip" in match and facts.get("vip") is not match["vip"]:
            continue
        if "priority" in match and facts.get("priority") not in _any_of(match["priority"]):
            continue
        if "channel" in match:
            channel = facts.get("channel")
            wanted = {str(c).strip().casefold() for c in _any_of(match["channel"])}
            if not isinstance(channel, str) or channel.strip().casefold() not in wanted:
                continue
        return str(rule["team"])
    return "manual"


# --- what the oracle gives -----------------------------------------------------------------

SEVERITY_RANK = {"info": 0, "warning": 1, "critical": 2}


def anomaly_id(type_: str, scope_id: str, trigger: str) -> str:
    """The contract's deterministic anomaly id (type, order or scope, trigger)."""
    return deterministic_id("anomaly", type_, scope_id, trigger)


def command_id(kind: str, *parts: str) -> str:
    """The deterministic id of a command."""
    return deterministic_id("command", kind, *parts)


@dataclass
class AnomalyRecord:
    """An anomaly's final state at the horizon."""

    anomaly_id: str
    type: str
    order_id: str | None
    severity: str
    opened_us: int
    resolved_us: int | None
    team: str
    systems: tuple[str, ...]
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def is_open(self) -> bool:
        """Still open at the horizon."""
        return self.resolved_us is None


@dataclass(frozen=True)
class CommandRecord:
    """A command the contract asks for."""

    command_id: str
    kind: str
    issued_us: int
    payload: dict[str, Any]


def normalized(text: str) -> str:
    """NFKC, case-folded, whitespace removed: how customers and SKUs are compared."""
    return "".join(unicodedata.normalize("NFKC", text).casefold().split())
