"""The records every stage publishes its anomalies and commands as, counted once here."""

from __future__ import annotations

from schemas.anomalies import Anomaly, Command
from sinks import metrics
from streams.produce import Outgoing
from streams.topics import TopicNames


def anomaly_records(topics: TopicNames, anomaly: Anomaly, *, indexed: bool) -> list[Outgoing]:
    """One lifecycle event on `concord.anomalies`, keyed by its order (else the intake scope).

    With `indexed`, also its `concord.anomaly-index` record, which lets a later decision find
    the state that owns the anomaly (streams/decisions.py).
    """
    metrics.ANOMALIES.labels(anomaly.type.value, anomaly.state.value).inc()
    value = anomaly.model_dump_json().encode()
    out = [Outgoing(topics.anomalies, (anomaly.order_id or "intake").encode(), value)]
    if indexed:
        index = b'{"anomaly":' + value + b"}"
        out.append(Outgoing(topics.anomaly_index, anomaly.anomaly_id.encode(), index))
    return out


def command_record(topics: TopicNames, command: Command, key: bytes) -> Outgoing:
    """One command on `concord.commands` under `key` (an order id or the intake scope)."""
    metrics.COMMANDS.labels(command.kind.value).inc()
    return Outgoing(topics.commands, key, command.model_dump_json().encode())
