"""All settings in one place: environment (prefix CONCORD_), an optional YAML file, defaults."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from schemas.privacy import MIN_KEY_BYTES
from streams.rules.breaker import BreakerSettings
from streams.rules.ingest import DEFAULT_DETAILS_WAIT, InputLimits
from streams.rules.scorecard import zone_name

CONFIG_FILE_ENV = "CONCORD_CONFIG"

# The worker's stages, in pipeline order (streams/app.py).
STAGES = ("ingest", "orders", "dedupe", "decisions", "anomaly-index", "breaker")


class Settings(BaseSettings):
    """Concord's settings. Every field can be set as CONCORD_<NAME> or in the YAML file."""

    model_config = SettingsConfigDict(
        env_prefix="CONCORD_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
        frozen=True,
    )

    # Kafka
    broker_url: str = Field(
        default="kafka://127.0.0.1:9092",
        description="Kafka bootstrap servers, comma separated, e.g. kafka://k1:9092;k2:9092",
    )
    broker_username: str | None = None
    broker_password: SecretStr | None = None
    embedded_broker: bool = Field(
        default=False,
        description="The broker is the local tansu started by `concord broker`: "
        "switches on the tansu workarounds (streams/tansu.py)",
    )
    topic_prefix: str = Field(default="concord", pattern=r"^[A-Za-z0-9._-]{1,100}$")
    topic_partitions: int = Field(default=8, ge=1, le=10_000)
    topic_replication: int = Field(default=1, ge=1, le=16)
    app_id: str = Field(default="concord", pattern=r"^[A-Za-z0-9._-]{1,100}$")

    # Storage
    data_dir: Path = Path(".concord")
    clickhouse_dsn: SecretStr | None = Field(
        default=None,
        description="chdb://PATH (embedded, default <data_dir>/clickhouse) or http(s)://user:pw@host:port",
    )
    clickhouse_database: str = Field(default="concord", pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
    status_map_file: Path | None = None
    routing_file: Path | None = Field(
        default=None, description="YAML routing rules (anomaly → team); built-in rules if unset"
    )

    # Worker
    web_host: str = "127.0.0.1"
    web_port: int = Field(default=6066, ge=1, le=65535)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    ingest_batch_max: int = Field(default=5000, ge=1, le=100_000)
    ingest_batch_within: float = Field(default=0.5, gt=0, le=60)
    stages: str = Field(
        default="all",
        description="The stages this worker runs: all, or some of "
        + ", ".join(STAGES)
        + " (comma separated). Workers running another set need an app_id of their own",
    )
    allowed_lateness: timedelta = Field(
        default=timedelta(minutes=2),
        description="How late an event may arrive before the watermark has passed it",
    )
    source_idle_after: timedelta = Field(
        default=timedelta(seconds=60),
        description="A source partition with no event for this long stops holding event time",
    )
    watermark_idle_after: timedelta = Field(
        default=timedelta(seconds=60),
        description="With no event for this long (wall time), the watermark follows the wall clock",
    )
    max_event_age: timedelta = Field(
        default=InputLimits().max_age,
        gt=timedelta(0),
        description="An event (or order.placed_at) older than this before the wall clock is "
        "dead-lettered implausible_time",
    )
    max_event_ahead: timedelta = Field(
        default=InputLimits().max_ahead,
        ge=timedelta(0),
        description="An event (or order.placed_at) further than this ahead of the wall clock "
        "is dead-lettered implausible_time",
    )
    order_details_wait: timedelta = Field(
        default=DEFAULT_DETAILS_WAIT,
        gt=timedelta(0),
        description="How long (event time, on ingest's watermark) an ERP event waits for the "
        "event carrying its order's details before it is dead-lettered missing_order",
    )
    max_record_bytes: int = Field(default=InputLimits().record_bytes, ge=1024)
    max_json_depth: int = Field(
        default=InputLimits().depth,
        ge=4,  # an order line sits at depth 4
        le=200,  # the JSON parser refuses deeper input anyway (as invalid_json)
    )
    max_string_bytes: int = Field(default=InputLimits().string_bytes, ge=256)
    max_order_lines: int = Field(default=InputLimits().order_lines, ge=1)
    duplicate_window: timedelta = Field(
        default=timedelta(minutes=15),
        description="Orders of one fingerprint placed this close together are duplicates (±)",
    )
    breaker: BreakerSettings = Field(
        default_factory=BreakerSettings,
        description="Intake breaker thresholds (§7); env CONCORD_BREAKER__MIN_ORDERS=… etc.",
    )
    order_retention: timedelta = Field(
        default=timedelta(days=35),
        description="How long a finished (or never-linked) order stays in the per-order state",
    )
    timezone: str = Field(
        default="UTC",
        description="The plant's time zone (IANA name): where a calendar day starts, "
        "e.g. for the scorecard",
    )
    clickhouse_enabled: bool = Field(
        default=True, description="Write events, order states, anomalies and KPIs to ClickHouse"
    )
    # Access to the read API, and the key of the phone hashes
    api_token: SecretStr | None = Field(
        default=None,
        description="Bearer token the read API requires (all but /health, /metrics, /desk); "
        "without one the worker serves loopback only",
    )
    phone_search_burst: int = Field(
        default=10, ge=1, le=10_000, description="Phone searches a client may make at once"
    )
    phone_search_per_minute: float = Field(
        default=30.0, gt=0, le=60_000, description="A client's phone searches per minute after"
    )
    phone_key: SecretStr | None = Field(
        default=None,
        description="Secret key of the phone hashes (HMAC-SHA256); the same on every worker "
        "of a cluster. Unset: generated once and kept in <data_dir>/phone.key",
    )
    phone_key_previous: SecretStr | None = Field(
        default=None,
        description="The key before a rotation: phone lookups still find orders stored with it",
    )
    broker_session_timeout: float = Field(default=30.0, gt=0)
    broker_heartbeat_interval: float = Field(default=3.0, gt=0)
    broker_rebalance_timeout: float = Field(default=60.0, gt=0)

    @field_validator("broker_url")
    @classmethod
    def _kafka_scheme(cls, value: str) -> str:
        if not value.startswith("kafka://"):
            raise ValueError("must start with kafka:// (e.g. kafka://127.0.0.1:9092)")
        return value

    @field_validator("stages")
    @classmethod
    def _known_stages(cls, value: str) -> str:
        names = {name.strip() for name in value.split(",") if name.strip()}
        if names == {"all"}:
            return "all"
        unknown = sorted(names - set(STAGES))
        if unknown or not names:
            raise ValueError(
                f"unknown stage {', '.join(unknown) or '(none given)'}; "
                f"give all, or some of {', '.join(STAGES)}"
            )
        return ",".join(stage for stage in STAGES if stage in names)

    @field_validator("api_token", "phone_key", "phone_key_previous")
    @classmethod
    def _long_secret(cls, value: SecretStr | None) -> SecretStr | None:
        # A short secret can be guessed: the token by trying it, the phone key (and with it
        # every phone) offline against a stored hash.
        if value is not None and len(value.get_secret_value().encode()) < MIN_KEY_BYTES:
            raise ValueError(
                f"must be at least {MIN_KEY_BYTES} bytes; make one with `openssl rand -hex 32`"
            )
        return value

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        return zone_name(value)

    @field_validator("status_map_file", "routing_file")
    @classmethod
    def _file_exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"no such file: {value}")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if settings_cls.model_config.get("yaml_file"):
            sources.append(YamlConfigSettingsSource(settings_cls))
        return tuple(sources)

    def runs(self, stage: str) -> bool:
        """Whether this worker runs `stage` (one of STAGES)."""
        return self.stages == "all" or stage in self.stages.split(",")

    def topic(self, name: str) -> str:
        """The full name of one of Concord's topics, e.g. topic('erp.events')."""
        return f"{self.topic_prefix}.{name}"

    @property
    def input_limits(self) -> InputLimits:
        """What one input record may be (ingest's size, depth and time checks)."""
        return InputLimits(
            record_bytes=self.max_record_bytes,
            depth=self.max_json_depth,
            string_bytes=self.max_string_bytes,
            order_lines=self.max_order_lines,
            max_age=self.max_event_age,
            max_ahead=self.max_event_ahead,
        )

    @property
    def bootstrap_servers(self) -> list[str]:
        """host:port pairs for aiokafka."""
        hosts = self.broker_url.removeprefix("kafka://")
        return [h.strip() for h in hosts.replace(";", ",").split(",") if h.strip()]

    @property
    def clickhouse_url(self) -> str:
        """The ClickHouse DSN, defaulting to an embedded chdb path under the data dir."""
        if self.clickhouse_dsn is not None:
            return self.clickhouse_dsn.get_secret_value()
        return f"chdb://{(self.data_dir / 'clickhouse').resolve()}"


class SettingsError(ValueError):
    """Settings that cannot start Concord; the message names each bad setting."""


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Settings from overrides, the environment and the YAML file, or a SettingsError."""
    path = config_file or (
        Path(os.environ[CONFIG_FILE_ENV]) if CONFIG_FILE_ENV in os.environ else None
    )
    cls: type[Settings] = Settings
    if path is not None:
        if not path.is_file():
            raise SettingsError(f"config file {path} does not exist")
        config = SettingsConfigDict(**{**Settings.model_config, "yaml_file": str(path)})
        cls = type(
            "FileSettings", (Settings,), {"model_config": config, "__doc__": Settings.__doc__}
        )
    try:
        return cls(**overrides)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            name = ".".join(str(p) for p in err["loc"]) or "?"
            problems.append(f"setting {name} (CONCORD_{name.upper()}): {err['msg']}")
        raise SettingsError("invalid settings:\n  " + "\n  ".join(problems)) from exc
