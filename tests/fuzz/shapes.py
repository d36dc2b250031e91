"""Corpus classes of shape: sequences of one reference, sizes, depths and times.

Limits at their defaults: 1 MiB a record, JSON 32 deep, strings of 4 KiB as written, 1,000
order lines, event times from 400 days before the wall clock to 5 minutes after it; one
reference holds at most 256 events or 256 KiB waiting.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import orjson

from tests.fuzz.records import (
    ACCEPTED,
    DUPLICATE,
    FRESH,
    HELD,
    LABELS,
    SOURCES,
    Events,
    FuzzRecord,
    hostile_class,
    nested,
    one,
    raw,
    splice,
)

DEPTH = 32  # CONCORD_MAX_JSON_DEPTH
STRING = 4096  # CONCORD_MAX_STRING_BYTES
LINES = 1000  # CONCORD_MAX_ORDER_LINES
HELD_MAX, HELD_BYTES = 256, 256 * 1024  # what one reference may hold


# --- sequences of one reference -----------------------------------------------------------


@hostile_class("valid/each-source")
def _valid(ev: Events) -> list[FuzzRecord]:
    # The order's ERP creation, then each system's view of it, then the ERP moving on.
    erp = ev.event("erp")
    so = erp["order_ref"]
    out = [ev.record("valid/each-source", erp)]
    for source in SOURCES[1:]:
        event = ev.event(source, erp_order_id=so)
        out.append(ev.record("valid/each-source", event))
    later = ev.event("erp", so, n=2, details=False)
    out.append(ev.record("valid/each-source", later, ACCEPTED))
    return out


@hostile_class("sequence/re-send")
def _resend(ev: Events) -> list[FuzzRecord]:
    # Publishing is at-least-once: the same event again, byte for byte and re-encoded.
    first = ev.event(ev.rng.choice(SOURCES))
    same = ev.record("sequence/re-send", first)
    pretty = json.dumps(first, indent=2, ensure_ascii=True).encode()
    again = replace(same, fate=DUPLICATE)
    # The id decides, not the content: a "correction" under the same id is a re-send too.
    changed = {**first, "status": ev.rng.choice(LABELS[first["source"]]), "reason": "fixed"}
    return [
        same,
        again,
        raw("sequence/re-send", first, pretty, DUPLICATE),
        ev.record("sequence/re-send", changed, DUPLICATE),
    ]


@hostile_class("sequence/ids")
def _ids(ev: Events) -> list[FuzzRecord]:
    # Event ids are unique per source reference: the same id on another reference is new; a
    # held event sent again is a re-send; a reference may be linked to another ERP order.
    source = ev.rng.choice(SOURCES[1:])
    first = ev.event(source)
    other = ev.event(source, event_id=first["event_id"])
    held = ev.event(source, linked=False)
    relinked = ev.event(source, first["order_ref"], n=2, erp_order_id=f"{ev.tag}-SO-OTHER")
    # An ERP event naming another master than itself: forwarded under the one it names.
    master = ev.event("erp", erp_order_id=f"{ev.tag}-SO-MASTER-{ev.ref('x')}")
    return [
        ev.record("sequence/ids", first),
        ev.record("sequence/ids", other, ACCEPTED),
        ev.record("sequence/ids", held, HELD),
        ev.record("sequence/ids", held, DUPLICATE),
        ev.record("sequence/ids", relinked, ACCEPTED),
        ev.record("sequence/ids", master, ACCEPTED),
    ]


@hostile_class("sequence/crosswalk")
def _crosswalk(ev: Events) -> list[FuzzRecord]:
    # Held until an event of the same reference names the ERP order, then linked.
    source = ev.rng.choice(SOURCES[1:])
    first = ev.event(source, linked=False)
    link = ev.event(source, first["order_ref"], n=2, erp_order_id=f"{ev.tag}-SO-X{ev.ref('x')}")
    return [ev.record("sequence/crosswalk", first, HELD), ev.record("sequence/crosswalk", link)]


@hostile_class("sequence/details-later")
def _details_later(ev: Events) -> list[FuzzRecord]:
    # An ERP event before the one carrying its order's details waits for them.
    bare = ev.event("erp", details=False)
    details = ev.event("erp", bare["order_ref"], n=2)
    return [ev.record("sequence/details-later", bare), ev.record("sequence/details-later", details)]


@hostile_class("sequence/details-never")
def _details_never(ev: Events) -> list[FuzzRecord]:
    # Held; dead-lettered missing_order once event time is 30 min past it (perhaps not yet).
    bare = ev.event("erp", details=False, at=ev.now - timedelta(hours=ev.rng.uniform(1, 6)))
    return [ev.record("sequence/details-never", bare, HELD)]


@hostile_class("sequence/held-overflow", once=True)
def _held_overflow(ev: Events) -> list[FuzzRecord]:
    # More events of one unlinked reference than it may hold: the rest are dead-lettered.
    source = ev.rng.choice(SOURCES[1:])
    ref = ev.ref(source)
    out = []
    for n in range(1, HELD_MAX + 3):
        event = ev.event(source, ref, n=n, linked=False)
        fate = HELD if n <= HELD_MAX else "held_overflow"
        out.append(ev.record("sequence/held-overflow", event, fate))
    return out


@hostile_class("sequence/held-bytes", once=True)
def _held_bytes(ev: Events) -> list[FuzzRecord]:
    # Fewer events, but more bytes than a reference may hold.
    source = ev.rng.choice(SOURCES[1:])
    ref = ev.ref(source)
    out: list[FuzzRecord] = []
    held = n = 0
    while sum(r.fate != HELD for r in out) < 2:
        n += 1
        event = ev.event(source, ref, n=n, linked=False, attrs={"note": "x" * 4000})
        value = orjson.dumps(event)
        fits = held + len(value) <= HELD_BYTES
        held += len(value) if fits else 0
        out.append(raw("sequence/held-bytes", event, value, HELD if fits else "held_overflow"))
    return out


@hostile_class("size/strings")
def _strings(ev: Events) -> list[FuzzRecord]:
    escaped = "é" * 700  # 4,200 bytes as written with \\u escapes, 1,400 as UTF-8
    return [
        one(ev, "size/string-4096", FRESH, attrs={"s": "x" * STRING}),
        one(ev, "size/string-4097", "too_long", attrs={"s": "x" * (STRING + 1)}),
        one(ev, "size/string-5000", "too_long", reason="r" * 5000),
        one(
            ev,
            "size/escapes-over-4096",
            "too_long",
            attrs={"s": escaped},
            value=lambda e: json.dumps(e, ensure_ascii=True).encode(),
        ),
        one(ev, "size/utf8-under-4096", FRESH, attrs={"s": escaped}),
        one(ev, "size/key-1kB", FRESH, attrs={"k" * 1024: 1}),
        one(ev, "size/key-5kB", "too_long", attrs={"k" * 5000: 1}),
        one(ev, "size/field-name-1kB", FRESH, **{"f" * 1024: True}),
        one(ev, "size/many-fields", FRESH, **{f"x_{i}": i for i in range(500)}),
        one(ev, "size/event-id-128", FRESH, event_id="e" * 128),
        one(ev, "size/event-id-128-emoji", FRESH, event_id="😀" * 128),
        one(ev, "size/event-id-129", "schema", event_id="e" * 129),
        one(ev, "size/event-id-5000", "too_long", event_id="e" * 5000),
        one(ev, "size/order-ref-129", "schema", order_ref="R" * 129),
    ]


def _padded(event: dict[str, Any], spaces: int) -> bytes:
    return b"{" + b" " * spaces + orjson.dumps(event)[1:]


@hostile_class("size/megabytes", once=True)
def _megabytes(ev: Events) -> list[FuzzRecord]:
    return [
        one(ev, "size/whitespace-500kB", FRESH, value=lambda e: _padded(e, 500_000)),
        one(ev, "size/string-1MB", "too_long", attrs={"s": "x" * 1_000_000}),
        one(ev, "size/record-2MB", "too_large", attrs={"s": "x" * 2_000_000}),
        one(ev, "size/whitespace-1.1MB", "too_large", value=lambda e: _padded(e, 1_100_000)),
        one(ev, "size/lines-50000", "too_large", source="erp", order=ev.order(line_count=50_000)),
        one(
            ev,
            "size/1MB-and-5000-deep",
            "too_long",
            reason="x" * 1_000_000,
            value=lambda e: _deep_attrs(e, 5000),
        ),
    ]


@hostile_class("size/order-lines")
def _order_lines(ev: Events) -> list[FuzzRecord]:
    return [
        one(ev, "size/lines-1000", ACCEPTED, source="erp", order=ev.order(line_count=LINES)),
        one(
            ev,
            "size/lines-1001",
            "too_many_lines",
            source="erp",
            order=ev.order(line_count=LINES + 1),
        ),
        # Lines are counted on every source's order, not only the ERP's.
        one(
            ev,
            "size/lines-1001-crm",
            "too_many_lines",
            source="crm",
            order=ev.order(line_count=1001),
        ),
    ]


# --- depth --------------------------------------------------------------------------------


def _deep_attrs(event: dict[str, Any], depth: int, **nest: bytes) -> bytes:
    # `event` with its attrs nested so that the whole record is `depth` deep (the event is 1).
    return splice(event, "attrs", nested(depth - 1, **nest))


@hostile_class("depth")
def _depth(ev: Events) -> list[FuzzRecord]:
    arrays = {"opening": b"[", "closing": b"]"}
    return [
        one(ev, "depth/32", FRESH, value=lambda e: _deep_attrs(e, DEPTH)),
        one(ev, "depth/33", "too_deep", value=lambda e: _deep_attrs(e, DEPTH + 1)),
        # Past orjson's limits of writing (254) and reading (1024), and Python's recursion.
        one(ev, "depth/300", "too_deep", value=lambda e: _deep_attrs(e, 300)),
        one(ev, "depth/600", "too_deep", value=lambda e: _deep_attrs(e, 600)),
        one(ev, "depth/900", "too_deep", value=lambda e: _deep_attrs(e, 900)),
        one(ev, "depth/1024", "too_deep", value=lambda e: _deep_attrs(e, 1024)),
        one(ev, "depth/5000", "too_deep", value=lambda e: _deep_attrs(e, 5000)),
        # An array at the top of attrs is refused by the schema, but only after the scan.
        one(ev, "depth/arrays-5000", "too_deep", value=lambda e: _deep_attrs(e, 5000, **arrays)),
        one(
            ev,
            "depth/arrays-in-reason",
            "too_deep",
            value=lambda e: splice(e, "reason", nested(2000, **arrays)),
        ),
        one(ev, "depth/unbalanced-5000", "too_deep", value=lambda e: b"[" * 5000),
        one(
            ev,
            "depth/unbalanced-in-event",
            "too_deep",
            value=lambda e: orjson.dumps(e)[:-1] + b',"attrs":' + b'{"a":' * 100,
        ),
        one(ev, "depth/brackets-in-strings", FRESH, attrs={"s": "{[" * 2000}),
        one(ev, "depth/escaped-quotes", FRESH, attrs={"s": '\\"{[' * 600}),
        one(
            ev,
            "depth/line-extra-40",
            "too_deep",
            source="erp",
            order=ev.order(line_count=1)
            | {"lines": [{"sku": "A", "qty": 1, "unit_price": "1", "x": _nested_obj(40)}]},
        ),
    ]


def _nested_obj(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = {"a": value}
    return value


# --- time ---------------------------------------------------------------------------------


def _at(text: str | float | int) -> Callable[[dict[str, Any]], bytes]:
    def write(event: dict[str, Any]) -> bytes:
        return orjson.dumps({**event, "occurred_at": text})

    return write


@hostile_class("time")
def _time(ev: Events) -> list[FuzzRecord]:
    now: datetime = ev.now
    day = timedelta(days=1)
    past, ahead = now - 399 * day, now + timedelta(minutes=4)
    out = [
        one(ev, f"time/{name}", fate, value=_at(at))
        for name, at, fate in [
            ("0001-01-01", "0001-01-01T00:00:00Z", "implausible_time"),
            ("0001-01-01+14", "0001-01-01T00:00:00+14:00", "implausible_time"),
            ("9999-12-31", "9999-12-31T23:59:59Z", "implausible_time"),
            ("9999-12-31-14", "9999-12-31T23:59:59-14:00", "implausible_time"),
            ("epoch-0", 0, "implausible_time"),
            ("epoch--1", -1, "implausible_time"),
            ("epoch-0-text", "0", "implausible_time"),
            ("year-2286", 1e10, "implausible_time"),
            ("401-days-ago", (now - 401 * day).isoformat(), "implausible_time"),
            ("a-day-ahead", (now + day).isoformat(), "implausible_time"),
            ("399-days-ago", past.isoformat(), FRESH),
            ("4-min-ahead", ahead.isoformat(), FRESH),
            ("epoch-seconds", now.timestamp() - 60, FRESH),
            ("epoch-ms", int(now.timestamp() * 1000) - 60_000, FRESH),
            ("naive", now.replace(tzinfo=None).isoformat(), "schema"),
            ("date-only", now.date().isoformat(), "schema"),
            ("month-13", "2026-13-02T09:00:00Z", "schema"),
            ("leap-second", "2026-06-30T23:59:60Z", "schema"),
            ("offset-24h", "2026-03-02T09:00:00+24:00", "schema"),
            ("1e300", 1e300, "schema"),
            ("text", "yesterday", "schema"),
            ("true", True, "schema"),
            ("empty", "", "schema"),
            ("lowercase", now.strftime("%Y-%m-%dt%H:%M:%Sz"), None),
            ("nanoseconds", now.strftime("%Y-%m-%dT%H:%M:%S.123456789Z"), None),
        ]
    ]
    placed = [
        ("placed-0001", "0001-01-01T00:00:00Z", "implausible_time"),
        ("placed-a-day-ahead", (now + day).isoformat(), "implausible_time"),
        ("placed-naive", now.replace(tzinfo=None).isoformat(), "schema"),
        ("placed-before", (now - timedelta(hours=7)).isoformat(), ACCEPTED),
    ]
    out += [
        one(ev, f"time/{name}", fate, source="erp", order=ev.order(placed_at=at))
        for name, at, fate in placed
    ]
    return out
