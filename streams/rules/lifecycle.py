"""The anomaly lifecycle: one book per order of what was raised, decided and resolved (§5, §6).

An `AnomalyBook` is the memory that makes anomaly output idempotent. It lives in state (next to
the order's join state, or inside `SourceFreshness` for intake-wide anomalies), so a restart
or a replay finds every id it raised before:

* `record` raises an anomaly once. The same id again emits nothing, unless its severity went
  up (a stall at 72 h), which re-emits the same id with the new severity. Severity never goes
  down, so an anomaly's version (state, severity, decisions) only grows downstream.
* `resolve` closes an open anomaly with `resolved_at` and `time_to_resolve_seconds`. A
  resolved id is never opened again while the book remembers it: the `keep_resolved` most
  recently resolved entries are kept (a handful per order, far more than one order produces).
* `apply_decision` records `anomaly.ack` (stays open, `acknowledged`) and `anomaly.resolve`
  (resolved at the decision's time, but never before it opened). Each returns the anomaly
  to re-publish; the same decision again returns it unchanged, so a lost emit can be redone.
  A decision for an id the book does not hold raises `UnknownAnomaly` (the wiring
  dead-letters it).

`OpenGhosts` turns the published lifecycle events into the gauges `concord_ghost_orders{type}`
(orders with an open ghost anomaly) and `concord_open_anomalies{type,team}`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from schemas.anomalies import (
    GHOST_TYPES,
    Anomaly,
    AnomalyState,
    AnomalyType,
    Decision,
    DecisionKind,
    Evidence,
    Route,
    Severity,
    Team,
)
from streams.rules.watermark import as_us, from_us

DEFAULT_KEEP_RESOLVED = 16
# Decisions come from people; a cap keeps a looping client from growing one order's state.
MAX_DECISIONS = 32

SEVERITY_RANK: dict[Severity, int] = {Severity.INFO: 0, Severity.WARNING: 1, Severity.CRITICAL: 2}

EvidenceItem = tuple[str, str, str, int]
"""(source, event_id, status, occurred_at µs) of one event that proves an anomaly."""

_ANOMALY_DECISIONS = frozenset({DecisionKind.ANOMALY_ACK, DecisionKind.ANOMALY_RESOLVE})


class UnknownAnomaly(LookupError):  # noqa: N818 - the name the wiring catches and reports
    """A decision names an anomaly this book does not hold (the wiring dead-letters it)."""

    def __init__(self, anomaly_id: str, order_id: str | None) -> None:
        where = "intake-wide anomalies" if order_id is None else f"order {order_id!r}"
        super().__init__(f"no anomaly {anomaly_id!r} among the anomalies of {where}")
        self.anomaly_id = anomaly_id
        self.order_id = order_id


@dataclass(slots=True)
class BookEntry:
    """One anomaly as the book keeps it: enough to re-publish it whole, with no pydantic."""

    anomaly_id: str
    type: AnomalyType
    severity: Severity
    opened_us: int
    team: Team
    rule: str
    systems: tuple[str, ...]
    summary: str
    evidence: tuple[EvidenceItem, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)  # JSON-able extra fields
    resolved_us: int | None = None
    resolution: str | None = None  # "converged", "decision", "caught_up", ...
    decisions: list[dict[str, Any]] = field(default_factory=list)

    @property
    def is_open(self) -> bool:
        """Whether the anomaly is still open."""
        return self.resolved_us is None

    @property
    def acknowledged(self) -> bool:
        """Whether someone acknowledged it."""
        return any(d.get("kind") == DecisionKind.ANOMALY_ACK.value for d in self.decisions)

    def anomaly(self, order_id: str | None, detected_at: datetime) -> Anomaly:
        """The lifecycle event that publishes the entry as it stands."""
        extra = dict(self.extra)
        if self.resolved_us is not None:
            extra["resolution"] = self.resolution
            extra["time_to_resolve_seconds"] = max(0, self.resolved_us - self.opened_us) / 1e6
        if self.acknowledged:
            extra["acknowledged"] = True
        return Anomaly(
            anomaly_id=self.anomaly_id,
            type=self.type,
            state=AnomalyState.OPEN if self.resolved_us is None else AnomalyState.RESOLVED,
            severity=self.severity,
            order_id=order_id,
            systems=list(self.systems),
            opened_at=from_us(self.opened_us),
            detected_at=detected_at,
            resolved_at=None if self.resolved_us is None else from_us(self.resolved_us),
            route=Route(team=self.team, rule=self.rule),
            evidence=[
                Evidence(source=s, event_id=e, status=st, occurred_at=from_us(at))
                for s, e, st, at in self.evidence
            ],
            summary=self.summary,
            decisions=list(self.decisions),
            **extra,
        )

    def to_json(self) -> list[Any]:
        """A positional list, trailing empties dropped."""
        out: list[Any] = [
            self.anomaly_id,
            self.type.value,
            self.severity.value,
            self.opened_us,
            self.team.value,
            self.rule,
            list(self.systems),
            self.summary,
            [list(e) for e in self.evidence],
            self.extra or None,
            self.resolved_us,
            self.resolution,
            self.decisions or None,
        ]
        while out and out[-1] is None:
            out.pop()
        return out

    @classmethod
    def from_json(cls, raw: list[Any]) -> BookEntry:
        """The inverse of to_json."""
        raw = [*raw, *[None] * (13 - len(raw))]
        return cls(
            anomaly_id=raw[0],
            type=AnomalyType(raw[1]),
            severity=Severity(raw[2]),
            opened_us=int(raw[3]),
            team=Team(raw[4]),
            rule=raw[5],
            systems=tuple(raw[6]),
            summary=raw[7],
            evidence=tuple((s, e, st, int(at)) for s, e, st, at in raw[8] or ()),
            extra=dict(raw[9] or {}),
            resolved_us=None if raw[10] is None else int(raw[10]),
            resolution=raw[11],
            decisions=list(raw[12] or ()),
        )


class AnomalyBook:
    """One order's anomalies (intake-wide when `order_id` is None): open and recently resolved."""

    __slots__ = ("_open", "entries", "keep_resolved", "order_id")

    def __init__(
        self, order_id: str | None = None, *, keep_resolved: int = DEFAULT_KEEP_RESOLVED
    ) -> None:
        if keep_resolved < 0:
            raise ValueError(f"keep_resolved must be >= 0, got {keep_resolved}")
        self.order_id = order_id
        self.keep_resolved = keep_resolved
        self.entries: dict[str, BookEntry] = {}
        self._open = 0  # so the hot path can skip the book when nothing is open

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, anomaly_id: object) -> bool:
        return anomaly_id in self.entries

    def get(self, anomaly_id: str) -> BookEntry | None:
        """The entry of one anomaly, None when the book does not hold it."""
        return self.entries.get(anomaly_id)

    @property
    def has_open(self) -> bool:
        """Whether any anomaly is open."""
        return self._open > 0

    def open_entries(self) -> list[BookEntry]:
        """The open anomalies, oldest first."""
        return sorted(
            (e for e in self.entries.values() if e.resolved_us is None),
            key=lambda e: (e.opened_us, e.anomaly_id),
        )

    def record(self, entry: BookEntry, detected_at: datetime) -> Anomaly | None:
        """Raise `entry` once: the open event if new, a re-emit if its severity rose, else None."""
        known = self.entries.get(entry.anomaly_id)
        if known is None:
            self.entries[entry.anomaly_id] = entry
            if entry.resolved_us is None:
                self._open += 1
            return entry.anomaly(self.order_id, detected_at)
        if known.resolved_us is not None:
            return None  # a resolved anomaly stays resolved: the same id is never raised twice
        if SEVERITY_RANK[entry.severity] <= SEVERITY_RANK[known.severity]:
            return None
        # opened_at and the decisions stay; what it says, and who owns it, follow the severity.
        known.severity = entry.severity
        known.team = entry.team
        known.rule = entry.rule
        known.systems = entry.systems
        known.summary = entry.summary
        known.evidence = entry.evidence
        known.extra = {**known.extra, **entry.extra}
        return known.anomaly(self.order_id, detected_at)

    def resolve(
        self,
        anomaly_id: str,
        at: datetime | int,
        detected_at: datetime,
        resolution: str = "converged",
        summary: str | None = None,
    ) -> Anomaly | None:
        """Close an open anomaly at event time `at`; None when it is unknown or already resolved."""
        entry = self.entries.get(anomaly_id)
        if entry is None or entry.resolved_us is not None:
            return None
        at_us = at if isinstance(at, int) else as_us(at)
        entry.resolved_us = max(at_us, entry.opened_us)
        entry.resolution = resolution
        if summary is not None:
            entry.summary = summary
        self._open -= 1
        self._forget_old()
        return entry.anomaly(self.order_id, detected_at)

    def resolve_all(
        self, at: datetime | int, detected_at: datetime, resolution: str
    ) -> list[Anomaly]:
        """Close every open anomaly (e.g. before the order leaves the state table)."""
        out: list[Anomaly] = []
        for entry in self.open_entries():
            anomaly = self.resolve(entry.anomaly_id, at, detected_at, resolution)
            if anomaly is not None:
                out.append(anomaly)
        return out

    def emit(self, anomaly_id: str, detected_at: datetime) -> Anomaly:
        """The anomaly as it stands, to re-publish it; UnknownAnomaly when not held."""
        entry = self.entries.get(anomaly_id)
        if entry is None:
            raise UnknownAnomaly(anomaly_id, self.order_id)
        return entry.anomaly(self.order_id, detected_at)

    def to_json(self) -> dict[str, Any]:
        """A compact JSON-able form: the order id and the entries as positional lists."""
        out: dict[str, Any] = {
            "e": [
                e.to_json()
                for e in sorted(self.entries.values(), key=lambda e: (e.opened_us, e.anomaly_id))
            ]
        }
        if self.order_id is not None:
            out["o"] = self.order_id
        return out

    @classmethod
    def from_json(
        cls, raw: Mapping[str, Any] | None, *, keep_resolved: int = DEFAULT_KEEP_RESOLVED
    ) -> AnomalyBook:
        """The inverse of to_json; None gives an empty intake-wide book."""
        book = cls(None if not raw else raw.get("o"), keep_resolved=keep_resolved)
        for packed in (raw or {}).get("e", ()):
            entry = BookEntry.from_json(packed)
            book.entries[entry.anomaly_id] = entry
            book._open += entry.resolved_us is None
        book._forget_old()
        return book

    def _forget_old(self) -> None:
        resolved = [e for e in self.entries.values() if e.resolved_us is not None]
        excess = len(resolved) - self.keep_resolved
        if excess > 0:
            resolved.sort(key=lambda e: (e.resolved_us or 0, e.anomaly_id))
            for entry in resolved[:excess]:
                del self.entries[entry.anomaly_id]


def apply_decision(book: AnomalyBook, decision: Decision, detected_at: datetime) -> list[Anomaly]:
    """Record an `anomaly.ack` or `anomaly.resolve` on its anomaly; returns what to re-publish.

    Raises UnknownAnomaly when the book does not hold the target, ValueError for another kind
    of decision or past MAX_DECISIONS on one anomaly.
    """
    if decision.kind not in _ANOMALY_DECISIONS:
        raise ValueError(
            f"decision {decision.decision_id!r} is {decision.kind.value!r}, "
            "not anomaly.ack or anomaly.resolve"
        )
    entry = book.get(decision.target)
    if entry is None:
        raise UnknownAnomaly(decision.target, book.order_id)
    if any(d.get("decision_id") == decision.decision_id for d in entry.decisions):
        return [entry.anomaly(book.order_id, detected_at)]  # redelivered: nothing changes
    if len(entry.decisions) >= MAX_DECISIONS:
        raise ValueError(
            f"anomaly {entry.anomaly_id!r} already has {MAX_DECISIONS} decisions; "
            f"decision {decision.decision_id!r} is not recorded"
        )
    entry.decisions.append(decision.model_dump(mode="json"))
    if decision.kind is DecisionKind.ANOMALY_RESOLVE and entry.is_open:
        # Resolve at the decision's time; a decision against a still-pending anomaly (clock
        # skew between a person's screen and event time) cannot close it before it opened.
        resolved = book.resolve(entry.anomaly_id, decision.at, detected_at, "decision")
        assert resolved is not None
        return [resolved]
    # An ack on an already resolved anomaly, or a second resolve, is recorded and re-published.
    return [entry.anomaly(book.order_id, detected_at)]


class OpenGhosts:
    """Open anomalies by (type, team) and orders with an open ghost by type, from lifecycle events.

    Keyed by anomaly id, so re-emits and redeliveries count once, an escalation that changes
    the team moves the anomaly, and a resolution of an id never seen open is ignored. After a
    restart, rebuild it with `add_book` over the state table (or keep it in state via to_json).
    Workers own disjoint orders: `merge` two workers' counts for a fleet-wide figure.
    """

    __slots__ = ("_ghost_orders", "_open", "_order_types", "_type_team")

    def __init__(self) -> None:
        self._open: dict[str, tuple[AnomalyType, Team, str | None]] = {}
        self._type_team: Counter[tuple[AnomalyType, Team]] = Counter()
        self._order_types: Counter[tuple[AnomalyType, str]] = Counter()  # open ids per order
        self._ghost_orders: Counter[AnomalyType] = Counter()

    def __len__(self) -> int:
        return len(self._open)

    def observe(self, anomaly: Anomaly) -> bool:
        """Account for one lifecycle event; True when a count changed."""
        return self.observe_fields(
            anomaly.anomaly_id,
            anomaly.type,
            anomaly.route.team,
            anomaly.order_id,
            is_open=anomaly.state is AnomalyState.OPEN,
        )

    def observe_fields(
        self,
        anomaly_id: str,
        type: AnomalyType,  # the contract's field name
        team: Team,
        order_id: str | None,
        *,
        is_open: bool,
    ) -> bool:
        """`observe` without an Anomaly model."""
        known = self._open.get(anomaly_id)
        if is_open:
            if known == (type, team, order_id):
                return False
            if known is not None:
                self._drop(anomaly_id, known)
            self._add(anomaly_id, (type, team, order_id))
            return True
        if known is None:
            return False
        self._drop(anomaly_id, known)
        return True

    def add_book(self, book: AnomalyBook) -> None:
        """Count every open anomaly of a book (rebuilding after a restart)."""
        for entry in book.open_entries():
            self.observe_fields(
                entry.anomaly_id, entry.type, entry.team, book.order_id, is_open=True
            )

    def ghost_orders(self) -> dict[AnomalyType, int]:
        """Orders with at least one open anomaly of each ghost type (every ghost type listed)."""
        return {t: self._ghost_orders[t] for t in sorted(GHOST_TYPES)}

    def open_anomalies(self) -> dict[tuple[AnomalyType, Team], int]:
        """Open anomalies per (type, team), only pairs with some open."""
        return {k: n for k, n in sorted(self._type_team.items()) if n > 0}

    def merge(self, other: OpenGhosts) -> None:
        """Fold another worker's open anomalies in (idempotent: the same id counts once)."""
        for anomaly_id, key in other._open.items():
            if anomaly_id not in self._open:
                self._add(anomaly_id, key)

    def to_json(self) -> dict[str, Any]:
        """A JSON-able form: [id, type, team, order] per open anomaly."""
        return {"a": [[i, t.value, m.value, o] for i, (t, m, o) in sorted(self._open.items())]}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any] | None) -> OpenGhosts:
        """The inverse of to_json; None gives empty counts."""
        out = cls()
        for anomaly_id, type_, team, order_id in (raw or {}).get("a", ()):
            out._add(anomaly_id, (AnomalyType(type_), Team(team), order_id))
        return out

    def __iter__(self) -> Iterator[str]:
        return iter(self._open)

    def _add(self, anomaly_id: str, key: tuple[AnomalyType, Team, str | None]) -> None:
        type_, team, order_id = key
        self._open[anomaly_id] = key
        self._type_team[(type_, team)] += 1
        if order_id is not None and type_ in GHOST_TYPES:
            self._order_types[(type_, order_id)] += 1
            if self._order_types[(type_, order_id)] == 1:
                self._ghost_orders[type_] += 1

    def _drop(self, anomaly_id: str, key: tuple[AnomalyType, Team, str | None]) -> None:
        type_, team, order_id = key
        del self._open[anomaly_id]
        self._type_team[(type_, team)] -= 1
        if self._type_team[(type_, team)] == 0:
            del self._type_team[(type_, team)]
        if order_id is not None and type_ in GHOST_TYPES:
            self._order_types[(type_, order_id)] -= 1
            if self._order_types[(type_, order_id)] == 0:
                del self._order_types[(type_, order_id)]
                self._ghost_orders[type_] -= 1


def books_open(books: Iterable[AnomalyBook]) -> OpenGhosts:
    """OpenGhosts rebuilt from the books of a state table."""
    out = OpenGhosts()
    for book in books:
        out.add_book(book)
    return out
