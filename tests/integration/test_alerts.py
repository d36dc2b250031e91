"""`concord alerts` against Debian's real Alertmanager: an anomaly on the topic becomes a
firing alert with its owner's labels, and its resolution resolves the alert."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from concord.alerts import forward
from concord.broker import free_port
from schemas.settings import Settings
from streams.topics import ensure_topics
from tests.integration.harness import produce

pytestmark = pytest.mark.integration

ALERTMANAGER = shutil.which("prometheus-alertmanager") or "/usr/bin/prometheus-alertmanager"


def _anomaly(state: str) -> dict[str, Any]:
    anomaly = {
        "anomaly_id": "anomaly-test-stalled-1",
        "type": "stalled_tracking",
        "state": state,
        "severity": "warning",
        "order_id": "SO2026030200215",
        "systems": ["erp", "logistics"],
        "opened_at": "2026-03-02T08:00:00Z",
        "detected_at": "2026-03-02T08:00:05Z",
        "route": {"team": "logistics", "rule": "stalled_to_logistics"},
        "evidence": [],
        "summary": "Order SO2026030200215 shipped 24 h ago; the carrier has not scanned it.",
    }
    if state == "resolved":
        anomaly["resolved_at"] = "2026-03-02T09:00:00Z"
    return anomaly


def _active(base: str) -> list[dict]:
    return httpx.get(f"{base}/api/v2/alerts", timeout=5).json()


def test_anomalies_fire_and_resolve_in_alertmanager(broker, prefix, tmp_path: Path):
    assert Path(ALERTMANAGER).exists(), "Debian's prometheus-alertmanager: scripts/setup"
    port = free_port()
    config = tmp_path / "alertmanager.yml"
    config.write_text("route:\n  receiver: none\nreceivers:\n  - name: none\n")
    with (tmp_path / "alertmanager.log").open("wb") as log:
        manager = subprocess.Popen(
            [
                ALERTMANAGER,
                f"--config.file={config}",
                f"--storage.path={tmp_path / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--cluster.listen-address=",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    settings = Settings(broker_url=broker.url, topic_prefix=prefix, app_id=prefix)
    topic = f"{prefix}.anomalies"
    seen: list[dict] = []
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{base}/-/ready", timeout=2).raise_for_status()
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, (tmp_path / "alertmanager.log").read_text()
                time.sleep(0.2)

        async def scenario() -> tuple[list[dict], list[dict]]:
            await ensure_topics(settings, [topic])
            stop = asyncio.Event()
            consumer = asyncio.create_task(
                forward(
                    settings,
                    alertmanager=base,
                    webhook=None,
                    from_start=True,
                    on_anomaly=seen.append,
                    stop=stop,
                )
            )
            bootstrap = f"127.0.0.1:{broker.port}"
            key = b"SO2026030200215"
            await produce(bootstrap, [(topic, key, orjson.dumps(_anomaly("open")))])
            firing = await _until(lambda: _active(base), bool)
            await produce(bootstrap, [(topic, key, orjson.dumps(_anomaly("resolved")))])
            after = await _until(lambda: _active(base), lambda alerts: not alerts)
            stop.set()
            assert await consumer == 2
            return firing, after

        firing, after = asyncio.run(scenario())
    finally:
        manager.terminate()
        manager.wait(30)

    (alert,) = firing
    assert alert["labels"]["alertname"] == "concord_stalled_tracking"
    assert alert["labels"]["team"] == "logistics"
    assert alert["labels"]["order_id"] == "SO2026030200215"
    assert alert["status"]["state"] == "active"
    assert "carrier" in alert["annotations"]["summary"]
    assert after == []
    assert [a["state"] for a in seen] == ["open", "resolved"]


async def _until(read: Any, done: Any, within: float = 30.0) -> Any:
    """`read()` again until `done` holds of its value; the value. Fails with the last one."""
    deadline = time.monotonic() + within
    while True:
        value = await asyncio.to_thread(read)
        if done(value):
            return value
        assert time.monotonic() < deadline, f"not done within {within:g} s; last read: {value!r}"
        await asyncio.sleep(0.3)
