"""`concord demo`: the embedded pipeline end to end on one machine.

Starts the embedded broker and a worker, publishes a realistic scenario day (with planted
bad inputs) through the same path as `concord publish`, waits until the worker has taken
every event, prints what was accepted and dead-lettered, and keeps serving /metrics until
Ctrl-C (or --duration).
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
from rich.table import Table

from concord.broker import BrokerError, start_broker, worker_env
from concord.publish import publish
from concord.scenario import ScenarioConfig, generate, write_jsonl, write_labels
from concord.terminal import console, progress_bar
from schemas.settings import Settings
from sinks.metrics import metric_samples
from streams.topics import ensure_topics


def run_demo(
    *,
    duration: float | None,
    orders: int,
    seed: int,
    web_port: int,
    data_dir: Path,
) -> int:
    """Run the demo; the exit code."""
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        broker = start_broker(log_path=data_dir / "tansu.log")
    except BrokerError as exc:
        console.print(f"[red]{exc}[/red]")
        return 1
    settings = Settings(broker_url=broker.url, embedded_broker=True, data_dir=data_dir)
    env = worker_env(broker.url, data_dir, web_port=web_port)
    worker_log = (data_dir / "worker.log").open("ab")
    worker = subprocess.Popen(
        [sys.executable, "-m", "concord", "worker"],
        env=env,
        stdout=worker_log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    metrics_url = f"http://127.0.0.1:{web_port}/metrics"
    try:
        console.print(f"[bold]Concord demo[/bold] — broker {broker.url}, worker on :{web_port}")
        scenario = generate(ScenarioConfig(seed=seed, orders=orders, bad_inputs=60))
        feed = data_dir / "scenario.jsonl"
        lines = write_jsonl(scenario, feed)
        write_labels(scenario.labels, data_dir / "scenario.labels.json")
        console.print(
            f"scenario: {lines} change events of an auto-parts distributor's day → {feed}"
        )

        async def send() -> int:
            await ensure_topics(settings)
            with progress_bar() as bar:
                task = bar.add_task("publishing", total=lines)
                report = await publish(
                    settings, [feed], validate=False, progress=lambda n: bar.advance(task, n)
                )
            if report.rejected:
                console.print(
                    f"{len(report.rejected)} lines rejected before sending (not routable), "
                    f"e.g. line {report.rejected[0].line}: {report.rejected[0].error}"
                )
            return report.total_sent

        sent = asyncio.run(send())
        text = _wait_for_worker(metrics_url, sent, worker, stop)
        if text is None:
            console.print(f"[red]the worker did not take every event; see {data_dir}/worker.log")
            return 1
        _summary(text)
        console.print(
            f"\nmetrics: {metrics_url}   data: {data_dir}\n"
            f"dead letters: topic concord.deadletter on {broker.url}\n"
            + ("Ctrl-C stops everything." if duration is None else f"stopping in {duration:.0f} s")
        )
        deadline = None if duration is None else time.monotonic() + duration
        while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
            if worker.poll() is not None:
                console.print("[red]the worker stopped[/red]")
                return 1
            stop.wait(0.5)
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        worker.terminate()
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
        worker_log.close()
        broker.stop()
        console.print(f"stopped. Data and logs are in {data_dir}")


def _wait_for_worker(
    url: str, total: int, worker: subprocess.Popen[bytes], stop: threading.Event
) -> str | None:
    with progress_bar() as bar:
        task = bar.add_task("processing", total=total)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not stop.is_set():
            if worker.poll() is not None:
                return None
            try:
                text = httpx.get(url, timeout=2).text
            except httpx.HTTPError:
                stop.wait(0.5)
                continue
            done = sum(metric_samples(text, "concord_events_total").values())
            bar.update(task, completed=done)
            if done >= total:
                return text
            stop.wait(0.5)
    return None


def _summary(text: str) -> None:
    events = metric_samples(text, "concord_events_total")
    outcomes = ["accepted", "held", "duplicate", "rejected"]
    table = Table(title="ingest")
    table.add_column("source")
    for outcome in outcomes:
        table.add_column(outcome, justify="right")
    for source in ["erp", "crm", "wms", "logistics"]:
        row = [int(events.get((("outcome", o), ("source", source)), 0)) for o in outcomes]
        table.add_row(source, *map(str, row))
    console.print(table)
    dead = metric_samples(text, "concord_deadletter_total")
    reasons = Table(title="dead letters")
    reasons.add_column("reason")
    reasons.add_column("count", justify="right")
    for labels, n in sorted(dead.items()):
        reasons.add_row(dict(labels)["reason"], str(int(n)))
    console.print(reasons)
