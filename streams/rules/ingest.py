"""Ingest rules: validate, map status, drop re-sends, link to the master order, hold the unlinked.

State is kept per (source, order_ref): all events of one source order land on one partition
of that source's topic, so the crosswalk, the re-send check and the held events of a
reference live together and need no cross-partition lookup.

What one record may cost is bounded before the work it would cause (`InputLimits`): its bytes
first, then, by a linear scan of the bytes (no recursion, no parse), the nesting depth of its
JSON and the length of its strings; after validation, the lines of its order and whether its
times are plausible (within `max_age` before and `max_ahead` after the wall clock). Each
failing check has its own dead-letter reason.

An ERP event of an order whose details (`order`) have not come yet waits in the reference's
state (`RefState.waiting`): the contract's "first ERP event" is first in event time, and
events of one order may arrive out of order. When the details come, the waiting events are
forwarded after the event carrying them, in event-time order; one that waited
`details_wait` of event time in vain is taken out by `expire_waiting`, to be dead-lettered
`missing_order` with its original bytes.

What waited counts for the order from the event that released it: `RefState.since_us` is the
event time of the reference's earliest event read that names its order (the ERP's: that
carries its details), and every event forwarded dated before it carries `linked_us`. The
events a reference held until its link stay in `RefState.unlinked` until event time reaches
the link, judged meanwhile as the reference's own (its orphan_order, which the link
resolves at its own time however early it was read).
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from itertools import accumulate
from typing import Any, NamedTuple

import orjson
from pydantic import ValidationError

from schemas.events import ChangeEvent
from schemas.stages import PHASE_OF, Marker, Source, Stage
from schemas.status_map import StatusMap
from streams.rules.watermark import DEFAULT_MAX_AHEAD, as_us, span_us

DEFAULT_DETAILS_WAIT = timedelta(minutes=30)


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
    TOO_LARGE = "too_large"  # more bytes than InputLimits.record_bytes
    TOO_DEEP = "too_deep"  # JSON nested deeper than InputLimits.depth
    TOO_LONG = "too_long"  # a string longer than InputLimits.string_bytes
    TOO_MANY_LINES = "too_many_lines"  # an order with more than InputLimits.order_lines
    IMPLAUSIBLE_TIME = "implausible_time"  # occurred_at or placed_at too old or too far ahead
    UNKNOWN_ANOMALY = "unknown_anomaly"  # a decision for an anomaly Concord never raised
    INVALID_DECISION = "invalid_decision"  # a decision its anomaly cannot take


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why an input cannot be used."""

    reason: Reason
    error: str


@dataclass(frozen=True, slots=True)
class InputLimits:
    """What one input record may be, each bound checked before the work it would cost."""

    record_bytes: int = 1 << 20  # Kafka's default largest message, about
    depth: int = 32  # nesting of JSON objects and arrays; an order's line is at depth 4
    string_bytes: int = 4096  # one JSON string (or key) as written, escapes included
    order_lines: int = 1000
    max_age: timedelta = timedelta(days=400)  # event times before the wall clock
    max_ahead: timedelta = DEFAULT_MAX_AHEAD  # and after it


class Origin(NamedTuple):
    """Where an input record was read: its partition, offset and key (for a dead letter)."""

    partition: int
    offset: int
    key: bytes | None


@dataclass(slots=True)
class Waiting:
    """An ERP event held until its order's details come."""

    event: dict[str, Any]  # normalised, as it will be forwarded
    raw: bytes  # the original bytes, for a dead letter if the details never come
    origin: Origin

    def to_json(self) -> dict[str, Any]:
        """A JSON-able form (accepted input is UTF-8, so its bytes are kept as text)."""
        partition, offset, key = self.origin
        return {
            "e": self.event,
            "r": self.raw.decode(),
            "p": partition,
            "o": offset,
            "k": None if key is None else base64.b64encode(key).decode(),
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Waiting:
        """The inverse of to_json."""
        key = raw["k"]
        return cls(
            raw["e"],
            raw["r"].encode(),
            Origin(raw["p"], raw["o"], None if key is None else base64.b64decode(key)),
        )


@dataclass(slots=True)
class RefState:
    """What ingest remembers about one source order reference."""

    link: str | None = None  # master (ERP) order id, once known
    has_order: bool = False  # ERP only: the order details have been seen
    seen: list[str] = field(default_factory=list)  # event ids, oldest first
    held: list[dict[str, Any]] = field(default_factory=list)  # waiting for a link
    # Once linked: what was held, forwarded but still judged as the reference's own until
    # event time reaches the link (its orphan_order, `evaluate_unlinked`).
    unlinked: list[dict[str, Any]] = field(default_factory=list)
    ghosts: dict[str, Any] | None = None  # GhostState JSON of the unlinked reference
    waiting: list[Waiting] = field(default_factory=list)  # ERP only: waiting for the details
    held_bytes: int = 0  # input bytes of the held and waiting events
    # The event time from which the reference's events count for their order: that of the
    # earliest event read that brought its link (the ERP's: its order's details). An event
    # earlier than it counts from then (it is forwarded with `linked_us`).
    since_us: int | None = None

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
        if self.unlinked:
            out["u"] = self.unlinked
        if self.waiting:
            out["w"] = [w.to_json() for w in self.waiting]
        if self.held_bytes:
            out["n"] = self.held_bytes
        if self.since_us is not None:
            out["t"] = self.since_us
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
            unlinked=list(raw.get("u", ())),
            ghosts=raw.get("g"),
            waiting=[Waiting.from_json(w) for w in raw.get("w", ())],
            held_bytes=int(raw.get("n", 0)),
            since_us=raw.get("t"),
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

    def __init__(
        self,
        status_map: StatusMap,
        *,
        limits: InputLimits = InputLimits(),
        details_wait: timedelta = DEFAULT_DETAILS_WAIT,
        max_seen: int = 512,
        max_held: int = 256,
        max_held_bytes: int = 256 * 1024,
    ):
        self.status_map = status_map
        self.limits = limits
        self.details_wait_us = span_us(details_wait)
        self.missing_details = Rejection(  # what an expired waiting event is dead-lettered as
            Reason.MISSING_ORDER,
            f"no ERP event carrying the order's details came within {details_wait} of event time",
        )
        self.max_seen = max_seen
        self.max_held = max_held
        # The reference's state is one changelog record: with what it holds at most ~2.5 times
        # this (a waiting event keeps its bytes and its normalised form), under Kafka's 1 MiB.
        self.max_held_bytes = max_held_bytes
        self._received: tuple[datetime, str] | None = None  # a batch's received_at, as text
        self._plausible: tuple[datetime, int, int] | None = None  # wall, from, to (µs)

    def decode(
        self, raw: bytes | None, topic_source: Source, received_at: datetime
    ) -> ChangeEvent | Rejection:
        """Parse and validate raw bytes from `topic_source`'s topic, read at `received_at`."""
        if raw is None:
            return Rejection(Reason.INVALID_JSON, "empty message value")
        oversized = _beyond_limits(raw, self.limits)
        if oversized is not None:
            return oversized
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
        if event.order is not None and len(event.order.lines) > self.limits.order_lines:
            return Rejection(
                Reason.TOO_MANY_LINES,
                f"{len(event.order.lines)} order lines, more than {self.limits.order_lines}",
            )
        return self._implausible(event, received_at) or event

    def apply(
        self,
        event: ChangeEvent,
        raw: bytes,
        state: RefState,
        received_at: datetime,
        event_us: int | None = None,
        *,
        origin: Origin,
    ) -> Applied:
        """Apply a decoded event to its reference's state (mutated in place); `event_us` is
        its occurred_at in µs when the caller has it already, `origin` where it was read."""
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

        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            # The schema's parser takes NaN, ±Infinity and numbers beyond a double (1e400): not
            # JSON (RFC 8259), and nothing downstream could write them again.
            return Applied(
                Outcome.REJECTED, rejection=Rejection(Reason.INVALID_JSON, f"not JSON: {exc}")
            )
        if self._received is None or self._received[0] is not received_at:
            self._received = (received_at, received_at.isoformat())
        normalized = _normalized(
            body,
            event,
            mapped,
            self._received[1],
            as_us(event.occurred_at) if event_us is None else event_us,
        )
        if event.source is Source.ERP and not state.has_order:
            if event.order is None:
                waiting = Waiting(normalized, raw, origin)
                return self._hold(state, event, state.waiting, waiting, len(raw), "its details")
            state.has_order = True
        link = event.erp_order_id or state.link
        if link is None:
            return self._hold(state, event, state.held, normalized, len(raw), "a link")

        if state.link is None:
            state.link = link
        erp = event.source is Source.ERP
        if event.order is not None if erp else event.erp_order_id is not None:
            event_us = normalized["occurred_us"]
            if state.since_us is None or event_us < state.since_us:
                state.since_us = event_us
        self._remember(state, event.event_id)
        forward: list[tuple[str, dict[str, Any]]] = []
        for held in state.held:
            held["order_id"] = state.link
            held["erp_order_id"] = state.link
            forward.append((state.link, held))
        if state.held:
            state.unlinked = state.held
        state.held = []
        state.held_bytes = 0
        normalized["order_id"] = link
        normalized["erp_order_id"] = link
        forward.append((link, normalized))
        if state.waiting:  # ERP events that came before their order's details: in event time
            for waited in sorted(state.waiting, key=_event_order):
                waited.event["order_id"] = link
                waited.event["erp_order_id"] = link
                forward.append((link, waited.event))
            state.waiting = []
        since = state.since_us
        if since is not None:
            # What waited for the link (or the details), or came after it but dated before
            # it, counts for the order from the link on: it was nobody's before.
            for _, body in forward:
                if body["occurred_us"] < since:
                    body["linked_us"] = since
        return Applied(Outcome.ACCEPTED, forward=forward)

    def details_deadline_us(self, state: RefState) -> int | None:
        """When the earliest ERP event waiting for its order's details has waited long enough."""
        if not state.waiting:
            return None
        return min(_event_order(w)[0] for w in state.waiting) + self.details_wait_us

    def expire_waiting(self, state: RefState, watermark_us: int) -> list[Waiting]:
        """Take out the ERP events that waited `details_wait` of event time in vain (for a
        `missing_order` dead letter); their ids are forgotten, so a re-send is taken again."""
        cut = watermark_us - self.details_wait_us
        expired = [w for w in state.waiting if _event_order(w)[0] <= cut]
        if expired:
            state.waiting = [w for w in state.waiting if _event_order(w)[0] > cut]
            state.held_bytes -= sum(len(w.raw) for w in expired)
            gone = {w.event["event_id"] for w in expired}
            state.seen = [i for i in state.seen if i not in gone]
        return expired

    def _hold(
        self,
        state: RefState,
        event: ChangeEvent,
        queue: list[Any],
        item: Any,
        size: int,
        waits_for: str,
    ) -> Applied:
        # In the reference's state, up to max_held events and max_held_bytes of input.
        if len(queue) >= self.max_held or state.held_bytes + size > self.max_held_bytes:
            return Applied(
                Outcome.REJECTED,
                rejection=Rejection(
                    Reason.HELD_OVERFLOW,
                    f"{len(queue)} events ({state.held_bytes} bytes) of this reference already "
                    f"wait for {waits_for}: at most {self.max_held} ({self.max_held_bytes} bytes)",
                ),
            )
        self._remember(state, event.event_id)
        queue.append(item)
        state.held_bytes += size
        return Applied(Outcome.HELD)

    def _remember(self, state: RefState, event_id: str) -> None:
        state.seen.append(event_id)
        if len(state.seen) > self.max_seen:
            del state.seen[: len(state.seen) - self.max_seen]

    def _implausible(self, event: ChangeEvent, received_at: datetime) -> Rejection | None:
        # A time from long ago (epoch 0, year 1) or far ahead would move event time by years:
        # it is a fault of the source, not a change to apply. Compared in µs: an aware
        # datetime comparison costs twice as much.
        if self._plausible is None or self._plausible[0] is not received_at:
            wall_us = as_us(received_at)
            self._plausible = (
                received_at,
                wall_us - span_us(self.limits.max_age),
                wall_us + span_us(self.limits.max_ahead),
            )
        _, earliest, latest = self._plausible
        placed = None if event.order is None else event.order.placed_at
        for name, at in (("occurred_at", event.occurred_at), ("order.placed_at", placed)):
            if at is not None and not earliest <= as_us(at) <= latest:
                return Rejection(
                    Reason.IMPLAUSIBLE_TIME,
                    f"{name} {at.isoformat()} is more than {self.limits.max_age} before or "
                    f"{self.limits.max_ahead} after the wall clock ({received_at.isoformat()})",
                )
        return None


def _event_order(waited: Waiting) -> tuple[int, str]:
    # (event time in µs, event id): ingest's normalised events carry both.
    return int(waited.event["occurred_us"]), str(waited.event["event_id"])


# One JSON string (its closing quote optional: an unterminated one runs to the end, so a scan
# never starts again inside it and stays linear in the record's length).
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"?', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_DEPTH_STEP = [0] * 256
for _opening in b"[{":
    _DEPTH_STEP[_opening] = 1
for _closing in b"]}":
    _DEPTH_STEP[_closing] = -1


def _beyond_limits(raw: bytes, limits: InputLimits) -> Rejection | None:
    # Size, depth and string length from the bytes alone, each in a pass of C loops (regex,
    # translate, accumulate): no recursion however deep the nesting, and no parse.
    if len(raw) > limits.record_bytes:
        return Rejection(
            Reason.TOO_LARGE, f"{len(raw)} bytes, more than the limit of {limits.record_bytes}"
        )
    # Most records are short with few brackets: no string can be too long, no nesting too
    # deep, and nothing is scanned.
    long_enough = len(raw) > limits.string_bytes + 2
    bracketed = raw.count(b"{") + raw.count(b"[") > limits.depth
    if not (long_enough or bracketed):
        return None
    if long_enough:
        longest = max(map(len, _STRING.findall(raw)), default=2) - 2
        if longest > limits.string_bytes:
            return Rejection(
                Reason.TOO_LONG,
                f"a string of {longest} bytes, more than the limit of {limits.string_bytes}",
            )
    if bracketed:
        brackets = _STRING.sub(b"", raw).translate(None, _NOT_BRACKETS)
        depth = max(accumulate(map(_DEPTH_STEP.__getitem__, brackets)), default=0)
        if depth > limits.depth:
            return Rejection(
                Reason.TOO_DEEP, f"JSON nested {depth} deep, more than the limit of {limits.depth}"
            )
    return None


# Fields of the normalised event that ingest writes when it has them: a producer's own (no
# contract field) would pass for ingest's reading, or name no stage at all (`occurred_us`,
# `received_at` and `order_id` are written on every event).
_INGESTS_OWN = ("stage", "phase", "marker", "linked_us")


def _normalized(
    body: dict[str, Any],
    event: ChangeEvent,
    mapped: Stage | Marker,
    received_at: str,
    event_us: int,
) -> dict[str, Any]:
    # The original object (`body`, changed in place), every unknown field kept, plus what
    # ingest learned. Timestamps leave in a form `datetime.fromisoformat` reads as the same
    # instant (the schema also takes epoch numbers and a lowercase `z`), and the event time
    # as µs besides.
    body["occurred_at"] = _iso_text(body.get("occurred_at"), event.occurred_at)
    body["occurred_us"] = event_us
    order = body.get("order")
    if event.order is not None and event.order.placed_at is not None and isinstance(order, dict):
        order["placed_at"] = _iso_text(order.get("placed_at"), event.order.placed_at)
    for name in _INGESTS_OWN:
        body.pop(name, None)
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
