"""The demo starts from a clean data dir, and never clears one it did not make."""

from __future__ import annotations

from pathlib import Path

import pytest

from concord.demo import MARKER, DemoDirError, fresh_data_dir


def test_a_new_dir_is_made_and_marked(tmp_path: Path) -> None:
    target = tmp_path / "demo"
    fresh_data_dir(target)
    assert (target / MARKER).is_file()


def test_a_previous_run_is_cleared(tmp_path: Path) -> None:
    fresh_data_dir(tmp_path)
    (tmp_path / "clickhouse" / "data").mkdir(parents=True)
    (tmp_path / "clickhouse" / "data" / "part").write_text("old rows")
    (tmp_path / "faust").mkdir()
    (tmp_path / "summary.json").write_text("{}")
    fresh_data_dir(tmp_path)
    assert not (tmp_path / "clickhouse").exists()
    assert not (tmp_path / "faust").exists()
    assert not (tmp_path / "summary.json").exists()


def test_a_dir_with_other_data_is_refused_and_left_alone(tmp_path: Path) -> None:
    (tmp_path / "clickhouse").mkdir()
    (tmp_path / "clickhouse" / "precious").write_text("a worker's rows")
    with pytest.raises(DemoDirError, match="not made by `concord demo`"):
        fresh_data_dir(tmp_path)
    assert (tmp_path / "clickhouse" / "precious").read_text() == "a worker's rows"
