"""Avro decoding for the tests' own readers, its registry lookups retried the way the runtime's are.

A registry that is slow for a moment (a loaded machine, a GC pause) is an outage to retry, not a failed test:
the pipeline's own reads go through ``with_registry``, and so do the tests' checks of what it wrote.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import SerializationContext

from omnistream.kafka.registry import with_registry

Decode = Callable[[bytes | None, SerializationContext], Any]


def avro_deserializer(registry: SchemaRegistryClient) -> Decode:
    """An ``AvroDeserializer`` of ``registry``, its lookups retried while the registry fails transiently."""
    deserializer = AvroDeserializer(registry)

    def decode(data: bytes | None, ctx: SerializationContext) -> Any:
        return with_registry(f"decoding a record of {ctx.topic}", lambda: deserializer(data, ctx))

    return decode
