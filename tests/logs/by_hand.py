"""Logs written by hand for a test, with a few helpers to keep them short."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from tests.logs.knobs import us

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
DETAILS = {
    "customer_id": "C001",
    "channel": "website",
    "lines": [{"sku": "A1234567-BK", "qty": 1, "unit_price": "10.00"}],
    "amount": "10.00",
    "currency": "CNY",
}
TRACKING = {"carrier": "SF", "tracking_no": "SF0001"}


def at(minutes: float = 0, hours: float = 0) -> int:
    """µs since the epoch of T0 + the offset."""
    return us(T0 + timedelta(minutes=minutes, hours=hours))


class HandLog:
    """A log written by hand for a test: events in publication order, ids minted per source;
    an ERP reference's first event gets details (its own customer) unless given."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def add(self, source: str, ref: str, status: str, when: int, **extra: Any) -> dict[str, Any]:
        event = {
            "event_id": f"{source}-{len(self.events)}",
            "source": source,
            "order_ref": ref,
            "status": status,
            "occurred_at": (_EPOCH + timedelta(microseconds=when)).isoformat(),
            **extra,
        }
        self.events.append(event)
        return event

    def erp(self, ref: str, status: str, when: int, **extra: Any) -> dict[str, Any]:
        if not any(e["source"] == "erp" and e["order_ref"] == ref for e in self.events):
            extra.setdefault("order", dict(DETAILS, customer_id=f"C-{ref}"))
        return self.add("erp", ref, status, when, **extra)

    def crm(self, order: str, status: str, when: int) -> dict[str, Any]:
        return self.add("crm", f"CS-{order}", status, when, erp_order_id=order)
