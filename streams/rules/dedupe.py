"""Duplicate-order rules: fingerprint an order, pair look-alikes placed within a sliding window.

The wiring repartitions ERP order-created events by `DedupeRules.fingerprint`, so every order
that could duplicate another lands on the same key; a `FingerprintWindow` is the whole state of
one key and lives in a table keyed by fingerprint. Matching uses event time only (`placed_at`),
so a replay finds the same pairs as living through it, whatever order the events arrive in.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from schemas.anomalies import (
    Anomaly,
    AnomalyState,
    AnomalyType,
    Command,
    CommandKind,
    Decision,
    DecisionKind,
    Evidence,
    Route,
    Severity,
    deterministic_id,
)
from schemas.events import ChangeEvent, OrderDetails
from schemas.routing import Priority
from schemas.stages import Source
from streams.rules.routing import RoutingFacts

_WHITESPACE = re.compile(r"\s+")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Bumped when the normalisation changes, so old and new keys never share a window.
_FINGERPRINT_VERSION = "concord-dedupe/1"
_DUPLICATE_DECISIONS = frozenset({DecisionKind.DUPLICATE_MERGE, DecisionKind.DUPLICATE_KEEP})


@dataclass(frozen=True, slots=True)
class PlacedOrder:
    """One order held in a fingerprint window, with the event that announced it."""

    order_id: str
    placed_at: datetime
    channel: str
    source: str
    event_id: str
    status: str
    occurred_at: datetime
    vip: bool = False  # with the channel, what the pair's route is decided on
    priority: Priority = "normal"

    def to_json(self) -> list[Any]:
        """A positional list: the window holds many of these, so keys would dominate its size."""
        out: list[Any] = [
            self.order_id,
            self.placed_at.isoformat(),
            self.channel,
            self.source,
            self.event_id,
            self.status,
            self.occurred_at.isoformat(),
        ]
        if self.vip or self.priority != "normal":
            out += [self.vip, self.priority]
        return out

    @classmethod
    def from_json(cls, raw: list[Any]) -> PlacedOrder:
        """The inverse of to_json."""
        order_id, placed_at, channel, source, event_id, status, occurred_at = raw[:7]
        vip, kept = raw[7:9] if len(raw) >= 9 else (False, "normal")
        priority: Priority = "rush" if kept == "rush" else "normal"
        return cls(
            order_id=order_id,
            placed_at=datetime.fromisoformat(placed_at),
            channel=channel,
            source=source,
            event_id=event_id,
            status=status,
            occurred_at=datetime.fromisoformat(occurred_at),
            vip=bool(vip),
            priority=priority,
        )


@dataclass(frozen=True, slots=True)
class DuplicatePair:
    """Two orders with one fingerprint placed within the window; `first` was placed first."""

    first: PlacedOrder
    second: PlacedOrder
    fingerprint: str

    @classmethod
    def of(cls, a: PlacedOrder, b: PlacedOrder, fingerprint: str) -> DuplicatePair:
        """The pair of two orders, earlier-placed first (ties broken by order id)."""
        first, second = sorted((a, b), key=lambda o: (o.placed_at, o.order_id))
        return cls(first, second, fingerprint)

    @property
    def key(self) -> tuple[str, str]:
        """The two order ids, sorted: the pair's identity whichever arrived first."""
        return _pair_key(self.first.order_id, self.second.order_id)

    @property
    def gap(self) -> timedelta:
        """How long after the first order the second was placed."""
        return self.second.placed_at - self.first.placed_at

    def routing_facts(self) -> RoutingFacts:
        """What the pair is routed on: the later-placed order's channel, VIP flag, priority
        (the anomaly is raised on it), whichever of the two arrived first."""
        later = self.second
        return RoutingFacts(
            type=AnomalyType.DUPLICATE_ORDER,
            severity=Severity.WARNING,
            systems=frozenset({Source.ERP.value}),
            vip=later.vip,
            priority=later.priority,
            channel=later.channel,
        )


@dataclass(slots=True)
class FingerprintWindow:
    """What dedupe remembers about one fingerprint: orders still in reach and pairs raised."""

    orders: dict[str, PlacedOrder] = field(default_factory=dict)
    raised: set[tuple[str, str]] = field(default_factory=set)

    @property
    def is_empty(self) -> bool:
        """Nothing left to remember: the table entry can be deleted."""
        return not self.orders and not self.raised

    def to_json(self) -> dict[str, Any]:
        """A compact JSON-able form for the state table (sorted, so equal states encode equally)."""
        held = sorted(self.orders.values(), key=lambda o: (o.placed_at, o.order_id))
        out: dict[str, Any] = {"o": [o.to_json() for o in held]}
        if self.raised:
            out["r"] = [list(pair) for pair in sorted(self.raised)]
        return out

    @classmethod
    def from_json(cls, raw: dict[str, Any] | None) -> FingerprintWindow:
        """The inverse of to_json; None gives a fresh state."""
        if not raw:
            return cls()
        held = [PlacedOrder.from_json(o) for o in raw.get("o", ())]
        return cls(
            orders={o.order_id: o for o in held},
            raised={_pair_key(a, b) for a, b in raw.get("r", ())},
        )


class DedupeRules:
    """Contract §5 `duplicate_order`: same fingerprint, placed within ±`window`, event time.

    Window: two different orders pair when |placed_at₁ − placed_at₂| ≤ `window` (inclusive:
    exactly 15:00 apart matches, 15:00.001 does not), with no buckets, so 14:59:50 and 15:00:10
    pair. `placed_at` defaults to the event's `occurred_at`. A pair is raised once, when its
    second order arrives, and remembered while either order is held.

    Bounds: `expire(state, watermark)` drops orders with placed_at + window < watermark (no
    on-time order can reach them any more), and raised pairs once both orders are gone. The
    watermark is the wiring's promise that no order placed before it is still to come, so its
    lateness allowance belongs in it. `max_orders` caps one window against a burst of identical
    orders (a bulk buyer, a looping integration), so a table value stays far below Kafka's
    message size; past it the earliest-placed orders are dropped.
    """

    def __init__(
        self,
        window: timedelta = timedelta(minutes=15),
        sku_prefix_len: int = 8,
        include_ship_to: bool = False,
        *,
        max_orders: int = 64,
    ) -> None:
        if window <= timedelta(0):
            raise ValueError(f"window must be positive, got {window}")
        if sku_prefix_len < 1:
            raise ValueError(f"sku_prefix_len must be at least 1, got {sku_prefix_len}")
        if max_orders < 2:
            raise ValueError(f"max_orders must be at least 2, got {max_orders}")
        self.window = window
        self.sku_prefix_len = sku_prefix_len
        self.include_ship_to = include_ship_to
        self.max_orders = max_orders

    def fingerprint(self, order: OrderDetails) -> str:
        """The order's duplicate key: the first 16 hex characters of a SHA-256 of its parts.

        Text is NFKC-normalised (full-width to ASCII), case-folded, and stripped of all
        Unicode whitespace. The parts, hashed as one JSON array:
        - customer: `customer_id`, normalised;
        - parts: each line's `sku`, normalised, then cut to its first `sku_prefix_len`
          characters, deduplicated and sorted (line order, quantity and price do not count);
        - ship-to, only with `include_ship_to`: `ship_to` normalised and reduced to its letters
          and digits (channels punctuate addresses differently), or null when absent.
        The settings are hashed too, so changing them opens new keys instead of mixing old and
        new orders in one window. Field order in the input JSON cannot matter: the parts are
        read from the validated model.
        """
        parts: list[Any] = [
            _FINGERPRINT_VERSION,
            self.sku_prefix_len,
            _normalised(order.customer_id),
            sorted({_normalised(line.sku)[: self.sku_prefix_len] for line in order.lines}),
        ]
        if self.include_ship_to:
            ship_to = order.ship_to
            parts.append(
                None if ship_to is None else "".join(c for c in _normalised(ship_to) if c.isalnum())
            )
        return hashlib.sha256(orjson.dumps(parts)).hexdigest()[:16]

    def bucket_floor_key(
        self, order: OrderDetails, placed_at: datetime, bucket: timedelta = timedelta(minutes=15)
    ) -> str:
        """The naive alternative, for contrast: fingerprint plus the fixed UTC bucket of placed_at.

        It splits 14:59:50 and 15:00:10 across the 15:00 edge, which is why the window slides.
        """
        return f"{self.fingerprint(order)}:{(placed_at - _EPOCH) // bucket}"

    def observe(
        self,
        state: FingerprintWindow,
        order_id: str,
        order: OrderDetails,
        *,
        event_id: str,
        status: str,
        occurred_at: datetime,
        source: str = Source.ERP.value,
        watermark: datetime | None = None,
    ) -> list[DuplicatePair]:
        """Add one order to its fingerprint's window (mutated) and return the new pairs it makes."""
        if watermark is not None:
            # Expiring first makes the outcome depend on the watermark, not on when the timer ran.
            self.expire(state, watermark)
        if order_id in state.orders:
            return []  # a re-send or an update of the same order: idempotence, not a duplicate
        placed = PlacedOrder(
            order_id=order_id,
            placed_at=order.placed_at or occurred_at,
            channel=order.channel,
            source=source,
            event_id=event_id,
            status=status,
            occurred_at=occurred_at,
            vip=order.vip,
            priority=order.priority,
        )
        partners = [
            other
            for other in state.orders.values()
            if abs(other.placed_at - placed.placed_at) <= self.window
            and _pair_key(other.order_id, order_id) not in state.raised
        ]
        state.orders[order_id] = placed
        if not partners:
            self._enforce_cap(state)
            return []
        fingerprint = self.fingerprint(order)
        pairs = sorted(
            (DuplicatePair.of(other, placed, fingerprint) for other in partners),
            key=lambda p: p.key,
        )
        state.raised.update(p.key for p in pairs)
        self._enforce_cap(state)
        return pairs

    def observe_event(
        self, state: FingerprintWindow, event: ChangeEvent, watermark: datetime | None = None
    ) -> list[DuplicatePair]:
        """`observe` for an ERP order-created event; ValueError when it carries no order."""
        if event.order is None:
            raise ValueError(f"event {event.event_id!r} carries no order details to dedupe")
        return self.observe(
            state,
            event.erp_order_id or event.order_ref,
            event.order,
            event_id=event.event_id,
            status=event.status,
            occurred_at=event.occurred_at,
            source=event.source.value,
            watermark=watermark,
        )

    def expire(self, state: FingerprintWindow, watermark: datetime) -> bool:
        """Drop orders with placed_at + window < watermark; True when the state is now empty."""
        horizon = watermark - self.window
        for order_id in [o.order_id for o in state.orders.values() if o.placed_at < horizon]:
            del state.orders[order_id]
        _forget_unreachable_pairs(state)
        return state.is_empty

    def _enforce_cap(self, state: FingerprintWindow) -> None:
        excess = len(state.orders) - self.max_orders
        if excess <= 0:
            return
        earliest = sorted(state.orders.values(), key=lambda o: (o.placed_at, o.order_id))
        for placed in earliest[:excess]:
            del state.orders[placed.order_id]
        _forget_unreachable_pairs(state)


def duplicate_anomaly_id(order_a: str, order_b: str) -> str:
    """The anomaly id of a pair, the same whichever order is named first."""
    low, high = _pair_key(order_a, order_b)
    return deterministic_id("anomaly", AnomalyType.DUPLICATE_ORDER.value, low, high)


def duplicate_anomaly(pair: DuplicatePair, detected_at: datetime, route: Route) -> Anomaly:
    """The open `duplicate_order` anomaly for a pair, raised on the later-placed order."""
    first, second = pair.first, pair.second
    return Anomaly(
        anomaly_id=duplicate_anomaly_id(first.order_id, second.order_id),
        type=AnomalyType.DUPLICATE_ORDER,
        state=AnomalyState.OPEN,
        severity=Severity.WARNING,
        order_id=second.order_id,
        systems=sorted({first.source, second.source}),
        opened_at=second.placed_at,
        detected_at=detected_at,
        route=route,
        evidence=[_evidence(first), _evidence(second)],
        summary=(
            f"Order {second.order_id} ({second.channel}) looks like a duplicate of order "
            f"{first.order_id} ({first.channel}): same customer and parts, "
            f"placed {_apart(pair.gap)} apart."
        ),
        order_ids=[first.order_id, second.order_id],
        gap_seconds=pair.gap.total_seconds(),
        fingerprint=pair.fingerprint,
    )


def apply_duplicate_decision(
    anomaly: Anomaly, decision: Decision, issued_at: datetime
) -> tuple[Anomaly, list[Command]]:
    """Resolve a duplicate anomaly by decision; a merge also commands `order.merge`.

    ValueError (the wiring dead-letters it) for another kind of decision, another anomaly, or a
    new decision on an anomaly already resolved. The same decision again returns the anomaly
    unchanged and the same commands, with the same ids, so a lost emit can be repeated safely.
    """
    if decision.kind not in _DUPLICATE_DECISIONS:
        raise ValueError(
            f"decision {decision.decision_id!r} is {decision.kind.value!r}, "
            "not duplicate.merge or duplicate.keep"
        )
    if anomaly.type != AnomalyType.DUPLICATE_ORDER:
        raise ValueError(
            f"anomaly {anomaly.anomaly_id!r} is {anomaly.type.value!r}, not a duplicate"
        )
    if decision.target != anomaly.anomaly_id:
        raise ValueError(
            f"decision {decision.decision_id!r} targets {decision.target!r}, "
            f"not anomaly {anomaly.anomaly_id!r}"
        )
    for recorded in anomaly.decisions:
        if recorded.get("decision_id") == decision.decision_id:
            # Rebuilt from the recorded copy: a redelivery cannot change what was decided.
            return anomaly, _decided_commands(anomaly, Decision.model_validate(recorded), issued_at)
    if anomaly.state == AnomalyState.RESOLVED:
        raise ValueError(
            f"anomaly {anomaly.anomaly_id!r} is already resolved; "
            f"decision {decision.decision_id!r} comes too late"
        )
    commands = _decided_commands(anomaly, decision, issued_at)
    resolved = anomaly.model_copy(
        update={
            "state": AnomalyState.RESOLVED,
            "resolved_at": decision.at,
            "decisions": [*anomaly.decisions, decision.model_dump(mode="json")],
        }
    )
    return resolved, commands


def _decided_commands(anomaly: Anomaly, decision: Decision, issued_at: datetime) -> list[Command]:
    if decision.kind != DecisionKind.DUPLICATE_MERGE:
        return []
    earlier, later = _pair_orders(anomaly)
    keep = (decision.model_extra or {}).get("keep", earlier)
    if keep not in (earlier, later):
        raise ValueError(
            f"decision {decision.decision_id!r} keeps {keep!r}, "
            f"which is neither {earlier!r} nor {later!r}"
        )
    return [
        Command(
            command_id=deterministic_id(
                "command", CommandKind.ORDER_MERGE.value, anomaly.anomaly_id, decision.decision_id
            ),
            kind=CommandKind.ORDER_MERGE,
            issued_at=issued_at,
            payload={
                "keep": keep,
                "drop": later if keep == earlier else earlier,
                "anomaly_id": anomaly.anomaly_id,
            },
        )
    ]


def _pair_orders(anomaly: Anomaly) -> tuple[str, str]:
    order_ids = (anomaly.model_extra or {}).get("order_ids")
    if not (
        isinstance(order_ids, list)
        and len(order_ids) == 2
        and all(isinstance(o, str) for o in order_ids)
    ):
        raise ValueError(f"anomaly {anomaly.anomaly_id!r} does not name its two orders (order_ids)")
    return order_ids[0], order_ids[1]


def _evidence(placed: PlacedOrder) -> Evidence:
    return Evidence(
        source=placed.source,
        event_id=placed.event_id,
        status=placed.status,
        occurred_at=placed.occurred_at,
        order_id=placed.order_id,
        channel=placed.channel,
        placed_at=placed.placed_at,
    )


def _apart(gap: timedelta) -> str:
    seconds = gap.total_seconds()
    if seconds < 120:
        return f"{round(seconds, 3):g} s"
    return f"{round(seconds / 60, 1):g} min"


def _normalised(text: str) -> str:
    return _WHITESPACE.sub("", unicodedata.normalize("NFKC", text).casefold())


def _pair_key(a: str, b: str) -> tuple[str, str]:
    return (a, b) if a <= b else (b, a)


def _forget_unreachable_pairs(state: FingerprintWindow) -> None:
    # A pair is kept while either order is held: a redelivery of the other must not re-raise it.
    state.raised = {p for p in state.raised if p[0] in state.orders or p[1] in state.orders}
