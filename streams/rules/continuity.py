"""Offset continuity: every offset of a source partition reaches the ingest stage, in order.

Measured here (Faust 0.15.3 on tansu): a worker restarted with no committed offsets began
at the earliest offset, then jumped ahead to the partition's end, so the records between
were never delivered; later acks would then commit past them. Ingest therefore checks each
partition's offsets against the next one it expects and, on a jump, asks the wiring to
rewind the consumer to the expected offset. Records beyond the gap are held back (not
processed, not acknowledged) until the rewound fetch delivers them again.

A jump can also be silent: the position moves past records and nothing more arrives. The
wiring therefore audits each partition's fetch position on a timer; a position that audits
keep seeing ahead of the same expected offset for `stall_seconds` is rewound the same way.
The clock starts at the first audit that sees it ahead, not at the partition's last
progress: records the consumer has fetched but not yet handed over put the position ahead
for a moment, and after a long quiet spell they must not look like a jump.

A gap that persists after a rewind has settled is real (compacted-away offsets, transaction
markers) and is accepted. Time is a monotonic clock reading passed in by the wiring.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Generic, TypeVar

Partition = TypeVar("Partition")


class Admit(StrEnum):
    """What to do with one record."""

    PROCESS = "process"
    REWIND = "rewind"  # seek back to `Verdict.rewind_to`; hold this record back
    HOLD = "hold"  # a rewind is under way: hold this record back


@dataclass(frozen=True, slots=True)
class Verdict:
    """The decision for one record."""

    admit: Admit
    rewind_to: int | None = None


_PROCESS = Verdict(Admit.PROCESS)  # the verdict for almost every record: made once


class OffsetContinuity(Generic[Partition]):
    """Per partition, the next offset expected; jumps ahead become rewinds."""

    def __init__(self, settle_seconds: float = 3.0, stall_seconds: float = 5.0):
        self.settle_seconds = settle_seconds
        self.stall_seconds = stall_seconds
        self._expected: dict[Partition, int] = {}
        # (expected offset, when an audit first saw the position past it), while audits do
        self._ahead: dict[Partition, tuple[int, float]] = {}
        self._rewinding: dict[Partition, tuple[int, float]] = {}
        self.rewinds = 0
        self.accepted_gaps = 0

    def reset(self) -> None:
        """Forget every partition (after a rebalance positions are re-established)."""
        self._expected.clear()
        self._rewinding.clear()
        self._ahead.clear()

    def partitions(self) -> list[Partition]:
        """The partitions with a known expected offset."""
        return list(self._expected)

    def expected(self, partition: Partition) -> int | None:
        """The next offset the partition should deliver (None before its baseline)."""
        return self._expected.get(partition)

    def knows(self, partition: Partition) -> bool:
        """Whether a baseline has been set for this partition."""
        return partition in self._expected

    def start_at(self, partition: Partition, offset: int) -> None:
        """The first offset this worker must see for a partition (committed or log start)."""
        self._expected[partition] = offset

    def admit(self, partition: Partition, offset: int, now: float) -> Verdict:
        """Decide for the record at `offset`."""
        expected = self._expected.get(partition)
        if expected is None or offset == expected:
            self._expected[partition] = offset + 1
            self._rewinding.pop(partition, None)
            return _PROCESS
        if offset < expected:
            # A redelivery (after a rewind or rebalance): processing is idempotent.
            return _PROCESS
        return self._jump(partition, expected, offset + 1, now, Admit.HOLD)

    def audit(self, partition: Partition, position: int | None, now: float) -> Verdict:
        """Check a partition's fetch position: seen ahead of the same expected offset for
        `stall_seconds` means records were skipped silently."""
        expected = self._expected.get(partition)
        if expected is None or position is None or position <= expected:
            self._ahead.pop(partition, None)
            return _PROCESS
        seen = self._ahead.get(partition)
        if seen is None or seen[0] != expected:  # first seen ahead, or progress since
            self._ahead[partition] = (expected, now)
            return _PROCESS
        if now - seen[1] < self.stall_seconds:
            return _PROCESS  # prefetched records are still on their way
        return self._jump(partition, expected, position, now, Admit.PROCESS)

    def _jump(
        self, partition: Partition, expected: int, resume_at: int, now: float, waiting: Admit
    ) -> Verdict:
        pending = self._rewinding.get(partition)
        if pending is None or pending[0] != expected:
            self._rewinding[partition] = (expected, now)
            self.rewinds += 1
            return Verdict(Admit.REWIND, expected)
        if now - pending[1] < self.settle_seconds:
            return Verdict(waiting)
        # The rewound fetch came back past the gap again: those offsets do not exist.
        self.accepted_gaps += 1
        self._expected[partition] = resume_at
        del self._rewinding[partition]
        return _PROCESS
