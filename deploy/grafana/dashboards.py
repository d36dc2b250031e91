"""Concord's Grafana dashboards, generated with grafana-foundation-sdk (never hand-edited JSON).

    python -m deploy.grafana.dashboards          # write dashboards/*.json
    python -m deploy.grafana.dashboards --check  # exit 1 if the committed JSON is stale

Two boards:

- **Concord / Operations** (Prometheus): the three KPIs of contract §4 against their bars,
  the breaker, ghosts, open anomalies, intake, lag, silent sources, the ClickHouse backlog.
- **Concord / Analysis** (ClickHouse, the official `grafana-clickhouse-datasource` plugin):
  the saved queries of `sinks/queries.py` as tables (same SQL, so `concord query NAME` and
  the board agree), plus charts over the dashboard's time range.

Metric names come from `sinks/metrics.py`, table names from `sinks/clickhouse.py`;
tests/unit/test_deploy.py checks both, and that the JSON here is what this file generates.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import bargauge, common, stat, statetimeline, table, timeseries
from grafana_foundation_sdk.builders import dashboard as board
from grafana_foundation_sdk.builders import prometheus as prom
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as common_models
from grafana_foundation_sdk.models import dashboard as models

from schemas.anomalies import GHOST_TYPES
from sinks.queries import QUERIES

HERE = Path(__file__).resolve().parent
DASHBOARD_DIR = HERE / "dashboards"

# Fixed data-source uids: provisioning/datasources/concord.yaml creates them with these uids.
PROMETHEUS_UID = "concord-prometheus"
CLICKHOUSE_UID = "concord-clickhouse"
CLICKHOUSE_PLUGIN = "grafana-clickhouse-datasource"
PROMETHEUS = models.DataSourceRef(type_val="prometheus", uid=PROMETHEUS_UID)
CLICKHOUSE = models.DataSourceRef(type_val=CLICKHOUSE_PLUGIN, uid=CLICKHOUSE_UID)

# The bars of contract §4.
LATENCY_BAR_SECONDS = 15 * 60
CONSISTENCY_BAR = 0.92
AUTO_ROUTING_BAR = 0.65
BREAKER_FAILURE_BAR = 0.08

TAGS = ["concord"]


# --- ClickHouse queries ------------------------------------------------------------------
# The SDK ships no builder for the ClickHouse plugin; a data query is any object with
# `to_json`, so this mirrors the plugin's SQL-editor query model (editorType "sql",
# format 0 = time series, 1 = table).


class ClickHouseQuery(cogvariants.Dataquery):
    """A raw-SQL query of the grafana-clickhouse-datasource plugin."""

    def __init__(self, raw_sql: str, ref_id: str, *, time_series: bool) -> None:
        self.raw_sql = raw_sql
        self.ref_id = ref_id
        self.time_series = time_series

    def to_json(self) -> dict[str, object]:
        """The target as the plugin stores it in a dashboard."""
        return {
            "datasource": CLICKHOUSE.to_json(),
            "editorType": "sql",
            "format": 0 if self.time_series else 1,
            "rawSql": self.raw_sql,
            "refId": self.ref_id,
        }


class ClickHouseSQL(cogbuilder.Builder[ClickHouseQuery]):
    """Builder for `ClickHouseQuery`, usable wherever the SDK takes a data query."""

    def __init__(self, raw_sql: str, *, ref_id: str = "A", time_series: bool = False) -> None:
        self._query = ClickHouseQuery(raw_sql.strip(), ref_id, time_series=time_series)

    def build(self) -> ClickHouseQuery:
        """The query."""
        return self._query


# Grafana variables that stand in for the saved queries' parameters.
_PARAM_VARIABLES = {"days": "${days}", "hours": "${hours}"}
_TABLE_REF = re.compile(r"\b(FROM|JOIN)\s+([A-Za-z_][A-Za-z0-9_]*)\b")
_PARAM = re.compile(r"\{(\w+):\w+\}")


def saved_query_sql(name: str) -> str:
    """A saved query's SQL for Grafana: tables qualified by ${database}, params as variables.

    `days` and `hours` become dashboard variables; other parameters (`limit`) take the saved
    query's default.
    """
    query = QUERIES[name]

    def param(match: re.Match[str]) -> str:
        key = match.group(1)
        return _PARAM_VARIABLES.get(key) or str(query.params[key])

    sql = _PARAM.sub(param, query.sql)
    return _TABLE_REF.sub(lambda m: f"{m.group(1)} ${{database}}.{m.group(2)}", sql).strip()


_GHOSTS_SQL = ", ".join(f"'{t.value}'" for t in sorted(GHOST_TYPES))


# --- panel helpers -----------------------------------------------------------------------


@dataclass
class _Row:
    title: str
    panels: list[cogbuilder.Builder[models.Panel]] = field(default_factory=list)


def _ids() -> Iterator[int]:
    n = 0
    while True:
        n += 1
        yield n


def _thresholds(base: str, *steps: tuple[float, str]) -> board.ThresholdsConfig:
    return (
        board.ThresholdsConfig()
        .mode(models.ThresholdsMode.ABSOLUTE)
        .steps(
            [models.Threshold(value=None, color=base)]
            + [models.Threshold(value=v, color=c) for v, c in steps]
        )
    )


def _promql(
    expr: str, legend: str = "", *, ref: str = "A", instant: bool = False
) -> prom.Dataquery:
    query = prom.Dataquery().expr(expr).ref_id(ref).legend_format(legend or "__auto")
    return query.instant() if instant else query.range()


def _reduce_last() -> common.ReduceDataOptions:
    return common.ReduceDataOptions().calcs(["lastNotNull"]).values(False)


def _legend_table(*calcs: str) -> common.VizLegendOptions:
    return (
        common.VizLegendOptions()
        .display_mode(common_models.LegendDisplayMode.TABLE)
        .placement(common_models.LegendPlacement.BOTTOM)
        .show_legend(True)
        .calcs(list(calcs))
    )


def _kpi_stat(
    title: str,
    description: str,
    expr: str,
    legend: str,
    *,
    unit: str,
    thresholds: board.ThresholdsConfig,
    minmax: tuple[float, float] | None = None,
) -> stat.Panel:
    panel = (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(PROMETHEUS)
        .with_target(_promql(expr, legend, instant=True))
        .unit(unit)
        .thresholds(thresholds)
        .color_scheme(board.FieldColor().mode(models.FieldColorModeId.THRESHOLDS))
        .color_mode(common_models.BigValueColorMode.BACKGROUND)
        .graph_mode(common_models.BigValueGraphMode.NONE)
        .reduce_options(_reduce_last())
        .height(5)
        .span(6)
    )
    if minmax is not None:
        panel = panel.min(minmax[0]).max(minmax[1])
    return panel


def _series(
    title: str,
    description: str,
    targets: Sequence[cogbuilder.Builder[cogvariants.Dataquery]],
    *,
    unit: str = "short",
    datasource: models.DataSourceRef = PROMETHEUS,
    span: int = 12,
    height: int = 8,
    stacked: bool = False,
    bar: board.ThresholdsConfig | None = None,
    bars: bool = False,
) -> timeseries.Panel:
    """A time series; `bar` draws the contract's bar as a dashed threshold line."""
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(datasource)
        .targets(list(targets))
        .unit(unit)
        .line_width(1)
        .fill_opacity(20 if stacked else 5)
        .span(span)
        .height(height)
        .legend(_legend_table("lastNotNull", "max"))
    )
    if stacked:
        panel = panel.stacking(common.StackingConfig().mode(common_models.StackingMode.NORMAL))
    if bars:
        panel = panel.draw_style(common_models.GraphDrawStyle.BARS)
    if bar is not None:
        panel = (
            panel.thresholds(bar)
            .color_scheme(board.FieldColor().mode(models.FieldColorModeId.PALETTE_CLASSIC))
            .thresholds_style(
                common.GraphThresholdsStyleConfig().mode(
                    common_models.GraphThresholdsStyleMode.DASHED
                )
            )
        )
    return panel


def _sql_table(title: str, description: str, sql: str, *, height: int = 9) -> table.Panel:
    return (
        table.Panel()
        .title(title)
        .description(description)
        .datasource(CLICKHOUSE)
        .with_target(ClickHouseSQL(sql))
        .span(24)
        .height(height)
        .filterable(True)
    )


def _number(panel: Any, ids: Iterator[int]) -> Any:
    # Stable ids: without them Grafana numbers panels itself on every import.
    return panel.id(next(ids))


# --- the boards --------------------------------------------------------------------------


def operations_board() -> board.Dashboard:
    """Concord / Operations: KPIs against their bars and the pipeline's health (Prometheus)."""
    ids = _ids()
    consistency = (
        "sum(concord_consistency_ratio * concord_consistency_population_orders)"
        " / sum(concord_consistency_population_orders)"
    )
    breaker_mappings: list[models.ValueMapping] = [
        models.ValueMap(
            options={
                "0": models.ValueMappingResult(text="0 normal", color="green", index=0),
                "1": models.ValueMappingResult(text="1 warn", color="yellow", index=1),
                "2": models.ValueMappingResult(text="2 throttle", color="orange", index=2),
                "3": models.ValueMappingResult(text="3 fallback", color="red", index=3),
            }
        )
    ]
    silent_mappings: list[models.ValueMapping] = [
        models.ValueMap(
            options={
                "0": models.ValueMappingResult(text="flowing", color="green", index=0),
                "1": models.ValueMappingResult(text="silent", color="red", index=1),
            }
        )
    ]

    kpis = _Row("KPIs against their bars (contract §4)")
    for panel in (
        _kpi_stat(
            "Refresh latency median, 1 h (bar 15 min)",
            "KPI 1: median time for an ERP phase change to reach each target system, over the "
            "last hour of event time (exact, per target; the slowest worker's share when there "
            "are several). Red at or above 15 minutes.",
            'max by (target) (concord_status_refresh_latency_exact_seconds{quantile="0.5",'
            'window="1h"})',
            "{{target}}",
            unit="s",
            thresholds=_thresholds("green", (LATENCY_BAR_SECONDS, "red")),
        ),
        _kpi_stat(
            "Consistency ratio (bar 92%)",
            "KPI 2: consistent orders / orders in the population at the watermark, weighted "
            "by each worker's population. Below 92% ghost orders exist.",
            consistency,
            "consistency",
            unit="percentunit",
            thresholds=_thresholds("red", (CONSISTENCY_BAR, "green")),
            minmax=(0, 1),
        ),
        _kpi_stat(
            "Auto-routing ratio (bar 65%)",
            "KPI 3: share of anomalies opened in the window that a routing rule sent to a "
            "team (the rest fell to the manual queue). Below 65% people sort by hand.",
            "avg(concord_auto_routing_ratio)",
            "auto-routing",
            unit="percentunit",
            thresholds=_thresholds("red", (AUTO_ROUTING_BAR, "green")),
            minmax=(0, 1),
        ),
        _kpi_stat(
            "Breaker stage",
            "Intake breaker (contract §7): 0 normal, 1 warn, 2 throttle (VIP-only intake), "
            "3 fallback.",
            "max(concord_breaker_stage)",
            "stage",
            unit="none",
            thresholds=_thresholds("green", (1, "yellow"), (2, "orange"), (3, "red")),
        ).mappings(breaker_mappings),
    ):
        kpis.panels.append(_number(panel, ids))

    latency = _Row("Status-refresh latency")
    for panel in (
        _series(
            "Refresh latency per target (histogram, p50 and p95)",
            "Quantiles of concord_status_refresh_latency_seconds over the rate window, across "
            "all workers. Dashed line: the 15-minute bar.",
            [
                _promql(
                    "histogram_quantile(0.5, sum by (target, le) "
                    "(rate(concord_status_refresh_latency_seconds_bucket[$__rate_interval])))",
                    "{{target}} p50",
                ),
                _promql(
                    "histogram_quantile(0.95, sum by (target, le) "
                    "(rate(concord_status_refresh_latency_seconds_bucket[$__rate_interval])))",
                    "{{target}} p95",
                    ref="B",
                ),
            ],
            unit="s",
            bar=_thresholds("green", (LATENCY_BAR_SECONDS, "red")),
        ),
        _series(
            "Refresh latency per target (exact, event-time windows)",
            "The exact median and p95 each worker computes over the last 1 h and 24 h of "
            "event time (contract §4.1). Dashed line: the 15-minute bar.",
            [
                _promql(
                    "max by (target, window, quantile) "
                    "(concord_status_refresh_latency_exact_seconds)",
                    "{{target}} q{{quantile}} {{window}}",
                )
            ],
            unit="s",
            bar=_thresholds("green", (LATENCY_BAR_SECONDS, "red")),
        ),
    ):
        latency.panels.append(_number(panel, ids))

    anomalies = _Row("Consistency, routing and anomalies")
    for panel in (
        _series(
            "Consistency ratio over time",
            "KPI 2 against its 92% bar (dashed).",
            [_promql(consistency, "consistency")],
            unit="percentunit",
            span=12,
            height=7,
            bar=_thresholds("red", (CONSISTENCY_BAR, "green")),
        ),
        _series(
            "Auto-routing ratio over time",
            "KPI 3 against its 65% bar (dashed).",
            [_promql("avg(concord_auto_routing_ratio)", "auto-routing")],
            unit="percentunit",
            span=12,
            height=7,
            bar=_thresholds("red", (AUTO_ROUTING_BAR, "green")),
        ),
        _series(
            "Ghost orders by type",
            "Orders with an open missing_in_system, orphan_order, status_conflict or "
            "stalled_tracking anomaly, now.",
            [_promql("sum by (type) (concord_ghost_orders)", "{{type}}")],
            stacked=True,
        ),
        bargauge.Panel()
        .title("Open anomalies by type and team")
        .description("Open anomalies now, by type and the team they were routed to.")
        .datasource(PROMETHEUS)
        .with_target(
            _promql(
                "sum by (type, team) (concord_open_anomalies)",
                "{{type}} → {{team}}",
                instant=True,
            )
        )
        .orientation(common_models.VizOrientation.HORIZONTAL)
        .display_mode(common_models.BarGaugeDisplayMode.BASIC)
        .reduce_options(_reduce_last())
        .unit("short")
        .span(12)
        .height(8),
        _series(
            "Breaker inputs: reservation-failure ratio (bar 8%)",
            "Of the orders whose stock reservation (ERP or WMS) was attempted in the trailing "
            "60 min, the share that failed, each order once; stage 1 needs this above 8% and "
            "more than 2200 orders created.",
            [
                _promql("max(concord_breaker_reservation_failure_ratio)", "failure ratio"),
            ],
            unit="percentunit",
            height=7,
            bar=_thresholds("green", (BREAKER_FAILURE_BAR, "red")),
        ),
        _series(
            "Breaker inputs: ERP orders created, trailing 60 min (bar 2200)",
            "Stage 1 needs more than 2200 orders and a failure ratio above 8%.",
            [_promql("sum(concord_breaker_orders_created)", "orders created")],
            height=7,
            bar=_thresholds("green", (2200, "red")),
        ),
    ):
        anomalies.panels.append(_number(panel, ids))

    intake = _Row("Intake and sinks")
    for panel in (
        _series(
            "Events/s by source and outcome",
            "Input events per second: accepted, duplicate (redelivered), held (waiting for "
            "their master order), rejected (dead-lettered).",
            [
                _promql(
                    "sum by (source, outcome) (rate(concord_events_total[$__rate_interval]))",
                    "{{source}} {{outcome}}",
                )
            ],
            unit="reqps",
        ),
        _series(
            "Dead letters/s by reason",
            "Inputs sent to the dead-letter topic per second, by reason.",
            [
                _promql(
                    "sum by (reason) (rate(concord_deadletter_total[$__rate_interval]))",
                    "{{reason}}",
                )
            ],
            unit="reqps",
            stacked=True,
        ),
        _series(
            "Event lag by source",
            "Wall time minus event time of the newest event processed, per source.",
            [_promql("max by (source) (concord_event_lag_seconds)", "{{source}}")],
            unit="s",
        ),
        statetimeline.Panel()
        .title("Silent sources")
        .description(
            "A whole feed that stopped (connector down): said once here instead of "
            "thousands of per-order ghosts."
        )
        .datasource(PROMETHEUS)
        .with_target(_promql("max by (source) (concord_source_silent)", "{{source}}"))
        .mappings(silent_mappings)
        .thresholds(_thresholds("green", (1, "red")))
        .color_scheme(board.FieldColor().mode(models.FieldColorModeId.THRESHOLDS))
        .span(12)
        .height(8),
        _series(
            "ClickHouse backlog per worker",
            "Rows waiting to be written to ClickHouse (buffered or spilled during an outage).",
            [_promql("sum by (instance) (concord_clickhouse_backlog_rows)", "{{instance}}")],
            unit="short",
            span=24,
            height=7,
        ),
    ):
        intake.panels.append(_number(panel, ids))

    dash = (
        board.Dashboard("Concord / Operations")
        .uid("concord-operations")
        .description("Concord's KPIs against their bars and the pipeline's health.")
        .tags([*TAGS, "operations"])
        .time("now-6h", "now")
        .refresh("30s")
        .timezone("browser")
        .tooltip(models.DashboardCursorSync.CROSSHAIR)
        .readonly()
        .link(_other_board("Concord / Analysis"))
    )
    return _with_rows(dash, ids, [kpis, latency, anomalies, intake])


def analysis_board() -> board.Dashboard:
    """Concord / Analysis: ClickHouse tables, the saved queries of sinks/queries.py."""
    ids = _ids()
    database = (
        board.CustomVariable("database")
        .label("Database")
        .description("CONCORD_CLICKHOUSE_DATABASE")
        .values("concord")
        .current(models.VariableOption(selected=True, text="concord", value="concord"))
    )
    days = (
        board.CustomVariable("days")
        .label("Window for tables (days)")
        .description("Trailing days of event time, anchored on each table's newest row")
        .values("1,7,30,90")
        .current(models.VariableOption(selected=True, text="7", value="7"))
    )
    hours = (
        board.CustomVariable("hours")
        .label("Latency window (hours)")
        .values("6,24,72,168")
        .current(models.VariableOption(selected=True, text="24", value="24"))
    )
    anchored = (
        " Same SQL as `concord query {name}`: the window is anchored on the table's newest "
        "row (event time), not on the dashboard's time range."
    )

    charts = _Row("Over the dashboard's time range")
    for panel in (
        _series(
            "Ghost anomalies opened per day, by type",
            "Ghost-order anomalies (missing_in_system, orphan_order, status_conflict, "
            "stalled_tracking) by the day they opened.",
            [
                ClickHouseSQL(
                    f"""
SELECT toStartOfDay(opened_at) AS time, type, count() AS opened
FROM ${{database}}.anomalies FINAL
WHERE type IN ({_GHOSTS_SQL}) AND $__timeFilter(opened_at)
GROUP BY time, type
ORDER BY time""",
                    time_series=True,
                )
            ],
            datasource=CLICKHOUSE,
            stacked=True,
            bars=True,
        ),
        _series(
            "Refresh latency p50 per target and hour (bar 15 min)",
            "Exact hourly median of refresh_latency per target system, by ERP event time.",
            [
                ClickHouseSQL(
                    """
SELECT toStartOfHour(t0) AS time, target, quantileExact(0.5)(latency_seconds) AS p50
FROM ${database}.refresh_latency FINAL
WHERE $__timeFilter(t0)
GROUP BY time, target
ORDER BY time""",
                    time_series=True,
                )
            ],
            datasource=CLICKHOUSE,
            unit="s",
            bar=_thresholds("green", (LATENCY_BAR_SECONDS, "red")),
        ),
        _series(
            "Duplicate-order pairs per day, by channel of the later order",
            "Suspected duplicates (same customer, same SKU set, placed within ±15 min).",
            [
                ClickHouseSQL(
                    """
SELECT toStartOfDay(placed_b) AS time, channel_b AS channel, count() AS pairs
FROM ${database}.duplicate_pairs FINAL
WHERE $__timeFilter(placed_b)
GROUP BY time, channel
ORDER BY time""",
                    time_series=True,
                )
            ],
            datasource=CLICKHOUSE,
            stacked=True,
            bars=True,
        ),
        _series(
            "Breaker stage over time",
            "Each evaluation and transition of the intake breaker.",
            [
                ClickHouseSQL(
                    """
SELECT at AS time, max(stage) AS stage
FROM ${database}.breaker_history FINAL
WHERE $__timeFilter(at)
GROUP BY time
ORDER BY time""",
                    time_series=True,
                )
            ],
            datasource=CLICKHOUSE,
            unit="none",
            bar=_thresholds("green", (2, "red")),
        ),
    ):
        charts.panels.append(_number(panel, ids))

    tables = _Row("Saved queries (concord query NAME)")
    for name, title, height in (
        ("ghosts_by_type_team_day", "Daily ghost orders by type and team", 10),
        ("latency_percentiles_hourly", "Refresh latency percentiles per system and hour", 10),
        ("duplicates_by_channel", "Duplicate orders per channel pair", 8),
        ("breaker_history", "Breaker history", 8),
        ("slowest_orders_week", "Slowest orders", 9),
        ("deadletters_by_reason", "Dead letters by reason", 8),
    ):
        description = QUERIES[name].description + "." + anchored.format(name=name)
        panel = _sql_table(title, description, saved_query_sql(name), height=height)
        tables.panels.append(_number(panel, ids))

    dash = (
        board.Dashboard("Concord / Analysis")
        .uid("concord-analysis")
        .description("Concord's ClickHouse tables: ghosts, latency, duplicates, breaker.")
        .tags([*TAGS, "analysis"])
        .time("now-7d", "now")
        .refresh("5m")
        .timezone("browser")
        .readonly()
        .with_variable(database)
        .with_variable(days)
        .with_variable(hours)
        .link(_other_board("Concord / Operations"))
    )
    return _with_rows(dash, ids, [charts, tables])


def _with_rows(dash: board.Dashboard, ids: Iterator[int], rows: Sequence[_Row]) -> board.Dashboard:
    """Expanded rows: in Grafana's model an open row's panels follow it at the top level."""
    for row in rows:
        dash = dash.with_row(board.Row(row.title).collapsed(False).id(next(ids)))
        for panel in row.panels:
            dash = dash.with_panel(panel)
    return dash


def _other_board(title: str) -> board.DashboardLink:
    return (
        board.DashboardLink(title)
        .type(models.DashboardLinkType.DASHBOARDS)
        .icon("external link")
        .tags(TAGS)
        .as_dropdown(True)
        .keep_time(True)
        .include_vars(False)
        .target_blank(False)
    )


# --- output ------------------------------------------------------------------------------

BOARDS = {
    "concord-operations.json": operations_board,
    "concord-analysis.json": analysis_board,
}


def render(builder: board.Dashboard) -> str:
    """A dashboard as stable, pretty JSON (sorted keys, trailing newline)."""
    text = JSONEncoder(sort_keys=True, indent=2, ensure_ascii=False).encode(builder.build())
    return text + "\n"


def rendered() -> dict[str, str]:
    """File name → JSON text of every board."""
    return {name: render(make()) for name, make in BOARDS.items()}


def as_json(name: str) -> dict[str, Any]:
    """One generated board, parsed."""
    parsed: dict[str, Any] = json.loads(rendered()[name])
    return parsed


def stale(directory: Path = DASHBOARD_DIR) -> list[str]:
    """Files in `directory` that differ from what this module generates."""
    return [
        name
        for name, text in rendered().items()
        if not (directory / name).is_file()
        or (directory / name).read_text(encoding="utf-8") != text
    ]


def main(argv: Sequence[str] | None = None) -> int:
    """Write the boards, or with --check report stale ones and exit 1."""
    parser = argparse.ArgumentParser(prog="python -m deploy.grafana.dashboards")
    parser.add_argument(
        "--check", action="store_true", help="exit 1 if the committed JSON is out of date"
    )
    parser.add_argument("--out", type=Path, default=DASHBOARD_DIR, help="output directory")
    args = parser.parse_args(argv)
    if args.check:
        out_of_date = stale(args.out)
        for name in out_of_date:
            print(
                f"{args.out / name} is out of date: run python -m deploy.grafana.dashboards",
                file=sys.stderr,
            )
        return 1 if out_of_date else 0
    args.out.mkdir(parents=True, exist_ok=True)
    for name, text in rendered().items():
        (args.out / name).write_text(text, encoding="utf-8")
        print(f"wrote {args.out / name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
