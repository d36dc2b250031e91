"""The demo's scorecard against the scenario's labels: every anomaly ever raised counts."""

from __future__ import annotations

from typing import Any

from concord.demo import _against_labels
from concord.scenario import Labels


def _anomaly(aid: str, type_: str, order: str, state: str, **extra: Any) -> dict[str, Any]:
    return {"anomaly_id": aid, "type": type_, "order_id": order, "state": state, **extra}


def test_a_false_alarm_that_resolved_counts_against_precision() -> None:
    labels = Labels()
    labels.ghosts["missing_in_system"] = {"SO-1", "SO-2"}
    labels.ghosts["orphan_order"] = {"CS-9"}
    labels.duplicate_pairs = {frozenset({"SO-5", "SO-6"})}
    anomalies = [
        _anomaly("a1", "missing_in_system", "SO-1", "open"),
        _anomaly("a2", "missing_in_system", "SO-1", "resolved"),  # the same order again
        _anomaly("a3", "missing_in_system", "SO-3", "resolved"),  # never should have opened
        _anomaly("a4", "orphan_order", "SO-404", "resolved", refs={"crm": "CS-9"}),
        _anomaly("a5", "duplicate_order", "SO-6", "resolved", order_ids=["SO-6", "SO-5"]),
        _anomaly("a6", "duplicate_order", "SO-8", "open", order_ids=["SO-7", "SO-8"]),
        _anomaly("a7", "intake_overload", "intake", "resolved"),  # not scored here
    ]
    scores = _against_labels({a["anomaly_id"]: a for a in anomalies}, labels)
    assert scores["missing_in_system"] == {
        "labelled": 2,
        "raised": 3,
        "found": 2,
        "hits": 1,
        "false": 1,
        "open": 1,
    }
    # An orphan is scored by the system's own reference, the scenario's name for it.
    assert scores["orphan_order"] == {
        "labelled": 1, "raised": 1, "found": 1, "hits": 1, "false": 0, "open": 0,
    }  # fmt: skip
    assert scores["duplicate pairs"] == {
        "labelled": 1, "raised": 2, "found": 2, "hits": 1, "false": 1, "open": 1,
    }  # fmt: skip
    assert scores["status_conflict"] == {
        "labelled": 0, "raised": 0, "found": 0, "hits": 0, "false": 0, "open": 0,
    }  # fmt: skip
