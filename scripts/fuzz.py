"""Fuzz: many hostile records through the embedded broker and a worker; every record must be
accounted for and the worker must live (issue 17; tests/integration/test_fuzz.py is the
suite's shorter run).

    .venv/bin/python scripts/fuzz.py [--records 100000] [--seed 17] [--drawn N]

Records: the seeded corpus of hostile classes (tests/fuzz/shapes.py, contents.py) and, a
third by default, Hypothesis's (tests/fuzz/strategies.py). Prints, per class, the records
sent, those ingest took (accepted, re-sends, held), those dead-lettered by reason and those
that missed the fate they were held to; then ingest's counts, the records unaccounted for,
whether the worker survived and how fast /health answered, and the errors in its log.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from concord.broker import running_broker
from tests.fuzz.corpus import corpus
from tests.fuzz.run import FuzzRun, fuzz
from tests.fuzz.strategies import generated
from tests.integration.harness import WorkerProcess, new_worker


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=17)
    parser.add_argument("--drawn", type=int, help="of them by Hypothesis (default a third)")
    args = parser.parse_args()
    drawn = args.records // 3 if args.drawn is None else args.drawn
    started = time.monotonic()

    def say(text: str) -> None:
        print(f"[{time.monotonic() - started:6.0f} s] {text}", flush=True)

    now = datetime.now(UTC)
    say(f"drawing {drawn:,} records with Hypothesis (seed {args.seed})")
    records = generated(now, args.seed, drawn)
    records += islice(corpus(now, args.seed), args.records - len(records))
    size = sum(r.size for r in records)
    say(f"{len(records):,} records, {size / 2**20:,.1f} MiB")
    with tempfile.TemporaryDirectory(prefix="concord-fuzz-") as tmp, running_broker() as broker:
        prefix = f"fuzz{uuid.uuid4().hex[:8]}"
        worker = new_worker(broker.url, Path(tmp), prefix, CONCORD_MAX_EVENT_AGE="P400D")
        worker.start()
        say(f"worker up; publishing to {prefix}.*.events")
        try:
            within = 120 + len(records) / 200
            run = fuzz(
                f"127.0.0.1:{broker.port}", prefix, worker, records, within=within, progress=say
            )
            health = _health(worker)
            log_errors = _errors(worker.log_path)
        finally:
            stopping = time.monotonic()
            code = worker.stop()
            stopped = time.monotonic() - stopping
    _report(run, health, log_errors)
    print(f"worker stopped by SIGTERM in {stopped:.1f} s (exit code {code})")
    say("done")
    return 0 if run.survived and not run.audit.problems and run.audit.unaccounted == 0 else 1


def _health(worker: WorkerProcess) -> str:
    # /health's answer and how long it took, or why there was none.
    begun = time.monotonic()
    try:
        status = httpx.get(worker.url("/health"), timeout=1.0).status_code
    except httpx.HTTPError as exc:
        return f"no answer within 1 s ({type(exc).__name__})"
    return f"{status} in {(time.monotonic() - begun) * 1000:.0f} ms"


def _errors(log: Path) -> Counter[str]:
    # The worker's ERROR and CRITICAL lines, counted by their message (numbers and paths out).
    found: Counter[str] = Counter()
    for line in log.read_text(errors="replace").splitlines():
        if "] [ERROR] " in line or "] [CRITICAL] " in line:
            message = line.split("] ", 3)[-1]
            found[re.sub(r"\d+|/\S+", "#", message)[:160]] += 1
    return found


def _report(run: FuzzRun, health: str, log_errors: Counter[str]) -> None:
    audit = run.audit
    reasons = sorted({r for fates in audit.fates.values() for r in fates} - {"taken"})
    print()
    print(f"{'class':48} {'sent':>7} {'taken':>7}  dead-lettered by reason{'':14} wrong")
    for kind in sorted(audit.fates):
        fates = audit.fates[kind]
        dead = ", ".join(f"{r} {fates[r]:,}" for r in reasons if fates[r])
        wrong = audit.wrong[kind] or ""
        print(f"{kind:48} {sum(fates.values()):>7,} {fates['taken']:>7,}  {dead:37} {wrong}")
    total: Counter[str] = Counter()
    for fates in audit.fates.values():
        total.update(fates)
    print()
    print(
        f"sent {audit.sent:,}; not dead-lettered at once {total['taken']:,}; dead letters: "
        + ", ".join(f"{r} {total[r]:,}" for r in reasons)
    )
    print("ingest counted: " + ", ".join(f"{o} {n:,}" for o, n in sorted(audit.counted.items())))
    print(f"unaccounted: {audit.unaccounted:,}; problems: {len(audit.problems)}")
    for problem in audit.problems[:20]:
        print(f"  {problem}")
    print(
        f"forwarded to concord.normalized {run.forwarded:,}; applied by the per-order stage "
        f"{run.joined:,.0f}"
    )
    print(f"worker survived: {'yes' if run.survived else 'NO'}; /health: {health}")
    print("worker log errors:" + ("" if log_errors else " none"))
    for message, n in log_errors.most_common(10):
        print(f"  {n:>5} × {message}")


if __name__ == "__main__":
    sys.exit(main())
