"""Prometheus metrics (contract §8): prefix concord_, base units, no per-order labels."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, generate_latest

EVENTS = Counter("concord_events", "Input events by source and outcome", ["source", "outcome"])
DEADLETTERS = Counter(
    "concord_deadletter", "Inputs sent to the dead-letter topic, by reason", ["reason"]
)
EVENT_LAG = Gauge(
    "concord_event_lag_seconds",
    "Wall time minus event time of the latest event processed, per source",
    ["source"],
)
INGEST_BATCH_SECONDS = Gauge(
    "concord_ingest_batch_seconds", "Wall time spent on the latest ingest batch"
)


def exposition() -> tuple[bytes, str]:
    """The metrics page body and its content type."""
    return generate_latest(), CONTENT_TYPE_LATEST
