"""Ingest as the contract reads (§2, §3): what is accepted, which order each event belongs to,
and from which event time on.

Definitions (each the plainest reading of the contract; see tests/oracle/__init__.py):

* **Rejected** (dead letters, counted per reason): not JSON (`invalid_json`); a missing or
  malformed required field, an `occurred_at` without an offset, malformed `order` details
  (`schema`); a `source` other than its topic's (`wrong_topic`); a status label its source's
  map does not know, after trimming and case folding (`unknown_status`); the events of an ERP
  reference none of whose events ever carries `order` (`missing_order`).
* **Re-sends**: a (`source`, `event_id`) accepted before, earlier in the log, is dropped.
* **Held ERP events**: an ERP event earlier in event time than its reference's first event
  carrying `order` (at D) belongs to the order from D on.
* **Crosswalk**: a non-ERP event without `erp_order_id` belongs to the master order that the
  earliest event (in event time, at L) of the same source and `order_ref` carrying one names,
  from max(its own time, L) on; before L it belongs to its reference alone (`Unlinked`), and
  never to an order if nothing links the reference.

Every event therefore has `at` (its `occurred_at`) and `known` (>= at: the event time from
which it belongs to its order). The rules look at an order as of T through the events with
`known <= T`.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tests.oracle.contract import MARKERS, SOURCES, parse_time, status_map

_CURRENCY = re.compile(r"^[A-Z]{3}$")


@dataclass(frozen=True)
class Accepted:
    """One accepted change event, as the rules see it."""

    source: str
    event_id: str
    order_ref: str
    order_id: str  # its master order (its own reference while unlinked)
    stage: str | None  # canonical stage, or None for a failure marker
    marker: str | None
    at: int  # occurred_at, µs
    known: int  # from when it belongs to `order_id`, µs (>= at)
    body: Mapping[str, Any]


@dataclass
class Unlinked:
    """A source reference whose first events named no master order."""

    source: str
    ref: str
    events: list[Accepted]  # the events it held before its link, event time order
    link_us: int | None  # when it was linked (None: never)


@dataclass
class Ingested:
    """The log after ingest."""

    orders: dict[str, list[Accepted]] = field(default_factory=dict)  # order id -> events
    unlinked: list[Unlinked] = field(default_factory=list)
    dead_letters: Counter[str] = field(default_factory=Counter)
    resends: int = 0
    never_detailed: set[str] = field(default_factory=set)  # ids of the missing_order events


def _text(value: Any) -> bool:
    return isinstance(value, str) and 1 <= len(value) <= 128


def _number(value: Any, *, positive: bool) -> bool:
    if isinstance(value, bool):
        return False
    try:
        number = float(value)
    except (TypeError, ValueError):
        return False
    return number > 0 if positive else number >= 0


def _valid_details(order: Any) -> bool:
    if not isinstance(order, Mapping):
        return False
    lines = order.get("lines")
    return (
        _text(order.get("customer_id"))
        and isinstance(order.get("channel"), str)
        and 1 <= len(order["channel"]) <= 64
        and isinstance(lines, list)
        and len(lines) >= 1
        and all(
            isinstance(line, Mapping)
            and _text(line.get("sku"))
            and _number(line.get("qty"), positive=True)
            and _number(line.get("unit_price"), positive=False)
            for line in lines
        )
        and _number(order.get("amount"), positive=False)
        and isinstance(order.get("currency"), str)
        and bool(_CURRENCY.match(order["currency"]))
        and (
            "placed_at" not in order
            or order["placed_at"] is None
            or parse_time(order["placed_at"]) is not None
        )
        and order.get("priority", "normal") in ("rush", "normal")
    )


def check(record: Mapping[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
    """(the event, None) when the contract accepts it so far, else (None, dead-letter reason).

    A record is an event dict, or `{"_raw": bytes, "_topic_source": source}` for bytes as
    published (concord/scenario.py's bad inputs)."""
    topic = record.get("_topic_source", record.get("source"))
    event: Any = record
    if "_raw" in record:
        try:
            event = json.loads(record["_raw"])
        except (ValueError, UnicodeDecodeError):
            return None, "invalid_json"
    if not isinstance(event, dict):
        return None, "schema"
    if not (
        _text(event.get("event_id"))
        and event.get("source") in SOURCES
        and _text(event.get("order_ref"))
        and _text(event.get("status"))
        and parse_time(event.get("occurred_at")) is not None
        and (event.get("erp_order_id") is None or _text(event["erp_order_id"]))
        and (event.get("order") is None or _valid_details(event["order"]))
        and all(event.get(k) is None or isinstance(event[k], dict) for k in ("tracking", "attrs"))
    ):
        return None, "schema"
    if event["source"] != topic:
        return None, "wrong_topic"
    if event["status"].strip().casefold() not in status_map()[event["source"]]:
        return None, "unknown_status"
    return event, None


def ingest(records: Iterable[Mapping[str, Any]]) -> Ingested:
    """Validate, drop re-sends, hold ERP events until their details, link through the
    crosswalk (see the module docstring)."""
    out = Ingested()
    checked = [check(record) for record in records]
    detailed = {e["order_ref"] for e, _ in checked if e and e["source"] == "erp" and e.get("order")}
    seen: set[tuple[str, str]] = set()
    valid: list[dict[str, Any]] = []
    for event, reason in checked:
        if event is not None and event["source"] == "erp" and event["order_ref"] not in detailed:
            reason = "missing_order"  # its details never come: every copy is rejected
            out.never_detailed.add(event["event_id"])
        if event is None or reason is not None:
            out.dead_letters[str(reason)] += 1
            continue
        key = (event["source"], event["event_id"])
        if key in seen:
            out.resends += 1
            continue
        seen.add(key)
        valid.append(event)

    by_ref: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for event in valid:
        by_ref.setdefault((event["source"], event["order_ref"]), []).append(event)
    for (source, ref), events in by_ref.items():
        events.sort(key=lambda e: (parse_time(e["occurred_at"]), e["event_id"]))
        if source == "erp":
            _erp_reference(out, events)
        else:
            _source_reference(out, source, ref, events)
    for accepted in out.orders.values():
        accepted.sort(key=lambda e: (e.known, e.at, e.source, e.event_id))
    return out


def _accepted(event: dict[str, Any], order_id: str, known: int) -> Accepted:
    at = parse_time(event["occurred_at"])
    assert at is not None
    mapped = status_map()[event["source"]][event["status"].strip().casefold()]
    return Accepted(
        source=event["source"],
        event_id=event["event_id"],
        order_ref=event["order_ref"],
        order_id=order_id,
        stage=None if mapped in MARKERS else mapped,
        marker=mapped if mapped in MARKERS else None,
        at=at,
        known=max(at, known),
        body=event,
    )


def _erp_reference(out: Ingested, events: list[dict[str, Any]]) -> None:
    details = next(e for e in events if e.get("order") is not None)
    since = parse_time(details["occurred_at"])
    assert since is not None
    for event in events:
        order_id = event.get("erp_order_id") or event["order_ref"]
        out.orders.setdefault(order_id, []).append(_accepted(event, order_id, since))


def _source_reference(out: Ingested, source: str, ref: str, events: list[dict[str, Any]]) -> None:
    linking = next((e for e in events if e.get("erp_order_id")), None)
    link_us = None if linking is None else parse_time(linking["occurred_at"])
    held: list[Accepted] = []
    for event in events:
        own = event.get("erp_order_id")
        if own:
            out.orders.setdefault(own, []).append(_accepted(event, own, 0))
            continue
        at = parse_time(event["occurred_at"])
        assert at is not None
        if link_us is None or at < link_us:
            held.append(_accepted(event, ref, at))
        if linking is not None:
            order_id = linking["erp_order_id"]
            out.orders.setdefault(order_id, []).append(_accepted(event, order_id, link_us or 0))
    if held:
        out.unlinked.append(Unlinked(source, ref, held, link_us))
