"""The per-order join through the real broker: /kpis against an independent §4 computation,
and the order 360 lookups."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta

import httpx
import orjson
import pytest

from concord.scenario import ScenarioConfig, encode, generate
from schemas.privacy import normalize_phone
from tests.integration.browser import headless_page
from tests.integration.harness import normalized_events, produce, published_outputs, read_all
from tests.oracle import expected
from tests.oracle.contract import to_us
from tests.outputs import differences

pytestmark = pytest.mark.integration


def _settled_topic(bootstrap: str, topic: str, within: float = 120.0) -> list[dict]:
    # Ingest is done once the topic stops growing (two reads a few seconds apart agree).
    deadline = time.monotonic() + within
    last = -1
    while time.monotonic() < deadline:
        records = [e for _, e in normalized_events(asyncio.run(read_all(bootstrap, [topic])))]
        if records and len(records) == last:
            return records
        last = len(records)
        time.sleep(2)
    raise AssertionError(f"{topic} never settled ({last} records)")


def _wait_for_kpis(worker, until, within: float = 120.0) -> dict:
    deadline = time.monotonic() + within
    kpis: dict = {}
    while time.monotonic() < deadline:
        kpis = httpx.get(worker.url("/kpis"), timeout=10).json()
        if kpis.get("watermark") is not None and until(kpis):
            return kpis
        time.sleep(0.5)
    raise AssertionError(f"KPIs never settled: {kpis}\n{worker.log_tail()}")


def _use_the_desk(worker, view: dict, phone: str, same_phone: set[str], ghost: dict) -> None:
    """Search, open cards and read them in headless Chromium, as a person would."""
    with headless_page() as page:
        page.goto(worker.url("/desk"))
        # KPI tiles: the CRM latency tile shows a measured duration, not a dash.
        page.wait_for_selector("#tiles .tile")
        tiles = page.inner_text("#tiles")
        assert "CRM refresh latency" in tiles
        assert "consistency" in tiles
        assert page.locator("#tiles .tile b").first.inner_text() != "—"

        # By order id: one card, every system's own id, status and update on one timeline.
        page.fill("#q", view["order_id"])
        page.press("#q", "Enter")
        card = page.locator(f'.card[data-order="{view["order_id"]}"]')
        card.wait_for()
        text = card.inner_text()
        for source, seen in view["systems"].items():
            if seen["reported"]:
                assert seen["order_ref"] in text, source
                assert seen["status"] in text, source
        cells = card.locator("table.systems tr td:nth-child(4)").all_inner_texts()
        updates = [c for c in cells if c != "—"]
        assert updates
        assert updates == sorted(updates)  # oldest first: a timeline
        assert "last scan" in text or "no carrier scan yet" in text

        # By phone: a card per order of that customer; the number is never shown back.
        page.fill("#q", phone)
        page.press("#q", "Enter")
        page.wait_for_function(
            "n => document.querySelectorAll('#result .card').length === n", arg=len(same_phone)
        )
        shown = {c.get_attribute("data-order") for c in page.locator("#result .card").all()}
        assert shown == same_phone
        assert phone not in page.inner_text("#result")

        # A ghost order: its open anomaly and the team that owns it.
        page.fill("#q", ghost["order_id"])
        page.press("#q", "Enter")
        rows = page.locator(f'.card[data-order="{ghost["order_id"]}"] table.anomalies')
        rows.wait_for()
        owners = rows.inner_text()
        for anomaly in ghost["anomalies"]:
            assert anomaly["type"] in owners
            assert anomaly["route"]["team"] in owners

        # An unknown order: said so, no card.
        page.fill("#q", "SO-NO-SUCH-ORDER")
        page.press("#q", "Enter")
        page.wait_for_selector("#result .bad")
        assert "unknown order" in page.inner_text("#result")

        # The scorecard, read by the worker from its ClickHouse: five scored dimensions.
        page.wait_for_selector("#scorecard table.dimensions")
        assert "Order health scorecard" in page.inner_text("#scorecard")
        assert page.locator("#scorecard table.dimensions tr").count() == 1 + 5


def test_kpis_match_an_independent_computation_and_orders_answer(broker, spawn, prefix):
    scenario = generate(ScenarioConfig(seed=11, hours=24, orders=400, promo_peak=False))
    records = []
    for entry in scenario.events:
        source, value = encode(entry)
        records.append((f"{prefix}.{source}.events", entry["order_ref"].encode(), value))
    # Quiet partitions let go of event time at once, and the wall-clock fallback is off:
    # the watermark settles at the newest event minus the allowed lateness.
    worker = spawn(CONCORD_SOURCE_IDLE_AFTER="PT2S", CONCORD_WATERMARK_IDLE_AFTER="PT1H")
    bootstrap = f"127.0.0.1:{broker.port}"
    asyncio.run(produce(bootstrap, records))

    events = _settled_topic(bootstrap, f"{prefix}.normalized")
    assert len(events) > 2000
    newest = max(datetime.fromisoformat(e["occurred_at"]) for e in events)
    want_wm = newest - timedelta(minutes=2)

    def settled(kpis: dict) -> bool:
        return datetime.fromisoformat(kpis["watermark"]) == want_wm

    kpis = _wait_for_kpis(worker, settled)
    wm = datetime.fromisoformat(kpis["watermark"])

    # The independent reference, from the raw events as published (tests/oracle).
    oracle = expected(scenario.events, to_us(wm))
    want = oracle.kpis
    assert kpis["consistency"]["population"] == want.population
    assert kpis["consistency"]["consistent"] == want.consistent
    assert kpis["consistency"]["ratio"] == pytest.approx(want.consistency_ratio)
    assert 0 < want.consistent < want.population  # planted ghosts disagree

    for target in ("crm", "wms", "logistics"):
        for window in ("1h", "24h"):
            figures = want.latency[target][window]
            got = kpis["refresh_latency_seconds"][target][window]
            assert got["count"] == figures.count, (target, window)
            assert got["median"] == pytest.approx(figures.median), (target, window)
            assert got["p95"] == pytest.approx(figures.p95), (target, window)
    assert want.latency["crm"]["24h"].count > 300

    # Order 360: a linked order shows every system's own reference.
    order_id, accepted = next(
        (o, evs)
        for o, evs in sorted(oracle.ingested.orders.items())
        if {"erp", "crm", "wms"} <= {e.source for e in evs}
    )
    view = httpx.get(worker.url(f"/orders/{order_id}"), timeout=10).json()
    assert view["order_id"] == order_id
    for source in ("erp", "crm", "wms"):
        refs = {e.order_ref for e in accepted if e.source == source}
        assert view["systems"][source]["order_ref"] in refs
    assert httpx.get(worker.url("/orders/NO-SUCH-ORDER"), timeout=10).status_code == 404

    # By phone: every order of that phone, matched on its hash, never echoed in clear.
    erp_create = next(
        e
        for e in scenario.events
        if e.get("source") == "erp" and (e.get("order") or {}).get("customer_phone")
    )
    phone = erp_create["order"]["customer_phone"]
    same_phone = {  # written as +86 138…, 138-…, 0086 …: one number
        e["order_ref"]
        for e in scenario.events
        if e.get("source") == "erp"
        and normalize_phone((e.get("order") or {}).get("customer_phone") or "")
        == normalize_phone(phone)
    }
    found = httpx.get(worker.url("/orders"), params={"phone": phone}, timeout=10)
    assert found.status_code == 200
    assert {o["order_id"] for o in found.json()["orders"]} == same_phone
    assert len(same_phone) >= 1
    assert phone not in found.text
    assert httpx.get(worker.url("/orders"), timeout=10).status_code == 400

    # The support desk page: served by the worker, searching the two lookups above.
    desk = httpx.get(worker.url("/desk"), timeout=10)
    assert desk.status_code == 200
    assert desk.headers["content-type"].startswith("text/html")
    assert 'id="search"' in desk.text
    assert "/orders?phone=" in desk.text
    assert "/kpis" in desk.text

    # ... and in a real browser, as a support agent uses it.
    ghost = next(
        v.json()
        for o in sorted(set().union(*scenario.labels.ghosts.values()))
        if (v := httpx.get(worker.url(f"/orders/{o}"), timeout=10)).status_code == 200
        and v.json()["anomalies"]
    )
    _use_the_desk(worker, view, phone, same_phone, ghost)

    metrics = httpx.get(worker.url("/metrics"), timeout=10).text
    assert "concord_consistency_ratio " in metrics
    assert 'concord_status_refresh_latency_seconds_bucket{le="5.0",target="crm"}' in metrics

    # SIGKILL: the restarted worker rebuilds the same KPIs and views from its state table,
    # and publishes no anomaly or command the uninterrupted run did not: the same ids with
    # the same final states and content (a repeat of an earlier record is allowed).
    before = httpx.get(worker.url("/kpis"), timeout=10).json()
    view_before = httpx.get(worker.url(f"/orders/{order_id}"), timeout=10).json()
    outputs_before = asyncio.run(published_outputs(bootstrap, prefix, quiet=True))
    assert outputs_before.final  # ghosts and duplicates
    assert outputs_before.commands  # the stalls' stage-3 commands
    worker.kill()
    worker.start()
    after = _wait_for_kpis(
        worker,
        lambda k: k["watermark"] is not None and k["orders_tracked"] == before["orders_tracked"],
    )
    for key in ("watermark", "consistency", "refresh_latency_seconds", "ghost_orders"):
        assert after[key] == before[key], key
    assert httpx.get(worker.url(f"/orders/{order_id}"), timeout=10).json() == view_before
    outputs_after = asyncio.run(published_outputs(bootstrap, prefix, quiet=True))
    assert differences(outputs_after, outputs_before) == []
    print(f"\nSIGKILL: {outputs_after.repeats - outputs_before.repeats} outputs repeated")

    # An event far behind the watermark is still applied, and counted as late.
    late = {
        "event_id": "late-crm-1",
        "source": "crm",
        "order_ref": "CS-LATE-1",
        "erp_order_id": order_id,
        "status": "NEW",
        "occurred_at": (wm - timedelta(days=3)).isoformat(),
    }
    asyncio.run(produce(bootstrap, [(f"{prefix}.crm.events", b"CS-LATE-1", orjson.dumps(late))]))
    deadline = time.monotonic() + 60
    while 'concord_late_events_total{source="crm"} 1.0' not in (
        text := httpx.get(worker.url("/metrics"), timeout=10).text
    ):
        assert time.monotonic() < deadline, [ln for ln in text.splitlines() if "late" in ln]
        time.sleep(0.5)
