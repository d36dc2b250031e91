"""The order health scorecard in the terminal (`concord scorecard`, the demo's last screen)."""

from __future__ import annotations

from typing import Any

import httpx
from rich.console import Group
from rich.table import Table
from rich.text import Text

from concord.worker_api import WorkerAPI

_BAND_STYLE = {"urgent": "bold red", "bottlenecks": "bold yellow", "healthy": "bold green"}
_BAND_TEXT = {
    "urgent": "≤ 10: the order flow needs rebuilding",
    "bottlenecks": "11–18: local bottlenecks",
    "healthy": "≥ 19: relatively healthy",
}


class ScorecardUnavailableError(RuntimeError):
    """The worker did not answer with a scorecard (unreachable, ClickHouse off or down)."""


def fetch(
    api: WorkerAPI, *, day: str | None = None, tz: str | None = None, timeout: float = 60
) -> dict[str, Any] | None:
    """A running worker's `GET /scorecard`; None while no order is placed (its 404)."""
    params = {k: v for k, v in (("day", day), ("tz", tz)) if v}
    try:
        answer = api.get("/scorecard", params=params, timeout=timeout)
        body = answer.json()
    except (httpx.HTTPError, ValueError) as exc:
        raise ScorecardUnavailableError(f"no scorecard from {api.base_url}: {exc}") from exc
    if answer.status_code == 404:
        return None
    if answer.status_code != 200:
        raise ScorecardUnavailableError(f"{api.base_url}: {body.get('error', answer.text)}")
    card: dict[str, Any] = body
    return card


def _value(item: dict[str, Any]) -> str:
    value = item["value"]
    return "no data" if value is None else f"{value:g} {item['unit']}"


def render(card: dict[str, Any]) -> Group:
    """The five scores with their total and band, then the plant's three hard figures."""
    scores = Table(title=f"order health scorecard, {card['day']} ({card['timezone']})")
    scores.add_column("dimension")
    scores.add_column("measured", justify="right")
    scores.add_column("score", justify="right")
    scores.add_column("on")
    for dim in card["dimensions"]:
        score = dim["score"]
        style = "red" if score is not None and score <= 2 else "green" if score == 5 else ""
        scores.add_row(
            dim["title"],
            _value(dim),
            Text("–" if score is None else str(score), style=style),
            dim["basis"],
        )
    band = card["band"]
    if band is None:
        verdict = Text(
            f"total {card['total']} of {card['out_of']}; no band: "
            f"no data for {', '.join(card['unscored'])}",
            style="yellow",
        )
    else:
        verdict = Text(
            f"total {card['total']} of 25 → {band} ({_BAND_TEXT[band]})", style=_BAND_STYLE[band]
        )
    figures = Table(title="the plant's three hard figures")
    figures.add_column("figure")
    figures.add_column("measured", justify="right")
    figures.add_column("target")
    figures.add_column("met")
    figures.add_column("on")
    for target in card["targets"]:
        met = target["met"]
        figures.add_row(
            target["title"],
            _value(target),
            target["target"],
            Text("–" if met is None else "yes" if met else "no", style="green" if met else "red"),
            target["basis"],
        )
    return Group(scores, verdict, figures)
