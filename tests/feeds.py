"""A hand-built feed with an exactly known outcome, for the ingest tests."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone

import orjson

from schemas.anomalies import AnomalyType
from streams.rules.ghosts import ghost_anomaly_id
from streams.rules.watermark import as_us, event_time

CST = timezone(timedelta(hours=8))
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=CST)


@dataclass
class Feed:
    """Records to publish and what ingest must make of them."""

    records: list[tuple[str, bytes | None, bytes]] = field(default_factory=list)
    # (source, event_id) -> master order id, for every event that must reach `normalized`
    expected: dict[tuple[str, str], str] = field(default_factory=dict)
    deadletters: dict[str, int] = field(default_factory=dict)
    resends: int = 0
    held_forever: int = 0
    latest: datetime | None = None  # the newest event time of a valid event
    # anomaly id -> (type, order id or reference, when it opens in event time)
    ghosts: dict[str, tuple[str, str, datetime]] = field(default_factory=dict)

    def anomalies_at(self, watermark: datetime) -> dict[str, tuple[str, str]]:
        """The anomalies open at `watermark` (none resolves): id -> (type, order)."""
        return {aid: (t, order) for aid, (t, order, at) in self.ghosts.items() if at <= watermark}

    def settled_watermark(self, allowed_lateness: timedelta = timedelta(minutes=2)) -> datetime:
        """Event time once every feed is idle: the newest event less the allowed lateness."""
        assert self.latest is not None
        return self.latest - allowed_lateness


def _event(source: str, ref: str, eid: str, status: str, minute: float, **extra: object) -> dict:
    return {
        "event_id": eid,
        "source": source,
        "order_ref": ref,
        "status": status,
        "occurred_at": (T0 + timedelta(minutes=minute)).isoformat(),
        **extra,
    }


def _order(i: int) -> dict:
    return {
        "customer_id": f"W{i % 97:04d}",
        "channel": ["website", "wechat", "douyin", "pos", "excel", "distributor_api"][i % 6],
        "lines": [{"sku": f"BRK-PAD-{i % 13:03d}", "qty": 1 + i % 3, "unit_price": "88.00"}],
        "amount": f"{88 * (1 + i % 3)}.00",
        "currency": "CNY",
        "customer_phone": f"+86 138{i:08d}",
        "ship_to": "广东省佛山市南海区桂城街道1号",
        "vip": i % 10 == 0,
    }


def build_feed(prefix: str, orders: int) -> Feed:
    """Every order: ERP create+confirm, a CRM thread (held, linked, crosswalked), a WMS event.

    Mixed in: re-sends, CRM references that never get linked, and every bad-input kind. The
    anomalies it must raise are in `Feed.ghosts`: each order a status_conflict (its CRM moves
    on, its ERP never does), each never-linked CRM reference an orphan_order; nothing else.
    """
    feed = Feed()

    def topic(source: str) -> str:
        return f"{prefix}.{source}.events"

    def send(event: dict, *, expect: str | None) -> None:
        feed.records.append(
            (topic(event["source"]), event["order_ref"].encode(), orjson.dumps(event))
        )
        if expect is not None:
            feed.expected[(event["source"], event["event_id"])] = expect
        at = event_time(event["occurred_at"])
        feed.latest = at if feed.latest is None else max(feed.latest, at)

    def ghost(type_: AnomalyType, order: str, trigger: datetime | None, opens: float) -> None:
        key = "" if trigger is None else str(as_us(trigger))
        feed.ghosts[ghost_anomaly_id(type_, order, key)] = (
            type_.value,
            order,
            T0 + timedelta(minutes=opens),
        )

    def bad(source: str, key: bytes | None, value: bytes, reason: str) -> None:
        feed.records.append((topic(source), key, value))
        feed.deadletters[reason] = feed.deadletters.get(reason, 0) + 1

    for i in range(orders):
        so, cs, wm = f"SO{i:06d}", f"CS-{i}", f"WMS-{i}"
        m = i * 0.5
        create = _event("erp", so, f"e{i}-1", "CREATED", m, order=_order(i))
        send(create, expect=so)
        # CRM sees the order before it knows the ERP number: held until the link arrives.
        send(_event("crm", cs, f"c{i}-1", "新建", m + 0.2), expect=so)
        send(_event("erp", so, f"e{i}-2", "已审核", m + 1), expect=so)
        send(_event("crm", cs, f"c{i}-2", "CONFIRMED", m + 1.5, erp_order_id=so), expect=so)
        send(_event("wms", wm, f"w{i}-1", "已接单", m + 3, erp_order_id=so), expect=so)
        # Later CRM events rely on the crosswalk. From here on the CRM shows the order in
        # fulfilment and the ERP still open: a status_conflict 30 min on, dated from m + 4.
        send(_event("crm", cs, f"c{i}-3", "处理中", m + 4), expect=so)
        ghost(AnomalyType.STATUS_CONFLICT, so, T0 + timedelta(minutes=m + 4), m + 34)
        if i % 7 == 0:  # exact re-send of an ERP event (publishing is at-least-once)
            send(create, expect=so)
            feed.resends += 1
        if i % 50 == 0:  # a CRM ticket with no ERP counterpart, ever: an orphan at 30 min
            send(_event("crm", f"CS-ORPHAN-{i}", f"o{i}", "新建", m), expect=None)
            feed.held_forever += 1
            ghost(AnomalyType.ORPHAN_ORDER, f"CS-ORPHAN-{i}", None, m + 30)
        if i % 40 == 1:
            bad("crm", cs.encode(), b'{"event_id": "broken", ', "invalid_json")
        if i % 40 == 2:
            bad("crm", b"x", b"[1, 2, 3]", "schema")
        if i % 40 == 3:
            missing = _event("wms", wm, f"w{i}-bad", "PICKING", m + 5)
            del missing["occurred_at"]
            bad("wms", wm.encode(), orjson.dumps(missing), "schema")
        if i % 40 == 4:
            naive = _event("crm", cs, f"c{i}-naive", "CLOSED", m + 6)
            naive["occurred_at"] = "2026-03-02T09:00:00"  # no offset
            bad("crm", cs.encode(), orjson.dumps(naive), "schema")
        if i % 40 == 5:
            stray = _event("logistics", f"SF{i}", f"l{i}", "IN_TRANSIT", m + 7, erp_order_id=so)
            bad("wms", b"SF", orjson.dumps(stray), "wrong_topic")
        if i % 40 == 6:
            odd = _event("wms", wm, f"w{i}-odd", "TELEPORTED", m + 8, erp_order_id=so)
            bad("wms", wm.encode(), orjson.dumps(odd), "unknown_status")
        if i % 40 == 7:  # waits for details that never come, 30 min of event time, in vain
            bare = _event("erp", f"SO-LEGACY-{i}", f"e{i}-legacy", "SHIPPED", m - 40)
            bad("erp", bare["order_ref"].encode(), orjson.dumps(bare), "missing_order")
        if i % 40 == 8:
            bad("erp", None, "订单".encode("gbk"), "invalid_json")
        if i % 40 == 9:  # other timestamp forms the schema takes: epoch seconds, a lowercase z
            epoch = _event("wms", wm, f"w{i}-epoch", "PICKING", m + 5, erp_order_id=so)
            epoch["occurred_at"] = (T0 + timedelta(minutes=m + 5)).timestamp()
            send(epoch, expect=so)
            zulu = _event("crm", cs, f"c{i}-zulu", "备货中", m + 6)  # still fulfilling
            zulu["occurred_at"] = (
                (T0 + timedelta(minutes=m + 6)).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fz")
            )
            send(zulu, expect=so)
    return feed
