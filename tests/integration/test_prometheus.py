"""A real Prometheus (Debian's) scrapes a live worker on loopback: the KPIs and a quantile
over the refresh-latency histogram come back through its query API."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from concord.broker import free_port
from concord.scenario import ScenarioConfig, encode, generate
from tests.integration.harness import produce

pytestmark = pytest.mark.integration

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"


def _start_prometheus(tmp: Path, target: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    config = tmp / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n"
        "scrape_configs:\n"
        "  - job_name: concord\n"
        f"    static_configs: [{{targets: ['{target}']}}]\n"
    )
    with (tmp / "prometheus.log").open("wb") as log:
        process = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return process, f"http://127.0.0.1:{port}"


def _query(base: str, expr: str) -> list[dict]:
    reply = httpx.get(f"{base}/api/v1/query", params={"query": expr}, timeout=5).json()
    assert reply["status"] == "success", reply
    return reply["data"]["result"]


def test_prometheus_scrapes_the_kpis_from_a_live_worker(broker, spawn, prefix, tmp_path):
    assert Path(PROMETHEUS).exists(), "Debian's prometheus is installed by scripts/setup"
    worker = spawn(CONCORD_SOURCE_IDLE_AFTER="PT2S")
    scenario = generate(ScenarioConfig(seed=5, hours=24, orders=300, promo_peak=False))
    records = []
    for entry in scenario.events:
        source, value = encode(entry)
        records.append((f"{prefix}.{source}.events", entry["order_ref"].encode(), value))
    asyncio.run(produce(f"127.0.0.1:{broker.port}", records))

    prometheus, base = _start_prometheus(tmp_path, f"127.0.0.1:{worker.web_port}")
    try:
        deadline = time.monotonic() + 90
        ratio: list[dict] = []
        median: list[dict] = []
        while time.monotonic() < deadline:
            try:
                ratio = _query(base, "concord_consistency_ratio")
                median = _query(
                    base,
                    "histogram_quantile(0.5, sum by (le) "
                    '(concord_status_refresh_latency_seconds_bucket{target="crm"}))',
                )
            except (httpx.HTTPError, ValueError):
                pass  # still starting
            # Early in the day nothing is consistent yet: wait for the feed to get going.
            if (
                ratio
                and float(ratio[0]["value"][1]) > 0
                and median
                and median[0]["value"][1] != "NaN"
            ):
                break
            time.sleep(1)
        assert ratio, (base, (tmp_path / "prometheus.log").read_text()[-2000:])
        assert 0 < float(ratio[0]["value"][1]) <= 1
        assert median
        assert 0 < float(median[0]["value"][1]) < 4 * 3600  # the CRM follows within hours
        up = _query(base, 'up{job="concord"}')
        assert up[0]["value"][1] == "1"
        targets = _query(base, "sum by (target) (concord_status_refresh_latency_seconds_count)")
        assert {"crm", "wms"} <= {r["metric"]["target"] for r in targets}
    finally:
        prometheus.terminate()
        prometheus.wait(30)
