"""Every workaround for the embedded tansu broker, in one place.

Switched on only by the `embedded_broker` setting (set by `concord demo`, the tests and
`concord worker --embedded`); against a real Kafka cluster none of this applies.

Measured on tansu 0.6 with memory storage:

1. No idempotent producer, transactions or exactly-once: they fail at start. Concord does
   not use them on any broker (idempotence comes from deterministic ids and re-send
   checks), so nothing is switched here; the settings below pin them off for clarity.
2. Compaction is ignored: changelog topics grow. Harmless for a local run.
3. ListOffsets "latest" answers the *last batch's base offset + 1*, not the high watermark.
   Faust's table recovery reads a changelog up to that offset, so it stops short of the
   records after the first one in the last batch. The fix: after each batch of state
   writes, close every changelog partition it touched with a one-record batch (an end
   marker, a tombstone for a key nobody uses). "latest" is then the true end again.
4. A fetch that finds no new records is held for the whole `fetch_max_wait_ms`, even when
   records arrive meanwhile (Kafka answers as soon as `fetch_min_bytes` are there). Faust
   asks for 1500 ms, so each hop of an event through the pipeline waited 0.75 s on average
   (measured: aiokafka at 500 ms wait, median 223 ms from produce to fetch; at 100 ms,
   22 ms; at 10 ms, 4 ms). The embedded broker's consumers wait 50 ms instead.
5. tansu holds the first JoinGroup for about half the session timeout: short session and
   rebalance timeouts make a worker (re)start take seconds, not half a minute.
"""

from __future__ import annotations

from typing import Any

from schemas.settings import Settings

# Tombstone key written to close a changelog partition; never a real state key.
END_MARKER_KEY = "\x00concord-end"


def faust_overrides(settings: Settings) -> dict[str, Any]:
    """Faust settings that differ on the embedded broker."""
    if not settings.embedded_broker:
        return {}
    return {
        "broker_session_timeout": min(settings.broker_session_timeout, 6.0),
        "broker_heartbeat_interval": min(settings.broker_heartbeat_interval, 1.0),
        "broker_rebalance_timeout": min(settings.broker_rebalance_timeout, 4.0),
        "producer_acks": -1,
    }


def fetch_max_wait_ms(settings: Settings) -> int | None:
    """The consumer's fetch wait on the embedded broker (workaround 4); None keeps Faust's."""
    return 50 if settings.embedded_broker else None


def needs_changelog_end_marker(settings: Settings) -> bool:
    """Whether state writes must be closed by a one-record batch (workaround 3)."""
    return settings.embedded_broker
