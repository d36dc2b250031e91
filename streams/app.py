"""The Faust app factory: topics, tables, agents and web views. Nothing runs at import time."""

from __future__ import annotations

from typing import Any

import faust
from aiohttp import web
from faust.web import Request, Response, View

from schemas.events import OrderDetails
from schemas.privacy import phone_hash
from schemas.routing import load_routing
from schemas.settings import Settings
from schemas.status_map import load_status_map
from sinks import metrics
from streams import faust_consumer, tansu
from streams.breaker import BreakerStage
from streams.decisions import DecisionStage, route_decisions
from streams.dedupe import DedupeStage
from streams.ingest import IngestStage
from streams.orders import OrderStage
from streams.rules.dedupe import DedupeRules
from streams.rules.ingest import IngestRules
from streams.topics import TopicNames, kafka_auth


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
        # One request per message (linger 0) costs ~45% throughput and most broker CPU.
        "producer_linger": 0.05,
        "producer_max_batch_size": 262_144,
        # Room for four ingest batches, so the consumer rarely blocks on a full buffer.
        "stream_buffer_maxsize": 4 * settings.ingest_batch_max,
        "web_host": settings.web_host,
        "web_port": settings.web_port,
        "web_bind": settings.web_host,
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


def create_app(settings: Settings) -> faust.App:
    """Build the Faust app for these settings."""
    app = faust.App(settings.app_id, **faust_settings(settings))
    faust_consumer.install(app, eager_drain=settings.consumer_fastpath)
    names = TopicNames.from_settings(settings)
    rules = IngestRules(load_status_map(settings.status_map_file))

    source_topic = app.topic(*names.sources.values(), key_type=bytes, value_type=bytes)
    refs = app.Table("ingest-refs")  # json keys and values
    stage = IngestStage(
        app,
        refs,
        rules,
        names,
        end_marker_key=tansu.END_MARKER_KEY if tansu.needs_changelog_end_marker(settings) else None,
    )

    @app.agent(source_topic, name="ingest")
    async def ingest(stream: faust.StreamT[bytes]) -> None:
        async for batch in stream.take_events(
            settings.ingest_batch_max, within=settings.ingest_batch_within
        ):
            await stage.process(batch)

    routing = load_routing(settings.routing_file)
    end_marker = tansu.END_MARKER_KEY if tansu.needs_changelog_end_marker(settings) else None
    dedupe_rules = DedupeRules(window=settings.duplicate_window)
    normalized_topic = app.topic(names.normalized, key_type=bytes, value_type=bytes)
    # bytes keys are raw on the changelog, so Faust routes /orders/{id} by the same
    # partitioner that placed the order on concord.normalized; values are JSON.
    order_table = app.Table("order-state", key_type=bytes)
    orders = OrderStage(
        app,
        order_table,
        names,
        settings,
        routing,
        fingerprint=lambda details: dedupe_rules.fingerprint(
            OrderDetails.model_validate(details)
        ).encode(),
        end_marker_key=end_marker,
    )
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
    decisions = DecisionStage(
        app,
        app.Table("anomaly-index", key_type=bytes),
        names,
        on_anomaly=orders.record_anomaly,
        end_marker_key=end_marker,
    )

    @app.agent(normalized_topic, name="orders")
    async def join_orders(stream: faust.StreamT[bytes]) -> None:
        async for batch in stream.take_events(
            settings.ingest_batch_max, within=settings.ingest_batch_within
        ):
            await orders.process(batch)

    @app.agent(app.topic(names.placements, key_type=bytes, value_type=bytes), name="dedupe")
    async def dedupe_orders(stream: faust.StreamT[bytes]) -> None:
        async for batch in stream.take_events(
            settings.ingest_batch_max, within=settings.ingest_batch_within
        ):
            await dedupe.process(batch)

    @app.agent(app.topic(names.decisions, key_type=bytes, value_type=bytes), name="decisions")
    async def route_decision(stream: faust.StreamT[bytes]) -> None:
        async for batch in stream.take_events(100, within=settings.ingest_batch_within):
            await route_decisions(decisions.producer, names, batch)

    @app.agent(
        app.topic(names.anomaly_index, key_type=bytes, value_type=bytes), name="anomaly-index"
    )
    async def decide(stream: faust.StreamT[bytes]) -> None:
        async for batch in stream.take_events(1000, within=settings.ingest_batch_within):
            await decisions.process(batch)

    breaker = BreakerStage(
        app,
        app.Table("breaker", key_type=bytes, partitions=1),
        names,
        settings.breaker,
        on_anomaly=orders.record_anomaly,
        end_marker_key=end_marker,
    )

    @app.agent(
        app.topic(names.breaker, key_type=bytes, value_type=bytes, partitions=1), name="breaker"
    )
    async def run_breaker(stream: faust.StreamT[bytes]) -> None:
        async for batch in stream.take_events(1000, within=settings.ingest_batch_within):
            await breaker.process(batch)

    @app.timer(2.0)
    async def audit_positions() -> None:
        for each in (stage, orders, dedupe, decisions, breaker):
            await each.audit_positions()

    @app.timer(1.0)
    async def advance_event_time() -> None:
        await orders.tick()

    @app.timer(300.0)
    async def evict_finished_state() -> None:
        await orders.evict()
        await dedupe.expire_windows()

    @app.page("/metrics")
    class MetricsView(View):
        async def get(self, request: Request) -> Response:
            body, content_type = metrics.exposition()
            return web.Response(body=body, headers={"Content-Type": content_type})

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

    @app.page("/orders")
    class OrderSearch(View):
        async def get(self, request: Request) -> Response:
            phone = request.query.get("phone", "").strip()
            if not phone:
                return self.json({"error": "give ?phone=… to find a customer's orders"}, status=400)
            return self.json({"orders": orders.orders_by_phone(phone_hash(phone))})

    @app.page("/health")
    class HealthView(View):
        async def get(self, request: Request) -> Response:
            return self.json({"status": "ok", "app": settings.app_id})

    app.conf.concord = settings  # type: ignore[attr-defined]
    return app
