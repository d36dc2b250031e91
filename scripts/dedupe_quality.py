"""Duplicate-order detection quality on a generated scenario the rules were not tuned to.

    python scripts/dedupe_quality.py [--seed 20261122] [--orders 1800]

Runs the sliding-window rules (streams.rules.dedupe) over every ERP order of the scenario
in publish order, and the common bucket-floor fingerprint (customer + SKU prefixes + order
time floored to 15 min) beside it, then scores both against the generator's labels.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from datetime import datetime

from concord.scenario import ScenarioConfig, generate
from schemas.events import ChangeEvent
from streams.rules.dedupe import DedupeRules, FingerprintWindow


def score(found: set[frozenset[str]], truth: set[frozenset[str]]) -> tuple[float, float]:
    tp = len(found & truth)
    precision = tp / len(found) if found else 1.0
    recall = tp / len(truth) if truth else 1.0
    return precision, recall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=20261122)
    parser.add_argument("--orders", type=int, default=1800)
    args = parser.parse_args()
    scenario = generate(ScenarioConfig(seed=args.seed, orders=args.orders))
    rules = DedupeRules()
    windows: dict[str, FingerprintWindow] = defaultdict(FingerprintWindow)
    buckets: dict[str, list[str]] = defaultdict(list)
    sliding: set[frozenset[str]] = set()
    floor: set[frozenset[str]] = set()
    seen: set[str] = set()
    for entry in scenario.events:
        if "_raw" in entry or entry["source"] != "erp" or "order" not in entry:
            continue
        event = ChangeEvent.model_validate(entry)
        assert event.order is not None
        assert event.erp_order_id is not None
        order_id = event.erp_order_id
        fp = rules.fingerprint(event.order)
        for pair in rules.observe(
            windows[fp],
            order_id,
            event.order,
            event_id=event.event_id,
            status=event.status,
            occurred_at=event.occurred_at,
        ):
            sliding.add(frozenset(pair.key))
        if order_id in seen:
            continue
        seen.add(order_id)
        placed: datetime = event.order.placed_at or event.occurred_at
        key = rules.bucket_floor_key(event.order, placed)
        for other in buckets[key]:
            floor.add(frozenset((other, order_id)))
        buckets[key].append(order_id)
    truth = scenario.labels.duplicate_pairs
    print(
        f"seed {args.seed}: {len(seen)} ERP orders, {len(truth)} labelled duplicate pairs, "
        f"{len(scenario.labels.lookalike_pairs)} look-alike pairs"
    )
    for name, found in (("sliding window", sliding), ("bucket floor", floor)):
        p, r = score(found, truth)
        print(f"{name:15s}: found {len(found):4d}  precision {p:.3f}  recall {r:.3f}")


if __name__ == "__main__":
    main()
