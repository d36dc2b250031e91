"""Rows/s of ClickHouseSink vs raw clickhouse-connect `client.insert`, same rows, same run.

    python scripts/bench_sink.py [--rows 100000] [--batch 5000] [--repeat 3] [--dsn chdb:///tmp/x]

Each contender writes the same `events` rows (built by sinks.rows.event_row, ~1 KB of masked
raw JSON each) into its own fresh database, in batches of the same size. The raw baseline
gets the rows already as lists; the sink gets the dicts its callers hand it, and pays for
its batching, its deduplication tokens and its bookkeeping. Rounds rotate the order of the
contenders (background merges of one slow the next) and the best round of each is reported.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from schemas.privacy import PhoneHasher
from sinks.clickhouse import ClickHouseSink, close_embedded, connect, migrate
from sinks.rows import TABLE_COLUMNS, event_row

PHONES = PhoneHasher(os.urandom(32))


def make_rows(n: int) -> list[dict[str, Any]]:
    """`n` realistic accepted ERP events, as the sink's callers produce them."""
    start = datetime.now(UTC) - timedelta(days=1)
    out = []
    for i in range(n):
        at = (start + timedelta(milliseconds=37 * i)).isoformat()
        out.append(
            event_row(
                {
                    "event_id": f"bench-{i:09d}",
                    "source": "erp",
                    "order_ref": f"SO-{i // 4:08d}",
                    "status": "CREATED",
                    "occurred_at": at,
                    "received_at": at,
                    "stage": "placed",
                    "phase": "open",
                    "order": {
                        "customer_id": f"C-{i % 5000}",
                        "channel": ("douyin", "website", "pos", "wechat")[i % 4],
                        "lines": [{"sku": f"SKU-{i % 997:04d}", "qty": 1, "unit_price": "19.90"}],
                        "amount": "19.90",
                        "currency": "CNY",
                        "customer_phone": f"138{i % 100_000_000:08d}",
                        "ship_to": "浙江省杭州市西湖区文三路90号",
                        "vip": i % 10 == 0,
                    },
                    "attrs": {"campaign": "double-11", "note": "leave at the door"},
                },
                phones=PHONES,
            )
        )
    return out


def bench_raw(dsn: str, rows: list[dict[str, Any]], batch: int, *, typed: bool = False) -> float:
    """Seconds for raw client.insert of the rows (pre-built lists), batch by batch.

    Untyped, clickhouse-connect asks the server for the column types before each insert (its
    usual call); typed, they are passed in, as the sink does after one DESCRIBE per table.
    """
    database = f"bench_raw_{uuid.uuid4().hex[:8]}"
    client = connect(dsn, database)
    try:
        migrate(client, database)
        columns = list(TABLE_COLUMNS["events"])
        data = [[row[c] for c in columns] for row in rows]
        types = None
        if typed:
            described = {r[0]: r[1] for r in client.query("DESCRIBE TABLE events").result_rows}
            types = [described[c] for c in columns]
        started = time.perf_counter()
        for i in range(0, len(data), batch):
            client.insert(
                "events", data[i : i + batch], column_names=columns, column_type_names=types
            )
        elapsed = time.perf_counter() - started
        assert client.query("SELECT count() FROM events").result_rows[0][0] == len(rows)
        return elapsed
    finally:
        client.command(f"DROP DATABASE IF EXISTS {database} SYNC")
        client.close()


def bench_sink(dsn: str, rows: list[dict[str, Any]], batch: int) -> float:
    """Seconds for ClickHouseSink.add_many + flush of the same rows (dicts)."""
    database = f"bench_sink_{uuid.uuid4().hex[:8]}"
    client = connect(dsn, database)
    try:
        migrate(client, database)
        sink = ClickHouseSink(client, database, batch_rows=batch)
        started = time.perf_counter()
        for i in range(0, len(rows), batch):
            sink.add_many("events", rows[i : i + batch])
            if sink.due():
                sink.flush()
        sink.flush(force=True)
        elapsed = time.perf_counter() - started
        assert sink.close() == 0
        assert client.query("SELECT count() FROM events").result_rows[0][0] == len(rows)
        return elapsed
    finally:
        client.command(f"DROP DATABASE IF EXISTS {database} SYNC")
        client.close()


def main() -> None:
    """Run both contenders and print rows/s and the ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dsn", default=None, help="default: embedded chdb in a temp dir")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="concord-bench-") as tmp:
        dsn = args.dsn or f"chdb://{tmp}/clickhouse"
        rows = make_rows(args.rows)
        bench_raw(dsn, rows[: args.batch], args.batch)  # warm-up: engine start, first parts
        contenders: dict[str, Callable[[], float]] = {
            "raw": lambda: bench_raw(dsn, rows, args.batch),
            "raw_typed": lambda: bench_raw(dsn, rows, args.batch, typed=True),
            "sink": lambda: bench_sink(dsn, rows, args.batch),
        }
        best = dict.fromkeys(contenders, float("inf"))
        names = list(contenders)
        for round_ in range(args.repeat):
            for name in names[round_ % 3 :] + names[: round_ % 3]:
                best[name] = min(best[name], contenders[name]())
        raw, raw_typed, sink = best["raw"], best["raw_typed"], best["sink"]
        close_embedded()

    target = "embedded chdb" if dsn.startswith("chdb:") else dsn.split("@")[-1]
    print(f"{args.rows} events rows, batches of {args.batch}, {target}, best of {args.repeat}")
    print(f"raw client.insert : {args.rows / raw:>10,.0f} rows/s ({raw:.2f} s)")
    print(f"raw, types given  : {args.rows / raw_typed:>10,.0f} rows/s ({raw_typed:.2f} s)")
    print(f"ClickHouseSink    : {args.rows / sink:>10,.0f} rows/s ({sink:.2f} s)")
    print(f"sink / raw        : {raw / sink:>10.2f}")
    print(f"sink / raw typed  : {raw_typed / sink:>10.2f}")


if __name__ == "__main__":
    main()
