"""Corpus classes of content: encodings, types, status labels, JSON syntax, fields, numbers
and Kafka keys."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import orjson

from tests.fuzz.records import (
    ACCEPTED,
    FRESH,
    HELD,
    Events,
    FuzzRecord,
    hostile_class,
    one,
    splice,
)

# --- encodings ----------------------------------------------------------------------------


def _text(event: dict[str, Any]) -> str:
    return json.dumps(event, ensure_ascii=False)


@hostile_class("encoding")
def _encoding(ev: Events) -> list[FuzzRecord]:
    def reason(raw: bytes) -> Callable[[dict[str, Any]], bytes]:
        return lambda e: splice(e, "reason", raw)

    chinese = {"source": "erp", "status": "已审核"}
    return [
        one(
            ev,
            "encoding/bom-utf8",
            "invalid_json",
            value=lambda e: b"\xef\xbb\xbf" + orjson.dumps(e),
        ),
        one(ev, "encoding/utf16", "invalid_json", value=lambda e: _text(e).encode("utf-16")),
        one(ev, "encoding/utf16-le", "invalid_json", value=lambda e: _text(e).encode("utf-16-le")),
        one(ev, "encoding/utf32", "invalid_json", value=lambda e: _text(e).encode("utf-32")),
        one(ev, "encoding/gbk", "invalid_json", **chinese, value=lambda e: _text(e).encode("gbk")),
        one(
            ev,
            "encoding/latin1",
            "invalid_json",
            source="crm",
            status="NEW",
            reason="café",
            value=lambda e: _text(e).encode("latin-1"),
        ),
        one(ev, "encoding/overlong", "invalid_json", value=reason(b'"\xc0\xaf"')),
        one(ev, "encoding/raw-surrogate", "invalid_json", value=reason(b'"\xed\xa0\x80"')),
        one(ev, "encoding/truncated-utf8", "invalid_json", value=reason(b'"\xe5\xb7"')),
        one(ev, "encoding/byte-ff", "invalid_json", value=reason(b'"\xff\xfe"')),
        one(ev, "encoding/lone-high-surrogate", "invalid_json", value=reason(b'"\\ud800"')),
        one(ev, "encoding/lone-low-surrogate", "invalid_json", value=reason(b'"\\udc00x"')),
        one(ev, "encoding/high-then-letter", "invalid_json", value=reason(b'"\\ud800\\u0041"')),
        one(
            ev,
            "encoding/surrogate-key",
            "invalid_json",
            value=lambda e: splice(e, "attrs", b'{"\\udfff":1}'),
        ),
        one(ev, "encoding/surrogate-pair", FRESH, value=reason(b'"\\ud83d\\ude00"')),
        one(ev, "encoding/raw-nul-in-string", "invalid_json", value=reason(b'"a\x00b"')),
        one(ev, "encoding/escaped-nul", FRESH, reason="a\x00b", attrs={"\x00": "\x00"}),
        one(ev, "encoding/nul-after", "invalid_json", value=lambda e: orjson.dumps(e) + b"\x00"),
        one(ev, "encoding/nul-only", "invalid_json", value=lambda e: b"\x00" * 64),
        one(ev, "encoding/control-escapes", FRESH, reason="".join(map(chr, range(32)))),
        one(ev, "encoding/bidi-zero-width", FRESH, reason="\u202e\u200b\ufeff\u2028\u2029"),
        one(ev, "encoding/noncharacters", FRESH, reason="\uffff\ufffe\U0010ffff"),
        one(
            ev,
            "encoding/ascii-escapes",
            FRESH,
            **chinese,
            value=lambda e: json.dumps(e, ensure_ascii=True).encode(),
        ),
        one(
            ev,
            "encoding/escaped-solidus",
            FRESH,
            value=lambda e: orjson.dumps(e).replace(b"-", b"\\u002d"),
        ),
    ]


# --- types --------------------------------------------------------------------------------

# (field, JSON written in its place, fate) on any source; ERP-only ones below.
WRONG_TYPES: list[tuple[str, bytes, str | None]] = [
    ("event_id", b"12345", "schema"),
    ("event_id", b"null", "schema"),
    ("event_id", b'""', "schema"),
    ("event_id", b"[]", "schema"),
    ("source", b"1", "schema"),
    ("source", b'"ERP"', "schema"),
    ("source", b'"sap"', "schema"),
    ("order_ref", b"{}", "schema"),
    ("order_ref", b'""', "schema"),
    ("status", b"null", "schema"),
    ("status", b"7", "schema"),
    ("status", b'""', "schema"),
    ("occurred_at", b"true", "schema"),
    ("occurred_at", b"[]", "schema"),
    ("occurred_at", b"null", "schema"),
    ("attrs", b"[]", "schema"),
    ("attrs", b'"x"', "schema"),
    ("tracking", b"5", "schema"),
    ("reason", b"5", "schema"),
    ("order", b'"x"', "schema"),
    ("order", b"[]", "schema"),
    ("order", b"{}", "schema"),
    ("attrs", b"null", FRESH),
    ("tracking", b'{"carrier": 1}', "schema"),
]
ORDER_TYPES: list[tuple[str, str, Any, str | None]] = [  # (name, field, value, fate)
    ("no-lines", "lines", [], "schema"),
    ("empty-line", "lines", [{}], "schema"),
    ("lines-object", "lines", {"sku": "A"}, "schema"),
    ("qty-0", "lines", [{"sku": "A", "qty": 0, "unit_price": "1"}], "schema"),
    ("qty--1", "lines", [{"sku": "A", "qty": -1, "unit_price": "1"}], "schema"),
    ("price--1", "lines", [{"sku": "A", "qty": 1, "unit_price": "-1"}], "schema"),
    ("empty-sku", "lines", [{"sku": "", "qty": 1, "unit_price": "1"}], "schema"),
    ("currency-lowercase", "currency", "cny", "schema"),
    ("currency-newline", "currency", "CNY\n", "schema"),
    ("customer-empty", "customer_id", "", "schema"),
    ("customer-number", "customer_id", 42, "schema"),
    ("priority-urgent", "priority", "urgent", "schema"),
    ("vip-maybe", "vip", "maybe", "schema"),
    ("amount-negative", "amount", "-0.01", "schema"),
    ("amount-nan", "amount", "NaN", "schema"),
    ("amount-words", "amount", "a lot", "schema"),
    ("phone-number", "customer_phone", 13800000000, "schema"),
    ("ship-to-object", "ship_to", {"city": "佛山"}, "schema"),
]


@hostile_class("types")
def _types(ev: Events) -> list[FuzzRecord]:
    out = [
        one(
            ev,
            f"types/{field}={text.decode()}",
            fate,
            value=lambda e, f=field, t=text: splice(e, f, t),
        )
        for field, text, fate in WRONG_TYPES
    ]
    out += [
        one(
            ev,
            f"types/order.{name}",
            fate,
            source="erp",
            order=ev.order(**{field: value}),
        )
        for name, field, value, fate in ORDER_TYPES
    ]
    return out


# --- status labels ------------------------------------------------------------------------


def _full_width(text: str) -> str:
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in text)


@hostile_class("status")
def _status(ev: Events) -> list[FuzzRecord]:
    return [
        one(ev, "status/full-width", "unknown_status", source="erp", status=_full_width("CREATED")),
        one(ev, "status/ideographic-spaces", FRESH, source="crm", status="\u3000NEW\u3000"),
        one(ev, "status/case-and-padding", FRESH, source="wms", status=" \tpicking\n"),
        one(ev, "status/zero-width", "unknown_status", source="logistics", status="SIGNED\u200b"),
        one(ev, "status/unknown", "unknown_status", status="TELEPORTED"),
        one(ev, "status/another-source's", "unknown_status", source="erp", status="SIGNED"),
        one(ev, "status/128", "unknown_status", status="S" * 128),
        one(ev, "status/129", "schema", status="S" * 129),
        one(ev, "status/dotted-i", "unknown_status", source="wms", status="PİCKING"),
    ]


# --- JSON syntax --------------------------------------------------------------------------


def _json(text: bytes) -> Callable[[dict[str, Any]], bytes]:
    return lambda e: text


def _attr(text: bytes) -> Callable[[dict[str, Any]], bytes]:
    return lambda e: splice(e, "attrs", b'{"x":' + text + b"}")


def _line_qty(text: bytes) -> Callable[[dict[str, Any]], bytes]:
    return lambda e: orjson.dumps(e).replace(b'"qty":1', b'"qty":' + text)


@hostile_class("syntax")
def _syntax(ev: Events) -> list[FuzzRecord]:
    def cut(event: dict[str, Any]) -> bytes:
        raw = orjson.dumps(event)
        return raw[: ev.rng.randrange(1, len(raw))]

    first_status = lambda e: b'{"status":"BOGUS",' + orjson.dumps(e)[1:]  # noqa: E731
    last_status = lambda e: orjson.dumps(e)[:-1] + b',"status":"BOGUS"}'  # noqa: E731
    last_source = lambda e: orjson.dumps(e)[:-1] + b',"source":"erp"}'  # noqa: E731
    return [
        one(ev, "syntax/truncated", "invalid_json", value=cut),
        one(
            ev,
            "syntax/trailing-comma",
            "invalid_json",
            value=lambda e: orjson.dumps(e)[:-1] + b",}",
        ),
        one(ev, "syntax/two-objects", "invalid_json", value=lambda e: orjson.dumps(e) * 2),
        one(
            ev,
            "syntax/single-quotes",
            "invalid_json",
            value=lambda e: orjson.dumps(e).replace(b'"', b"'"),
        ),
        one(ev, "syntax/comment", "invalid_json", value=lambda e: b"/* hi */" + orjson.dumps(e)),
        one(ev, "syntax/empty", "invalid_json", value=_json(b"")),
        one(ev, "syntax/whitespace", "invalid_json", value=_json(b" \n\t\r" * 100)),
        one(ev, "syntax/tombstone", "invalid_json", value=lambda e: None),
        one(ev, "syntax/array", "schema", value=lambda e: orjson.dumps([e])),
        one(ev, "syntax/string", "schema", value=lambda e: orjson.dumps(orjson.dumps(e).decode())),
        one(ev, "syntax/number", "schema", value=_json(b"42")),
        one(ev, "syntax/null", "schema", value=_json(b"null")),
        one(ev, "syntax/true", "schema", value=_json(b"true")),
        one(ev, "syntax/empty-object", "schema", value=_json(b"{}")),
        # Not JSON (RFC 8259), though Python's json and pydantic's parser take them.
        one(ev, "syntax/nan", "invalid_json", value=_attr(b"NaN")),
        one(ev, "syntax/infinity", "invalid_json", value=_attr(b"Infinity")),
        one(ev, "syntax/-infinity", "invalid_json", value=_attr(b"-Infinity")),
        one(ev, "syntax/1e400", "invalid_json", value=_attr(b"1e400")),
        one(ev, "syntax/qty-infinity", "invalid_json", source="erp", value=_line_qty(b"Infinity")),
        one(ev, "syntax/qty-nan", "schema", source="erp", value=_line_qty(b"NaN")),
        one(ev, "syntax/big-int", FRESH, value=_attr(str(2**80).encode())),
        one(ev, "syntax/-big-int", FRESH, value=_attr(str(-(2**70)).encode())),
        one(ev, "syntax/1e308", FRESH, value=_attr(b"1e308")),
        one(ev, "syntax/1e-400", FRESH, value=_attr(b"1e-400")),
        one(ev, "syntax/-0.0", FRESH, value=_attr(b"-0.0")),
        one(ev, "syntax/many-digits", FRESH, value=_attr(b"0." + b"1" * 4000)),
        # Duplicate keys: the last one counts, for the schema and for what is forwarded.
        one(ev, "syntax/duplicate-key-last-valid", FRESH, value=first_status),
        one(ev, "syntax/duplicate-key-last-bogus", "unknown_status", value=last_status),
        one(ev, "syntax/duplicate-source", "wrong_topic", source="crm", value=last_source),
    ]


# --- fields -------------------------------------------------------------------------------

REQUIRED = ("event_id", "source", "order_ref", "status", "occurred_at")
# Names ingest itself writes into the events it forwards: sent by a producer, they are kept
# as unknown fields, or overwritten.
INTERNAL = {
    "stage": "bogus",
    "marker": "bogus",
    "phase": "bogus",
    "occurred_us": "soon",
    "order_id": 5,
    "received_at": "never",
    "linked_us": "soon",
}
MARKERS = {"erp": "库存不足", "crm": "CLOSED", "wms": "SHORT_PICK", "logistics": "EXCEPTION"}


@hostile_class("fields")
def _fields(ev: Events) -> list[FuzzRecord]:
    out = [one(ev, f"fields/missing-{name}", "schema", drop=(name,)) for name in REQUIRED]
    out += [
        one(ev, "fields/unknown", FRESH, x_vendor={"a": [1, {"b": None}]}, Status="x", _id=1),
        one(ev, "fields/erp-on-crm-topic", "wrong_topic", source="crm", value=_as_source("erp")),
        one(
            ev,
            "fields/logistics-on-wms-topic",
            "wrong_topic",
            source="wms",
            value=_as_source("logistics"),
        ),
        one(ev, "fields/empty-erp-order-id", "schema", source="crm", erp_order_id=""),
        one(ev, "fields/null-erp-order-id", HELD, source="wms", erp_order_id=None),
        one(ev, "fields/odd-refs", FRESH, order_ref=f"\x00time|{ev.ref('x')}", erp_order_id="a|b"),
        one(
            ev,
            "fields/phone-garbage",
            ACCEPTED,
            source="erp",
            order=ev.order(customer_phone="+86 abc ☎" * 50, ship_to="电话13800138000" * 20),
        ),
    ]
    for source, label in MARKERS.items():
        # A stage or marker of its own beside a status ingest maps: ingest's reading wins.
        out.append(
            one(ev, f"fields/internal-{source}", FRESH, source=source, status=label, **INTERNAL)
        )
        out.append(
            one(ev, f"fields/stage-{source}", FRESH, source=source, status=label, stage="delivered")
        )
    return out


def _as_source(source: str) -> Callable[[dict[str, Any]], bytes]:
    return lambda e: orjson.dumps({**e, "source": source})


# --- numbers the schema takes --------------------------------------------------------------


@hostile_class("numbers")
def _numbers(ev: Events) -> list[FuzzRecord]:
    def line(qty: Any, price: Any) -> list[dict[str, Any]]:
        return [{"sku": "SKU-1", "qty": qty, "unit_price": price}]

    return [
        one(ev, f"numbers/{name}", ACCEPTED, source="erp", order=ev.order(**over))
        for name, over in [
            ("amount-1e30", {"amount": "1e30"}),
            ("amount-25-digits", {"amount": "9" * 25 + ".99"}),
            ("amount-tiny", {"amount": "0.000000000000000001"}),
            ("price-1e999999", {"lines": line(1, "1e999999")}),
            ("qty-1e308", {"lines": line(1e308, "1")}),
            ("qty-1e-300", {"lines": line(1e-300, "1")}),
            ("amount-number", {"amount": 1e300}),
        ]
    ]


# --- Kafka keys ----------------------------------------------------------------------------


@hostile_class("keys")
def _keys(ev: Events) -> list[FuzzRecord]:
    binary = bytes(ev.rng.randrange(256) for _ in range(64))
    return [
        one(ev, "keys/none", FRESH, key=None),
        one(ev, "keys/empty", FRESH, key=b""),
        one(ev, "keys/binary", FRESH, key=binary),
        one(ev, "keys/another-reference", FRESH, key=b"SO-SOMEONE-ELSE"),
        one(ev, "keys/binary-bad-value", "invalid_json", key=binary, value=_json(b"\xff")),
        one(ev, "keys/none-bad-value", "invalid_json", key=None, value=_json(b"{")),
        one(ev, "keys/binary-unknown-status", "unknown_status", key=binary, status="??"),
    ]


@hostile_class("keys/huge", once=True)
def _huge_keys(ev: Events) -> list[FuzzRecord]:
    huge = b"K" * 900_000
    return [
        one(ev, "keys/100kB", FRESH, key=b"k" * 100_000),
        one(ev, "keys/900kB", FRESH, key=huge),
        # Held in ingest's state with its key, until its order's details come (never).
        one(ev, "keys/900kB-held", HELD, source="erp", key=huge, drop=("order",)),
        one(ev, "keys/900kB-bad-value", "invalid_json", key=huge, value=_json(b"[")),
    ]
