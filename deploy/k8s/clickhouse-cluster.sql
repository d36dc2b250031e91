-- Concord's ClickHouse tables on a replicated, sharded cluster: an EXAMPLE, not run by code.
--
-- The pipeline's own DDL (sinks/clickhouse.py, MIGRATIONS) is single-node: plain
-- ReplacingMergeTree tables that it creates at start-up. On a cluster, run this file once
-- instead (clickhouse-client --multiquery < clickhouse-cluster.sql), with the macros
-- {cluster}, {shard} and {replica} defined in each server's config (the ClickHouse
-- operator for Kubernetes defines them). Each table becomes
--
--   concord.<table>_local  ReplicatedReplacingMergeTree, same columns, keys and TTL
--   concord.<table>        Distributed over the _local tables, under the name the code uses
--
-- so the pipeline, `concord query` and the Grafana boards read and write the same names as
-- on one node; its `CREATE TABLE IF NOT EXISTS` statements are then no-ops, and the row
-- inserted into schema_migrations at the end tells it migration 1 is applied.
--
-- Why it stays correct:
-- * Every Distributed table shards by a hash of (a prefix of) its table's ORDER BY key, so
--   all versions of a row land on one shard and `FINAL`, run per shard, deduplicates
--   exactly across the cluster.
-- * Idempotent inserts: the sink sends an insert_deduplication_token per batch; replicated
--   tables keep the last replicated_deduplication_window tokens per shard. Set
--   distributed_foreground_insert = 1 in the workers' ClickHouse user profile, so a batch
--   reaches its shards inside the INSERT (a retried batch is then deduplicated there).
-- * The TTL is the code's default (400 days); change it here and in the settings together.
-- * Keep this file in step with sinks/clickhouse.py: tests/unit/test_deploy.py compares
--   the column names and types of every table.

CREATE DATABASE IF NOT EXISTS concord ON CLUSTER '{cluster}';

-- events: sharded by cityHash64(source, event_id)
CREATE TABLE IF NOT EXISTS concord.events_local ON CLUSTER '{cluster}' (
    event_id String,
    source LowCardinality(String),
    order_ref String,
    order_id String,
    status LowCardinality(String),
    stage LowCardinality(String),
    marker LowCardinality(String),
    phase LowCardinality(String),
    occurred_at DateTime64(3, 'UTC'),
    received_at DateTime64(3, 'UTC'),
    channel LowCardinality(String),
    customer_id String,
    phone_hash String,
    ship_to_masked String,
    amount Nullable(Decimal(18, 4)),
    currency LowCardinality(String),
    carrier LowCardinality(String),
    tracking_no String,
    reason String,
    raw String CODEC(ZSTD(3)),
    INDEX order_idx order_id TYPE bloom_filter GRANULARITY 4
) ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{database}/{table}', '{replica}')
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (source, event_id)
TTL toDateTime(occurred_at) + INTERVAL 400 DAY
SETTINGS replicated_deduplication_window = 1000;

CREATE TABLE IF NOT EXISTS concord.events ON CLUSTER '{cluster}'
AS concord.events_local
ENGINE = Distributed('{cluster}', concord, events_local, cityHash64(source, event_id));

-- order_state: sharded by cityHash64(order_id)
CREATE TABLE IF NOT EXISTS concord.order_state_local ON CLUSTER '{cluster}' (
    order_id String,
    placed_at Nullable(DateTime64(3, 'UTC')),
    customer_id String,
    channel LowCardinality(String),
    vip UInt8,
    priority LowCardinality(String),
    phone_hash String,
    erp_stage LowCardinality(String),
    erp_phase LowCardinality(String),
    erp_updated_at Nullable(DateTime64(3, 'UTC')),
    crm_stage LowCardinality(String),
    crm_phase LowCardinality(String),
    crm_updated_at Nullable(DateTime64(3, 'UTC')),
    wms_stage LowCardinality(String),
    wms_phase LowCardinality(String),
    wms_updated_at Nullable(DateTime64(3, 'UTC')),
    logistics_stage LowCardinality(String),
    logistics_phase LowCardinality(String),
    logistics_updated_at Nullable(DateTime64(3, 'UTC')),
    consistent UInt8,
    updated_at DateTime64(3, 'UTC'),
    version UInt64
) ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{database}/{table}', '{replica}', version)
ORDER BY order_id
TTL toDateTime(updated_at) + INTERVAL 400 DAY
SETTINGS replicated_deduplication_window = 1000;

CREATE TABLE IF NOT EXISTS concord.order_state ON CLUSTER '{cluster}'
AS concord.order_state_local
ENGINE = Distributed('{cluster}', concord, order_state_local, cityHash64(order_id));

-- refresh_latency: sharded by cityHash64(order_id)
CREATE TABLE IF NOT EXISTS concord.refresh_latency_local ON CLUSTER '{cluster}' (
    order_id String,
    target LowCardinality(String),
    phase LowCardinality(String),
    erp_event_id String,
    target_event_id String,
    t0 DateTime64(3, 'UTC'),
    t1 DateTime64(3, 'UTC'),
    latency_seconds Float64,
    skew UInt8
) ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{database}/{table}', '{replica}')
PARTITION BY toYYYYMM(t0)
ORDER BY (target, order_id, phase)
TTL toDateTime(t0) + INTERVAL 400 DAY
SETTINGS replicated_deduplication_window = 1000;

CREATE TABLE IF NOT EXISTS concord.refresh_latency ON CLUSTER '{cluster}'
AS concord.refresh_latency_local
ENGINE = Distributed('{cluster}', concord, refresh_latency_local, cityHash64(order_id));

-- anomalies: sharded by cityHash64(anomaly_id)
CREATE TABLE IF NOT EXISTS concord.anomalies_local ON CLUSTER '{cluster}' (
    anomaly_id String,
    type LowCardinality(String),
    state LowCardinality(String),
    severity LowCardinality(String),
    order_id String,
    systems Array(LowCardinality(String)),
    opened_at DateTime64(3, 'UTC'),
    detected_at DateTime64(3, 'UTC'),
    resolved_at Nullable(DateTime64(3, 'UTC')),
    team LowCardinality(String),
    rule LowCardinality(String),
    evidence String,
    summary String,
    decisions String,
    version UInt64,
    INDEX order_idx order_id TYPE bloom_filter GRANULARITY 4
) ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{database}/{table}', '{replica}', version)
PARTITION BY toYYYYMM(opened_at)
ORDER BY anomaly_id
TTL toDateTime(opened_at) + INTERVAL 400 DAY
SETTINGS replicated_deduplication_window = 1000;

CREATE TABLE IF NOT EXISTS concord.anomalies ON CLUSTER '{cluster}'
AS concord.anomalies_local
ENGINE = Distributed('{cluster}', concord, anomalies_local, cityHash64(anomaly_id));

-- duplicate_pairs: sharded by cityHash64(pair_id)
CREATE TABLE IF NOT EXISTS concord.duplicate_pairs_local ON CLUSTER '{cluster}' (
    pair_id String,
    customer_id String,
    order_a String,
    order_b String,
    channel_a LowCardinality(String),
    channel_b LowCardinality(String),
    placed_a DateTime64(3, 'UTC'),
    placed_b DateTime64(3, 'UTC'),
    gap_seconds Float64,
    state LowCardinality(String),
    decision LowCardinality(String),
    detected_at DateTime64(3, 'UTC'),
    version UInt64
) ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{database}/{table}', '{replica}', version)
ORDER BY pair_id
TTL toDateTime(placed_a) + INTERVAL 400 DAY
SETTINGS replicated_deduplication_window = 1000;

CREATE TABLE IF NOT EXISTS concord.duplicate_pairs ON CLUSTER '{cluster}'
AS concord.duplicate_pairs_local
ENGINE = Distributed('{cluster}', concord, duplicate_pairs_local, cityHash64(pair_id));

-- kpi_snapshots: sharded by cityHash64(kpi, target, window)
CREATE TABLE IF NOT EXISTS concord.kpi_snapshots_local ON CLUSTER '{cluster}' (
    at DateTime64(3, 'UTC'),
    kpi LowCardinality(String),
    target LowCardinality(String),
    window LowCardinality(String),
    value Float64
) ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{database}/{table}', '{replica}')
PARTITION BY toYYYYMM(at)
ORDER BY (kpi, target, window, at)
TTL toDateTime(at) + INTERVAL 400 DAY
SETTINGS replicated_deduplication_window = 1000;

CREATE TABLE IF NOT EXISTS concord.kpi_snapshots ON CLUSTER '{cluster}'
AS concord.kpi_snapshots_local
ENGINE = Distributed('{cluster}', concord, kpi_snapshots_local, cityHash64(kpi, target, window));

-- breaker_history: sharded by cityHash64(event, stage)
CREATE TABLE IF NOT EXISTS concord.breaker_history_local ON CLUSTER '{cluster}' (
    at DateTime64(3, 'UTC'),
    stage UInt8,
    event LowCardinality(String),
    orders_created UInt32,
    allocated UInt32,
    allocation_failed UInt32,
    failure_rate Float64
) ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{database}/{table}', '{replica}')
ORDER BY (at, event, stage)
TTL toDateTime(at) + INTERVAL 400 DAY
SETTINGS replicated_deduplication_window = 1000;

CREATE TABLE IF NOT EXISTS concord.breaker_history ON CLUSTER '{cluster}'
AS concord.breaker_history_local
ENGINE = Distributed('{cluster}', concord, breaker_history_local, cityHash64(event, stage));

-- dead_letters: sharded by cityHash64(topic, `partition`, `offset`)
CREATE TABLE IF NOT EXISTS concord.dead_letters_local ON CLUSTER '{cluster}' (
    topic LowCardinality(String),
    `partition` UInt32,
    `offset` UInt64,
    key String,
    reason LowCardinality(String),
    error String,
    received_at DateTime64(3, 'UTC'),
    original_sha256 String,
    original_size UInt32,
    original_b64 String CODEC(ZSTD(3))
) ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{database}/{table}', '{replica}')
ORDER BY (topic, `partition`, `offset`)
TTL toDateTime(received_at) + INTERVAL 400 DAY
SETTINGS replicated_deduplication_window = 1000;

CREATE TABLE IF NOT EXISTS concord.dead_letters ON CLUSTER '{cluster}'
AS concord.dead_letters_local
ENGINE = Distributed('{cluster}', concord, dead_letters_local, cityHash64(topic, `partition`, `offset`));

-- schema_migrations: the code's migration ledger, pre-filled so it skips migration 1.
CREATE TABLE IF NOT EXISTS concord.schema_migrations_local ON CLUSTER '{cluster}' (
    version UInt32,
    name String,
    applied_at DateTime64(3, 'UTC')
) ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{database}/{table}', '{replica}')
ORDER BY version;

CREATE TABLE IF NOT EXISTS concord.schema_migrations ON CLUSTER '{cluster}'
AS concord.schema_migrations_local
ENGINE = Distributed('{cluster}', concord, schema_migrations_local, version);

INSERT INTO concord.schema_migrations (version, name, applied_at)
SETTINGS distributed_foreground_insert = 1
VALUES (1, 'initial tables', now64(3));
