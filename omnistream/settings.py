"""One settings object for every part of omnistream.

Values come from environment variables ``OMNISTREAM_<SECTION>__<KEY>`` (e.g. ``OMNISTREAM_KAFKA__PORT``),
then from ``.env`` / ``.env.local`` in the working directory, then from the defaults below, which point
at the local stack (``omnistream stack up``).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import BaseModel, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

LOOPBACK = "127.0.0.1"
# Default ports sit below Linux's ephemeral range (32768-60999): a port in that range can be taken at
# any moment by an outgoing connection's local end, and a server then fails to bind.


class StackSettings(BaseModel):
    """Where the local stack keeps its downloads, data, logs and pid files."""

    state_dir: Path = Path(".omnistream")
    # Downloaded servers; empty means "<state_dir>/dist". Several stacks may share one.
    dist_dir: Path | None = None
    # Apicurio Registry 3.x needs Java 21+; empty means "find one under /usr/lib/jvm".
    registry_java_home: str = ""
    java_home: str = ""
    start_timeout_s: float = 180.0


class PostgresSettings(BaseModel):
    host: str = LOOPBACK
    port: int = 15432
    database: str = "shop"
    superuser: str = "postgres"
    # Empty for the local stack, whose superuser is trusted on loopback; set it for any other server.
    superuser_password: SecretStr = SecretStr("")
    app_user: str = "shop_app"
    app_password: SecretStr = SecretStr("shop_app")
    replication_user: str = "debezium"
    replication_password: SecretStr = SecretStr("debezium")
    publication: str = "omnistream_shop"
    max_replication_slots: int = 10
    max_wal_senders: int = 10

    def dsn(self, user: str | None = None, password: str | None = None, dbname: str | None = None) -> str:
        """A libpq connection string; the superuser's unless ``user`` is given."""
        parts = [f"host={self.host}", f"port={self.port}", f"dbname={dbname or self.database}"]
        parts.append(f"user={user or self.superuser}")
        if user is None:
            password = self.superuser_password.get_secret_value()
        if password:
            parts.append(f"password={password}")
        return " ".join(parts)

    def app_dsn(self) -> str:
        return self.dsn(self.app_user, self.app_password.get_secret_value())

    def replication_dsn(self) -> str:
        return self.dsn(self.replication_user, self.replication_password.get_secret_value())


class KafkaSettings(BaseModel):
    host: str = LOOPBACK
    port: int = 19092
    controller_port: int = 19093
    heap: str = "512m"

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"


class RegistrySettings(BaseModel):
    host: str = LOOPBACK
    port: int = 18081
    management_port: int = 18082  # Quarkus health and metrics
    heap: str = "384m"

    @property
    def url(self) -> str:
        """The Confluent-compatible API, which confluent-kafka's SchemaRegistryClient talks to."""
        return f"http://{self.host}:{self.port}/apis/ccompat/v7"


class ConnectSettings(BaseModel):
    host: str = LOOPBACK
    port: int = 18083
    heap: str = "768m"
    group_id: str = "omnistream-connect"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


class MailSettings(BaseModel):
    host: str = LOOPBACK
    smtp_port: int = 13025
    imap_port: int = 13143
    api_port: int = 18180
    # GreenMail keeps every message in its heap: sized for the demo's and a soak's volumes.
    heap: str = "384m"
    domain: str = "stores.omnistream.local"
    mailbox_user: str = "confirmations"
    mailbox_password: SecretStr = SecretStr("confirmations")

    @property
    def mailbox_address(self) -> str:
        return f"{self.mailbox_user}@{self.domain}"


class GcsSettings(BaseModel):
    host: str = LOOPBACK
    port: int = 14443
    project: str = "omnistream-local"
    bucket: str = "omnistream-history"
    # Empty means "the local emulator"; set to use real Google Cloud Storage with default credentials.
    emulator_host: str = ""

    @property
    def endpoint(self) -> str:
        return self.emulator_host or f"http://{self.host}:{self.port}"


class ApiSettings(BaseModel):
    host: str = LOOPBACK
    port: int = 15080
    token: SecretStr = SecretStr("omnistream-dev-token")

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


class LandingSettings(BaseModel):
    """The landing sink: Kafka topics to Parquet files, in a local directory or a GCS bucket."""

    # Empty means "<state_dir>/landing".
    dir: Path | None = None
    # Set to land in this bucket (at the settings.gcs endpoint, under "landing/") instead of `dir`.
    bucket: str = ""
    flush_records: int = 10_000
    flush_seconds: float = 5.0
    group_id: str = "omnistream-landing"


class MetricsSettings(BaseModel):
    """Prometheus endpoints (``/metrics``) of the long-running pipeline processes; port 0 turns one off."""

    host: str = LOOPBACK
    sink_port: int = 19101
    email_producer_port: int = 19102
    masterdata_producer_port: int = 19103


class AirflowSettings(BaseModel):
    """Airflow in the local stack: its metadata database lives in the stack's PostgreSQL."""

    host: str = LOOPBACK
    port: int = 18090  # API server and UI
    database: str = "airflow"
    user: str = "airflow"
    # How often the omnistream_dbt DAG builds the warehouse.
    dbt_every_minutes: float = 15.0

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


class PipelineSettings(BaseModel):
    """What ``omnistream up`` runs beside the servers, and how it is supervised."""

    # simulated: run the API, order and email simulators; none: real sources feed the pipeline.
    sources: str = "simulated"
    order_rate: float = 2.0  # new online orders per second
    email_rate: float = 1.0  # store emails per second
    masterdata_every: str = "5m"  # master-data snapshot interval
    history_rows: int = 200_000  # order lines of history the first `up` puts in the bucket
    # `status`: a streaming topic with no landed record for this long is stale (simulated sources only).
    stale_after_s: float = 600.0
    # `status`: a replication slot retaining more WAL than this is degraded.
    max_retained_wal_bytes: int = 1 << 30
    # A process that dies within `start_seconds` of starting is retried after 1 s, 2 s, … up to
    # `start_retries` times, then marked FATAL (a crash loop, shown by `omnistream status`).
    start_seconds: int = 5
    start_retries: int = 10
    # The watchdog: how often it looks at Connect's tasks and FATAL processes, and its backoff cap.
    watch_every_s: float = 10.0
    restart_backoff_max_s: float = 300.0


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="OMNISTREAM_",
        env_nested_delimiter="__",
        env_file=(".env", ".env.local"),
        extra="ignore",
    )

    stack: StackSettings = StackSettings()
    postgres: PostgresSettings = PostgresSettings()
    kafka: KafkaSettings = KafkaSettings()
    registry: RegistrySettings = RegistrySettings()
    connect: ConnectSettings = ConnectSettings()
    mail: MailSettings = MailSettings()
    gcs: GcsSettings = GcsSettings()
    api: ApiSettings = ApiSettings()
    landing: LandingSettings = LandingSettings()
    metrics: MetricsSettings = MetricsSettings()
    airflow: AirflowSettings = AirflowSettings()
    pipeline: PipelineSettings = PipelineSettings()


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()


def settings_environment(settings: Settings) -> dict[str, str]:
    """``OMNISTREAM_*`` variables that make a child process (an ``omnistream`` command) use ``settings``."""
    env: dict[str, str] = {}
    for section in type(settings).model_fields:
        model = getattr(settings, section)
        for key in type(model).model_fields:
            value = getattr(model, key)
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            if isinstance(value, Path):
                value = value.resolve()
            if value is not None:
                env[f"OMNISTREAM_{section.upper()}__{key.upper()}"] = str(value)
    return env
