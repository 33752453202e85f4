"""The one Avro serde: schemas from ``schemas/``, the Confluent wire format, decoding by registry id.

A value in the wire format is ``0x00``, a 4-byte big-endian schema id, then the Avro binary encoding of
the value under that (writer) schema. Each id is fetched from the registry once and parsed once by
fastavro, so decoding a record costs one ``schemaless_reader`` call.

Failures are split the usual way: a record that cannot be decoded (not wire format, unknown schema id, a
schema that is not Avro, bytes that do not parse) raises :class:`UndecodableRecord` and is dead-lettered or
shown as such by the caller; an unreachable or failing registry is transient, retried with backoff
(:mod:`omnistream.kafka.registry`), and then raised.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import time
import uuid
from datetime import date, datetime
from datetime import time as time_of_day
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from confluent_kafka import Message
from confluent_kafka.schema_registry.error import SchemaRegistryError
from fastavro import parse_schema, schemaless_reader

from omnistream.errors import OmnistreamError
from omnistream.resources import schemas_dir

if TYPE_CHECKING:
    from confluent_kafka.schema_registry import SchemaRegistryClient

log = logging.getLogger(__name__)

SCHEMAS_DIR = schemas_dir()
MAGIC = 0
MAGIC_BYTE = bytes([MAGIC])
HEADER_SIZE = 5
# How long a fetch of one schema id keeps retrying a failing registry.
FETCH_RETRY_FOR_S = 60.0

# Why a record does not decode; the first word of the reason text.
NOT_WIRE_FORMAT = "not-wire-format"
UNKNOWN_SCHEMA = "unknown-schema"
UNSUPPORTED_SCHEMA = "unsupported-schema"
CORRUPT_AVRO = "corrupt-avro"


class UndecodableRecord(OmnistreamError):
    """A record that cannot be decoded; ``reason`` is one of the constants above (or the caller's own)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@lru_cache(maxsize=32)
def load_schema(name: str) -> str:
    """The text of ``schemas/<name>.avsc``."""
    path: Path = SCHEMAS_DIR / f"{name}.avsc"
    if not path.exists():
        raise FileNotFoundError(f"no Avro schema {path}")
    return path.read_text()


def schema_id_of(data: bytes) -> int:
    """The registry id of a wire-format value; UndecodableRecord if ``data`` is not in the wire format."""
    if len(data) < HEADER_SIZE or data[0] != MAGIC:
        first = f"0x{data[0]:02x}" if data else "nothing"
        raise UndecodableRecord(
            NOT_WIRE_FORMAT, f"{len(data)} bytes starting with {first}, expected magic byte 0x00 + schema id"
        )
    return int.from_bytes(data[1:HEADER_SIZE], "big")


class WriterSchema:
    """One registered Avro schema, parsed for fastavro."""

    def __init__(self, schema_id: int, schema_str: str) -> None:
        self.schema_id = schema_id
        self.schema_str = schema_str
        try:
            # Values as fastavro gives them (Decimal, datetime): for JSON views and keys.
            self.parsed = parse_schema(json.loads(schema_str))
        except Exception as exc:  # the registry accepted it, fastavro cannot use it
            raise UndecodableRecord(UNSUPPORTED_SCHEMA, f"schema id {schema_id}: {exc}") from exc

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

    def __init__(
        self,
        registry: SchemaRegistryClient,
        negative_ttl_s: float = 30.0,
        retry_for_s: float = FETCH_RETRY_FOR_S,
    ) -> None:
        self.registry = registry
        self.negative_ttl_s = negative_ttl_s
        self.retry_for_s = retry_for_s
        self._schemas: dict[int, WriterSchema] = {}
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
        # Imported here: the registry module reads schemas through this one.
        from omnistream.kafka.registry import with_registry

        try:
            registered = with_registry(
                f"fetching schema id {schema_id}",
                lambda: self.registry.get_schema(schema_id),
                self.retry_for_s,
            )
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

    def decode(self, data: bytes) -> tuple[WriterSchema, Any]:
        """The writer schema and value of one wire-format record; UndecodableRecord if it is not one."""
        schema = self.get(schema_id_of(data))
        return schema, schema.read(data)


def json_default(value: Any) -> Any:
    """JSON for the values fastavro returns: decimals as strings (exact), temporals as ISO 8601."""
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime | date | time_of_day):
        return value.isoformat()
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, uuid.UUID):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def to_json(value: Any) -> str:
    """A decoded Avro value as compact JSON (see :func:`json_default`)."""
    return json.dumps(value, default=json_default, ensure_ascii=False, separators=(",", ":"))


def render_key(key: bytes | None, cache: SchemaCache) -> str | None:
    """A key as text: a wire-format Avro key decoded (a string as is, anything else as JSON), else UTF-8."""
    if key is None:
        return None
    if len(key) >= HEADER_SIZE and key[0] == MAGIC:
        try:
            _, value = cache.decode(key)
        except UndecodableRecord:
            pass  # not an Avro key after all: fall back to its bytes
        else:
            return value if isinstance(value, str) else to_json(value)
    return key.decode("utf-8", "backslashreplace")


def headers_of(msg: Message) -> list[tuple[str, bytes | None]]:
    """A record's headers as (key, value) pairs, in order; empty if it has none."""
    headers = msg.headers()
    if not headers:
        return []
    pairs = headers.items() if isinstance(headers, dict) else headers
    return [(k, v.encode() if isinstance(v, str) else v) for k, v in pairs]
