"""Confluent wire format and Avro decoding with one parsed schema per registry id.

A value in the wire format is ``0x00``, a 4-byte big-endian schema id, then the Avro binary encoding of
the value under that (writer) schema. Each id is fetched from the registry once, parsed once by fastavro
and kept with its Arrow mapping, so decoding a record costs one ``schemaless_reader`` call.

Failures are split the usual way: a record that cannot be decoded (not wire format, unknown schema id, a
schema that is not Avro, bytes that do not parse) raises :class:`UndecodableRecord` and is dead-lettered by
the caller; an unreachable or failing registry is transient, retried with backoff, and then raised.
"""

from __future__ import annotations

import io
import json
import logging
import time
from functools import cached_property
from typing import Any

import httpx
import pyarrow as pa
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError
from fastavro import parse_schema, schemaless_reader
from fastavro.schema import expand_schema
from tenacity import retry, retry_if_exception, stop_after_delay, wait_exponential

from omnistream.sink import arrow as avro_arrow

log = logging.getLogger(__name__)

MAGIC = 0
HEADER_SIZE = 5

# Reasons a record is dead-lettered; the first word of the reason text.
NOT_WIRE_FORMAT = "not-wire-format"
UNKNOWN_SCHEMA = "unknown-schema"
UNSUPPORTED_SCHEMA = "unsupported-schema"
CORRUPT_AVRO = "corrupt-avro"
NOT_REPRESENTABLE = "not-representable"


class UndecodableRecord(Exception):
    """A record the sink cannot land; ``reason`` is one of the constants above."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def schema_id_of(data: bytes) -> int:
    """The registry id of a wire-format value; UndecodableRecord if ``data`` is not in the wire format."""
    if len(data) < HEADER_SIZE or data[0] != MAGIC:
        first = f"0x{data[0]:02x}" if data else "nothing"
        raise UndecodableRecord(
            NOT_WIRE_FORMAT, f"{len(data)} bytes starting with {first}, expected magic byte 0x00 + schema id"
        )
    return int.from_bytes(data[1:HEADER_SIZE], "big")


def is_transient(exc: BaseException) -> bool:
    """A registry failure worth retrying: unreachable, timing out, throttling or failing (5xx)."""
    if isinstance(exc, SchemaRegistryError):
        return exc.http_status_code in (-1, 408, 429) or exc.http_status_code >= 500
    return isinstance(exc, httpx.TransportError | ConnectionError | TimeoutError)


class WriterSchema:
    """One registered Avro schema: parsed for fastavro, mapped to Arrow."""

    def __init__(self, schema_id: int, schema_str: str) -> None:
        self.schema_id = schema_id
        self.schema_str = schema_str
        try:
            # Values as fastavro gives them (Decimal, datetime): for JSON views and keys.
            self.parsed = parse_schema(json.loads(schema_str))
            # Named types referenced by name are inlined, so the Arrow mapping sees every definition.
            self.expanded = expand_schema(json.loads(schema_str))
            # Values as the landing columns take them (see omnistream.sink.arrow on speed).
            self.parsed_landing = parse_schema(avro_arrow.strip_bulk_logical_types(json.loads(schema_str)))
        except Exception as exc:  # the registry accepted it, fastavro cannot use it
            raise UndecodableRecord(UNSUPPORTED_SCHEMA, f"schema id {schema_id}: {exc}") from exc

    @cached_property
    def columns(self) -> avro_arrow.ValueColumns:
        """The value's Arrow columns (and the conversions fastavro's values need on the way there)."""
        try:
            return avro_arrow.value_columns(self.expanded)
        except (ValueError, TypeError, KeyError) as exc:
            raise UndecodableRecord(UNSUPPORTED_SCHEMA, f"schema id {self.schema_id}: {exc}") from exc

    @property
    def arrow_schema(self) -> pa.Schema:
        return self.columns.schema

    def read(self, data: bytes) -> Any:
        """The value encoded in wire-format ``data`` (whose id is this schema's), as fastavro gives it."""
        stream = io.BytesIO(data[HEADER_SIZE:])
        try:
            value = schemaless_reader(stream, self.parsed, None)
        except Exception as exc:  # fastavro raises whatever the garbage trips first
            raise UndecodableRecord(
                CORRUPT_AVRO, f"schema id {self.schema_id}: {type(exc).__name__}: {exc}"
            ) from exc
        left = len(data) - HEADER_SIZE - stream.tell()
        if left:
            raise UndecodableRecord(CORRUPT_AVRO, f"schema id {self.schema_id}: {left} trailing byte(s)")
        return value


class SchemaCache:
    """Writer schemas by registry id, fetched once; unknown ids are remembered for ``negative_ttl_s``."""

    def __init__(self, registry: SchemaRegistryClient, negative_ttl_s: float = 30.0) -> None:
        self.registry = registry
        self.negative_ttl_s = negative_ttl_s
        self._schemas: dict[int, WriterSchema] = {}
        # By the 4 id bytes of the wire format, for schemas whose Arrow mapping is known to work.
        self.landable: dict[bytes, WriterSchema] = {}
        self._missing: dict[int, tuple[float, UndecodableRecord]] = {}

    def add(self, schema: WriterSchema) -> None:
        """Know ``schema`` without asking the registry (a schema registered under a known id)."""
        self._schemas[schema.schema_id] = schema

    def get(self, schema_id: int) -> WriterSchema:
        schema = self._schemas.get(schema_id)
        if schema is not None:
            return schema
        missing = self._missing.get(schema_id)
        if missing is not None and time.monotonic() - missing[0] < self.negative_ttl_s:
            raise missing[1]
        try:
            schema = self._load(schema_id)
        except UndecodableRecord as exc:
            self._missing[schema_id] = (time.monotonic(), exc)
            raise
        self._schemas[schema_id] = schema
        return schema

    def _load(self, schema_id: int) -> WriterSchema:
        try:
            registered = self._fetch(schema_id)
        except SchemaRegistryError as exc:
            if exc.http_status_code == 404:
                detail = f"schema id {schema_id} is not in the registry"
                raise UndecodableRecord(UNKNOWN_SCHEMA, detail) from exc
            raise
        if (registered.schema_type or "AVRO").upper() != "AVRO":
            raise UndecodableRecord(
                UNSUPPORTED_SCHEMA, f"schema id {schema_id} is {registered.schema_type}, not Avro"
            )
        if registered.references:
            raise UndecodableRecord(UNSUPPORTED_SCHEMA, f"schema id {schema_id} uses schema references")
        log.info("schema id %d fetched from the registry", schema_id)
        return WriterSchema(schema_id, registered.schema_str or "")

    @retry(
        retry=retry_if_exception(is_transient),
        wait=wait_exponential(multiplier=0.2, max=5),
        stop=stop_after_delay(60),
        reraise=True,
    )
    def _fetch(self, schema_id: int) -> Any:
        return self.registry.get_schema(schema_id)

    def landing_schema(self, data: bytes) -> WriterSchema:
        """The writer schema of a wire-format record, checked to map to Arrow; UndecodableRecord if not."""
        schema = self.get(schema_id_of(data))
        schema.columns  # noqa: B018 - raises for a schema that cannot be landed
        self.landable[data[1:HEADER_SIZE]] = schema
        return schema

    def decode(self, data: bytes) -> tuple[WriterSchema, Any]:
        """The writer schema and value of one wire-format record; UndecodableRecord if it is not one."""
        schema = self.get(schema_id_of(data))
        return schema, schema.read(data)
