"""Writer schemas as the landing sink needs them: mapped to Arrow columns, decoded the fast way.

Beside the plain parse of :class:`omnistream.kafka.serde.WriterSchema` (values as fastavro gives them) a
landing schema keeps a parse with the bulk logical types stripped (see :mod:`omnistream.sink.arrow` on
speed) and the value's Arrow columns. A schema fastavro reads but Arrow cannot hold is
``unsupported-schema``; a record whose values do not fit its columns is ``not-representable``.
"""

from __future__ import annotations

import json
from functools import cached_property

import pyarrow as pa
from fastavro import parse_schema
from fastavro.schema import expand_schema

from omnistream.kafka.serde import (
    HEADER_SIZE,
    UNSUPPORTED_SCHEMA,
    SchemaCache,
    UndecodableRecord,
    WriterSchema,
    schema_id_of,
)
from omnistream.sink import arrow as avro_arrow

# Why a decoded record cannot be landed; the first word of the reason text, like the decode reasons.
NOT_REPRESENTABLE = "not-representable"


class LandingSchema:
    """One writer schema with its Arrow mapping and the parse the landing columns take."""

    def __init__(self, writer: WriterSchema) -> None:
        self.writer = writer
        self.schema_id = writer.schema_id
        try:
            # Named types referenced by name are inlined, so the Arrow mapping sees every definition.
            self.expanded = expand_schema(json.loads(writer.schema_str))
            # Values as the landing columns take them (see omnistream.sink.arrow on speed).
            self.parsed_landing = parse_schema(
                avro_arrow.strip_bulk_logical_types(json.loads(writer.schema_str))
            )
        except Exception as exc:  # fastavro read it, but not in these forms
            raise UndecodableRecord(UNSUPPORTED_SCHEMA, f"schema id {self.schema_id}: {exc}") from exc

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


class LandingSchemas:
    """Landing schemas by registry id, over a :class:`SchemaCache` (which fetches each id once)."""

    def __init__(self, cache: SchemaCache) -> None:
        self.cache = cache
        self._by_id: dict[int, LandingSchema] = {}
        self._unusable: dict[int, UndecodableRecord] = {}  # parsed by fastavro, not in the landing forms
        # By the 4 id bytes of the wire format, for schemas whose Arrow mapping is known to work.
        self.landable: dict[bytes, LandingSchema] = {}

    def by_id(self, schema_id: int) -> LandingSchema:
        """The landing schema of ``schema_id``; UndecodableRecord if it is unknown or cannot be landed."""
        schema = self._by_id.get(schema_id)
        if schema is not None:
            return schema
        if schema_id in self._unusable:
            raise self._unusable[schema_id]
        writer = self.cache.get(schema_id)
        try:
            schema = self._by_id[schema_id] = LandingSchema(writer)
        except UndecodableRecord as exc:
            self._unusable[schema_id] = exc
            raise
        return schema

    def of(self, data: bytes) -> LandingSchema:
        """The landing schema of a wire-format record, checked to map to Arrow; UndecodableRecord if not."""
        schema = self.by_id(schema_id_of(data))
        schema.columns  # noqa: B018 - raises for a schema that cannot be landed
        self.landable[data[1:HEADER_SIZE]] = schema
        return schema
