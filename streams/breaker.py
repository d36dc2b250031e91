"""Breaker wiring (§7, stages 1–2): intake counts from every partition into one breaker.

The per-order stage keeps, per `concord.normalized` partition, the cumulative counts of its
orders (the ERP orders created and the stock reservations that succeeded or failed, each
order once, as of each instant: streams.rules.intake) in minute buckets of event time, the
minutes a window can still see at its event time. They are a function of the partition's
order states, and rebuilt from them after every assignment. After each batch it sends each
partition's counts whole (a snapshot, not a delta), with the partition's last offset read
and the stage's watermark, on the single-partition internal topic `concord.breaker`; a
partition whose counts did not change since it last sent them sends its watermark only.
Breaker decisions go there too. One agent consumes it, so one `Breaker` exists in the whole
group: it keeps each partition's latest snapshot by offset (`PartitionSnapshots`: one sent
again after a crash, at an offset already taken, is dropped), evaluates their sum at the
minimum watermark of the partitions that reported, and keeps its state in a one-key table,
so it survives a restart in any stage. The rules and the transition table live in
streams.rules.breaker.
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
from streams.rules.intake import IntakeCounts, PartitionSnapshots
from streams.rules.watermark import from_us
from streams.stage import PartitionedStage, raw_key
from streams.topics import TopicNames
from streams.warehouse import Warehouse

STATE_KEY = b"intake"


def snapshot_record(
    topics: TopicNames,
    origin: str,
    seq: int,
    counts: IntakeCounts | None,
    watermark_us: int | None,
) -> Outgoing:
    """One partition's counts as of its offset `seq` (None: unchanged, its watermark only),
    for the breaker topic."""
    body: dict[str, Any] = {"origin": origin, "seq": seq, "wm": watermark_us}
    if counts is not None:
        body["snapshot"] = counts.to_json()
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
        """Fold in a batch of snapshots and decisions, evaluate, publish, persist."""
        await self._baselines({m.tp for m in messages})
        wall = self.wall_clock()
        now = time.monotonic()
        raw = self.table.data.get(STATE_KEY) or {}
        breaker = Breaker.from_json(raw.get("breaker"), self.settings)
        intake = PartitionSnapshots.from_json(raw.get("intake"))
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
            # An earlier release's per-batch deltas (`counts`) are no snapshots: skipped; the
            # counts every partition sends after the upgrade's restart replace them.
            if "snapshot" in body:
                intake.fold(body["origin"], body["seq"], IntakeCounts.from_json(body["snapshot"]))
            if body.get("wm") is not None:
                marks[body["origin"]] = max(marks.get(body["origin"], 0), body["wm"])
        evaluations: list[Evaluation] = []
        if marks:
            emits += breaker.tick(intake.total(), from_us(min(marks.values())), wall)
            evaluations = breaker.evaluations
            needed = breaker.needed_from()
            if needed is not None:
                intake.expire(needed)
        if self.warehouse is not None:
            self.warehouse.breaker(evaluations, emits)
        for emit in emits:
            out += self._publish(emit)
        if out:
            await self.producer.send(out)
        self._report(breaker)
        state = {"breaker": breaker.to_json(), "intake": intake.to_json(), "marks": marks}
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
