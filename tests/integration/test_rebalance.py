"""Two workers in one group: a second worker joins mid-stream, then leaves (two rebalances).

Every record a stage had taken when its partitions moved is either processed and committed
by the old owner or delivered again to the new one: nothing is lost, the re-send check keeps
anything from being forwarded twice, the per-order states written at the hand-over carry on,
an order lookup answers on either worker (with the API token, which the routed request
carries on to the owner), and the anomalies are exactly those one worker raises alone.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from pathlib import Path

import httpx
import pytest

from tests.feeds import build_feed
from tests.integration.harness import (
    SETTLED_EVENT_TIME,
    WorkerProcess,
    assert_exactly,
    event_time_reached,
    normalized_events,
    produce,
    published_outputs,
    read_all,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ORDERS = 2000
TOKEN = "api-token-of-the-two-workers"
BEARER = {"Authorization": f"Bearer {TOKEN}"}


def _population(worker: WorkerProcess) -> int:
    kpis = httpx.get(worker.url("/kpis"), headers=BEARER, timeout=10).json()
    return int(kpis["consistency"]["population"])


def _lookups_answer(worker: WorkerProcess, order_ids: list[str]) -> bool:
    for order_id in order_ids:
        response = httpx.get(worker.url(f"/orders/{order_id}"), headers=BEARER, timeout=10)
        if response.status_code != 200:
            return False
        systems = response.json()["systems"]
        # Each order: ERP confirmed, the CRM thread linked (held events included), the WMS.
        if systems["erp"].get("stage") != "confirmed" or systems["crm"].get("stage") is None:
            return False
        if not systems["wms"]["reported"]:
            return False
    return True


def test_a_worker_joining_and_leaving_mid_stream_loses_nothing(
    broker, spawn, prefix, workers, tmp_path: Path
):
    bootstrap = f"127.0.0.1:{broker.port}"
    feed = build_feed(prefix, orders=ORDERS)
    # One embedded ClickHouse per data dir; one token for the group; event time settles at
    # the feed's end.
    alone = {
        "CONCORD_CLICKHOUSE_ENABLED": "false",
        "CONCORD_API_TOKEN": TOKEN,
        **SETTLED_EVENT_TIME,
    }
    first = spawn(**alone)
    half = len(feed.records) // 2
    asyncio.run(produce(bootstrap, feed.records[:half]))

    # The rest is published while the second worker joins and the partitions move.
    publisher = threading.Thread(
        target=lambda: asyncio.run(produce(bootstrap, feed.records[half:]))
    )
    publisher.start()
    second = spawn(CONCORD_DATA_DIR=str(tmp_path / "second"), **alone)
    publisher.join()

    records = asyncio.run(
        read_all(
            bootstrap,
            [f"{prefix}.normalized"],
            until=lambda rs: len(normalized_events(rs)) >= len(feed.expected),
            within=120,
        )
    )
    forwarded = Counter((e["source"], e["event_id"]) for _, e in normalized_events(records))
    assert set(forwarded) == set(feed.expected)  # nothing lost
    assert max(forwarded.values()) == 1  # nothing forwarded twice

    both = [first, second]
    wait_until(
        "each order on exactly one of the two workers",
        lambda: (
            _population(first) + _population(second) == ORDERS
            and min(_population(first), _population(second)) > 0
        ),
        workers=both,
    )
    sample = [f"SO{i:06d}" for i in range(0, ORDERS, 97)]
    for worker in both:  # a lookup of the other worker's order is routed to it
        wait_until(
            "every sampled order answers",
            lambda w=worker: _lookups_answer(w, sample),
            workers=both,
        )
        anonymous = httpx.get(worker.url(f"/orders/{sample[0]}"), timeout=10)
        assert anonymous.status_code == 401

    # The second worker leaves: its states, written at the hand-over, come back to the first.
    assert second.stop() == 0
    wait_until(
        "the first worker holds every order", lambda: _population(first) == ORDERS, workers=both
    )
    assert _lookups_answer(first, sample)

    # The anomalies: exactly those the feed plants, as one uninterrupted worker raises them
    # once event time has reached the feed's end; each opened once and still open (none
    # raised and resolved around a hand-over), any repeat identical; no command.
    watermark = feed.settled_watermark()
    reached = event_time_reached(first, watermark)
    outputs = asyncio.run(published_outputs(bootstrap, prefix))
    assert_exactly(outputs, feed.anomalies_at(reached or watermark))
    assert reached == watermark, "event time stopped short of the feed's end"
    print(f"\nrebalance audit: {len(outputs.final)} anomalies, {outputs.repeats} repeated")
