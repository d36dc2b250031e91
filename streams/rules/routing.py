"""Anomaly routing and the auto-routing rate (contract §4.3, §5).

`route` gives a new anomaly its owner from the ordered rules (schemas.routing); the first
match wins and no match means `manual`. `AutoRoutingRate` keeps, per anomaly id, the
anomalies opened in the trailing event-time window and the share that went to a team.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from schemas.anomalies import AnomalyType, Route, Severity, Team
from schemas.events import OrderDetails
from schemas.routing import NO_MATCH, Priority, RoutingMatch, RoutingTable, normalize_channel

DEFAULT_WINDOW = timedelta(hours=24)


@dataclass(frozen=True, slots=True)
class RoutingFacts:
    """What routing looks at; None means unknown (no order details), which no constraint meets."""

    type: AnomalyType
    severity: Severity
    systems: frozenset[str] = frozenset()
    vip: bool | None = None
    priority: Priority | None = None
    channel: str | None = None

    @classmethod
    def of(
        cls,
        type: AnomalyType,  # the contract's field name
        severity: Severity,
        systems: Iterable[str] = (),
        order: OrderDetails | None = None,
    ) -> RoutingFacts:
        """The facts of an anomaly, with the order's details when the ERP has them."""
        if order is None:
            return cls(type=type, severity=severity, systems=frozenset(systems))
        return cls(
            type=type,
            severity=severity,
            systems=frozenset(systems),
            vip=order.vip,
            priority=order.priority,
            channel=order.channel,
        )


def matches(match: RoutingMatch, facts: RoutingFacts) -> bool:
    """True when every field the rule gives holds for these facts."""
    if match.type is not None and facts.type not in match.type:
        return False
    if match.severity is not None and facts.severity not in match.severity:
        return False
    # Any listed system involved (see schemas.routing for why not "all of").
    if match.systems is not None and match.systems.isdisjoint(facts.systems):
        return False
    if match.vip is not None and facts.vip is not match.vip:
        return False
    if match.priority is not None and facts.priority != match.priority:
        return False
    return match.channel is None or (
        facts.channel is not None and normalize_channel(facts.channel) in match.channel
    )


def route(facts: RoutingFacts, table: RoutingTable) -> Route:
    """The owner of an anomaly: the first matching rule's team, else manual ("no_match")."""
    for rule in table.rules:
        if matches(rule.match, facts):
            return Route(team=rule.team, rule=rule.name)
    return Route(team=Team.MANUAL, rule=NO_MATCH)


@dataclass(frozen=True, slots=True)
class RoutingCounts:
    """Anomalies opened in a window and how many were auto-routed; adds across workers."""

    auto: int = 0
    total: int = 0

    def __add__(self, other: RoutingCounts) -> RoutingCounts:
        return RoutingCounts(self.auto + other.auto, self.total + other.total)

    def ratio(self) -> float | None:
        """auto / total, or None when no anomaly was opened (0/0 is not 0%)."""
        return self.auto / self.total if self.total else None


def _require_aware(name: str, moment: datetime) -> None:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware, got {moment.isoformat()}")


class AutoRoutingRate:
    """The auto-routing rate over the trailing event-time window (contract §4.3).

    Counted: anomalies with `opened_at` after `watermark - window`. Each anomaly id counts
    once. Should two reports of one id disagree, the earlier opening wins, then the lower
    team name: that makes the result independent of arrival and merge order.
    """

    def __init__(self, window: timedelta = DEFAULT_WINDOW) -> None:
        if window <= timedelta(0):
            raise ValueError(f"window must be positive, got {window}")
        self.window = window
        self._entries: dict[str, tuple[datetime, Team]] = {}
        # Min-heap on opened_at for cheap expiry; replaced entries leave stale items behind,
        # recognised on pop because their time no longer matches the entry's.
        self._heap: list[tuple[datetime, str]] = []
        self._auto = 0
        self._watermark: datetime | None = None

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def watermark(self) -> datetime | None:
        """The highest watermark seen by `expire`, or None before the first."""
        return self._watermark

    def add(self, anomaly_id: str, opened_at: datetime, team: Team) -> bool:
        """Count a newly opened anomaly; False when it changed nothing (known, or too old)."""
        _require_aware("opened_at", opened_at)
        if self._watermark is not None and opened_at <= self._watermark - self.window:
            # Already outside the window: counting it would resurrect what expiry removed.
            return False
        current = self._entries.get(anomaly_id)
        if current is not None:
            if (opened_at, team.value) >= (current[0], current[1].value):
                return False
            self._auto -= current[1] is not Team.MANUAL
        self._entries[anomaly_id] = (opened_at, team)
        self._auto += team is not Team.MANUAL
        heapq.heappush(self._heap, (opened_at, anomaly_id))
        return True

    def expire(self, watermark: datetime) -> int:
        """Drop anomalies opened at or before `watermark - window`; returns how many went."""
        _require_aware("watermark", watermark)
        # A watermark never goes back; a late or out-of-order call must not un-expire anything.
        if self._watermark is None or watermark > self._watermark:
            self._watermark = watermark
        cutoff = self._watermark - self.window
        dropped = 0
        while self._heap and self._heap[0][0] <= cutoff:
            opened_at, anomaly_id = heapq.heappop(self._heap)
            entry = self._entries.get(anomaly_id)
            if entry is not None and entry[0] == opened_at:
                del self._entries[anomaly_id]
                self._auto -= entry[1] is not Team.MANUAL
                dropped += 1
        return dropped

    def counts(self) -> RoutingCounts:
        """What is counted now; sum these across workers for the fleet's rate."""
        return RoutingCounts(auto=self._auto, total=len(self._entries))

    def ratio(self) -> float | None:
        """The share of counted anomalies routed to a team, or None when there are none."""
        return self.counts().ratio()

    def merge(self, other: AutoRoutingRate) -> None:
        """Fold in another worker's (or partition's) rate; commutative and idempotent."""
        if other.window != self.window:
            raise ValueError(f"cannot merge a {other.window} window into a {self.window} one")
        if other._watermark is not None:
            self.expire(other._watermark)
        for anomaly_id, (opened_at, team) in other._entries.items():
            self.add(anomaly_id, opened_at, team)

    def to_json(self) -> dict[str, Any]:
        """A compact JSON-able form for the state table (the window is a setting, not state)."""
        out: dict[str, Any] = {
            "e": [
                [anomaly_id, opened_at.isoformat(), team.value]
                for anomaly_id, (opened_at, team) in sorted(self._entries.items())
            ]
        }
        if self._watermark is not None:
            out["m"] = self._watermark.isoformat()
        return out

    @classmethod
    def from_json(
        cls, raw: dict[str, Any] | None, *, window: timedelta = DEFAULT_WINDOW
    ) -> AutoRoutingRate:
        """The inverse of to_json; None gives an empty rate."""
        rate = cls(window)
        if not raw:
            return rate
        if "m" in raw:
            rate.expire(datetime.fromisoformat(raw["m"]))
        for anomaly_id, opened_at, team in raw.get("e", ()):
            rate.add(anomaly_id, datetime.fromisoformat(opened_at), Team(team))
        return rate
