"""The worker's feed into ClickHouse: rows buffered as the stages run, stored before each commit.

The stages hand over what they produce (topic records, order states, latency observations,
KPI figures); `sinks.rows` maps them, personal data masked, and the `ClickHouseSink` batches
them. The consumer awaits `before_commit` before it commits offsets (see
`streams.faust_consumer.install`), so an event is never marked done while its rows are
nowhere: they are in ClickHouse, or, while it is down, in the spill dir under the data dir,
delivered from there when it is back (by this run or the next). Every table deduplicates, so
rows repeated by a redelivery after a crash leave the same rows after FINAL.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta
from functools import partial
from typing import Any, cast

import orjson
from clickhouse_connect.driver import Client
from clickhouse_connect.driver.exceptions import Error as ClickHouseError

from schemas.anomalies import Anomaly, AnomalyState, AnomalyType, Command, CommandKind
from schemas.privacy import PhoneHasher
from schemas.settings import Settings
from sinks import rows
from sinks.clickhouse import ClickHouseSink, R, connect, migrate
from streams.rules.breaker import Evaluation
from streams.rules.consistency import TERMINAL_GRACE
from streams.rules.order_state import OrderState
from streams.rules.refresh_latency import Observation
from streams.rules.routing import DEFAULT_WINDOW as ROUTING_WINDOW
from streams.rules.watermark import from_us

log = logging.getLogger(__name__)

# clickhouse-connect waits up to 300 s for an answer by default; a commit waits on inserts,
# so an unresponsive server must fail (and the rows spill) much sooner.
_HTTP_TIMEOUTS = {"connect_timeout": 5, "send_receive_timeout": 30}


class WarehouseDisabledError(RuntimeError):
    """A read asked of a worker that writes no ClickHouse."""


class _LazyClient:
    """A client that connects and migrates on first use and retries that on the next one.

    ClickHouse being down when the worker starts is then one more outage the sink rides out
    (rows kept, spilled, delivered later) instead of a worker that cannot start.
    """

    def __init__(self, dsn: str, database: str) -> None:
        self._dsn = dsn
        self._database = database
        self._lock = threading.Lock()
        self._client: Client | None = None

    def get(self) -> Client:
        """The connected client, connecting (and migrating) first if needed."""
        with self._lock:
            if self._client is None:
                args = _HTTP_TIMEOUTS if self._dsn.startswith("http") else {}
                client = connect(self._dsn, self._database, **args)
                try:
                    migrate(client, self._database)
                except BaseException:
                    client.close()
                    raise
                self._client = client
            return self._client

    def __getattr__(self, name: str) -> Any:
        return getattr(self.get(), name)

    def close(self) -> None:
        """Close the connection, if one was made."""
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None


def _window(span: timedelta) -> str:
    # Labelled like the latency windows ("1h", "24h").
    seconds = int(span.total_seconds())
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def normalized_row(value: bytes, *, phones: PhoneHasher) -> dict[str, Any] | None:
    """A concord.normalized record → an `events` row; None for decisions forwarded there."""
    body = orjson.loads(value)
    return None if "decision" in body else rows.event_row(body, phones=phones)


def breaker_history_rows(
    evaluations: Iterable[Evaluation], emits: Iterable[Anomaly | Command]
) -> list[dict[str, Any]]:
    """The breaker's evaluations ("evaluate") and transitions ("warn", "throttle", "resume")."""
    # A transition carries the figures of the evaluation at its instant.
    at_instant = {e.at: e for e in evaluations}
    out = [_breaker_row(at, "evaluate", e) for at, e in at_instant.items()]
    for emit in emits:
        if isinstance(emit, Command):
            if emit.kind in (CommandKind.INTAKE_THROTTLE, CommandKind.INTAKE_RESUME):
                event = emit.kind.value.removeprefix("intake.")
                out.append(_breaker_row(emit.issued_at, event, at_instant.get(emit.issued_at)))
        elif emit.type == AnomalyType.INTAKE_OVERLOAD and emit.state == AnomalyState.OPEN:
            out.append(_breaker_row(emit.opened_at, "warn", at_instant.get(emit.opened_at)))
    return out


def _breaker_row(at: datetime, event: str, evaluation: Evaluation | None) -> dict[str, Any]:
    created, allocated, failed = evaluation.totals if evaluation is not None else (0, 0, 0)
    return rows.breaker_row(
        at,
        stage=evaluation.stage if evaluation is not None else 0,
        event=event,
        orders_created=created,
        allocated=allocated,
        allocation_failed=failed,
    )


def dead_letter_record_row(value: bytes) -> dict[str, Any]:
    """A concord.deadletter record (streams.ingest.dead_letter) → a `dead_letters` row."""
    body = orjson.loads(value)
    original = body.get("original_b64")
    return rows.dead_letter_row(
        topic=body["topic"],
        partition=body["partition"],
        offset=body["offset"],
        key=body.get("key"),
        reason=body["reason"],
        error=body.get("error") or "",
        received_at=body["received_at"],
        original=base64.b64decode(original) if original else None,
    )


def order_state_version(state: OrderState) -> int:
    """The `order_state` version: the order's latest event time in µs."""
    # A pure function of the state, which Faust restores from its changelog: after a restart
    # the versions go on from where they were and a replayed event maps to the same row. (A
    # counter kept in memory would start again at 0 and lose to every row written before the
    # restart.) It never decreases, the state being a max over its events; a change that
    # leaves it equal (a late event of another system) ties, and a tie goes to the row
    # inserted last, the newest state, since the sink inserts in the order rows were added.
    return state.last_event_us or 0


def order_state_record_row(
    state: OrderState, consistent: bool, *, phones: PhoneHasher
) -> dict[str, Any]:
    """A joined order state → an `order_state` row (the phone only as its hash)."""
    systems = {
        source.value: {
            "stage": "" if view.stage is None else view.stage.value,
            "phase": "" if view.phase is None else view.phase.value,
            # Only failure markers so far: the system's last report is its update.
            "updated_at": from_us(view.at_us if view.stage is not None else view.seen_us),
        }
        for source, view in state.systems.items()
    }
    facts = state.facts
    return rows.order_state_row(
        state.order_id,
        systems=systems,
        consistent=consistent,
        version=order_state_version(state),
        phones=phones,
        customer_id=facts.customer_id if facts else None,
        channel=facts.channel if facts else None,
        vip=facts.vip if facts else False,
        priority=facts.priority if facts else "normal",
        placed_at=from_us(facts.placed_at_us) if facts and facts.placed_at_us else None,
        customer_phone_hash=facts.phone_hash if facts else None,
    )


def latency_record_row(obs: Observation) -> dict[str, Any]:
    """A refresh-latency observation → a `refresh_latency` row (a revision replaces it)."""
    return rows.latency_row(
        obs.order_id,
        target=obs.target.value,
        phase=obs.phase.value,
        erp_event_id=obs.erp_event_id,
        target_event_id=obs.target_event_id,
        t0=obs.t0,
        t1=obs.t1,
    )


def kpi_rows(at: datetime, kpis: Mapping[str, Any]) -> list[dict[str, Any]]:
    """`OrderStage.kpis()` → `kpi_snapshots` rows, one per figure known (None is skipped)."""
    consistency = kpis.get("consistency") or {}
    routing = kpis.get("auto_routing") or {}
    figures: list[tuple[str, str, str, float | None]] = [
        ("consistency_ratio", "", _window(TERMINAL_GRACE), consistency.get("ratio")),
        ("auto_routing_ratio", "", _window(ROUTING_WINDOW), routing.get("ratio")),
    ]
    for target, windows in (kpis.get("refresh_latency_seconds") or {}).items():
        for window, stats in windows.items():
            figures.append(("refresh_latency_p50_seconds", target, window, stats.get("median")))
            figures.append(("refresh_latency_p95_seconds", target, window, stats.get("p95")))
    return [
        rows.kpi_row(at, kpi, value, target=target, window=window)
        for kpi, target, window, value in figures
        if value is not None
    ]


class Warehouse:
    """Buffers the worker's rows for ClickHouse and stores them before offsets are committed."""

    def __init__(self, settings: Settings, phones: PhoneHasher) -> None:
        self.enabled = settings.clickhouse_enabled
        self.phones = phones
        self.database = settings.clickhouse_database
        # One data dir per worker, as for Faust's own: two sinks on one spill dir would
        # deliver (and delete) each other's segments.
        self.spill_dir = settings.data_dir / "clickhouse-spill"
        self._client = _LazyClient(settings.clickhouse_url, settings.clickhouse_database)
        self._sink: ClickHouseSink | None = None
        self._stopped = False

    @property
    def sink(self) -> ClickHouseSink:
        """The sink, made on first use (it reloads rows a previous run spilled)."""
        if self._sink is None:
            self._sink = ClickHouseSink(
                cast(Client, self._client), self.database, spill_dir=self.spill_dir
            )
        return self._sink

    @property
    def backlog_rows(self) -> int:
        """Rows accepted and not yet in ClickHouse (memory and disk)."""
        return 0 if self._sink is None else self._sink.backlog_rows

    async def start(self) -> None:
        """Connect and migrate; with ClickHouse unreachable, log it and keep rows until it is up."""
        if not self.enabled:
            return
        sink = self.sink  # made now, so rows a previous run spilled are queued first
        try:
            await asyncio.to_thread(self._client.get)
        except (ClickHouseError, OSError) as exc:
            log.warning(
                "ClickHouse unreachable (%s): rows are kept (on disk past %d) until it is up",
                exc,
                sink.memory_rows,
            )

    async def stop(self) -> None:
        """Deliver what is buffered (what cannot be, is left on disk) and close."""
        if not self.enabled or self._stopped:
            return
        self._stopped = True
        if self._sink is not None:
            await self._sink.aclose()
        await asyncio.to_thread(self._client.close)

    # --- intake: synchronous and cheap, rows are only buffered -----------------------------

    def topic_records(self, topic_kind: str, values: Iterable[bytes]) -> None:
        """Records as on a topic: "normalized" (events), "anomalies" (anomalies, and the
        duplicate pairs among them) or "deadletter"."""
        if topic_kind == "anomalies":
            # Decoded once for both tables.
            parsed = self._mapped("anomalies", values, Anomaly.model_validate_json)
            self._add("anomalies", parsed, rows.anomaly_row)
            self._add(
                "duplicate_pairs", parsed, partial(rows.duplicate_pair_of, phones=self.phones)
            )
        elif topic_kind == "normalized":
            self._add("events", values, partial(normalized_row, phones=self.phones))
        elif topic_kind == "deadletter":
            self._add("dead_letters", values, dead_letter_record_row)
        else:
            raise ValueError(f"unknown topic kind {topic_kind!r}")

    def events(self, bodies: Iterable[Mapping[str, Any]]) -> None:
        """Normalised events as the per-order stage reads them (dicts) → `events` rows."""
        self._add("events", bodies, partial(rows.event_row, phones=self.phones))

    def outgoing(self, records: Iterable[Any]) -> None:
        """Produced records (streams.produce.Outgoing): anomalies and dead letters are kept."""
        anomalies: list[bytes] = []
        dead: list[bytes] = []
        for record in records:
            if record.value is None:
                continue
            kind = record.topic.rsplit(".", 1)[-1]
            if kind == "anomalies":
                anomalies.append(record.value)
            elif kind == "deadletter":
                dead.append(record.value)
        if anomalies:
            self.topic_records("anomalies", anomalies)
        if dead:
            self.topic_records("deadletter", dead)

    def order_states(self, items: Iterable[tuple[OrderState, bool]]) -> None:
        """(order state, consistent) pairs, e.g. each order a batch touched."""
        self._add(
            "order_state", items, lambda item: order_state_record_row(*item, phones=self.phones)
        )

    def latencies(self, observations: Iterable[Observation]) -> None:
        """Refresh-latency observations, revisions included."""
        self._add("refresh_latency", observations, latency_record_row)

    def breaker(
        self, evaluations: Iterable[Evaluation], emits: Iterable[Anomaly | Command]
    ) -> None:
        """What one breaker tick evaluated and changed → `breaker_history`."""
        self._add("breaker_history", breaker_history_rows(evaluations, emits), lambda row: row)

    def kpis(self, at: datetime, kpis: Mapping[str, Any]) -> None:
        """One KPI snapshot; `at` should be its event-time watermark, so replays rewrite it."""
        if self._accepting:
            self.sink.add_many("kpi_snapshots", kpi_rows(at, kpis))

    @property
    def _accepting(self) -> bool:
        # After stop the consumer has made its last commit: what still arrives belongs to
        # uncommitted events, which come again after the restart.
        return self.enabled and not self._stopped

    def _add(
        self, table: str, items: Iterable[Any], mapper: Callable[[Any], dict[str, Any] | None]
    ) -> None:
        out = self._mapped(table, items, mapper)
        if out:
            self.sink.add_many(table, out)

    def _mapped(
        self, table: str, items: Iterable[Any], mapper: Callable[[Any], R | None]
    ) -> list[R]:
        """`mapper` over `items` for `table`, the Nones and the malformed left out (logged)."""
        if not self._accepting:
            return []
        out: list[R] = []
        bad: list[str] = []
        for item in items:
            try:
                row = mapper(item)
            except (ValueError, KeyError, TypeError) as exc:
                # One malformed record must not stop the worker; it stays on its topic.
                bad.append(f"{type(exc).__name__}: {exc}")
                continue
            if row is not None:
                out.append(row)
        if bad:
            log.error("%d records for %s not mapped, skipped (%s)", len(bad), table, bad[0])
        return out

    # --- flushing --------------------------------------------------------------------------

    async def before_commit(self) -> None:
        """Put every row buffered so far into ClickHouse, or on disk while it is down."""
        if self._sink is None or self._stopped:
            return
        # No `force`: during a backoff this only spills (no insert attempt per commit); the
        # timer's `maybe_flush` retries. Raises UnsavedRowsError if some rows could not be
        # saved at all, which stops the commit (see streams.faust_consumer).
        await self._sink.aflush(spill_rest=True)

    async def maybe_flush(self) -> None:
        """Flush when the sink says a flush is due (a full or aged batch, a retry)."""
        if self._sink is not None and not self._stopped and self._sink.due():
            await self._sink.aflush()

    async def read(self, query: Callable[[Client], R]) -> R:
        """Run a read (e.g. `sinks.scorecard.day_figures`) on the worker's ClickHouse."""
        if not self.enabled:
            raise WarehouseDisabledError("ClickHouse is switched off (clickhouse_enabled)")
        return await self.sink.aread(query)

    async def wait_for_room(self) -> None:
        """Back-pressure: return once the backlog is below its bound."""
        if self._sink is not None and not self._stopped:
            await self._sink.wait_for_room()
