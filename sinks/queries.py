"""Saved analysis queries by name (`concord query NAME`): the questions people ask the tables.

Windows are anchored on the newest row of the table read, not the wall clock: event time
throughout, so a replayed day answers like the day it replays. Tables whose rows change
(anomalies, pairs, state) and deduplicated ones are read with FINAL, so counts are exact.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from clickhouse_connect.driver import Client

from schemas.anomalies import GHOST_TYPES


@dataclass(frozen=True, slots=True)
class SavedQuery:
    """A named query: SQL with {name:Type} placeholders and the defaults of its parameters."""

    name: str
    description: str
    sql: str
    params: Mapping[str, int] = field(default_factory=dict)


_GHOSTS = ", ".join(f"'{t.value}'" for t in sorted(GHOST_TYPES))

_QUERIES = (
    SavedQuery(
        "ghosts_by_type_team_day",
        "Ghost-order anomalies opened per day, type and team: how many, still open, resolved, "
        "median minutes to resolve",
        f"""
SELECT
    toDate(opened_at) AS day,
    type,
    team,
    count() AS opened,
    countIf(state = 'open') AS still_open,
    countIf(state = 'resolved') AS resolved,
    if(resolved = 0, NULL, round(quantileExactIf(0.5)(
        dateDiff('second', opened_at, assumeNotNull(resolved_at)), state = 'resolved') / 60, 1)
    ) AS median_minutes_to_resolve
FROM anomalies FINAL
WHERE type IN ({_GHOSTS})
  AND opened_at >= (SELECT max(opened_at) FROM anomalies) - INTERVAL {{days:UInt32}} DAY
GROUP BY day, type, team
ORDER BY day DESC, opened DESC, type, team
""",
        {"days": 30},
    ),
    SavedQuery(
        "latency_percentiles_hourly",
        "Status-refresh latency per target system and hour (KPI 1): p50, p95, max, clock skews",
        """
SELECT
    target,
    toStartOfHour(t0) AS hour,
    count() AS observations,
    round(quantileExact(0.5)(latency_seconds), 3) AS p50_seconds,
    round(quantileExact(0.95)(latency_seconds), 3) AS p95_seconds,
    round(max(latency_seconds), 3) AS max_seconds,
    sum(skew) AS skewed
FROM refresh_latency FINAL
WHERE t0 >= (SELECT max(t0) FROM refresh_latency) - INTERVAL {hours:UInt32} HOUR
GROUP BY target, hour
ORDER BY target, hour
""",
        {"hours": 24},
    ),
    SavedQuery(
        "duplicates_by_channel",
        "Suspected duplicate orders per channel pair: pairs, open, merged, kept, median gap",
        """
SELECT
    least(channel_a, channel_b) AS channel_1,
    greatest(channel_a, channel_b) AS channel_2,
    count() AS pairs,
    countIf(state = 'open') AS open,
    countIf(state = 'merged') AS merged,
    countIf(state = 'kept') AS kept,
    round(quantileExact(0.5)(gap_seconds), 1) AS median_gap_seconds
FROM duplicate_pairs FINAL
WHERE placed_b >= (SELECT max(placed_b) FROM duplicate_pairs) - INTERVAL {days:UInt32} DAY
GROUP BY channel_1, channel_2
ORDER BY pairs DESC, channel_1, channel_2
""",
        {"days": 30},
    ),
    SavedQuery(
        "breaker_history",
        "The intake breaker's evaluations and transitions, newest first",
        """
SELECT
    at,
    stage,
    event,
    orders_created,
    allocated,
    allocation_failed,
    round(failure_rate, 4) AS failure_rate
FROM breaker_history FINAL
WHERE at >= (SELECT max(at) FROM breaker_history) - INTERVAL {days:UInt32} DAY
ORDER BY at DESC, stage DESC
LIMIT {limit:UInt32}
""",
        {"days": 7, "limit": 200},
    ),
    SavedQuery(
        "slowest_orders_week",
        "Orders whose status reached another system slowest in the last week, with their state",
        """
SELECT
    w.order_id AS order_id,
    w.worst_target AS worst_target,
    w.phase AS phase,
    w.worst_latency_seconds AS worst_latency_seconds,
    w.observations AS observations,
    s.channel AS channel,
    s.erp_phase AS erp_phase,
    s.consistent AS consistent
FROM (
    SELECT
        order_id,
        argMax(target, latency_seconds) AS worst_target,
        argMax(phase, latency_seconds) AS phase,
        round(max(latency_seconds), 3) AS worst_latency_seconds,
        count() AS observations
    FROM refresh_latency FINAL
    WHERE t0 >= (SELECT max(t0) FROM refresh_latency) - INTERVAL {days:UInt32} DAY
    GROUP BY order_id
    ORDER BY worst_latency_seconds DESC, order_id
    LIMIT {limit:UInt32}
) AS w
LEFT JOIN (SELECT order_id, channel, erp_phase, consistent FROM order_state FINAL) AS s
    ON s.order_id = w.order_id
ORDER BY worst_latency_seconds DESC, order_id
""",
        {"days": 7, "limit": 20},
    ),
    SavedQuery(
        "deadletters_by_reason",
        "Rejected inputs per reason and topic: how many, first and last seen, an example error",
        """
SELECT
    reason,
    topic,
    count() AS letters,
    min(received_at) AS first_seen,
    max(received_at) AS last_seen,
    any(error) AS example_error
FROM dead_letters FINAL
WHERE received_at >= (SELECT max(received_at) FROM dead_letters) - INTERVAL {days:UInt32} DAY
GROUP BY reason, topic
ORDER BY letters DESC, reason, topic
""",
        {"days": 7},
    ),
)

QUERIES: dict[str, SavedQuery] = {q.name: q for q in _QUERIES}


def run_query(client: Client, name: str, **params: Any) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Run a saved query on the client's database; returns (column names, rows)."""
    query = QUERIES.get(name)
    if query is None:
        raise ValueError(f"unknown query {name!r}; saved queries: {', '.join(sorted(QUERIES))}")
    unknown = set(params) - set(query.params)
    if unknown:
        allowed = ", ".join(sorted(query.params)) or "none"
        raise ValueError(f"query {name!r} has no parameter {sorted(unknown)}; it takes: {allowed}")
    bound: dict[str, int] = {}
    for key, default in query.params.items():
        value = params.get(key, default)
        try:
            bound[key] = int(value)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"parameter {key} of {name!r} must be an integer: {value!r}") from exc
        if bound[key] < 0:
            raise ValueError(f"parameter {key} of {name!r} must not be negative: {value!r}")
    result = client.query(query.sql, parameters=bound)
    columns = list(result.column_names)
    if not columns:
        # An empty result carries no header on every backend (chdb sends no block at all).
        probe = client.query(f"SELECT * FROM ({query.sql}) LIMIT 0", parameters=bound)
        columns = list(probe.column_names)
    return columns, [tuple(row) for row in result.result_rows]
