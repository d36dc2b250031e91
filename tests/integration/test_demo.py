"""The README's first command, headless and bounded: every capability shows up in one day."""

from __future__ import annotations

import os
import subprocess
import sys

import orjson
import pytest

from concord.broker import free_port

pytestmark = pytest.mark.integration


def test_demo_runs_the_embedded_pipeline_end_to_end(tmp_path):
    # With an API token: the demo's worker requires it, and the demo's own reads send it.
    env = {**os.environ, "CONCORD_API_TOKEN": "api-token-of-the-demo-test"}
    result = subprocess.run(
        [
            *(sys.executable, "-m", "concord", "demo", "--duration", "1", "--no-live"),
            *("--data-dir", str(tmp_path), "--web-port", str(free_port())),
        ],
        capture_output=True,
        text=True,
        timeout=420,
        check=False,
        env=env,
    )
    out = result.stderr + result.stdout
    assert result.returncode == 0, out
    assert "consistency ratio" in out
    assert "/desk (asks for the API token once)" in out
    summary = orjson.loads((tmp_path / "summary.json").read_bytes())

    kpis = summary["kpis"]
    for target in ("crm", "wms", "logistics"):
        assert kpis["refresh_latency_seconds"][target]["24h"]["count"] > 0, target
    assert 0 < kpis["consistency"]["ratio"] < 1
    assert kpis["auto_routing"]["opened"] > 0
    # The promotion peak trips the breaker to throttle, and it lifts again.
    assert summary["commands"]["intake.throttle"] == 1
    assert summary["commands"]["intake.resume"] == 1
    assert summary["commands"]["carrier.exception_ticket"] >= 1
    # Every planted duplicate and ghost, and nothing else, on the scenario's own labels.
    for what, n in summary["against_labels"].items():
        assert n["labelled"] > 0, what
        assert n["hits"] == n["labelled"] == n["found"], (what, n)
    assert set(summary["dead_letters"]) >= {"schema", "unknown_status", "missing_order"}
    assert (tmp_path / "scenario.jsonl").stat().st_size > 0
    # The scorecard of the scenario's day, read by the worker from its ClickHouse: every
    # dimension measured, so the card has a band; the day's orders all counted.
    card = summary["scorecard"]
    assert card["day"] == "2026-03-02"
    assert card["timezone"] == "Asia/Shanghai"
    assert card["orders_placed"] > 1800
    assert card["unscored"] == []
    assert card["band"] in ("urgent", "bottlenecks", "healthy")
    assert card["total"] == sum(d["score"] for d in card["dimensions"])
    assert all(t["value"] is not None for t in card["targets"])
    assert "order health scorecard, 2026-03-02" in out

    # The history tables behind the saved queries, read once the demo has let go of its
    # embedded ClickHouse: every duplicate pair, and the breaker's throttle and resume.
    pairs = _query(tmp_path, "duplicates_by_channel")
    assert sum(p["pairs"] for p in pairs) == summary["against_labels"]["duplicate pairs"]["found"]
    events = [r["event"] for r in _query(tmp_path, "breaker_history", "limit=1000")]
    assert events.count("throttle") == events.count("resume") == 1
    assert events.count("evaluate") > 100  # every 10 min of a day, and more


def _query(data_dir, name: str, *params: str) -> list[dict]:
    args = [a for p in params for a in ("-p", p)]
    result = subprocess.run(
        [sys.executable, "-m", "concord", "query", name, *args, "--json", "--data-dir", data_dir],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return orjson.loads(result.stdout)
