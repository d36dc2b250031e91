"""ERP events that arrive before the one carrying their order's details (contract §2: the
first ERP event *in event time* carries `order`): held, then forwarded once the details come,
or dead-lettered `missing_order` when they do not come within the wait."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from schemas.stages import Source
from schemas.status_map import default_status_map
from streams.rules.ingest import (
    IngestRules,
    Origin,
    Outcome,
    Reason,
    RefState,
    Rejection,
    Waiting,
)
from streams.rules.order_state import OrderJoin, OrderState
from streams.rules.watermark import as_us
from tests.phones import PHONES

RULES = IngestRules(default_status_map())
T0 = datetime(2026, 3, 2, 9, tzinfo=UTC)
RECEIVED = T0 + timedelta(hours=1)
WAIT = timedelta(minutes=30)
ORDER = {
    "customer_id": "W1",
    "channel": "website",
    "lines": [{"sku": "BRK-1", "qty": 2, "unit_price": "9.50"}],
    "amount": "19.00",
    "currency": "CNY",
    "vip": True,
}
# One order's ERP life: created (with the details), confirmed, allocated, shipped.
STEPS = [("e1", "CREATED", 0), ("e2", "CONFIRMED", 1), ("e3", "ALLOCATED", 2), ("e4", "SHIPPED", 3)]


def _erp(event_id: str, status: str, minute: float, *, details: bool = False) -> bytes:
    event: dict[str, Any] = {
        "event_id": event_id,
        "source": "erp",
        "order_ref": "SO1",
        "status": status,
        "occurred_at": (T0 + timedelta(minutes=minute)).isoformat(),
    }
    if details:
        event["order"] = ORDER
    return orjson.dumps(event)


def _feed(details_on: str = "e1") -> dict[str, bytes]:
    return {eid: _erp(eid, status, m, details=eid == details_on) for eid, status, m in STEPS}


def _apply(
    raw: bytes, state: RefState, offset: int = 0, rules: IngestRules = RULES
) -> Any:  # the Applied result
    event = rules.decode(raw, Source.ERP, RECEIVED)
    assert not isinstance(event, Rejection), event
    return rules.apply(event, raw, state, RECEIVED, origin=Origin(2, offset, b"SO1"))


def _through_ingest(arrival: list[bytes]) -> tuple[list[dict[str, Any]], RefState]:
    state = RefState()
    forwarded: list[dict[str, Any]] = []
    for offset, raw in enumerate(arrival):
        applied = _apply(raw, state, offset)
        assert applied.outcome in (Outcome.ACCEPTED, Outcome.HELD)
        # Through the state table as the worker keeps it, between every two events.
        state = RefState.from_json(orjson.loads(orjson.dumps(state.to_json())))
        forwarded += [orjson.loads(orjson.dumps(body)) for _, body in applied.forward]
    return forwarded, state


def _joined(forwarded: list[dict[str, Any]]) -> dict[str, Any]:
    state = OrderState(order_id="SO1")
    join = OrderJoin(PHONES)
    for body in forwarded:
        assert body["order_id"] == "SO1"
        join.apply(state, body)
    state.recent_ids.sort()  # the ids the join saw last, kept in the order it saw them
    return state.to_json()


@pytest.mark.parametrize("details_on", ["e1", "e3"])
def test_every_arrival_order_forwards_the_same_events_and_joins_to_the_same_state(
    details_on: str,
):
    feed = _feed(details_on)
    in_order, _ = _through_ingest(list(feed.values()))
    want_state = _joined(in_order)
    assert set(want_state["s"]) == {"e"}
    assert want_state["f"][2:4] == ["W1", "website"]  # the order's facts
    for arrival in itertools.permutations(feed):
        forwarded, state = _through_ingest([feed[eid] for eid in arrival])
        ids = [body["event_id"] for body in forwarded]
        assert sorted(ids) == ["e1", "e2", "e3", "e4"], arrival
        assert _joined(forwarded) == want_state, arrival
        assert state.waiting == []
        assert state.has_order


def test_events_before_the_details_wait_and_follow_them_in_event_time():
    feed = _feed()
    state = RefState()
    for offset, eid in enumerate(("e4", "e2", "e3")):
        applied = _apply(feed[eid], state, offset)
        assert applied.outcome is Outcome.HELD
        assert applied.forward == []
    assert [w.event["event_id"] for w in state.waiting] == ["e4", "e2", "e3"]
    assert RULES.details_deadline_us(state) == as_us(T0 + timedelta(minutes=1) + WAIT)

    applied = _apply(feed["e1"], state, 3)
    assert applied.outcome is Outcome.ACCEPTED
    assert [(oid, body["event_id"]) for oid, body in applied.forward] == [
        ("SO1", "e1"),
        ("SO1", "e2"),
        ("SO1", "e3"),
        ("SO1", "e4"),
    ]
    assert all(body["order_id"] == body["erp_order_id"] == "SO1" for _, body in applied.forward)
    assert state.waiting == []
    assert RULES.details_deadline_us(state) is None


def test_a_resent_waiting_event_is_a_duplicate():
    feed = _feed()
    state = RefState()
    assert _apply(feed["e2"], state).outcome is Outcome.HELD
    assert _apply(feed["e2"], state).outcome is Outcome.DUPLICATE
    assert len(state.waiting) == 1


def test_an_event_that_waited_too_long_is_taken_out_with_its_bytes_and_origin():
    feed = _feed()
    state = RefState()
    _apply(feed["e2"], state, offset=41)  # 09:01
    _apply(feed["e4"], state, offset=42)  # 09:03
    due = as_us(T0 + timedelta(minutes=1) + WAIT)
    assert RULES.expire_waiting(state, due - 1) == []
    expired = RULES.expire_waiting(state, due)
    assert [(w.raw, w.origin) for w in expired] == [(feed["e2"], Origin(2, 41, b"SO1"))]
    assert [w.event["event_id"] for w in state.waiting] == ["e4"]
    assert RULES.details_deadline_us(state) == as_us(T0 + timedelta(minutes=3) + WAIT)
    assert RULES.missing_details.reason is Reason.MISSING_ORDER
    # Its id is forgotten: re-sent once the details came, it is taken.
    assert _apply(feed["e1"], state).outcome is Outcome.ACCEPTED
    applied = _apply(feed["e2"], state)
    assert applied.outcome is Outcome.ACCEPTED
    assert [body["event_id"] for _, body in applied.forward] == ["e2"]


def test_the_wait_is_a_setting():
    rules = IngestRules(default_status_map(), details_wait=timedelta(minutes=5))
    state = RefState()
    _apply(_feed()["e2"], state, rules=rules)
    assert rules.details_deadline_us(state) == as_us(T0 + timedelta(minutes=6))
    assert "within 0:05:00 of event time" in rules.missing_details.error


def test_waiting_events_are_bounded_per_order():
    rules = IngestRules(default_status_map(), max_held=3)
    state = RefState()
    outcomes = [_apply(_erp(f"e{i}", "CONFIRMED", i), state, rules=rules).outcome for i in range(5)]
    assert outcomes == [Outcome.HELD] * 3 + [Outcome.REJECTED] * 2
    overflow = _apply(_erp("e9", "CONFIRMED", 9), state, rules=rules).rejection
    assert overflow is not None
    assert overflow.reason is Reason.HELD_OVERFLOW
    assert overflow.error == (
        f"3 events ({state.held_bytes} bytes) of this reference already wait for its details: "
        f"at most 3 ({256 * 1024} bytes)"
    )


def test_held_input_is_bounded_in_bytes_per_reference():
    # The reference's state is one changelog record: it must stay well under a broker's
    # largest message however many events it holds.
    first, second = _erp("e2", "CONFIRMED", 1), _erp("e3", "ALLOCATED", 2)
    rules = IngestRules(default_status_map(), max_held_bytes=len(first) + len(second) - 1)
    state = RefState()
    assert _apply(first, state, rules=rules).outcome is Outcome.HELD
    assert state.held_bytes == len(first)
    overflow = _apply(second, state, rules=rules).rejection
    assert overflow is not None
    assert overflow.reason is Reason.HELD_OVERFLOW
    # Expired or released, the bytes are free again.
    assert rules.expire_waiting(state, as_us(T0 + timedelta(minutes=1) + WAIT)) != []
    assert state.held_bytes == 0
    assert _apply(second, state, rules=rules).outcome is Outcome.HELD
    assert _apply(_feed()["e1"], state, rules=rules).outcome is Outcome.ACCEPTED
    assert state.held_bytes == 0
    assert RefState.from_json(state.to_json()) == state


def test_waiting_survives_the_state_table_with_its_exact_bytes_and_key():
    raw = _erp("e2", "已审核", 1)
    waiting = Waiting(orjson.loads(raw), raw, Origin(3, 7, b"\xff\x00SO1"))
    state = RefState(seen=["e2"], waiting=[waiting], held_bytes=len(raw))
    again = RefState.from_json(orjson.loads(orjson.dumps(state.to_json())))
    assert again == state
    assert RefState.from_json(RefState().to_json()).waiting == []
