"""streams.warehouse against real embedded ClickHouse (chdb): what the worker's stages hand over
lands in the right tables, masked, idempotently, and survives ClickHouse being down.

Inputs are made by the real rules (ingest, dead letters, the order join), so the records are
those on the topics. chdb hosts one engine per process: the module uses the process's engine
path if another module opened one, and a fresh database per test (as test_clickhouse does).
"""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from clickhouse_connect.driver import Client

from schemas.anomalies import Anomaly
from schemas.settings import Settings
from schemas.stages import Source
from schemas.status_map import load_status_map
from sinks.clickhouse import ClickHouseSink, UnsavedRowsError, connect
from sinks.rows import TABLE_COLUMNS
from streams import warehouse as warehouse_module
from streams.ingest import dead_letter
from streams.rules.ingest import IngestRules, Origin, RefState, Rejection
from streams.rules.order_state import OrderJoin, OrderState
from streams.rules.refresh_latency import Observation
from streams.rules.watermark import as_us
from streams.warehouse import Warehouse
from tests.phones import PHONES

pytestmark = pytest.mark.integration

PHONE = "+86 138-0013-8000"
CLEAR_PHONES = ("13800138000", "138-0013-8000", "138 0013 8000")
STREET = "建国路88号院3号楼"
# Recent enough for the tables' TTL; whole minutes keep the arithmetic exact.
T = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(hours=2)
RECEIVED = T + timedelta(hours=2)  # after the last event: ingest refuses times ahead of it


@pytest.fixture
def settings(dsn: str, tmp_path: Path) -> Iterator[Settings]:
    database = f"w_{uuid.uuid4().hex[:12]}"
    yield Settings(
        data_dir=tmp_path, clickhouse_dsn=dsn, clickhouse_database=database, clickhouse_enabled=True
    )
    admin = connect(dsn, database)
    admin.command(f"DROP DATABASE IF EXISTS {database} SYNC")
    admin.close()


@pytest.fixture
def client(settings: Settings) -> Iterator[Client]:
    ch = connect(settings.clickhouse_url, settings.clickhouse_database)
    yield ch
    ch.close()


# --- one order's day, through the real rules -----------------------------------------------


def _raw(source: str, event_id: str, status: str, minutes: int, **extra: Any) -> bytes:
    body = {
        "event_id": event_id,
        "source": source,
        "order_ref": "SO-1" if source == "erp" else f"{source.upper()}-9",
        "status": status,
        "occurred_at": (T + timedelta(minutes=minutes)).isoformat(),
        **extra,
    }
    if source != "erp":
        body["erp_order_id"] = "SO-1"
    return orjson.dumps(body)


ORDER = {
    "customer_id": "C-1",
    "channel": "website",
    "lines": [{"sku": "BRK-PAD-001", "qty": 2, "unit_price": "88.00"}],
    "amount": "176.00",
    "currency": "CNY",
    "customer_phone": PHONE,
    "ship_to": "北京市朝阳区" + STREET,
    "vip": True,
    "priority": "rush",
}

# Arrival order; the WMS's shipment arrives last although it happened before the carrier's
# scan, so the order's latest event time does not move with it (a version tie).
RAW_EVENTS = [
    _raw("erp", "e1", "CREATED", 0, order=ORDER),
    _raw("crm", "c1", "NEW", 2, attrs={"contact_phone": "13800138000"}),
    _raw("erp", "e2", "SHIPPED", 60, tracking={"carrier": "SF", "tracking_no": "SF123"}),
    _raw("logistics", "l1", "IN_TRANSIT", 90, tracking={"carrier": "SF", "tracking_no": "SF123"}),
    _raw("crm", "c2", "SHIPPED", 70),
    _raw("wms", "w1", "SHIPPED", 50),
]


def normalized_records() -> list[bytes]:
    """The events as ingest puts them on concord.normalized."""
    rules = IngestRules(load_status_map(None))
    states: dict[str, RefState] = {}
    out: list[bytes] = []
    for offset, raw in enumerate(RAW_EVENTS):
        event = rules.decode(raw, Source(orjson.loads(raw)["source"]), RECEIVED)
        assert not isinstance(event, Rejection)
        state = states.setdefault(event.source.value, RefState())
        applied = rules.apply(event, raw, state, RECEIVED, origin=Origin(0, offset, None))
        out += [orjson.dumps(body) for _, body in applied.forward]
    return out


def dead_letter_records() -> list[bytes]:
    """Two rejected inputs carrying a phone, as ingest puts them on concord.deadletter."""
    rules = IngestRules(load_status_map(None))
    unknown = _raw("crm", "c-bad", "WHATEVER", 5, attrs={"phone": "13800138000"})
    event = rules.decode(unknown, Source.CRM, RECEIVED)
    assert not isinstance(event, Rejection)
    applied = rules.apply(event, unknown, RefState(), RECEIVED, origin=Origin(3, 42, None))
    rejected = applied.rejection
    truncated = (
        b'{"event_id": "x", "customer_phone": "138 0013 8000", "ship_to": "'
        + ("北京市朝阳区" + STREET).encode()
    )
    broken = rules.decode(truncated, Source.ERP, RECEIVED)
    assert rejected is not None
    assert isinstance(broken, Rejection)
    return [
        dead_letter("t.crm.events", 3, 42, b"CRM-9", unknown, rejected, RECEIVED),
        dead_letter("t.erp.events", 0, 7, None, truncated, broken, RECEIVED),
    ]


def join(records: list[bytes]) -> tuple[list[OrderState], list[Observation]]:
    """The order's state after each event (copies) and every latency observation emitted."""
    state, joiner = OrderState(order_id="SO-1"), OrderJoin(PHONES)
    snapshots: list[OrderState] = []
    observations: list[Observation] = []
    for record in records:
        change = joiner.apply(state, orjson.loads(record))
        observations += change.observations
        snapshots.append(OrderState.from_json(state.to_json()))
    return snapshots, observations


def anomaly(state: str) -> bytes:
    body: dict[str, Any] = {
        "anomaly_id": "an-1",
        "type": "missing_in_system",
        "state": state,
        "severity": "warning",
        "order_id": "SO-1",
        "systems": ["erp", "wms"],
        "opened_at": (T + timedelta(minutes=60)).isoformat(),
        "detected_at": RECEIVED.isoformat(),
        "route": {"team": "warehouse", "rule": "missing_wms"},
        "evidence": [
            {"source": "erp", "event_id": "e2", "status": "SHIPPED", "occurred_at": T.isoformat()}
        ],
        "summary": "客户 13800138000 的订单 SO-1 仓库未见发货",
    }
    if state == "resolved":
        body["resolved_at"] = (T + timedelta(minutes=100)).isoformat()
    return Anomaly.model_validate(body).model_dump_json().encode()


def kpis() -> dict[str, Any]:
    """The shape of OrderStage.kpis()."""
    empty = {"count": 0, "median": None, "p95": None, "skew_count": 0}
    return {
        "watermark": (T + timedelta(minutes=90)).isoformat(),
        "orders_tracked": 1,
        "refresh_latency_seconds": {
            "crm": {
                "1h": {"count": 2, "median": 60.0, "p95": 120.0, "skew_count": 0},
                "24h": {"count": 3, "median": 90.0, "p95": 600.0, "skew_count": 1},
            },
            "wms": {"1h": empty, "24h": empty},
        },
        "consistency": {"ratio": 0.75, "population": 4, "consistent": 3, "disagreeing": {}},
        "auto_routing": {"ratio": None, "opened": 0, "routed": 0},
        "ghost_orders": {},
        "silent_sources": [],
    }


def feed(
    wh: Warehouse,
    records: list[bytes],
    states: list[OrderState],
    observations: list[Observation],
) -> None:
    """A batch's worth of everything, as the stages would hand it over."""
    decision = orjson.dumps({"decision": {"decision_id": "d-1"}, "order_id": "SO-1"})
    wh.topic_records("normalized", [*records, decision])  # decisions share the topic
    wh.topic_records("deadletter", dead_letter_records())
    wh.order_states((s, bool(s.consistent)) for s in states)
    wh.latencies(observations)
    wh.kpis(T + timedelta(minutes=90), kpis())


def table_rows(client: Client) -> dict[str, list[tuple[Any, ...]]]:
    """Every table read with FINAL, rows sorted."""
    out = {}
    for table, columns in TABLE_COLUMNS.items():
        cols = ", ".join(f"`{c}`" for c in columns)
        result = client.query(f"SELECT {cols} FROM {table} FINAL").result_rows
        out[table] = sorted(result, key=repr)
    return out


def column(client: Client, sql: str) -> list[Any]:
    """A query's rows: values for one column, tuples for more."""
    return [row[0] if len(row) == 1 else tuple(row) for row in client.query(sql).result_rows]


# --- tests ---------------------------------------------------------------------------------


async def test_every_kind_of_row_lands_masked_and_a_redelivery_changes_nothing(
    settings: Settings, client: Client
) -> None:
    records = normalized_records()
    states, observations = join(records)
    wh = Warehouse(settings, PHONES)
    await wh.start()
    feed(wh, records, states[:1], observations)
    await wh.before_commit()
    # The order changes batch by batch: one insert each, so versions compete across parts.
    for state in states[1:]:
        wh.order_states([(state, bool(state.consistent))])
        await wh.before_commit()
    wh.topic_records("anomalies", [anomaly("open")])
    await wh.before_commit()
    wh.topic_records("anomalies", [anomaly("resolved")])
    await wh.before_commit()
    assert wh.backlog_rows == 0

    events = column(
        client,
        "SELECT source, event_id, order_id, stage, phase, channel, phone_hash, ship_to_masked "
        "FROM events FINAL ORDER BY occurred_at",
    )
    assert events == [
        (
            "erp",
            "e1",
            "SO-1",
            "placed",
            "open",
            "website",
            PHONES.phone_hash(PHONE),
            "北京市朝阳区***",
        ),
        ("crm", "c1", "SO-1", "placed", "open", "", "", ""),
        ("wms", "w1", "SO-1", "shipped", "shipped", "", "", ""),
        ("erp", "e2", "SO-1", "shipped", "shipped", "", "", ""),
        ("crm", "c2", "SO-1", "shipped", "shipped", "", "", ""),
        ("logistics", "l1", "SO-1", "in_transit", "shipped", "", "", ""),
    ]

    (state,) = client.query(
        "SELECT erp_phase, crm_phase, wms_phase, logistics_stage, consistent, customer_id, "
        "channel, vip, priority, phone_hash, placed_at, updated_at, version "
        "FROM order_state FINAL"
    ).named_results()
    # The WMS's late event did not raise the version (a tie), yet the newest state won.
    assert state == {
        "erp_phase": "shipped",
        "crm_phase": "shipped",
        "wms_phase": "shipped",
        "logistics_stage": "in_transit",
        "consistent": 1,
        "customer_id": "C-1",
        "channel": "website",
        "vip": 1,
        "priority": "rush",
        "phone_hash": PHONES.phone_hash(PHONE),
        "placed_at": T,
        "updated_at": T + timedelta(minutes=90),
        "version": as_us(T + timedelta(minutes=90)),
    }

    latencies = column(
        client,
        "SELECT order_id, target, phase, erp_event_id, target_event_id, latency_seconds, skew "
        "FROM refresh_latency FINAL ORDER BY target, phase",
    )
    final = {o.key: o for o in observations}.values()  # a revision replaces its observation
    assert latencies == sorted(
        (
            o.order_id,
            o.target,
            o.phase,
            o.erp_event_id,
            o.target_event_id,
            o.latency_seconds,
            o.skew,
        )
        for o in final
    )
    assert ("SO-1", "crm", "shipped", "e2", "c2", 600.0, 0) in latencies
    assert ("SO-1", "wms", "shipped", "e2", "w1", 0.0, 1) in latencies  # before the ERP: skew

    assert column(client, "SELECT state, version > 0, resolved_at FROM anomalies FINAL") == [
        ("resolved", 1, T + timedelta(minutes=100))
    ]
    dead = "SELECT topic, `partition`, `offset`, key, reason FROM dead_letters FINAL ORDER BY 1"
    assert column(client, dead) == [
        ("t.crm.events", 3, 42, "CRM-9", "unknown_status"),
        ("t.erp.events", 0, 7, "", "invalid_json"),
    ]
    kpi = "SELECT kpi, target, window, value FROM kpi_snapshots FINAL ORDER BY kpi, target, window"
    assert column(client, kpi) == [
        ("consistency_ratio", "", "24h", 0.75),
        ("refresh_latency_p50_seconds", "crm", "1h", 60.0),
        ("refresh_latency_p50_seconds", "crm", "24h", 90.0),
        ("refresh_latency_p95_seconds", "crm", "1h", 120.0),
        ("refresh_latency_p95_seconds", "crm", "24h", 600.0),
    ]

    before = table_rows(client)
    text = repr(before)
    text += "".join(base64.b64decode(r[-1]).decode() for r in before["dead_letters"] if r[-1])
    for clear in (*CLEAR_PHONES, STREET, "建国路"):
        assert clear not in text
    assert "138****8000" in text  # masked, where a person may need to recognise it

    # A crash before the commit: every stage hands over its batch again, batched differently
    # (so the sink's insert tokens differ and the rows really go in twice); the order join
    # replays from the last state it had persisted, the anomaly's older report comes again.
    feed(wh, records[2:], states[2:], observations)
    wh.topic_records("normalized", records[:2])
    wh.topic_records("anomalies", [anomaly("open")])
    await wh.before_commit()
    wh.order_states([(states[-1], True)])  # and once more from the final persisted state
    await wh.before_commit()
    assert table_rows(client) == before
    await wh.stop()


async def test_clickhouse_down_blocks_no_commit_and_loses_no_row(
    settings: Settings, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unreachable(dsn: str, database: str, **args: Any) -> Client:
        raise ConnectionRefusedError("injected: ClickHouse is down")

    real_connect = warehouse_module.connect
    monkeypatch.setattr(warehouse_module, "connect", unreachable)
    records = normalized_records()
    states, _ = join(records)

    down = Warehouse(settings, PHONES)
    await down.start()  # logs, does not raise: the worker runs on
    down.topic_records("normalized", records[:4])
    started = time.monotonic()
    await down.before_commit()
    assert time.monotonic() - started < 2.0
    assert down.sink.disk_rows == 4  # on disk before the offsets are committed
    assert down.sink.memory_rows_buffered == 0
    down.topic_records("normalized", records[4:])
    down.order_states([(states[-1], True)])
    await down.stop()  # what cannot be delivered stays on disk
    assert down.sink.disk_rows == 4 + 2 + 1
    spill = settings.data_dir / "clickhouse-spill"
    assert len(list(spill.glob("*.jsonl"))) >= 2

    # The next run (or the same one, ClickHouse back) delivers the spilled rows first.
    monkeypatch.setattr(warehouse_module, "connect", real_connect)
    up = Warehouse(settings, PHONES)
    await up.start()
    assert up.backlog_rows == 7
    await up.before_commit()
    assert up.backlog_rows == 0
    assert not list(spill.glob("*.jsonl"))
    assert column(client, "SELECT count() FROM events FINAL") == [6]
    assert column(client, "SELECT wms_phase FROM order_state FINAL") == ["shipped"]
    await up.stop()


async def test_a_crash_after_a_commit_during_an_outage_keeps_the_rows(
    settings: Settings, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_connect = warehouse_module.connect

    def unreachable(dsn: str, database: str, **args: Any) -> Client:
        raise ConnectionRefusedError("injected: ClickHouse is down")

    monkeypatch.setattr(warehouse_module, "connect", unreachable)
    crashed = Warehouse(settings, PHONES)
    crashed.topic_records("deadletter", dead_letter_records())
    await crashed.before_commit()  # the commit goes ahead; the process then dies (no stop)
    del crashed

    monkeypatch.setattr(warehouse_module, "connect", real_connect)
    restarted = Warehouse(settings, PHONES)
    await restarted.start()
    await restarted.before_commit()
    assert column(client, "SELECT count() FROM dead_letters FINAL") == [2]
    await restarted.stop()


async def test_rows_neither_stored_nor_spilled_stop_the_commit(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unreachable(dsn: str, database: str, **args: Any) -> Client:
        raise ConnectionRefusedError("injected: ClickHouse is down")

    def disk_full(*args: Any, **kwargs: Any) -> None:
        raise OSError(28, "injected: no space left on device")

    monkeypatch.setattr(warehouse_module, "connect", unreachable)
    monkeypatch.setattr(ClickHouseSink, "_write_segment", staticmethod(disk_full))
    wh = Warehouse(settings, PHONES)
    wh.topic_records("deadletter", dead_letter_records())
    with pytest.raises(UnsavedRowsError, match="2 rows are neither in ClickHouse nor on disk"):
        await wh.before_commit()
    assert wh.sink.memory_rows_buffered == 2  # still held, for the next attempt


async def test_a_disabled_warehouse_does_nothing(tmp_path: Path) -> None:
    wh = Warehouse(Settings(data_dir=tmp_path, clickhouse_enabled=False), PHONES)
    await wh.start()
    wh.topic_records("normalized", normalized_records())
    await wh.before_commit()
    await wh.maybe_flush()
    await wh.wait_for_room()
    await wh.stop()
    assert wh.backlog_rows == 0
    assert not (tmp_path / "clickhouse-spill").exists()
