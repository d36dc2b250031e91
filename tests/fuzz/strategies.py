"""Hypothesis strategies for the fuzz: arbitrary JSON-ish values and bytes, valid change
events (contract §2) and mutations of them; `generated()` draws a seeded number of records.

Valid events get a fresh reference each (the order_ref drawn, behind a unique prefix), so
their fate is known (`fresh_fate`); arbitrary values can never be a change event (they lack
its required fields), so they must be dead-lettered; mutated events are only accounted for.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

from tests.fuzz.records import DEAD, LABELS, SOURCES, FuzzRecord, fresh_fate, nested

# Text as producers write it: any character but a lone surrogate (not UTF-8, so no producer
# can send one but as an escape, which the mutations write).
TEXT = st.characters(exclude_categories=("Cs",))
HOSTILE_TEXT = st.characters(codec=None)  # lone surrogates too


def _text(min_size: int = 0, max_size: int = 40, alphabet: Any = TEXT) -> Any:
    return st.text(alphabet, min_size=min_size, max_size=max_size)


def json_values(*, finite: bool = False, max_leaves: int = 8) -> Any:
    """Values as a JSON parser might give them; unless `finite`, with NaN and ±Infinity and
    any string a Python str can hold."""
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.integers(min_value=-(2**100), max_value=2**100),
        st.floats(allow_nan=not finite, allow_infinity=not finite),
        _text(alphabet=TEXT if finite else HOSTILE_TEXT),
    )
    return st.recursive(
        scalars,
        lambda inner: (
            st.lists(inner, max_size=4) | st.dictionaries(_text(max_size=12), inner, max_size=4)
        ),
        max_leaves=max_leaves,
    )


def _write_any(value: Any, ascii_only: bool, indent: int | None) -> bytes:
    # Python's json: NaN and Infinity as tokens; a lone surrogate as an escape, or as the bytes
    # UTF-8 has no place for.
    return json.dumps(value, ensure_ascii=ascii_only, indent=indent).encode(
        "utf-8", "surrogatepass"
    )


def arbitrary_records() -> Any:
    """Anything at all on a source topic: JSON-ish values, or bytes."""
    written = st.builds(_write_any, json_values(), st.booleans(), st.none() | st.integers(0, 4))
    return st.builds(
        lambda source, key, value: FuzzRecord("hypothesis/any", source, key, value, DEAD),
        st.sampled_from(SOURCES),
        st.none() | st.binary(max_size=64),
        written | st.binary(max_size=600),
    )


# --- valid change events ------------------------------------------------------------------

OFFSETS = [timezone(timedelta(minutes=m)) for m in (-720, -330, 0, 60, 345, 480, 840)]
FINITE = json_values(finite=True)
ANY = json_values()


def _times(now: datetime, within: timedelta) -> Any:
    # A plausible moment, written in one of the forms the schema takes.
    def write(seconds: float, offset: timezone, form: str) -> str | float | int:
        at = (now - timedelta(seconds=seconds)).astimezone(offset)
        if form == "iso":
            return at.isoformat()
        if form == "z":
            return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        return at.timestamp() if form == "seconds" else int(at.timestamp() * 1000)

    return st.builds(
        write,
        st.floats(0, within.total_seconds()),
        st.sampled_from(OFFSETS),
        st.sampled_from(["iso", "z", "seconds", "ms"]),
    )


AMOUNTS = st.decimals(min_value=0, max_value=Decimal(10**9), places=2).map(str)
LINE = st.fixed_dictionaries(
    {
        "sku": _text(1, 30),
        "qty": st.integers(1, 1000) | st.floats(1e-6, 1e6),
        "unit_price": AMOUNTS,
    },
    optional={"note": _text()},
)
TRACKING = st.fixed_dictionaries(
    {}, optional={k: _text() for k in ("carrier", "tracking_no", "location", "note")}
)
# A label of each source's map as producers vary it: case, padding.
STATUS = {
    source: st.sampled_from(labels).flatmap(
        lambda label: st.sampled_from([label, label.lower(), f" {label}\t", f"\u3000{label}"])
    )
    for source, labels in LABELS.items()
}


def valid_events(now: datetime) -> Any:
    """Valid change events (their order_ref to be made unique by `generated`)."""
    details = st.fixed_dictionaries(
        {
            "customer_id": _text(1, 30),
            "channel": st.sampled_from(["website", "wechat", "douyin", "pos"]) | _text(1, 20),
            "lines": st.lists(LINE, min_size=1, max_size=6),
            "amount": AMOUNTS,
            "currency": st.from_regex(r"\A[A-Z]{3}\Z"),
        },
        optional={
            "customer_phone": st.from_regex(r"\A\+86 1[3-9][0-9]{9}\Z") | _text(),
            "ship_to": _text(),
            "vip": st.booleans(),
            "priority": st.sampled_from(["rush", "normal"]),
            "placed_at": _times(now, timedelta(days=30)),
            "x_extra": FINITE,
        },
    )
    optional = {
        "tracking": TRACKING,
        "reason": _text(max_size=200),
        "attrs": st.dictionaries(_text(max_size=20), FINITE, max_size=5),
        "x_unknown": FINITE,
    }
    common = {
        "event_id": _text(1, 64),
        "order_ref": _text(0, 60),
        "occurred_at": _times(now, timedelta(days=30)),
    }

    def of(source: str) -> Any:
        with_details = source == "erp" or source == "crm"  # a CRM event may carry them too
        return st.fixed_dictionaries(
            {**common, "source": st.just(source), "status": STATUS[source]},
            optional={
                **optional,
                **({"order": details} if with_details else {}),
                **({} if source == "erp" else {"erp_order_id": _text(1, 60)}),
            },
        )

    return st.one_of(*(of(source) for source in SOURCES))


# --- mutations ----------------------------------------------------------------------------

FIELDS = [
    "event_id",
    "source",
    "order_ref",
    "erp_order_id",
    "status",
    "occurred_at",
    "order",
    "tracking",
    "reason",
    "attrs",
]


FIELD_NAMES = st.sampled_from(FIELDS) | _text(max_size=10)
MUTATIONS = st.sampled_from(["drop", "set", "rename", "time", "source", "nest", "status"])
BAD_SOURCES = st.sampled_from([*SOURCES, "ERP", "decisions", ""])
HOSTILE_STATUS = st.text(HOSTILE_TEXT, max_size=40)
NEST = "\x00nest\x00"  # around the depth of attrs nested by a mutation, until written
CENTURIES = st.floats(-700_000, 700_000)  # days from 2026: the first century to the 39th


def _mutate(draw: Any, event: dict[str, Any]) -> dict[str, Any]:
    # One change a producer's bug or an attacker might make to a valid event.
    event = dict(event)
    kind = draw(MUTATIONS)
    if kind in ("drop", "rename"):
        name = draw(st.sampled_from(sorted(event)))
        value = event.pop(name)
        if kind == "rename":
            event[name.upper()] = value
    elif kind == "set":
        event[draw(FIELD_NAMES)] = draw(ANY)
    elif kind == "time":
        at = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(days=draw(CENTURIES))
        event["occurred_at"] = at.isoformat() if draw(st.booleans()) else at.timestamp()
    elif kind == "source":
        event["source"] = draw(BAD_SOURCES)
    elif kind == "nest":  # written in place of this text (Python's json stops at ~1000)
        event["attrs"] = f"{NEST}{draw(st.integers(1, 1500))}{NEST}"
    else:
        event["status"] = draw(HOSTILE_STATUS)
    return event


_NESTED = re.compile(rb'"\\u0000nest\\u0000(\d+)\\u0000nest\\u0000"')


def _write_mutated(event: dict[str, Any], how: str, at: float, noise: bytes) -> bytes:
    # The mutated event written by a producer, then perhaps damaged on the way.
    raw = _write_any(event, how == "ascii", 2 if how == "pretty" else None)
    raw = _NESTED.sub(lambda m: nested(int(m.group(1))), raw)
    cut = int(at * len(raw))
    if how == "truncate":
        return raw[:cut]
    if how == "splice":
        return raw[:cut] + noise + raw[cut:]
    if how == "overwrite":
        return raw[:cut] + noise + raw[cut + len(noise) :]
    if how == "utf-16":
        return raw.decode("utf-8", "surrogatepass").encode("utf-16", "surrogatepass")
    return raw


WRITINGS = ["compact", "ascii", "pretty", "truncate", "splice", "overwrite", "utf-16"]


def mutated_events(now: datetime) -> Any:
    """Valid events with one to three mutations, each with how it is written (and damaged)."""
    valid = valid_events(now)

    @st.composite
    def mutated(draw: Any) -> tuple[dict[str, Any], Callable[[dict[str, Any]], bytes]]:
        event = draw(valid)
        for _ in range(draw(st.integers(1, 3))):
            event = _mutate(draw, event)
        how = draw(st.sampled_from(WRITINGS))
        at, noise = draw(st.floats(0, 1)), draw(st.binary(min_size=1, max_size=8))
        return event, lambda e: _write_mutated(e, how, at, noise)

    return mutated()


# --- drawing records ----------------------------------------------------------------------


def examples(strategy: Any, count: int, seed: int) -> list[Any]:
    """`count` values of `strategy`, the same for the same seed (fewer if it runs dry)."""
    found: list[Any] = []
    if count <= 0:
        return found

    @hypothesis_seed(seed)
    @settings(
        max_examples=count,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def collect(value: Any) -> None:
        found.append(value)

    collect()
    return found


def generated(now: datetime, seed: int, count: int) -> list[FuzzRecord]:
    """`count` records: a third arbitrary, a third valid events, a third mutated events."""
    share = count // 3
    out: list[FuzzRecord] = examples(arbitrary_records(), count - 2 * share, seed)
    for i, event in enumerate(examples(valid_events(now), share, seed + 1)):
        _unique(event, f"H{seed}v{i}")
        key = str(event["order_ref"]).encode()
        out.append(
            FuzzRecord(
                "hypothesis/valid",
                event["source"],
                key,
                _write_any(event, False, None),
                fresh_fate(event),
            )
        )
    for i, (event, write) in enumerate(examples(mutated_events(now), share, seed + 2)):
        _unique(event, f"H{seed}m{i}")
        source = event["source"] if event.get("source") in SOURCES else SOURCES[i % 4]
        key = str(event.get("order_ref", "")).encode()
        out.append(FuzzRecord("hypothesis/mutated", source, key, write(event), None))
    return out


def _unique(event: dict[str, Any], prefix: str) -> None:
    # A reference (and an ERP order) nobody else uses: the drawn text behind `prefix`.
    for name in ("order_ref", "erp_order_id"):
        if isinstance(event.get(name), str):
            event[name] = f"{prefix}:{event[name]}"[:128]
