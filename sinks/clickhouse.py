"""ClickHouse: one client for embedded (chdb://) and server (http[s]://), migrations, the sink.

- `connect(dsn, database)` returns a clickhouse-connect client with `database` created and
  selected. `chdb:///abs/path` runs ClickHouse in-process; chdb hosts one engine per
  process, so the first chdb path a process opens is the only one it may use.
- `migrate(client, database)` applies the versioned DDL in `MIGRATIONS` that
  `schema_migrations` does not list yet; re-running it is a no-op.
- `ClickHouseSink` batches rows per table and inserts them idempotently (deduplication
  token per batch + ReplacingMergeTree), and rides out outages: failed batches are kept,
  retried with backoff, spilled to disk past a memory bound, and delivered in order.
"""

from __future__ import annotations

import asyncio
import atexit
import hashlib
import logging
import operator
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import clickhouse_connect
import orjson
from clickhouse_connect.driver import Client
from clickhouse_connect.driver.binding import quote_identifier
from clickhouse_connect.driver.exceptions import DataError

from schemas.settings import Settings
from sinks.rows import TABLE_COLUMNS

R = TypeVar("R")

log = logging.getLogger(__name__)

# --- client --------------------------------------------------------------------------------


class EnginePathError(RuntimeError):
    """A second chdb path was requested in a process that already hosts an engine."""


_engine_lock = threading.Lock()
_engine: tuple[str, Client] | None = None  # (location, client that keeps the engine open)


def _chdb_location(dsn: str) -> tuple[str, str]:
    """(engine location, query string) of a chdb DSN; the location is an absolute real path."""
    rest = dsn.removeprefix("chdb://")
    location, _, query = rest.partition("?")
    if location in ("", "memory", ":memory:"):
        return ":memory:", query
    if not location.startswith("/"):
        raise ValueError(f"a chdb DSN needs an absolute path (chdb:///var/lib/concord): {dsn!r}")
    return os.path.realpath(location), query


def embedded_location() -> str | None:
    """The path (or ":memory:") of the embedded engine this process runs, if any."""
    with _engine_lock:
        return _engine[0] if _engine is not None else None


def close_embedded() -> None:
    """Close the process's embedded engine (clients still open on it keep it alive)."""
    global _engine
    with _engine_lock:
        if _engine is not None:
            _engine[1].close()
            _engine = None


def _chdb_dsn(dsn: str) -> str:
    global _engine
    location, query = _chdb_location(dsn)
    canonical = ("chdb://memory" if location == ":memory:" else f"chdb://{location}") + (
        f"?{query}" if query else ""
    )
    with _engine_lock:
        if _engine is None:
            # This client lives as long as the process: while it is open the engine stays up,
            # so clients closing and opening (per test, per worker task) never restart it.
            _engine = (location, clickhouse_connect.get_client(dsn=canonical))
            atexit.register(close_embedded)
        elif _engine[0] != location:
            raise EnginePathError(
                f"this process already runs embedded ClickHouse at {_engine[0]}; chdb hosts "
                f"one engine per process, so {location} cannot be opened too "
                "(use one path, or a ClickHouse server over http(s)://)"
            )
    return canonical


def connect(dsn: str, database: str, **client_args: Any) -> Client:
    """A client on `dsn` (chdb:///abs/path or http(s)://user:pw@host:port) using `database`."""
    client_args.setdefault("tz_mode", "aware")
    if dsn.startswith("chdb:"):
        client = clickhouse_connect.get_client(dsn=_chdb_dsn(dsn), **client_args)
    elif dsn.startswith(("http://", "https://")):
        client = clickhouse_connect.get_client(dsn=dsn, **client_args)
    else:
        raise ValueError(f"unsupported ClickHouse DSN scheme (chdb:// or http(s)://): {dsn[:16]!r}")
    try:
        client.command(f"CREATE DATABASE IF NOT EXISTS {quote_identifier(database)}")
        client.database = database
    except Exception:
        client.close()
        raise
    return client


def connect_settings(settings: Settings) -> Client:
    """`connect` with the DSN and database from Concord's settings."""
    return connect(settings.clickhouse_url, settings.clickhouse_database)


# --- migrations ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Migration:
    """One schema step: its DDL, built for a database and a TTL (days, 0 = keep forever)."""

    version: int
    name: str
    statements: Callable[[str, int], list[str]]


def _ttl(column: str, days: int) -> str:
    return f"TTL toDateTime({column}) + INTERVAL {days} DAY" if days > 0 else ""


# Every table that receives inserts keeps a window of insert tokens, so a batch retried
# after an ambiguous failure (a timeout after the server wrote it) is written once.
_DEDUP = "SETTINGS non_replicated_deduplication_window = 1000"
_DT = "DateTime64(3, 'UTC')"
_LC = "LowCardinality(String)"


def _v1_tables(db: str, ttl_days: int) -> list[str]:
    systems = ",\n".join(
        f"    {s}_stage {_LC},\n    {s}_phase {_LC},\n    {s}_updated_at Nullable({_DT})"
        for s in ("erp", "crm", "wms", "logistics")
    )
    return [
        f"""CREATE TABLE IF NOT EXISTS {db}.events (
    event_id String,
    source {_LC},
    order_ref String,
    order_id String,
    status {_LC},
    stage {_LC},
    marker {_LC},
    phase {_LC},
    occurred_at {_DT},
    received_at {_DT},
    channel {_LC},
    customer_id String,
    phone_hash String,
    ship_to_masked String,
    amount Nullable(Decimal(18, 4)),
    currency {_LC},
    carrier {_LC},
    tracking_no String,
    reason String,
    raw String CODEC(ZSTD(3)),
    INDEX order_idx order_id TYPE bloom_filter GRANULARITY 4
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (source, event_id)
{_ttl("occurred_at", ttl_days)}
{_DEDUP}""",
        f"""CREATE TABLE IF NOT EXISTS {db}.order_state (
    order_id String,
    placed_at Nullable({_DT}),
    customer_id String,
    channel {_LC},
    vip UInt8,
    priority {_LC},
    phone_hash String,
{systems},
    consistent UInt8,
    updated_at {_DT},
    version UInt64
) ENGINE = ReplacingMergeTree(version)
ORDER BY order_id
{_ttl("updated_at", ttl_days)}
{_DEDUP}""",
        f"""CREATE TABLE IF NOT EXISTS {db}.refresh_latency (
    order_id String,
    target {_LC},
    phase {_LC},
    erp_event_id String,
    target_event_id String,
    t0 {_DT},
    t1 {_DT},
    latency_seconds Float64,
    skew UInt8
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(t0)
ORDER BY (target, order_id, phase)
{_ttl("t0", ttl_days)}
{_DEDUP}""",
        f"""CREATE TABLE IF NOT EXISTS {db}.anomalies (
    anomaly_id String,
    type {_LC},
    state {_LC},
    severity {_LC},
    order_id String,
    systems Array({_LC}),
    opened_at {_DT},
    detected_at {_DT},
    resolved_at Nullable({_DT}),
    team {_LC},
    rule {_LC},
    evidence String,
    summary String,
    decisions String,
    version UInt64,
    INDEX order_idx order_id TYPE bloom_filter GRANULARITY 4
) ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(opened_at)
ORDER BY anomaly_id
{_ttl("opened_at", ttl_days)}
{_DEDUP}""",
        f"""CREATE TABLE IF NOT EXISTS {db}.duplicate_pairs (
    pair_id String,
    customer_id String,
    order_a String,
    order_b String,
    channel_a {_LC},
    channel_b {_LC},
    placed_a {_DT},
    placed_b {_DT},
    gap_seconds Float64,
    state {_LC},
    decision {_LC},
    detected_at {_DT},
    version UInt64
) ENGINE = ReplacingMergeTree(version)
ORDER BY pair_id
{_ttl("placed_a", ttl_days)}
{_DEDUP}""",
        f"""CREATE TABLE IF NOT EXISTS {db}.kpi_snapshots (
    at {_DT},
    kpi {_LC},
    target {_LC},
    window {_LC},
    value Float64
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(at)
ORDER BY (kpi, target, window, at)
{_ttl("at", ttl_days)}
{_DEDUP}""",
        f"""CREATE TABLE IF NOT EXISTS {db}.breaker_history (
    at {_DT},
    stage UInt8,
    event {_LC},
    orders_created UInt32,
    allocated UInt32,
    allocation_failed UInt32,
    failure_rate Float64
) ENGINE = ReplacingMergeTree
ORDER BY (at, event, stage)
{_ttl("at", ttl_days)}
{_DEDUP}""",
        f"""CREATE TABLE IF NOT EXISTS {db}.dead_letters (
    topic {_LC},
    `partition` UInt32,
    `offset` UInt64,
    key String,
    reason {_LC},
    error String,
    received_at {_DT},
    original_sha256 String,
    original_size UInt32,
    original_b64 String CODEC(ZSTD(3))
) ENGINE = ReplacingMergeTree
ORDER BY (topic, `partition`, `offset`)
{_ttl("received_at", ttl_days)}
{_DEDUP}""",
    ]


MIGRATIONS: tuple[Migration, ...] = (Migration(1, "initial tables", _v1_tables),)

DEFAULT_TTL_DAYS = 400


def applied_migrations(client: Client, database: str) -> dict[int, str]:
    """Versions (and names) recorded in `schema_migrations`; empty when it does not exist."""
    db = quote_identifier(database)
    exists = client.query(f"EXISTS TABLE {db}.schema_migrations").result_rows
    if not exists or not exists[0][0]:
        return {}
    result = client.query(f"SELECT version, any(name) FROM {db}.schema_migrations GROUP BY version")
    return {int(version): str(name) for version, name in result.result_rows}


def migrate(
    client: Client,
    database: str,
    *,
    ttl_days: int = DEFAULT_TTL_DAYS,
    migrations: Sequence[Migration] = MIGRATIONS,
) -> list[int]:
    """Create `database` and apply the migrations it lacks, in order; returns their versions.

    Statements are `IF NOT EXISTS`, so a migration cut short (or two workers starting at
    once) is simply applied again. `ttl_days` is read when a table is created.
    """
    versions = [m.version for m in migrations]
    if versions != sorted(set(versions)):
        raise ValueError(f"migration versions must be unique and ascending: {versions}")
    db = quote_identifier(database)
    client.command(f"CREATE DATABASE IF NOT EXISTS {db}")
    client.command(
        f"""CREATE TABLE IF NOT EXISTS {db}.schema_migrations (
    version UInt32,
    name String,
    applied_at {_DT}
) ENGINE = ReplacingMergeTree ORDER BY version"""
    )
    done = applied_migrations(client, database)
    applied: list[int] = []
    for migration in migrations:
        if migration.version in done:
            continue
        log.info("applying ClickHouse migration %d (%s)", migration.version, migration.name)
        for statement in migration.statements(db, ttl_days):
            client.command(statement)
        client.command(
            f"INSERT INTO {db}.schema_migrations (version, name, applied_at) "
            "VALUES ({version:UInt32}, {name:String}, now64(3))",
            parameters={"version": migration.version, "name": migration.name},
        )
        applied.append(migration.version)
    return applied


# --- the sink ------------------------------------------------------------------------------


class UnsavedRowsError(RuntimeError):
    """`flush(spill_rest=True)` could put some rows neither into ClickHouse nor on disk."""


class _PoisonBatchError(Exception):
    """A batch the client cannot even encode: retrying would never help."""


# Errors raised while encoding rows on the client; everything else (network, server) is
# treated as an outage and retried.
_ENCODING_ERRORS = (DataError, TypeError, ValueError, AttributeError, OverflowError)


@dataclass(slots=True)
class _Batch:
    seq: int
    table: str
    columns: tuple[str, ...]
    count: int
    rows: list[Sequence[Any]] | None  # None once spilled to `path`
    path: Path | None = None
    token: str | None = None


@dataclass(slots=True)
class SinkStats:
    """Counters for metrics and tests."""

    written_rows: int = 0
    inserts: int = 0
    failed_inserts: int = 0
    spilled_batches: int = 0
    rejected_rows: int = 0
    last_error: str | None = None


def _batch_token(table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    digest = hashlib.sha256(f"{table}\0{','.join(columns)}\0".encode())
    digest.update(orjson.dumps(rows, default=str))
    return "concord-" + digest.hexdigest()


class ClickHouseSink:
    """Batched, idempotent, outage-proof inserts into Concord's tables.

    The caller adds rows (dicts keyed by the table's columns, see `sinks.rows`), asks
    `due(now)` from its timer and calls `flush()` (or `await aflush()`, which runs the
    inserts in a thread). Rows are delivered in the order they were added.
    """

    def __init__(
        self,
        client: Client,
        database: str,
        *,
        batch_rows: int = 5000,
        batch_seconds: float = 1.0,
        memory_rows: int = 100_000,
        max_backlog_rows: int = 1_000_000,
        spill_dir: Path | str | None = None,
        retry_initial: float = 0.5,
        retry_max: float = 30.0,
        dedup_tokens: bool = True,
        clock: Callable[[], float] = time.monotonic,
        tables: Mapping[str, Sequence[str]] = TABLE_COLUMNS,
    ) -> None:
        if batch_rows < 1 or memory_rows < 1 or max_backlog_rows < 1:
            raise ValueError("batch_rows, memory_rows and max_backlog_rows must be positive")
        self._client = client
        self.database = database
        self.batch_rows = batch_rows
        self.batch_seconds = batch_seconds
        self.memory_rows = memory_rows
        self.spill_dir = Path(spill_dir) if spill_dir is not None else None
        self.max_backlog_rows = max_backlog_rows if self.spill_dir is not None else memory_rows
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self.dedup_tokens = dedup_tokens
        self._clock = clock
        self._columns = {t: tuple(cols) for t, cols in tables.items()}
        self._getters = {t: operator.itemgetter(*cols) for t, cols in self._columns.items()}
        self._types: dict[tuple[str, tuple[str, ...]], list[str]] = {}

        self._lock = threading.Lock()  # guards the buffers and counters below
        self._flush_lock = threading.Lock()  # one flush at a time
        self._open: dict[str, list[Sequence[Any]]] = {}
        self._open_rows = 0
        self._open_since: float | None = None
        self._queue: deque[_Batch] = deque()
        self._memory_sealed = 0
        self._disk_rows = 0
        self._seq = 0
        self._backoff = 0.0
        self._next_attempt = 0.0
        self._closed = False
        self.stats = SinkStats()
        if self.spill_dir is not None:
            self.spill_dir.mkdir(parents=True, exist_ok=True)
            self._recover()

    # -- adding ---------------------------------------------------------------------------

    def add(self, table: str, row: Mapping[str, Any]) -> bool:
        """Buffer one row; returns False when the backlog is full (wait before adding more).

        A row is never refused: back-pressure is the caller's job (`wait_for_room`).
        """
        return self.add_many(table, (row,))

    def add_many(self, table: str, rows: Iterable[Mapping[str, Any]]) -> bool:
        """Buffer rows for one table; returns False when the backlog is full."""
        getter = self._getters.get(table)
        if getter is None:
            raise ValueError(f"unknown table {table!r}; known: {sorted(self._getters)}")
        values = [getter(row) for row in rows]  # a missing column fails here, in the caller
        if not values:
            return not self.full
        with self._lock:
            if self._closed:
                raise RuntimeError("the ClickHouse sink is closed")
            pending = self._open.setdefault(table, [])
            done = 0
            while done < len(values):
                chunk = values[done : done + self.batch_rows - len(pending)]
                pending.extend(chunk)
                self._open_rows += len(chunk)
                done += len(chunk)
                if len(pending) >= self.batch_rows:
                    self._seal_locked(table)
                    pending = self._open.setdefault(table, [])
            if self._open_rows and self._open_since is None:
                self._open_since = self._clock()
        return not self.full

    def _seal_locked(self, table: str) -> None:
        rows = self._open.pop(table, None)
        if not rows:
            return
        self._seq += 1
        self._queue.append(_Batch(self._seq, table, self._columns[table], len(rows), rows))
        self._open_rows -= len(rows)
        self._memory_sealed += len(rows)
        if self._open_rows == 0:
            self._open_since = None

    # -- state ----------------------------------------------------------------------------

    @property
    def backlog_rows(self) -> int:
        """Rows accepted but not yet in ClickHouse (memory and disk)."""
        return self._open_rows + self._memory_sealed + self._disk_rows

    @property
    def memory_rows_buffered(self) -> int:
        """Rows held in memory."""
        return self._open_rows + self._memory_sealed

    @property
    def disk_rows(self) -> int:
        """Rows spilled to disk, waiting for ClickHouse."""
        return self._disk_rows

    @property
    def full(self) -> bool:
        """The backlog reached its bound: stop adding until `wait_for_room` returns."""
        return self.backlog_rows >= self.max_backlog_rows

    @property
    def healthy(self) -> bool:
        """The last insert attempt succeeded (or none failed yet)."""
        return self._backoff == 0.0

    def due(self, now: float | None = None) -> bool:
        """Whether a flush should run now: a full batch, an aged one, a retry or a spill."""
        now = self._clock() if now is None else now
        if self._needs_spill():
            return True
        if now < self._next_attempt:
            return False
        if self._queue:
            return True
        since = self._open_since
        return since is not None and now - since >= self.batch_seconds

    def _needs_spill(self) -> bool:
        return self.spill_dir is not None and self._memory_sealed + self._open_rows > (
            self.memory_rows
        )

    # -- flushing -------------------------------------------------------------------------

    def flush(self, *, force: bool = False, spill_rest: bool = False) -> int:
        """Seal what is buffered and insert the backlog in order; returns rows written.

        During a backoff it only seals and spills, unless `force`. On an insert failure the
        batch stays at the head of the queue and the next attempt waits (exponential backoff).
        With `spill_rest`, whatever could not be delivered is then written to disk, not just
        what exceeds the memory bound, so an offset commit that follows cannot lose those rows
        to a crash; UnsavedRowsError when some stay in memory only (no spill dir, disk error).
        """
        with self._flush_lock:
            with self._lock:
                for table in list(self._open):
                    self._seal_locked(table)
                sealed = self._seq
            if not force and self._clock() < self._next_attempt:
                written = 0
                self._spill_excess(bound=0 if spill_rest else None)
            else:
                # Deliver first: with ClickHouse up, a burst over the memory bound goes
                # straight to it instead of through the disk; what is still queued after a
                # failure spills.
                written = self._deliver()
                self._spill_excess(bound=0 if spill_rest and self._backoff else None)
            if spill_rest:
                with self._lock:
                    unsaved = sum(
                        b.count for b in self._queue if b.seq <= sealed and b.rows is not None
                    )
                if unsaved:
                    raise UnsavedRowsError(
                        f"{unsaved} rows are neither in ClickHouse nor on disk "
                        f"({self.stats.last_error})"
                    )
            return written

    async def aflush(self, *, force: bool = False, spill_rest: bool = False) -> int:
        """`flush` in a worker thread, so inserts do not block the event loop."""
        return await asyncio.to_thread(self.flush, force=force, spill_rest=spill_rest)

    def read(self, query: Callable[[Client], R]) -> R:
        """Deliver what is buffered, then run a read on the sink's client.

        Reads and flushes take turns (an embedded engine serves one call at a time), and the
        read sees every row accepted before it. With ClickHouse down it raises, as the
        delivery left the rows queued.
        """
        self.flush(force=True)
        with self._flush_lock:
            return query(self._client)

    async def aread(self, query: Callable[[Client], R]) -> R:
        """`read` in a worker thread."""
        return await asyncio.to_thread(self.read, query)

    async def wait_for_room(self, poll_seconds: float = 0.05) -> None:
        """Return once the backlog is below its bound, flushing whenever a flush is due."""
        while self.full:
            if self.due():
                await self.aflush()
            else:
                await asyncio.sleep(poll_seconds)

    def _deliver(self) -> int:
        written = 0
        with self._lock:
            # Only what was sealed when the flush began: producers that keep adding cannot
            # keep one flush (and its thread) busy forever.
            last = self._seq
        while True:
            with self._lock:
                if not self._queue or self._queue[0].seq > last:
                    break
                batch = self._queue[0]
            try:
                self._insert(batch)
            except _PoisonBatchError as exc:
                self._reject(batch, exc)
                continue
            except Exception as exc:
                self._failed(batch, exc)
                break
            with self._lock:
                self._queue.popleft()
                if batch.path is None:
                    self._memory_sealed -= batch.count
                else:
                    self._disk_rows -= batch.count
            if batch.path is not None:
                batch.path.unlink(missing_ok=True)
            written += batch.count
            self.stats.written_rows += batch.count
            self.stats.inserts += 1
            if self._backoff:
                log.info("ClickHouse is back: delivering the backlog (%d rows)", self.backlog_rows)
            self._backoff = 0.0
            self._next_attempt = 0.0
        return written

    def _insert(self, batch: _Batch) -> None:
        try:
            rows = batch.rows if batch.rows is not None else self._load(batch)
            if batch.token is None:
                batch.token = _batch_token(batch.table, batch.columns, rows)
        except (*_ENCODING_ERRORS, OSError) as exc:
            raise _PoisonBatchError(f"cannot read batch {batch.seq}: {exc}") from exc
        types = self._column_types(batch.table, batch.columns)
        settings = {"insert_deduplication_token": batch.token} if self.dedup_tokens else None
        try:
            self._client.insert(
                batch.table,
                rows,
                column_names=list(batch.columns),
                database=self.database,
                column_type_names=types,
                settings=settings,
            )
        except _ENCODING_ERRORS as exc:
            raise _PoisonBatchError(f"{type(exc).__name__}: {exc}") from exc

    def _column_types(self, table: str, columns: tuple[str, ...]) -> list[str]:
        key = (table, columns)
        types = self._types.get(key)
        if types is None:
            # One DESCRIBE per table per sink, instead of one per insert.
            result = self._client.query(
                f"DESCRIBE TABLE {quote_identifier(self.database)}.{quote_identifier(table)}"
            )
            by_name = {str(r[0]): str(r[1]) for r in result.result_rows}
            missing = [c for c in columns if c not in by_name]
            if missing:
                raise RuntimeError(f"{self.database}.{table} has no columns {missing}")
            types = [by_name[c] for c in columns]
            self._types[key] = types
        return types

    def _failed(self, batch: _Batch, exc: Exception) -> None:
        self._backoff = (
            self.retry_initial if not self._backoff else min(self._backoff * 2, self.retry_max)
        )
        self._next_attempt = self._clock() + self._backoff
        self.stats.failed_inserts += 1
        self.stats.last_error = f"{type(exc).__name__}: {exc}"
        log.warning(
            "ClickHouse insert into %s failed (%s); %d rows kept, retrying in %.1fs",
            batch.table,
            self.stats.last_error,
            self.backlog_rows,
            self._backoff,
        )

    def _reject(self, batch: _Batch, exc: Exception) -> None:
        # An unencodable batch would block the queue forever; it is set aside, never dropped
        # silently: kept on disk (when there is a spill dir) for a person to look at.
        where = "dropped"
        if self.spill_dir is not None:
            target = self._rejected_dir() / f"{batch.seq:012d}-{batch.table}.jsonl"
            try:
                if batch.path is not None:
                    os.replace(batch.path, target)
                else:
                    self._write_segment(target, batch, batch.rows or [], token="")
                where = f"kept in {target}"
            except OSError as write_error:
                where = f"dropped, cannot write {target}: {write_error}"
        with self._lock:
            self._queue.popleft()
            if batch.path is None:
                self._memory_sealed -= batch.count
            else:
                self._disk_rows -= batch.count
        self.stats.rejected_rows += batch.count
        self.stats.last_error = str(exc)
        log.error(
            "ClickHouse cannot take a %s batch of %d rows (%s); %s",
            batch.table,
            batch.count,
            exc,
            where,
        )

    # -- spilling -------------------------------------------------------------------------

    def _rejected_dir(self) -> Path:
        assert self.spill_dir is not None
        rejected = self.spill_dir / "rejected"
        rejected.mkdir(exist_ok=True)
        return rejected

    def _spill_excess(self, bound: int | None = None) -> None:
        """Move the newest in-memory batches to disk until memory is within its bound."""
        if self.spill_dir is None:
            return
        bound = self.memory_rows if bound is None else bound
        with self._lock:
            excess = self._memory_sealed + self._open_rows - bound
            chosen: list[_Batch] = []
            for batch in reversed(self._queue):
                if excess <= 0:
                    break
                if batch.rows is not None:
                    chosen.append(batch)
                    excess -= batch.count
        for batch in chosen:
            rows = batch.rows or []
            if batch.token is None:
                batch.token = _batch_token(batch.table, batch.columns, rows)
            path = self.spill_dir / f"{batch.seq:012d}.jsonl"
            try:
                self._write_segment(path, batch, rows, token=batch.token)
            except OSError as exc:
                log.error("cannot spill a ClickHouse batch to %s: %s; kept in memory", path, exc)
                return
            with self._lock:
                batch.path = path
                batch.rows = None
                self._memory_sealed -= batch.count
                self._disk_rows += batch.count
            self.stats.spilled_batches += 1

    @staticmethod
    def _write_segment(
        path: Path, batch: _Batch, rows: Sequence[Sequence[Any]], token: str
    ) -> None:
        header = {
            "table": batch.table,
            "columns": list(batch.columns),
            "rows": len(rows),
            "token": token,
        }
        tmp = path.with_suffix(".tmp")
        with tmp.open("wb") as out:
            out.write(orjson.dumps(header) + b"\n")
            for row in rows:
                out.write(orjson.dumps(row, default=str) + b"\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)  # a segment is either whole or absent

    @staticmethod
    def _load(batch: _Batch) -> list[Sequence[Any]]:
        assert batch.path is not None
        with batch.path.open("rb") as segment:
            next(segment)  # header
            return [orjson.loads(line) for line in segment]

    def _recover(self) -> None:
        """Queue the segments a previous run left behind, oldest first."""
        assert self.spill_dir is not None
        for tmp in self.spill_dir.glob("*.tmp"):
            tmp.unlink()
        for path in sorted(self.spill_dir.glob("*.jsonl")):
            try:
                with path.open("rb") as segment:
                    header = orjson.loads(segment.readline())
                seq = int(path.stem)
                batch = _Batch(
                    seq,
                    header["table"],
                    tuple(header["columns"]),
                    int(header["rows"]),
                    None,
                    path,
                    header["token"] or None,
                )
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.error("unreadable ClickHouse spill segment %s (set aside): %s", path, exc)
                path.replace(self._rejected_dir() / path.name)
                continue
            self._queue.append(batch)
            self._disk_rows += batch.count
            self._seq = max(self._seq, seq)
        if self._queue:
            log.info("recovered %d spilled rows for ClickHouse", self._disk_rows)

    # -- closing --------------------------------------------------------------------------

    def close(self) -> int:
        """Flush what can be flushed, spill the rest when possible; returns rows not written."""
        with self._lock:
            already, self._closed = self._closed, True
        if not already:
            self.flush(force=True)
            with self._flush_lock:
                self._spill_excess(bound=0)  # what is left survives on disk for the next run
        left = self.backlog_rows
        if left:
            where = "in memory, lost" if self.memory_rows_buffered else "on disk"
            log.error("ClickHouse sink closed with %d rows undelivered (%s)", left, where)
        return left

    async def aclose(self) -> int:
        """`close` in a worker thread."""
        return await asyncio.to_thread(self.close)
