"""The scorecard's rules: thresholds, bands, aggregation, day boundaries."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas.settings import SettingsError, load_settings
from streams.rules.scorecard import (
    AUTO_ROUTING,
    DIMENSIONS,
    FIRST_PASS,
    REFRESH_LATENCY,
    Band,
    DayFigures,
    OrderTimes,
    band_of,
    day_bounds,
    scorecard,
)

T0 = datetime(2026, 3, 2, 1, tzinfo=UTC)


def test_bands_follow_the_seeds() -> None:
    assert [band_of(t) for t in (5, 10, 11, 18, 19, 25)] == [
        Band.URGENT,
        Band.URGENT,
        Band.BOTTLENECKS,
        Band.BOTTLENECKS,
        Band.HEALTHY,
        Band.HEALTHY,
    ]


def test_thresholds_are_inclusive_on_the_good_side() -> None:
    # 15 min median is still a 3; a second more is a 2.
    assert REFRESH_LATENCY.score(900) == 3
    assert REFRESH_LATENCY.score(901) == 2
    assert REFRESH_LATENCY.score(0) == 5
    assert REFRESH_LATENCY.score(10**6) == 1
    # 65% auto-routed is the bar: a 3; just under is a 2.
    assert AUTO_ROUTING.score(65) == 3
    assert AUTO_ROUTING.score(64.99) == 2
    assert AUTO_ROUTING.score(None) is None


@given(st.sampled_from(DIMENSIONS), st.floats(0, 10_000), st.floats(0, 10_000))
def test_a_better_value_never_scores_lower(dim, a, b) -> None:  # type: ignore[no-untyped-def]
    better, worse = (max(a, b), min(a, b)) if dim.higher_is_better else (min(a, b), max(a, b))
    assert 1 <= dim.score(worse) <= dim.score(better) <= 5


def test_described_thresholds_read_like_the_readme() -> None:
    assert REFRESH_LATENCY.describe() == [
        "5: ≤ 60 s",
        "4: ≤ 300 s",
        "3: ≤ 900 s",
        "2: ≤ 3600 s",
        "1: > 3600 s",
    ]
    assert AUTO_ROUTING.describe()[0] == "5: ≥ 90 %"
    assert FIRST_PASS.met(98.5) is True
    assert FIRST_PASS.met(98.4) is False


def figures(orders: list[OrderTimes], **kw: object) -> DayFigures:
    args: dict[str, object] = {
        "crm_latencies": [],
        "anomalies_opened": 0,
        "anomalies_routed": 0,
        "duplicate_orders": 0,
    }
    args.update(kw)
    return DayFigures.from_orders(date(2026, 3, 2), "UTC", orders, **args)  # type: ignore[arg-type]


def test_aggregation_clamps_skew_and_skips_what_was_not_seen() -> None:
    m = timedelta(minutes=1)
    orders = [
        OrderTimes("a", T0, first_sync_at=T0 - m, confirmed_at=T0 + 10 * m),  # skew: 0 s
        OrderTimes("b", T0, first_sync_at=T0 + 2 * m, rush=True, allocated_at=T0 + 90 * m),
        OrderTimes("c", T0, rush=True, corrected=True, inconsistent=True),
    ]
    f = figures(orders, crm_latencies=[5.0, 50.0, 500.0], anomalies_opened=4, anomalies_routed=3)
    assert f.first_sync_median_seconds == 60.0  # median of 0 and 120
    assert f.first_sync_seen == 2
    assert f.processing_mean_seconds == 600.0
    assert (f.rush_orders, f.rush_allocated, f.rush_response_mean_seconds) == (2, 1, 5400.0)
    values = f.values()
    assert values["auto_routing_rate"] == 75.0
    assert values["first_pass_accuracy"] == pytest.approx(200 / 3)
    assert values["inconsistent_per_100"] == pytest.approx(100 / 3)
    assert values["status_refresh_latency"] == 50.0


def test_a_card_with_a_dimension_unmeasured_has_no_band() -> None:
    card = scorecard(figures([OrderTimes("a", T0, first_sync_at=T0)]))
    assert card["unscored"] == ["status_refresh_latency", "auto_routing_rate"]
    assert card["band"] is None
    assert card["out_of"] == 15
    assert card["total"] == 15  # first sync 0 s, no inconsistency, no duplicate


def test_a_day_is_the_plants_calendar_day() -> None:
    start, end = day_bounds(date(2026, 3, 2), "Asia/Shanghai")
    assert start == datetime(2026, 3, 1, 16, tzinfo=UTC)
    assert end - start == timedelta(hours=24)
    # The day clocks go forward in New York has 23 hours.
    start, end = day_bounds(date(2026, 3, 8), "America/New_York")
    assert end - start == timedelta(hours=23)


def test_an_unknown_time_zone_is_a_setting_error() -> None:
    with pytest.raises(ValueError, match="unknown time zone 'Mars/Olympus'"):
        day_bounds(date(2026, 3, 2), "Mars/Olympus")
    with pytest.raises(SettingsError, match="timezone"):
        load_settings(timezone="Mars/Olympus")


def test_the_readme_lists_the_thresholds_the_code_uses() -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Order health scorecard", 1)[1].split("\n## ", 1)[0]
    table = [
        line
        for line in section.splitlines()
        if line.startswith("| ") and line.count("|") == 7 and ("≤" in line or "≥" in line)
    ]
    assert len(table) == len(DIMENSIONS)
    for dim, row in zip(DIMENSIONS, table, strict=True):
        cells = [c.strip() for c in row.strip("|").split("|")][1:]
        numbers = [float(re.sub(r"[^\d.]", "", c)) for c in cells]
        assert numbers == [*dim.bounds, dim.bounds[-1]], dim.key
        better = "≥" if dim.higher_is_better else "≤"
        assert all(c.startswith(better) for c in cells[:4]), dim.key
