"""Row mappers for the ClickHouse tables: shapes, types and masking, no database needed."""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import orjson
import pytest

from schemas.anomalies import Anomaly
from sinks import rows
from tests.phones import PHONES

T0 = datetime(2026, 11, 20, 8, 0, tzinfo=UTC)
PHONE = "13800138000"
STREET = "建国路88号院3号楼"
ADDRESS = "北京市朝阳区" + STREET


def erp_event(**extra: object) -> dict[str, object]:
    event: dict[str, object] = {
        "event_id": "erp-1",
        "source": "erp",
        "order_ref": "SO-1",
        "erp_order_id": "SO-1",
        "order_id": "SO-1",
        "status": "CREATED",
        "occurred_at": "2026-11-20T16:00:00+08:00",
        "received_at": "2026-11-20T08:00:01.250000+00:00",
        "stage": "placed",
        "phase": "open",
        "order": {
            "customer_id": "C-9",
            "channel": "douyin",
            "lines": [{"sku": "SKU-1", "qty": 1, "unit_price": "19.90"}],
            "amount": "19.90",
            "currency": "CNY",
            "customer_phone": "+86 138-0013-8000",
            "ship_to": ADDRESS,
            "vip": True,
        },
    }
    event.update(extra)
    return event


def assert_clear_of_pii(text: str) -> None:
    assert PHONE not in text
    assert "138-0013-8000" not in text
    assert STREET not in text
    assert "建国路" not in text


def test_every_mapper_fills_exactly_its_table_columns() -> None:
    anomaly = make_anomaly()
    produced = {
        "events": rows.event_row(erp_event(), phones=PHONES),
        "order_state": rows.order_state_row(
            "SO-1",
            systems={"erp": {"stage": "placed", "phase": "open", "updated_at": T0}},
            consistent=True,
            version=1,
            placed_at=T0,
            phones=PHONES,
        ),
        "refresh_latency": rows.latency_row(
            "SO-1",
            target="crm",
            phase="open",
            erp_event_id="e",
            target_event_id="c",
            t0=T0,
            t1=T0,
        ),
        "anomalies": rows.anomaly_row(anomaly),
        "duplicate_pairs": rows.duplicate_pair_row(
            "p", order_a="a", order_b="b", placed_a=T0, placed_b=T0, detected_at=T0, phones=PHONES
        ),
        "kpi_snapshots": rows.kpi_row(T0, "consistency_ratio", 0.99),
        "breaker_history": rows.breaker_row(
            T0, stage=1, event="warn", orders_created=1, allocated=1, allocation_failed=0
        ),
        "dead_letters": rows.dead_letter_row(
            topic="t",
            partition=0,
            offset=1,
            key=b"k",
            reason="schema",
            error="e",
            received_at=T0,
            original=b"{}",
        ),
    }
    assert set(produced) == set(rows.TABLE_COLUMNS)
    for table, row in produced.items():
        assert tuple(row) == rows.TABLE_COLUMNS[table], table


def test_event_row_maps_typed_columns() -> None:
    row = rows.event_row(erp_event(), phones=PHONES)
    assert row["event_id"] == "erp-1"
    assert row["order_id"] == "SO-1"
    assert row["occurred_at"] == T0
    assert row["occurred_at"].tzinfo is UTC
    assert row["received_at"] == T0 + timedelta(seconds=1.25)
    assert row["amount"] == Decimal("19.90")
    assert (row["channel"], row["customer_id"], row["currency"]) == ("douyin", "C-9", "CNY")
    assert (row["stage"], row["marker"], row["phase"]) == ("placed", "", "open")
    assert row["phone_hash"] == PHONES.phone_hash(PHONE)
    assert row["ship_to_masked"] == "北京市朝阳区***"


def test_event_row_raw_is_masked_and_keeps_everything_else() -> None:
    event = erp_event(
        attrs={
            "contact": {"mobile": "13900139000", "backup_tel": "010-12345678"},
            "note": f"客户来电 {PHONE}，请改地址",
            "receiver_address": {"province": "北京市", "city": "北京市", "street": STREET},
        },
        custom_field=42,
    )
    row = rows.event_row(event, phones=PHONES)
    raw = orjson.loads(row["raw"])
    assert_clear_of_pii(row["raw"])
    assert "13900139000" not in row["raw"]
    assert "12345678" not in row["raw"]
    assert raw["order"]["customer_phone"] == "138****8000"
    assert raw["order"]["ship_to"] == "北京市朝阳区***"
    assert raw["attrs"]["contact"]["mobile"] == "139****9000"
    assert raw["attrs"]["note"] == "客户来电 138****8000，请改地址"
    assert raw["attrs"]["receiver_address"] == {
        "province": "北京市",
        "city": "北京市",
        "street": "***",
    }
    assert raw["custom_field"] == 42
    assert raw["order"]["lines"] == [{"sku": "SKU-1", "qty": 1, "unit_price": "19.90"}]


def test_event_row_is_deterministic_and_accepts_a_model() -> None:
    from schemas.events import NormalizedEvent

    event = erp_event()
    assert rows.event_row(event, phones=PHONES) == rows.event_row(dict(event), phones=PHONES)
    model = NormalizedEvent.model_validate(event)
    from_model = rows.event_row(model, phones=PHONES)
    assert from_model["phone_hash"] == PHONES.phone_hash(PHONE)
    assert from_model["occurred_at"] == T0
    assert_clear_of_pii(from_model["raw"])


def test_event_without_order_or_tracking() -> None:
    row = rows.event_row(
        {
            "event_id": "w-1",
            "source": "logistics",
            "order_ref": "SF123",
            "erp_order_id": "SO-1",
            "status": "IN_TRANSIT",
            "occurred_at": "2026-11-20T08:00:00Z",
            "tracking": {"carrier": "SF", "tracking_no": "SF1380013800012"},
            "marker": "delivery_exception",
        },
        phones=PHONES,
    )
    assert row["order_id"] == "SO-1"
    assert row["amount"] is None
    assert row["received_at"] == row["occurred_at"] == T0
    assert (row["carrier"], row["tracking_no"]) == ("SF", "SF1380013800012")
    assert orjson.loads(row["raw"])["tracking"]["tracking_no"] == "SF1380013800012"
    assert (row["stage"], row["marker"]) == ("", "delivery_exception")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"call {PHONE} now", "call 138****8000 now"),
        ("call +86 138 0013 8000", "call 138****8000"),
        ("tel 0086-13800138000.", "tel 138****8000."),
        ("office 0755-12345678", "office 075*****5678"),
        ("order SO1380013800012 tracking", "order SO1380013800012 tracking"),
        ("amount 12345678901", "amount 12345678901"),
        (f"送到{ADDRESS}，谢谢", "送到北京市朝***，谢谢"),
        ("状态：已发货", "状态：已发货"),
        ("", ""),
    ],
)
def test_scrub_text(text: str, expected: str) -> None:
    assert rows.scrub_text(text) == expected


def test_ids_that_look_like_phones_are_left_alone() -> None:
    body = {"order_ref": PHONE, "event_id": PHONE, "lines": [{"sku": PHONE}]}
    assert rows.scrub(body) == body


def nested(depth: int, leaf: object) -> object:
    """`leaf` inside `depth` objects, alternating with lists, built without recursion."""
    value = leaf
    for level in range(depth):
        value = {"a": value} if level % 2 else [value]
    return value


def depth_of(value: object) -> int:
    """Containers nested in `value`, counted without recursion."""
    deepest, todo = 0, [(value, 0)]
    while todo:
        item, depth = todo.pop()
        deepest = max(deepest, depth)
        if isinstance(item, dict):
            todo += [(v, depth + 1) for v in item.values()]
        elif isinstance(item, list):
            todo += [(v, depth + 1) for v in item]
    return deepest


def test_scrub_survives_any_nesting_and_bounds_it() -> None:
    """A poison pill: 5,000 levels exhausted the stack (RecursionError) and stopped the stage."""
    body = {"phone": PHONE, "attrs": nested(5000, {"mobile": PHONE, "note": f"call {PHONE}"})}
    scrubbed = rows.scrub(body)
    assert scrubbed["phone"] == "138****8000"
    assert depth_of(scrubbed) == rows.MAX_SCRUB_DEPTH
    assert rows.TOO_DEEP in rows.masked_json(body)
    # Within the bound, what is deep is masked like what is shallow.
    shallow = rows.scrub(nested(150, {"mobile": PHONE, "note": f"call {PHONE}"}))
    assert PHONE not in orjson.dumps(shallow).decode()
    assert "138****8000" in orjson.dumps(shallow).decode()


@pytest.mark.parametrize("depth", [300, 900])
def test_dead_letter_of_deeply_nested_json_is_stored_masked(depth: int) -> None:
    """JSON orjson parses (up to 1,024 levels) but pydantic rejects: the dead-letter row is
    made, its body masked and cut at MAX_SCRUB_DEPTH (before: TypeError past orjson's 254
    levels on the way out, RecursionError past ~490 on the way in)."""
    pairs = depth // 2  # an object and a list per pair
    raw = b'{"phone": "%s", "attrs": %s"x"%s}' % (PHONE.encode(), b'{"a":[' * pairs, b"]}" * pairs)
    row = rows.dead_letter_row(
        topic="t.crm.events",
        partition=0,
        offset=7,
        key=b"CS-1",
        reason="invalid_json",
        error="recursion limit exceeded",
        received_at=T0,
        original=raw,
    )
    stored = orjson.loads(base64.b64decode(row["original_b64"]))
    assert stored["phone"] == "138****8000"
    assert depth_of(stored) == rows.MAX_SCRUB_DEPTH
    assert row["original_sha256"] == hashlib.sha256(raw).hexdigest()


def test_customer_id_that_is_a_phone_is_hashed() -> None:
    assert rows.safe_customer_id("C-1", phones=PHONES) == "C-1"
    assert rows.safe_customer_id(None, phones=PHONES) == ""
    hashed = rows.safe_customer_id("+86 138-0013-8000", phones=PHONES)
    assert hashed == "phone:" + PHONES.phone_hash(PHONE)[:16]
    assert rows.safe_customer_id(PHONE, phones=PHONES) == hashed


def test_order_state_row() -> None:
    row = rows.order_state_row(
        "SO-1",
        systems={
            "erp": {"stage": "shipped", "phase": "shipped", "updated_at": T0},
            "crm": {"stage": "picking", "phase": "fulfilling", "updated_at": "2026-11-20T09:00Z"},
        },
        consistent=False,
        version=7,
        customer_id="C-9",
        channel="website",
        vip=True,
        priority="rush",
        customer_phone=PHONE,
        placed_at=T0 - timedelta(hours=5),
        phones=PHONES,
    )
    assert row["updated_at"] == T0 + timedelta(hours=1)
    assert (row["erp_phase"], row["crm_phase"], row["wms_phase"]) == ("shipped", "fulfilling", "")
    assert row["wms_updated_at"] is None
    assert (row["consistent"], row["vip"], row["version"]) == (0, 1, 7)
    assert row["phone_hash"] == PHONES.phone_hash(PHONE)
    with pytest.raises(ValueError, match="unknown systems"):
        rows.order_state_row("SO-1", systems={"pos": {}}, consistent=True, version=1, phones=PHONES)
    with pytest.raises(ValueError, match="no placed_at"):
        rows.order_state_row("SO-1", systems={}, consistent=True, version=1, phones=PHONES)


def test_latency_row_clamps_clock_skew() -> None:
    row = rows.latency_row(
        "SO-1",
        target="crm",
        phase="shipped",
        erp_event_id="e",
        target_event_id="c",
        t0=T0,
        t1=T0 + timedelta(seconds=47),
    )
    assert (row["latency_seconds"], row["skew"]) == (47.0, 0)
    skewed = rows.latency_row(
        "SO-1",
        target="crm",
        phase="shipped",
        erp_event_id="e",
        target_event_id="c",
        t0=T0,
        t1=T0 - timedelta(seconds=3),
    )
    assert (skewed["latency_seconds"], skewed["skew"]) == (0.0, 1)


def make_anomaly(**changes: object) -> Anomaly:
    data: dict[str, object] = {
        "anomaly_id": "missing_in_system-abc",
        "type": "missing_in_system",
        "state": "open",
        "severity": "warning",
        "order_id": "SO-1",
        "systems": ["erp", "crm"],
        "opened_at": T0,
        "detected_at": T0 + timedelta(minutes=16),
        "route": {"team": "customer_service", "rule": "crm_missing"},
        "evidence": [
            {"source": "erp", "event_id": "e1", "status": "CREATED", "occurred_at": T0},
        ],
        "summary": f"CRM has not seen SO-1 (customer {PHONE}) for 16 minutes",
    }
    data.update(changes)
    return Anomaly.model_validate(data)


def test_anomaly_row_masks_text_and_versions_grow_along_the_lifecycle() -> None:
    opened = make_anomaly()
    row = rows.anomaly_row(opened)
    assert row["summary"] == "CRM has not seen SO-1 (customer 138****8000) for 16 minutes"
    assert row["systems"] == ["erp", "crm"]
    assert (row["team"], row["rule"], row["resolved_at"]) == (
        "customer_service",
        "crm_missing",
        None,
    )
    assert orjson.loads(row["evidence"])[0]["event_id"] == "e1"
    assert rows.anomaly_row(opened.model_dump(mode="json")) == row

    critical = make_anomaly(severity="critical")
    decided = make_anomaly(
        severity="critical",
        decisions=[{"kind": "anomaly.ack", "by": "li", "note": f"called {PHONE}"}],
    )
    resolved = make_anomaly(state="resolved", severity="info", resolved_at=T0 + timedelta(hours=1))
    versions = [rows.anomaly_row(a)["version"] for a in (opened, critical, decided, resolved)]
    assert versions == sorted(versions)
    assert len(set(versions)) == 4
    assert PHONE not in rows.anomaly_row(decided)["decisions"]
    assert rows.anomaly_row(opened, version=99)["version"] == 99


def test_duplicate_pair_row() -> None:
    row = rows.duplicate_pair_row(
        "dup-1",
        order_a="A",
        order_b="B",
        placed_a=T0,
        placed_b=T0 - timedelta(minutes=2),
        detected_at=T0,
        customer_id=PHONE,
        channel_a="douyin",
        channel_b="website",
        phones=PHONES,
    )
    assert row["gap_seconds"] == 120.0
    assert row["customer_id"].startswith("phone:")
    assert (
        row["version"]
        < rows.duplicate_pair_row(
            "dup-1",
            order_a="A",
            order_b="B",
            placed_a=T0,
            placed_b=T0,
            detected_at=T0,
            state="merged",
            phones=PHONES,
        )["version"]
    )


def test_breaker_row_computes_failure_rate() -> None:
    row = rows.breaker_row(
        T0, stage=1, event="warn", orders_created=2300, allocated=900, allocation_failed=100
    )
    assert row["failure_rate"] == pytest.approx(0.1)
    idle = rows.breaker_row(
        T0, stage=0, event="evaluate", orders_created=0, allocated=0, allocation_failed=0
    )
    assert idle["failure_rate"] == 0.0


def test_dead_letter_row_masks_json_original_and_keeps_its_fingerprint() -> None:
    original = orjson.dumps(erp_event(status="???"))
    row = rows.dead_letter_row(
        topic="concord.erp.events",
        partition=3,
        offset=17,
        key=b"SO-1",
        reason="unknown_status",
        error=f"status '???' unknown for {PHONE}",
        received_at="2026-11-20T08:00:00+00:00",
        original=original,
    )
    stored = base64.b64decode(row["original_b64"]).decode()
    assert_clear_of_pii(stored)
    assert_clear_of_pii(row["error"])
    assert orjson.loads(stored)["status"] == "???"
    assert row["original_sha256"] == hashlib.sha256(original).hexdigest()
    assert row["original_size"] == len(original)
    assert row["key"] == "SO-1"


def test_dead_letter_row_masks_text_that_is_not_json() -> None:
    original = f'{{"event_id": "x", "ship_to": "{ADDRESS}", "phone": "{PHONE}", '.encode()
    row = rows.dead_letter_row(
        topic="t",
        partition=0,
        offset=0,
        key=None,
        reason="invalid_json",
        error="EOF",
        received_at=T0,
        original=original,
    )
    stored = base64.b64decode(row["original_b64"]).decode()
    assert_clear_of_pii(stored)
    assert '"ship_to": "北京市朝阳区***"' in stored
    empty = rows.dead_letter_row(
        topic="t",
        partition=0,
        offset=1,
        key=None,
        reason="invalid_json",
        error="empty",
        received_at=T0,
        original=None,
    )
    assert (empty["original_b64"], empty["original_size"], empty["key"]) == ("", 0, "")


def test_utc_accepts_strings_naive_and_offsets() -> None:
    assert rows.utc("2026-11-20T08:00:00Z") == T0
    assert rows.utc(datetime(2026, 11, 20, 8, 0)) == T0
    assert rows.utc(datetime(2026, 11, 20, 16, 0, tzinfo=timezone(timedelta(hours=8)))) == T0
    assert rows.utc("2026-11-20T16:00:00+08:00").tzinfo is UTC
    with pytest.raises(TypeError):
        rows.utc(12345)  # type: ignore[arg-type]
