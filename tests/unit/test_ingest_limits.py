"""What one input record may cost: size, depth, string length, lines and time, each with its
own dead-letter reason, checked before the work the record would cause."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from schemas.events import ChangeEvent
from schemas.stages import Source
from schemas.status_map import default_status_map
from streams.rules.ingest import IngestRules, InputLimits, Reason, Rejection

RULES = IngestRules(default_status_map())
RECEIVED = datetime(2026, 3, 2, 12, tzinfo=UTC)
AT = "2026-03-02T11:00:00+00:00"


def _crm(**extra: Any) -> dict[str, Any]:
    return {
        "event_id": "c1",
        "source": "crm",
        "order_ref": "CS-1",
        "erp_order_id": "SO1",
        "status": "NEW",
        "occurred_at": AT,
        **extra,
    }


def _erp(lines: int = 1, **order: Any) -> dict[str, Any]:
    return {
        "event_id": "e1",
        "source": "erp",
        "order_ref": "SO1",
        "status": "CREATED",
        "occurred_at": AT,
        "order": {
            "customer_id": "W1",
            "channel": "website",
            "lines": [{"sku": f"BRK-{i}", "qty": 1, "unit_price": "1.00"} for i in range(lines)],
            "amount": "1.00",
            "currency": "CNY",
            **order,
        },
    }


def _decode(raw: bytes, rules: IngestRules = RULES, source: Source = Source.CRM) -> Any:
    return rules.decode(raw, source, RECEIVED)


def _reason(raw: bytes, rules: IngestRules = RULES, source: Source = Source.CRM) -> Reason | None:
    decoded = _decode(raw, rules, source)
    return decoded.reason if isinstance(decoded, Rejection) else None


def _nested(depth: int) -> bytes:
    # An event whose attrs take the whole object to `depth` levels (the event itself is 1).
    inner = b'{"a":' * (depth - 1) + b"1" + b"}" * (depth - 1)
    return orjson.dumps(_crm(attrs=0)).replace(b'"attrs":0', b'"attrs":' + inner)


# --- size ------------------------------------------------------------------------------------


def test_a_record_over_the_byte_limit_is_too_large_before_it_is_parsed():
    small = IngestRules(default_status_map(), limits=InputLimits(record_bytes=300))
    fits = orjson.dumps(_crm(attrs={"pad": ""}))
    fits = orjson.dumps(_crm(attrs={"pad": "x" * (300 - len(fits))}))
    assert len(fits) == 300
    assert isinstance(_decode(fits, small), ChangeEvent)
    over = fits.replace(b'"pad":"', b'"pad":"x')
    assert _reason(over, small) is Reason.TOO_LARGE
    # Not even JSON: refused on its size alone, not parsed.
    assert _reason(b"{" + b" " * 400, small) is Reason.TOO_LARGE


# --- depth -----------------------------------------------------------------------------------


def test_nesting_at_the_limit_is_taken_and_one_deeper_is_too_deep():
    assert isinstance(_decode(_nested(32)), ChangeEvent)
    assert _reason(_nested(33)) is Reason.TOO_DEEP


@pytest.mark.parametrize("depth", [900, 5000, 100_000])
def test_a_value_nested_thousands_deep_is_too_deep_not_invalid_json(depth: int):
    # Before: the JSON parser's own limit called it invalid_json (and later stages recursed
    # into it). The depth is read off the bytes without recursion.
    decoded = _decode(_nested(depth))
    assert isinstance(decoded, Rejection)
    assert decoded.reason is Reason.TOO_DEEP
    assert decoded.error == f"JSON nested {depth} deep, more than the limit of 32"


def test_brackets_inside_strings_are_not_nesting():
    text = "[{" * 40 + '\\"' + "}]" * 40  # an escaped quote does not end the string
    assert isinstance(_decode(orjson.dumps(_crm(reason=text))), ChangeEvent)


def test_arrays_count_as_nesting_like_objects():
    value: Any = 1
    for _ in range(30):  # the event, attrs and 30 arrays: 32 deep
        value = [value]
    assert isinstance(_decode(orjson.dumps(_crm(attrs={"a": value}))), ChangeEvent)
    assert _reason(orjson.dumps(_crm(attrs={"a": [value]}))) is Reason.TOO_DEEP


# --- strings ---------------------------------------------------------------------------------


def test_a_string_at_the_limit_is_taken_and_one_byte_more_is_too_long():
    assert isinstance(_decode(orjson.dumps(_crm(reason="x" * 4096))), ChangeEvent)
    decoded = _decode(orjson.dumps(_crm(reason="x" * 4097)))
    assert isinstance(decoded, Rejection)
    assert decoded.reason is Reason.TOO_LONG
    assert decoded.error == "a string of 4097 bytes, more than the limit of 4096"


def test_string_length_is_counted_in_bytes_as_written():
    # 1,366 CJK characters are 4,098 bytes in UTF-8; as \\u escapes they are 8,196.
    text = "订" * 1366
    assert _reason(orjson.dumps(_crm(reason=text))) is Reason.TOO_LONG
    assert isinstance(_decode(orjson.dumps(_crm(reason="订" * 1365))), ChangeEvent)


def test_a_long_key_is_too_long_as_well():
    assert _reason(orjson.dumps(_crm(attrs={"k" * 5000: 1}))) is Reason.TOO_LONG


def test_the_scan_stays_linear_on_an_unterminated_string_of_escaped_quotes():
    # Every quote after the first is escaped: a scanner restarting at each quote would take
    # ~10^11 steps here; this one reads the bytes once.
    raw = b'{"reason":"' + b'\\"' * 400_000
    assert _reason(raw) is Reason.TOO_LONG


# --- order lines -----------------------------------------------------------------------------


def test_an_order_with_more_lines_than_the_limit_is_refused_with_its_own_reason():
    assert isinstance(_decode(orjson.dumps(_erp(lines=1000)), source=Source.ERP), ChangeEvent)
    decoded = _decode(orjson.dumps(_erp(lines=1001)), source=Source.ERP)
    assert isinstance(decoded, Rejection)
    assert decoded.reason is Reason.TOO_MANY_LINES
    assert decoded.error == "1001 order lines, more than 1000"


# --- time ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "occurred_at",
    [
        0,  # epoch seconds
        -1,
        "0001-01-01T00:00:00Z",
        "1970-01-01T00:00:00+00:00",
        (RECEIVED - timedelta(days=400, seconds=1)).isoformat(),
        (RECEIVED + timedelta(minutes=5, seconds=1)).isoformat(),
        "9999-12-31T23:59:59Z",
    ],
)
def test_an_event_time_out_of_the_plausible_span_is_dead_lettered(occurred_at: object):
    decoded = _decode(orjson.dumps(_crm(occurred_at=occurred_at)))
    assert isinstance(decoded, Rejection)
    assert decoded.reason is Reason.IMPLAUSIBLE_TIME
    assert decoded.error.startswith("occurred_at ")


@pytest.mark.parametrize(
    "occurred_at",
    [
        (RECEIVED - timedelta(days=400)).isoformat(),
        (RECEIVED + timedelta(minutes=5)).isoformat(),
        RECEIVED.astimezone(UTC).timestamp(),
    ],
)
def test_the_span_is_inclusive(occurred_at: object):
    assert isinstance(_decode(orjson.dumps(_crm(occurred_at=occurred_at))), ChangeEvent)


@pytest.mark.parametrize("placed_at", ["0001-01-01T00:00:00Z", 0, "2030-01-01T00:00:00Z"])
def test_an_implausible_placed_at_is_dead_lettered_too(placed_at: object):
    decoded = _decode(orjson.dumps(_erp(placed_at=placed_at)), source=Source.ERP)
    assert isinstance(decoded, Rejection)
    assert decoded.reason is Reason.IMPLAUSIBLE_TIME
    assert decoded.error.startswith("order.placed_at ")


def test_the_span_is_a_setting():
    lenient = IngestRules(
        default_status_map(),
        limits=InputLimits(max_age=timedelta(days=365 * 100), max_ahead=timedelta(hours=1)),
    )
    for occurred_at in ("1970-01-01T00:00:00Z", "2026-03-02T12:59:00Z"):
        assert isinstance(
            _decode(orjson.dumps(_crm(occurred_at=occurred_at)), lenient), ChangeEvent
        )


def test_checks_run_cheapest_first():
    # Too large and too deep: refused for its size, the first check.
    small = IngestRules(default_status_map(), limits=InputLimits(record_bytes=1024))
    assert _reason(_nested(600), small) is Reason.TOO_LARGE
    # Too deep and implausible: the depth is read before the record is parsed.
    assert _reason(_nested(40).replace(AT.encode(), b"0001-01-01T00:00:00Z")) is Reason.TOO_DEEP
