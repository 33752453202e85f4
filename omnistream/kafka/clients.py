"""Kafka clients built from the settings: client and producer configs, a checked admin client, topics.

librdkafka's own log lines go to the ``librdkafka`` logger at DEBUG: a broker that refuses connections
makes librdkafka log every 50 ms, and each failure that matters reaches the code anyway, as an exception
or through ``error_cb``. ``omnistream -v`` shows them.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic
from confluent_kafka.error import KafkaError

from omnistream.errors import Unreachable
from omnistream.settings import Settings

log = logging.getLogger(__name__)

# How long a command waits for the cluster to answer at all before saying it is unreachable.
CONNECT_TIMEOUT_S = 5.0


class KafkaUnreachable(Unreachable):
    """The Kafka cluster did not answer."""


class _LibrdkafkaLog:
    """A ``logger`` for librdkafka that files everything it says at DEBUG (see the module docstring)."""

    def __init__(self) -> None:
        self._log = logging.getLogger("librdkafka")

    def log(self, level: int, msg: str, *args: Any) -> None:
        if self._log.isEnabledFor(logging.DEBUG):
            self._log.debug("[%s] " + msg, logging.getLevelName(level), *args)


LIBRDKAFKA_LOG = _LibrdkafkaLog()


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
    return {"bootstrap.servers": settings.kafka.bootstrap_servers, "logger": LIBRDKAFKA_LOG, **overrides}


def producer_config(settings: Settings, **overrides: Any) -> dict[str, Any]:
    """An idempotent producer: retries never duplicate or reorder records within a partition."""
    defaults = {"enable.idempotence": True, "acks": "all", "linger.ms": 20, "compression.type": "zstd"}
    return client_config(settings, **{**defaults, **overrides})


def reader_config(settings: Settings, purpose: str, **overrides: Any) -> dict[str, Any]:
    """A consumer that is assigned partitions and reads them to their end, never joining a group.

    Its group id is unique and never committed to, so it shows up in no group listing's lag.
    """
    return client_config(
        settings,
        **{
            "group.id": f"omnistream-{purpose}-{uuid.uuid4().hex[:12]}",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            # The end of a partition is the EOF event (see omnistream.kafka.offsets.read_to_end).
            "enable.partition.eof": True,
            **overrides,
        },
    )


def admin(settings: Settings) -> AdminClient:
    return AdminClient(client_config(settings))


def connect(settings: Settings, timeout_s: float = CONNECT_TIMEOUT_S) -> AdminClient:
    """An admin client of the cluster, checked to answer within ``timeout_s``; ``KafkaUnreachable`` if not."""
    client = admin(settings)
    try:
        client.list_topics(timeout=timeout_s)
    except KafkaException as exc:
        raise unreachable(settings, exc, timeout_s) from exc
    return client


def unreachable(settings: Settings, exc: KafkaException, timeout_s: float) -> KafkaUnreachable:
    """The error for a cluster that did not answer ``exc``'s request within ``timeout_s``."""
    error = exc.args[0] if exc.args else None
    detail = error.str() if isinstance(error, KafkaError) else str(exc)
    return KafkaUnreachable(
        f"Kafka at {settings.kafka.bootstrap_servers} did not answer within {timeout_s:.0f} s ({detail}). "
        "Start the local stack with `omnistream stack up`, or point OMNISTREAM_KAFKA__HOST / "
        "OMNISTREAM_KAFKA__PORT at a running cluster."
    )


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
