"""ERP events before their order's details, on a shuffled day: held, followed, dead-lettered.

The scenario's day (concord.scenario) goes through ingest's rules in an arrival order where
every event comes up to `--shuffle` seconds after its event time (two ERP processes
publishing, a connector retry), so events of one order overtake each other. Ingest's
watermark (SourceTime over the source partitions, as the worker keeps it) expires what waited
`order_details_wait`. Everything forwarded is joined (OrderJoin) and compared with the join
of the same day in event-time order. Prints the counts as JSON.

    .venv/bin/python scripts/shuffled_feed.py [--orders 1800] [--shuffle 180] [--seed 7]
"""

from __future__ import annotations

import argparse
import json
import os
import random
from collections import Counter
from datetime import datetime, timedelta
from typing import Any

from aiokafka.partitioner import murmur2

from concord.broker import REPLAY_MAX_EVENT_AGE
from concord.scenario import ScenarioConfig, encode, generate
from schemas.privacy import PhoneHasher
from schemas.stages import Source
from schemas.status_map import default_status_map
from streams.rules.ghosts import TimerWheel
from streams.rules.ingest import (
    IngestRules,
    InputLimits,
    Origin,
    Outcome,
    RefState,
    Rejection,
    state_key,
)
from streams.rules.order_state import OrderJoin, OrderState
from streams.rules.watermark import SourceTime, as_us, from_us

PARTITIONS = 8


def run(arrival: list[dict[str, Any]], received: datetime) -> tuple[Counter[str], dict[str, Any]]:
    """Ingest and join `arrival` in that order: outcome counts and the joined order states."""
    rules = IngestRules(default_status_map(), limits=InputLimits(max_age=REPLAY_MAX_EVENT_AGE))
    clock: SourceTime[tuple[str, int]] = SourceTime()
    wheel = TimerWheel(max_entries=1 << 20)
    refs: dict[str, RefState] = {}
    orders: dict[str, OrderState] = {}
    join = OrderJoin(PhoneHasher(os.urandom(32)))
    counts: Counter[str] = Counter({"erp dead-lettered missing_order": 0})
    wall = as_us(received)
    held_refs: set[str] = set()

    def forward(bodies: list[tuple[str, dict[str, Any]]]) -> None:
        for order_id, body in bodies:
            join.apply(orders.setdefault(order_id, OrderState(order_id=order_id)), body)

    for offset, entry in enumerate(arrival):
        source, raw = encode(entry)
        event = rules.decode(raw, Source(source), received)
        assert not isinstance(event, Rejection), (event, raw)
        key = state_key(event.source, event.order_ref)
        partition = (murmur2(event.order_ref.encode()) & 0x7FFFFFFF) % PARTITIONS
        event_us = as_us(event.occurred_at)
        clock.observe_us((source, partition), event_us, wall)
        state = refs.setdefault(key, RefState())
        origin = Origin(partition, offset, event.order_ref.encode())
        applied = rules.apply(event, raw, state, received, event_us, origin=origin)
        counts[f"{source} {applied.outcome.value}"] += 1
        if applied.outcome is Outcome.HELD and state.waiting:
            held_refs.add(key)
            wheel.schedule_us(key, rules.details_deadline_us(state))
        elif applied.outcome is Outcome.ACCEPTED and key in wheel:
            counts["erp forwarded after its details"] += len(applied.forward) - 1
            wheel.cancel(key)
        forward(applied.forward)
        watermark = clock.value_us(wall)
        if watermark is None:
            continue
        while due := wheel.due(from_us(watermark)):
            for ref, _ in due:
                expired = rules.expire_waiting(refs[ref], watermark)
                counts["erp dead-lettered missing_order"] += len(expired)
                wheel.schedule_us(ref, rules.details_deadline_us(refs[ref]))
    counts["erp still waiting at the end"] = sum(len(s.waiting) for s in refs.values())
    counts["orders with an erp event before its details"] = len(held_refs)
    states = {}
    for order_id, state in orders.items():
        state.recent_ids = []  # the last ids applied, to name re-sends: arrival order by design
        states[order_id] = state.to_json()
    return counts, states


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--orders", type=int, default=1800)
    parser.add_argument("--shuffle", type=float, default=180.0, help="seconds, at most")
    args = parser.parse_args()

    events = generate(ScenarioConfig(seed=args.seed, orders=args.orders)).events
    times = {id(e): datetime.fromisoformat(e["occurred_at"]) for e in events}
    received = max(times.values()) + timedelta(seconds=args.shuffle + 60)
    rng = random.Random(args.seed)
    delay = {id(e): timedelta(seconds=rng.uniform(0, args.shuffle)) for e in events}
    shuffled = sorted(events, key=lambda e: times[id(e)] + delay[id(e)])
    in_time = sorted(events, key=lambda e: times[id(e)])

    counts, states = run(shuffled, received)
    _, want = run(in_time, received)
    differ = sum(states.get(o) != s for o, s in want.items()) + len(set(states) - set(want))
    report: dict[str, Any] = {
        "events": len(events),
        "orders joined": len(states),
        **dict(sorted(counts.items())),
        "orders joined differently from the event-time order": differ,
    }
    print(json.dumps(report, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
