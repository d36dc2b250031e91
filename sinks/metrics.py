"""Prometheus metrics (contract §8): prefix concord_, base units, no per-order labels."""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

# Buckets resolve both 5 s and 4 h (the seeds' 47 s and 23 min sit between).
LATENCY_BUCKETS = (
    1,
    2,
    5,
    10,
    15,
    30,
    60,
    120,
    300,
    600,
    900,
    1800,
    3600,
    7200,
    14400,
    28800,
    86400,
)

disable_created_metrics()

EVENTS = Counter("concord_events", "Input events by source and outcome", ["source", "outcome"])
DEADLETTERS = Counter(
    "concord_deadletter", "Inputs sent to the dead-letter topic, by reason", ["reason"]
)
EVENT_LAG = Gauge(
    "concord_event_lag_seconds",
    "Wall time minus event time of the latest event processed, per source",
    ["source"],
)
SOURCE_LAST_EVENT = Gauge(
    "concord_source_last_event_timestamp_seconds",
    "Event time of the newest event seen from each source (Unix seconds)",
    ["source"],
)
SOURCE_SILENT = Gauge(
    "concord_source_silent", "1 while a whole source is silent (its feed is down)", ["source"]
)
INGEST_REWINDS = Counter(
    "concord_ingest_rewinds",
    "Times ingest found a source partition's offsets jumping ahead and rewound the consumer",
)
INGEST_BATCH_SECONDS = Gauge(
    "concord_ingest_batch_seconds", "Wall time spent on the latest ingest batch"
)
ORDER_EVENTS = Counter(
    "concord_order_events",
    "Events the per-order stage applied, by outcome (applied, stale, marker, duplicate)",
    ["outcome"],
)
LATE_EVENTS = Counter(
    "concord_late_events",
    "Events the per-order stage applied behind its watermark (later than the allowed lateness)",
    ["source"],
)
ORDER_STATE_BYTES = Gauge(
    "concord_order_state_bytes", "Mean size of the order states written in the latest batch"
)
ORDER_BATCH_SECONDS = Gauge(
    "concord_order_batch_seconds", "Wall time spent on the latest per-order batch"
)
REFRESH_LATENCY = Histogram(
    "concord_status_refresh_latency_seconds",
    "ERP phase change to the same phase visible in the target system (event time)",
    ["target"],
    buckets=LATENCY_BUCKETS,
)
REFRESH_LATENCY_EXACT = Gauge(
    "concord_status_refresh_latency_exact_seconds",
    "Exact median / p95 of the refresh latency over a trailing window of event time",
    ["target", "window", "quantile"],
)
REFRESH_SKEW = Counter(
    "concord_status_refresh_skew", "Latency observations below zero (clock skew)", ["target"]
)
CONSISTENCY_RATIO = Gauge(
    "concord_consistency_ratio", "Consistent orders / orders in the population (§4.2)"
)
CONSISTENCY_POPULATION = Gauge(
    "concord_consistency_population_orders", "Orders in the consistency population"
)
DISAGREEING = Gauge(
    "concord_consistency_disagreeing_orders",
    "Orders in the population where this system disagrees with the ERP",
    ["system"],
)
AUTO_ROUTING_RATIO = Gauge(
    "concord_auto_routing_ratio", "Share of anomalies opened in the window routed to a team"
)
GHOST_ORDERS = Gauge("concord_ghost_orders", "Orders with an open ghost anomaly", ["type"])
OPEN_ANOMALIES = Gauge(
    "concord_open_anomalies", "Open anomalies by type and team", ["type", "team"]
)
ANOMALIES = Counter("concord_anomalies", "Anomaly lifecycle events published", ["type", "state"])
DUPLICATES = Counter(
    "concord_duplicates", "Duplicate-order pairs raised, by channel of the later order", ["channel"]
)
COMMANDS = Counter("concord_commands", "Commands published", ["kind"])
BREAKER_STAGE = Gauge("concord_breaker_stage", "Intake breaker stage: 0 normal .. 3 fallback")
BREAKER_ORDERS = Gauge(
    "concord_breaker_orders_created", "ERP orders created in the trailing breaker window"
)
BREAKER_FAILURE_RATIO = Gauge(
    "concord_breaker_reservation_failure_ratio",
    "Failed share of the orders whose stock reservation was attempted in the trailing "
    "breaker window (each order once)",
)
WATERMARK = Gauge(
    "concord_watermark_timestamp_seconds", "The pipeline's event-time watermark (Unix seconds)"
)
ORDERS_TRACKED = Gauge("concord_orders_tracked", "Orders held in this worker's per-order state")
CLICKHOUSE_BACKLOG = Gauge(
    "concord_clickhouse_backlog_rows", "Rows waiting to be written to ClickHouse"
)
CLICKHOUSE_ROWS = Counter("concord_clickhouse_rows", "Rows written to ClickHouse", ["table"])


def metric_samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Samples of one labelled metric from a Prometheus text page: sorted labels -> value."""
    out: dict[tuple[tuple[str, str], ...], float] = {}
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        labels_text, value = line[len(name) + 1 :].rsplit("} ", 1)
        labels = tuple(
            (k, v.strip('"')) for k, v in (pair.split("=", 1) for pair in labels_text.split(","))
        )
        out[labels] = float(value)
    return out


def exposition() -> tuple[bytes, str]:
    """The metrics page body and its content type."""
    return generate_latest(), CONTENT_TYPE_LATEST
