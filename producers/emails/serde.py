"""Avro serializers for the email producer's three topics, with their schemas registered up front.

Registering on start (rather than on the first record) makes an incompatible schema change fail before any
email is read, with the registry's answer in the message. Subjects follow the topic-name strategy
(``<topic>-value``); keys are plain UTF-8 strings.

An order is checked against its schema before it is written (``RecordDoesNotFit`` names the fields that do
not fit): fastavro refuses some misfits with a bare ``ValueError`` (a decimal with more digits than the
schema's precision) and writes others without a word (an ``int`` beyond 32 bits, which readers then cannot
read). A misfit is the record's fault and becomes a dead letter; only the registry being away is an outage
(``omnistream.kafka.registry.RegistryUnreachable``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, NoReturn

import fastavro
from confluent_kafka.schema_registry import SchemaRegistryClient, topic_subject_name_strategy
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext, SerializationError
from fastavro.validation import ValidationError

from omnistream.dead_letter import DeadLetter, dead_letter_to_dict
from omnistream.errors import OmnistreamError
from omnistream.kafka.registry import is_transient, register_schema, value_subject, with_registry
from omnistream.kafka.serde import load_schema
from producers.emails.checkpoint import Checkpoint, checkpoint_to_dict
from producers.emails.model import StoreOrder

log = logging.getLogger(__name__)

ORDER_SCHEMA = "store_order"
CHECKPOINT_SCHEMA = "email_checkpoint"
DEAD_LETTER_SCHEMA = "dead_letter"


class RecordDoesNotFit(OmnistreamError, ValueError):
    """A record its schema cannot hold (a value out of a field's range or of the wrong type)."""


# At most this many misfits are named in a reason; the first is usually the cause of the others.
MISFITS_NAMED = 3


_INT_RANGES = {"int": (-(2**31), 2**31 - 1), "long": (-(2**63), 2**63 - 1)}


def _describe(schema: Any) -> str:
    if isinstance(schema, list):
        return " or ".join(_describe(branch) for branch in schema)
    if isinstance(schema, dict):
        if schema.get("logicalType") == "decimal":
            precision, scale = schema["precision"], schema.get("scale", 0)
            return f"decimal({precision},{scale}), at most {precision - scale} digits before the point"
        return str(schema.get("logicalType") or schema.get("name") or schema["type"])
    return {"int": "int (32 bits)", "long": "long (64 bits)"}.get(str(schema), str(schema))


def _shown(value: Any) -> str:
    text = str(value) if isinstance(value, (Decimal, int)) else repr(value)
    return text if len(text) <= 80 else f"{text[:77]}..."


def _fits(datum: Any, schema: Any) -> bool:
    try:
        return bool(fastavro.validate(datum, schema, raise_errors=False))
    except (ValidationError, ValueError, TypeError):  # a decimal beyond its precision raises, even so
        return False


def schema_misfits(datum: Any, schema: Any, path: str = "") -> list[str]:
    """Where ``datum`` does not fit ``schema`` (parsed by fastavro), as ``path = value does not fit type``."""
    if isinstance(schema, dict) and schema.get("type") == "record" and isinstance(datum, dict):
        return [
            misfit
            for f in schema["fields"]
            for misfit in schema_misfits(datum.get(f["name"]), f["type"], f"{path}.{f['name']}".lstrip("."))
        ]
    if isinstance(schema, dict) and schema.get("type") == "array" and isinstance(datum, (list, tuple)):
        return [
            misfit
            for i, item in enumerate(datum)
            for misfit in schema_misfits(item, schema["items"], f"{path}[{i}]")
        ]
    return [] if _fits(datum, schema) else [f"{path} = {_shown(datum)} does not fit {_describe(schema)}"]


def _integer_paths(schema: Any, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], str]]:
    """Every int or long in ``schema`` (plain or in a union): its path (``*`` for array items) and type."""
    if isinstance(schema, str):
        return [(path, schema)] if schema in _INT_RANGES else []
    if isinstance(schema, list):
        return [found for branch in schema for found in _integer_paths(branch, path)]
    if schema.get("type") == "record":
        return [found for f in schema["fields"] for found in _integer_paths(f["type"], (*path, f["name"]))]
    if schema.get("type") == "array":
        return _integer_paths(schema["items"], (*path, "*"))
    if schema.get("type") in _INT_RANGES and "logicalType" not in schema:
        return [(path, schema["type"])]
    return []


def _values_at(datum: Any, path: tuple[str, ...]) -> list[Any]:
    if not path:
        return [datum]
    head, rest = path[0], path[1:]
    if head == "*":
        return [v for item in datum or () for v in _values_at(item, rest)]
    return _values_at(datum.get(head), rest) if isinstance(datum, dict) else []


@dataclass(frozen=True)
class RecordCheck:
    """Checks records against one schema before they are written, and names what does not fit."""

    schema_name: str
    schema: Any  # parsed by fastavro
    integers: tuple[tuple[tuple[str, ...], str], ...]

    @classmethod
    def of(cls, schema_name: str) -> RecordCheck:
        schema = fastavro.parse_schema(json.loads(load_schema(schema_name)))
        return cls(schema_name, schema, tuple(_integer_paths(schema)))

    def integers_in_range(self, record: dict[str, Any]) -> None:
        """``RecordDoesNotFit`` for an int or long beyond its range: the one misfit fastavro writes anyway.

        (A few lookups per record; validating every field with fastavro would cost as much as writing it.)
        """
        for path, kind in self.integers:
            low, high = _INT_RANGES[kind]
            if any(isinstance(v, int) and not low <= v <= high for v in _values_at(record, path)):
                self.refuse(record)

    def refuse(self, record: dict[str, Any], error: Exception | None = None) -> NoReturn:
        """Raise ``RecordDoesNotFit`` naming the first misfits of ``record`` (else ``error``'s message)."""
        misfits = schema_misfits(record, self.schema)
        if not misfits:
            misfits = [f"{type(error).__name__}: {error}" if error else "a value fastavro refuses"]
        named = "; ".join(misfits[:MISFITS_NAMED])
        more = f" (and {len(misfits) - MISFITS_NAMED} more)" if len(misfits) > MISFITS_NAMED else ""
        raise RecordDoesNotFit(f"the order does not fit schemas/{self.schema_name}.avsc: {named}{more}")


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
    _order_check: RecordCheck

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
            register_schema(registry, value_subject(topic), name)

        def serializer(name: str, to_dict: Callable[[Any, Any], dict[str, Any]] | None) -> AvroSerializer:
            # The subjects registered above, named by the topic-name strategy: no association lookups.
            conf = {"subject.name.strategy": topic_subject_name_strategy}
            return AvroSerializer(registry, load_schema(name), to_dict, conf)

        return cls(
            orders,
            dead_letters,
            checkpoints,
            serializer(ORDER_SCHEMA, None),  # given the record itself: it is checked before it is written
            serializer(DEAD_LETTER_SCHEMA, dead_letter_to_dict),
            serializer(CHECKPOINT_SCHEMA, checkpoint_to_dict),
            AvroDeserializer(registry, load_schema(CHECKPOINT_SCHEMA)),
            RecordCheck.of(ORDER_SCHEMA),
        )

    def order(self, order: StoreOrder) -> bytes:
        """The order's record value; ``RecordDoesNotFit`` if schemas/store_order.avsc cannot hold it."""
        record = order.to_avro()
        self._order_check.integers_in_range(record)
        try:
            return self._serialize(self._order, record, self.orders_topic)
        except (SerializationError, ValueError, TypeError, OverflowError) as exc:
            # fastavro's own refusals (a decimal beyond its precision, a wrong type) come unwrapped.
            self._order_check.refuse(record, exc)

    def dead_letter(self, letter: DeadLetter) -> bytes:
        return self._serialize(self._dead_letter, letter, self.dead_letters_topic)

    def checkpoint(self, checkpoint: Checkpoint) -> bytes:
        return self._serialize(self._checkpoint, checkpoint, self.checkpoints_topic)

    def read_checkpoint(self, value: bytes) -> dict[str, Any]:
        context = SerializationContext(self.checkpoints_topic, MessageField.VALUE)
        # Its writer schema is looked up in the registry.
        record = with_registry("reading the checkpoint", lambda: self._checkpoint_reader(value, context))
        assert isinstance(record, dict)
        return record

    @staticmethod
    def _serialize(serializer: AvroSerializer, obj: object, topic: str) -> bytes:
        ctx = SerializationContext(topic, MessageField.VALUE)
        # Only the first record of a topic asks the registry (its schema id); the others are written from
        # the serializer's cache. So the retrying wrapper, which costs about as much as writing a record,
        # steps in only when a call fails the way a registry outage does, and then retries that call.
        try:
            value = serializer(obj, ctx)
        except Exception as exc:
            if not is_transient(exc):
                raise
            value = with_registry(f"serializing for {topic}", lambda: serializer(obj, ctx))
        assert value is not None  # only None in, None out
        return value
