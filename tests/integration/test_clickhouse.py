"""The ClickHouse layer against real embedded ClickHouse (chdb): schema, sink, outages, queries.

chdb hosts one engine per process, so the module uses one engine path (the process's, if
another module opened one first) and isolates each test in a fresh database.
"""

from __future__ import annotations

import asyncio
import base64
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from clickhouse_connect.driver import Client
from clickhouse_connect.driver.exceptions import OperationalError

from schemas.anomalies import Anomaly
from sinks import rows as mk
from sinks.clickhouse import (
    MIGRATIONS,
    ClickHouseSink,
    EnginePathError,
    Migration,
    connect,
    migrate,
)
from sinks.queries import QUERIES, run_query
from tests.phones import PHONES

pytestmark = pytest.mark.integration

PHONE = "13800138000"
STREET = "建国路88号院3号楼"
ADDRESS = "北京市朝阳区" + STREET
# Recent enough that the tables' TTL keeps the rows; whole minutes keep sums exact.
NOW = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(hours=1)


# --- fixtures and helpers ------------------------------------------------------------------


class ManualClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FlakyClient:
    """The real client, failing like a lost server when told to."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self.down = False  # every call fails until cleared
        self.fail_next = 0  # the next N inserts fail
        self.write_then_fail = 0  # the next N inserts are written, then the answer is lost
        self.failures = 0
        self.inserted: list[tuple[str, int, Any]] = []  # (table, rows, first value)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def _outage(self) -> None:
        if self.down:
            self.failures += 1
            raise ConnectionRefusedError("injected: ClickHouse is unreachable")

    def query(self, *args: Any, **kwargs: Any) -> Any:
        self._outage()
        return self._client.query(*args, **kwargs)

    def insert(self, table: str, data: Sequence[Sequence[Any]], **kwargs: Any) -> Any:
        self._outage()
        if self.fail_next > 0:
            self.fail_next -= 1
            self.failures += 1
            raise OperationalError("injected: connection reset by peer")
        summary = self._client.insert(table, data, **kwargs)
        self.inserted.append((table, len(data), data[0][0]))
        if self.write_then_fail > 0:
            self.write_then_fail -= 1
            raise TimeoutError("injected: the server wrote the batch, the answer was lost")
        return summary


def event_rows(n: int, start: int = 0) -> list[dict[str, Any]]:
    out = []
    for i in range(start, start + n):
        at = NOW - timedelta(minutes=30) + timedelta(milliseconds=i)
        out.append(
            mk.event_row(
                {
                    "event_id": f"ev-{i:06d}",
                    "source": "erp",
                    "order_ref": f"SO-{i // 4}",
                    "status": "CREATED",
                    "occurred_at": at.isoformat(),
                    "received_at": at.isoformat(),
                    "stage": "placed",
                    "phase": "open",
                    "order": {
                        "customer_id": f"C-{i % 50}",
                        "channel": "website",
                        "lines": [{"sku": "SKU-1", "qty": 1, "unit_price": "10"}],
                        "amount": "10.50",
                        "currency": "CNY",
                    },
                },
                phones=PHONES,
            )
        )
    return out


def count(client: Client, table: str, final: bool = False) -> int:
    return int(client.command(f"SELECT count() FROM {table}{' FINAL' if final else ''}"))


def drain(sink: ClickHouseSink, clock: ManualClock, step: float = 0.5, limit: int = 500) -> None:
    for _ in range(limit):
        if sink.backlog_rows == 0:
            return
        clock.advance(step)
        if sink.due():
            sink.flush()
    raise AssertionError(f"backlog never drained: {sink.backlog_rows} rows, {sink.stats}")


def anomaly(
    anomaly_id: str,
    type_: str,
    team: str,
    *,
    state: str = "open",
    opened: datetime = NOW,
    summary: str = "systems disagree",
    decisions: list[dict[str, Any]] | None = None,
) -> Anomaly:
    return Anomaly.model_validate(
        {
            "anomaly_id": anomaly_id,
            "type": type_,
            "state": state,
            "severity": "warning",
            "order_id": f"SO-{anomaly_id}",
            "systems": ["erp", "crm"],
            "opened_at": opened,
            "detected_at": opened + timedelta(minutes=1),
            "resolved_at": opened + timedelta(minutes=40) if state == "resolved" else None,
            "route": {"team": team, "rule": f"{type_}_rule"},
            "evidence": [
                {"source": "erp", "event_id": "e1", "status": "SHIPPED", "occurred_at": opened}
            ],
            "summary": summary,
            "decisions": decisions or [],
        }
    )


def scenario() -> dict[str, list[dict[str, Any]]]:
    """A small populated world with known answers for every saved query."""
    hour = NOW.replace(minute=0) - timedelta(hours=2)
    latency = [
        mk.latency_row(
            f"SO-{i}",
            target="crm",
            phase="shipped",
            erp_event_id=f"erp-{i}",
            target_event_id=f"crm-{i}",
            t0=hour + timedelta(minutes=i),
            t1=hour + timedelta(minutes=i, seconds=10 * i),
        )
        for i in range(1, 10)  # 10 s .. 90 s
    ]
    latency.append(
        mk.latency_row(
            "SO-slow",
            target="wms",
            phase="fulfilling",
            erp_event_id="erp-slow",
            target_event_id="wms-slow",
            t0=hour + timedelta(hours=1),
            t1=hour + timedelta(hours=2),
        )
    )
    latency.append(
        mk.latency_row(
            "SO-skew",
            target="wms",
            phase="fulfilling",
            erp_event_id="erp-skew",
            target_event_id="wms-skew",
            t0=hour + timedelta(hours=1),
            t1=hour + timedelta(hours=1) - timedelta(seconds=5),
        )
    )
    anomalies = [
        mk.anomaly_row(anomaly("a1", "missing_in_system", "customer_service")),
        mk.anomaly_row(anomaly("a2", "missing_in_system", "customer_service")),
        # a2 later resolved: FINAL keeps this version only
        mk.anomaly_row(anomaly("a2", "missing_in_system", "customer_service", state="resolved")),
        mk.anomaly_row(anomaly("a3", "stalled_tracking", "logistics")),
        mk.anomaly_row(anomaly("a4", "duplicate_order", "sales")),  # not a ghost
    ]
    pairs = [
        mk.duplicate_pair_row(
            "d1",
            order_a="A1",
            order_b="B1",
            placed_a=NOW,
            placed_b=NOW + timedelta(minutes=3),
            detected_at=NOW,
            channel_a="douyin",
            channel_b="website",
            phones=PHONES,
        ),
        mk.duplicate_pair_row(
            "d2",
            order_a="A2",
            order_b="B2",
            placed_a=NOW,
            placed_b=NOW + timedelta(minutes=1),
            detected_at=NOW,
            channel_a="website",
            channel_b="douyin",
            phones=PHONES,
        ),
        mk.duplicate_pair_row(
            "d2",
            order_a="A2",
            order_b="B2",
            placed_a=NOW,
            placed_b=NOW + timedelta(minutes=1),
            detected_at=NOW,
            channel_a="website",
            channel_b="douyin",
            state="merged",
            decision="duplicate.merge",
            phones=PHONES,
        ),
        mk.duplicate_pair_row(
            "d3",
            order_a="A3",
            order_b="B3",
            placed_a=NOW,
            placed_b=NOW + timedelta(seconds=30),
            detected_at=NOW,
            channel_a="pos",
            channel_b="pos",
            phones=PHONES,
        ),
    ]
    breaker = [
        mk.breaker_row(
            NOW + timedelta(minutes=10 * k),
            stage=min(k, 2),
            event=("warn", "warn", "throttle")[k],
            orders_created=2300 + k,
            allocated=900,
            allocation_failed=100,
        )
        for k in range(3)
    ]
    dead = [
        mk.dead_letter_row(
            topic="concord.erp.events",
            partition=0,
            offset=off,
            key=f"SO-{off}",
            reason="schema",
            error="order.lines: field required",
            received_at=NOW,
            original=b'{"event_id": "x"}',
        )
        for off in (1, 2, 3, 3)  # offset 3 replayed: one letter
    ]
    dead.append(
        mk.dead_letter_row(
            topic="concord.crm.events",
            partition=1,
            offset=9,
            key=None,
            reason="invalid_json",
            error="unexpected end of data",
            received_at=NOW,
            original=b"{oops",
        )
    )
    state = [
        mk.order_state_row(
            "SO-slow",
            systems={"erp": {"stage": "allocated", "phase": "fulfilling", "updated_at": NOW}},
            consistent=False,
            version=3,
            channel="douyin",
            placed_at=NOW - timedelta(hours=3),
            phones=PHONES,
        )
    ]
    kpis = [
        mk.kpi_row(NOW, "refresh_latency_p50_seconds", 50.0, target="crm", window="1h"),
        mk.kpi_row(NOW, "consistency_ratio", 0.992, window="24h"),
    ]
    return {
        "refresh_latency": latency,
        "anomalies": anomalies,
        "duplicate_pairs": pairs,
        "breaker_history": breaker,
        "dead_letters": dead,
        "order_state": state,
        "kpi_snapshots": kpis,
        "events": event_rows(20),
    }


def load(sink: ClickHouseSink, data: dict[str, list[dict[str, Any]]]) -> None:
    for table, table_rows in data.items():
        sink.add_many(table, table_rows)
    sink.flush(force=True)
    assert sink.backlog_rows == 0, sink.stats


def snapshot(client: Client) -> dict[str, list[tuple[Any, ...]]]:
    """Every table's rows after FINAL, in key order."""
    out = {}
    for table, columns in mk.TABLE_COLUMNS.items():
        cols = ", ".join(f"`{c}`" for c in columns)
        out[table] = client.query(f"SELECT {cols} FROM {table} FINAL ORDER BY {cols}").result_rows
    return out


# --- connection and schema -----------------------------------------------------------------


def test_migrations_apply_once_and_build_the_public_tables(client: Client) -> None:
    db = client.database
    tables = client.query(
        "SELECT name, engine, sorting_key FROM system.tables WHERE database = {db:String}",
        parameters={"db": db},
    ).result_rows
    engines = {name: (engine, key) for name, engine, key in tables}
    assert set(engines) == set(mk.TABLE_COLUMNS) | {"schema_migrations"}
    assert all(engine == "ReplacingMergeTree" for engine, _ in engines.values())
    assert engines["events"][1] == "source, event_id"
    assert engines["order_state"][1] == "order_id"
    assert engines["dead_letters"][1] == "topic, partition, offset"
    for table, columns in mk.TABLE_COLUMNS.items():
        described = [r[0] for r in client.query(f"DESCRIBE TABLE {table}").result_rows]
        assert tuple(described) == columns, table

    assert migrate(client, db) == []
    assert count(client, "schema_migrations") == len(MIGRATIONS)

    extra = Migration(
        MIGRATIONS[-1].version + 1,
        "kpi note",
        lambda d, _ttl: [f"ALTER TABLE {d}.kpi_snapshots ADD COLUMN IF NOT EXISTS note String"],
    )
    assert migrate(client, db, migrations=(*MIGRATIONS, extra)) == [extra.version]
    assert migrate(client, db, migrations=(*MIGRATIONS, extra)) == []
    assert count(client, "schema_migrations") == len(MIGRATIONS) + 1
    described = [r[0] for r in client.query("DESCRIBE TABLE kpi_snapshots").result_rows]
    assert described[-1] == "note"
    with pytest.raises(ValueError, match="ascending"):
        migrate(client, db, migrations=(extra, *MIGRATIONS))


def test_one_embedded_engine_per_process(dsn: str, tmp_path: Path) -> None:
    with pytest.raises(EnginePathError, match="one engine per process"):
        connect(f"chdb://{tmp_path}", "elsewhere")
    with pytest.raises(ValueError, match="absolute path"):
        connect("chdb://relative/dir", "x")
    with pytest.raises(ValueError, match="DSN scheme"):
        connect("mysql://localhost", "x")
    # The same engine spelled differently is the same engine, and the database is created.
    name = f"t_{uuid.uuid4().hex[:12]}"
    same = connect(dsn + "/", name)
    try:
        assert same.command("SELECT currentDatabase()") == name
    finally:
        same.command(f"DROP DATABASE {name} SYNC")
        same.close()


# --- the sink: batching and idempotence ----------------------------------------------------


def test_batches_by_size_and_by_time(client: Client) -> None:
    clock = ManualClock()
    sink = ClickHouseSink(client, client.database, batch_rows=10, batch_seconds=1.0, clock=clock)
    kpis = [mk.kpi_row(NOW + timedelta(seconds=i), "consistency_ratio", 0.9) for i in range(25)]
    assert not sink.due()
    sink.add("kpi_snapshots", kpis[0])
    assert not sink.due()
    clock.advance(0.99)
    assert not sink.due()
    clock.advance(0.02)
    assert sink.due()
    assert sink.flush() == 1
    assert not sink.due()

    sink.add_many("kpi_snapshots", kpis[1:])  # 24 rows: two full batches and 4 waiting
    assert sink.due()
    assert sink.backlog_rows == 24
    assert sink.flush() == 24
    assert sink.stats.inserts == 1 + 3
    assert count(client, "kpi_snapshots") == 25
    with pytest.raises(ValueError, match="unknown table"):
        sink.add("nope", {})
    with pytest.raises(KeyError):
        sink.add("kpi_snapshots", {"at": NOW})
    assert sink.close() == 0


def test_a_replay_after_a_crash_leaves_the_same_rows(client: Client) -> None:
    data = scenario()
    first = ClickHouseSink(client, client.database)
    load(first, data)
    raw_counts = {t: count(client, t) for t in mk.TABLE_COLUMNS}
    before = snapshot(client)
    del first  # the process dies; the same input is consumed again after the restart

    again = ClickHouseSink(client, client.database)
    load(again, data)
    # Same batches, same deduplication tokens: the inserts themselves are dropped.
    assert {t: count(client, t) for t in mk.TABLE_COLUMNS} == raw_counts
    assert snapshot(client) == before

    # Batched differently (other tokens): rows are written again and collapse on read.
    regrouped = ClickHouseSink(client, client.database, batch_rows=3)
    load(regrouped, data)
    assert count(client, "events") > raw_counts["events"]
    assert snapshot(client) == before
    assert count(client, "anomalies", final=True) == 4
    assert count(client, "dead_letters", final=True) == 4


def test_a_batch_written_but_not_acknowledged_is_not_written_twice(client: Client) -> None:
    flaky = FlakyClient(client)
    clock = ManualClock()
    sink = ClickHouseSink(flaky, client.database, batch_rows=100, clock=clock)
    flaky.write_then_fail = 1
    sink.add_many("events", event_rows(250))
    sink.flush()
    assert sink.backlog_rows == 250  # the first batch was written, but the sink cannot know
    drain(sink, clock)
    assert count(client, "events") == 250  # no FINAL: the retry was deduplicated
    assert len(flaky.inserted) == 4
    sink.close()


# --- the sink: outages ---------------------------------------------------------------------


def test_outage_keeps_every_row_spills_to_disk_and_catches_up_in_order(
    client: Client, tmp_path: Path
) -> None:
    flaky = FlakyClient(client)
    clock = ManualClock()
    spill = tmp_path / "spill"
    sink = ClickHouseSink(
        flaky,
        client.database,
        batch_rows=50,
        memory_rows=120,
        spill_dir=spill,
        retry_initial=0.5,
        retry_max=2.0,
        clock=clock,
    )
    rows = event_rows(1000)
    backlog: list[int] = []
    on_disk: list[int] = []
    for i in range(0, len(rows), 25):
        if i == 200:
            flaky.fail_next = 6  # ClickHouse goes away mid-stream for six attempts
        sink.add_many("events", rows[i : i + 25])
        clock.advance(0.5)
        if sink.due():
            sink.flush()
        backlog.append(sink.backlog_rows)
        on_disk.append(len(list(spill.glob("*.jsonl"))))
        assert sink.memory_rows_buffered <= 120 + 50  # bound, plus what arrived since the flush
    drain(sink, clock)

    assert flaky.failures == 6
    assert max(backlog) > 120  # the backlog grew past the memory bound ...
    assert max(on_disk) > 0  # ... onto disk
    assert sink.stats.spilled_batches > 0
    assert sink.backlog_rows == 0
    assert sink.disk_rows == 0
    assert not list(spill.glob("*.jsonl"))
    assert int(client.command("SELECT count() FROM events")) == 1000  # exactly once, no FINAL
    assert int(client.command("SELECT uniqExact(event_id) FROM events")) == 1000
    firsts = [first for _, _, first in flaky.inserted]
    assert firsts == sorted(firsts)  # delivered in the order they were added
    # Spilled rows went through JSON and back: values survive the round trip exactly.
    stored = client.query(
        "SELECT event_id, occurred_at, amount, raw FROM events ORDER BY event_id"
    ).result_rows
    expected = [(r["event_id"], r["occurred_at"], r["amount"], r["raw"]) for r in rows]
    assert [tuple(r) for r in stored] == expected
    assert sink.close() == 0


def test_spilled_backlog_survives_a_restart(client: Client, tmp_path: Path) -> None:
    flaky = FlakyClient(client)
    flaky.down = True
    spill = tmp_path / "spill"
    sink = ClickHouseSink(flaky, client.database, batch_rows=40, spill_dir=spill)
    sink.add_many("events", event_rows(100))
    sink.add_many("kpi_snapshots", [mk.kpi_row(NOW, "consistency_ratio", 0.97, window="1h")])
    assert sink.flush() == 0
    assert sink.close() == 101  # nothing reached ClickHouse; all of it is on disk
    assert sink.memory_rows_buffered == 0
    assert len(list(spill.glob("*.jsonl"))) == 4
    with pytest.raises(RuntimeError, match="closed"):
        sink.add("events", event_rows(1)[0])
    (spill / "000000000999.jsonl").write_bytes(b"not a segment")  # damaged by hand

    restarted = ClickHouseSink(client, client.database, spill_dir=spill)
    assert restarted.backlog_rows == restarted.disk_rows == 101
    assert (spill / "rejected" / "000000000999.jsonl").exists()
    assert restarted.flush() == 101
    assert count(client, "events") == 100
    assert client.query("SELECT window, value FROM kpi_snapshots").result_rows == [("1h", 0.97)]
    assert not list(spill.glob("*.jsonl"))
    assert restarted.close() == 0


def test_back_pressure_when_the_backlog_is_full(client: Client, tmp_path: Path) -> None:
    flaky = FlakyClient(client)
    flaky.down = True
    clock = ManualClock()
    memory_only = ClickHouseSink(flaky, client.database, batch_rows=10, memory_rows=20, clock=clock)
    rows = event_rows(25)
    assert all(memory_only.add("events", r) for r in rows[:19])
    assert memory_only.add("events", rows[19]) is False  # the 20th row fills it
    assert memory_only.full
    assert memory_only.add("events", rows[20]) is False  # still accepted, never dropped
    assert memory_only.backlog_rows == 21
    memory_only.flush()
    assert memory_only.full
    assert memory_only.backlog_rows == 21

    spilling = ClickHouseSink(
        flaky,
        client.database,
        batch_rows=10,
        memory_rows=20,
        max_backlog_rows=60,
        spill_dir=tmp_path / "spill",
        clock=clock,
    )
    more = event_rows(60, start=100)
    assert all(spilling.add("events", r) for r in more[:59])
    spilling.flush()
    assert spilling.disk_rows >= 39
    assert not spilling.full
    assert spilling.add("events", more[59]) is False
    assert spilling.full

    flaky.down = False
    clock.advance(60)
    assert memory_only.close() == 0
    assert spilling.close() == 0
    assert count(client, "events") == 81


async def test_wait_for_room_returns_once_clickhouse_is_back(
    client: Client, tmp_path: Path
) -> None:
    flaky = FlakyClient(client)
    flaky.down = True
    sink = ClickHouseSink(
        flaky,
        client.database,
        batch_rows=10,
        memory_rows=10,
        max_backlog_rows=30,
        spill_dir=tmp_path / "spill",
        retry_initial=0.01,
        retry_max=0.05,
    )
    sink.add_many("events", event_rows(30))
    assert sink.full

    async def outage_ends() -> None:
        await asyncio.sleep(0.2)
        flaky.down = False

    recovery = asyncio.create_task(outage_ends())
    await asyncio.wait_for(sink.wait_for_room(poll_seconds=0.01), timeout=10)
    await recovery
    assert not sink.full
    assert flaky.failures > 0
    await sink.aflush(force=True)
    assert sink.backlog_rows == 0
    assert count(client, "events") == 30
    assert await sink.aclose() == 0


async def test_aflush_leaves_the_event_loop_free(client: Client) -> None:
    sink = ClickHouseSink(client, client.database)
    sink.add_many("events", event_rows(20_000))
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.001)
            ticks += 1

    task = asyncio.create_task(ticker())
    written = await sink.aflush()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert written == 20_000
    assert ticks > 0
    assert sink.close() == 0


def test_a_batch_that_cannot_be_encoded_is_set_aside(client: Client, tmp_path: Path) -> None:
    spill = tmp_path / "spill"
    sink = ClickHouseSink(client, client.database, spill_dir=spill)
    bad = mk.kpi_row(NOW, "consistency_ratio", 0.5) | {"value": "not a number"}
    sink.add("kpi_snapshots", bad)
    sink.add_many("events", event_rows(5))
    assert sink.flush() == 5  # the queue moves on
    assert sink.stats.rejected_rows == 1
    assert len(list((spill / "rejected").glob("*.jsonl"))) == 1
    assert count(client, "kpi_snapshots") == 0
    assert count(client, "events") == 5
    assert sink.close() == 0


# --- privacy -------------------------------------------------------------------------------


def test_no_phone_or_address_is_stored_in_clear(client: Client) -> None:
    event = {
        "event_id": "erp-pii",
        "source": "erp",
        "order_ref": "SO-pii",
        "status": "CREATED",
        "occurred_at": NOW.isoformat(),
        "stage": "placed",
        "phase": "open",
        "reason": f"客户 {PHONE} 要求改地址",
        "order": {
            "customer_id": PHONE,
            "channel": "wechat",
            "lines": [{"sku": "S", "qty": 1, "unit_price": "1"}],
            "amount": "1",
            "currency": "CNY",
            "customer_phone": f"+86 {PHONE}",
            "ship_to": ADDRESS,
        },
        "attrs": {"receiver": {"mobile": PHONE, "address": ADDRESS}, "memo": f"tel {PHONE}"},
    }
    data = {
        "events": [mk.event_row(event, phones=PHONES)],
        "order_state": [
            mk.order_state_row(
                "SO-pii",
                systems={"erp": {"stage": "placed", "phase": "open", "updated_at": NOW}},
                consistent=True,
                version=1,
                customer_id=PHONE,
                customer_phone=PHONE,
                phones=PHONES,
            )
        ],
        "anomalies": [
            mk.anomaly_row(
                anomaly(
                    "pii",
                    "status_conflict",
                    "customer_service",
                    summary=f"customer {PHONE} sees shipped, ERP says cancelled",
                    decisions=[{"kind": "anomaly.ack", "note": f"rang {PHONE}, at {ADDRESS}"}],
                )
            )
        ],
        "duplicate_pairs": [
            mk.duplicate_pair_row(
                "pii",
                order_a="A",
                order_b="B",
                placed_a=NOW,
                placed_b=NOW,
                detected_at=NOW,
                customer_id=PHONE,
                phones=PHONES,
            )
        ],
        "dead_letters": [
            mk.dead_letter_row(
                topic="concord.erp.events",
                partition=0,
                offset=1,
                key=PHONE,
                reason="schema",
                error=f"bad phone {PHONE}",
                received_at=NOW,
                original=orjson.dumps(event),
            ),
            mk.dead_letter_row(
                topic="concord.erp.events",
                partition=0,
                offset=2,
                key=None,
                reason="invalid_json",
                error="truncated",
                received_at=NOW,
                original=orjson.dumps(event)[:-40],
            ),
        ],
    }
    sink = ClickHouseSink(client, client.database)
    load(sink, data)
    stored = []
    for table in data:
        for row in client.query(f"SELECT * FROM {table}").result_rows:
            stored.extend(str(value) for value in row)
    dead = client.query("SELECT original_b64 FROM dead_letters").result_rows
    stored.extend(base64.b64decode(b64).decode() for (b64,) in dead)
    everything = "\n".join(stored)
    assert "138****8000" in everything  # masked forms are there ...
    assert "北京市朝阳区***" in everything
    for clear in (PHONE, "0013-8000", "0013 8000", STREET, "建国路"):  # ... clear ones are not
        assert clear not in everything
    assert sink.close() == 0


# --- saved queries -------------------------------------------------------------------------


def test_every_saved_query_answers_on_a_populated_database(client: Client) -> None:
    load(ClickHouseSink(client, client.database), scenario())
    answers = {name: run_query(client, name) for name in QUERIES}
    for name, (columns, rows) in answers.items():
        assert columns, name
        assert rows, name
        assert all(len(r) == len(columns) for r in rows), name

    def as_dicts(name: str) -> list[dict[str, Any]]:
        columns, rows = answers[name]
        return [dict(zip(columns, r, strict=True)) for r in rows]

    ghosts = {(r["type"], r["team"]): r for r in as_dicts("ghosts_by_type_team_day")}
    assert set(ghosts) == {
        ("missing_in_system", "customer_service"),
        ("stalled_tracking", "logistics"),
    }
    missing = ghosts[("missing_in_system", "customer_service")]
    assert (missing["opened"], missing["still_open"], missing["resolved"]) == (2, 1, 1)
    assert missing["median_minutes_to_resolve"] == 40.0
    assert ghosts[("stalled_tracking", "logistics")]["median_minutes_to_resolve"] is None

    latency = as_dicts("latency_percentiles_hourly")
    crm = [r for r in latency if r["target"] == "crm"]
    assert len(crm) == 1
    assert (crm[0]["observations"], crm[0]["p50_seconds"], crm[0]["max_seconds"]) == (9, 50.0, 90.0)
    assert crm[0]["p95_seconds"] == 90.0
    wms = [r for r in latency if r["target"] == "wms"]
    assert (wms[0]["observations"], wms[0]["skewed"], wms[0]["max_seconds"]) == (2, 1, 3600.0)

    pairs = {(r["channel_1"], r["channel_2"]): r for r in as_dicts("duplicates_by_channel")}
    web = pairs[("douyin", "website")]
    assert (web["pairs"], web["open"], web["merged"], web["kept"]) == (2, 1, 1, 0)
    assert web["median_gap_seconds"] in (60.0, 180.0)
    assert pairs[("pos", "pos")]["pairs"] == 1

    breaker = as_dicts("breaker_history")
    assert [r["event"] for r in breaker] == ["throttle", "warn", "warn"]
    assert breaker[0]["failure_rate"] == 0.1

    slowest = as_dicts("slowest_orders_week")
    assert slowest[0]["order_id"] == "SO-slow"
    assert (slowest[0]["worst_target"], slowest[0]["worst_latency_seconds"]) == ("wms", 3600.0)
    assert (slowest[0]["channel"], slowest[0]["erp_phase"]) == ("douyin", "fulfilling")
    assert slowest[1]["worst_latency_seconds"] == 90.0

    dead = {r["reason"]: r for r in as_dicts("deadletters_by_reason")}
    assert (dead["schema"]["letters"], dead["invalid_json"]["letters"]) == (3, 1)

    columns, rows = run_query(client, "breaker_history", limit=1)
    assert len(rows) == 1
    columns, rows = run_query(client, "slowest_orders_week", limit="2")
    assert [r[0] for r in rows] == ["SO-slow", "SO-9"]


def test_saved_queries_on_an_empty_database_and_bad_requests(client: Client) -> None:
    for name in QUERIES:
        columns, rows = run_query(client, name)
        assert columns, name
        assert rows == [], name
    with pytest.raises(ValueError, match="saved queries: breaker_history, deadletters_by_reason"):
        run_query(client, "nope")
    with pytest.raises(ValueError, match="takes: days, limit"):
        run_query(client, "breaker_history", hours=3)
    with pytest.raises(ValueError, match="integer"):
        run_query(client, "breaker_history", days="a week")
