"""The embedded broker's workarounds apply to it alone (streams/tansu.py)."""

from __future__ import annotations

from schemas.settings import Settings
from streams import tansu
from streams.app import faust_settings

EMBEDDED = Settings(embedded_broker=True)
KAFKA = Settings(embedded_broker=False)


def test_kafka_keeps_fausts_settings() -> None:
    assert tansu.faust_overrides(KAFKA) == {}
    assert tansu.fetch_max_wait_ms(KAFKA) is None
    assert tansu.needs_changelog_end_marker(KAFKA) is False
    conf = faust_settings(KAFKA)
    assert conf["broker_session_timeout"] == KAFKA.broker_session_timeout


def test_the_embedded_broker_gets_short_waits_and_end_markers() -> None:
    conf = faust_settings(EMBEDDED)
    assert conf["broker_session_timeout"] <= 6.0
    assert conf["broker_rebalance_timeout"] <= 4.0
    assert tansu.needs_changelog_end_marker(EMBEDDED) is True
    assert tansu.fetch_max_wait_ms(EMBEDDED) == 50
