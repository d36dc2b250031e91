"""What a run published on the anomalies and commands topics, reduced to what must not
depend on the schedule, and compared between runs (the in-process harness's and the
integration tests' alike)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

# Wall-clock readings: they say when an output appeared, never which.
WALL_FIELDS = frozenset({"detected_at"})


def content(output: dict[str, Any]) -> bytes:
    """An anomaly or command as compared between runs: everything but its wall-clock fields."""
    return orjson.dumps(
        {k: v for k, v in output.items() if k not in WALL_FIELDS}, option=orjson.OPT_SORT_KEYS
    )


@dataclass
class Outputs:
    """What a run published, reduced to what must not depend on the schedule."""

    final: dict[str, dict[str, Any]]  # anomaly id -> its last lifecycle event
    lifecycle: dict[str, list[str]]  # anomaly id -> its distinct states, in order
    commands: dict[str, dict[str, Any]]  # command id -> the command
    repeats: int  # outputs published again with the same id and content (after a crash)
    conflicts: list[str]  # ids published twice with different content

    @classmethod
    def reduce(
        cls, anomalies: Iterable[dict[str, Any]], commands: Iterable[dict[str, Any]]
    ) -> Outputs:
        """Reduce the records of the anomalies and commands topics, each in the order read
        (per key, as published)."""
        final: dict[str, dict[str, Any]] = {}
        lifecycle: dict[str, list[str]] = {}
        seen: set[bytes] = set()
        repeats = 0
        for anomaly in anomalies:
            key = content(anomaly)
            if key in seen:
                repeats += 1
                continue
            seen.add(key)
            aid = anomaly["anomaly_id"]
            final[aid] = anomaly
            states = lifecycle.setdefault(aid, [])
            if not states or states[-1] != anomaly["state"]:
                states.append(anomaly["state"])
        by_id: dict[str, dict[str, Any]] = {}
        conflicts = []
        for command in commands:
            known = by_id.get(command["command_id"])
            if known is None:
                by_id[command["command_id"]] = command
            elif content(known) == content(command):
                repeats += 1
            else:
                conflicts.append(command["command_id"])
        return cls(final, lifecycle, by_id, repeats, conflicts)

    def census(self, ids: Iterable[str]) -> str:
        """How many of `ids` per type and lifecycle, and the first few described."""
        ids = sorted(ids)
        kinds = Counter(
            f"{self.final[i]['type']} {'→'.join(self.lifecycle[i])}" for i in ids if i in self.final
        )
        return f"{len(ids)} anomalies: {dict(kinds)}; e.g. {self.described(ids[:5])}"

    def finals(self) -> dict[str, bytes]:
        """Anomaly id -> the content of its last lifecycle event."""
        return {aid: content(a) for aid, a in self.final.items()}

    def described(self, ids: Sequence[str]) -> list[str]:
        """One line per anomaly id: its type, order, states and times (for failure messages)."""
        lines = []
        for aid in ids:
            a = self.final.get(aid)
            if a is None:
                lines.append(f"{aid}: never published")
                continue
            lines.append(
                f"{aid}: {a['type']} {a.get('order_id')} {a.get('systems')} "
                f"{'→'.join(self.lifecycle[aid])} opened {a['opened_at']} "
                f"resolved {a.get('resolved_at')} {a['severity']}"
            )
        return lines


def differences(got: Outputs, want: Outputs) -> list[str]:
    """Every anomaly or command in which two runs differ, one line each (empty: none)."""
    got_finals, want_finals = got.finals(), want.finals()
    lines = [f"extra: {line}" for line in got.described(sorted(set(got_finals) - set(want_finals)))]
    lines += [
        f"lost: {line}" for line in want.described(sorted(set(want_finals) - set(got_finals)))
    ]
    for aid in sorted(set(got_finals) & set(want_finals)):
        if got_finals[aid] != want_finals[aid]:
            lines += [f"differs: {got.described([aid])[0]}", f"  instead of: {want_finals[aid]!r}"]
    for cid in sorted(set(got.commands) ^ set(want.commands)):
        lines.append(f"command {'extra' if cid in got.commands else 'lost'}: {cid}")
    lines += [f"command published twice with different content: {c}" for c in got.conflicts]
    return lines
