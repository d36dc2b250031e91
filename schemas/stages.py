"""Canonical stages, failure markers and phases (contract §3)."""

from __future__ import annotations

from enum import StrEnum


class Source(StrEnum):
    """An upstream system that publishes change events."""

    ERP = "erp"
    CRM = "crm"
    WMS = "wms"
    LOGISTICS = "logistics"


class Stage(StrEnum):
    """Where an order is in its life, as one system sees it."""

    PLACED = "placed"
    CONFIRMED = "confirmed"
    ALLOCATED = "allocated"
    PICKING = "picking"
    SHIPPED = "shipped"
    IN_TRANSIT = "in_transit"
    DELIVERED = "delivered"
    CLOSED = "closed"
    CANCELLED = "cancelled"
    RETURNED = "returned"


class Marker(StrEnum):
    """A failure reported by a system: recorded, but it does not move the order."""

    ALLOCATION_FAILED = "allocation_failed"
    DELIVERY_EXCEPTION = "delivery_exception"


class Phase(StrEnum):
    """The coarse state systems are compared on."""

    OPEN = "open"
    FULFILLING = "fulfilling"
    SHIPPED = "shipped"
    DELIVERED = "delivered"
    CANCELLED = "cancelled"
    RETURNED = "returned"


PHASE_OF: dict[Stage, Phase] = {
    Stage.PLACED: Phase.OPEN,
    Stage.CONFIRMED: Phase.OPEN,
    Stage.ALLOCATED: Phase.FULFILLING,
    Stage.PICKING: Phase.FULFILLING,
    Stage.SHIPPED: Phase.SHIPPED,
    Stage.IN_TRANSIT: Phase.SHIPPED,
    Stage.DELIVERED: Phase.DELIVERED,
    Stage.CLOSED: Phase.DELIVERED,
    Stage.CANCELLED: Phase.CANCELLED,
    Stage.RETURNED: Phase.RETURNED,
}

# Position on the main line; cancelled/returned are off the line (None).
STAGE_RANK: dict[Stage, int] = {
    stage: rank
    for rank, stage in enumerate(
        [
            Stage.PLACED,
            Stage.CONFIRMED,
            Stage.ALLOCATED,
            Stage.PICKING,
            Stage.SHIPPED,
            Stage.IN_TRANSIT,
            Stage.DELIVERED,
            Stage.CLOSED,
        ]
    )
}

PHASE_RANK: dict[Phase, int] = {
    Phase.OPEN: 0,
    Phase.FULFILLING: 1,
    Phase.SHIPPED: 2,
    Phase.DELIVERED: 3,
}

TERMINAL_PHASES: frozenset[Phase] = frozenset({Phase.DELIVERED, Phase.CANCELLED, Phase.RETURNED})
