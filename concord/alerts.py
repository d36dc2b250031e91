"""`concord alerts`: a reference consumer of `concord.anomalies` for the people on call.

Prints each anomaly lifecycle event as it arrives and forwards it to Alertmanager's v2 API
(an open anomaly is a firing alert, its resolution ends it, so grouping, routing and
silences work as operators expect) and/or to a chat-robot webhook (a JSON POST, the shape
WeCom and DingTalk robots take). It reads as its own consumer group and commits after
forwarding, so a restart resumes where it stopped and an alert is sent at least once
(Alertmanager merges repeats of one alert by its labels).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
from aiokafka import AIOKafkaConsumer

from schemas.settings import Settings
from streams.topics import TopicNames, kafka_auth

# Alertmanager resolves a firing alert it has not heard of for this long; re-sent while open.
FIRING_FOR = timedelta(hours=24)


def alertmanager_alert(anomaly: dict[str, Any]) -> dict[str, Any]:
    """The Alertmanager v2 alert of one anomaly lifecycle event."""
    labels = {
        "alertname": f"concord_{anomaly['type']}",
        "anomaly_id": anomaly["anomaly_id"],
        "type": anomaly["type"],
        "severity": anomaly["severity"],
        "team": anomaly["route"]["team"],
    }
    if anomaly.get("order_id"):
        labels["order_id"] = anomaly["order_id"]
    starts = anomaly.get("opened_at") or anomaly["detected_at"]
    if anomaly["state"] == "resolved":
        ends = anomaly.get("resolved_at") or anomaly["detected_at"]
        # Event time can lie in the future of the wall clock (a replay); a resolution must
        # end the alert now, not later.
        ends = min(datetime.fromisoformat(ends), datetime.now(UTC)).isoformat()
    else:
        ends = (datetime.now(UTC) + FIRING_FOR).isoformat()
    return {
        "labels": labels,
        "annotations": {
            "summary": anomaly.get("summary", ""),
            "systems": ",".join(anomaly.get("systems", [])),
            "rule": anomaly["route"]["rule"],
        },
        "startsAt": starts,
        "endsAt": ends,
    }


def chat_message(anomaly: dict[str, Any]) -> dict[str, Any]:
    """A chat-robot webhook body: text for people, the anomaly for machines."""
    state = "RESOLVED" if anomaly["state"] == "resolved" else anomaly["severity"].upper()
    text = f"[{state}] {anomaly['type']} → {anomaly['route']['team']}: {anomaly.get('summary')}"
    return {"msgtype": "text", "text": {"content": text}, "anomaly": anomaly}


async def forward(
    settings: Settings,
    *,
    alertmanager: str | None,
    webhook: str | None,
    from_start: bool,
    on_anomaly: Callable[[dict[str, Any]], None],
    stop: asyncio.Event,
    group: str = "concord-alerts",
) -> int:
    """Consume anomalies until `stop`, forwarding each; returns how many were handled."""
    topic = TopicNames.from_settings(settings).anomalies
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=settings.bootstrap_servers,
        group_id=f"{settings.app_id}-{group}",
        enable_auto_commit=False,
        auto_offset_reset="earliest" if from_start else "latest",
        **kafka_auth(settings),
    )
    handled = 0
    await consumer.start()
    try:
        async with httpx.AsyncClient(timeout=10) as http:
            while not stop.is_set():
                batch = await consumer.getmany(timeout_ms=500, max_records=500)
                anomalies = [orjson.loads(r.value) for rs in batch.values() for r in rs]
                if not anomalies:
                    continue
                for anomaly in anomalies:
                    on_anomaly(anomaly)
                if alertmanager:
                    reply = await http.post(
                        f"{alertmanager.rstrip('/')}/api/v2/alerts",
                        json=[alertmanager_alert(a) for a in anomalies],
                    )
                    reply.raise_for_status()
                if webhook:
                    for anomaly in anomalies:
                        (await http.post(webhook, json=chat_message(anomaly))).raise_for_status()
                await consumer.commit()
                handled += len(anomalies)
    finally:
        await consumer.stop()
    return handled
