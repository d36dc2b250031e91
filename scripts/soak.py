"""Soak: one log through the real broker and worker under many schedules (SIGKILLs, a second
worker joining and leaving, paced or all at once); every run's anomalies and commands must
equal an uninterrupted run's.

    .venv/bin/python scripts/soak.py [--orders 400] [--hours 24] [--runs 10] [--max-kills 5]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from concord.broker import running_broker
from concord.scenario import ScenarioConfig, generate
from tests.schedules import Schedule, differences, run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=400)
    parser.add_argument("--hours", type=int, default=24)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--runs", type=int, default=10, help="faulty schedules after the reference")
    parser.add_argument("--max-kills", type=int, default=5)
    args = parser.parse_args()
    scenario = generate(
        ScenarioConfig(seed=args.seed, hours=args.hours, orders=args.orders, promo_peak=False)
    )
    # In event-time order: every event within the allowed lateness of its partition (a late
    # event is judged where event time stands when it arrives, which depends on timing).
    events = sorted(scenario.events, key=lambda e: datetime.fromisoformat(str(e["occurred_at"])))
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp, running_broker() as broker:
        bootstrap = f"{broker.host}:{broker.port}"

        def one(schedule: Schedule):
            prefix = f"s{uuid.uuid4().hex[:8]}"
            started = time.monotonic()
            outputs = run(broker.url, bootstrap, Path(tmp), prefix, events, schedule, log=print)
            print(
                f"{schedule.name}: {len(outputs.anomalies)} anomalies, {len(outputs.commands)} "
                f"commands, {outputs.repeats} repeats, {outputs.late_events:.0f} late events, "
                f"{time.monotonic() - started:.0f} s"
            )
            return outputs

        print(f"log: {len(events)} events, {args.orders} orders over {args.hours} h")
        reference = one(Schedule("reference"))
        failed = 0
        kills = 0
        for n in range(args.runs):
            kind = rng.choice(["kills", "kills", "second worker", "paced"])
            schedule = Schedule(
                f"run {n + 1} ({kind})",
                kills=rng.randint(1, args.max_kills) if kind == "kills" else 0,
                second_worker=kind == "second worker",
                chunks=8 if kind == "paced" else 1,
                seed=rng.randrange(1 << 30),
            )
            kills += schedule.kills
            problems = differences(reference, one(schedule))
            for line in problems[:20]:
                print("   ", line)
            if problems:
                failed += 1
                print(f"    {len(problems)} differences")
        print(f"{args.runs} schedules, {kills} SIGKILLs: {failed} disagreed with the reference")
        return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
