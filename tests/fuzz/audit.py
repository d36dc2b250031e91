"""Accounting for every record sent: its dead letter (matched by topic, partition and offset,
carrying its original bytes) or ingest's count of it (accepted, duplicate or held), and the
fate each record was held to."""

from __future__ import annotations

import base64
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from tests.fuzz.records import DEAD, HELD, TAKEN, FuzzRecord

MISSING_ORDER = "missing_order"  # dead-lettered later, after ingest counted the record held
Where = tuple[str, int, int]  # topic, partition, offset


@dataclass(frozen=True, slots=True)
class Sent:
    """A record and where the broker put it."""

    record: FuzzRecord
    topic: str
    partition: int
    offset: int

    @property
    def where(self) -> Where:
        """Its topic, partition and offset."""
        return self.topic, self.partition, self.offset


@dataclass
class Audit:
    """What became of each record, by class, and everything that does not add up."""

    sent: int = 0
    problems: list[str] = field(default_factory=list)
    # class -> observed fate ("taken": counted by ingest, not dead-lettered at once; or the
    # dead letter's reason) -> records
    fates: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    wrong: Counter[str] = field(default_factory=Counter)  # class -> records that missed their fate
    counted: Counter[str] = field(default_factory=Counter)  # ingest's outcomes, all sources
    unaccounted: int = 0  # records neither dead-lettered nor counted (sent - counted)

    def problem(self, text: str) -> None:
        """Note something that does not add up (the first hundred are kept)."""
        if len(self.problems) < 100:
            self.problems.append(text)


def audit(
    sent: list[Sent],
    dead_letters: Iterable[bytes],
    outcomes: dict[tuple[str, str], float],
) -> Audit:
    """Hold `sent` against the dead-letter topic's values and ingest's counts of events by
    (source, outcome) (`concord_events_total`)."""
    result = Audit(sent=len(sent))
    at = {s.where: s for s in sent}
    dead: dict[Where, dict[str, Any]] = {}
    for value in dead_letters:
        letter = orjson.loads(value)
        where = (letter["topic"], letter["partition"], letter["offset"])
        origin = at.get(where)
        if origin is None:
            result.problem(f"a dead letter of {where}, where nothing was sent: {letter['reason']}")
        elif where in dead:
            result.problem(f"{origin.record.kind} at {where} dead-lettered twice")
        else:
            dead[where] = letter
            _same_record(result, origin, letter)

    taken: Counter[str] = Counter()  # per source: records ingest must have counted
    rejected: Counter[str] = Counter()
    known: Counter[tuple[str, str]] = Counter()  # (source, outcome) of records whose fate is known
    for s in sent:
        record = s.record
        letter = dead.get(s.where)
        reason = None if letter is None else letter["reason"]
        _fate_met(result, s, reason)
        result.fates[record.kind]["taken" if reason is None else reason] += 1
        if reason is None or reason == MISSING_ORDER:
            taken[record.source] += 1
            if record.fate in TAKEN:
                known[(record.source, record.fate)] += 1
        else:
            rejected[record.source] += 1

    for (_, outcome), n in outcomes.items():
        result.counted[outcome] += int(n)
    for source in sorted({r.record.source for r in sent}):
        count = {o: int(outcomes.get((source, o), 0)) for o in (*TAKEN, "rejected")}
        if count["rejected"] != rejected[source]:
            result.problem(
                f"{source}: ingest counted {count['rejected']} rejected, "
                f"{rejected[source]} were dead-lettered"
            )
        counted = sum(count[o] for o in TAKEN)
        if counted != taken[source]:
            result.problem(
                f"{source}: ingest counted {counted} accepted, duplicate or held; "
                f"{taken[source]} were not dead-lettered at once"
            )
        for outcome in TAKEN:
            if count[outcome] < known[(source, outcome)]:
                result.problem(
                    f"{source}: {count[outcome]} {outcome}, fewer than the "
                    f"{known[(source, outcome)]} records that must be"
                )
    result.unaccounted = len(sent) - sum(result.counted.values())
    return result


def _same_record(result: Audit, origin: Sent, letter: dict[str, Any]) -> None:
    # A dead letter carries the record as it came: its bytes and its key.
    record = origin.record
    original = letter["original_b64"]
    value = None if original is None else base64.b64decode(original)
    if value != record.value:
        result.problem(f"{record.kind} at {origin.where}: the dead letter's bytes differ")
    key = None if record.key is None else record.key.decode("utf-8", "replace")
    if letter["key"] != key:
        result.problem(f"{record.kind} at {origin.where}: the dead letter's key differs")
    if not letter.get("error"):
        result.problem(f"{record.kind} at {origin.where}: a dead letter without its error")


def _fate_met(result: Audit, s: Sent, reason: str | None) -> None:
    # The fate the record was held to, against its dead letter's reason (None: none).
    fate = s.record.fate
    if fate is None:
        return
    wanted = {
        DEAD: reason is not None,
        HELD: reason is None or (reason == MISSING_ORDER and s.record.source == "erp"),
    }.get(fate, reason is None if fate in TAKEN else reason == fate)
    if not wanted:
        result.wrong[s.record.kind] += 1
        got = "no dead letter" if reason is None else f"dead-lettered {reason}"
        result.problem(f"{s.record.kind} at {s.where}: expected {fate}, {got}")
