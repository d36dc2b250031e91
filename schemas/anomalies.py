"""Anomalies, commands and decisions: what Concord publishes and what people tell it (§5–§7)."""

from __future__ import annotations

import hashlib
from enum import StrEnum
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field


class AnomalyType(StrEnum):
    """Kinds of anomaly (contract §5)."""

    DUPLICATE_ORDER = "duplicate_order"
    MISSING_IN_SYSTEM = "missing_in_system"
    ORPHAN_ORDER = "orphan_order"
    STATUS_CONFLICT = "status_conflict"
    STALLED_TRACKING = "stalled_tracking"
    INTAKE_OVERLOAD = "intake_overload"
    INTAKE_THROTTLED = "intake_throttled"
    SOURCE_SILENT = "source_silent"


GHOST_TYPES: frozenset[AnomalyType] = frozenset(
    {
        AnomalyType.MISSING_IN_SYSTEM,
        AnomalyType.ORPHAN_ORDER,
        AnomalyType.STATUS_CONFLICT,
        AnomalyType.STALLED_TRACKING,
    }
)


class AnomalyState(StrEnum):
    """Lifecycle state of an anomaly."""

    OPEN = "open"
    RESOLVED = "resolved"


class Severity(StrEnum):
    """How urgent an anomaly is."""

    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


class Team(StrEnum):
    """Teams anomalies are routed to; `manual` means no rule matched."""

    WAREHOUSE = "warehouse"
    LOGISTICS = "logistics"
    CUSTOMER_SERVICE = "customer_service"
    SALES = "sales"
    FINANCE = "finance"
    INTEGRATION = "integration"
    OPERATIONS = "operations"
    MANUAL = "manual"


class Route(BaseModel):
    """Who owns an anomaly and which rule decided it."""

    team: Team
    rule: str


class Evidence(BaseModel):
    """One event that proves an anomaly."""

    model_config = ConfigDict(extra="allow")

    source: str
    event_id: str
    status: str
    occurred_at: AwareDatetime


class Anomaly(BaseModel):
    """An anomaly lifecycle event on concord.anomalies."""

    model_config = ConfigDict(extra="allow")

    anomaly_id: str
    type: AnomalyType
    state: AnomalyState
    severity: Severity
    order_id: str | None = None
    systems: list[str] = Field(default_factory=list)
    opened_at: AwareDatetime
    detected_at: AwareDatetime
    resolved_at: AwareDatetime | None = None
    route: Route
    evidence: list[Evidence] = Field(default_factory=list)
    summary: str
    decisions: list[dict[str, Any]] = Field(default_factory=list)


class CommandKind(StrEnum):
    """Actions Concord asks downstream actors to take (contract §7)."""

    INTAKE_THROTTLE = "intake.throttle"
    INTAKE_RESUME = "intake.resume"
    CARRIER_EXCEPTION_TICKET = "carrier.exception_ticket"
    CUSTOMER_NOTIFY = "customer.notify"
    ORDER_MERGE = "order.merge"


class Command(BaseModel):
    """A command on concord.commands."""

    command_id: str
    kind: CommandKind
    issued_at: AwareDatetime
    payload: dict[str, Any]


class DecisionKind(StrEnum):
    """Decisions people or systems send on concord.decisions (contract §6)."""

    DUPLICATE_MERGE = "duplicate.merge"
    DUPLICATE_KEEP = "duplicate.keep"
    ANOMALY_ACK = "anomaly.ack"
    ANOMALY_RESOLVE = "anomaly.resolve"
    BREAKER_ACK = "breaker.ack"
    BREAKER_RELEASE = "breaker.release"


class Decision(BaseModel):
    """A decision about an anomaly, an order or the breaker."""

    model_config = ConfigDict(extra="allow")

    decision_id: str = Field(min_length=1, max_length=128)
    kind: DecisionKind
    target: str = Field(min_length=1, max_length=256)
    by: str = Field(min_length=1, max_length=128)
    at: AwareDatetime
    note: str | None = None


def deterministic_id(prefix: str, *parts: str) -> str:
    """A stable id from its parts, so a replay or a restart never mints a second one."""
    digest = hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()[:24]
    return f"{prefix}-{digest}"
