"""Status maps: each source's native label -> canonical stage or failure marker (contract §3)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from schemas.stages import Marker, Source, Stage

Mapped = Stage | Marker


def normalize_label(label: str) -> str:
    """The form labels are compared in: trimmed, case-folded."""
    return label.strip().casefold()


class StatusMap(BaseModel):
    """Per-source label maps. A label missing from its source's map is an error, not a guess."""

    model_config = ConfigDict(frozen=True)

    maps: dict[Source, dict[str, Mapped]] = Field(default_factory=dict)

    @field_validator("maps")
    @classmethod
    def _normalize(cls, maps: dict[Source, dict[str, Mapped]]) -> dict[Source, dict[str, Mapped]]:
        out: dict[Source, dict[str, Mapped]] = {}
        for source, labels in maps.items():
            normalized: dict[str, Mapped] = {}
            for label, target in labels.items():
                key = normalize_label(label)
                if not key:
                    raise ValueError(f"{source}: empty status label")
                normalized[key] = target
            out[source] = normalized
        return out

    def lookup(self, source: Source, label: str) -> Mapped | None:
        """The stage or marker for a source's label, or None when the map does not know it."""
        return self.maps.get(source, {}).get(normalize_label(label))

    def merged(self, override: StatusMap) -> StatusMap:
        """This map with another's labels added on top (the other wins on a clash)."""
        maps = {source: dict(labels) for source, labels in self.maps.items()}
        for source, labels in override.maps.items():
            maps.setdefault(source, {}).update(labels)
        return StatusMap(maps=maps)


class StatusMapError(ValueError):
    """A status-map file that cannot be used."""


def _parse(raw: Any, where: str) -> StatusMap:
    if not isinstance(raw, dict):
        raise StatusMapError(f"{where}: expected a mapping of source -> {{label: stage}}")
    try:
        return StatusMap(maps=raw)
    except ValidationError as exc:
        raise StatusMapError(f"{where}: {exc}") from exc


def default_status_map() -> StatusMap:
    """The shipped defaults for the four sources (English and Chinese labels)."""
    text = resources.files("schemas").joinpath("status_maps.yaml").read_text(encoding="utf-8")
    return _parse(yaml.safe_load(text), "default status map")


def load_status_map(path: Path | None) -> StatusMap:
    """Defaults, extended and overridden by the YAML file at `path` when given."""
    base = default_status_map()
    if path is None:
        return base
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise StatusMapError(f"{path}: {exc}") from exc
    return base.merged(_parse(raw or {}, str(path)))
