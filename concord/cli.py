"""The `concord` command."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import threading
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from concord.terminal import console, progress_bar
from schemas.settings import Settings, SettingsError, load_settings

cli = typer.Typer(
    help="Concord: order-flow consistency across ERP, CRM, WMS and carrier tracking.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

ConfigOpt = Annotated[
    Path | None, typer.Option("--config", "-c", help="YAML settings file (CONCORD_CONFIG)")
]
BrokerOpt = Annotated[
    str | None, typer.Option("--broker", help="Broker URL, e.g. kafka://127.0.0.1:9092")
]
TokenOpt = Annotated[
    str | None,
    typer.Option(
        "--token",
        envvar="CONCORD_API_TOKEN",
        show_envvar=True,
        help="The worker's API token, if it has one (better in the environment than here)",
    ),
]


def _settings(config: Path | None, **overrides: Any) -> Settings:
    try:
        return load_settings(config, **{k: v for k, v in overrides.items() if v is not None})
    except SettingsError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc


@cli.command()
def broker(
    port: Annotated[int, typer.Option(help="Port to listen on (loopback)")] = 9092,
    host: Annotated[str, typer.Option(help="Address to listen on")] = "127.0.0.1",
) -> None:
    """Run the embedded Kafka-protocol broker (tansu, in-memory) until Ctrl-C or SIGTERM."""
    from concord.broker import BrokerError, start_broker

    try:
        running = start_broker(port, host)
    except BrokerError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc
    console.print(
        f"broker ready on [bold]{running.url}[/bold] (in-memory; set "
        "CONCORD_BROKER_URL and CONCORD_EMBEDDED_BROKER=true for workers). Ctrl-C stops it."
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.is_set() and running.process.poll() is None:
            stop.wait(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        running.stop()
    code = running.process.returncode
    console.print(f"broker stopped (exit {code})")


@cli.command()
def worker(
    config: ConfigOpt = None,
    broker_url: BrokerOpt = None,
    web_port: Annotated[
        int | None, typer.Option(help="Web server port (each worker its own)")
    ] = None,
    embedded: Annotated[
        bool | None, typer.Option("--embedded/--kafka", help="Broker is the embedded tansu")
    ] = None,
) -> None:
    """Run a pipeline worker (Faust): ingest, and serve /metrics and the order API."""
    settings = _settings(config, broker_url=broker_url, web_port=web_port, embedded_broker=embedded)
    from streams.runner import run_worker

    try:
        run_worker(settings)
    except SettingsError as exc:  # e.g. a non-loopback web host without an API token
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc


@cli.command()
def publish(
    files: Annotated[list[Path], typer.Argument(help="JSONL or CSV files of change events")],
    config: ConfigOpt = None,
    broker_url: BrokerOpt = None,
    validate: Annotated[
        bool, typer.Option("--validate/--no-validate", help="Reject invalid events locally")
    ] = True,
    speed: Annotated[
        float | None,
        typer.Option(min=0.001, help="Pace by event time: 1 = real time, 60 = an hour a minute"),
    ] = None,
) -> None:
    """Publish change events to their source topics (the topic follows `source`)."""
    from concord.publish import publish as do_publish
    from streams.topics import ensure_topics

    settings = _settings(config, broker_url=broker_url)
    missing = [f for f in files if not f.is_file()]
    if missing:
        console.print(f"[red]no such file: {', '.join(map(str, missing))}[/red]")
        raise typer.Exit(2)
    total = sum(1 for f in files for _ in f.open("rb"))

    async def run() -> Any:
        await ensure_topics(settings)
        with progress_bar() as bar:
            task = bar.add_task("publishing", total=total)
            return await do_publish(
                settings,
                files,
                validate=validate,
                progress=lambda n: bar.advance(task, n),
                speed=speed,
            )

    report = asyncio.run(run())
    table = Table(title="published")
    table.add_column("source")
    table.add_column("sent", justify="right")
    for source, n in sorted(report.sent.items()):
        table.add_row(source, str(n))
    table.add_row("[bold]total[/bold]", f"[bold]{report.total_sent}[/bold]")
    console.print(table)
    if report.rejected:
        console.print(f"[yellow]{len(report.rejected)} rejected locally:[/yellow]")
        for r in report.rejected[:50]:
            console.print(f"  {r.path}:{r.line}: {r.error}")
        if len(report.rejected) > 50:
            console.print(f"  … and {len(report.rejected) - 50} more")
        raise typer.Exit(1)


@cli.command()
def schema(
    out: Annotated[
        Path | None, typer.Option(help="Write one <Model>.schema.json per model into this dir")
    ] = None,
) -> None:
    """Print (or write) the JSON Schema of the public models, generated from the code."""
    from schemas.public import json_schemas

    schemas = json_schemas()
    if out is None:
        sys.stdout.write(json.dumps(schemas, indent=2, ensure_ascii=False) + "\n")
        return
    out.mkdir(parents=True, exist_ok=True)
    for name, body in schemas.items():
        (out / f"{name}.schema.json").write_text(
            json.dumps(body, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )
    console.print(f"wrote {len(schemas)} schemas to {out}")


@cli.command()
def demo(
    duration: Annotated[
        float | None,
        typer.Option(help="Stop this many seconds after the day is through (default: Ctrl-C)"),
    ] = None,
    orders: Annotated[int, typer.Option(min=50, help="ERP orders in the scenario day")] = 1800,
    seed: Annotated[int, typer.Option(help="Scenario seed")] = 7,
    speed: Annotated[
        float | None,
        typer.Option(
            min=0.001,
            help="Replay pace: 1 = real time, 60 = an hour a minute; default as fast as possible",
        ),
    ] = None,
    live: Annotated[
        bool | None,
        typer.Option("--live/--no-live", help="Live terminal view (default: on a terminal)"),
    ] = None,
    web_port: Annotated[int, typer.Option(help="Worker web port")] = 6066,
    token: TokenOpt = None,
    data_dir: Annotated[Path, typer.Option(help="Where the demo keeps its data")] = Path(
        ".concord/demo"
    ),
) -> None:
    """Run everything locally: embedded broker, a worker, and a realistic scenario feed."""
    from concord.demo import run_demo

    raise typer.Exit(
        run_demo(
            duration=duration,
            orders=orders,
            seed=seed,
            speed=speed,
            live=console.is_terminal if live is None else live,
            web_port=web_port,
            api_token=token,
            data_dir=data_dir,
        )
    )


@cli.command()
def status(
    url: Annotated[str, typer.Option(help="A worker's web address")] = "http://127.0.0.1:6066",
    token: TokenOpt = None,
) -> None:
    """Show a running worker's KPIs, breaker, ghosts and duplicates."""
    from concord.dashboard import fetch, render
    from concord.worker_api import WorkerAPI

    snap = fetch(WorkerAPI(url, token))
    if snap is None:
        console.print(f"[red]no worker answers at {url} (or it refused the token)[/red]")
        raise typer.Exit(1)
    console.print(render(snap))


@cli.command()
def scorecard(
    day: Annotated[
        str | None, typer.Option(help="The day to score, YYYY-MM-DD (default: the newest)")
    ] = None,
    tz: Annotated[
        str | None, typer.Option("--tz", help="Time zone of the day (default: settings)")
    ] = None,
    url: Annotated[
        str | None,
        typer.Option(help="Ask a running worker (e.g. http://127.0.0.1:6066) instead"),
    ] = None,
    token: TokenOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the card as JSON")] = False,
    config: ConfigOpt = None,
    data_dir: Annotated[
        Path | None, typer.Option(help="Data dir of an embedded ClickHouse (e.g. .concord/demo)")
    ] = None,
) -> None:
    """Score a day's order health from ClickHouse: five dimensions 1–5, band, hard figures."""
    from datetime import date

    from concord.scorecard import ScorecardUnavailableError, fetch, render
    from concord.worker_api import WorkerAPI
    from sinks.clickhouse import EnginePathError, connect_settings
    from sinks.scorecard import scorecard_for

    settings = _settings(config, data_dir=data_dir, timezone=tz)
    try:
        wanted = None if day is None else date.fromisoformat(day)
    except ValueError as exc:
        console.print(f"[red]--day wants YYYY-MM-DD, got {day!r}[/red]")
        raise typer.Exit(2) from exc
    card: dict[str, Any] | None
    if url is not None:
        try:
            card = fetch(WorkerAPI(url, token), day=day, tz=settings.timezone, timeout=30)
        except ScorecardUnavailableError as exc:
            console.print(f"[red]{exc}[/red]")
            raise typer.Exit(1) from exc
    else:
        try:
            card = scorecard_for(connect_settings(settings), wanted, settings.timezone)
        except EnginePathError as exc:
            console.print(f"[red]{exc}[/red]")
            raise typer.Exit(2) from exc
    if card is None:
        console.print("[yellow]no order placed yet: nothing to score[/yellow]")
        raise typer.Exit(1)
    if as_json:
        print(json.dumps(card, ensure_ascii=False, indent=2))
    else:
        console.print(render(card))


@cli.command()
def alerts(
    config: ConfigOpt = None,
    broker_url: BrokerOpt = None,
    alertmanager: Annotated[
        str | None, typer.Option(help="Alertmanager base URL, e.g. http://127.0.0.1:9093")
    ] = None,
    webhook: Annotated[
        str | None, typer.Option(help="Chat-robot webhook URL (JSON POST per anomaly)")
    ] = None,
    from_start: Annotated[
        bool, typer.Option("--from-start", help="Begin at the oldest anomaly, not new ones")
    ] = False,
) -> None:
    """Print anomalies as they happen; forward them to Alertmanager and/or a webhook."""
    from concord.alerts import forward

    settings = _settings(config, broker_url=broker_url)

    def show(anomaly: dict[str, Any]) -> None:
        colour = {"critical": "red", "warning": "yellow"}.get(anomaly["severity"], "white")
        state = "resolved" if anomaly["state"] == "resolved" else anomaly["severity"]
        console.print(
            f"[{colour}]{state:<8}[/{colour}] {anomaly['type']:<18} "
            f"→ {anomaly['route']['team']:<16} {anomaly.get('summary', '')}"
        )

    async def run() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        return await forward(
            settings,
            alertmanager=alertmanager,
            webhook=webhook,
            from_start=from_start,
            on_anomaly=show,
            stop=stop,
        )

    handled = asyncio.run(run())
    console.print(f"{handled} anomalies handled")


@cli.command()
def query(
    name: Annotated[str | None, typer.Argument(help="A saved query; omit to list them")] = None,
    param: Annotated[
        list[str] | None, typer.Option("--param", "-p", help="NAME=VALUE, e.g. days=7")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print rows as JSON objects")] = False,
    config: ConfigOpt = None,
    data_dir: Annotated[
        Path | None, typer.Option(help="Data dir of an embedded ClickHouse (e.g. .concord/demo)")
    ] = None,
) -> None:
    """Run a saved ClickHouse query and print a table (embedded: while no worker holds it)."""
    from sinks.clickhouse import EnginePathError, connect_settings
    from sinks.queries import QUERIES, run_query

    if name is None:
        listing = Table(title="saved queries (concord query NAME [-p key=value])")
        listing.add_column("name")
        listing.add_column("parameters")
        listing.add_column("what it answers")
        for q in QUERIES.values():
            defaults = ", ".join(f"{k}={v}" for k, v in q.params.items())
            listing.add_row(q.name, defaults, q.description)
        console.print(listing)
        return
    params: dict[str, str] = {}
    for item in param or []:
        key, sep, value = item.partition("=")
        if not sep:
            console.print(f"[red]--param wants NAME=VALUE, got {item!r}[/red]")
            raise typer.Exit(2)
        params[key.strip()] = value.strip()
    settings = _settings(config, data_dir=data_dir)
    try:
        columns, rows = run_query(connect_settings(settings), name, **params)
    except (ValueError, EnginePathError) as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc
    if as_json:
        print(json.dumps([dict(zip(columns, row, strict=True)) for row in rows], default=str))
        return
    table = Table(title=f"{name} ({len(rows)} rows)")
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*("" if v is None else str(v) for v in row))
    console.print(table)


def main() -> None:
    """Entry point of the `concord` console script."""
    cli()
