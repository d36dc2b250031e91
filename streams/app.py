"""The Faust app factory: topics, tables, agents and web views. Nothing runs at import time."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import faust
from aiohttp import web
from clickhouse_connect.driver.exceptions import Error as ClickHouseError
from faust.web import Request, Response, View

from schemas.events import OrderDetails
from schemas.privacy import PhoneHasher
from schemas.routing import load_routing
from schemas.settings import Settings
from schemas.status_map import load_status_map
from sinks import metrics
from sinks.scorecard import scorecard_for
from streams import faust_consumer, tansu
from streams.breaker import BreakerStage
from streams.decisions import DecisionStage, route_decisions
from streams.dedupe import DedupeStage
from streams.faust_consumer import RecordInbox
from streams.ingest import IngestStage
from streams.orders import OrderStage
from streams.phone_key import phone_key
from streams.rules.dedupe import DedupeRules
from streams.rules.ghosts import GhostRules
from streams.rules.ingest import IngestRules
from streams.rules.order_state import OrderJoin
from streams.rules.rate_limit import TokenBuckets
from streams.rules.scorecard import zone_name
from streams.rules.watermark import SourceTime
from streams.topics import TopicNames, kafka_auth
from streams.warehouse import Warehouse, WarehouseDisabledError
from streams.web_access import access_note, token_guard

log = logging.getLogger(__name__)


def faust_settings(settings: Settings) -> dict[str, Any]:
    """Faust configuration for Concord's settings (tansu overrides applied last)."""
    conf: dict[str, Any] = {
        "broker": settings.broker_url,
        "store": "memory://",
        "topic_partitions": settings.topic_partitions,
        "topic_replication_factor": settings.topic_replication,
        "key_serializer": "raw",
        "value_serializer": "raw",
        "consumer_auto_offset_reset": "earliest",
        "processing_guarantee": "at_least_once",
        "broker_session_timeout": settings.broker_session_timeout,
        "broker_heartbeat_interval": settings.broker_heartbeat_interval,
        "broker_rebalance_timeout": settings.broker_rebalance_timeout,
        # Commit by time (broker_commit_interval, 2.8 s) rather than every 10k acks: each
        # commit writes the per-order states changed since the last one, so fewer commits
        # write each busy order fewer times (+15% events/s through the pipeline here).
        "broker_commit_every": 100_000,
        # One request per message (linger 0) costs ~45% throughput and most broker CPU.
        "producer_linger": 0.05,
        "producer_max_batch_size": 262_144,
        "web_host": settings.web_host,
        "web_port": settings.web_port,
        "web_bind": settings.web_host,
        # Faust's /table pages would serve the raw per-order state: off.
        "web_tables_enabled": False,
        "datadir": str(settings.data_dir / "faust"),
        "table_cleanup_interval": 60.0,
    }
    auth = kafka_auth(settings)
    if auth:
        conf["broker_credentials"] = faust.SASLCredentials(
            username=settings.broker_username,
            password=settings.broker_password.get_secret_value()  # type: ignore[union-attr]
            if settings.broker_password
            else None,
            ssl_context=None,
        )
    conf.update(tansu.faust_overrides(settings))
    return conf


@dataclass(frozen=True)
class Stages:
    """The worker's five stages, wired to one another."""

    ingest: IngestStage
    orders: OrderStage
    dedupe: DedupeStage
    decisions: DecisionStage
    breaker: BreakerStage

    def all(self) -> tuple[IngestStage, OrderStage, DedupeStage, DecisionStage, BreakerStage]:
        """The stages in pipeline order."""
        return (self.ingest, self.orders, self.dedupe, self.decisions, self.breaker)


def build_stages(
    app: Any, settings: Settings, feed: Warehouse | None, phones: PhoneHasher
) -> Stages:
    """The stages and their tables (`app.Table`), each stage's rules and the links between
    them; `feed` takes their ClickHouse rows, `phones` hashes customers' phones. The worker's
    Faust app and the in-process harness (tests/stage_harness.py) build them here alike."""
    join = OrderJoin(phones)
    routing = load_routing(settings.routing_file)
    end_marker = tansu.END_MARKER_KEY if tansu.needs_changelog_end_marker(settings) else None
    dedupe_rules = DedupeRules(window=settings.duplicate_window)
    names = TopicNames.from_settings(settings)
    # source topics -> ingest: validate, crosswalk, dead letters -> concord.normalized
    ingest = IngestStage(
        app,
        app.Table("ingest-refs"),  # json keys and values
        IngestRules(
            load_status_map(settings.status_map_file),
            limits=settings.input_limits,
            details_wait=settings.order_details_wait,
        ),
        names,
        SourceTime(settings.allowed_lateness, settings.source_idle_after, settings.max_event_ahead),
        GhostRules(routing=routing),
        join,
        end_marker_key=end_marker,
    )
    # concord.normalized -> per-order join, KPIs, ghosts -> anomalies, commands, placements
    # (bytes keys are raw on the changelog, so Faust routes /orders/{id} by the partitioner
    # that placed the order on concord.normalized; values are kept as their JSON bytes)
    orders = OrderStage(
        app,
        app.Table("order-state", key_type=bytes, value_type=bytes),
        names,
        settings,
        routing,
        join,
        fingerprint=lambda details: dedupe_rules.fingerprint(
            OrderDetails.model_validate(details)
        ).encode(),
        warehouse=feed,
        end_marker_key=end_marker,
    )
    # concord.placements (by fingerprint) -> duplicate_order anomalies
    dedupe = DedupeStage(
        app,
        app.Table("dedupe-windows", key_type=bytes),
        names,
        settings,
        dedupe_rules,
        routing,
        on_anomaly=orders.record_anomaly,
        end_marker_key=end_marker,
    )
    # concord.decisions -> (by anomaly id) the anomaly's owner; concord.breaker -> the breaker
    decisions = DecisionStage(
        app,
        app.Table("anomaly-index", key_type=bytes),
        names,
        on_anomaly=orders.record_anomaly,
        end_marker_key=end_marker,
    )
    breaker = BreakerStage(
        app,
        app.Table("breaker", key_type=bytes, partitions=1),
        names,
        settings.breaker,
        on_anomaly=orders.record_anomaly,
        end_marker_key=end_marker,
        warehouse=feed,
    )
    ingest.on_anomaly = orders.record_anomaly
    return Stages(ingest, orders, dedupe, decisions, breaker)


def create_app(settings: Settings) -> faust.App:
    """Build the Faust app for these settings: the whole flow reads top to bottom here."""
    app = faust.App(settings.app_id, **faust_settings(settings))
    phones = phone_key(settings)  # the phone hashes' secret key
    warehouse = Warehouse(settings, phones.hasher)
    feed = warehouse if warehouse.enabled else None  # the stages' ClickHouse rows, if any
    names = TopicNames.from_settings(settings)
    stages = build_stages(app, settings, feed, phones.hasher).all()
    ingest, orders, dedupe, decisions, breaker = stages
    order_table = orders.table
    for each in stages:
        each.producer.tap = None if feed is None else feed.outgoing

    def topic(*topic_names: str, partitions: int | None = None) -> Any:
        return app.topic(*topic_names, key_type=bytes, value_type=bytes, partitions=partitions)

    inboxes: list[RecordInbox] = []

    def stage(
        name: str, topics: list[str], size: int, process: Any, partitions: int | None = None
    ) -> None:
        # The stage's topics are subscribed and delivered to it in bulk, batches of up to
        # `size` records (streams/faust_consumer.py), each acked once processed.
        if not settings.runs(name):
            return
        inbox = RecordInbox(name, topics, limit=4 * size)
        inboxes.append(inbox)
        app.topics.add(topic(*topics, partitions=partitions))

        async def batches(batch: list[Any]) -> None:
            await warehouse.wait_for_room()  # back-pressure while ClickHouse is behind
            await process(batch)

        async def run() -> None:
            await faust_consumer.serve(app, inbox, size, settings.ingest_batch_within, batches)

        run.__name__ = f"stage_{name}"
        app.task(run)

    batch_max = settings.ingest_batch_max
    stage("ingest", list(names.sources.values()), batch_max, ingest.run_batch)
    stage("orders", [names.normalized], batch_max, orders.run_batch)
    stage("dedupe", [names.placements], batch_max, dedupe.run_batch)
    stage(
        "decisions",
        [names.decisions],
        100,
        lambda batch: route_decisions(decisions.producer, names, batch),
    )
    stage("anomaly-index", [names.anomaly_index], 1000, decisions.run_batch)
    stage("breaker", [names.breaker], 1000, breaker.run_batch, partitions=1)
    faust_consumer.install(
        app,
        inboxes=inboxes,
        # Per-order states first, then the ClickHouse rows: both before the offsets.
        before_commit=[orders.before_commit, warehouse.before_commit],
        fetch_max_wait_ms=tansu.fetch_max_wait_ms(settings),
    )

    @app.task
    async def start_warehouse() -> None:
        await warehouse.start()

    @app.on_before_shutdown.connect  # after the consumer's last commit
    async def stop_warehouse(app: faust.App, **kwargs: Any) -> None:
        await warehouse.stop()

    @app.timer(1.0)
    async def flush_warehouse() -> None:
        await warehouse.maybe_flush()

    @app.timer(2.0)
    async def audit_positions() -> None:
        for each in stages:
            await each.audit_positions()

    @app.timer(1.0)
    async def advance_event_time() -> None:
        await ingest.tick()
        await orders.tick()

    @app.timer(300.0)
    async def evict_finished_state() -> None:
        await orders.evict()
        await dedupe.expire_windows()

    @app.page("/kpis")
    class KpiView(View):
        async def get(self, request: Request) -> Response:
            return self.json(orders.kpis())

    @app.page("/orders/{order_id}")
    class OrderView(View):
        @app.table_route(table=order_table, match_info="order_id")
        async def get(self, request: Request, order_id: str) -> Response:
            view = orders.order_view(order_id)
            if view is None:
                return self.json({"error": f"unknown order {order_id!r}"}, status=404)
            return self.json(view)

    searches = TokenBuckets(settings.phone_search_burst, settings.phone_search_per_minute / 60)

    @app.page("/orders")
    class OrderSearch(View):
        # Faust serves no access log (its aiohttp runner has access_log=None), so the query
        # string, the phone, is written nowhere; nor is it here.
        async def get(self, request: Request) -> Response:
            wait = searches.take(request.remote or "", time.monotonic())
            if wait:
                return self.json(
                    {"error": "too many phone searches from this address; try again later"},
                    status=429,
                    headers={"Retry-After": str(math.ceil(wait))},
                )
            phone = request.query.get("phone", "").strip()
            if not phone:
                return self.json({"error": "give ?phone=… to find a customer's orders"}, status=400)
            return self.json({"orders": orders.orders_by_phone(phones.hasher.lookup_hashes(phone))})

    desk = (Path(__file__).parent / "desk.html").read_bytes()

    @app.page("/desk")
    class DeskView(View):
        async def get(self, request: Request) -> Response:
            return web.Response(body=desk, headers={"Content-Type": "text/html; charset=utf-8"})

    @app.page("/scorecard")
    class ScorecardView(View):
        async def get(self, request: Request) -> Response:
            try:
                timezone = zone_name(request.query.get("tz", settings.timezone))
                day_text = request.query.get("day", "").strip()
                day = date.fromisoformat(day_text) if day_text else None
            except ValueError as exc:
                return self.json({"error": f"{exc}; ?day=YYYY-MM-DD&tz=Area/City"}, status=400)
            try:
                card = await warehouse.read(lambda client: scorecard_for(client, day, timezone))
            except WarehouseDisabledError as exc:
                return self.json({"error": str(exc)}, status=503)
            except (ClickHouseError, OSError) as exc:
                return self.json({"error": f"ClickHouse: {exc}"}, status=503)
            if card is None:
                return self.json({"error": "no order placed yet: nothing to score"}, status=404)
            return self.json(card)

    @app.page("/metrics")
    class MetricsView(View):
        async def get(self, request: Request) -> Response:
            body, content_type = metrics.exposition()
            return web.Response(body=body, headers={"Content-Type": content_type})

    @app.page("/health")
    class HealthView(View):
        async def get(self, request: Request) -> Response:
            return self.json({"status": "ok", "app": settings.app_id})

    if settings.api_token is not None:
        app.web.web_app.middlewares.append(token_guard(settings.api_token.get_secret_value()))

    @app.task
    async def announce_access() -> None:
        log.log(logging.INFO if settings.api_token else logging.WARNING, access_note(settings))
        log.info("phone hashes: key from %s", phones.origin)

    app.conf.concord = settings  # type: ignore[attr-defined]
    return app
