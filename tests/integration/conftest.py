"""Fixtures that start real parts: the embedded broker and worker processes."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from concord.broker import EmbeddedBroker, start_broker
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
