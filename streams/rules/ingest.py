"""Ingest rules: validate, map status, drop re-sends, link to the master order, hold the unlinked.

State is kept per (source, order_ref): all events of one source order land on one partition
of that source's topic, so the crosswalk, the re-send check and the held events of a
reference live together and need no cross-partition lookup.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

import orjson
from pydantic import ValidationError

from schemas.events import ChangeEvent
from schemas.stages import PHASE_OF, Marker, Source, Stage
from schemas.status_map import StatusMap
from streams.rules.watermark import as_us


class Outcome(StrEnum):
    """What happened to one input event (label of concord_events_total)."""

    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    HELD = "held"
    REJECTED = "rejected"


class Reason(StrEnum):
    """Machine-readable dead-letter reasons."""

    INVALID_JSON = "invalid_json"
    SCHEMA = "schema"
    WRONG_TOPIC = "wrong_topic"
    UNKNOWN_STATUS = "unknown_status"
    MISSING_ORDER = "missing_order"
    HELD_OVERFLOW = "held_overflow"
    UNKNOWN_ANOMALY = "unknown_anomaly"  # a decision for an anomaly Concord never raised
    INVALID_DECISION = "invalid_decision"  # a decision its anomaly cannot take


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why an input cannot be used."""

    reason: Reason
    error: str


@dataclass(slots=True)
class RefState:
    """What ingest remembers about one source order reference."""

    link: str | None = None  # master (ERP) order id, once known
    has_order: bool = False  # ERP only: the order details have been seen
    seen: list[str] = field(default_factory=list)  # event ids, oldest first
    held: list[dict[str, Any]] = field(default_factory=list)  # waiting for a link
    ghosts: dict[str, Any] | None = None  # GhostState JSON of the unlinked reference

    def to_json(self) -> dict[str, Any]:
        """A compact JSON-able form for the state table."""
        out: dict[str, Any] = {"s": self.seen}
        if self.ghosts:
            out["g"] = self.ghosts
        if self.link is not None:
            out["l"] = self.link
        if self.has_order:
            out["o"] = 1
        if self.held:
            out["h"] = self.held
        return out

    @classmethod
    def from_json(cls, raw: dict[str, Any] | None) -> RefState:
        """The inverse of to_json; None gives a fresh state."""
        if not raw:
            return cls()
        return cls(
            link=raw.get("l"),
            has_order=bool(raw.get("o")),
            seen=list(raw.get("s", ())),
            held=list(raw.get("h", ())),
            ghosts=raw.get("g"),
        )


@dataclass(slots=True)
class Applied:
    """The result of applying one valid event to its reference's state."""

    outcome: Outcome
    forward: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (order_id, event)
    rejection: Rejection | None = None


def state_key(source: Source, order_ref: str) -> str:
    """The state-table key of a source order reference."""
    return f"{source.value}|{order_ref}"


class IngestRules:
    """Validation, status mapping, idempotence and the crosswalk, without I/O."""

    def __init__(self, status_map: StatusMap, *, max_seen: int = 512, max_held: int = 256):
        self.status_map = status_map
        self.max_seen = max_seen
        self.max_held = max_held
        self._received: tuple[datetime, str] | None = None  # a batch's received_at, as text

    def decode(self, raw: bytes | None, topic_source: Source) -> ChangeEvent | Rejection:
        """Parse and validate raw bytes from `topic_source`'s topic."""
        if raw is None:
            return Rejection(Reason.INVALID_JSON, "empty message value")
        try:
            event = ChangeEvent.model_validate_json(raw)
        except ValidationError as exc:
            errors = exc.errors(include_url=False, include_input=False)
            if any(err["type"] == "json_invalid" for err in errors):
                return Rejection(Reason.INVALID_JSON, errors[0]["msg"])
            return Rejection(Reason.SCHEMA, _describe(errors))
        if event.source is not topic_source:
            return Rejection(
                Reason.WRONG_TOPIC,
                f"source {event.source.value!r} arrived on the {topic_source.value} topic",
            )
        return event

    def apply(
        self,
        event: ChangeEvent,
        raw: bytes,
        state: RefState,
        received_at: datetime,
        event_us: int | None = None,
    ) -> Applied:
        """Apply a decoded event to its reference's state (mutated in place); `event_us` is
        its occurred_at in µs when the caller has it already."""
        mapped = self.status_map.lookup(event.source, event.status)
        if mapped is None:
            return Applied(
                Outcome.REJECTED,
                rejection=Rejection(
                    Reason.UNKNOWN_STATUS,
                    f"status {event.status!r} is not in the {event.source.value} status map",
                ),
            )
        if event.event_id in state.seen:
            return Applied(Outcome.DUPLICATE)
        if event.source is Source.ERP and not state.has_order:
            if event.order is None:
                return Applied(
                    Outcome.REJECTED,
                    rejection=Rejection(
                        Reason.MISSING_ORDER,
                        "the first ERP event of an order must carry its `order` details",
                    ),
                )
            state.has_order = True

        if self._received is None or self._received[0] is not received_at:
            self._received = (received_at, received_at.isoformat())
        normalized = _normalized(
            raw,
            event,
            mapped,
            self._received[1],
            as_us(event.occurred_at) if event_us is None else event_us,
        )
        link = event.erp_order_id or state.link
        if link is None:
            if len(state.held) >= self.max_held:
                return Applied(
                    Outcome.REJECTED,
                    rejection=Rejection(
                        Reason.HELD_OVERFLOW,
                        f"{self.max_held} events of this reference already wait for a link",
                    ),
                )
            self._remember(state, event.event_id)
            state.held.append(normalized)
            return Applied(Outcome.HELD)

        if state.link is None:
            state.link = link
        self._remember(state, event.event_id)
        forward: list[tuple[str, dict[str, Any]]] = []
        for held in state.held:
            held["order_id"] = state.link
            held["erp_order_id"] = state.link
            forward.append((state.link, held))
        state.held = []
        normalized["order_id"] = link
        normalized["erp_order_id"] = link
        forward.append((link, normalized))
        return Applied(Outcome.ACCEPTED, forward=forward)

    def _remember(self, state: RefState, event_id: str) -> None:
        state.seen.append(event_id)
        if len(state.seen) > self.max_seen:
            del state.seen[: len(state.seen) - self.max_seen]


def _normalized(
    raw: bytes, event: ChangeEvent, mapped: Stage | Marker, received_at: str, event_us: int
) -> dict[str, Any]:
    # The original object, every unknown field kept, plus what ingest learned. Timestamps
    # leave in a form `datetime.fromisoformat` reads as the same instant (the schema also
    # takes epoch numbers and a lowercase `z`), and the event time as µs besides.
    body: dict[str, Any] = orjson.loads(raw)
    body["occurred_at"] = _iso_text(body.get("occurred_at"), event.occurred_at)
    body["occurred_us"] = event_us
    order = body.get("order")
    if event.order is not None and event.order.placed_at is not None and isinstance(order, dict):
        order["placed_at"] = _iso_text(order.get("placed_at"), event.order.placed_at)
    if isinstance(mapped, Stage):
        body["stage"] = mapped.value
        body["phase"] = PHASE_OF[mapped].value
    else:
        body["marker"] = mapped.value
    body["received_at"] = received_at
    return body


def _iso_text(value: Any, parsed: datetime) -> str:
    # The original text when fromisoformat reads it with an offset, else `parsed` (what the
    # schema read) in ISO form. Where both read a text, they read the same instant (a unit
    # test holds them to it).
    if isinstance(value, str):
        try:
            if datetime.fromisoformat(value).tzinfo is not None:
                return value
        except ValueError:
            pass
    return parsed.isoformat()


def _describe(errors: list[Any]) -> str:
    parts = []
    for err in errors[:5]:
        loc = ".".join(str(p) for p in err["loc"]) or "(root)"
        parts.append(f"{loc}: {err['msg']}")
    more = f" (+{len(errors) - 5} more)" if len(errors) > 5 else ""
    return "; ".join(parts) + more
