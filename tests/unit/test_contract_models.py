"""The contract as code: change events, status maps, settings, JSON Schema."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from schemas.events import ChangeEvent
from schemas.public import json_schemas
from schemas.settings import STAGES, SettingsError, load_settings
from schemas.stages import PHASE_OF, Marker, Phase, Source, Stage
from schemas.status_map import StatusMap, StatusMapError, default_status_map, load_status_map

BASE = {
    "event_id": "e1",
    "source": "crm",
    "order_ref": "CS-1",
    "status": "新建",
    "occurred_at": "2026-03-02T09:00:00+08:00",
}


def event(**changes: object) -> bytes:
    body = {**BASE, **changes}
    return orjson.dumps({k: v for k, v in body.items() if v is not None})


def test_erp_event_is_its_own_master():
    e = ChangeEvent.model_validate_json(event(source="erp", order_ref="SO1", status="CREATED"))
    assert e.erp_order_id == "SO1"
    e2 = ChangeEvent.model_validate_json(event(source="crm"))
    assert e2.erp_order_id is None


def test_unknown_top_level_fields_are_kept():
    e = ChangeEvent.model_validate_json(event(plant="佛山二厂", attrs={"x": [1]}))
    assert e.model_extra == {"plant": "佛山二厂"}
    assert e.attrs == {"x": [1]}


@pytest.mark.parametrize(
    "changes",
    [
        {"occurred_at": "2026-03-02T09:00:00"},  # no offset
        {"occurred_at": "yesterday"},
        {"event_id": ""},
        {"event_id": "x" * 129},
        {"source": "sap"},
        {"status": ""},
        {"order_ref": None},
        {
            "source": "erp",
            "order": {
                "customer_id": "C",
                "channel": "web",
                "lines": [],
                "amount": "1",
                "currency": "CNY",
            },
        },
        {
            "source": "erp",
            "order": {
                "customer_id": "C",
                "channel": "web",
                "amount": "1",
                "currency": "cny",
                "lines": [{"sku": "A", "qty": 1, "unit_price": "1"}],
            },
        },
        {
            "source": "erp",
            "order": {
                "customer_id": "C",
                "channel": "web",
                "amount": "1",
                "currency": "CNY",
                "lines": [{"sku": "A", "qty": 0, "unit_price": "1"}],
            },
        },
    ],
)
def test_invalid_events_are_rejected(changes):
    with pytest.raises(ValidationError):
        ChangeEvent.model_validate_json(event(**changes))


def test_event_id_bounds_are_inclusive():
    assert ChangeEvent.model_validate_json(event(event_id="x" * 128)).event_id == "x" * 128


def test_every_stage_has_a_phase_and_markers_do_not():
    assert set(PHASE_OF) == set(Stage)
    assert PHASE_OF[Stage.IN_TRANSIT] is Phase.SHIPPED
    assert PHASE_OF[Stage.CLOSED] is Phase.DELIVERED


def test_default_maps_cover_each_source_in_english_and_chinese():
    sm = default_status_map()
    assert sm.lookup(Source.ERP, "已发货") is Stage.SHIPPED
    assert sm.lookup(Source.ERP, "  shipped ") is Stage.SHIPPED
    assert sm.lookup(Source.WMS, "缺货") is Marker.ALLOCATION_FAILED
    assert sm.lookup(Source.LOGISTICS, "派送失败") is Marker.DELIVERY_EXCEPTION
    assert sm.lookup(Source.CRM, "已签收") is Stage.DELIVERED
    assert sm.lookup(Source.CRM, "TELEPORTED") is None
    # A label of one source is not a guess for another.
    assert sm.lookup(Source.WMS, "已揽收") is None
    for source in Source:
        targets = set(sm.maps[source].values())
        assert any(isinstance(t, Stage) for t in targets)


def test_override_file_extends_and_overrides(tmp_path: Path):
    path = tmp_path / "map.yaml"
    path.write_text("wms:\n  TELEPORTED: shipped\n  已出库: picking\n", encoding="utf-8")
    sm = load_status_map(path)
    assert sm.lookup(Source.WMS, "teleported") is Stage.SHIPPED
    assert sm.lookup(Source.WMS, "已出库") is Stage.PICKING
    assert sm.lookup(Source.ERP, "CREATED") is Stage.PLACED  # defaults kept


@pytest.mark.parametrize(
    "text", ["wms: [1, 2]\n", "sap:\n  X: shipped\n", "wms:\n  X: flying\n", "- a\n", "a: : b"]
)
def test_bad_override_files_fail_clearly(tmp_path: Path, text: str):
    path = tmp_path / "map.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(StatusMapError, match=str(path)):
        load_status_map(path)


@given(st.text(min_size=1, max_size=20).filter(lambda s: s.strip()))
def test_lookup_ignores_case_and_surrounding_space(label: str):
    sm = StatusMap(maps={Source.CRM: {label: Stage.PICKING}})
    assert sm.lookup(Source.CRM, f"  {label.upper()} ") in (Stage.PICKING, None)
    assert sm.lookup(Source.CRM, label) is Stage.PICKING


def test_settings_from_env_and_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    config = tmp_path / "concord.yaml"
    config.write_text("topic_partitions: 12\nweb_port: 7000\n", encoding="utf-8")
    monkeypatch.setenv("CONCORD_WEB_PORT", "7001")
    monkeypatch.setenv("CONCORD_BROKER_PASSWORD", "s3cret")
    s = load_settings(config)
    assert s.topic_partitions == 12
    assert s.web_port == 7001  # environment wins over the file
    assert "s3cret" not in repr(s)
    assert s.topic("erp.events") == "concord.erp.events"
    assert s.clickhouse_url.startswith("chdb://")


@pytest.mark.parametrize(
    ("env", "value", "named"),
    [
        ("CONCORD_WEB_PORT", "70000", "web_port"),
        ("CONCORD_BROKER_URL", "http://x:9092", "broker_url"),
        ("CONCORD_TOPIC_PARTITIONS", "zero", "topic_partitions"),
        ("CONCORD_STATUS_MAP_FILE", "/nope.yaml", "status_map_file"),
        ("CONCORD_STAGES", "ingest,join", "stages"),
        ("CONCORD_STAGES", " , ", "stages"),
    ],
)
def test_a_bad_setting_names_itself(monkeypatch: pytest.MonkeyPatch, env, value, named):
    monkeypatch.setenv(env, value)
    with pytest.raises(SettingsError, match=f"setting {named} \\({env}\\)"):
        load_settings()


def test_a_worker_runs_every_stage_or_the_ones_named(monkeypatch: pytest.MonkeyPatch):
    assert all(load_settings().runs(stage) for stage in STAGES)
    monkeypatch.setenv("CONCORD_STAGES", " orders, ingest ")
    chosen = load_settings()
    assert chosen.stages == "ingest,orders"  # pipeline order, spaces dropped
    assert [stage for stage in STAGES if chosen.runs(stage)] == ["ingest", "orders"]


def test_unknown_setting_in_yaml_is_an_error(tmp_path: Path):
    config = tmp_path / "c.yaml"
    config.write_text("web_prot: 1\n", encoding="utf-8")
    with pytest.raises(SettingsError, match="web_prot"):
        load_settings(config)


def test_json_schema_is_generated_for_every_public_model():
    schemas = json_schemas()
    assert {"ChangeEvent", "Anomaly", "Command", "Decision", "DeadLetter"} <= set(schemas)
    change = schemas["ChangeEvent"]
    assert set(change["required"]) == {"event_id", "source", "order_ref", "status", "occurred_at"}
