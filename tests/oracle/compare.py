"""Compare what a pipeline (or its rules) put out with what the oracle expects.

`Actual.fold(anomalies, commands)` folds a stream of lifecycle events and commands (pydantic
models or their JSON dicts, as read from the topics, repeats and all) into one final record
per id, noting every inconsistency: an id whose type or `opened_at` changes, two different
`resolved_at`, a command id repeated with other content. Identical repeats (allowed after a
crash or a hand-over, in any order) are counted and carry nothing new. `diff(expected,
actual)` lists every difference, one line each; an empty list means they agree.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from tests.oracle import Expected
from tests.oracle.contract import SEVERITY_RANK, from_us, to_us


def _plain(record: Any) -> dict[str, Any]:
    if hasattr(record, "model_dump"):
        dumped: dict[str, Any] = record.model_dump(mode="json")
        return dumped
    return dict(record)


def _us(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, int):
        return value
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(value)
    return to_us(moment)


@dataclass
class Actual:
    """Final anomalies (id -> type, severity, opened/resolved µs, team, order) and commands."""

    anomalies: dict[str, dict[str, Any]] = field(default_factory=dict)
    commands: dict[str, tuple[str, dict[str, Any]]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    repeats: int = 0  # identical records seen again (e.g. re-sent after a crash)

    @classmethod
    def fold(cls, anomalies: Iterable[Any], commands: Iterable[Any] = ()) -> Actual:
        """The final state of each id from its lifecycle events, in the order they came."""
        out = cls()
        seen: set[str] = set()
        for raw in anomalies:
            record = _plain(raw)
            key = repr(sorted((k, repr(v)) for k, v in record.items() if k != "detected_at"))
            if key in seen:
                # Published again exactly as before (after a crash or a hand-over, the new
                # owner replays what the old one sent after its last write): nothing new.
                out.repeats += 1
                continue
            seen.add(key)
            out._anomaly(record)
        sent: dict[str, dict[str, Any]] = {}  # each command as first sent, whole
        for raw in commands:
            record = _plain(raw)
            command_id = record["command_id"]
            first = sent.get(command_id)
            if first is None:
                sent[command_id] = record
                out.commands[command_id] = (str(record["kind"]), dict(record["payload"]))
            elif first == record:
                out.repeats += 1
            else:
                out.problems.append(
                    f"command {command_id} repeated with other content: {first} then {record}"
                )
        return out

    def _anomaly(self, record: dict[str, Any]) -> None:
        aid = record["anomaly_id"]
        opened = _us(record["opened_at"])
        resolved = _us(record.get("resolved_at")) if record.get("state") == "resolved" else None
        team = str((record.get("route") or {}).get("team"))
        final = self.anomalies.get(aid)
        if final is None:
            self.anomalies[aid] = {
                "type": str(record["type"]),
                "severity": str(record["severity"]),
                "opened_at": opened,
                "resolved_at": resolved,
                "team": team,
                "order_id": record.get("order_id"),
            }
            return
        final["team"] = team  # who owns it follows its severity
        if final["type"] != record["type"] or final["opened_at"] != opened:
            self.problems.append(
                f"anomaly {aid} changed: {final['type']} opened {_iso(final['opened_at'])}, "
                f"then {record['type']} opened {_iso(opened)}"
            )
        if SEVERITY_RANK[str(record["severity"])] > SEVERITY_RANK[final["severity"]]:
            final["severity"] = str(record["severity"])
        if resolved is not None:
            if final["resolved_at"] not in (None, resolved):
                self.problems.append(
                    f"anomaly {aid} resolved twice: {_iso(final['resolved_at'])} and "
                    f"{_iso(resolved)}"
                )
            final["resolved_at"] = resolved
        elif final["resolved_at"] is not None:
            self.problems.append(f"anomaly {aid} open again after it resolved")


def _iso(at_us: int | None) -> str:
    return "-" if at_us is None else from_us(at_us).isoformat()


def diff(
    expected: Expected,
    actual: Actual,
    types: Collection[str] | None = None,
    kinds: Collection[str] | None = None,
    teams_of: Collection[str] | None = None,
) -> list[str]:
    """Every difference between expected and actual outputs, one line each; `types` and
    `kinds` limit the comparison to those anomaly types and command kinds, `teams_of` the
    anomaly types whose owning team is compared (default: all)."""
    out = list(actual.problems)
    want = {a: r for a, r in expected.anomalies.items() if types is None or r.type in types}
    got = {a: r for a, r in actual.anomalies.items() if types is None or r["type"] in types}
    for aid in sorted(want.keys() - got.keys()):
        r = want[aid]
        out.append(
            f"missing {r.type} {aid} of {r.order_id}: {r.severity}, opened "
            f"{_iso(r.opened_us)}, resolved {_iso(r.resolved_us)}"
        )
    for aid in sorted(got.keys() - want.keys()):
        g = got[aid]
        out.append(
            f"unexpected {g['type']} {aid} of {g['order_id']}: {g['severity']}, opened "
            f"{_iso(g['opened_at'])}, resolved {_iso(g['resolved_at'])}"
        )
    for aid in sorted(want.keys() & got.keys()):
        r, g = want[aid], got[aid]
        team = teams_of is None or r.type in teams_of
        mine = (r.type, r.severity, r.opened_us, r.resolved_us, r.team if team else None)
        theirs = (
            g["type"],
            g["severity"],
            g["opened_at"],
            g["resolved_at"],
            g["team"] if team else None,
        )
        if mine != theirs:
            out.append(
                f"{r.type} {aid} of {r.order_id}: expected {r.severity}, opened "
                f"{_iso(r.opened_us)}, resolved {_iso(r.resolved_us)}, team {r.team}; got "
                f"{g['severity']}, opened {_iso(g['opened_at'])}, resolved "
                f"{_iso(g['resolved_at'])}, team {g['team']}"
            )
    want_cmd: Mapping[str, tuple[str, dict[str, Any]]] = {
        c: (r.kind, r.payload)
        for c, r in expected.commands.items()
        if kinds is None or r.kind in kinds
    }
    got_cmd = {c: v for c, v in actual.commands.items() if kinds is None or v[0] in kinds}
    for cid in sorted(want_cmd.keys() | got_cmd.keys()):
        if want_cmd.get(cid) != got_cmd.get(cid):
            out.append(f"command {cid}: expected {want_cmd.get(cid)}, got {got_cmd.get(cid)}")
    return out
