"""Rows for the ClickHouse tables: pure mappings from pipeline objects, with personal data masked.

Every mapper returns a dict keyed by exactly the columns in `TABLE_COLUMNS[table]`, with
timestamps as aware UTC datetimes. Nothing here does I/O or reads the clock, so a replay
maps the same input to the same row, which is what makes the sink's writes idempotent.

Privacy (contract §9): phones are hashed (keyed: the mappers that meet one take the worker's
`PhoneHasher`) or masked (`mask_phone`), addresses
masked (`mask_address`), in the typed columns *and* inside every JSON or free-text column:
`scrub` masks values under phone/address-like keys at any depth and phone numbers that
appear in free text.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import orjson
from pydantic import BaseModel

from schemas.anomalies import Anomaly, AnomalyType
from schemas.privacy import PhoneHasher, mask_address, mask_phone

TABLE_COLUMNS: dict[str, tuple[str, ...]] = {
    "events": (
        "event_id",
        "source",
        "order_ref",
        "order_id",
        "status",
        "stage",
        "marker",
        "phase",
        "occurred_at",
        "received_at",
        "channel",
        "customer_id",
        "phone_hash",
        "ship_to_masked",
        "amount",
        "currency",
        "carrier",
        "tracking_no",
        "reason",
        "raw",
    ),
    "order_state": (
        "order_id",
        "placed_at",
        "customer_id",
        "channel",
        "vip",
        "priority",
        "phone_hash",
        "erp_stage",
        "erp_phase",
        "erp_updated_at",
        "crm_stage",
        "crm_phase",
        "crm_updated_at",
        "wms_stage",
        "wms_phase",
        "wms_updated_at",
        "logistics_stage",
        "logistics_phase",
        "logistics_updated_at",
        "consistent",
        "updated_at",
        "version",
    ),
    "refresh_latency": (
        "order_id",
        "target",
        "phase",
        "erp_event_id",
        "target_event_id",
        "t0",
        "t1",
        "latency_seconds",
        "skew",
    ),
    "anomalies": (
        "anomaly_id",
        "type",
        "state",
        "severity",
        "order_id",
        "systems",
        "opened_at",
        "detected_at",
        "resolved_at",
        "team",
        "rule",
        "evidence",
        "summary",
        "decisions",
        "version",
    ),
    "duplicate_pairs": (
        "pair_id",
        "customer_id",
        "order_a",
        "order_b",
        "channel_a",
        "channel_b",
        "placed_a",
        "placed_b",
        "gap_seconds",
        "state",
        "decision",
        "detected_at",
        "version",
    ),
    "kpi_snapshots": ("at", "kpi", "target", "window", "value"),
    "breaker_history": (
        "at",
        "stage",
        "event",
        "orders_created",
        "allocated",
        "allocation_failed",
        "failure_rate",
    ),
    "dead_letters": (
        "topic",
        "partition",
        "offset",
        "key",
        "reason",
        "error",
        "received_at",
        "original_sha256",
        "original_size",
        "original_b64",
    ),
}

SYSTEMS: tuple[str, ...] = ("erp", "crm", "wms", "logistics")

# --- masking -------------------------------------------------------------------------------

# Mainland mobiles (optionally +86 / 0086, spaces or dashes between digits) and landlines
# written with an area-code separator; digits glued to other digits are ids, not phones.
_MOBILE_IN_TEXT = re.compile(r"(?<!\d)(?:(?:\+|00)?86[\s-]?)?1[3-9]\d(?:[\s-]?\d){8}(?!\d)")
_LANDLINE_IN_TEXT = re.compile(r"(?<!\d)0\d{2,3}[\s-]\d{7,8}(?!\d)")
# In text that is not valid JSON (dead letters), quoted address values are still found by
# key, up to the closing quote or the end of a truncated message.
_ADDRESS_IN_TEXT = re.compile(
    r'("(?:[^"\\]*(?:address|addr|ship_?to|street|地址)[^"\\]*)"\s*:\s*")((?:[^"\\]|\\.)*)("?)',
    re.IGNORECASE,
)
# Best effort for addresses written into free text (notes, summaries): a Chinese
# administrative area followed by a street-level part (路, 街, 号, 楼, …).
_CN_ADDRESS_IN_TEXT = re.compile(
    r"[\u4e00-\u9fff]{1,10}(?:省|自治区|市|区|县|州|旗)[\u4e00-\u9fffA-Za-z0-9#\-]*?"
    r"(?:路|街|大道|道|巷|弄|胡同|村|里|号|栋|幢|座|楼|室|单元)[\u4e00-\u9fffA-Za-z0-9#\-]*"
)
# Cheap pre-check: text without a digit or an administrative-area character holds neither.
_MAYBE_PII = re.compile(r"[0-9省市区县州旗]")
_MOBILE_FULL = re.compile(r"(?:(?:\+|00)?86)?1[3-9]\d{9}")

# Keys whose values are identifiers: never rewritten, even when they look like a phone.
_ID_KEYS = frozenset(
    {"event_id", "order_ref", "erp_order_id", "order_id", "tracking_no", "sku", "decision_id"}
)
_PHONE_KEY_PARTS = ("phone", "mobile", "手机", "电话")
_PHONE_KEYS = frozenset({"tel", "telephone", "tel_no", "contact_tel"})
_ADDRESS_KEY_PARTS = ("address", "addr", "street", "ship_to", "shipto", "地址")
# Parts of a structured address coarse enough to keep (the same level mask_address keeps).
_COARSE_ADDRESS_KEYS = frozenset({"country", "province", "state", "city", "region", "zip"})


# How a value is rewritten: by its key's kind ("" = anything else, "id" = kept as is).
_GENERAL, _ID, _PHONE, _ADDRESS = "", "id", "phone", "address"


@functools.lru_cache(maxsize=4096)
def _key_kind(key: str) -> str:
    k = key.casefold()
    if k in _ID_KEYS:
        return _ID
    if k in _PHONE_KEYS or any(part in k for part in _PHONE_KEY_PARTS):
        return _PHONE
    if any(part in k for part in _ADDRESS_KEY_PARTS):
        return _ADDRESS
    return _GENERAL


def scrub_text(text: str) -> str:
    """Free text with phone numbers (138****8000) and street addresses (北京市朝阳区***) masked."""
    if not text or not _MAYBE_PII.search(text):
        return text
    text = _MOBILE_IN_TEXT.sub(lambda m: mask_phone(m.group(0)), text)
    text = _LANDLINE_IN_TEXT.sub(lambda m: mask_phone(m.group(0)), text)
    return _CN_ADDRESS_IN_TEXT.sub(lambda m: mask_address(m.group(0)), text)


# How deep `scrub` follows nested objects and lists. Anything deeper is replaced by
# TOO_DEEP: orjson writes at most 254 levels, and an accepted event is at most ~200 deep
# (pydantic's parser limit), so only hostile input (dead letters) reaches it.
MAX_SCRUB_DEPTH = 200
TOO_DEEP = "[nested too deep]"


def scrub(value: Any, key: str = "") -> Any:
    """A JSON-like value with phones and addresses masked at any depth (iterative: no
    nesting exhausts the stack); containers nested deeper than MAX_SCRUB_DEPTH become
    TOO_DEEP."""
    todo: list[tuple[Any, Any, str, int]] = []
    root = _scrub_node(value, _key_kind(key) if key else _GENERAL, 0, todo)
    while todo:
        # A container and its empty copy, queued by _scrub_node: filled in the input's order.
        item, out, kind, depth = todo.pop()
        if type(out) is list:
            child = kind if kind in (_PHONE, _ADDRESS) else _GENERAL
            out += [_scrub_node(v, child, depth, todo) for v in item]
            continue
        for k, v in item.items():
            name = str(k)
            out[name] = _scrub_node(v, kind if kind == _PHONE else _key_kind(name), depth, todo)
    return root


def _scrub_node(value: Any, kind: str, depth: int, todo: list[tuple[Any, Any, str, int]]) -> Any:
    # A leaf scrubbed now; a container's copy made empty and queued with it.
    t = type(value)
    if t is str:  # the common cases first, by exact type
        return scrub_text(value) if kind == _GENERAL else _scrubbed_leaf(value, kind)
    if value is None or t is int or t is float or t is bool:
        return value if kind in (_GENERAL, _ID) else _scrubbed_leaf(value, kind)
    if isinstance(value, list | tuple):
        copy: Any = []
    elif isinstance(value, Mapping) and kind != _ADDRESS:
        copy = {}
    else:
        return _scrubbed_leaf(value, kind)
    if depth >= MAX_SCRUB_DEPTH:
        return TOO_DEEP
    todo.append((value, copy, kind, depth + 1))
    return copy


def _scrubbed_leaf(value: Any, kind: str) -> Any:
    # Not a container, or an address mapping (masked whole, one level deep).
    if kind == _PHONE:
        return value if value is None or isinstance(value, bool) else mask_phone(str(value))
    if kind == _ADDRESS:
        return _masked_address(value)
    if isinstance(value, str):
        return value if kind == _ID else scrub_text(value)
    return value


def _masked_address(value: Any) -> Any:
    # A mapping keeps its coarse parts (city, zip, ...) and masks the rest, one level deep.
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, Mapping):
        return {
            str(k): scrub_text(str(v)) if str(k).casefold() in _COARSE_ADDRESS_KEYS else "***"
            for k, v in value.items()
        }
    return mask_address(str(value))


def masked_json(value: Any) -> str:
    """`value` scrubbed and serialised as compact JSON with sorted keys (deterministic)."""
    return orjson.dumps(scrub(value), option=orjson.OPT_SORT_KEYS, default=str).decode()


def scrub_bytes(raw: bytes) -> bytes:
    """Raw input with phones and addresses masked: as JSON when it parses, else as text."""
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError:
        text = raw.decode("utf-8", errors="replace")
        text = _ADDRESS_IN_TEXT.sub(
            lambda m: m.group(1) + mask_address(m.group(2)) + m.group(3), text
        )
        return scrub_text(text).encode()
    return orjson.dumps(scrub(parsed), default=str)


def safe_customer_id(customer_id: Any, *, phones: PhoneHasher) -> str:
    """A customer id, unless it is a phone number: then a stable hash in its place."""
    if customer_id is None:
        return ""
    text = str(customer_id).strip()
    if _MOBILE_FULL.fullmatch(re.sub(r"[\s-]", "", text)):
        return "phone:" + phones.phone_hash(text)[:16]
    return text


# --- value helpers -------------------------------------------------------------------------


def utc(value: datetime | str) -> datetime:
    """An aware UTC datetime from a datetime (naive means UTC) or an RFC 3339 string."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if not isinstance(value, datetime):
        raise TypeError(f"expected a datetime or an RFC 3339 string, got {type(value).__name__}")
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def _utc_or_none(value: datetime | str | None) -> datetime | None:
    return None if value is None or value == "" else utc(value)


def _decimal(value: Any) -> Decimal | None:
    if value is None or value == "":
        return None
    try:
        return Decimal(str(value))
    except InvalidOperation as exc:
        raise ValueError(f"not a decimal amount: {value!r}") from exc


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _plain(obj: Mapping[str, Any] | BaseModel) -> dict[str, Any]:
    if isinstance(obj, BaseModel):
        return obj.model_dump(mode="json", exclude_none=True)
    return dict(obj)


def _address_text(value: Any) -> str:
    if isinstance(value, Mapping):
        return "".join(str(v) for v in value.values() if v)
    return str(value)


# --- mappers -------------------------------------------------------------------------------


def event_row(event: Mapping[str, Any] | BaseModel, *, phones: PhoneHasher) -> dict[str, Any]:
    """An accepted, normalised change event (ingest's dict or a NormalizedEvent) → `events`."""
    body = _plain(event)
    order = body.get("order") or {}
    tracking = body.get("tracking") or {}
    phone = order.get("customer_phone")
    ship_to = order.get("ship_to")
    return {
        "event_id": str(body["event_id"]),
        "source": str(body["source"]),
        "order_ref": str(body["order_ref"]),
        "order_id": _text(body.get("order_id") or body.get("erp_order_id")),
        "status": scrub_text(str(body["status"])),
        "stage": _text(body.get("stage")),
        "marker": _text(body.get("marker")),
        "phase": _text(body.get("phase")),
        "occurred_at": utc(body["occurred_at"]),
        "received_at": utc(body.get("received_at") or body["occurred_at"]),
        "channel": _text(order.get("channel")),
        "customer_id": safe_customer_id(order.get("customer_id"), phones=phones),
        "phone_hash": phones.phone_hash(str(phone)) if phone else "",
        "ship_to_masked": mask_address(_address_text(ship_to)) if ship_to else "",
        "amount": _decimal(order.get("amount")),
        "currency": _text(order.get("currency")),
        "carrier": _text(tracking.get("carrier")),
        "tracking_no": _text(tracking.get("tracking_no")),
        "reason": scrub_text(_text(body.get("reason"))),
        "raw": masked_json(body),
    }


def order_state_row(
    order_id: str,
    *,
    systems: Mapping[str, Mapping[str, Any]],
    consistent: bool,
    version: int,
    phones: PhoneHasher,
    customer_id: str | None = None,
    channel: str | None = None,
    vip: bool = False,
    priority: str = "normal",
    customer_phone: str | None = None,
    placed_at: datetime | str | None = None,
    customer_phone_hash: str | None = None,
) -> dict[str, Any]:
    """Per-order cross-system state → `order_state`.

    `systems` maps a source (erp, crm, wms, logistics) to {stage, phase, updated_at} for the
    systems that have reported. `version` must grow with every change of the order (e.g. the
    number of events applied to it), so the newest state wins and a replay collapses. The
    phone comes in clear (`customer_phone`) or already hashed (`customer_phone_hash`).
    """
    row: dict[str, Any] = {
        "order_id": order_id,
        "placed_at": _utc_or_none(placed_at),
        "customer_id": safe_customer_id(customer_id, phones=phones),
        "channel": _text(channel),
        "vip": int(bool(vip)),
        "priority": priority,
        "phone_hash": (
            phones.phone_hash(customer_phone) if customer_phone else customer_phone_hash or ""
        ),
        "consistent": int(bool(consistent)),
        "version": int(version),
    }
    latest: list[datetime] = [row["placed_at"]] if row["placed_at"] else []
    unknown = set(map(str, systems)) - set(SYSTEMS)
    if unknown:
        raise ValueError(f"unknown systems {sorted(unknown)}; expected some of {SYSTEMS}")
    for system in SYSTEMS:
        seen = systems.get(system) or {}
        updated = _utc_or_none(seen.get("updated_at"))
        row[f"{system}_stage"] = _text(seen.get("stage"))
        row[f"{system}_phase"] = _text(seen.get("phase"))
        row[f"{system}_updated_at"] = updated
        if updated is not None:
            latest.append(updated)
    if not latest:
        raise ValueError(f"order {order_id}: no placed_at and no system updated_at")
    row["updated_at"] = max(latest)
    return {column: row[column] for column in TABLE_COLUMNS["order_state"]}


def latency_row(
    order_id: str,
    *,
    target: str,
    phase: str,
    erp_event_id: str,
    target_event_id: str,
    t0: datetime | str,
    t1: datetime | str,
) -> dict[str, Any]:
    """One status-refresh latency observation (KPI 1) → `refresh_latency`; skew clamps to 0."""
    start, end = utc(t0), utc(t1)
    seconds = (end - start).total_seconds()
    return {
        "order_id": order_id,
        "target": target,
        "phase": phase,
        "erp_event_id": erp_event_id,
        "target_event_id": target_event_id,
        "t0": start,
        "t1": end,
        "latency_seconds": max(seconds, 0.0),
        "skew": int(seconds < 0),
    }


_STATE_RANK = {"open": 1, "resolved": 2}
_SEVERITY_RANK = {"info": 1, "warning": 2, "critical": 3}


def anomaly_version(anomaly: Anomaly) -> int:
    """A version that grows along an anomaly's life: state, then severity, then decisions."""
    return (
        (_STATE_RANK.get(anomaly.state.value, 0) << 40)
        | (_SEVERITY_RANK.get(anomaly.severity.value, 0) << 32)
        | min(len(anomaly.decisions), 0xFFFFFFFF)
    )


def anomaly_row(
    anomaly: Anomaly | Mapping[str, Any], *, version: int | None = None
) -> dict[str, Any]:
    """An anomaly lifecycle event (with its decisions) → `anomalies`."""
    a = anomaly if isinstance(anomaly, Anomaly) else Anomaly.model_validate(anomaly)
    return {
        "anomaly_id": a.anomaly_id,
        "type": a.type.value,
        "state": a.state.value,
        "severity": a.severity.value,
        "order_id": _text(a.order_id),
        "systems": [str(s) for s in a.systems],
        "opened_at": utc(a.opened_at),
        "detected_at": utc(a.detected_at),
        "resolved_at": _utc_or_none(a.resolved_at),
        "team": a.route.team.value,
        "rule": a.route.rule,
        "evidence": masked_json([e.model_dump(mode="json") for e in a.evidence]),
        "summary": scrub_text(a.summary),
        "decisions": masked_json(a.decisions),
        "version": anomaly_version(a) if version is None else int(version),
    }


_PAIR_STATE_RANK = {"open": 1, "kept": 2, "merged": 2}


def duplicate_pair_row(
    pair_id: str,
    *,
    order_a: str,
    order_b: str,
    placed_a: datetime | str,
    placed_b: datetime | str,
    detected_at: datetime | str,
    phones: PhoneHasher,
    customer_id: str | None = None,
    channel_a: str = "",
    channel_b: str = "",
    state: str = "open",
    decision: str = "",
    version: int | None = None,
) -> dict[str, Any]:
    """A suspected duplicate order pair and its fate (open, kept, merged) → `duplicate_pairs`."""
    a, b = utc(placed_a), utc(placed_b)
    return {
        "pair_id": pair_id,
        "customer_id": safe_customer_id(customer_id, phones=phones),
        "order_a": order_a,
        "order_b": order_b,
        "channel_a": channel_a,
        "channel_b": channel_b,
        "placed_a": a,
        "placed_b": b,
        "gap_seconds": abs((b - a).total_seconds()),
        "state": state,
        "decision": decision,
        "detected_at": utc(detected_at),
        "version": _PAIR_STATE_RANK.get(state, 0) if version is None else int(version),
    }


_PAIR_STATE_OF_DECISION = {"duplicate.merge": "merged", "duplicate.keep": "kept"}


def duplicate_pair_of(anomaly: Anomaly, *, phones: PhoneHasher) -> dict[str, Any] | None:
    """A `duplicate_order` anomaly → its `duplicate_pairs` row (None for other anomalies).

    The pair is the anomaly's two evidence items (earlier-placed first, each with its order,
    channel and `placed_at`); its state follows the decision that resolved it, if any.
    """
    if anomaly.type is not AnomalyType.DUPLICATE_ORDER or len(anomaly.evidence) < 2:
        return None
    first, second = (item.model_dump() for item in anomaly.evidence[:2])
    state, decision = "open", ""
    for record in anomaly.decisions:
        kind = str(record.get("kind", ""))
        if kind in _PAIR_STATE_OF_DECISION:
            state, decision = _PAIR_STATE_OF_DECISION[kind], kind
    return duplicate_pair_row(
        anomaly.anomaly_id,
        order_a=str(first.get("order_id") or ""),
        order_b=str(second.get("order_id") or anomaly.order_id or ""),
        placed_a=first.get("placed_at") or first["occurred_at"],
        placed_b=second.get("placed_at") or second["occurred_at"],
        detected_at=anomaly.detected_at,
        phones=phones,
        channel_a=str(first.get("channel") or ""),
        channel_b=str(second.get("channel") or ""),
        state=state,
        decision=decision,
    )


def kpi_row(
    at: datetime | str, kpi: str, value: float, *, target: str = "", window: str = ""
) -> dict[str, Any]:
    """One KPI value at an event-time instant → `kpi_snapshots`."""
    return {"at": utc(at), "kpi": kpi, "target": target, "window": window, "value": float(value)}


def breaker_row(
    at: datetime | str,
    *,
    stage: int,
    event: str,
    orders_created: int,
    allocated: int,
    allocation_failed: int,
    failure_rate: float | None = None,
) -> dict[str, Any]:
    """One breaker evaluation or transition (warn, throttle, resume, ack, …) → `breaker_history`."""
    attempts = allocated + allocation_failed
    if failure_rate is None:
        failure_rate = allocation_failed / attempts if attempts else 0.0
    return {
        "at": utc(at),
        "stage": int(stage),
        "event": event,
        "orders_created": int(orders_created),
        "allocated": int(allocated),
        "allocation_failed": int(allocation_failed),
        "failure_rate": float(failure_rate),
    }


def dead_letter_row(
    *,
    topic: str,
    partition: int,
    offset: int,
    key: bytes | str | None,
    reason: str,
    error: str,
    received_at: datetime | str,
    original: bytes | None,
) -> dict[str, Any]:
    """A rejected input → `dead_letters`.

    The stored body is the original with phones and addresses masked (base64); the clear
    original stays on the dead-letter topic, found again by `original_sha256`.
    """
    raw = original or b""
    key_text = key.decode("utf-8", errors="replace") if isinstance(key, bytes) else _text(key)
    return {
        "topic": topic,
        "partition": int(partition),
        "offset": int(offset),
        "key": scrub_text(key_text),
        "reason": reason,
        "error": scrub_text(error),
        "received_at": utc(received_at),
        "original_sha256": hashlib.sha256(raw).hexdigest(),
        "original_size": len(raw),
        "original_b64": base64.b64encode(scrub_bytes(raw)).decode() if raw else "",
    }
