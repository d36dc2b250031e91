"""`concord demo`: the embedded pipeline end to end on one machine.

Starts the embedded broker and a worker (with embedded ClickHouse), replays a realistic
scenario day (planted bad inputs, duplicates, a promotion peak, every ghost type) through the
same path as `concord publish`, shows the KPIs live while the worker takes it, then compares
what the pipeline found with the scenario's ground truth, and keeps serving the metrics and
the order API until Ctrl-C (or --duration).
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from datetime import date, datetime
from pathlib import Path
from typing import Any

import orjson
from rich.live import Live
from rich.table import Table

from concord.broker import BrokerError, read_to_end, start_broker, worker_env
from concord.dashboard import Snapshot, fetch, render
from concord.publish import PublishReport, publish
from concord.scenario import (
    PLANT_TIMEZONE,
    Labels,
    ScenarioConfig,
    generate,
    write_jsonl,
    write_labels,
)
from concord.scorecard import ScorecardUnavailableError
from concord.scorecard import fetch as fetch_scorecard
from concord.scorecard import render as render_scorecard
from concord.terminal import console, progress_bar
from concord.worker_api import WorkerAPI
from schemas.anomalies import GHOST_TYPES
from schemas.settings import Settings
from streams.topics import TopicNames, ensure_topics

MARKER = ".concord-demo"
# What a previous demo left that the next must not mix with its own rows (the broker is in
# memory: its topics are gone, so this state is stale).
_STALE = ("clickhouse", "clickhouse-spill", "faust", "summary.json")


class DemoDirError(RuntimeError):
    """The data dir holds something that is not a demo's: the demo will not clear it."""


def fresh_data_dir(data_dir: Path) -> None:
    """Make `data_dir` ready for a new demo run, clearing what an earlier run left there.

    Only a dir the demo made (it carries a marker file) or an empty one is used, so pointing
    `--data-dir` at a worker's real data can never delete it.
    """
    if data_dir.exists() and any(data_dir.iterdir()) and not (data_dir / MARKER).exists():
        raise DemoDirError(
            f"{data_dir} is not empty and was not made by `concord demo`; "
            "give the demo a dir of its own (--data-dir)"
        )
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / MARKER).write_text("made by concord demo: cleared at the start of every run\n")
    for name in _STALE:
        path = data_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def run_demo(
    *,
    duration: float | None,
    orders: int,
    seed: int,
    speed: float | None,
    live: bool,
    web_port: int,
    data_dir: Path,
    api_token: str | None = None,
) -> int:
    """Run the demo; the exit code. With `api_token` its worker requires that token."""
    data_dir = data_dir.resolve()
    try:
        fresh_data_dir(data_dir)
    except DemoDirError as exc:
        console.print(f"[red]{exc}[/red]")
        return 2
    try:
        broker = start_broker(log_path=data_dir / "tansu.log")
    except BrokerError as exc:
        console.print(f"[red]{exc}[/red]")
        return 1
    settings = Settings(broker_url=broker.url, embedded_broker=True, data_dir=data_dir)
    # Replayed flat out, a source partition that sent nothing for 5 s has no more to send:
    # it stops holding event time back sooner than the live default of a minute.
    extra = {} if speed else {"source_idle_after": "PT5S"}
    if api_token:
        extra["api_token"] = api_token
    env = worker_env(broker.url, data_dir, web_port=web_port, timezone=PLANT_TIMEZONE, **extra)
    worker_log = (data_dir / "worker.log").open("wb")
    worker = subprocess.Popen(
        [sys.executable, "-m", "concord", "worker"],
        env=env,
        stdout=worker_log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    base_url = f"http://127.0.0.1:{web_port}"
    api = WorkerAPI(base_url, api_token)
    try:
        console.print(f"[bold]Concord demo[/bold] — broker {broker.url}, worker on {base_url}")
        config = ScenarioConfig(seed=seed, orders=orders, bad_inputs=60)
        scenario = generate(config)
        feed = data_dir / "scenario.jsonl"
        lines = write_jsonl(scenario, feed)
        write_labels(scenario.labels, data_dir / "scenario.labels.json")
        times = [
            datetime.fromisoformat(e["occurred_at"]) for e in scenario.events if "_raw" not in e
        ]
        day_end = max(times) - settings.allowed_lateness
        pace = "as fast as possible" if speed is None else f"at ×{speed:g}"
        console.print(
            f"scenario: {lines} change events of an auto-parts distributor's day, {pace} → {feed}"
        )

        sender = _Sender(settings, feed, speed)
        sender.start()
        final = _follow(api, sender, lines, day_end, worker, stop, live)
        if final is None:
            console.print(f"[red]the worker did not take the day; see {data_dir}/worker.log[/red]")
            return 1
        report = sender.report
        if report is not None and report.rejected:
            first = report.rejected[0]
            console.print(
                f"{len(report.rejected)} lines not sent (not routable to a topic), "
                f"e.g. line {first.line}: {first.error}"
            )
        console.print(render(final))
        found = asyncio.run(_anomalies(settings))
        scores = _against_labels(found, scenario.labels)
        console.print(_scores_table(scores))
        card = _scorecard(api, config.start.date())
        if card is not None:
            console.print(render_scorecard(card))
        summary = {
            "kpis": final.kpis,
            "scorecard": card,
            "commands": final.by("concord_commands_total", "kind"),
            "duplicates": final.total("concord_duplicates_total"),
            "dead_letters": final.by("concord_deadletter_total", "reason"),
            "late_events": final.by("concord_late_events_total", "source"),
            "against_labels": scores,
        }
        (data_dir / "summary.json").write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2))
        order_id = next(iter(sorted(scenario.labels.ghosts.get("status_conflict") or {"?"})))
        asks = " (asks for the API token once)" if api_token else ""
        console.print(
            f"\nsupport desk: {base_url}/desk{asks}   order 360: {base_url}/orders/{order_id}\n"
            f"KPIs: {base_url}/kpis   scorecard: {base_url}/scorecard   "
            f"metrics: {base_url}/metrics\n"
            f"topics on {broker.url}: concord.anomalies, concord.commands, concord.deadletter\n"
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
        console.print(
            f"stopped. Data and logs are in {data_dir}: worker.log, scenario.jsonl, "
            f"scenario.labels.json; ClickHouse (embedded) in {settings.data_dir / 'clickhouse'}"
        )


class _Sender(threading.Thread):
    """Publishes the scenario file in the background, counting what went out."""

    def __init__(self, settings: Settings, feed: Path, speed: float | None):
        super().__init__(name="demo-publisher", daemon=True)
        self.settings = settings
        self.feed = feed
        self.speed = speed
        self.sent = 0
        self.report: PublishReport | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        async def send() -> PublishReport:
            await ensure_topics(self.settings)
            return await publish(
                self.settings, [self.feed], validate=False, progress=self._count, speed=self.speed
            )

        try:
            self.report = asyncio.run(send())
        except BaseException as exc:  # reported by the main thread
            self.error = exc

    def _count(self, n: int) -> None:
        self.sent += n


def _follow(
    api: WorkerAPI,
    sender: _Sender,
    lines: int,
    day_end: datetime,
    worker: subprocess.Popen[bytes],
    stop: threading.Event,
    live: bool,
) -> Snapshot | None:
    """Follow the worker until it has taken the whole day; its last snapshot."""
    previous: Snapshot | None = None
    idle_deadline = time.monotonic() + 300

    settled: list[Any] = []

    def done(snap: Snapshot) -> bool:
        # Every event taken, event time at the day's end, and the figures still for 2 s.
        if sender.is_alive() or sender.report is None:
            return False
        wm = snap.kpis.get("watermark")
        taken = snap.total("concord_events_total") >= sender.report.total_sent
        if not (taken and wm is not None and datetime.fromisoformat(wm) >= day_end):
            return False
        figures = (snap.kpis["consistency"], snap.kpis["ghost_orders"], snap.metrics.count("\n"))
        settled.append(figures)
        return len(settled) >= 3 and settled[-1] == settled[-2] == settled[-3]

    def step() -> Snapshot | None:
        nonlocal previous, idle_deadline
        if worker.poll() is not None or sender.error is not None:
            raise RuntimeError(str(sender.error or "the worker stopped"))
        snap = fetch(api)
        if snap is not None:
            if previous is None or snap.total("concord_events_total") > previous.total(
                "concord_events_total"
            ):
                idle_deadline = time.monotonic() + 300
            previous = snap
        return snap

    try:
        if live:
            with Live(console=console, refresh_per_second=2, transient=False) as view:
                while not stop.is_set() and time.monotonic() < idle_deadline:
                    before = previous
                    snap = step()
                    if snap is not None:
                        view.update(render(snap, before))
                        if done(snap):
                            return snap
                    stop.wait(1.0)
            return None
        with progress_bar() as bar:
            task = bar.add_task("publishing and processing", total=lines)
            while not stop.is_set() and time.monotonic() < idle_deadline:
                snap = step()
                bar.update(task, completed=sender.sent)
                if snap is not None and done(snap):
                    return snap
                stop.wait(1.0)
        return None
    except RuntimeError as exc:
        console.print(f"[red]{exc}[/red]")
        return None


def _scorecard(api: WorkerAPI, day: date) -> dict[str, Any] | None:
    # The worker reads its own ClickHouse (an embedded one admits one process).
    try:
        card = fetch_scorecard(api, day=day.isoformat())
    except ScorecardUnavailableError as exc:
        console.print(f"[red]scorecard: {exc}[/red]")
        return None
    if card is None:
        console.print("[red]scorecard: no order placed that day[/red]")
    return card


async def _anomalies(settings: Settings) -> dict[str, dict[str, Any]]:
    """The latest lifecycle event of every anomaly ever published on the anomalies topic."""
    topic = TopicNames.from_settings(settings).anomalies
    latest: dict[str, dict[str, Any]] = {}
    for record in await read_to_end(settings.bootstrap_servers, [topic]):
        body = orjson.loads(record.value)
        latest[body["anomaly_id"]] = body
    return latest


def _scores_table(scores: dict[str, dict[str, int]]) -> Table:
    # Every anomaly raised during the day counts, not only what is open at its end: one
    # that opened and resolved on an order the scenario did not plant it on is a false alarm.
    table = Table(title="every anomaly raised vs the scenario's ground truth")
    table.add_column("what", no_wrap=True)
    for column in ("labelled", "raised", "false\nalarms", "open\nat end", "precision", "recall"):
        table.add_column(column, justify="right")
    for what, n in scores.items():
        precision = f"{n['hits'] / n['found']:.3f}" if n["found"] else "—"
        recall = f"{n['hits'] / n['labelled']:.3f}" if n["labelled"] else "—"
        counts = (str(n[k]) for k in ("labelled", "raised", "false", "open"))
        table.add_row(what, *counts, precision, recall)
    return table


def _against_labels(
    anomalies: dict[str, dict[str, Any]], labels: Labels
) -> dict[str, dict[str, int]]:
    """Every anomaly ever raised next to the scenario's ground truth, per kind: labelled
    (orders or pairs), raised (anomalies, resolved since or not), found (the orders or pairs
    they were raised on), hits (found and labelled), false (anomalies raised on what is not
    labelled: each a page that should never have gone out, however soon it resolved) and
    open (anomalies still open at the end)."""
    raised: dict[str, list[tuple[Any, bool]]] = defaultdict(list)
    ghost_types = {t.value for t in GHOST_TYPES}
    for a in anomalies.values():
        is_open = a["state"] == "open"
        if a["type"] == "duplicate_order":
            raised["duplicate pairs"].append((frozenset(a.get("order_ids") or ()), is_open))
        elif a["type"] in ghost_types:
            # An orphan names the ERP id it points to; the scenario, the system's own ref.
            names = {a.get("order_id") or "", *(a.get("refs") or {}).values()}
            truth = labels.ghosts.get(a["type"], set())
            name = next((n for n in sorted(names) if n in truth), min(names))
            raised[a["type"]].append((name, is_open))
    truths: dict[str, set[Any]] = {"duplicate pairs": set(labels.duplicate_pairs)}
    truths.update((t, set(orders)) for t, orders in sorted(labels.ghosts.items()))
    scores: dict[str, dict[str, int]] = {}
    for what, truth in truths.items():
        found = raised.get(what, [])
        names = {name for name, _ in found}
        scores[what] = {
            "labelled": len(truth),
            "raised": len(found),
            "found": len(names),
            "hits": len(names & truth),
            "false": sum(name not in truth for name, _ in found),
            "open": sum(is_open for _, is_open in found),
        }
    return scores
