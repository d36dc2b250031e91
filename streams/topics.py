"""Concord's topic names and their creation at start-up."""

from __future__ import annotations

from dataclasses import dataclass

from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from schemas.settings import Settings
from schemas.stages import Source


@dataclass(frozen=True)
class TopicNames:
    """Every topic Concord reads or writes, from one prefix."""

    sources: dict[Source, str]
    normalized: str
    decisions: str
    anomalies: str
    commands: str
    deadletter: str
    placements: str  # internal: ERP orders keyed by dedupe fingerprint
    anomaly_index: str  # internal: anomalies and decisions keyed by anomaly id
    breaker: str  # internal, one partition: intake counts and breaker decisions

    @classmethod
    def from_settings(cls, settings: Settings) -> TopicNames:
        """Names under the configured prefix."""
        return cls(
            sources={s: settings.topic(f"{s.value}.events") for s in Source},
            normalized=settings.topic("normalized"),
            decisions=settings.topic("decisions"),
            anomalies=settings.topic("anomalies"),
            commands=settings.topic("commands"),
            deadletter=settings.topic("deadletter"),
            placements=settings.topic("placements"),
            anomaly_index=settings.topic("anomaly-index"),
            breaker=settings.topic("breaker"),
        )

    def all(self) -> list[str]:
        """All names, inputs first."""
        return [
            *self.sources.values(),
            self.decisions,
            self.normalized,
            self.anomalies,
            self.commands,
            self.deadletter,
            self.placements,
            self.anomaly_index,
            self.breaker,
        ]

    def source_of(self) -> dict[str, Source]:
        """Topic name -> the source whose events it carries."""
        return {name: source for source, name in self.sources.items()}


async def ensure_topics(settings: Settings, names: list[str] | None = None) -> list[str]:
    """Create the missing topics with the configured partitions; return the ones created."""
    topics = TopicNames.from_settings(settings)
    wanted = names or topics.all()
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.bootstrap_servers, **kafka_auth(settings)
    )
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [name for name in wanted if name not in existing]
        if missing:
            await admin.create_topics(
                [
                    NewTopic(
                        name,
                        # One breaker for the whole group: its input has one partition.
                        1 if name == topics.breaker else settings.topic_partitions,
                        settings.topic_replication,
                    )
                    for name in missing
                ]
            )
        return missing
    finally:
        await admin.close()


def kafka_auth(settings: Settings) -> dict[str, object]:
    """aiokafka connection arguments for SASL/PLAIN when credentials are set."""
    if settings.broker_username is None or settings.broker_password is None:
        return {}
    return {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "PLAIN",
        "sasl_plain_username": settings.broker_username,
        "sasl_plain_password": settings.broker_password.get_secret_value(),
    }
