"""What the fuzz sends: records with the class they belong to and the fate each must meet,
the valid change events (contract §2) the classes start from, and the corpus's register of
classes with the helpers they share."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

import orjson

SOURCES = ("erp", "crm", "wms", "logistics")

# Fates a record can be held to: an outcome of ingest (concord_events_total{outcome}), a
# dead-letter reason, DEAD (dead-lettered, whatever the reason) or None (only accounted for).
ACCEPTED, DUPLICATE, HELD = "accepted", "duplicate", "held"
DEAD = "dead"
TAKEN = (ACCEPTED, DUPLICATE, HELD)  # the fates of a record that is not dead-lettered at once

# The labels of the default status maps the generators use (any case, any padding matches).
LABELS = {
    "erp": ("CREATED", "已审核", "ALLOCATED", "库存不足", "SHIPPED", "DELIVERED", "CANCELLED"),
    "crm": ("NEW", "CONFIRMED", "处理中", "SHIPPED", "CLOSED", "已取消"),
    "wms": ("RECEIVED", "已分配", "PICKING", "SHORT_PICK", "已出库", "CANCELLED"),
    "logistics": ("PICKED_UP", "IN_TRANSIT", "派送中", "SIGNED", "EXCEPTION", "退回"),
}


@dataclass(frozen=True, slots=True)
class FuzzRecord:
    """One record to publish on `source`'s topic, and what must become of it."""

    kind: str  # its class, e.g. "deep/attrs-5000"
    source: str  # the topic it is published on
    key: bytes | None
    value: bytes | None
    fate: str | None  # see the fates above

    @property
    def size(self) -> int:
        """Its bytes, key and value."""
        return len(self.key or b"") + len(self.value or b"")


class Events:
    """Valid change events of fresh source references, at plausible times before `now`.

    Every reference is new (its name carries `tag` and a counter), so an event's fate does not
    depend on what any other class sent: an ERP event with its order's details, or another
    system's with an `erp_order_id`, is accepted; without them it is held.
    """

    def __init__(self, now: datetime, tag: str, rng: random.Random):
        self.now = now
        self.tag = tag
        self.rng = rng
        self._refs = 0

    def ref(self, source: str) -> str:
        """A source order reference nobody used before."""
        self._refs += 1
        return f"{self.tag}-{source[:3].upper()}-{self._refs}"

    def at(self, *, within: timedelta = timedelta(hours=6)) -> datetime:
        """A time up to `within` before now."""
        return self.now - timedelta(seconds=self.rng.uniform(0, within.total_seconds()))

    def event(
        self,
        source: str,
        ref: str | None = None,
        *,
        n: int = 1,
        details: bool | None = None,
        linked: bool = True,
        at: datetime | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        """The `n`th event of reference `ref` (a new one unless given); an ERP event carries
        its order's details unless `details` is False, another system's event names its ERP
        order when `linked`."""
        ref = ref or self.ref(source)
        event: dict[str, Any] = {
            "event_id": f"{ref}-{n}",
            "source": source,
            "order_ref": ref,
            "status": self.rng.choice(LABELS[source]),
            "occurred_at": (at or self.at()).isoformat(),
        }
        if source == "erp":
            if details is not False:
                event["order"] = self.order()
        elif linked:
            event["erp_order_id"] = f"{self.tag}-SO-{ref}"
        event.update(extra)
        return event

    def order(self, line_count: int = 1, **over: Any) -> dict[str, Any]:
        """An order's details with `line_count` lines (`over` replaces fields)."""
        rng = self.rng
        return {
            "customer_id": f"W{rng.randrange(10_000):05d}",
            "channel": rng.choice(["website", "wechat", "douyin", "pos", "excel"]),
            "lines": [
                {"sku": f"SKU-{rng.randrange(500):04d}", "qty": 1 + i % 3, "unit_price": "9.90"}
                for i in range(line_count)
            ],
            "amount": "9.90",
            "currency": "CNY",
            "customer_phone": f"+86 139{rng.randrange(10**8):08d}",
            **over,
        }

    def record(self, kind: str, event: dict[str, Any], fate: str | None = None) -> FuzzRecord:
        """`event` as a producer sends it (compact JSON, keyed by its order_ref); its fate
        by default as for a fresh reference."""
        if fate is None:
            fate = fresh_fate(event)
        return FuzzRecord(
            kind, event["source"], str(event["order_ref"]).encode(), orjson.dumps(event), fate
        )


def fresh_fate(event: dict[str, Any]) -> str:
    """The fate of a valid event that is the first of its reference."""
    if event["source"] == "erp":
        return ACCEPTED if event.get("order") is not None else HELD
    return ACCEPTED if event.get("erp_order_id") is not None else HELD


# --- the corpus's classes -----------------------------------------------------------------

Class = Callable[[Events], list[FuzzRecord]]
CLASSES: dict[str, Class] = {}
ONCE: set[str] = set()  # classes of megabytes, or of hundreds of records: once a run


def hostile_class(name: str, *, once: bool = False) -> Callable[[Class], Class]:
    """Register a class of the corpus (`once`: in the first round only)."""

    def register(make: Class) -> Class:
        CLASSES[name] = make
        if once:
            ONCE.add(name)
        return make

    return register


def raw(kind: str, event: dict[str, Any], value: bytes, fate: str | None) -> FuzzRecord:
    """`value` in place of `event`'s own bytes, on its topic and key."""
    return FuzzRecord(kind, event["source"], str(event["order_ref"]).encode(), value, fate)


def splice(event: dict[str, Any], field: str, text: bytes) -> bytes:
    """`event` with `field`'s value written as `text`, as is (not necessarily JSON)."""
    placeholder = orjson.dumps({**event, field: "\x00splice\x00"})
    return placeholder.replace(b'"\\u0000splice\\u0000"', text)


def nested(levels: int, *, opening: bytes = b'{"a":', closing: bytes = b"}") -> bytes:
    """A JSON value `levels` objects (or arrays) deep."""
    return opening * levels + b"1" + closing * levels


FRESH = "fresh"  # the fate of a valid first event of its reference (`fresh_fate`)


def one(
    ev: Events,
    kind: str,
    fate: str | None,
    *,
    source: str | None = None,
    drop: tuple[str, ...] = (),
    value: Callable[[dict[str, Any]], bytes | None] | None = None,
    key: bytes | Literal["ref"] | None = "ref",
    **fields: Any,
) -> FuzzRecord:
    """One event of a fresh reference with `fields` set and `drop` removed, written by `value`
    (compact JSON by default), on its source's topic, keyed by its reference unless `key` is
    given."""
    topic = source or ev.rng.choice(SOURCES)
    event = ev.event(topic)
    ref = event["order_ref"].encode()
    event.update(fields)
    for name in drop:
        event.pop(name, None)
    written = orjson.dumps(event) if value is None else value(event)
    if fate == FRESH:
        fate = fresh_fate(event)
    return FuzzRecord(kind, topic, ref if key == "ref" else key, written, fate)
