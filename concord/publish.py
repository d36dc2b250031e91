"""Upstream publishing: JSONL or CSV change events onto their source topics."""

from __future__ import annotations

import asyncio
import csv
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from pydantic import ValidationError

from schemas.events import ChangeEvent
from schemas.settings import Settings
from schemas.stages import Source
from streams.topics import TopicNames, kafka_auth


@dataclass
class LocalRejection:
    """A line that was not sent, and why."""

    path: str
    line: int
    error: str


@dataclass
class PublishReport:
    """What a publish run did."""

    sent: dict[str, int] = field(default_factory=dict)
    rejected: list[LocalRejection] = field(default_factory=list)

    @property
    def total_sent(self) -> int:
        """Events sent over all sources."""
        return sum(self.sent.values())


def _nest(row: dict[str, str]) -> dict[str, Any]:
    # CSV columns use dotted names for nested fields (order.customer_id); cells holding
    # JSON arrays or objects (order.lines) are parsed; empty cells are left out.
    out: dict[str, Any] = {}
    for column, cell in row.items():
        if column is None or cell is None or cell == "":
            continue
        value: Any = cell
        stripped = cell.strip()
        if stripped[:1] in "[{":
            try:
                value = json.loads(stripped)
            except json.JSONDecodeError:
                value = cell
        target = out
        parts = column.strip().split(".")
        for part in parts[:-1]:
            target = target.setdefault(part, {})
        target[parts[-1]] = value
    return out


def read_records(path: Path) -> Iterator[tuple[int, bytes | dict[str, Any]]]:
    """(line number, record) for each line of a JSONL file or row of a CSV file."""
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8-sig") as fh:
            for number, row in enumerate(csv.DictReader(fh), start=2):
                yield number, _nest(row)
        return
    with path.open("rb") as fh:
        for number, line in enumerate(fh, start=1):
            stripped = line.strip()
            if stripped:
                yield number, stripped


def route(record: bytes | dict[str, Any], validate: bool) -> tuple[Source, bytes, bytes]:
    """(source, key, value) for one record, or ValueError saying why it cannot be sent."""
    if isinstance(record, dict):
        value = orjson.dumps(record)
        body = record
    else:
        value = record
        try:
            body = orjson.loads(record)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"invalid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise ValueError("not a JSON object")
    if validate:
        try:
            ChangeEvent.model_validate_json(value)
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            where = ".".join(str(p) for p in first["loc"]) or "(root)"
            raise ValueError(f"{where}: {first['msg']}") from exc
    try:
        source = Source(body.get("source"))
    except ValueError as exc:
        raise ValueError(f"unknown source {body.get('source')!r}") from exc
    ref = body.get("order_ref")
    if not isinstance(ref, str) or not ref:
        raise ValueError("order_ref missing")
    return source, ref.encode(), value


class _Pace:
    """Sleeps so that event time passes `speed` times faster than wall time."""

    def __init__(self, speed: float):
        if speed <= 0:
            raise ValueError("speed must be positive")
        self.speed = speed
        self.start: tuple[float, datetime] | None = None

    async def wait(self, value: bytes) -> None:
        try:
            at = datetime.fromisoformat(orjson.loads(value)["occurred_at"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return  # not a timed event: send it at once
        if at.tzinfo is None:
            return
        if self.start is None:
            self.start = (time.monotonic(), at)
            return
        due = self.start[0] + (at - self.start[1]).total_seconds() / self.speed
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)


async def publish(
    settings: Settings,
    paths: list[Path],
    *,
    validate: bool = True,
    progress: Any = None,
    speed: float | None = None,
) -> PublishReport:
    """Send every record of `paths` to its source topic; `progress(n)` is called as lines go.

    With `speed`, events are paced by their `occurred_at`: 60 replays an hour of event time
    in a minute, 1 is real time; without it they go as fast as the broker takes them.
    """
    pace = _Pace(speed) if speed else None
    names = TopicNames.from_settings(settings)
    report = PublishReport()
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap_servers,
        linger_ms=20,
        max_batch_size=262_144,
        acks="all",
        **kafka_auth(settings),
    )
    await producer.start()
    try:
        for path in paths:
            for number, record in read_records(path):
                try:
                    source, key, value = route(record, validate)
                except ValueError as exc:
                    report.rejected.append(LocalRejection(str(path), number, str(exc)))
                else:
                    if pace is not None:
                        await pace.wait(value)
                    await producer.send(names.sources[source], value, key=key)
                    report.sent[source.value] = report.sent.get(source.value, 0) + 1
                if progress is not None:
                    progress(1)
        await producer.flush()
    finally:
        await producer.stop()
    return report
