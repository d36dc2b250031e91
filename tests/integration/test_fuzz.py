"""Hostile input through the real broker and a worker (issue 17): over 10,000 generated
records on the four source topics, and afterwards the worker alive, /health answering, and
every record accounted for.

Records come from the seeded corpus of hostile classes (`tests/fuzz/corpus.py`) and from
Hypothesis (`tests/fuzz/strategies.py`). Accounted for: each dead letter matched to the record
at its topic, partition and offset, with that record's bytes and key; ingest's counts of the
rest (accepted, duplicate, held) adding up per source to exactly the records not
dead-lettered; and every record whose fate is known (a dead-letter reason, accepted, held,
a re-send) meeting it. `scripts/fuzz.py` runs the same with 100,000 records and more.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from itertools import islice

import httpx
import pytest

from tests.fuzz.corpus import corpus
from tests.fuzz.run import fuzz
from tests.fuzz.strategies import generated
from tests.integration.harness import new_worker

pytestmark = pytest.mark.integration

SEED = 17
FROM_CORPUS = 7_000  # every class 25 times or so
DRAWN = 3_300  # by Hypothesis


def test_every_hostile_record_is_accounted_for_and_the_worker_lives(
    broker, tmp_path, prefix, workers
):
    # A live bound on event age: dates of long ago are implausible, as in production.
    worker = new_worker(broker.url, tmp_path, prefix, CONCORD_MAX_EVENT_AGE="P400D")
    workers.append(worker)
    starting = threading.Thread(target=worker.start)  # while the records are drawn
    starting.start()
    now = datetime.now(UTC)
    records = [*islice(corpus(now, SEED), FROM_CORPUS), *generated(now, SEED, DRAWN)]
    assert len(records) >= 10_000
    starting.join()

    run = fuzz(f"127.0.0.1:{broker.port}", prefix, worker, records)

    assert run.survived, worker.log_tail()
    assert worker.starts == 1
    assert httpx.get(worker.url("/health"), timeout=1.0).status_code == 200
    assert run.settled, f"ingest did not count every record: {dict(run.audit.counted)}"
    assert run.audit.problems == []
    assert run.audit.unaccounted == 0
    assert run.joined >= run.forwarded > 0
