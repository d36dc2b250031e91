"""Dedupe stage wiring: ERP orders keyed by fingerprint in, `duplicate_order` anomalies out.

The per-order stage publishes each order's details once, on `concord.placements`, keyed by
`DedupeRules.fingerprint`: every order that could duplicate another lands on one key, whose
whole state is a `FingerprintWindow` (streams.rules.dedupe) in the `dedupe-windows` table.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

import orjson
from faust.types import Message, TableT

from schemas.anomalies import Anomaly
from schemas.events import OrderDetails
from schemas.routing import RoutingTable
from schemas.settings import Settings
from sinks import metrics
from streams.outputs import anomaly_records
from streams.produce import Outgoing
from streams.rules.dedupe import DedupeRules, FingerprintWindow, duplicate_anomaly
from streams.rules.routing import route
from streams.rules.watermark import UpstreamMarks, Watermark, as_us, from_us, parse_us, span_us
from streams.stage import PartitionedStage, raw_key
from streams.topics import TopicNames

# How far behind the per-order watermark dedupe keeps orders. Placements reach it a batch
# apart per partition, and an order can come in well behind event time: in one flat-out demo
# replay an Excel order (placed 16:41, entered 17:22) was placed when the watermark was past
# 00:30, and an hour of slack had already dropped its partner (placed 16:38). A day of orders
# costs little memory (a few hundred bytes each) and pairs such stragglers too.
REPLAY_SLACK = timedelta(hours=24)


def placement(order_id: str, event: dict[str, Any], watermark_us: int | None) -> dict[str, Any]:
    """The record the per-order stage publishes for an ERP event that carries the order.

    `wm` is the per-order stage's watermark (event time across every source partition): the
    dedupe stage's clock, so a fast partition cannot expire orders a slow one still pairs.
    """
    return {
        "order_id": order_id,
        "order": event["order"],
        "event_id": event["event_id"],
        "status": event.get("status", ""),
        "occurred_at": event["occurred_at"],
        "wm": watermark_us,
    }


class DedupeStage(PartitionedStage):
    """Pairs orders with one fingerprint placed within the sliding window."""

    def __init__(
        self,
        app: Any,
        table: TableT,
        topics: TopicNames,
        settings: Settings,
        rules: DedupeRules,
        routing: RoutingTable,
        *,
        on_anomaly: Callable[[Anomaly], None],
        end_marker_key: str | None,
    ):
        super().__init__(
            app,
            table,
            [topics.placements],
            end_marker_key=end_marker_key,
            encode_key=raw_key,
        )
        self.topics = topics
        self.rules = rules
        self.routing = routing
        self.on_anomaly = on_anomaly
        # The clock is the per-order stage's watermark carried by each placement, less
        # REPLAY_SLACK (above). Memory grows by a day of orders.
        self.watermark = Watermark(settings.allowed_lateness, settings.watermark_idle_after)
        self._marks: UpstreamMarks[int] = UpstreamMarks(settings.source_idle_after)
        self._slack_us = span_us(REPLAY_SLACK)

    def fingerprint_key(self, details: dict[str, Any]) -> bytes:
        """The placements key of an order's details (raises ValueError when they are invalid)."""
        return self.rules.fingerprint(OrderDetails.model_validate(details)).encode()

    async def process(self, messages: Sequence[Message]) -> None:
        """Add a batch of orders to their fingerprint windows; publish the pairs they make."""
        await self._baselines({m.tp for m in messages})
        wall = self.wall_clock()
        wall_us = as_us(wall)
        now = time.monotonic()
        store = self.table.data
        touched: dict[bytes, tuple[int, FingerprintWindow]] = {}
        out: list[Outgoing] = []
        for msg in messages:
            if not self._in_sequence(msg, now):
                continue
            body = orjson.loads(msg.value)
            if body.get("wm") is not None:
                # The slowest placements partition sets the clock (each gets every mark).
                self._marks.observe_us("orders", msg.partition, body["wm"], wall_us)
                merged = self._marks.value_us(None, wall_us)
                if merged is not None:
                    self.watermark.advance_to_us(merged - self._slack_us, wall_us)
            if "order_id" not in body:
                continue  # a mark only
            occurred_us = parse_us(body["occurred_at"])
            watermark = self.watermark.value
            key: bytes = msg.key
            held = touched.get(key)
            state = held[1] if held else FingerprintWindow.from_json(store.get(key))
            order = OrderDetails.model_validate(body["order"])
            pairs = self.rules.observe(
                state,
                body["order_id"],
                order,
                event_id=body["event_id"],
                status=body["status"],
                occurred_at=from_us(occurred_us),
                watermark=watermark,
            )
            touched[key] = (msg.partition, state)
            for pair in pairs:
                owner = route(pair.routing_facts(), self.routing)
                anomaly = duplicate_anomaly(pair, wall, owner)
                out += anomaly_records(self.topics, anomaly, indexed=True)
                metrics.DUPLICATES.labels(pair.second.channel).inc()
                self.on_anomaly(anomaly)
        if out:
            await self.producer.send(out)
        await self._persist(
            {
                key: (partition, None if state.is_empty else state.to_json())
                for key, (partition, state) in touched.items()
            }
        )

    async def expire_windows(self) -> int:
        """Delete fingerprint windows the watermark has left behind (a timer); how many."""
        watermark = self.watermark.value
        if watermark is None or self.app.rebalancing:
            return 0
        partitions = await self.producer.partitions(self.topics.placements)
        gone: dict[bytes, tuple[int, None]] = {}
        for key, raw in list(self.table.data.items()):
            if raw is not None and self.rules.expire(FingerprintWindow.from_json(raw), watermark):
                gone[key] = (self.producer.partition_for_key(key, partitions), None)
        await self._persist(gone)
        return len(gone)
