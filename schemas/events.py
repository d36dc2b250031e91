"""Change events as upstream systems publish them (contract §2)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from schemas.stages import Marker, Phase, Source, Stage


class OrderLine(BaseModel):
    """One line of an order."""

    model_config = ConfigDict(extra="allow")

    sku: str = Field(min_length=1, max_length=128)
    qty: float = Field(gt=0)
    unit_price: Decimal = Field(ge=0)


class OrderDetails(BaseModel):
    """What the ERP knows about an order when it is created."""

    model_config = ConfigDict(extra="allow")

    customer_id: str = Field(min_length=1, max_length=128)
    channel: str = Field(min_length=1, max_length=64)
    lines: list[OrderLine] = Field(min_length=1)
    amount: Decimal = Field(ge=0)
    currency: str = Field(pattern=r"^[A-Z]{3}$")
    customer_phone: str | None = None
    ship_to: str | None = None
    vip: bool = False
    priority: Literal["rush", "normal"] = "normal"
    placed_at: AwareDatetime | None = None


class Tracking(BaseModel):
    """Carrier tracking details carried by logistics events."""

    model_config = ConfigDict(extra="allow")

    carrier: str | None = None
    tracking_no: str | None = None
    location: str | None = None
    note: str | None = None


class ChangeEvent(BaseModel):
    """A change to one order in one source system."""

    model_config = ConfigDict(extra="allow", frozen=True)

    event_id: str = Field(min_length=1, max_length=128)
    source: Source
    order_ref: str = Field(min_length=1, max_length=128)
    erp_order_id: str | None = Field(default=None, min_length=1, max_length=128)
    status: str = Field(min_length=1, max_length=128)
    occurred_at: AwareDatetime
    order: OrderDetails | None = None
    tracking: Tracking | None = None
    reason: str | None = None
    attrs: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _erp_is_its_own_master(self) -> ChangeEvent:
        if self.source is Source.ERP and self.erp_order_id is None:
            object.__setattr__(self, "erp_order_id", self.order_ref)
        return self


class NormalizedEvent(ChangeEvent):
    """A validated change event, linked to its master order and mapped to a stage.

    Internal: the ingest stage publishes these keyed by `order_id` for the per-order stage.
    """

    order_id: str = Field(min_length=1, max_length=128)
    stage: Stage | None = None
    marker: Marker | None = None
    phase: Phase | None = None
    received_at: AwareDatetime
