"""What each pure rule costs per event, on a scenario day, in one process (no broker).

    python scripts/bench_rules.py [--seed 7] [--orders 1800]

Runs the day's valid events through the rules the worker runs, in its order: ingest
(decode, status map, re-send check, crosswalk), the per-order join, refresh latency and
consistency, the ghost rules, the breaker's intake counts (the ERP's and the reserving
systems' events; the counts encoded whole every `SNAPSHOT_EVERY` events, as the per-order
stage sends them after a batch), and dedupe (fingerprint + sliding window, on ERP orders
only).
Prints µs per event for each and the share of the total, so the cost of one capability
(say, dedupe) reads next to the others measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import time
from collections import defaultdict
from datetime import UTC, datetime

import orjson

from concord.broker import REPLAY_MAX_EVENT_AGE
from concord.scenario import ScenarioConfig, encode, generate
from schemas.events import OrderDetails
from schemas.privacy import PhoneHasher
from schemas.stages import Source
from schemas.status_map import load_status_map
from streams.rules.consistency import ConsistencyTracker
from streams.rules.dedupe import DedupeRules, FingerprintWindow
from streams.rules.ghosts import GhostRules, GhostState
from streams.rules.ingest import (
    IngestRules,
    InputLimits,
    Origin,
    Outcome,
    RefState,
    Rejection,
    state_key,
)
from streams.rules.intake import DEFAULT_WINDOW, STOCK_SYSTEMS, IntakeCounts, intake_times
from streams.rules.order_state import OrderJoin, OrderState
from streams.rules.refresh_latency import LatencyWindow
from streams.rules.watermark import DEFAULT_ALLOWED_LATENESS, Watermark, as_us, from_us

# Events per snapshot of the intake counts: a batch of the per-order stage is at least one
# envelope (up to 500 events).
SNAPSHOT_EVERY = 500
INTAKE_SOURCES = frozenset({Source.ERP, *STOCK_SYSTEMS})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--orders", type=int, default=1800)
    args = parser.parse_args()

    scenario = generate(ScenarioConfig(seed=args.seed, orders=args.orders))
    raw = [encode(e) for e in scenario.events]
    ingest = IngestRules(load_status_map(None), limits=InputLimits(max_age=REPLAY_MAX_EVENT_AGE))
    join, ghosts, dedupe = OrderJoin(PhoneHasher(os.urandom(32))), GhostRules(), DedupeRules()
    latency, consistency = LatencyWindow(), ConsistencyTracker()
    watermark = Watermark()
    refs: dict[str, RefState] = {}
    orders: dict[str, OrderState] = {}
    books: dict[str, GhostState] = {}
    windows: dict[str, FingerprintWindow] = defaultdict(FingerprintWindow)
    intake = IntakeCounts()
    kept = DEFAULT_ALLOWED_LATENESS + DEFAULT_WINDOW  # the minutes a snapshot holds
    spent: dict[str, float] = defaultdict(float)
    wall = datetime.now(UTC)
    clock = time.perf_counter
    forwarded = placements = 0

    for offset, (source_name, value) in enumerate(raw):
        t = clock()
        event = ingest.decode(value, Source(source_name), wall)
        if isinstance(event, Rejection):
            spent["ingest"] += clock() - t
            continue
        key = state_key(event.source, event.order_ref)
        ref = refs.setdefault(key, RefState())
        applied = ingest.apply(event, value, ref, wall, origin=Origin(0, offset, None))
        spent["ingest"] += clock() - t
        if applied.outcome is not Outcome.ACCEPTED:
            continue
        for order_id, body in applied.forward:
            forwarded += 1
            t = clock()
            state = orders.setdefault(order_id, OrderState(order_id=order_id))
            counted = Source(body["source"]) in INTAKE_SOURCES
            had_intake = intake_times(state) if counted else None
            spent["intake"] += clock() - t

            t = clock()
            had_facts = state.facts is not None
            change = join.apply(state, body)
            spent["join"] += clock() - t

            t = clock()
            for obs in change.observations:
                latency.add(obs)
            consistency.apply(change)
            now = from_us(watermark.observe_us(as_us(change.event_time), as_us(wall)))
            spent["KPIs"] += clock() - t

            t = clock()
            if had_intake is not None:
                now_intake = intake_times(state)
                if now_intake != had_intake:
                    intake.move(had_intake.history(), now_intake.history())
            if forwarded % SNAPSHOT_EVERY == 0:
                intake.expire(now - kept)
                orjson.dumps(intake.to_json())
            spent["intake"] += clock() - t

            t = clock()
            book = books.setdefault(order_id, GhostState.new(order_id))
            ghosts.evaluate(state, book, now, wall)
            spent["ghosts"] += clock() - t

            if not had_facts and state.facts is not None and body.get("order"):
                placements += 1
                t = clock()
                details = OrderDetails.model_validate(body["order"])
                window = windows[dedupe.fingerprint(details)]
                dedupe.observe(
                    window,
                    order_id,
                    details,
                    event_id=body["event_id"],
                    status=body["status"],
                    occurred_at=change.event_time,
                    watermark=now,
                )
                spent["dedupe"] += clock() - t

    total = sum(spent.values())
    print(f"{len(raw)} events in, {forwarded} joined, {placements} orders deduped")
    for name, seconds in spent.items():
        per = 1e6 * seconds / len(raw)
        print(f"  {name:<7} {per:6.1f} µs/event  {100 * seconds / total:5.1f}% of the rules")
    print(f"  total   {1e6 * total / len(raw):6.1f} µs/event = {len(raw) / total:,.0f} events/s")
    sizes = [len(orjson.dumps(s.to_json())) for s in orders.values()]
    print(f"order state: {sum(sizes) / len(sizes):,.0f} bytes mean, {max(sizes):,} max")


if __name__ == "__main__":
    main()
