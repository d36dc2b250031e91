"""Raw input logs for the oracle and the schedule tests: change events (contract §2) as the
four upstream systems would publish them, with faults planted and labelled.

New work, apart from `concord/scenario.py`: a small life model of an order (ERP, then the
CRM, the WMS and the carrier each following it with its own lag distribution) and knobs for
every fault issue 16 names. Everything is drawn from one `random.Random(seed)`, so a seed
and the knobs give the same log byte for byte.

- `generate(seed, orders=None)` draws the knobs from the seed too (`Knobs.draw`);
  `generate_with(knobs, seed)` takes them as given.
- `FeedLog.events` are dicts ready to JSON-encode, in publication order (the topic is each
  event's `source`); `FeedLog.ground_truth` says what was planted (for demo-style scoring).
- `feed_logs()` is a hypothesis strategy over seeds and knobs, for property tests.

Publication order is event time, except where planted: the events of a shuffled order are
published up to `lateness` after their time (so never further behind the newest event
published before them than the allowed lateness), a re-send comes again a little later, and
a quiet source publishes nothing in its last day.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from hypothesis import strategies as st

CST = timezone(timedelta(hours=8))
START = datetime(2026, 3, 2, 8, 0, tzinfo=CST)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_S = 1_000_000  # µs per second
_MIN = 60 * _S
_H = 60 * _MIN

CHANNELS = ("website", "wechat", "douyin", "pos", "excel", "distributor_api", "jd_pop")
SOURCES = ("erp", "crm", "wms", "logistics")
CARRIERS = ("SF", "ZTO", "JD")

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


@dataclass(frozen=True)
class Lag:
    """A delay distribution, in seconds: lognormal(median, spread), exponential(mean) or
    uniform(low, high)."""

    kind: str
    a: float
    b: float = 0.0

    def draw(self, rng: random.Random) -> float:
        """One delay, seconds (never negative)."""
        if self.kind == "lognormal":
            return rng.lognormvariate(math.log(self.a), self.b)
        if self.kind == "exponential":
            return rng.expovariate(1 / self.a)
        return rng.uniform(self.a, self.b)


@dataclass(frozen=True)
class Knobs:
    """What a log is made of. Fractions are of orders unless said otherwise."""

    orders: int = 200
    hours: float = 14.0  # orders are placed over this span from START
    channels: tuple[str, ...] = CHANNELS
    crm_lag: Lag = Lag("lognormal", 40, 1.0)
    wms_lag: Lag = Lag("exponential", 300)
    carrier_lag: Lag = Lag("uniform", 1800, 4 * 3600)  # pickup after the ERP ships
    missing: float = 0.03  # one system never reports the order
    stuck: float = 0.03  # one system stops at an older phase
    contradictions: float = 0.01  # the ERP cancels an order the WMS shipped
    stalls: float = 0.02  # the carrier goes quiet after its pickup; the ERP stays shipped
    orphans: float = 0.02  # CRM/WMS orders with no ERP counterpart
    late_links: float = 0.03  # the CRM sees the order before it knows the ERP id
    duplicates: float = 0.03  # a second order, same customer and parts, within 15 min
    reservation_failures: float = 0.05  # ERP or WMS fails a reservation, then retries
    cancellations: float = 0.03
    tail: timedelta = timedelta(hours=50)  # the feed is cut this long after the last placement
    resends: float = 0.01  # of events: published again, same source and event_id
    shuffled: float = 0.1  # orders whose events are published out of order (within lateness)
    lateness: timedelta = timedelta(minutes=2)
    quiet_source: str | None = None  # publishes nothing in the log's last day
    quiet_for: timedelta = timedelta(days=1)
    bad_inputs: float = 0.005  # of orders: an extra event the contract rejects
    peak: float = 0.0  # share of orders placed in one busy hour (trips the breaker at scale)

    @classmethod
    def draw(cls, rng: random.Random, orders: int | None = None) -> Knobs:
        """Knobs varied by `rng`: lags, fault rates, channels, a quiet source now and then."""
        channels = tuple(c for c in CHANNELS if rng.random() < 0.7) or ("website",)
        return cls(
            orders=orders if orders is not None else rng.randint(10, 400),
            hours=rng.uniform(2, 16),
            channels=channels,
            crm_lag=rng.choice(
                [
                    Lag("lognormal", rng.uniform(5, 120), rng.uniform(0.3, 1.5)),
                    Lag("uniform", 1, 600),
                ]
            ),
            wms_lag=rng.choice(
                [Lag("exponential", rng.uniform(30, 1800)), Lag("lognormal", 600, 1.2)]
            ),
            carrier_lag=Lag("uniform", rng.uniform(600, 3600), rng.uniform(2, 10) * 3600),
            missing=rng.uniform(0, 0.08),
            stuck=rng.uniform(0, 0.08),
            contradictions=rng.uniform(0, 0.03),
            stalls=rng.uniform(0, 0.05),
            orphans=rng.uniform(0, 0.05),
            late_links=rng.uniform(0, 0.08),
            duplicates=rng.uniform(0, 0.06),
            reservation_failures=rng.uniform(0, 0.12),
            cancellations=rng.uniform(0, 0.06),
            tail=timedelta(hours=rng.uniform(6, 80)),
            resends=rng.choice([0.0, 0.01, 0.03]),
            shuffled=rng.choice([0.0, 0.1, 0.5]),
            quiet_source=rng.choice([None, None, None, "wms", "crm", "logistics"]),
            bad_inputs=rng.uniform(0, 0.02),
        )


@dataclass
class GroundTruth:
    """What was planted. Order ids unless said otherwise."""

    missing: set[tuple[str, str]] = field(default_factory=set)  # (order, system)
    stuck: set[tuple[str, str]] = field(default_factory=set)  # (order, system)
    contradictions: set[str] = field(default_factory=set)
    stalls: set[str] = field(default_factory=set)
    orphans: set[str] = field(default_factory=set)  # the id each is named by
    late_links: dict[str, int] = field(default_factory=dict)  # CRM ref -> link time µs
    duplicates: set[tuple[str, str]] = field(default_factory=set)  # sorted pairs
    near_duplicates: set[tuple[str, str]] = field(default_factory=set)  # just outside 15 min
    reservation_failures: set[str] = field(default_factory=set)
    cancelled: set[str] = field(default_factory=set)
    shuffled: set[str] = field(default_factory=set)
    resends: int = 0
    quiet_source: tuple[str, int] | None = None  # (source, µs from which it published nothing)
    dead_letters: Counter[str] = field(default_factory=Counter)  # reason -> count


@dataclass
class FeedLog:
    """One input log: events in publication order and what was planted."""

    seed: int
    knobs: Knobs
    events: list[dict[str, Any]]
    ground_truth: GroundTruth

    @property
    def end_us(self) -> int:
        """The newest valid event time in the log (µs since the epoch)."""
        return max(_parse_us(e["occurred_at"]) for e in self.events if _valid_time(e))


def us(moment: datetime) -> int:
    """µs since the epoch of an aware datetime."""
    return (moment - _EPOCH) // timedelta(microseconds=1)


def _iso(t_us: int) -> str:
    return (
        (_EPOCH + timedelta(microseconds=t_us)).astimezone(CST).isoformat(timespec="milliseconds")
    )


def _parse_us(text: str) -> int:
    return us(datetime.fromisoformat(text))


def _valid_time(event: dict[str, Any]) -> bool:
    value = event.get("occurred_at")
    if not isinstance(value, str):
        return False
    try:
        return datetime.fromisoformat(value).tzinfo is not None
    except ValueError:
        return False


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


class _Builder:
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
            "occurred_at": _iso(at),
            **{k: v for k, v in extra.items() if v is not None},
        }
        self.drafts.append(_Draft(at, at, body))
        return body

    def _lag(self, lag: Lag) -> int:
        return max(1 * _S, int(lag.draw(self.rng) * _S))

    def _u(self, lo_s: float, hi_s: float) -> int:
        return int(self.rng.uniform(lo_s, hi_s) * _S)

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
        return any(abs(p - order.placed_us) <= 20 * _MIN for p in placed)

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
            details["placed_at"] = _iso(order.placed_us)
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
            t = max(at + self._lag(self.k.crm_lag), last + _S)
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
        gap = (15 * _MIN + self._u(1, 120)) if near else self._u(0, 15 * 60)
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
        span = int(k.hours * _H)
        customers = [f"C{n:05d}" for n in range(max(5, k.orders // 3))]
        peak_at = start + rng.randrange(max(1, span - _H))
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
                placed = peak_at + rng.randrange(_H)
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
        return self._publish(start + span + int(k.tail.total_seconds() * _S), index)

    def _publish(self, feed_end: int, last_index: int) -> list[dict[str, Any]]:
        k, rng = self.k, self.rng
        # The feed is read up to `feed_end`: what happens later is not in the log.
        self.drafts = [d for d in self.drafts if d.at <= feed_end]
        end = max(d.at for d in self.drafts if "occurred_at" in d.body)
        if k.quiet_source is not None:
            cutoff = end - int(k.quiet_for.total_seconds() * _S)
            self.drafts = [
                d for d in self.drafts if not (d.body["source"] == k.quiet_source and d.at > cutoff)
            ]
            self.truth.quiet_source = (k.quiet_source, cutoff)
        # Shuffle: an order's events published up to `lateness` after their own time, so
        # never further behind the newest event published before them than that.
        lateness = max(1, int(k.lateness.total_seconds() * _S))
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


def generate_with(knobs: Knobs, seed: int) -> FeedLog:
    """The log that `knobs` and `seed` make."""
    builder = _Builder(knobs, seed)
    events = builder.build()
    return FeedLog(seed=seed, knobs=knobs, events=events, ground_truth=builder.truth)


def generate(seed: int, orders: int | None = None) -> FeedLog:
    """A log with knobs drawn from `seed` too (`orders` fixes their number)."""
    rng = random.Random(seed)
    knobs = Knobs.draw(rng, orders)
    return generate_with(knobs, rng.randrange(2**32))


# --- logs written by hand ----------------------------------------------------------------

T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
DETAILS = {
    "customer_id": "C001",
    "channel": "website",
    "lines": [{"sku": "A1234567-BK", "qty": 1, "unit_price": "10.00"}],
    "amount": "10.00",
    "currency": "CNY",
}
TRACKING = {"carrier": "SF", "tracking_no": "SF0001"}


def at(minutes: float = 0, hours: float = 0) -> int:
    """µs since the epoch of T0 + the offset."""
    return us(T0 + timedelta(minutes=minutes, hours=hours))


class HandLog:
    """A log written by hand for a test: events in publication order, ids minted per source;
    an ERP reference's first event gets details (its own customer) unless given."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def add(self, source: str, ref: str, status: str, when: int, **extra: Any) -> dict[str, Any]:
        event = {
            "event_id": f"{source}-{len(self.events)}",
            "source": source,
            "order_ref": ref,
            "status": status,
            "occurred_at": (_EPOCH + timedelta(microseconds=when)).isoformat(),
            **extra,
        }
        self.events.append(event)
        return event

    def erp(self, ref: str, status: str, when: int, **extra: Any) -> dict[str, Any]:
        if not any(e["source"] == "erp" and e["order_ref"] == ref for e in self.events):
            extra.setdefault("order", dict(DETAILS, customer_id=f"C-{ref}"))
        return self.add("erp", ref, status, when, **extra)

    def crm(self, order: str, status: str, when: int) -> dict[str, Any]:
        return self.add("crm", f"CS-{order}", status, when, erp_order_id=order)


def feed_logs(
    min_orders: int = 10, max_orders: int = 60, **fixed: Any
) -> st.SearchStrategy[FeedLog]:
    """Hypothesis: a seed and knobs (fault rates shrink towards none); `fixed` pins knobs."""
    rate = st.floats(0, 0.2)
    drawn: dict[str, st.SearchStrategy[Any]] = {
        "orders": st.integers(min_orders, max_orders),
        "hours": st.floats(1, 16),
        "channels": st.sampled_from([CHANNELS, ("website", "jd_pop"), ("excel", "pos", "wechat")]),
        "crm_lag": st.builds(Lag, st.just("lognormal"), st.floats(2, 600), st.floats(0.1, 2)),
        "wms_lag": st.builds(Lag, st.just("exponential"), st.floats(10, 3600)),
        "carrier_lag": st.builds(
            Lag, st.just("uniform"), st.floats(60, 3600), st.floats(3600, 36000)
        ),
        "missing": rate,
        "stuck": rate,
        "contradictions": rate,
        "stalls": rate,
        "orphans": rate,
        "late_links": rate,
        "duplicates": rate,
        "reservation_failures": rate,
        "cancellations": rate,
        "tail": st.sampled_from([timedelta(hours=h) for h in (4, 30, 100)]),
        "resends": st.sampled_from([0.0, 0.01, 0.05]),
        "shuffled": st.sampled_from([0.0, 0.2, 1.0]),
        "quiet_source": st.sampled_from([None, "crm", "wms", "logistics"]),
        "bad_inputs": st.floats(0, 0.05),
    }
    drawn.update({name: st.just(value) for name, value in fixed.items()})
    return st.builds(generate_with, st.builds(Knobs, **drawn), st.integers(0, 2**32 - 1))
