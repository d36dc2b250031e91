"""deploy/ agrees with the code: dashboards, alert rules, compose and Kubernetes manifests.

No network and no Docker. promtool (Debian package `prometheus`) must be installed: the
rule tests fail, not skip, without it. The ClickHouse panel queries and the example
cluster DDL are run on embedded ClickHouse in a child process (chdb hosts one engine per
process, and the integration tests own this one's).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY

import sinks.metrics  # noqa: F401  (registers the catalogue)
from deploy.grafana import dashboards
from schemas.anomalies import Team
from schemas.settings import Settings
from sinks.clickhouse import DEFAULT_TTL_DAYS, MIGRATIONS
from streams.web_access import check_exposure

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE_DIR = DEPLOY / "compose"
K8S = DEPLOY / "k8s"
PROMETHEUS_DIR = DEPLOY / "prometheus"
GRAFANA = DEPLOY / "grafana"

REQUIRED_ALERTS = {
    "ConcordRefreshLatencyHigh",
    "ConcordConsistencyLow",
    "ConcordAutoRoutingLow",
    "ConcordBreakerThrottling",
    "ConcordSourceSilent",
    "ConcordDeadLettersHigh",
    "ConcordWorkerDown",
}


# --- helpers -----------------------------------------------------------------------------


def load_yaml(path: Path) -> Any:
    with path.open(encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def load_all_yaml(path: Path) -> list[Any]:
    with path.open(encoding="utf-8") as handle:
        return [doc for doc in yaml.safe_load_all(handle) if doc is not None]


def registry_metric_names() -> set[str]:
    """Every series name the metric catalogue can expose, suffixes included."""
    suffixes = {
        "counter": ("_total",),
        "histogram": ("_bucket", "_count", "_sum"),
        "summary": ("", "_count", "_sum"),
    }
    names: set[str] = set()
    for family in REGISTRY.collect():
        if not family.name.startswith("concord_"):
            continue
        names.update(family.name + s for s in suffixes.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names


def migration_tables() -> set[str]:
    """Tables created by the migrations in sinks/clickhouse.py."""
    tables = {"schema_migrations"}
    for migration in MIGRATIONS:
        for statement in migration.statements("concord", DEFAULT_TTL_DAYS):
            match = re.search(r"CREATE TABLE IF NOT EXISTS concord\.(\w+)", statement)
            if match:
                tables.add(match.group(1))
    return tables


def board_panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in board["panels"]:
        yield panel
        yield from panel.get("panels", [])


def board_targets(board: dict[str, Any]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for panel in board_panels(board):
        for target in panel.get("targets", []):
            yield panel, target


def all_targets() -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    found = []
    for name in dashboards.BOARDS:
        board = json.loads((dashboards.DASHBOARD_DIR / name).read_text(encoding="utf-8"))
        found.extend((name, panel, target) for panel, target in board_targets(board))
    return found


def promql_targets() -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for _, p, t in all_targets() if "expr" in t]


def sql_targets() -> list[tuple[str, str]]:
    return [(p["title"], t["rawSql"]) for _, p, t in all_targets() if "rawSql" in t]


def concord_metrics_in(expr: str) -> set[str]:
    return set(re.findall(r"\bconcord_[A-Za-z0-9_:]*", expr))


def find_promtool() -> str:
    found = shutil.which("promtool") or (
        "/usr/bin/promtool" if os.access("/usr/bin/promtool", os.X_OK) else None
    )
    if found is None:
        pytest.fail(
            "promtool not found on PATH or at /usr/bin/promtool: install Prometheus "
            "(Debian: apt-get install -y --no-install-recommends prometheus)"
        )
    return found


def promtool(*args: str, cwd: Path = PROMETHEUS_DIR) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [find_promtool(), *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def rules() -> list[dict[str, Any]]:
    doc = load_yaml(PROMETHEUS_DIR / "rules.yaml")
    return [rule for group in doc["groups"] for rule in group["rules"]]


def read_env_file(path: Path) -> dict[str, str]:
    env = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key.strip()] = value.strip()
    return env


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = load_yaml(COMPOSE_DIR / "docker-compose.yml")
    return loaded


def compose_env(service: dict[str, Any]) -> dict[str, str]:
    """A compose service's environment: env files, then `environment` on top."""
    env: dict[str, str] = {}
    for env_file in service.get("env_file", []):
        env.update(read_env_file(COMPOSE_DIR / env_file))
    environment = service.get("environment", {})
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    env.update({k: str(v) for k, v in environment.items()})
    return env


def interpolate(value: str) -> str:
    """Compose's ${VAR:-default} with the defaults, and a required ${VAR:?message} with a
    stand-in value (the variables are unset in tests)."""
    value = re.sub(r"\$\{(\w+):\?[^}]*\}", r"stand-in-value-of-\1", value)
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", value)


def workers() -> dict[str, dict[str, Any]]:
    return {n: s for n, s in compose()["services"].items() if n.startswith("worker-")}


def k8s_docs() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(K8S.glob("*.yaml")):
        docs.extend(load_all_yaml(path))
    return docs


def k8s_object(kind: str, name: str) -> dict[str, Any]:
    matches = [d for d in k8s_docs() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind} {name} in deploy/k8s, found {len(matches)}"
    return matches[0]


def settings_fields() -> set[str]:
    return {f"CONCORD_{name.upper()}" for name in Settings.model_fields}


def assert_valid_settings(env: dict[str, str], where: str) -> Settings:
    concord = {k: interpolate(v) for k, v in env.items() if k.startswith("CONCORD_")}
    unknown = set(concord) - settings_fields()
    assert not unknown, f"{where}: {sorted(unknown)} are not fields of schemas.settings.Settings"
    return Settings(**{k.removeprefix("CONCORD_").lower(): v for k, v in concord.items()})


# --- (a) dashboards are generated --------------------------------------------------------


def test_committed_dashboards_are_what_the_generator_writes() -> None:
    assert dashboards.stale() == [], "run: python -m deploy.grafana.dashboards"


def test_check_mode_reports_stale_and_fresh_output(tmp_path: Path) -> None:
    assert dashboards.main(["--check", "--out", str(tmp_path)]) == 1
    assert dashboards.main(["--out", str(tmp_path)]) == 0
    assert dashboards.main(["--check", "--out", str(tmp_path)]) == 0
    (tmp_path / "concord-analysis.json").write_text("{}", encoding="utf-8")
    assert dashboards.main(["--check", "--out", str(tmp_path)]) == 1


def test_dashboards_have_stable_uids_and_unique_panel_ids() -> None:
    uids = set()
    for name in dashboards.BOARDS:
        board = dashboards.as_json(name)
        uids.add(board["uid"])
        ids = [panel["id"] for panel in board_panels(board)]
        assert len(ids) == len(set(ids)), f"{name}: duplicate panel ids"
        for panel in board_panels(board):
            if panel["type"] != "row":
                assert panel.get("title"), panel
                assert panel.get("description"), panel["title"]
    assert uids == {"concord-operations", "concord-analysis"}


def test_operations_board_shows_the_kpi_bars() -> None:
    board = dashboards.as_json("concord-operations.json")
    steps: dict[str, set[float]] = {}
    for panel in board_panels(board):
        thresholds = panel.get("fieldConfig", {}).get("defaults", {}).get("thresholds")
        if thresholds:
            steps[panel["title"]] = {s["value"] for s in thresholds["steps"] if s["value"]}
    exprs = " ".join(expr for _, expr in promql_targets())
    assert 'concord_status_refresh_latency_exact_seconds{quantile="0.5",window="1h"}' in exprs
    assert "histogram_quantile(0.5," in exprs
    assert "concord_status_refresh_latency_seconds_bucket" in exprs
    assert 900 in steps["Refresh latency median, 1 h (bar 15 min)"]
    assert 0.92 in steps["Consistency ratio (bar 92%)"]
    assert 0.65 in steps["Auto-routing ratio (bar 65%)"]


# --- (b) panels name real metrics and tables ---------------------------------------------


def test_every_prometheus_panel_names_catalogued_metrics() -> None:
    known = registry_metric_names()
    assert "concord_events_total" in known
    assert "concord_status_refresh_latency_seconds_bucket" in known
    targets = promql_targets()
    assert len(targets) >= 15
    for title, expr in targets:
        used = concord_metrics_in(expr)
        assert used, f"panel {title!r} queries no concord_ metric: {expr}"
        assert used <= known, f"panel {title!r} names unknown metrics {sorted(used - known)}"


def test_every_alert_names_catalogued_metrics() -> None:
    known = registry_metric_names()
    for rule in rules():
        used = concord_metrics_in(rule["expr"])
        assert used <= known, f"{rule['alert']}: unknown metrics {sorted(used - known)}"
        assert used or rule["expr"].startswith('up{job="concord"}'), rule["alert"]


def test_panel_promql_parses(tmp_path: Path) -> None:
    # promtool has no plain PromQL parser: the expressions become recording rules.
    records = [
        {"record": f"concord_check:panel_{n}", "expr": expr.replace("$__rate_interval", "5m")}
        for n, (_, expr) in enumerate(promql_targets())
    ]
    path = tmp_path / "panels.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "panels", "rules": records}]}))
    result = promtool("check", "rules", str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_clickhouse_panel_reads_migrated_tables() -> None:
    tables = migration_tables()
    assert {"anomalies", "refresh_latency", "duplicate_pairs", "breaker_history"} <= tables
    targets = sql_targets()
    assert len(targets) >= 10
    for title, sql in targets:
        referenced = re.findall(r"\b(?:FROM|JOIN)\s+(\(|[^\s()]+)", sql)
        named = [ref for ref in referenced if not ref.startswith("(")]
        assert named, f"panel {title!r} reads no table"
        for ref in named:
            assert ref.startswith("${database}."), f"panel {title!r}: unqualified table {ref}"
            table = ref.removeprefix("${database}.")
            assert table in tables, f"panel {title!r} reads {table}, not in sinks/clickhouse.py"


def test_analysis_tables_mirror_the_saved_queries() -> None:
    board = dashboards.as_json("concord-analysis.json")
    sqls = {t["rawSql"] for _, t in board_targets(board) if "rawSql" in t}
    for name in dashboards.QUERIES:
        assert dashboards.saved_query_sql(name) in sqls, f"saved query {name} has no panel"


def test_panels_use_the_provisioned_data_sources() -> None:
    provisioned = {
        d["uid"]: d["type"]
        for d in load_yaml(GRAFANA / "provisioning/datasources/concord.yaml")["datasources"]
    }
    assert provisioned == {
        dashboards.PROMETHEUS_UID: "prometheus",
        dashboards.CLICKHOUSE_UID: "grafana-clickhouse-datasource",
    }
    for board_name, panel, target in all_targets():
        for ref in (panel["datasource"], target.get("datasource", panel["datasource"])):
            assert provisioned.get(ref["uid"]) == ref["type"], (board_name, panel["title"])


_CHDB_CHECK = textwrap.dedent(
    """
    import json, re, sys
    from sinks.clickhouse import connect, migrate
    job = json.load(sys.stdin)
    client = connect("chdb://memory", "concord")
    migrate(client, "concord")
    errors = []
    for title, sql in job["panels"]:
        sql = sql.replace("${database}", "concord").replace("${days}", "7")
        sql = sql.replace("${hours}", "24")
        sql = re.sub(
            r"\\$__timeFilter\\((\\w+)\\)",
            r"\\1 >= toDateTime64('2025-01-01 00:00:00', 3, 'UTC') AND "
            r"\\1 <= toDateTime64('2025-02-01 00:00:00', 3, 'UTC')",
            sql,
        )
        try:
            client.query(sql)
        except Exception as exc:
            errors.append(f"panel {title!r}: {exc}")
    for statement in job["ddl"]:
        try:
            client.query("SELECT formatQuery({q:String})", parameters={"q": statement})
        except Exception as exc:
            errors.append(f"cluster DDL does not parse: {exc}\\n{statement[:200]}")
    print(json.dumps(errors))
    """
)


def cluster_statements() -> list[str]:
    text = (K8S / "clickhouse-cluster.sql").read_text(encoding="utf-8")
    body = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("--"))
    return [s.strip() for s in body.split(";") if s.strip()]


def test_clickhouse_panels_and_cluster_ddl_run_on_embedded_clickhouse() -> None:
    job = {"panels": sql_targets(), "ddl": cluster_statements()}
    result = subprocess.run(
        [sys.executable, "-c", _CHDB_CHECK],
        input=json.dumps(job),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    errors = json.loads(result.stdout.strip().splitlines()[-1])
    assert errors == []


# --- (c) alert rules ---------------------------------------------------------------------


def test_promtool_check_rules() -> None:
    result = promtool("check", "rules", "rules.yaml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_test_rules() -> None:
    result = promtool("test", "rules", "rules_test.yaml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_check_config() -> None:
    result = promtool("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_alerts_are_complete_labelled_and_tested() -> None:
    teams = {t.value for t in Team} - {Team.MANUAL.value}
    by_name = {rule["alert"]: rule for rule in rules() if "alert" in rule}
    assert set(by_name) == REQUIRED_ALERTS
    tests = load_yaml(PROMETHEUS_DIR / "rules_test.yaml")["tests"]
    cases: dict[str, list[list[Any]]] = {}
    for case in tests:
        for check in case["alert_rule_test"]:
            cases.setdefault(check["alertname"], []).append(check.get("exp_alerts") or [])
    for name, rule in by_name.items():
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        assert rule["labels"]["team"] in teams, name
        assert {"summary", "description"} <= set(rule["annotations"]), name
        assert "for" in rule, name
        outcomes = cases.get(name, [])
        assert any(outcomes), f"{name}: no test where it fires"
        assert not all(outcomes), f"{name}: no test where it stays quiet"


def test_alertmanager_routes_every_team_to_a_webhook() -> None:
    config = load_yaml(DEPLOY / "alertmanager/alertmanager.yml")
    receivers = {r["name"]: r for r in config["receivers"]}
    assert config["route"]["receiver"] in receivers
    routed: dict[str, str] = {}
    for route in config["route"]["routes"]:
        for matcher in route["matchers"]:
            match = re.fullmatch(r'team="(\w+)"', matcher)
            if match:
                routed[match.group(1)] = route["receiver"]
        for sub in route.get("routes", []):
            assert sub["receiver"] in receivers
    for rule in rules():
        team = rule["labels"]["team"]
        assert team in routed, f"no route for team {team}"
        assert receivers[routed[team]]["webhook_configs"], routed[team]
    amtool = shutil.which("amtool")
    if amtool:  # optional: Debian's prometheus-alertmanager
        result = subprocess.run(
            [amtool, "check-config", str(DEPLOY / "alertmanager/alertmanager.yml")],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr


# --- (d) compose and Kubernetes ----------------------------------------------------------


def test_all_deploy_yaml_parses() -> None:
    paths = sorted(DEPLOY.rglob("*.yaml")) + sorted(DEPLOY.rglob("*.yml"))
    assert len(paths) >= 12
    for path in paths:
        assert load_all_yaml(path), f"{path} is empty"


def test_compose_workers_have_valid_settings_and_their_own_port_and_state() -> None:
    services = workers()
    assert len(services) >= 2
    ports, volumes = set(), set()
    for name, service in services.items():
        env = compose_env(service)
        settings = assert_valid_settings(env, f"compose {name}")
        port = settings.web_port
        ports.add(port)
        assert settings.web_host == "0.0.0.0", f"{name}: Prometheus could not reach it"
        check_exposure(settings)  # served beyond loopback: with a token
        assert settings.phone_key is not None, f"{name}: no key, each worker would make its own"
        assert service["ports"] == [f"{port}:{port}"], name
        assert f"127.0.0.1:{port}/health" in " ".join(service["healthcheck"]["test"]), name
        (volume,) = service["volumes"]
        source, target = volume.split(":")
        assert target == str(settings.data_dir), f"{name}: state dir not on its volume"
        volumes.add(source)
        assert set(settings.bootstrap_servers) == {
            f"{broker}:9092" for broker in compose()["services"] if broker.startswith("kafka-")
        }
        assert settings.topic_partitions >= len(services)
        dsn = settings.clickhouse_url
        assert dsn.startswith("http://"), name
        assert "@clickhouse:8123" in dsn, name
        assert service["command"] == ["worker"], name
    assert len(ports) == len(volumes) == len(services), "each worker its own port and volume"


def test_prometheus_scrapes_every_compose_worker_and_alerts_alertmanager() -> None:
    config = load_yaml(PROMETHEUS_DIR / "prometheus.yml")
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "concord"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    targets = {t for sc in job["static_configs"] for t in sc["targets"]}
    expected = {
        f"{name}:{compose_env(service)['CONCORD_WEB_PORT']}" for name, service in workers().items()
    }
    assert targets == expected
    services = compose()["services"]
    (am,) = config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    host, port = am.split(":")
    assert f"{port}:{port}" in services[host]["ports"]
    assert config["rule_files"] == ["rules.yaml"]


def test_compose_mounts_exist_and_match_grafana_provisioning() -> None:
    services = compose()["services"]
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (COMPOSE_DIR / source).exists(), f"{name}: {source} does not exist"
    grafana = services["grafana"]
    mounts = {v.split(":")[0]: v.split(":")[1] for v in grafana["volumes"]}
    assert mounts["../grafana/provisioning/datasources"] == "/etc/grafana/provisioning/datasources"
    assert mounts["../grafana/provisioning/dashboards"] == "/etc/grafana/provisioning/dashboards"
    (provider,) = load_yaml(GRAFANA / "provisioning/dashboards/concord.yaml")["providers"]
    assert mounts["../grafana/dashboards"] == provider["options"]["path"]
    assert "grafana-clickhouse-datasource" in grafana["environment"]["GF_INSTALL_PLUGINS"]
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert Path(home).name in dashboards.BOARDS
    assert Path(home).parent == Path(provider["options"]["path"])
    # The data sources point at the compose services, on the ports they listen on.
    sources = {
        d["type"]: d
        for d in load_yaml(GRAFANA / "provisioning/datasources/concord.yaml")["datasources"]
    }
    assert sources["prometheus"]["url"] == "http://prometheus:9090"
    assert "9090:9090" in services["prometheus"]["ports"]
    clickhouse = sources["grafana-clickhouse-datasource"]["jsonData"]
    assert f"{clickhouse['port']}:{clickhouse['port']}" in services[clickhouse["host"]]["ports"]
    assert clickhouse["defaultDatabase"] == services["clickhouse"]["environment"]["CLICKHOUSE_DB"]
    for env_name in ("CLICKHOUSE_USER", "CLICKHOUSE_PASSWORD"):
        assert env_name in grafana["environment"]
    prometheus_mounts = {v.split(":")[1] for v in services["prometheus"]["volumes"]}
    assert {"/etc/prometheus/prometheus.yml", "/etc/prometheus/rules.yaml"} <= prometheus_mounts


def test_kubernetes_workers_agree_with_configmap_service_and_settings() -> None:
    config = k8s_object("ConfigMap", "concord-config")
    statefulset = k8s_object("StatefulSet", "concord-worker")
    service = k8s_object("Service", statefulset["spec"]["serviceName"])
    secret = k8s_object("Secret", "concord-clickhouse")

    assert all(isinstance(v, str) for v in config["data"].values()), "ConfigMap values: strings"
    settings = assert_valid_settings({**config["data"], **secret["stringData"]}, "k8s")
    port = settings.web_port
    assert settings.web_host == "0.0.0.0"
    check_exposure(settings)  # served beyond loopback: with a token
    assert settings.phone_key is not None, "no phone key: each pod would make its own"
    assert statefulset["spec"]["replicas"] <= settings.topic_partitions

    pod = statefulset["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    env_names = {e["name"] for e in container.get("env", [])}
    assert env_names <= settings_fields()
    for item in container["env"]:
        ref = item["valueFrom"]["secretKeyRef"]
        assert ref["name"] == secret["metadata"]["name"]
        assert ref["key"] in secret["stringData"]
    (env_from,) = container["envFrom"]
    assert env_from["configMapRef"]["name"] == config["metadata"]["name"]

    named_ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert named_ports == {"web": port}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        check = container[probe]["httpGet"]
        assert check["path"] == "/health", probe
        assert named_ports.get(check["port"], check["port"]) == port, probe
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(port)
    assert annotations["prometheus.io/path"] == "/metrics"

    assert service["spec"]["clusterIP"] == "None"
    (service_port,) = service["spec"]["ports"]
    assert service_port["port"] == port
    assert service_port["targetPort"] == "web"
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert (
        statefulset["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    )

    (claim,) = statefulset["spec"]["volumeClaimTemplates"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts[claim["metadata"]["name"]] == str(settings.data_dir)

    kustomization = load_yaml(K8S / "kustomization.yaml")
    for resource in kustomization["resources"]:
        assert (K8S / resource).is_file(), resource


def test_worker_web_server_serves_the_probed_paths() -> None:
    app = (ROOT / "streams/app.py").read_text(encoding="utf-8")
    assert '@app.page("/health")' in app
    assert '@app.page("/metrics")' in app
    dockerfile = (COMPOSE_DIR / "Dockerfile").read_text(encoding="utf-8")
    assert f"EXPOSE {Settings().web_port}" in dockerfile
    assert (
        not re.search(r"\bCONCORD_\w+", dockerfile)
        or set(re.findall(r"\bCONCORD_\w+", dockerfile)) <= settings_fields()
    )


def _columns(statement: str) -> list[tuple[str, str]]:
    body = statement[statement.index("(") + 1 : statement.rindex(")")]
    columns = []
    for line in body.splitlines():
        line = line.strip().rstrip(",")
        if line and not line.startswith("INDEX"):
            name, _, kind = line.partition(" ")
            columns.append((name.strip("`"), kind))
    return columns


def test_cluster_ddl_example_matches_the_code_tables() -> None:
    code: dict[str, list[tuple[str, str]]] = {}
    for migration in MIGRATIONS:
        for statement in migration.statements("concord", DEFAULT_TTL_DAYS):
            head = re.search(r"CREATE TABLE IF NOT EXISTS concord\.(\w+) \(", statement)
            assert head is not None
            code[head.group(1)] = _columns(statement.split("ENGINE")[0])
    example: dict[str, list[tuple[str, str]]] = {}
    distributed: set[str] = set()
    for statement in cluster_statements():
        local = re.search(r"concord\.(\w+)_local ON CLUSTER '\{cluster\}' \(", statement)
        if local:
            assert "ReplicatedReplacingMergeTree(" in statement
            example[local.group(1)] = _columns(statement.split("ENGINE")[0])
        dist = re.search(r"CREATE TABLE IF NOT EXISTS concord\.(\w+) ON CLUSTER", statement)
        if dist and "Distributed(" in statement:
            distributed.add(dist.group(1))
    example.pop("schema_migrations")
    assert example == code
    assert distributed == set(code) | {"schema_migrations"}
