"""Fixtures that start real parts: the embedded broker, worker processes, embedded ClickHouse."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from clickhouse_connect.driver import Client

from concord.broker import EmbeddedBroker, start_broker
from sinks.clickhouse import connect, embedded_location, migrate
from tests.integration.harness import WorkerProcess, new_worker


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    """One tansu broker for the session; tests isolate themselves by topic prefix."""
    log = tmp_path_factory.mktemp("broker") / "tansu.log"
    running = start_broker(log_path=log)
    yield running
    running.stop()


@pytest.fixture
def prefix() -> str:
    """A topic prefix / app id unique to the test."""
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def workers(broker: EmbeddedBroker, tmp_path: Path, prefix: str) -> Iterator[list[WorkerProcess]]:
    """Workers made by `spawn`, stopped at the end of the test."""
    made: list[WorkerProcess] = []
    yield made
    for w in made:
        w.stop()


@pytest.fixture
def spawn(broker: EmbeddedBroker, tmp_path: Path, prefix: str, workers: list[WorkerProcess]):
    """spawn(**env) -> a started worker on this test's topics."""

    def make(**env: str) -> WorkerProcess:
        worker = new_worker(broker.url, tmp_path, prefix, **env)
        workers.append(worker)
        worker.start()
        return worker

    return make


@pytest.fixture(scope="session")
def dsn(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Embedded ClickHouse: chdb hosts one engine per process, so every test shares it."""
    location = embedded_location() or str(tmp_path_factory.mktemp("clickhouse"))
    return "chdb://memory" if location == ":memory:" else f"chdb://{location}"


@pytest.fixture
def client(dsn: str) -> Iterator[Client]:
    """A client on a fresh, migrated database of its own, dropped afterwards."""
    database = f"t_{uuid.uuid4().hex[:12]}"
    ch = connect(dsn, database)
    migrate(ch, database)
    yield ch
    ch.command(f"DROP DATABASE IF EXISTS {database} SYNC")
    ch.close()
