"""Decisions wiring (§6): route each decision to the state that owns its anomaly.

Decisions arrive on `concord.decisions` under any key. Step one re-keys them by their target
(`anomaly_id`) onto the internal `concord.anomaly-index` topic, where every stage also
publishes each anomaly it raises. Step two, keyed by anomaly id, therefore sees an anomaly
before any decision about it and keeps, per anomaly, who owns it:

* `duplicate_order` — the anomaly itself: the decision is applied here (merge also commands
  `order.merge`), and the resolved anomaly published;
* `breaker.ack` / `breaker.release` — straight to the breaker (streams/breaker.py), whose
  single partition holds the one breaker;
* an order's anomaly (ghosts) — forwarded to the per-order stage on `concord.normalized`,
  keyed by the order, where the order's anomaly book records it.

A decision that does not parse, targets an anomaly Concord never raised, or that its anomaly
cannot take goes to the dead-letter topic with the reason.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
from faust.types import Message, TableT
from pydantic import ValidationError

from schemas.anomalies import Anomaly, AnomalyType, Decision, DecisionKind
from sinks import metrics
from streams.ingest import dead_letter
from streams.outputs import anomaly_records, command_record
from streams.produce import BatchProducer, Outgoing
from streams.rules.dedupe import apply_duplicate_decision
from streams.rules.ingest import Reason, Rejection
from streams.stage import PartitionedStage, raw_key
from streams.topics import TopicNames

BREAKER_DECISIONS = frozenset({DecisionKind.BREAKER_ACK, DecisionKind.BREAKER_RELEASE})


def decision_dead_letter(
    topics: TopicNames,
    msg: Any,
    decision: dict[str, Any] | bytes | None,
    reason: Reason,
    error: str,
    received_at: datetime,
) -> Outgoing:
    """A dead letter for a decision, with the decision's bytes as received."""
    raw = decision if isinstance(decision, bytes | None) else orjson.dumps(decision)
    metrics.DEADLETTERS.labels(reason.value).inc()
    value = dead_letter(
        msg.topic, msg.partition, msg.offset, msg.key, raw, Rejection(reason, error), received_at
    )
    return Outgoing(topics.deadletter, msg.key, value, [("concord-reason", reason.value.encode())])


async def route_decisions(
    producer: BatchProducer, topics: TopicNames, messages: Sequence[Message]
) -> None:
    """Step one: validate each decision and re-key it by its target onto the anomaly index."""
    wall = datetime.now(UTC)
    out: list[Outgoing] = []
    for msg in messages:
        raw: bytes | None = msg.value
        try:
            decision = Decision.model_validate_json(raw or b"")
        except ValidationError as exc:
            invalid_json = any(e["type"] == "json_invalid" for e in exc.errors())
            reason = Reason.INVALID_JSON if invalid_json else Reason.SCHEMA
            error = exc.errors(include_url=False)[0]["msg"]
            out.append(decision_dead_letter(topics, msg, raw, reason, error, wall))
            continue
        body = orjson.dumps({"decision": decision.model_dump(mode="json")})
        if decision.kind in BREAKER_DECISIONS:
            out.append(Outgoing(topics.breaker, b"intake", body, None, 0))
        else:
            out.append(Outgoing(topics.anomaly_index, decision.target.encode(), body))
    if out:
        await producer.send(out)


class DecisionStage(PartitionedStage):
    """Step two: per anomaly id, its owner; applies or forwards each decision."""

    def __init__(
        self,
        app: Any,
        table: TableT,
        topics: TopicNames,
        *,
        on_anomaly: Callable[[Anomaly], None],
        end_marker_key: str | None,
    ):
        super().__init__(
            app,
            table,
            [topics.anomaly_index],
            end_marker_key=end_marker_key,
            encode_key=raw_key,
        )
        self.topics = topics
        self.on_anomaly = on_anomaly

    async def process(self, messages: Sequence[Message]) -> None:
        """Remember the anomalies of a batch and act on its decisions."""
        await self._baselines({m.tp for m in messages})
        wall = self.wall_clock()
        now = time.monotonic()
        store = self.table.data
        touched: dict[bytes, tuple[int, dict[str, Any]]] = {}
        out: list[Outgoing] = []
        for msg in messages:
            if not self._in_sequence(msg, now):
                continue
            key: bytes = msg.key
            body = orjson.loads(msg.value)
            known = touched.get(key)
            owner = known[1] if known else store.get(key)
            if "anomaly" in body:
                touched[key] = (msg.partition, _owner_of(body["anomaly"]))
                continue
            decision = Decision.model_validate(body["decision"])
            if owner is None:
                error = f"no anomaly {decision.target!r} was raised"
                out.append(self._dead(msg, body, Reason.UNKNOWN_ANOMALY, error, wall))
            elif owner.get("a") is not None:
                anomaly = Anomaly.model_validate(owner["a"])
                try:
                    resolved, commands = apply_duplicate_decision(anomaly, decision, wall)
                except ValueError as exc:
                    out.append(self._dead(msg, body, Reason.INVALID_DECISION, str(exc), wall))
                    continue
                out += anomaly_records(self.topics, resolved, indexed=False)
                order = (resolved.order_id or "").encode()
                out += [command_record(self.topics, c, order) for c in commands]
                owner = _owner_of(resolved.model_dump(mode="json"))
                touched[key] = (msg.partition, owner)
                self.on_anomaly(resolved)
            elif owner.get("o") is not None:
                forward = {"decision": body["decision"], "order_id": owner["o"]}
                out.append(
                    Outgoing(self.topics.normalized, owner["o"].encode(), orjson.dumps(forward))
                )
            else:
                error = f"anomaly {decision.target!r} takes no decisions here"
                out.append(self._dead(msg, body, Reason.INVALID_DECISION, error, wall))
        if out:
            await self.producer.send(out)
        await self._persist(touched)

    def _dead(
        self, msg: Any, body: dict[str, Any], reason: Reason, error: str, wall: datetime
    ) -> Outgoing:
        return decision_dead_letter(self.topics, msg, body["decision"], reason, error, wall)


def _owner_of(anomaly: dict[str, Any]) -> dict[str, Any]:
    # A duplicate is decided here, so its whole anomaly is kept; others only name their order.
    if anomaly.get("type") == AnomalyType.DUPLICATE_ORDER.value:
        return {"a": anomaly}
    return {"o": anomaly.get("order_id")}
