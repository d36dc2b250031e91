"""The scorecard read from real embedded ClickHouse: a day's boundaries in the plant's time
zone, and every figure of a small world whose answers are worked out by hand below."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from typing import Any

import pytest
from clickhouse_connect.driver import Client

from schemas.anomalies import Anomaly
from sinks import rows as mk
from sinks.clickhouse import ClickHouseSink
from sinks.scorecard import day_figures, latest_day, scorecard_for
from tests.phones import PHONES

pytestmark = pytest.mark.integration

TZ = "Asia/Shanghai"
CST = timezone(timedelta(hours=8))
DAY = date(2026, 11, 2)


def at(day: int, hour: int, minute: int = 0, second: int = 0) -> datetime:
    return datetime(2026, 11, day, hour, minute, second, tzinfo=CST)


def event(order: str, source: str, stage: str, when: datetime, n: int) -> dict[str, Any]:
    return mk.event_row(
        {
            "event_id": f"{order}-{source}-{n}",
            "source": source,
            "order_ref": order,
            "order_id": order,
            "status": stage.upper(),
            "stage": stage,
            "phase": "open",
            "occurred_at": when.isoformat(),
        },
        phones=PHONES,
    )


def state(order: str, placed: datetime, *, rush: bool = False, consistent: bool = True) -> Any:
    return mk.order_state_row(
        order,
        systems={"erp": {"stage": "placed", "phase": "open", "updated_at": placed}},
        consistent=consistent,
        version=1,
        priority="rush" if rush else "normal",
        placed_at=placed,
        phones=PHONES,
    )


def anomaly(n: int, type_: str, order: str, opened: datetime, team: str, **extra: Any) -> Any:
    return mk.anomaly_row(
        Anomaly.model_validate(
            {
                "anomaly_id": f"an-{n}",
                "type": type_,
                "state": "open",
                "severity": "warning",
                "order_id": order,
                "systems": ["erp", "wms"],
                "opened_at": opened,
                "detected_at": opened,
                "route": {"team": team, "rule": "r"},
                "summary": "s",
                **extra,
            }
        )
    )


def latency(order: str, t0: datetime, seconds: float) -> Any:
    return mk.latency_row(
        order,
        target="crm",
        phase="open",
        erp_event_id=f"{order}-e",
        target_event_id=f"{order}-c",
        t0=t0,
        t1=t0 + timedelta(seconds=seconds),
    )


def world() -> dict[str, list[Any]]:
    """Four orders placed on 2 Nov (Shanghai), one the evening before, one just after."""
    keep = {"decision_id": "d1", "kind": "duplicate.keep", "target": "an-4", "by": "li"}
    return {
        "order_state": [
            state("A", at(2, 9)),
            state("B", at(2, 10), rush=True, consistent=False),
            state("C", at(2, 23, 30)),  # 15:30 UTC: still 2 Nov in Shanghai
            state("D", at(2, 12), rush=True),
            state("E", at(1, 23, 59), consistent=False),  # 1 Nov
            state("F", at(3, 0)),  # 3 Nov
        ],
        "events": [
            event("A", "erp", "placed", at(2, 9), 1),
            event("A", "crm", "placed", at(2, 9, 1), 2),  # first sync 60 s
            event("A", "erp", "confirmed", at(2, 9, 10), 3),  # processing 10 min
            event("A", "wms", "allocated", at(2, 9, 30), 4),
            event("B", "erp", "placed", at(2, 10), 1),
            event("B", "wms", "placed", at(2, 10, 3), 2),  # first sync 180 s
            event("B", "erp", "confirmed", at(2, 10, 20), 3),  # processing 20 min
            event("B", "wms", "allocated", at(2, 11), 4),  # rush response 1 h
            event("C", "crm", "placed", at(2, 23, 29), 1),  # before the ERP: skew → 0 s
            event("C", "erp", "placed", at(2, 23, 30), 2),
            event("D", "erp", "placed", at(2, 12), 1),  # rush, never allocated
            event("E", "crm", "placed", at(2, 0, 5), 1),
            event("F", "erp", "confirmed", at(3, 0, 1), 1),
        ],
        "refresh_latency": [
            latency("A", at(2, 9), 30),
            latency("B", at(2, 10), 90),
            latency("D", at(2, 12), 600),
            latency("E", at(1, 23, 59), 10_000),  # the day before
        ],
        "anomalies": [
            anomaly(1, "missing_in_system", "B", at(2, 10, 30), "warehouse"),
            anomaly(2, "duplicate_order", "C", at(2, 23, 30), "sales"),
            anomaly(4, "duplicate_order", "D", at(2, 12), "manual", decisions=[keep]),
            anomaly(5, "orphan_order", "E", at(1, 23, 59), "integration"),  # the day before
        ],
    }


def fill(client: Client) -> ClickHouseSink:
    sink = ClickHouseSink(client, client.database)
    for table, table_rows in world().items():
        sink.add_many(table, table_rows)
    return sink


def test_every_figure_of_a_day_in_the_plants_time_zone(client: Client) -> None:
    sink = fill(client)  # not flushed: the read delivers what is buffered first
    figures = sink.read(lambda c: day_figures(c, DAY, TZ))
    assert figures.orders_placed == 4
    assert (figures.first_sync_median_seconds, figures.first_sync_seen) == (60.0, 3)
    assert (figures.crm_latency_median_seconds, figures.crm_latency_observations) == (90.0, 3)
    assert figures.inconsistent_orders == 1
    assert (figures.anomalies_opened, figures.anomalies_routed) == (3, 2)
    assert figures.duplicate_orders == 1  # D was kept by a person: not a duplicate
    assert (figures.processing_mean_seconds, figures.processing_confirmed) == (900.0, 2)
    assert figures.first_pass_orders == 1
    assert (figures.rush_orders, figures.rush_allocated) == (2, 1)
    assert figures.rush_response_mean_seconds == 3600.0


def test_the_card_of_that_day(client: Client) -> None:
    fill(client).flush(force=True)
    card = scorecard_for(client, DAY, TZ)
    assert card is not None
    scores = {d["key"]: d["score"] for d in card["dimensions"]}
    assert scores == {
        "first_sync_delay": 4,  # 60 s
        "status_refresh_latency": 4,  # 90 s
        "inconsistent_per_100": 1,  # 25
        "auto_routing_rate": 3,  # 66.7%
        "duplicate_rate": 1,  # 25%
    }
    assert (card["total"], card["band"]) == (13, "bottlenecks")
    met = {t["key"]: t["met"] for t in card["targets"]}
    assert met == {
        "order_processing_time": True,  # 15 min exactly
        "first_pass_accuracy": False,  # 25%
        "rush_response_delay": True,  # 1 h
    }


def test_the_day_depends_on_the_time_zone(client: Client) -> None:
    fill(client).flush(force=True)
    # In UTC, C (15:30Z) and A, B, D fall on 2 Nov and E (15:59Z on 1 Nov) does not; F
    # (16:00Z on 2 Nov) does.
    assert day_figures(client, DAY, "UTC").orders_placed == 5
    assert latest_day(client, TZ) == date(2026, 11, 3)
    assert latest_day(client, "UTC") == DAY


def test_nothing_placed_means_nothing_to_score(client: Client) -> None:
    assert scorecard_for(client, None, TZ) is None
    card = scorecard_for(client, DAY, TZ)
    assert card is not None
    assert card["orders_placed"] == 0
    assert card["band"] is None
    assert len(card["unscored"]) == 5
