"""Breaker wiring (§7, stages 1–2): intake counts from every partition into one breaker.

The per-order stage counts, per batch and per `concord.normalized` partition, the orders the
ERP created and the orders whose stock reservation succeeded or failed, each order once
(`order_intake`, moved when an event changes it), in minute buckets of event time
(`IntakeCounts`), and publishes that delta with the partition's last offset and the
stage's watermark on the single-partition internal topic `concord.breaker`. Breaker
decisions go there too. One agent consumes it, so one `Breaker` exists in the whole group:
it folds each delta in once (by origin and offset), evaluates at the minimum watermark of
the partitions that reported, and keeps its state in a one-key table, so it survives a
restart in any stage. The rules and the transition table live in streams.rules.breaker.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import orjson
from faust.types import Message, TableT

from schemas.anomalies import Anomaly, Command, Decision
from sinks import metrics
from streams.decisions import decision_dead_letter
from streams.outputs import anomaly_records, command_record
from streams.produce import Outgoing
from streams.rules.breaker import Breaker, BreakerSettings, Evaluation
from streams.rules.ingest import Reason
from streams.rules.intake import IntakeCounts
from streams.rules.watermark import from_us
from streams.stage import PartitionedStage, raw_key
from streams.topics import TopicNames
from streams.warehouse import Warehouse

STATE_KEY = b"intake"


def delta_record(
    topics: TopicNames, origin: str, seq: int, counts: IntakeCounts, watermark_us: int | None
) -> Outgoing:
    """One partition's counts since its last delta, for the breaker topic."""
    body = {"origin": origin, "seq": seq, "counts": counts.to_json(), "wm": watermark_us}
    return Outgoing(topics.breaker, STATE_KEY, orjson.dumps(body), None, 0)


class BreakerStage(PartitionedStage):
    """The one breaker of the consumer group, on the single partition of `concord.breaker`."""

    def __init__(
        self,
        app: Any,
        table: TableT,
        topics: TopicNames,
        settings: BreakerSettings,
        *,
        on_anomaly: Callable[[Anomaly], None],
        end_marker_key: str | None,
        warehouse: Warehouse | None = None,
    ):
        super().__init__(
            app,
            table,
            [topics.breaker],
            end_marker_key=end_marker_key,
            encode_key=raw_key,
        )
        self.topics = topics
        self.settings = settings
        self.on_anomaly = on_anomaly
        self.warehouse = warehouse

    async def process(self, messages: Sequence[Message]) -> None:
        """Fold in a batch of deltas and decisions, evaluate, publish, persist."""
        await self._baselines({m.tp for m in messages})
        wall = self.wall_clock()
        now = time.monotonic()
        raw = self.table.data.get(STATE_KEY) or {}
        breaker = Breaker.from_json(raw.get("breaker"), self.settings)
        counts = IntakeCounts.from_json(raw.get("counts"))
        marks: dict[str, int] = dict(raw.get("marks", {}))
        emits: list[Anomaly | Command] = []
        out: list[Outgoing] = []
        partition = 0
        for msg in messages:
            if not self._in_sequence(msg, now):
                continue
            partition = msg.partition
            body = orjson.loads(msg.value)
            if "decision" in body:
                try:
                    emits += breaker.decide(Decision.model_validate(body["decision"]), wall)
                except ValueError as exc:
                    out.append(
                        decision_dead_letter(
                            self.topics,
                            msg,
                            body["decision"],
                            Reason.INVALID_DECISION,
                            str(exc),
                            wall,
                        )
                    )
                continue
            counts.apply_delta(body["origin"], body["seq"], IntakeCounts.from_json(body["counts"]))
            if body.get("wm") is not None:
                marks[body["origin"]] = max(marks.get(body["origin"], 0), body["wm"])
        evaluations: list[Evaluation] = []
        if marks:
            emits += breaker.tick(counts, from_us(min(marks.values())), wall)
            evaluations = breaker.evaluations
        if self.warehouse is not None:
            self.warehouse.breaker(evaluations, emits)
        for emit in emits:
            out += self._publish(emit)
        if out:
            await self.producer.send(out)
        self._report(breaker)
        state = {"breaker": breaker.to_json(), "counts": counts.to_json(), "marks": marks}
        await self._persist({STATE_KEY: (partition, state)})

    def _publish(self, emit: Anomaly | Command) -> list[Outgoing]:
        if isinstance(emit, Command):
            return [command_record(self.topics, emit, STATE_KEY)]
        self.on_anomaly(emit)
        return anomaly_records(self.topics, emit, indexed=False)  # no order: keyed "intake"

    def _report(self, breaker: Breaker) -> None:
        metrics.BREAKER_STAGE.set(breaker.stage)
        for evaluation in breaker.evaluations[-1:]:
            metrics.BREAKER_ORDERS.set(evaluation.totals.created)
            metrics.BREAKER_FAILURE_RATIO.set(evaluation.totals.failure_rate)
