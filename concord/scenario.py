"""Deterministic order-flow scenarios with ground-truth labels.

One scenario is a period (default: 2026-03-02, one day, Asia/Shanghai) of an auto-parts B2B
distributor: ERP orders on a daily curve across six channels, each order's life as the ERP,
the CRM, the WMS and carrier tracking report it, and planted trouble whose labels are exact
ground truth at the end of the period under the contract's default thresholds: true
duplicates, look-alikes that are not duplicates, a promotion hour that trips breaker stages 1
and 2, every ghost-order type, and optionally invalid inputs.

Things a reader of the labels should know:

* Carry-over. The 24-hour and 72-hour tracking rules cannot fire inside one day for orders
  placed that day, so the scenario also carries orders placed up to four days before the start
  (about a third of `orders`, plus the planted stalls). Their earlier events are part of the
  scenario and are published first.
* Ordinary orders are kept clear of every ghost definition with a margin, measured in event
  time and at the watermark as publishing delays leave it: the first CRM report comes within
  10 minutes of the ERP order, the WMS within an hour of allocation, carrier pickup within
  14 hours of dispatch and tracking never pauses 20 hours; systems follow each other within
  about 25 minutes. Planted ghosts meet their definition at least 45 minutes before the end.
* Ambiguous at the edges, hence never planted nor produced: (1) an order whose carrier never
  reports at all meets both `missing_in_system` (logistics, 24 h) and `stalled_tracking`,
  so every planted stall has at least one tracking event and every missing system is the CRM
  or the WMS; (2) the WMS has no status past `shipped`, so it is taken to be out of scope from
  `delivered` on, and in scope for `cancelled` only if it knew the order; (3) conditions that
  would ripen after the end of the period (a fresh order without a CRM report yet, a parcel
  shipped two hours before the end) are not ghosts and are not labelled.
* Orphans are labelled by their own `order_ref`; some carry an `erp_order_id` that the ERP
  never issued (a typo or a lost order), others carry none and stay unlinked.
* Sources stamp time their own way, as real ones do: ERP and WMS in the start's offset to the
  second, the CRM with milliseconds, carriers in UTC ("Z"). Customer phones come in the
  formats each channel uses (+86 138..., +86-138-..., +86138...). Labels mix Chinese and
  English.
* Only `random.Random(seed)` drives the choices and nothing iterates a set, so the same
  configuration gives byte-identical output in any process.
"""

from __future__ import annotations

import bisect
import json
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson

SHANGHAI = timezone(timedelta(hours=8))
PLANT_TIMEZONE = "Asia/Shanghai"  # the same, by name: where the plant's calendar day starts

# Times inside the generator are integer milliseconds relative to the scenario start.
SECOND = 1000
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE
DAY = 24 * HOUR

# The contract's default thresholds (§5, §7) the labels are judged under.
DUPLICATE_WINDOW = 15 * MINUTE
CRM_MISSING_AFTER = 15 * MINUTE
WMS_MISSING_AFTER = 2 * HOUR
LOGISTICS_MISSING_AFTER = 24 * HOUR
ORPHAN_AFTER = 30 * MINUTE
CONFLICT_AFTER = 30 * MINUTE
STALL_AFTER = 24 * HOUR
STALL_CRITICAL_AFTER = 72 * HOUR
BREAKER_ORDERS = 2200
BREAKER_FAILURE_RATE = 0.08

# The promotion needs its trailing-hour count above 2200 for about half an hour, so that at
# least two 10-minute breaker evaluations in a row see it wherever the ticks fall.
PROMO_ORDERS = 2900
PROMO_FAILURE_RATE = 0.22  # of the promotion's orders (the breaker counts orders, §7): > 8 %
BASE_FAILURE_RATE = 0.03

# Ordinary orders of one customer with one SKU set stay this far apart, so every same-
# fingerprint pair within the hour is a planted duplicate (< 15 min) or look-alike (25-60).
FINGERPRINT_CLEARANCE = 65 * MINUTE

GHOST_TYPES = ("missing_in_system", "orphan_order", "status_conflict", "stalled_tracking")
BAD_INPUT_KINDS = (
    "invalid_json",
    "schema",
    "wrong_topic",
    "unknown_status",
    "missing_order",
    "duplicate",
)


@dataclass(frozen=True)
class ScenarioConfig:
    """What to generate. The same config always gives the same scenario, byte for byte."""

    seed: int = 7
    start: datetime = datetime(2026, 3, 2, tzinfo=SHANGHAI)
    hours: float = 24.0
    # ERP orders placed over the period on the daily curve, duplicates and look-alikes
    # included; the promotion burst and the planted ghost orders come on top.
    orders: int = 1800
    channels: tuple[str, ...] = ("website", "wechat", "douyin", "distributor_api", "pos", "excel")
    duplicate_rate: float = 0.05
    lookalike_rate: float = 0.03
    promo_peak: bool = True
    ghosts: bool = True
    bad_inputs: int = 0
    out_of_order: float = 0.02

    def __post_init__(self) -> None:
        if self.start.utcoffset() is None:
            raise ValueError("start must carry a UTC offset")
        if not 1.0 <= self.hours <= 24.0 * 14:
            raise ValueError("hours must be between 1 and 336")
        if self.orders < 0 or self.bad_inputs < 0:
            raise ValueError("orders and bad_inputs cannot be negative")
        if len(self.channels) < 2 or len(set(self.channels)) != len(self.channels):
            raise ValueError("channels needs at least two distinct names")
        for name in ("duplicate_rate", "lookalike_rate", "out_of_order"):
            if not 0.0 <= getattr(self, name) <= 0.3:
                raise ValueError(f"{name} must be between 0 and 0.3")


@dataclass
class Labels:
    """Ground truth for a scenario, judged at its end under the contract's default thresholds."""

    duplicate_pairs: set[frozenset[str]] = field(default_factory=set)
    lookalike_pairs: set[frozenset[str]] = field(default_factory=set)
    ghosts: dict[str, set[str]] = field(default_factory=lambda: {t: set() for t in GHOST_TYPES})
    contradictions: set[str] = field(default_factory=set)
    promo_peak: tuple[datetime, datetime] | None = None
    bad_inputs: dict[str, int] = field(default_factory=lambda: dict.fromkeys(BAD_INPUT_KINDS, 0))
    silent_source: tuple[str, datetime, datetime] | None = None


@dataclass
class Scenario:
    """Change events in publish order, and what is true about them.

    Every dict in `events` is a valid change event that ingest accepts. A planted bad input
    is instead {"_raw": bytes, "_topic_source": source}: publish the bytes as they are on
    that source's topic.
    """

    events: list[dict[str, Any]]
    labels: Labels


# --- the business: catalogue, places, people ------------------------------------------------

# (SKU prefix, weight, unit price range in CNY, fitments). A SKU is "<prefix>-<fitment>"; the
# first 8 characters, the dedupe fingerprint's unit, are the part category.
_CATALOG: tuple[tuple[str, float, tuple[int, int], tuple[str, ...]], ...] = (
    (
        "BRK-PAD",
        14,
        (120, 380),
        (
            "TOY-CAMRY18",
            "HON-ACCORD18",
            "VW-LAVIDA15",
            "NIS-SYLPHY16",
            "BYD-QIN19",
            "BUI-EXCELLE",
            "GEE-EMGRAND",
            "HYU-ELANTRA",
        ),
    ),
    ("BRK-DSC", 6, (260, 650), ("TOY-CAMRY18F", "HON-CIVIC16F", "VW-SAGITAR19F", "NIS-TEANA19F")),
    (
        "FLT-OIL",
        16,
        (18, 48),
        ("HON-15400", "TOY-90915", "VW-03C115", "NIS-15208", "HYU-26300", "BUI-55594"),
    ),
    ("FLT-AIR", 10, (25, 85), ("TOY-17801", "HON-17220", "VW-04E129", "NIS-16546")),
    ("FLT-CAB", 8, (22, 70), ("TOY-87139", "HON-80292", "VW-5Q0819")),
    ("SPK-PLG", 7, (32, 95), ("NGK-ILKAR7B11", "DEN-SK20R11", "BOS-FR7DPP33")),
    ("OIL-5W30", 9, (180, 420), ("MOB-4L", "CAS-4L", "SHL-4L")),
    ("OIL-0W20", 5, (220, 460), ("MOB-4L", "TOY-4L")),
    ("BAT-12V", 4, (420, 1180), ("VAR-60AH", "CAM-70AH", "FEN-45AH")),
    ("WPR-BLD", 6, (28, 98), ("BOS-24", "BOS-26", "VAL-22")),
    ("SUS-SHK", 4, (320, 980), ("KYB-CAMRY18F", "KYB-CIVIC16F", "SAC-LAVIDA15R")),
    ("BLT-TIM", 3, (260, 780), ("GAT-EA211", "GAT-R18A", "CON-1ZR")),
    ("CLT-KIT", 2, (650, 1850), ("LUK-LAVIDA15", "VAL-COROLLA14")),
    ("LMP-HDL", 2, (380, 1600), ("TOY-CAMRY18L", "HON-CIVIC16R")),
    ("FLD-BRK", 4, (38, 90), ("BOS-DOT4-1L", "CAS-DOT4-1L")),
)
_HEAVY = ("BRK-DSC", "BAT-12V", "SUS-SHK", "CLT-KIT")

# (province, city, {district: [streets]}, roads, nearest warehouse, customer weight)
_REGIONS: tuple[tuple[str, str, dict[str, tuple[str, ...]], tuple[str, ...], int, float], ...] = (
    (
        "广东省",
        "佛山市",
        {
            "南海区": ("桂城街道", "大沥镇", "里水镇"),
            "顺德区": ("大良街道", "容桂街道", "乐从镇"),
            "禅城区": ("祖庙街道", "张槎街道"),
        },
        ("南海大道北", "桂澜中路", "佛山大道中", "季华五路", "广佛公路"),
        5,
        3.0,
    ),
    (
        "广东省",
        "广州市",
        {
            "白云区": ("三元里街道", "永平街道", "石井街道"),
            "番禺区": ("市桥街道", "大石街道"),
            "天河区": ("员村街道", "黄村街道"),
        },
        ("广园中路", "机场路", "兴南大道", "黄埔大道西"),
        5,
        3.0,
    ),
    (
        "浙江省",
        "杭州市",
        {
            "萧山区": ("北干街道", "新塘街道"),
            "余杭区": ("仁和街道", "良渚街道"),
            "拱墅区": ("祥符街道",),
        },
        ("市心北路", "金城路", "莫干山路", "通益路"),
        3,
        2.0,
    ),
    (
        "浙江省",
        "宁波市",
        {"鄞州区": ("首南街道", "下应街道"), "北仑区": ("新碶街道",)},
        ("天童南路", "泰康中路", "明州路"),
        3,
        1.2,
    ),
    (
        "江苏省",
        "苏州市",
        {"吴中区": ("长桥街道", "郭巷街道"), "相城区": ("元和街道",), "姑苏区": ("白洋湾街道",)},
        ("东吴北路", "宝带西路", "广济北路"),
        7,
        2.0,
    ),
    (
        "江苏省",
        "南京市",
        {"江宁区": ("秣陵街道", "东山街道"), "栖霞区": ("迈皋桥街道",)},
        ("双龙大道", "天元中路", "和燕路"),
        7,
        1.5,
    ),
    (
        "上海市",
        "",
        {"嘉定区": ("安亭镇", "南翔镇"), "闵行区": ("七宝镇", "莘庄镇"), "宝山区": ("大场镇",)},
        ("墨玉南路", "曹安公路", "沪太路", "七莘路"),
        1,
        2.0,
    ),
    (
        "安徽省",
        "合肥市",
        {"蜀山区": ("五里墩街道",), "包河区": ("骆岗街道",)},
        ("长江西路", "望江东路", "繁华大道"),
        1,
        1.0,
    ),
)
_WAREHOUSES = {
    1: ("上海嘉定仓", "上海青浦转运中心"),
    3: ("杭州萧山仓", "杭州萧山转运中心"),
    5: ("佛山南海仓", "佛山南海集散中心"),
    7: ("苏州吴中仓", "苏州吴中分拨中心"),
}
_CITY_HUBS = {
    "佛山市": "佛山南海集散中心",
    "广州市": "广州白云转运中心",
    "杭州市": "杭州萧山转运中心",
    "宁波市": "宁波鄞州分拨中心",
    "苏州市": "苏州吴中分拨中心",
    "南京市": "南京江宁转运中心",
    "上海市": "上海青浦转运中心",
    "合肥市": "合肥肥西转运中心",
}
_ZH_WAREHOUSES = (3, 5)  # the southern sites run a Chinese WMS build

_WORDS = (
    "顺达",
    "驰远",
    "恒通",
    "兴旺",
    "鑫源",
    "宏发",
    "众诚",
    "安途",
    "通达",
    "永盛",
    "金盾",
    "佳美",
    "车之道",
    "路路通",
    "德信",
    "锦程",
    "华通",
    "骏马",
)
_BRANDS = ("广汽丰田", "东风本田", "一汽大众", "上汽通用别克", "比亚迪", "吉利")
_PHONE_PREFIXES = (
    "130",
    "131",
    "132",
    "133",
    "135",
    "136",
    "137",
    "138",
    "139",
    "150",
    "151",
    "152",
    "155",
    "156",
    "157",
    "158",
    "159",
    "166",
    "177",
    "180",
    "181",
    "186",
    "187",
    "188",
    "189",
    "198",
    "199",
)
# (kind, share of customers, order weight, VIP probability, qty range)
_KINDS = (
    ("workshop", 0.55, 1.0, 0.03, (1, 4)),
    ("distributor", 0.20, 3.0, 0.12, (5, 40)),
    ("dealer_4s", 0.15, 2.0, 0.25, (2, 12)),
    ("fleet", 0.10, 1.2, 0.06, (2, 20)),
)
_DISCOUNT = {"workshop": 100, "distributor": 85, "dealer_4s": 92, "fleet": 95}

_CHANNEL_WEIGHT = {
    "website": 25,
    "wechat": 20,
    "douyin": 12,
    "distributor_api": 22,
    "pos": 8,
    "excel": 13,
}
_PROMO_CHANNEL_WEIGHT = {"douyin": 35, "website": 30, "wechat": 20, "distributor_api": 15}
# Seconds from the customer placing the order to the ERP record (people key some channels in).
_ENTRY_DELAY = {
    "website": (0, 3),
    "douyin": (0, 3),
    "distributor_api": (1, 20),
    "pos": (10, 90),
    "wechat": (40, 480),
    "excel": (300, 2700),
}
_AUTO_CONFIRM = ("website", "douyin", "distributor_api")
_CRM_FIRST_CHANNELS = ("wechat", "pos")  # customer service records these before the ERP does

# Hourly order curve (local hour 0..23): quiet nights, busy mornings and afternoons.
_CURVE = (
    0.3,
    0.2,
    0.15,
    0.1,
    0.1,
    0.2,
    0.5,
    1.5,
    4.0,
    7.5,
    8.5,
    8.0,
    5.5,
    5.0,
    7.0,
    8.0,
    7.5,
    6.0,
    4.0,
    3.0,
    3.0,
    2.5,
    1.5,
    0.8,
)
_OFFICE = (8 * HOUR + 30 * MINUTE, 21 * HOUR + 30 * MINUTE)
_WAREHOUSE_SHIFT = (7 * HOUR + 30 * MINUTE, 22 * HOUR + 30 * MINUTE)
_CARRIER_DAY = (8 * HOUR, 21 * HOUR)
_DELIVERY_DAY = (8 * HOUR, 17 * HOUR)

# (name, code, status language, weight)
_CARRIERS = (
    ("顺丰速运", "SF", "en", 30),
    ("中通快递", "ZTO", "zh", 35),
    ("京东物流", "JD", "en", 20),
    ("德邦快递", "DBL", "zh", 15),
)

# Status labels per source, stage and language; every one is in schemas/status_maps.yaml.
_ERP_LABELS = {
    "zh": {
        "placed": ("已下单", "待审核"),
        "confirmed": ("已审核", "已确认"),
        "allocation_failed": ("库存不足", "锁库失败"),
        "allocated": ("已配货", "库存已锁定"),
        "picking": ("拣货中",),
        "shipped": ("已发货",),
        "in_transit": ("运输中",),
        "delivered": ("已签收",),
        "closed": ("已完成", "已关闭"),
        "cancelled": ("已取消", "作废"),
    },
    "en": {
        "placed": ("CREATED", "NEW", "PLACED"),
        "confirmed": ("CONFIRMED", "APPROVED"),
        "allocation_failed": ("STOCK_SHORTAGE", "ALLOCATION_FAILED"),
        "allocated": ("ALLOCATED", "RELEASED"),
        "picking": ("PICKING",),
        "shipped": ("SHIPPED", "DISPATCHED"),
        "in_transit": ("IN_TRANSIT",),
        "delivered": ("DELIVERED",),
        "closed": ("COMPLETED", "CLOSED"),
        "cancelled": ("CANCELLED", "VOID"),
    },
}
_CRM_LABELS = {
    "zh": {
        "placed": ("新建", "已下单", "待处理"),
        "confirmed": ("已确认",),
        "allocated": ("处理中", "备货中"),
        "picking": ("处理中",),
        "shipped": ("已发货",),
        "in_transit": ("运输中", "配送中"),
        "delivered": ("已签收",),
        "closed": ("已完成",),
        "cancelled": ("已取消",),
    },
    "en": {
        "placed": ("NEW", "OPEN", "PENDING"),
        "confirmed": ("CONFIRMED", "ACCEPTED"),
        "allocated": ("PROCESSING", "IN_FULFILLMENT"),
        "picking": ("PICKING",),
        "shipped": ("SHIPPED",),
        "in_transit": ("IN_TRANSIT",),
        "delivered": ("DELIVERED",),
        "closed": ("CLOSED", "RESOLVED"),
        "cancelled": ("CANCELLED", "CANCELED"),
    },
}
_WMS_LABELS = {
    "zh": {
        "received": ("已接单", "已分配"),
        "pick": ("拣货中",),
        "packed": ("已拣货", "已打包"),
        "shipped": ("已出库", "已发货"),
        "cancelled": ("已取消",),
    },
    "en": {
        "received": ("RECEIVED", "ORDER_RECEIVED", "ALLOCATED", "RESERVED"),
        "pick": ("WAVE_RELEASED", "PICKING"),
        "packed": ("PICKED", "PACKED"),
        "shipped": ("LOADED", "DISPATCHED", "SHIPPED"),
        "cancelled": ("CANCELLED",),
    },
}
_LOGISTICS_LABELS = {
    "zh": {
        "pickup": ("已揽收", "揽件"),
        "hub_in": ("已到达", "运输中"),
        "hub_out": ("运输中",),
        "hub_dest": ("已到达",),
        "out": ("派送中",),
        "exception": ("派送失败", "问题件", "异常"),
        "delivered": ("已签收",),
    },
    "en": {
        "pickup": ("PICKED_UP", "COLLECTED"),
        "hub_in": ("ARRIVED_AT_HUB",),
        "hub_out": ("DEPARTED_HUB", "IN_TRANSIT"),
        "hub_dest": ("ARRIVED_AT_HUB",),
        "out": ("OUT_FOR_DELIVERY",),
        "exception": ("DELIVERY_FAILED", "EXCEPTION", "ADDRESS_ISSUE"),
        "delivered": ("DELIVERED", "SIGNED"),
    },
}
# Labels no status map knows, for the unknown_status bad inputs.
_UNKNOWN_LABELS = {
    "crm": ("待回访", "ON_HOLD"),
    "wms": ("QC_HOLD", "待质检"),
    "logistics": ("CUSTOMS_CLEARANCE", "清关中"),
}

_PHASE = {
    "placed": "open",
    "confirmed": "open",
    "allocated": "fulfilling",
    "picking": "fulfilling",
    "shipped": "shipped",
    "in_transit": "shipped",
    "delivered": "delivered",
    "closed": "delivered",
    "cancelled": "cancelled",
}
# The CRM may skip a stage that does not change the phase (its sync sees only the latest).
_CRM_SKIP = {"confirmed": 0.1, "picking": 0.6, "in_transit": 0.3}


# --- internal records ------------------------------------------------------------------------


@dataclass(slots=True)
class _Customer:
    customer_id: str
    name: str
    kind: str
    phone: str  # 11 digits
    address: str
    province: str
    city: str
    district: str
    vip: bool
    warehouse: int


@dataclass(slots=True)
class _Line:
    sku: str
    qty: int
    unit_cents: int


@dataclass(slots=True)
class _Plan:
    """The physical truth of one order; each system's events are rendered from it."""

    erp: list[tuple[int, str, str]] = field(default_factory=list)  # (t, kind, reason key)
    wms: list[tuple[int, str]] = field(default_factory=list)
    logistics: list[tuple[int, str]] = field(default_factory=list)
    warehouse: int = 5
    carrier: int = 0
    crm_mode: str = "normal"  # normal | none | stuck_open | cancel
    crm_cancel_at: int = 0
    erp_follows_carrier: bool = True


@dataclass(slots=True)
class _Order:
    placed: int
    created: int
    channel: str
    promo: bool = False
    role: str = ""
    customer: _Customer | None = None
    lines: list[_Line] = field(default_factory=list)
    rush: bool = False
    retyped_address: bool = False
    plan: _Plan = field(default_factory=_Plan)
    erp_id: str = ""
    crm_ref: str = ""
    wms_ref: str = ""
    tracking_no: str = ""


@dataclass(slots=True)
class _Orphan:
    kind: str  # crm_dangling | crm_unlinked | wms_unlinked | logistics_dangling
    first: int
    ref: str = ""
    dangling: str = ""
    warehouse: int = 5
    carrier: int = 0


def _fingerprint(lines: list[_Line]) -> frozenset[str]:
    return frozenset(line.sku[:8] for line in lines)


def _dumps(event: dict[str, Any]) -> bytes:
    return orjson.dumps(event)


# --- the generator ---------------------------------------------------------------------------


class _Builder:
    def __init__(self, config: ScenarioConfig) -> None:
        self.cfg = config
        self.rng = random.Random(config.seed)
        self.start = config.start
        self.end = int(config.hours * HOUR)
        offset = config.start.utcoffset() or timedelta(0)
        local = config.start.replace(tzinfo=None)
        self.tod0 = int(
            (local - local.replace(hour=0, minute=0, second=0, microsecond=0))
            / timedelta(milliseconds=1)
        )
        self.epoch0 = int(config.start.timestamp() * 1000)
        self.offset_ms = int(offset / timedelta(milliseconds=1))
        self.orders: list[_Order] = []
        self.orphans: list[_Orphan] = []
        self.groups: list[tuple[str, _Order, _Order]] = []  # (kind, first, second)
        self.seen_fp: dict[tuple[str, frozenset[str]], list[int]] = {}
        self.emitted: list[tuple[int, int, dict[str, Any]]] = []  # (publish time, seq, event)
        self.seq = 0
        self.crm_events = 0
        self.wms_events = 0
        self.tracking_used: set[str] = set()
        self.promo_at: int | None = None
        self.skus = self._catalog()
        self.customers, self.customer_cum = self._customers()

    # ----- small helpers

    def _u(self, lo_s: float, hi_s: float) -> int:
        return int(self.rng.uniform(lo_s, hi_s) * SECOND)

    def _tod(self, t: int) -> int:
        return (self.tod0 + t) % DAY

    def _in_hours(self, t: int, hours: tuple[int, int]) -> int:
        """t, or the next opening time when t falls outside the daily window."""
        tod = self._tod(t)
        if hours[0] <= tod < hours[1]:
            return t
        if tod < hours[0]:
            return t + hours[0] - tod + self._u(0, 900)
        return t + DAY - tod + hours[0] + self._u(0, 900)

    def _next_morning(self, t: int, hours: tuple[int, int]) -> int:
        return t + DAY - self._tod(t) + hours[0] + self._u(0, 5400)

    def _iso(self, t: int, spec: str = "seconds") -> str:
        return (self.start + timedelta(milliseconds=t)).isoformat(timespec=spec)

    def _iso_utc(self, t: int) -> str:
        moment = (self.start + timedelta(milliseconds=t)).astimezone(UTC)
        return moment.isoformat(timespec="seconds").replace("+00:00", "Z")

    def _date(self, t: int) -> str:
        return (self.start + timedelta(milliseconds=t)).strftime("%Y%m%d")

    def _pick(self, options: tuple[str, ...]) -> str:
        return options[self.rng.randrange(len(options))]

    def _channel(self, promo: bool) -> str:
        weights = _PROMO_CHANNEL_WEIGHT if promo else _CHANNEL_WEIGHT
        names = [c for c in self.cfg.channels if c in weights] or list(self.cfg.channels)
        return self.rng.choices(names, weights=[weights.get(c, 10) for c in names])[0]

    def _entry(self, channel: str) -> int:
        lo, hi = _ENTRY_DELAY.get(channel, (0, 60))
        return self._u(lo, hi)

    # ----- the world

    def _catalog(self) -> list[tuple[str, float, int]]:
        skus = []
        for prefix, weight, (lo, hi), fitments in _CATALOG:
            for fitment in fitments:
                price = self.rng.randint(lo * 100, hi * 100) // 50 * 50  # whole 0.5 yuan
                skus.append((f"{prefix}-{fitment}", weight / len(fitments), price))
        return skus

    def _customers(self) -> tuple[list[_Customer], list[float]]:
        rng = self.rng
        count = max(300, int(self.cfg.orders * 2.2))
        ids = rng.sample(range(100000, 999999), count)
        region_weights = [r[5] for r in _REGIONS]
        customers: list[_Customer] = []
        cum: list[float] = []
        total = 0.0
        for cid in ids:
            kind, _, weight, vip_p, _ = rng.choices(_KINDS, weights=[k[1] for k in _KINDS])[0]
            province, city, districts, roads, warehouse, _ = rng.choices(
                _REGIONS, weights=region_weights
            )[0]
            district = self._pick(tuple(districts))
            street = self._pick(districts[district])
            detail = f"{self._pick(roads)}{rng.randint(1, 399)}号"
            if rng.random() < 0.45:
                mall = self._pick(("汽配城", "汽车用品城", "国际汽配城", "汽配市场"))
                detail += (
                    f"{district[:2]}{mall}{'ABCDEF'[rng.randrange(6)]}区{rng.randint(1, 88)}号铺"
                )
            word = self._pick(_WORDS)
            place = (city or province)[:2]
            if kind == "workshop":
                name = f"{district[:2]}{word}" + self._pick(
                    ("汽修厂", "汽车维修中心", "汽车服务有限公司")
                )
            elif kind == "distributor":
                name = f"{place}{word}" + self._pick(("汽配商行", "汽配有限公司", "汽车配件经营部"))
            elif kind == "dealer_4s":
                name = f"{place}{word}{self._pick(_BRANDS)}4S店"
            else:
                name = f"{place}{word}" + self._pick(("物流车队", "出租汽车公司", "租车服务部"))
            phone = self._pick(_PHONE_PREFIXES) + f"{rng.randrange(10**8):08d}"
            customers.append(
                _Customer(
                    customer_id=f"C{cid}",
                    name=name,
                    kind=kind,
                    phone=phone,
                    address=f"{province}{city}{district}{street}{detail}",
                    province=province,
                    city=city or province,
                    district=district,
                    vip=rng.random() < vip_p,
                    warehouse=warehouse,
                )
            )
            total += weight
            cum.append(total)
        return customers, cum

    def _customer(self) -> _Customer:
        x = self.rng.random() * self.customer_cum[-1]
        return self.customers[bisect.bisect_right(self.customer_cum, x)]

    def _lines(self, customer: _Customer, avoid: frozenset[str] | None = None) -> list[_Line]:
        rng = self.rng
        count = rng.choices((1, 2, 3, 4, 5), weights=(36, 27, 18, 11, 8))[0]
        qty_lo, qty_hi = next(k[4] for k in _KINDS if k[0] == customer.kind)
        while True:
            chosen: dict[str, int] = {}
            while len(chosen) < count:
                sku, _, price = rng.choices(self.skus, weights=[s[1] for s in self.skus])[0]
                chosen.setdefault(sku, price)
            lines = []
            for sku, price in chosen.items():
                qty = rng.randint(qty_lo, qty_hi)
                if sku.startswith(("FLT-", "SPK-", "WPR-")):
                    qty *= rng.choice((1, 2, 4))  # consumables go by the box
                cents = price * _DISCOUNT[customer.kind] // 100
                lines.append(_Line(sku=sku, qty=qty, unit_cents=cents))
            if avoid is None or _fingerprint(lines) != avoid:
                return lines

    def _clear(self, customer: _Customer, fp: frozenset[str], t: int) -> bool:
        return all(
            abs(t - other) > FINGERPRINT_CLEARANCE
            for other in self.seen_fp.get((customer.customer_id, fp), ())
        )

    def _register(self, order: _Order) -> None:
        assert order.customer is not None
        key = (order.customer.customer_id, _fingerprint(order.lines))
        self.seen_fp.setdefault(key, []).append(order.placed)

    def _assign(self, order: _Order, partner: _Order | None = None, kind: str = "") -> None:
        """Customer and lines for an order (and its planted partner), clear of accidental twins."""
        for _ in range(500):
            customer = self._customer()
            lines = self._lines(customer)
            fp = _fingerprint(lines)
            if not self._clear(customer, fp, order.placed):
                continue
            partner_lines = lines
            if partner is not None:
                if kind == "look_other":
                    partner_lines = self._lines(customer, avoid=fp)
                    if not self._clear(customer, _fingerprint(partner_lines), partner.placed):
                        continue
                elif not self._clear(customer, fp, partner.placed):
                    continue
                elif kind == "look_same":
                    # a re-order of the same parts, quantities topped up
                    partner_lines = [
                        _Line(ln.sku, ln.qty + self.rng.randint(0, 3), ln.unit_cents)
                        for ln in lines
                    ]
            order.customer, order.lines = customer, lines
            order.rush = self.rng.random() < 0.08
            self._register(order)
            if partner is not None:
                partner.customer, partner.lines = customer, partner_lines
                partner.rush = order.rush if kind == "dup" else self.rng.random() < 0.08
                partner.retyped_address = kind == "dup" and self.rng.random() < 0.5
                self._register(partner)
            return
        raise RuntimeError("could not place an order clear of look-alikes; too few customers")

    # ----- when orders are placed

    def _curve_sampler(self, lo: int, hi: int) -> tuple[list[tuple[int, int]], list[float]]:
        slots: list[tuple[int, int]] = []
        cum: list[float] = []
        total = 0.0
        t = lo
        while t < hi:
            boundary = min(hi, t + HOUR - self._tod(t) % HOUR)
            total += _CURVE[self._tod(t) // HOUR] * (boundary - t) / HOUR
            slots.append((t, boundary))
            cum.append(total)
            t = boundary
        return slots, cum

    def _sample(self, sampler: tuple[list[tuple[int, int]], list[float]]) -> int:
        slots, cum = sampler
        idx = min(bisect.bisect_right(cum, self.rng.random() * cum[-1]), len(slots) - 1)
        a, b = slots[idx]
        return a + int(self.rng.random() * (b - a))

    def _new_order(self, placed: int, promo: bool, channel: str | None = None) -> _Order:
        channel = channel or self._channel(promo)
        return _Order(
            placed=placed, created=placed + self._entry(channel), channel=channel, promo=promo
        )

    def _period_orders(self) -> None:
        cfg, rng, end = self.cfg, self.rng, self.end
        promo_n = 0
        if cfg.promo_peak and end >= 2 * HOUR + 30 * MINUTE:
            self.promo_at = min(20 * HOUR, end - 2 * HOUR - 30 * MINUTE)
            promo_n = PROMO_ORDERS
        total = cfg.orders + promo_n
        n_dup = round(cfg.duplicate_rate * total)
        n_look = round(cfg.lookalike_rate * total)
        share = cfg.orders / total if total else 0.0
        plans = (
            (False, cfg.orders, round(n_dup * share), round(n_look * share)),
            (True, promo_n, n_dup - round(n_dup * share), n_look - round(n_look * share)),
        )
        sampler = self._curve_sampler(0, end)
        for promo, count, dups, looks in plans:
            if count == 0:
                continue
            dups = min(dups, count // 3)
            looks = min(looks, count // 3)
            singles: list[_Order] = []
            for _ in range(count - dups - looks):
                while True:
                    if promo:
                        assert self.promo_at is not None
                        placed = self.promo_at + rng.randrange(HOUR)
                    else:
                        placed = self._sample(sampler)
                    order = self._new_order(placed, promo)
                    if order.created <= end - MINUTE:
                        break
                singles.append(order)
            self.orders.extend(singles)
            eligible = [o for o in singles if 15 * MINUTE <= o.placed <= end - 2 * HOUR]
            chosen = rng.sample(eligible, min(len(eligible), dups + looks))
            for k, original in enumerate(chosen):
                if k < dups:
                    self._plant_duplicate(original, straddle=k % 3 == 0)
                else:
                    kind = "look_same" if (k - dups) % 2 == 0 else "look_other"
                    self._plant_lookalike(original, kind)

    def _plant_duplicate(self, original: _Order, straddle: bool) -> None:
        """A second order of the same parts via another channel, 20 s to 14 min later."""
        gap = self._u(20, 14 * 60)
        bucket = DUPLICATE_WINDOW
        absolute = self.epoch0 + original.placed
        edge = absolute - absolute % bucket + bucket - self.epoch0
        # straddling pairs land in different 15-minute buckets: a bucketed fingerprint misses them
        if straddle:
            placed = edge - self.rng.randint(SECOND, gap)
        else:
            placed = edge - bucket + self.rng.randint(0, bucket - gap - SECOND)
        original.created += placed - original.placed
        original.placed = placed
        others = [c for c in self.cfg.channels if c != original.channel]
        channel = self._pick(tuple(others))
        twin = self._new_order(placed + gap, original.promo, channel)
        self.orders.append(twin)
        self.groups.append(("dup", original, twin))

    def _plant_lookalike(self, original: _Order, kind: str) -> None:
        # the same parts again well outside the window, or other parts minutes later
        gap = self._u(26 * 60, 59 * 60) if kind == "look_same" else self._u(60, 12 * 60)
        other = self._new_order(original.placed + gap, original.promo)
        self.orders.append(other)
        self.groups.append((kind, original, other))

    def _carry_over(self) -> None:
        """Orders from the previous days still in flight: deliveries and closures today."""
        sampler = self._curve_sampler(-60 * HOUR, -20 * HOUR)
        for _ in range(round(self.cfg.orders * 0.35)):
            self.orders.append(self._new_order(self._sample(sampler), False))

    # ----- planted ghosts

    def _window(self, need: int, span: int) -> tuple[int, int]:
        hi = self.end - need
        if hi - 30 * MINUTE >= HOUR:
            return max(hi - span, 30 * MINUTE), hi
        return hi - span, hi  # too short a period: plant it on the previous days

    def _plant_ghosts(self) -> None:
        k = max(3, round(self.cfg.orders / 400))
        missing = ("crm_missing", "wms_missing")
        conflicts = ("crm_stuck", "wms_ship_erp_stuck", "crm_cancel", "log_delivered")
        roles = [missing[i % 2] for i in range(k)]
        roles += [conflicts[i % 4] for i in range(k)]
        roles += ["contradiction"] * max(3, k // 2 + 1)
        roles += ["stalled_critical"] + ["stalled"] * (k - 1)
        windows = {
            "crm_missing": (90 * MINUTE, 18 * HOUR),
            "wms_missing": (5 * HOUR, 14 * HOUR),
            "crm_stuck": (3 * HOUR, 16 * HOUR),
            "crm_cancel": (3 * HOUR, 16 * HOUR),
            "wms_ship_erp_stuck": (6 * HOUR, 14 * HOUR),
            "contradiction": (6 * HOUR, 14 * HOUR),
            "log_delivered": (30 * HOUR, 30 * HOUR),
            "stalled": (40 * HOUR, 30 * HOUR),
            "stalled_critical": (85 * HOUR, 25 * HOUR),
        }
        for role in roles:
            lo, hi = self._window(*windows[role])
            for _ in range(1000):
                order = self._new_order(self.rng.randint(lo, hi), False)
                order.role = role
                order.customer = self._customer()
                order.lines = self._lines(order.customer)
                if not self._clear(order.customer, _fingerprint(order.lines), order.placed):
                    continue
                order.rush = False
                order.plan = self._plan(order)
                if self._fits(order):
                    self._register(order)
                    self.orders.append(order)
                    break
            else:
                raise RuntimeError(f"could not plant a {role} ghost")
        kinds = ("crm_dangling", "wms_unlinked", "logistics_dangling", "crm_unlinked")
        lo, hi = self._window(HOUR, 20 * HOUR)
        for i in range(k):
            orphan = _Orphan(kind=kinds[i % 4], first=self.rng.randint(lo, hi))
            orphan.warehouse = self.rng.choice(list(_WAREHOUSES))
            orphan.carrier = self.rng.randrange(len(_CARRIERS))
            self.orphans.append(orphan)

    def _fits(self, order: _Order) -> bool:
        plan, end, role = order.plan, self.end, order.role
        margin = 80 * MINUTE
        erp = {kind: t for t, kind, _ in plan.erp}
        wms = {kind: t for t, kind in plan.wms}
        if role == "crm_missing":
            return order.created <= end - 90 * MINUTE
        if role == "wms_missing":
            return erp["allocated"] <= end - WMS_MISSING_AFTER - 45 * MINUTE
        if role == "crm_stuck":
            return erp["allocated"] <= end - margin
        if role == "crm_cancel":
            return plan.crm_cancel_at <= end - margin
        if role == "wms_ship_erp_stuck":
            return wms["shipped"] <= end - margin
        if role == "contradiction":
            return erp["cancelled"] <= end - margin
        if role == "log_delivered":
            delivered = [t for t, kind in plan.logistics if kind == "delivered"]
            return bool(delivered) and end - 20 * HOUR <= delivered[0] <= end - margin
        if role in ("stalled", "stalled_critical"):
            after = STALL_CRITICAL_AFTER if role == "stalled_critical" else STALL_AFTER
            return bool(plan.logistics) and plan.logistics[-1][0] <= end - after - HOUR
        raise AssertionError(role)

    # ----- each order's life

    def _plan(self, order: _Order) -> _Plan:
        rng, role = self.rng, order.role
        assert order.customer is not None
        plan = _Plan(warehouse=order.customer.warehouse)
        if rng.random() < 0.2:  # short locally: shipped from another site
            plan.warehouse = rng.choice([w for w in _WAREHOUSES if w != plan.warehouse])
        erp, wms = plan.erp, plan.wms
        erp.append((order.created, "placed", ""))
        if order.channel in _AUTO_CONFIRM:
            confirmed = order.created + self._u(5, 90)
        else:
            confirmed = self._in_hours(order.created + self._u(90, 18 * 60), _OFFICE)
        if order.promo:
            confirmed += self._u(0, 12 * 60)
        erp.append((confirmed, "confirmed", ""))
        if not role and rng.random() < 0.015:
            erp.append((confirmed + self._u(180, 2400), "cancelled", "customer"))
            return plan
        attempt = confirmed + self._u(40, 600) + (self._u(0, 1500) if order.promo else 0)
        failure_rate = PROMO_FAILURE_RATE if order.promo else BASE_FAILURE_RATE
        if not role and rng.random() < failure_rate:
            erp.append((attempt, "allocation_failed", "stock"))
            if rng.random() < 0.25:
                erp.append((attempt + self._u(1800, 4 * 3600), "cancelled", "no_stock"))
                return plan
            attempt += self._u(1200, 3 * 3600)  # restocked or transferred
        erp.append((attempt, "allocated", ""))
        received = attempt + self._u(20, 480) + (self._u(0, 3000) if order.promo else 0)
        wms.append((received, "received"))
        if not role and rng.random() < 0.01:
            cancelled = received + self._u(300, 3600)
            erp.append((cancelled, "cancelled", "customer"))
            wms.append((cancelled + self._u(60, 360), "cancelled"))
            return plan
        wait = self._u(300, 1800) if order.rush else self._u(900, 9000)
        if order.promo:
            wait += self._u(0, 6 * 3600)  # the promotion backlog
        pick = self._in_hours(max(received + self._u(120, 600), attempt + wait), _WAREHOUSE_SHIFT)
        wms.append((pick, "pick"))
        erp.append((pick + self._u(10, 180), "picking", ""))
        packed = pick + self._u(480, 3600)
        wms.append((packed, "packed"))
        loaded = self._in_hours(packed + self._u(600, 7200), _WAREHOUSE_SHIFT)
        wms.append((loaded, "shipped"))
        erp.append((loaded + self._u(20, 360), "shipped", ""))
        plan.carrier = self._carrier(order)
        plan.logistics = self._transit(order, plan, loaded)
        self._apply_role(order, plan)
        if plan.erp_follows_carrier and erp[-1][1] == "shipped":
            self._follow_carrier(plan)
        return plan

    def _apply_role(self, order: _Order, plan: _Plan) -> None:
        role = order.role
        erp_at = {kind: t for t, kind, _ in plan.erp}
        if role == "crm_missing":
            plan.crm_mode = "none"
        elif role == "wms_missing":  # the WMS never got it, so nobody picks it
            plan.erp = [e for e in plan.erp if e[0] <= erp_at["allocated"]]
            plan.wms, plan.logistics = [], []
        elif role == "crm_stuck":
            plan.crm_mode = "stuck_open"
        elif role == "crm_cancel":
            plan.crm_mode = "cancel"
            plan.crm_cancel_at = erp_at["allocated"] + self._u(5 * 60, 40 * 60)
        elif role in ("wms_ship_erp_stuck", "contradiction"):
            plan.erp = [e for e in plan.erp if e[0] <= erp_at["picking"]]
            plan.erp_follows_carrier = False
            if role == "wms_ship_erp_stuck":
                plan.logistics = []
            else:  # the cancellation raced the dispatch and lost
                loaded = next(t for t, kind in plan.wms if kind == "shipped")
                plan.erp.append((loaded + self._u(8 * 60, 60 * 60), "cancelled", "customer"))
        elif role == "log_delivered":
            plan.erp_follows_carrier = False
        elif role in ("stalled", "stalled_critical"):
            moving = [e for e in plan.logistics if e[1] in ("pickup", "hub_in", "hub_out")]
            plan.logistics = moving[: self.rng.randint(1, 3)]

    def _follow_carrier(self, plan: _Plan) -> None:
        """The ERP learns in-transit and delivery from the carrier, minutes later."""
        hubs = [t for t, kind in plan.logistics if kind in ("hub_in", "hub_out", "hub_dest")]
        if hubs:
            plan.erp.append((hubs[0] + self._u(120, 900), "in_transit", ""))
        delivered = [t for t, kind in plan.logistics if kind == "delivered"]
        if delivered:
            at = delivered[0] + self._u(60, 360)
            plan.erp.append((at, "delivered", ""))
            plan.erp.append((at + self._u(6 * 3600, 48 * 3600), "closed", ""))

    def _carrier(self, order: _Order) -> int:
        rng = self.rng
        if order.rush:
            return 0 if rng.random() < 0.7 else 2
        if any(line.sku.startswith(_HEAVY) for line in order.lines) and rng.random() < 0.4:
            return 3
        return rng.choices(range(len(_CARRIERS)), weights=[c[3] for c in _CARRIERS])[0]

    def _transit(self, order: _Order, plan: _Plan, loaded: int) -> list[tuple[int, str]]:
        assert order.customer is not None
        rng = self.rng
        out: list[tuple[int, str]] = []
        t = self._in_hours(loaded + self._u(1800, 4 * 3600), _CARRIER_DAY)
        out.append((t, "pickup"))
        t += self._u(3600, 3 * 3600)
        out.append((t, "hub_in"))
        if _WAREHOUSES[plan.warehouse][1] != _CITY_HUBS[order.customer.city]:
            t += self._u(2400, 3 * 3600)
            out.append((t, "hub_out"))
            t += self._u(4 * 3600, 12 * 3600)
            out.append((t, "hub_dest"))
        t = self._in_hours(t + self._u(1200, 7200), _DELIVERY_DAY)
        out.append((t, "out"))
        if rng.random() < 0.03:
            t += self._u(3600, 4 * 3600)
            out.append((t, "exception"))
            if self._tod(t) < 15 * HOUR:
                t += self._u(3600, 3 * 3600)
            else:
                t = self._next_morning(t, _DELIVERY_DAY)
            out.append((t, "out"))
        out.append((t + self._u(2400, 5 * 3600), "delivered"))
        return out

    # ----- ids

    def _assign_ids(self) -> None:
        rng = self.rng
        per_day: dict[str, int] = {}
        for order in sorted(self.orders, key=lambda o: o.created):
            day = self._date(order.created)
            per_day[day] = per_day.get(day, 0) + 1
            if per_day[day] >= 80000:
                raise ValueError("more than 80000 ERP orders on one day")
            order.erp_id = f"SO{day}{per_day[day]:05d}"
        # CRM and WMS number their own records in the order they open them
        owners: list[tuple[int, int, _Order | _Orphan]] = []
        for i, order in enumerate(self.orders):
            if order.plan.crm_mode != "none":
                owners.append((order.created, i, order))
        for i, orphan in enumerate(self.orphans):
            if orphan.kind.startswith("crm"):
                owners.append((orphan.first, len(self.orders) + i, orphan))
        number = 86000 + rng.randrange(1000)
        for _, _, owner in sorted(owners, key=lambda x: (x[0], x[1])):
            number += 1
            if isinstance(owner, _Order):
                owner.crm_ref = f"CS-{number}"
            else:
                owner.ref = f"CS-{number}"
        wms_owners: list[tuple[int, int, _Order | _Orphan]] = []
        for i, order in enumerate(self.orders):
            if order.plan.wms:
                wms_owners.append((order.plan.wms[0][0], i, order))
        for i, orphan in enumerate(self.orphans):
            if orphan.kind.startswith("wms"):
                wms_owners.append((orphan.first, len(self.orders) + i, orphan))
        counters = {w: rng.randrange(100, 900) for w in _WAREHOUSES}
        for _, _, owner in sorted(wms_owners, key=lambda x: (x[0], x[1])):
            site = owner.plan.warehouse if isinstance(owner, _Order) else owner.warehouse
            counters[site] += 1
            ref = f"WMS-{site}-{counters[site] % 100000:05d}"
            if isinstance(owner, _Order):
                owner.wms_ref = ref
            else:
                owner.ref = ref
        dangling = rng.sample(range(1000), len(self.orphans))
        for orphan, n in zip(self.orphans, dangling, strict=True):
            # numbers the ERP never reaches on a day: a mistyped or lost order
            orphan.dangling = f"SO{self._date(orphan.first)}9{n:04d}"
            if orphan.kind == "logistics_dangling":
                orphan.ref = self._tracking_no(orphan.carrier)

    def _tracking_no(self, carrier: int) -> str:
        rng = self.rng
        code = _CARRIERS[carrier][1]
        while True:
            if code == "SF":
                number = f"SF{rng.randrange(10**13):013d}"
            elif code == "ZTO":
                number = f"7{rng.randrange(10**13):013d}"
            elif code == "JD":
                number = f"JDVB{rng.randrange(10**11):011d}"
            else:
                number = f"DPK{rng.randrange(10**12):012d}"
            if number not in self.tracking_used:
                self.tracking_used.add(number)
                return number

    # ----- rendering events

    def _emit(self, t: int, event: dict[str, Any]) -> None:
        delay = 0
        if event["source"] != "erp" and self.rng.random() < self.cfg.out_of_order:
            delay = self._u(5, 180)  # a connector retry: published late, event time intact
        self.seq += 1
        self.emitted.append((t + delay, self.seq, event))

    def _render_order(self, order: _Order) -> None:
        self._render_erp(order)
        self._render_crm(order)
        self._render_wms(order)
        self._render_logistics(order)

    def _phone(self, digits: str, channel: str) -> str:
        if channel == "wechat":
            return f"+86 {digits[:3]} {digits[3:7]} {digits[7:]}"
        if channel == "douyin":
            return f"+86-{digits[:3]}-{digits[3:7]}-{digits[7:]}"
        if channel == "distributor_api":
            return f"+86{digits}"
        return f"+86 {digits}"

    def _order_details(self, order: _Order) -> dict[str, Any]:
        customer = order.customer
        assert customer is not None
        total = sum(line.qty * line.unit_cents for line in order.lines)
        amount = total
        if order.promo and total >= 100000:
            amount -= 8000  # 满1000减80
        address = customer.address
        if order.retyped_address:  # typed again by hand on the other channel
            if customer.city != customer.province:
                address = address.removeprefix(customer.province)
            else:
                address = address.replace(customer.province, customer.province[:2], 1)
        return {
            "customer_id": customer.customer_id,
            "customer_name": customer.name,
            "channel": order.channel,
            "lines": [
                {"sku": line.sku, "qty": line.qty, "unit_price": line.unit_cents / 100}
                for line in order.lines
            ],
            "amount": amount / 100,
            "currency": "CNY",
            "customer_phone": self._phone(customer.phone, order.channel),
            "ship_to": address,
            "vip": customer.vip,
            "priority": "rush" if order.rush else "normal",
            "placed_at": self._iso(order.placed),
        }

    def _render_erp(self, order: _Order) -> None:
        rng = self.rng
        english = order.channel in ("distributor_api", "website")
        style = "en" if english != (rng.random() < 0.1) else "zh"
        labels = _ERP_LABELS[style]
        for n, (t, kind, reason) in enumerate(order.plan.erp, start=1):
            if t > self.end:
                break
            event: dict[str, Any] = {
                "event_id": f"erp-{order.erp_id}-{n:02d}",
                "source": "erp",
                "order_ref": order.erp_id,
                "status": self._pick(labels[kind]),
                "occurred_at": self._iso(t),
            }
            if kind == "placed":
                event["order"] = self._order_details(order)
                event["attrs"] = {
                    "warehouse": f"WH{order.plan.warehouse}",
                    "payment_terms": self._pick(("月结30天", "现结", "预付款")),
                }
                if order.promo:
                    event["attrs"]["promotion"] = "三月汽配节"
            elif kind == "allocation_failed":
                line = order.lines[rng.randrange(len(order.lines))]
                have = rng.randrange(line.qty)
                event["reason"] = (
                    f"insufficient stock for {line.sku}: requested {line.qty}, available {have}"
                    if style == "en"
                    else f"库存不足: {line.sku} 需 {line.qty} 可用 {have}"
                )
            elif kind == "cancelled":
                event["reason"] = {"customer": "客户要求取消", "no_stock": "缺货取消"}[reason]
            elif kind == "shipped":
                event["attrs"] = {
                    "carrier": _CARRIERS[order.plan.carrier][0],
                    "tracking_no": order.tracking_no,
                }
            self._emit(t, event)

    def _crm_lag(self, first: bool) -> int:
        rng = self.rng
        if rng.random() < 0.02:
            return -self._u(1, 20)  # clock skew between the systems
        cap = 9 * 60 if first else 17 * 60
        for _ in range(20):
            lag = rng.lognormvariate(math.log(45), 1.25)
            if lag <= cap:
                return int(lag * SECOND)
        return self._u(30, cap)

    def _render_crm(self, order: _Order) -> None:
        rng, plan = self.rng, order.plan
        if plan.crm_mode == "none":
            return
        items: list[tuple[int, str, str]] = []  # (t, kind, link role: "" | "unlinked" | "link")
        stages = [(t, kind) for t, kind, _ in plan.erp if kind in _PHASE]
        phase = ""
        for t, kind in stages:
            if plan.crm_mode == "stuck_open" and _PHASE[kind] != "open":
                break
            if items and _PHASE[kind] == phase and rng.random() < _CRM_SKIP.get(kind, 0.0):
                continue
            at = t + self._crm_lag(first=not items)
            if plan.crm_mode == "cancel" and items and at >= plan.crm_cancel_at:
                break
            items.append((at, kind, ""))
            phase = _PHASE[kind]
        if plan.crm_mode == "cancel":
            items.append((plan.crm_cancel_at, "cancelled", ""))
        if plan.crm_mode != "normal":
            pass
        elif order.channel in _CRM_FIRST_CHANNELS and rng.random() < 0.15:
            # customer service opened the record from the chat before the ERP had a number
            items[0] = (order.placed + self._u(5, 60), "placed", "unlinked")
            items.insert(1, (order.created + self._u(30, 300), "placed", "link"))
        elif rng.random() < 0.02:
            first = order.created + self._u(2, 240)
            items[0] = (first, "placed", "unlinked")
            items.insert(1, (first + self._u(20, 180), "placed", "link"))
        # kept in stage order: a late sync pushes the next one back, it never goes backwards
        style = "zh" if rng.random() < 0.6 else "en"
        linked = False
        last = -(10**15)
        for t, kind, link in items:
            t = max(t, last + SECOND)
            last = t
            if t > self.end:
                break
            self.crm_events += 1
            event: dict[str, Any] = {
                "event_id": f"crm-{self.crm_events:08d}",
                "source": "crm",
                "order_ref": order.crm_ref,
            }
            if (
                link == "link"
                or (not linked and link != "unlinked")
                or (linked and rng.random() < 0.5)
            ):
                event["erp_order_id"] = order.erp_id
                linked = True
            event["status"] = self._pick(_CRM_LABELS[style][kind])
            event["occurred_at"] = self._iso(t, "milliseconds")
            if kind == "cancelled" and plan.crm_mode == "cancel":
                event["reason"] = "客户来电取消,待同步ERP"
            if rng.random() < 0.2:
                event["attrs"] = {"agent": f"客服{rng.randint(1, 24):02d}"}
            self._emit(t, event)

    def _render_wms(self, order: _Order) -> None:
        rng, plan = self.rng, order.plan
        if not plan.wms:
            return
        site = plan.warehouse
        labels = _WMS_LABELS["zh" if site in _ZH_WAREHOUSES else "en"]
        items: list[tuple[int, str, str]] = [(t, kind, "") for t, kind in plan.wms]
        if rng.random() < 0.03:  # the interface fills the ERP number in a moment later
            first = items[0][0]
            nxt = items[1][0] if len(items) > 1 else first + HOUR
            items[0] = (first, items[0][1], "unlinked")
            items.insert(1, (min(first + self._u(20, 90), nxt - SECOND), items[0][1], "link"))
        linked = False
        for t, kind, link in items:
            if t > self.end:
                break
            self.wms_events += 1
            event: dict[str, Any] = {
                "event_id": f"WMS{site}-EV{self.wms_events:08d}",
                "source": "wms",
                "order_ref": order.wms_ref,
            }
            if (
                link == "link"
                or (not linked and link != "unlinked")
                or (linked and rng.random() < 0.5)
            ):
                event["erp_order_id"] = order.erp_id
                linked = True
            event["status"] = self._pick(labels[kind])
            event["occurred_at"] = self._iso(t)
            if kind == "pick":
                event["attrs"] = {"wave": f"W{self._date(t)}-{self._tod(t) // (20 * MINUTE):03d}"}
            elif kind == "shipped":
                weight = sum(line.qty for line in order.lines) * rng.uniform(0.2, 1.5)
                event["attrs"] = {
                    "packages": 1 + len(order.lines) // 2,
                    "weight_kg": round(weight, 1),
                    "carrier": _CARRIERS[plan.carrier][0],
                }
            self._emit(t, event)

    def _render_logistics(self, order: _Order) -> None:
        plan = order.plan
        if not plan.logistics:
            return
        assert order.customer is not None
        self._render_tracking(
            ref=order.tracking_no,
            carrier=plan.carrier,
            erp_id=order.erp_id,
            items=plan.logistics,
            origin=_WAREHOUSES[plan.warehouse][1],
            destination=_CITY_HUBS[order.customer.city],
            station=f"{order.customer.city}{order.customer.district}营业部",
        )

    def _render_tracking(
        self,
        ref: str,
        carrier: int,
        erp_id: str,
        items: list[tuple[int, str]],
        origin: str,
        destination: str,
        station: str,
    ) -> None:
        rng = self.rng
        name, _, style, _ = _CARRIERS[carrier]
        for n, (t, kind) in enumerate(items, start=1):
            if t > self.end:
                break
            if kind == "pickup":
                location, note = station, f"【{name}】快递员已揽收"
            elif kind == "hub_in":
                location, note = origin, f"快件已到达【{origin}】"
            elif kind == "hub_out":
                location, note = origin, f"快件已从【{origin}】发出,下一站【{destination}】"
            elif kind == "hub_dest":
                location, note = destination, f"快件已到达【{destination}】"
            elif kind == "out":
                location, note = station, f"【{station}】快递员正在派送"
            elif kind == "exception":
                location = station
                note = self._pick(
                    (
                        "收件人电话无人接听,改日派送",
                        "收件地址不详,待联系客户",
                        "门店已关门,次日派送",
                    )
                )
            else:
                location = station
                note = self._pick(
                    ("已签收,签收人:本人", "已签收,签收人:前台", "已签收,签收人:门卫")
                )
            event: dict[str, Any] = {
                "event_id": f"{ref}-{n:03d}",
                "source": "logistics",
                "order_ref": ref,
            }
            if n == 1 or rng.random() < 0.3:
                event["erp_order_id"] = erp_id
            event["status"] = self._pick(_LOGISTICS_LABELS[style][kind])
            event["occurred_at"] = self._iso_utc(t)
            event["tracking"] = {
                "carrier": name,
                "tracking_no": ref,
                "location": location,
                "note": note,
            }
            self._emit(t, event)

    def _render_orphan(self, orphan: _Orphan) -> None:
        rng, t = self.rng, orphan.first
        if orphan.kind.startswith("crm"):
            steps = [(t, "新建"), (t + self._u(600, 5400), "待处理")]
            for at, status in steps:
                if at > self.end:
                    break
                self.crm_events += 1
                event: dict[str, Any] = {
                    "event_id": f"crm-{self.crm_events:08d}",
                    "source": "crm",
                    "order_ref": orphan.ref,
                }
                if orphan.kind == "crm_dangling":
                    event["erp_order_id"] = orphan.dangling
                event["status"] = status
                event["occurred_at"] = self._iso(at, "milliseconds")
                event["attrs"] = {"agent": f"客服{rng.randint(1, 24):02d}", "via": "电话"}
                self._emit(at, event)
        elif orphan.kind == "wms_unlinked":  # a manual dispatch the ERP never heard of
            site = orphan.warehouse
            labels = _WMS_LABELS["zh" if site in _ZH_WAREHOUSES else "en"]
            steps = [
                (t, "received"),
                (t + self._u(1200, 3600), "pick"),
                (t + self._u(4000, 10800), "shipped"),
            ]
            for at, kind in steps:
                if at > self.end:
                    break
                self.wms_events += 1
                self._emit(
                    at,
                    {
                        "event_id": f"WMS{site}-EV{self.wms_events:08d}",
                        "source": "wms",
                        "order_ref": orphan.ref,
                        "status": self._pick(labels[kind]),
                        "occurred_at": self._iso(at),
                        "attrs": {"order_type": "手工出库"},
                    },
                )
        else:
            self._render_tracking(
                ref=orphan.ref,
                carrier=orphan.carrier,
                erp_id=orphan.dangling,
                items=[(t, "pickup"), (t + self._u(3600, 3 * 3600), "hub_in")],
                origin=_WAREHOUSES[orphan.warehouse][1],
                destination=_CITY_HUBS["广州市"],
                station="佛山市南海区营业部",
            )

    # ----- bad inputs

    def _bad_inputs(
        self, events: list[dict[str, Any]]
    ) -> tuple[list[dict[str, Any]], dict[str, int]]:
        rng = self.rng
        counts = dict.fromkeys(BAD_INPUT_KINDS, 0)
        if not self.cfg.bad_inputs or not events:
            return events, counts
        inserts: list[tuple[int, int, dict[str, Any]]] = []
        non_erp = [i for i, e in enumerate(events) if e["source"] != "erp"]
        for n in range(self.cfg.bad_inputs):
            kind = BAD_INPUT_KINDS[n % len(BAD_INPUT_KINDS)]
            counts[kind] += 1
            at = rng.randrange(len(events))
            base = events[at]
            topic = base["source"]
            if kind == "invalid_json":
                text = _dumps(base).decode()
                raw = text[: rng.randint(len(text) // 3, len(text) - 2)].encode()
            elif kind == "schema":
                broken = dict(base, event_id=f"{base['event_id']}-x")
                variant = n // len(BAD_INPUT_KINDS) % 3
                if variant == 0:  # a local time without its offset
                    broken["occurred_at"] = self._iso(0)[:19]
                elif variant == 1:
                    del broken["order_ref"]
                else:
                    broken["event_id"] = ""
                raw = _dumps(broken)
            elif kind == "wrong_topic":
                topic = self._pick(
                    tuple(s for s in ("erp", "crm", "wms", "logistics") if s != topic)
                )
                raw = _dumps(base)
            elif kind == "unknown_status":
                at = non_erp[rng.randrange(len(non_erp))] if non_erp else at
                base = events[at]
                topic = base["source"]
                if topic == "erp":
                    topic, base = "crm", dict(base, source="crm")
                label = self._pick(_UNKNOWN_LABELS[topic])
                raw = _dumps(dict(base, event_id=f"{base['event_id']}-r", status=label))
            elif kind == "missing_order":  # an update for an order the ERP never created
                day = base["occurred_at"][:10].replace("-", "")
                raw = _dumps(
                    {
                        "event_id": f"erp-lost-{n:04d}",
                        "source": "erp",
                        "order_ref": f"SO{day}8{rng.randrange(10000):04d}",
                        "status": self._pick(("已审核", "CONFIRMED")),
                        "occurred_at": base["occurred_at"],
                    }
                )
                topic = "erp"
            else:  # the producer retried after a timeout: the very same bytes again
                raw = _dumps(base)
                at = min(len(events) - 1, at + rng.randint(1, 200))
            inserts.append((at, n, {"_raw": raw, "_topic_source": topic}))
        inserts.sort(key=lambda x: (x[0], x[1]))
        out: list[dict[str, Any]] = []
        k = 0
        for i, event in enumerate(events):
            out.append(event)
            while k < len(inserts) and inserts[k][0] == i:
                out.append(inserts[k][2])
                k += 1
        return out, counts

    # ----- the whole

    def build(self) -> Scenario:
        cfg = self.cfg
        self._period_orders()
        self._carry_over()
        if cfg.ghosts:
            self._plant_ghosts()
        seconds = {id(second) for _, _, second in self.groups}
        firsts = {id(first): (kind, second) for kind, first, second in self.groups}
        for order in sorted(self.orders, key=lambda o: o.placed):
            if order.role or id(order) in seconds:
                continue
            if id(order) in firsts:
                kind, partner = firsts[id(order)]
                self._assign(order, partner, kind)
            else:
                self._assign(order)
        for order in self.orders:
            if not order.role:
                order.plan = self._plan(order)
        self._assign_ids()
        for order in self.orders:
            if order.plan.logistics:
                order.tracking_no = self._tracking_no(order.plan.carrier)
            self._render_order(order)
        for orphan in self.orphans:
            self._render_orphan(orphan)
        self.emitted.sort(key=lambda x: (x[0], x[1]))
        events, bad = self._bad_inputs([e for _, _, e in self.emitted])
        return Scenario(events=events, labels=self._labels(bad))

    def _labels(self, bad: dict[str, int]) -> Labels:
        labels = Labels(bad_inputs=bad)
        for kind, first, second in self.groups:
            pair = frozenset((first.erp_id, second.erp_id))
            (labels.duplicate_pairs if kind == "dup" else labels.lookalike_pairs).add(pair)
        role_type = {
            "crm_missing": "missing_in_system",
            "wms_missing": "missing_in_system",
            "crm_stuck": "status_conflict",
            "crm_cancel": "status_conflict",
            "wms_ship_erp_stuck": "status_conflict",
            "log_delivered": "status_conflict",
            "contradiction": "status_conflict",
            "stalled": "stalled_tracking",
            "stalled_critical": "stalled_tracking",
        }
        for order in self.orders:
            if order.role:
                labels.ghosts[role_type[order.role]].add(order.erp_id)
                if order.role == "contradiction":
                    labels.contradictions.add(order.erp_id)
        for orphan in self.orphans:
            labels.ghosts["orphan_order"].add(orphan.ref)
        if self.promo_at is not None:
            begin = self.start + timedelta(milliseconds=self.promo_at)
            labels.promo_peak = (begin, begin + timedelta(hours=1))
        return labels


def generate(config: ScenarioConfig) -> Scenario:
    """A scenario for `config`; the same config gives the same events and labels."""
    return _Builder(config).build()


def encode(entry: dict[str, Any]) -> tuple[str, bytes]:
    """(topic source, value bytes) to publish for one entry of `Scenario.events`."""
    if "_raw" in entry:
        return entry["_topic_source"], entry["_raw"]
    return entry["source"], _dumps(entry)


def write_jsonl(scenario: Scenario, path: Path) -> int:
    """Write the events, one per line in publish order (bad inputs as their raw bytes).

    A raw line does not say which topic it was meant for, so a wrong-topic input read back
    from the file lands on its own topic; publish from `Scenario.events` to drill those.
    """
    lines = 0
    with path.open("wb") as out:
        for entry in scenario.events:
            value = encode(entry)[1]
            if b"\n" in value:
                raise ValueError("an event cannot span lines")
            out.write(value + b"\n")
            lines += 1
    return lines


def labels_to_json(labels: Labels) -> dict[str, Any]:
    """A JSON-able form of the labels, sorted so that it is stable."""

    def pairs(items: set[frozenset[str]]) -> list[list[str]]:
        return sorted(sorted(pair) for pair in items)

    return {
        "duplicate_pairs": pairs(labels.duplicate_pairs),
        "lookalike_pairs": pairs(labels.lookalike_pairs),
        "ghosts": {kind: sorted(ids) for kind, ids in labels.ghosts.items()},
        "contradictions": sorted(labels.contradictions),
        "promo_peak": [t.isoformat() for t in labels.promo_peak] if labels.promo_peak else None,
        "bad_inputs": dict(labels.bad_inputs),
        "silent_source": (
            [labels.silent_source[0], *(t.isoformat() for t in labels.silent_source[1:])]
            if labels.silent_source
            else None
        ),
    }


def write_labels(labels: Labels, path: Path) -> None:
    """Write the labels as one JSON document."""
    text = json.dumps(labels_to_json(labels), ensure_ascii=False, indent=2)
    path.write_text(text + "\n", encoding="utf-8")


# --- benchmark feed --------------------------------------------------------------------------

# (offset in orders behind the newest, source, stage key, carries erp_order_id)
_BENCH_STEPS = (
    (3, "crm", "placed", True),
    (20, "erp", "confirmed", True),
    (25, "crm", "confirmed", False),
    (60, "erp", "allocated", True),
    (70, "wms", "received", True),
    (80, "crm", "allocated", False),
    (150, "wms", "pick", False),
    (200, "erp", "shipped", True),
    (260, "logistics", "pickup", True),
    (300, "crm", "shipped", True),
    (400, "logistics", "hub_in", False),
)


def iter_bench_events(n: int, seed: int = 1) -> Iterator[tuple[str, bytes, bytes]]:
    """n valid change events as (source, key, value) for throughput benchmarks, fast.

    Each step creates one ERP order (with its details) and moves older orders along: CRM, WMS
    and carrier events that carry the ERP id or rely on the crosswalk, as a live feed does.
    """
    rng = random.Random(seed)
    world = _Builder(ScenarioConfig(seed=seed, orders=200, promo_peak=False, ghosts=False))
    customers = world.customers[:200]
    base = datetime(2026, 3, 2, 9, tzinfo=SHANGHAI)
    orders: list[tuple[str, str, str, str]] = []  # (erp id, crm ref, wms ref, tracking no)
    emitted = 0
    step = 0
    while emitted < n:
        now = (base + timedelta(milliseconds=step * 250)).isoformat(timespec="milliseconds")
        day = (base + timedelta(days=step // 80000)).strftime("%Y%m%d")
        erp_id = f"SO{day}{step % 80000 + 1:05d}"
        site = (1, 3, 5, 7)[step // 100000 % 4]
        orders.append(
            (
                erp_id,
                f"CS-{100000 + step}",
                f"WMS-{site}-{step % 100000:05d}",
                f"SF{7000000000000 + step}",
            )
        )
        customer = customers[step % len(customers)]
        picked = [
            (world.skus[(step * 7 + j * 13) % len(world.skus)], 1 + (step + j) % 6)
            for j in range(1 + step % 3)
        ]
        lines = [
            {"sku": sku, "qty": qty, "unit_price": cents / 100} for (sku, _, cents), qty in picked
        ]
        create = {
            "event_id": f"erp-{erp_id}-01",
            "source": "erp",
            "order_ref": erp_id,
            "status": "已下单" if step % 2 else "CREATED",
            "occurred_at": now,
            "order": {
                "customer_id": customer.customer_id,
                "customer_name": customer.name,
                "channel": _BENCH_CHANNELS[step % len(_BENCH_CHANNELS)],
                "lines": lines,
                "amount": sum(qty * cents for (_, _, cents), qty in picked) / 100,
                "currency": "CNY",
                "customer_phone": f"+86 {customer.phone}",
                "ship_to": customer.address,
                "vip": customer.vip,
                "priority": "rush" if rng.random() < 0.08 else "normal",
                "placed_at": now,
            },
        }
        yield "erp", erp_id.encode(), orjson.dumps(create)
        emitted += 1
        for behind, source, stage, linked in _BENCH_STEPS:
            if emitted >= n:
                return
            if behind > step:
                continue
            erp_ref, crm_ref, wms_ref, tracking_no = orders[step - behind]
            ref = {"erp": erp_ref, "crm": crm_ref, "wms": wms_ref, "logistics": tracking_no}[source]
            event: dict[str, Any] = {
                "event_id": f"{source}-{ref}-{stage}",
                "source": source,
                "order_ref": ref,
            }
            if linked and source != "erp":
                event["erp_order_id"] = erp_ref
            event["status"] = _BENCH_LABELS[source][stage][step % 2]
            event["occurred_at"] = now
            if source == "logistics":
                event["tracking"] = {
                    "carrier": "顺丰速运",
                    "tracking_no": tracking_no,
                    "location": "佛山南海集散中心",
                    "note": "快件已到达【佛山南海集散中心】",
                }
            yield source, ref.encode(), orjson.dumps(event)
            emitted += 1
        step += 1
    return


_BENCH_CHANNELS = ("website", "wechat", "douyin", "distributor_api", "pos", "excel")
_BENCH_LABELS = {
    "erp": {
        "confirmed": ("CONFIRMED", "已审核"),
        "allocated": ("ALLOCATED", "已配货"),
        "shipped": ("SHIPPED", "已发货"),
    },
    "crm": {
        "placed": ("NEW", "新建"),
        "confirmed": ("CONFIRMED", "已确认"),
        "allocated": ("PROCESSING", "处理中"),
        "shipped": ("SHIPPED", "已发货"),
    },
    "wms": {"received": ("RECEIVED", "已接单"), "pick": ("PICKING", "拣货中")},
    "logistics": {"pickup": ("PICKED_UP", "已揽收"), "hub_in": ("ARRIVED_AT_HUB", "已到达")},
}
