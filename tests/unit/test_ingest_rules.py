"""Ingest's normalised event: what later stages can rely on, whatever form a timestamp came in."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import orjson
import pytest

from schemas.events import ChangeEvent
from schemas.stages import PHASE_OF, Source, Stage
from schemas.status_map import default_status_map
from streams.ingest import envelope
from streams.rules.ingest import IngestRules, Origin, Outcome, Reason, RefState, Rejection
from streams.rules.order_state import OrderJoin, OrderState
from streams.rules.watermark import as_us, occurred_us
from tests.phones import PHONES

RULES = IngestRules(default_status_map())
CST = timezone(timedelta(hours=8))
AT = datetime(2026, 3, 2, 9, 30, 15, 250_000, tzinfo=CST)
RECEIVED = datetime(2026, 3, 2, 13, tzinfo=UTC)  # after every event time below


def _forwarded(event: dict) -> dict:
    raw = orjson.dumps(event)
    decoded = RULES.decode(raw, Source(event["source"]), RECEIVED)
    assert not isinstance(decoded, Rejection), decoded
    applied = RULES.apply(decoded, raw, RefState(), RECEIVED, origin=Origin(0, 0, None))
    assert applied.outcome is Outcome.ACCEPTED
    [(_, body)] = applied.forward
    return body


def _erp(occurred_at: object, placed_at: object | None = None) -> dict:
    order: dict = {
        "customer_id": "W1",
        "channel": "website",
        "lines": [{"sku": "BRK-1", "qty": 1, "unit_price": "9.50"}],
        "amount": "9.50",
        "currency": "CNY",
    }
    if placed_at is not None:
        order["placed_at"] = placed_at
    return {
        "event_id": "e1",
        "source": "erp",
        "order_ref": "SO1",
        "status": "CREATED",
        "occurred_at": occurred_at,
        "order": order,
    }


@pytest.mark.parametrize(
    "occurred_at",
    [
        AT.timestamp(),  # epoch seconds
        AT.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fz"),  # a lowercase z
        AT.isoformat(),
    ],
)
def test_event_time_leaves_ingest_as_iso_text_and_microseconds(occurred_at: object):
    body = _forwarded(_erp(occurred_at, placed_at=occurred_at))
    assert datetime.fromisoformat(body["occurred_at"]) == AT
    assert datetime.fromisoformat(body["order"]["placed_at"]) == AT
    assert body["occurred_us"] == as_us(AT)
    assert occurred_us(body) == as_us(AT)


def test_text_already_in_iso_form_is_kept_as_it_came():
    text = "2026-03-02T09:30:15.250+08:00"
    body = _forwarded(_erp(text, placed_at=text))
    assert body["occurred_at"] == text
    assert body["order"]["placed_at"] == text


def test_the_join_reads_the_event_time_ingest_gives_it():
    body = _forwarded(_erp(AT.timestamp()))
    passed, read = OrderState(order_id="SO1"), OrderState(order_id="SO1")
    with_time = OrderJoin(PHONES).apply(passed, body, body["occurred_us"])
    without = OrderJoin(PHONES).apply(read, body)
    assert with_time == without
    assert with_time.event_time == AT
    assert passed.to_json() == read.to_json()
    # A normalised event from before ingest added `occurred_us` still reads its occurred_at.
    older = {k: v for k, v in body.items() if k != "occurred_us"}
    assert occurred_us(older) == as_us(AT)


@pytest.mark.parametrize(
    "text",
    [
        "2026-03-02T09:00:01+08:00",
        "2026-03-02 09:00:01+08:00",
        "2026-03-02t09:00:01Z",
        "2026-03-02T09:00:01.1234567+08:00",
        "2026-03-02T09:00:01.123456789Z",
        "2026-03-02T09:00:01,5+08:00",
        "2026-03-02T09:00:01+0800",
        "2026-03-02T09:00+08:00",
        "2026-03-02T09:00:01.5-03:30",
        "2026-03-02T09:00:01-00:00",
        "2026-03-02T09:00:01+23:59",
    ],
)
def test_where_the_schema_and_fromisoformat_both_read_a_time_they_agree(text: str):
    # Ingest keeps such a text as it came and later stages read it with fromisoformat.
    body = _forwarded(_erp(text))
    assert body["occurred_at"] == text
    assert datetime.fromisoformat(text) == ChangeEvent.model_validate(_erp(text)).occurred_at
    assert body["occurred_us"] == as_us(datetime.fromisoformat(text))


def test_an_envelope_is_what_orjson_makes_of_its_events():
    events = [{"event_id": "e1", "n": 1}, {"event_id": "e2", "text": '已发货, "quoted"'}]
    packed = envelope([orjson.dumps(e) for e in events])
    assert packed == orjson.dumps({"events": events})
    assert envelope([]) == orjson.dumps({"events": []})


def _crm(event_id: str, minutes: float, erp_order_id: str | None = None) -> dict:
    event = {
        "event_id": event_id,
        "source": "crm",
        "order_ref": "CS1",
        "status": "NEW",
        "occurred_at": (AT + timedelta(minutes=minutes)).isoformat(),
    }
    if erp_order_id is not None:
        event["erp_order_id"] = erp_order_id
    return event


def _apply(state: RefState, event: dict) -> tuple[Outcome, list[tuple[str, dict]]]:
    raw = orjson.dumps(event)
    decoded = RULES.decode(raw, Source.CRM, RECEIVED)
    assert not isinstance(decoded, Rejection), decoded
    applied = RULES.apply(decoded, raw, state, RECEIVED, origin=Origin(0, 0, None))
    return applied.outcome, [(order, body.get("linked_us")) for order, body in applied.forward]


def test_what_waited_for_a_link_counts_for_the_order_from_the_link() -> None:
    # A CRM ticket tied to SO1 only at 60 min: what it held is forwarded then, counting for
    # SO1 from 60 on (linked_us), and stays the ticket's own until event time gets there.
    link = as_us(AT + timedelta(minutes=60))
    state = RefState()
    assert _apply(state, _crm("c1", 0)) == (Outcome.HELD, [])
    assert _apply(state, _crm("c2", 20)) == (Outcome.HELD, [])
    assert _apply(state, _crm("c3", 60, "SO1")) == (
        Outcome.ACCEPTED,
        [("SO1", link), ("SO1", link), ("SO1", None)],
    )
    assert (state.since_us, [e["event_id"] for e in state.unlinked]) == (link, ["c1", "c2"])
    # Read after the link but dated before it: it counts from the link too.
    assert _apply(state, _crm("c4", 59)) == (Outcome.ACCEPTED, [("SO1", link)])
    # An earlier event naming SO1, read later: the link is that one's time.
    assert _apply(state, _crm("c5", 55, "SO1")) == (Outcome.ACCEPTED, [("SO1", None)])
    assert state.since_us == as_us(AT + timedelta(minutes=55))
    assert RefState.from_json(orjson.loads(orjson.dumps(state.to_json()))) == state


# --- what a producer cannot put into a normalised event (found by tests/fuzz) -------------


@pytest.mark.parametrize("token", [b"NaN", b"Infinity", b"-Infinity", b"1e400"])
def test_nan_infinity_and_numbers_beyond_a_double_are_not_json(token: bytes):
    # The schema's parser takes them; orjson, which forwards the event, does not: before,
    # apply raised and the ingest stage crashed on the record at every restart.
    event = _erp(AT.isoformat())
    raw = orjson.dumps({**event, "attrs": {"x": "?"}}).replace(b'"?"', token)
    decoded = RULES.decode(raw, Source.ERP, RECEIVED)
    assert isinstance(decoded, ChangeEvent)
    state = RefState()
    applied = RULES.apply(decoded, raw, state, RECEIVED, origin=Origin(0, 0, None))
    assert applied.outcome is Outcome.REJECTED
    assert applied.rejection is not None
    assert applied.rejection.reason is Reason.INVALID_JSON
    assert applied.forward == []
    assert state == RefState()  # not remembered: the same event, fixed, is taken


@pytest.mark.parametrize(
    ("status", "stage", "marker"),
    [("库存不足", None, "allocation_failed"), ("SHIPPED", "shipped", None)],
)
def test_a_producers_own_stage_phase_marker_or_link_time_never_passes_for_ingests(
    status: str, stage: str | None, marker: str | None
):
    # A marker status with the producer's "stage": "delivered" would have moved the order to
    # delivered; with "stage": "bogus", the per-order stage raised on it at every restart.
    for theirs in ("delivered", "bogus"):
        event = {**_erp(AT.isoformat()), "status": status}
        fields = {"stage": theirs, "phase": theirs, "marker": theirs, "linked_us": theirs}
        body = _forwarded({**event, **fields})
        assert (body.get("stage"), body.get("marker")) == (stage, marker)
        assert "linked_us" not in body  # ingest's alone, when an event waited for its link
        assert body.get("phase") == (None if stage is None else PHASE_OF[Stage(stage)].value)
        OrderJoin(PHONES).apply(OrderState(order_id="SO1"), body)
