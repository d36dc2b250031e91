"""The README's first command, headless and bounded."""

from __future__ import annotations

import subprocess
import sys

import pytest

from concord.broker import free_port

pytestmark = pytest.mark.integration


def test_demo_runs_the_embedded_pipeline_end_to_end(tmp_path):
    result = subprocess.run(
        [
            *(sys.executable, "-m", "concord", "demo", "--duration", "1"),
            *("--orders", "300", "--data-dir", str(tmp_path), "--web-port", str(free_port())),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    out = result.stderr + result.stdout
    assert result.returncode == 0, out
    assert "accepted" in out
    assert "dead letters" in out
    assert "unknown_status" in out
    assert (tmp_path / "scenario.jsonl").stat().st_size > 0
