"""Avro serializers for the email producer's three topics, with their schemas registered up front.

Registering on start (rather than on the first record) makes an incompatible schema change fail before any
email is read, with the registry's answer in the message. Subjects follow the topic-name strategy
(``<topic>-value``); keys are plain UTF-8 strings.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient, topic_subject_name_strategy
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext
from tenacity import retry, retry_if_exception, stop_after_delay, wait_exponential

from omnistream.dead_letter import DeadLetter, dead_letter_to_dict
from omnistream.kafka import load_schema
from producers.emails.checkpoint import Checkpoint, checkpoint_to_dict
from producers.emails.model import StoreOrder, store_order_to_dict

log = logging.getLogger(__name__)
T = TypeVar("T")

ORDER_SCHEMA = "store_order"
CHECKPOINT_SCHEMA = "email_checkpoint"
DEAD_LETTER_SCHEMA = "dead_letter"


# omnistream.kafka.registry_client's requests time out; a registry that keeps timing out (or answering
# 5xx) for this long is down.
REGISTRY_RETRY_FOR_S = 120


class SchemaRejected(RuntimeError):
    """The registry refused a schema (most often: not BACKWARD-compatible with the subject's last version)."""


class RegistryUnavailable(RuntimeError):
    """The schema registry did not answer within the retry window."""


def _registry_unreachable(exc: BaseException) -> bool:
    if isinstance(exc, SchemaRegistryError):
        return exc.http_status_code >= 500 or exc.http_status_code < 0
    return isinstance(exc, (OSError, httpx.TransportError))


_registry_retry = retry(
    retry=retry_if_exception(_registry_unreachable),
    wait=wait_exponential(multiplier=0.5, max=10),
    stop=stop_after_delay(REGISTRY_RETRY_FOR_S),
    before_sleep=lambda state: log.warning(
        "schema registry unavailable (%s); retry %d",
        state.outcome.exception() if state.outcome else None,
        state.attempt_number,
    ),
    reraise=True,
)


def _with_registry(what: str, call: Callable[[], T]) -> T:
    """``call()``, retried while the registry is unreachable; ``RegistryUnavailable`` if it stays so."""
    try:
        return _registry_retry(call)()
    except Exception as exc:
        if _registry_unreachable(exc):
            raise RegistryUnavailable(
                f"the schema registry did not answer for {REGISTRY_RETRY_FOR_S} s while {what} "
                f"({type(exc).__name__}: {exc}); check that it is running (omnistream stack status) and "
                "OMNISTREAM_REGISTRY__HOST / OMNISTREAM_REGISTRY__PORT"
            ) from exc
        raise


def register(registry: SchemaRegistryClient, subject: str, schema_name: str) -> int:
    """Register ``schemas/<schema_name>.avsc`` under ``subject``; returns its id (idempotent)."""
    schema = Schema(load_schema(schema_name), "AVRO")
    try:
        schema_id = _with_registry(
            f"registering {subject}", lambda: registry.register_schema(subject, schema)
        )
    except SchemaRegistryError as exc:
        raise SchemaRejected(
            f"the schema registry refused schemas/{schema_name}.avsc for subject {subject!r}: {exc}. "
            "The registry enforces BACKWARD compatibility: add fields with defaults, or write to new topics."
        ) from exc
    log.info("schema %s registered under %s (id %d)", schema_name, subject, schema_id)
    return schema_id


def value_subject(topic: str) -> str:
    return f"{topic}-value"


@dataclass(frozen=True)
class EmailSerde:
    """Value serializers of the orders, dead-letter and checkpoint topics; a deserializer for checkpoints."""

    orders_topic: str
    dead_letters_topic: str
    checkpoints_topic: str
    _order: AvroSerializer
    _dead_letter: AvroSerializer
    _checkpoint: AvroSerializer
    _checkpoint_reader: AvroDeserializer

    @classmethod
    def registered(
        cls, registry: SchemaRegistryClient, orders: str, dead_letters: str, checkpoints: str
    ) -> EmailSerde:
        """Register the three value schemas and build their serializers."""
        for topic, name in (
            (orders, ORDER_SCHEMA),
            (dead_letters, DEAD_LETTER_SCHEMA),
            (checkpoints, CHECKPOINT_SCHEMA),
        ):
            register(registry, value_subject(topic), name)

        def serializer(name: str, to_dict: Callable[[Any, Any], dict[str, Any]]) -> AvroSerializer:
            # The subjects registered above, named by the topic-name strategy: no association lookups.
            conf = {"subject.name.strategy": topic_subject_name_strategy}
            return AvroSerializer(registry, load_schema(name), to_dict, conf)

        return cls(
            orders,
            dead_letters,
            checkpoints,
            serializer(ORDER_SCHEMA, store_order_to_dict),
            serializer(DEAD_LETTER_SCHEMA, dead_letter_to_dict),
            serializer(CHECKPOINT_SCHEMA, checkpoint_to_dict),
            AvroDeserializer(registry, load_schema(CHECKPOINT_SCHEMA)),
        )

    def order(self, order: StoreOrder) -> bytes:
        return self._serialize(self._order, order, self.orders_topic)

    def dead_letter(self, letter: DeadLetter) -> bytes:
        return self._serialize(self._dead_letter, letter, self.dead_letters_topic)

    def checkpoint(self, checkpoint: Checkpoint) -> bytes:
        return self._serialize(self._checkpoint, checkpoint, self.checkpoints_topic)

    @_registry_retry
    def read_checkpoint(self, value: bytes) -> dict[str, Any]:
        record = self._checkpoint_reader(
            value, SerializationContext(self.checkpoints_topic, MessageField.VALUE)
        )
        assert isinstance(record, dict)
        return record

    @staticmethod
    def _serialize(serializer: AvroSerializer, obj: object, topic: str) -> bytes:
        ctx = SerializationContext(topic, MessageField.VALUE)
        # The first record of a topic looks its schema id up in the registry.
        value = _with_registry(f"serializing for {topic}", lambda: serializer(obj, ctx))
        assert value is not None  # only None in, None out
        return value
