"""The public models, and their JSON Schema generated from the code."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from schemas.anomalies import Anomaly, Command, Decision
from schemas.deadletter import DeadLetter
from schemas.events import ChangeEvent, NormalizedEvent

PUBLIC_MODELS: dict[str, type[BaseModel]] = {
    "ChangeEvent": ChangeEvent,
    "Decision": Decision,
    "Anomaly": Anomaly,
    "Command": Command,
    "DeadLetter": DeadLetter,
    "NormalizedEvent": NormalizedEvent,
}


def json_schemas() -> dict[str, dict[str, Any]]:
    """Name -> JSON Schema (draft 2020-12) for every public model."""
    return {name: model.model_json_schema() for name, model in PUBLIC_MODELS.items()}
