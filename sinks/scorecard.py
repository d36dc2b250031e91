"""Read one day's scorecard figures from ClickHouse (`GET /scorecard`, `concord scorecard`).

A day is a calendar day in a time zone (the plant's, not necessarily UTC), by event time:
orders placed that day (with their events and latest joined state), latencies whose ERP
change happened that day, anomalies opened that day. Replaying a day therefore scores it as
it was.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from clickhouse_connect.driver import Client

from schemas.stages import PHASE_OF, Phase, Source, Stage
from streams.rules.scorecard import DayFigures, OrderTimes, day_bounds, scorecard, zone

_AT_OR_AFTER_CONFIRMED = tuple(
    s.value for s in Stage if s not in (Stage.PLACED, Stage.CANCELLED, Stage.RETURNED)
)
_AT_OR_AFTER_ALLOCATED = tuple(
    s.value for s in Stage if PHASE_OF[s] in (Phase.FULFILLING, Phase.SHIPPED, Phase.DELIVERED)
)

_ORDERS_SQL = """
WITH placed AS (
    SELECT order_id, assumeNotNull(placed_at) AS placed_at, priority, consistent
    FROM order_state FINAL
    WHERE placed_at >= {start:DateTime64(3, 'UTC')} AND placed_at < {end:DateTime64(3, 'UTC')}
)
SELECT
    s.order_id,
    s.placed_at,
    s.priority = 'rush' AS rush,
    e.first_sync,
    e.confirmed,
    e.allocated,
    s.order_id IN (
        SELECT order_id FROM anomalies
        WHERE order_id != '' AND opened_at >= {start:DateTime64(3, 'UTC')}
    ) AS corrected,
    NOT s.consistent AS inconsistent
FROM placed AS s
LEFT JOIN (
    SELECT
        order_id,
        minIf(occurred_at, source IN {sync_sources:Array(String)}) AS first_sync,
        minIf(occurred_at, source = 'erp' AND stage IN {confirmed:Array(String)}) AS confirmed,
        minIf(occurred_at, source IN ('erp', 'wms') AND stage IN {allocated:Array(String)})
            AS allocated
    FROM events
    WHERE order_id IN (SELECT order_id FROM placed)
    GROUP BY order_id
) AS e ON e.order_id = s.order_id
ORDER BY s.order_id
"""

_LATENCIES_SQL = """
SELECT latency_seconds FROM refresh_latency FINAL
WHERE target = 'crm'
  AND t0 >= {start:DateTime64(3, 'UTC')} AND t0 < {end:DateTime64(3, 'UTC')}
"""

_ANOMALIES_SQL = """
SELECT
    count() AS opened,
    countIf(team != 'manual') AS routed,
    uniqExactIf(order_id, type = 'duplicate_order' AND decisions NOT LIKE '%duplicate.keep%')
        AS duplicates
FROM anomalies FINAL
WHERE opened_at >= {start:DateTime64(3, 'UTC')} AND opened_at < {end:DateTime64(3, 'UTC')}
"""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _moment(value: Any) -> datetime | None:
    # minIf over no rows, and a LEFT JOIN miss, give the epoch rather than NULL.
    if value is None:
        return None
    moment = value if value.tzinfo else value.replace(tzinfo=UTC)
    return None if moment <= _EPOCH else moment


def day_figures(client: Client, day: date, timezone: str) -> DayFigures:
    """The figures of one day, read from the tables the pipeline writes."""
    start, end = day_bounds(day, timezone)
    params: dict[str, Any] = {
        "start": start,
        "end": end,
        "sync_sources": [Source.CRM.value, Source.WMS.value],
        "confirmed": list(_AT_OR_AFTER_CONFIRMED),
        "allocated": list(_AT_OR_AFTER_ALLOCATED),
    }
    orders = [
        OrderTimes(
            order_id=str(row[0]),
            placed_at=_moment(row[1]) or start,
            rush=bool(row[2]),
            first_sync_at=_moment(row[3]),
            confirmed_at=_moment(row[4]),
            allocated_at=_moment(row[5]),
            corrected=bool(row[6]),
            inconsistent=bool(row[7]),
        )
        for row in client.query(_ORDERS_SQL, parameters=params).result_rows
    ]
    latencies = [float(r[0]) for r in client.query(_LATENCIES_SQL, parameters=params).result_rows]
    counts = client.query(_ANOMALIES_SQL, parameters=params).result_rows
    opened, routed, duplicates = counts[0] if counts else (0, 0, 0)
    return DayFigures.from_orders(
        day,
        timezone,
        orders,
        crm_latencies=latencies,
        anomalies_opened=int(opened),
        anomalies_routed=int(routed),
        duplicate_orders=int(duplicates),
    )


def latest_day(client: Client, timezone: str) -> date | None:
    """The newest day with an order placed, in that time zone; None on empty tables."""
    rows = client.query("SELECT max(placed_at) FROM order_state").result_rows
    newest = _moment(rows[0][0]) if rows else None
    return None if newest is None else newest.astimezone(zone(timezone)).date()


def scorecard_for(client: Client, day: date | None, timezone: str) -> dict[str, Any] | None:
    """The scorecard of a day (default: the newest with orders); None while there are none."""
    if day is None:
        day = latest_day(client, timezone)
        if day is None:
            return None
    return scorecard(day_figures(client, day, timezone))
