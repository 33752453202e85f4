"""Kafka and schema-registry clients built from the settings, and idempotent topic creation."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic
from confluent_kafka.error import KafkaError
from confluent_kafka.schema_registry import SchemaRegistryClient

from omnistream.settings import Settings
from omnistream.stack.versions import PROJECT_ROOT

log = logging.getLogger(__name__)

SCHEMAS_DIR = PROJECT_ROOT / "schemas"


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int = 3
    config: dict[str, str] = field(default_factory=dict)

    @classmethod
    def compacted(cls, name: str, partitions: int = 3) -> TopicSpec:
        return cls(name, partitions, {"cleanup.policy": "compact"})


def client_config(settings: Settings, **overrides: Any) -> dict[str, Any]:
    """librdkafka config for any client of the configured cluster; dotted keys as librdkafka spells them."""
    return {"bootstrap.servers": settings.kafka.bootstrap_servers, **overrides}


def producer_config(settings: Settings, **overrides: Any) -> dict[str, Any]:
    """An idempotent producer: retries never duplicate or reorder records within a partition."""
    defaults = {"enable.idempotence": True, "acks": "all", "linger.ms": 20, "compression.type": "zstd"}
    return client_config(settings, **{**defaults, **overrides})


def admin(settings: Settings) -> AdminClient:
    return AdminClient(client_config(settings))


def ensure_topics(settings: Settings, specs: Iterable[TopicSpec]) -> None:
    """Create the topics that do not exist yet; existing ones are left as they are."""
    # Keep the client referenced until every future resolves: a collected AdminClient destroys its
    # handle and fails the pending futures with _DESTROY.
    client = admin(settings)
    futures = client.create_topics(
        [NewTopic(s.name, num_partitions=s.partitions, replication_factor=1, config=s.config) for s in specs],
        operation_timeout=30,
    )
    for name, future in futures.items():
        try:
            future.result(timeout=60)
            log.info("created topic %s", name)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise


def registry_client(settings: Settings) -> SchemaRegistryClient:
    # A timeout, so an unresponsive registry fails a call instead of hanging it.
    return SchemaRegistryClient({"url": settings.registry.url, "timeout": 15})


@lru_cache(maxsize=32)
def load_schema(name: str) -> str:
    """The text of ``schemas/<name>.avsc``."""
    path: Path = SCHEMAS_DIR / f"{name}.avsc"
    if not path.exists():
        raise FileNotFoundError(f"no Avro schema {path}")
    return path.read_text()
