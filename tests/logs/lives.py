"""One order's life as the ERP, the CRM, the WMS and the carrier publish it, faults planted;
then the whole log in publication order."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, replace
from typing import Any

from tests.logs.knobs import (
    CARRIERS,
    HOUR,
    MINUTE,
    SECOND,
    START,
    GroundTruth,
    Knobs,
    Lag,
    iso,
    us,
)

# Native labels each system uses for a canonical stage (all in schemas/status_maps.yaml).
_LABELS: dict[str, dict[str, tuple[str, ...]]] = {
    "erp": {
        "placed": ("CREATED", "已下单"),
        "confirmed": ("CONFIRMED", "已审核"),
        "allocated": ("ALLOCATED", "库存已锁定"),
        "allocation_failed": ("STOCK_SHORTAGE", "库存不足"),
        "picking": ("PICKING",),
        "shipped": ("SHIPPED", "已发货"),
        "delivered": ("DELIVERED", "已签收"),
        "cancelled": ("CANCELLED", "已取消"),
    },
    "crm": {
        "placed": ("NEW", "新建"),
        "confirmed": ("CONFIRMED", "已确认"),
        "allocated": ("PROCESSING", "备货中"),
        "picking": ("PICKING",),
        "shipped": ("SHIPPED", "已发货"),
        "delivered": ("DELIVERED", "已签收"),
        "cancelled": ("CANCELLED", "已取消"),
    },
    "wms": {
        "allocated": ("RECEIVED", "已分配"),
        "allocation_failed": ("OUT_OF_STOCK", "缺货"),
        "picking": ("PICKED", "PACKED", "已拣货"),
        "shipped": ("SHIPPED", "已出库"),
        "cancelled": ("CANCELLED",),
    },
    "logistics": {
        "shipped": ("PICKED_UP", "已揽收"),
        "in_transit": ("IN_TRANSIT", "ARRIVED_AT_HUB", "DEPARTED_HUB", "运输中"),
        "delivered": ("DELIVERED", "已签收"),
    },
}


@dataclass
class _Order:
    index: int
    order_id: str
    customer: str
    skus: list[str]
    channel: str
    placed_us: int
    vip: bool
    rush: bool
    entered_late_us: int = 0  # keyed in after placement (placed_at earlier than the event)


@dataclass
class _Draft:
    """An event before publication: its time, the time it is published at, its body."""

    at: int
    publish: int
    body: dict[str, Any]


class Builder:
    """Builds one log from its knobs and seed."""

    def __init__(self, knobs: Knobs, seed: int) -> None:
        self.k = knobs
        self.rng = random.Random(seed)
        self.truth = GroundTruth()
        self.drafts: list[_Draft] = []
        self.ids: Counter[str] = Counter()
        self.fingerprints: dict[tuple[str, frozenset[str]], list[int]] = {}

    # --- small helpers -------------------------------------------------------------------

    def _eid(self, source: str) -> str:
        self.ids[source] += 1
        return f"{source[0].upper()}{self.ids[source]:07d}"

    def _label(self, source: str, stage: str) -> str:
        return self.rng.choice(_LABELS[source][stage])

    def _emit(self, source: str, ref: str, stage: str, at: int, **extra: Any) -> dict[str, Any]:
        body: dict[str, Any] = {
            "event_id": self._eid(source),
            "source": source,
            "order_ref": ref,
            "status": self._label(source, stage),
            "occurred_at": iso(at),
            **{k: v for k, v in extra.items() if v is not None},
        }
        self.drafts.append(_Draft(at, at, body))
        return body

    def _lag(self, lag: Lag) -> int:
        return max(1 * SECOND, int(lag.draw(self.rng) * SECOND))

    def _u(self, lo_s: float, hi_s: float) -> int:
        return int(self.rng.uniform(lo_s, hi_s) * SECOND)

    def _roll(self, p: float) -> bool:
        return self.rng.random() < p

    # --- orders --------------------------------------------------------------------------

    def _skus(self) -> list[str]:
        # The first 8 characters name the part (what the duplicate rule compares); the rest
        # is a variant suffix that a re-keyed order may spell differently.
        n = self.rng.choice([1, 1, 2, 3])
        parts = {f"{self.rng.choice('ABCDEFGH')}{self.rng.randrange(10**7):07d}" for _ in range(n)}
        return [f"{p}-{self.rng.choice(['BK', 'SV', 'X1'])}" for p in sorted(parts)]

    def _fingerprint(self, order: _Order) -> tuple[str, frozenset[str]]:
        return order.customer, frozenset(s[:8] for s in order.skus)

    def _register(self, order: _Order) -> None:
        self.fingerprints.setdefault(self._fingerprint(order), []).append(order.placed_us)

    def _clashes(self, order: _Order) -> bool:
        # An unplanned look-alike within 20 min would be a duplicate nobody labelled.
        placed = self.fingerprints.get(self._fingerprint(order), [])
        return any(abs(p - order.placed_us) <= 20 * MINUTE for p in placed)

    def _new_order(self, index: int, placed_us: int, customers: list[str]) -> _Order:
        channel = self.rng.choice(self.k.channels)
        while True:
            order = _Order(
                index=index,
                order_id=f"SO{index:06d}",
                customer=self.rng.choice(customers),
                skus=self._skus(),
                channel=channel,
                placed_us=placed_us,
                vip=self._roll(0.1),
                rush=self._roll(0.1),
            )
            if not self._clashes(order):
                break
        if channel == "excel":
            order.entered_late_us = self._u(60, 40 * 60)
        self._register(order)
        return order

    def _details(self, order: _Order) -> dict[str, Any]:
        priced = [(sku, self.rng.randint(1, 4), self.rng.randint(20, 900)) for sku in order.skus]
        lines = [
            {"sku": sku, "qty": qty, "unit_price": f"{price}.00"} for sku, qty, price in priced
        ]
        amount = sum(qty * price for _, qty, price in priced)
        details: dict[str, Any] = {
            "customer_id": order.customer,
            "channel": order.channel,
            "lines": lines,
            "amount": f"{amount}.00",
            "currency": "CNY",
            "customer_phone": f"+86 139{order.index:08d}",
            "ship_to": f"广东省佛山市南海区桂城街道{order.index % 97}号",
            "vip": order.vip,
            "priority": "rush" if order.rush else "normal",
        }
        if order.entered_late_us:
            details["placed_at"] = iso(order.placed_us)
        return details

    # --- one order's life ----------------------------------------------------------------

    def _life(self, order: _Order, faults: set[str], fault_system: str) -> None:
        rng = self.rng
        oid = order.order_id
        created = order.placed_us + order.entered_late_us
        erp: list[tuple[int, str, dict[str, Any]]] = [
            (created, "placed", {"order": self._details(order)})
        ]
        wms: list[tuple[int, str]] = []
        carrier: list[tuple[int, str]] = []
        confirmed = created + self._u(30, 8 * 60)
        erp.append((confirmed, "confirmed", {}))
        if "cancel" in faults:
            self.truth.cancelled.add(oid)
        if "cancel" in faults and rng.random() < 0.5:
            erp.append((confirmed + self._u(5 * 60, 60 * 60), "cancelled", {}))
            self._render(order, erp, wms, carrier, faults, fault_system)
            return

        attempt = confirmed + self._u(5 * 60, 45 * 60)
        if "reservation" in faults:
            self.truth.reservation_failures.add(oid)
            if rng.random() < 0.5:
                erp.append((attempt, "allocation_failed", {"reason": "stock shortage"}))
            else:
                wms.append((attempt + self._lag(self.k.wms_lag), "allocation_failed"))
            attempt += self._u(10 * 60, 2 * 3600)  # the retry
        erp.append((attempt, "allocated", {}))
        received = attempt + self._lag(self.k.wms_lag)
        wms.append((received, "allocated"))
        picked = received + self._u(10 * 60, 90 * 60)
        wms.append((picked, "picking"))
        if rng.random() < 0.5:
            erp.append((picked + self._lag(self.k.wms_lag), "picking", {}))
        shipped = picked + self._u(20 * 60, 4 * 3600)

        if "cancel" in faults:
            # Cancelled on the floor, before it left: the WMS stops the pick too.
            cancel = picked + self._u(5 * 60, 60 * 60)
            erp.append((cancel, "cancelled", {}))
            wms.append((cancel + self._lag(self.k.wms_lag), "cancelled"))
        elif "contradiction" in faults:
            # The WMS ships; the ERP then cancels (a customer's late cancel) and never ships.
            wms.append((shipped, "shipped"))
            erp.append((shipped + self._u(10 * 60, 90 * 60), "cancelled", {}))
            self.truth.contradictions.add(oid)
            if rng.random() < 0.5:
                carrier.append((shipped + self._lag(self.k.carrier_lag), "shipped"))
        else:
            wms.append((shipped, "shipped"))
            erp_shipped = shipped + self._lag(self.k.wms_lag)
            erp.append((erp_shipped, "shipped", {}))
            pickup = erp_shipped + self._lag(self.k.carrier_lag)
            carrier.append((pickup, "shipped"))
            if "stall" in faults:
                # The carrier goes quiet after a scan or two; the ERP stays at shipped.
                if rng.random() < 0.5:
                    carrier.append((pickup + self._u(3600, 8 * 3600), "in_transit"))
                self.truth.stalls.add(oid)
            else:
                scan = pickup
                for _ in range(rng.randint(1, 4)):
                    scan += self._u(2 * 3600, 9 * 3600)
                    carrier.append((scan, "in_transit"))
                delivered = scan + self._u(3600, 10 * 3600)
                carrier.append((delivered, "delivered"))
                erp.append((delivered + self._lag(self.k.crm_lag), "delivered", {}))
        self._render(order, erp, wms, carrier, faults, fault_system)

    def _render(
        self,
        order: _Order,
        erp: list[tuple[int, str, dict[str, Any]]],
        wms: list[tuple[int, str]],
        carrier: list[tuple[int, str]],
        faults: set[str],
        fault_system: str,
    ) -> None:
        oid = order.order_id
        erp.sort(key=lambda x: x[0])
        for at, stage, extra in erp:
            self._emit("erp", oid, stage, at, **extra)
        if "missing" in faults:
            self.truth.missing.add((oid, fault_system))
        stuck = fault_system if "stuck" in faults and "missing" not in faults else None
        if stuck is not None:
            self.truth.stuck.add((oid, stuck))

        if not ("missing" in faults and fault_system == "crm"):
            # Stuck: the CRM's feed of this order stops before the ERP's shipment.
            stop = None
            if stuck == "crm":
                stop = next((at for at, stage, _ in erp if stage in ("shipped", "cancelled")), None)
            self._render_crm(order, erp, stop, "late_link" in faults)
        if not ("missing" in faults and fault_system == "wms"):
            ref = f"WMS{order.index:06d}"
            for at, stage in sorted(wms):
                if stuck == "wms" and stage in ("shipped", "cancelled"):
                    continue  # stuck at picking
                self._emit("wms", ref, stage, at, erp_order_id=oid)
        if carrier and not ("missing" in faults and fault_system == "logistics"):
            code = self.rng.choice(CARRIERS)
            tracking_no = f"{code}{order.index:010d}"
            for at, stage in sorted(carrier):
                if stuck == "logistics" and stage == "delivered":
                    continue  # stuck in transit while the ERP shows it delivered
                tracking = {
                    "carrier": code,
                    "tracking_no": tracking_no,
                    "location": self.rng.choice(["佛山", "广州", "长沙", "武汉"]),
                }
                self._emit("logistics", tracking_no, stage, at, erp_order_id=oid, tracking=tracking)

    def _render_crm(
        self,
        order: _Order,
        erp: list[tuple[int, str, dict[str, Any]]],
        stop: int | None,
        late_link: bool,
    ) -> None:
        ref = f"CS{order.index:06d}"
        last = 0
        link_at: int | None = None
        if late_link:
            # The CRM's first events carry only its own ticket number; the ERP id comes with
            # a later event, sometimes after the 30 min an orphan waits.
            link_at = erp[0][0] + self._u(5 * 60, 90 * 60)
        for at, stage, _ in erp:
            if stage == "allocation_failed" or (stop is not None and at > stop):
                continue
            t = max(at + self._lag(self.k.crm_lag), last + SECOND)
            last = t
            linked = link_at is None or t >= link_at
            self._emit("crm", ref, stage, t, erp_order_id=order.order_id if linked else None)
        if link_at is not None and last < link_at:
            # Nothing carried the id by then: a note on the ticket brings it.
            self._emit("crm", ref, "confirmed", link_at, erp_order_id=order.order_id)
            last = link_at
        if link_at is not None:
            self.truth.late_links[ref] = link_at

    def _orphan(self, index: int, at: int) -> None:
        kind = self.rng.choice(["crm_ghost_id", "wms_ghost_id", "crm_unlinked"])
        if kind == "crm_ghost_id":
            ghost = f"SO-X{index:06d}"
            ref = f"CSX{index:06d}"
            self._emit("crm", ref, "placed", at, erp_order_id=ghost)
            self._emit("crm", ref, "confirmed", at + self._u(60, 3600), erp_order_id=ghost)
            self.truth.orphans.add(ghost)
        elif kind == "wms_ghost_id":
            ghost = f"SO-X{index:06d}"
            ref = f"WMSX{index:06d}"
            self._emit("wms", ref, "allocated", at, erp_order_id=ghost)
            self._emit("wms", ref, "picking", at + self._u(600, 7200), erp_order_id=ghost)
            self.truth.orphans.add(ghost)
        else:
            ref = f"CS-ORPHAN-{index:06d}"
            self._emit("crm", ref, "placed", at)
            if self._roll(0.5):
                self._emit("crm", ref, "confirmed", at + self._u(60, 3600))
            self.truth.orphans.add(ref)

    def _duplicate(self, original: _Order, index: int, near: bool) -> _Order:
        gap = (15 * MINUTE + self._u(1, 120)) if near else self._u(0, 15 * 60)
        placed = original.placed_us + (gap if self._roll(0.5) else -gap)
        twin = replace(
            original,
            index=index,
            order_id=f"SO{index:06d}",
            placed_us=placed,
            # Same parts (first 8 characters), another variant suffix or channel now and then.
            skus=[s[:8] + self.rng.choice(["-BK", "-SV", ""]) for s in original.skus],
            channel=self.rng.choice(self.k.channels),
            entered_late_us=0,
        )
        if twin.channel == "excel":
            twin.entered_late_us = self._u(60, 40 * 60)
        pair = (min(original.order_id, twin.order_id), max(original.order_id, twin.order_id))
        (self.truth.near_duplicates if near else self.truth.duplicates).add(pair)
        self._register(twin)
        return twin

    def _bad(self, index: int, at: int) -> None:
        kind = self.rng.choice(["unknown_status", "missing_order", "schema"])
        if kind == "unknown_status":
            body = self._emit(
                "wms", f"WMS{index:06d}", "picking", at, erp_order_id=f"SO{index:06d}"
            )
            body["status"] = "TELEPORTED"
        elif kind == "missing_order":
            self._emit("erp", f"SO-LEGACY-{index:06d}", "shipped", at)
        else:
            body = self._emit("crm", f"CS{index:06d}", "confirmed", at)
            del body["occurred_at"]

    # --- the whole log -------------------------------------------------------------------

    def build(self) -> list[dict[str, Any]]:
        k, rng = self.k, self.rng
        start = us(START)
        span = int(k.hours * HOUR)
        customers = [f"C{n:05d}" for n in range(max(5, k.orders // 3))]
        peak_at = start + rng.randrange(max(1, span - HOUR))
        faults_of = [
            ("missing", k.missing),
            ("stuck", k.stuck),
            ("contradiction", k.contradictions),
            ("stall", k.stalls),
            ("late_link", k.late_links),
            ("reservation", k.reservation_failures),
            ("cancel", k.cancellations),
        ]
        index = 0
        made = 0
        while made < k.orders:
            index += 1
            if rng.random() < k.peak:
                placed = peak_at + rng.randrange(HOUR)
            else:
                placed = start + rng.randrange(span)
            if rng.random() < k.orphans:
                self._orphan(index, placed)
                made += 1
                continue
            if rng.random() < k.bad_inputs:
                self._bad(index, placed)
            order = self._new_order(index, placed, customers)
            orders = [order]
            if rng.random() < k.duplicates:
                index += 1
                orders.append(self._duplicate(order, index, near=rng.random() < 0.25))
            for one in orders:
                faults = {name for name, p in faults_of if rng.random() < p}
                if "contradiction" in faults:
                    faults -= {"cancel", "stall"}
                system = rng.choice(["crm", "wms", "logistics"])
                self._life(one, faults, system)
                made += 1
        return self._publish(start + span + int(k.tail.total_seconds() * SECOND), index)

    def _publish(self, feed_end: int, last_index: int) -> list[dict[str, Any]]:
        k, rng = self.k, self.rng
        # The feed is read up to `feed_end`: what happens later is not in the log.
        self.drafts = [d for d in self.drafts if d.at <= feed_end]
        end = max(d.at for d in self.drafts if "occurred_at" in d.body)
        if k.quiet_source is not None:
            cutoff = end - int(k.quiet_for.total_seconds() * SECOND)
            self.drafts = [
                d for d in self.drafts if not (d.body["source"] == k.quiet_source and d.at > cutoff)
            ]
            self.truth.quiet_source = (k.quiet_source, cutoff)
        # Shuffle: an order's events published up to `lateness` after their own time, so
        # never further behind the newest event published before them than that.
        lateness = max(1, int(k.lateness.total_seconds() * SECOND))
        shuffled = {f"{i:06d}" for i in range(1, last_index + 1) if rng.random() < k.shuffled}
        for d in self.drafts:
            digits = "".join(c for c in d.body["order_ref"] if c.isdigit())[-6:]
            if digits in shuffled:
                d.publish = d.at + rng.randrange(lateness)
                self.truth.shuffled.add(f"SO{digits}")
        out = sorted(self.drafts, key=lambda d: (d.publish, d.body["source"], d.body["event_id"]))
        published = [d.body for d in out]
        # Re-sends: an exact copy a few records later (publishing is at-least-once).
        resends = [i for i in range(len(published)) if rng.random() < k.resends]
        self.truth.resends = sum(1 for i in resends if _planted_rejection(published[i]) is None)
        for i in reversed(resends):
            published.insert(min(len(published), i + 1 + rng.randrange(50)), dict(published[i]))
        for event in published:
            reason = _planted_rejection(event)
            if reason is not None:
                self.truth.dead_letters[reason] += 1
        return published


def _planted_rejection(event: dict[str, Any]) -> str | None:
    # The bad inputs `_bad` plants, by what gives them away.
    if "occurred_at" not in event:
        return "schema"
    if event["status"] == "TELEPORTED":
        return "unknown_status"
    if event["order_ref"].startswith("SO-LEGACY"):
        return "missing_order"
    return None
