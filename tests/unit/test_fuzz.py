"""The fuzz in-process: the corpus and Hypothesis's records through the worker's real stages
(tests/stage_harness.py, no broker, no ClickHouse), and the audit that accounts for them.

tests/integration/test_fuzz.py runs more records through a real broker and worker.
"""

from __future__ import annotations

import base64
from collections import Counter
from datetime import timedelta
from itertools import islice

import orjson
from aiokafka.partitioner import murmur2

from schemas.settings import Settings
from schemas.stages import Source
from sinks.metrics import exposition, metric_samples
from tests.fuzz.audit import Sent, audit
from tests.fuzz.corpus import corpus
from tests.fuzz.records import ACCEPTED, HELD, FuzzRecord
from tests.fuzz.strategies import generated
from tests.stage_harness import WALL_START, Pipeline


def _ingest_counts() -> Counter[tuple[str, str]]:
    # concord_events_total in this process, by (source, outcome).
    samples = metric_samples(exposition()[0].decode(), "concord_events_total")
    return Counter({(dict(k)["source"], dict(k)["outcome"]): int(v) for k, v in samples.items()})


def test_every_record_of_the_fuzz_is_accounted_for_by_the_stages_in_process():
    settings = Settings(
        topic_partitions=4, clickhouse_enabled=False, max_event_age=timedelta(days=400)
    )
    records = [*islice(corpus(WALL_START, 5), 900), *generated(WALL_START, 5, 600)]
    pipeline = Pipeline(settings)
    sent = []
    for i, record in enumerate(records):
        topic = pipeline.names.sources[Source(record.source)]
        key = record.key
        partition = i % 4 if key is None else (murmur2(key) & 0x7FFFFFFF) % 4
        offset = len(pipeline.log.topic(topic)[partition])
        pipeline.log.append(topic, partition, key, record.value, None)
        sent.append(Sent(record, topic, partition, offset))
    before = _ingest_counts()

    pipeline.run()  # raises if a stage does

    counts = _ingest_counts() - before
    letters = [r.value for r in pipeline.records(pipeline.names.deadletter)]
    result = audit(sent, letters, dict(counts))
    assert result.problems == []
    assert result.unaccounted == 0
    assert sum(counts.values()) == len(records) == 1500


# --- the audit itself ----------------------------------------------------------------------


def _sent(*records: FuzzRecord) -> list[Sent]:
    return [Sent(r, f"t.{r.source}.events", 0, offset) for offset, r in enumerate(records)]


def _letter(s: Sent, reason: str, value: bytes | None = None) -> bytes:
    original = s.record.value if value is None else value
    return orjson.dumps(
        {
            "reason": reason,
            "error": "why",
            "topic": s.topic,
            "partition": s.partition,
            "offset": s.offset,
            "key": None if s.record.key is None else s.record.key.decode(),
            "original_b64": base64.b64encode(original).decode() if original else None,
        }
    )


GOOD = FuzzRecord("good", "erp", b"SO1", b"{}", ACCEPTED)
BAD = FuzzRecord("bad", "erp", b"SO2", b"[", "invalid_json")
WAITING = FuzzRecord("waiting", "erp", b"SO3", b"{ }", HELD)
ANY = FuzzRecord("any", "crm", None, b"?", None)


def test_the_audit_passes_records_that_all_add_up():
    sent = _sent(GOOD, BAD, WAITING, ANY)
    letters = [_letter(sent[1], "invalid_json"), _letter(sent[2], "missing_order")]
    counts = {("erp", "accepted"): 1, ("erp", "rejected"): 1, ("erp", "held"): 1}
    result = audit(sent, letters, {**counts, ("crm", "held"): 1})
    assert result.problems == []
    assert result.unaccounted == 0
    assert result.fates["waiting"] == Counter({"missing_order": 1})


def test_the_audit_names_every_record_that_does_not_add_up():
    sent = _sent(GOOD, BAD, WAITING, ANY)
    letters = [
        _letter(sent[0], "missing_order"),  # accepted, yet dead-lettered
        _letter(sent[1], "invalid_json", value=b"{"),  # not the bytes sent
        _letter(sent[3], "schema"),
        _letter(sent[3], "schema"),  # twice
        orjson.dumps({**orjson.loads(_letter(sent[3], "schema")), "offset": 9}),
    ]
    counts = {("erp", "accepted"): 1, ("erp", "rejected"): 1, ("crm", "rejected"): 0}
    result = audit(sent, letters, counts)
    assert sorted(result.problems) == [
        "a dead letter of ('t.crm.events', 0, 9), where nothing was sent: schema",
        "any at ('t.crm.events', 0, 3) dead-lettered twice",
        "bad at ('t.erp.events', 0, 1): the dead letter's bytes differ",
        "crm: ingest counted 0 rejected, 1 were dead-lettered",
        "erp: 0 held, fewer than the 1 records that must be",
        "erp: ingest counted 1 accepted, duplicate or held; 2 were not dead-lettered at once",
        "good at ('t.erp.events', 0, 0): expected accepted, dead-lettered missing_order",
    ]
    assert result.unaccounted == 2
    assert result.wrong == Counter({"good": 1})
