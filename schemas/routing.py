"""Routing rules: which team owns an anomaly (contract §4.3, §5), as an ordered list in YAML.

The first rule whose `match` holds decides; an anomaly no rule matches goes to `manual`.
A rules file replaces the shipped defaults instead of merging with them: the list is
order-sensitive, and splicing two ordered lists would put rules where nobody wrote them.
"""

from __future__ import annotations

from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from schemas.anomalies import AnomalyType, Severity, Team
from schemas.stages import Source

Priority = Literal["rush", "normal"]

# The rule name an anomaly's route carries when no rule matched.
NO_MATCH = "no_match"


def normalize_channel(channel: str) -> str:
    """The form channels are compared in: trimmed, case-folded."""
    return channel.strip().casefold()


def _one_or_many(value: Any) -> Any:
    # `type: orphan_order` reads better than `type: [orphan_order]` for the common single case.
    if value is None:
        return None
    if isinstance(value, str | bytes | dict) or not isinstance(value, Iterable):
        return [value]
    values = list(value)
    if not values:
        # An empty list would match nothing, which is never what its author meant.
        raise ValueError("an empty list matches nothing; omit the field to match any value")
    return values


def _channels(value: Any) -> Any:
    values = _one_or_many(value)
    if values is None:
        return None
    out = []
    for item in values:
        if not isinstance(item, str) or not normalize_channel(item):
            raise ValueError(f"channel must be a non-empty string, got {item!r}")
        out.append(normalize_channel(item))
    return out


class RoutingMatch(BaseModel):
    """What an anomaly must look like for a rule to apply; every given field must hold."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: Annotated[frozenset[AnomalyType] | None, BeforeValidator(_one_or_many)] = None
    # "Any of": an anomaly names every system involved (the ERP too), so "all of" would force
    # each rule to spell out the ERP and would break when a detector adds a system.
    systems: Annotated[frozenset[Source] | None, BeforeValidator(_one_or_many)] = None
    severity: Annotated[frozenset[Severity] | None, BeforeValidator(_one_or_many)] = None
    vip: bool | None = None
    priority: Priority | None = None
    channel: Annotated[frozenset[str] | None, BeforeValidator(_channels)] = None

    def covers(self, other: RoutingMatch) -> bool:
        """True when every anomaly `other` matches is matched by this one too."""
        return (
            _set_covers(self.type, other.type)
            and _set_covers(self.systems, other.systems)
            and _set_covers(self.severity, other.severity)
            and _set_covers(self.channel, other.channel)
            and (self.vip is None or self.vip == other.vip)
            and (self.priority is None or self.priority == other.priority)
        )


def _set_covers(mine: frozenset[Any] | None, theirs: frozenset[Any] | None) -> bool:
    # None is "any value"; for systems it also admits anomalies that name no system at all,
    # which a listed set never matches, so the same subset test is exact there too.
    if mine is None:
        return True
    return theirs is not None and theirs <= mine


class RoutingRule(BaseModel):
    """One routing rule: when `match` holds, `team` owns the anomaly."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # The name lands in every anomaly's `route.rule` and in ClickHouse, so keep it label-safe.
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    match: RoutingMatch
    team: Team
    why: str | None = None

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, name: str) -> str:
        if name == NO_MATCH:
            raise ValueError(f"{NO_MATCH!r} is reserved for anomalies no rule matched")
        return name

    @field_validator("team")
    @classmethod
    def _not_manual(cls, team: Team) -> Team:
        # Manual is the fallback, not a destination: a rule sending there would count as
        # matched yet not auto-routed. To leave a case to people, narrow the broader rule.
        if team is Team.MANUAL:
            raise ValueError("manual is where unmatched anomalies go; a rule cannot route there")
        return team


def table_problems(rules: Iterable[RoutingRule]) -> list[str]:
    """What makes an ordered rule list unusable: repeated names and rules that can never match."""
    problems: list[str] = []
    seen: dict[str, int] = {}
    earlier: list[tuple[int, RoutingRule]] = []
    for index, rule in enumerate(rules, 1):
        if rule.name in seen:
            problems.append(
                f"rule #{index} {rule.name!r}: name already used by rule #{seen[rule.name]}"
            )
        seen.setdefault(rule.name, index)
        # Order matters, so a rule wholly covered by one above it is dead: almost always an
        # ordering mistake, which fails quietly at run time unless it fails here.
        for prev_index, prev in earlier:
            if prev.match.covers(rule.match):
                problems.append(
                    f"rule #{index} {rule.name!r}: can never match, "
                    f"rule #{prev_index} {prev.name!r} above it matches everything it does"
                )
                break
        earlier.append((index, rule))
    return problems


class RoutingTable(BaseModel):
    """The ordered routing rules; the first match wins."""

    model_config = ConfigDict(frozen=True)

    rules: tuple[RoutingRule, ...] = ()

    @model_validator(mode="after")
    def _usable(self) -> RoutingTable:
        problems = table_problems(self.rules)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def rule(self, name: str) -> RoutingRule | None:
        """The rule called `name`, if any."""
        return next((r for r in self.rules if r.name == name), None)


class RoutingError(ValueError):
    """A routing-rules file that cannot be used; the message names each bad rule."""


def _parse(raw: Any, where: str) -> RoutingTable:
    if not isinstance(raw, list):
        # An empty file is far likelier a mistake than a wish to route everything by hand.
        hint = " (the file is empty)" if raw is None else ""
        raise RoutingError(f"{where}: expected a list of rules{hint}")
    rules: list[RoutingRule] = []
    problems: list[str] = []
    for index, item in enumerate(raw, 1):
        name = item.get("name") if isinstance(item, dict) else None
        label = f"rule #{index}" + (f" {name!r}" if isinstance(name, str) else "")
        if not isinstance(item, dict):
            problems.append(f"{label}: expected a mapping with name, match and team")
            continue
        try:
            rules.append(RoutingRule.model_validate(item))
        except ValidationError as exc:
            for err in exc.errors(include_url=False):
                loc = ".".join(str(p) for p in err["loc"]) or "(rule)"
                msg = str(err["msg"]).removeprefix("Value error, ")
                problems.append(f"{label}: {loc}: {msg}")
    if not problems:
        problems = table_problems(rules)
    if problems:
        raise RoutingError(f"{where}:\n  " + "\n  ".join(problems))
    return RoutingTable(rules=tuple(rules))


def default_routing() -> RoutingTable:
    """The shipped default rules."""
    text = resources.files("schemas").joinpath("routing_rules.yaml").read_text(encoding="utf-8")
    return _parse(yaml.safe_load(text), "default routing rules")


def load_routing(path: Path | None) -> RoutingTable:
    """The shipped defaults, or the rules of the YAML file at `path`, which replace them whole."""
    if path is None:
        return default_routing()
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise RoutingError(f"{path}: {exc}") from exc
    return _parse(raw, str(path))
