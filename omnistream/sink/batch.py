"""One partition's buffered records to one Arrow table, and the records that must be dead-lettered.

Records are decoded in one pass (a parsed schema per registry id), gathered into column lists and turned
into Arrow arrays column by column, so the per-record Python work is the Avro decode and a few list
appends. Runs of records written with the same schema become one table each; the runs are concatenated
with type promotion, so a batch that spans a schema change (a field added with a default) has the union of
the columns, null where a record's schema did not have one.

A tombstone (null value) is kept as a row whose value columns are all null. A record that cannot be
decoded, or whose values do not fit the schema's columns, is left out of the table and returned as a
:class:`RejectedRecord`; the file's offset range still covers it (see :mod:`omnistream.sink`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from io import BytesIO
from typing import Any

import pyarrow as pa
from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, Message
from fastavro import schemaless_reader

from omnistream.kafka.serde import (
    CORRUPT_AVRO,
    HEADER_SIZE,
    MAGIC_BYTE,
    SchemaCache,
    UndecodableRecord,
    headers_of,
    render_key,
)
from omnistream.sink import arrow as avro_arrow
from omnistream.sink.landing_schemas import NOT_REPRESENTABLE, LandingSchema, LandingSchemas

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RejectedRecord:
    """A record the sink could not land, with everything needed to send it back later."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]]
    reason: str


@dataclass(frozen=True)
class Batch:
    """What a flush lands: the table (offset order) and the records to dead-letter."""

    table: pa.Table
    rejected: list[RejectedRecord]


def _reject(msg: Message, reason: str) -> RejectedRecord:
    ts_type, ts = msg.timestamp()
    return RejectedRecord(
        topic=msg.topic() or "",
        partition=msg.partition() or 0,
        offset=msg.offset() or 0,
        timestamp_ms=None if ts_type == TIMESTAMP_NOT_AVAILABLE else ts,
        key=msg.key(),
        value=msg.value(),
        headers=headers_of(msg),
        reason=reason,
    )


def build_batch(topic: str, partition: int, msgs: Sequence[Message], landing: LandingSchemas) -> Batch:
    """The table and dead letters for ``msgs``, consecutive records of one partition."""
    kept: list[Message] = []
    rows: list[Any] = []
    schemas: list[LandingSchema | None] = []
    rejected: list[RejectedRecord] = []
    landable = landing.landable
    # The hot loop: one dict lookup and one fastavro call per record; the checks of LandingSchema.read
    # are inlined here because a function call per record is a measurable share of the time.
    for msg in msgs:
        value = msg.value()
        if value is None:
            kept.append(msg)
            rows.append(avro_arrow.NULL_ROW)
            schemas.append(None)
            continue
        schema = landable.get(value[1:HEADER_SIZE]) if value[:1] == MAGIC_BYTE else None
        if schema is None:
            try:
                schema = landing.of(value)
            except UndecodableRecord as exc:
                rejected.append(_reject(msg, str(exc)))
                continue
        stream = BytesIO(value[HEADER_SIZE:])
        try:
            row = schemaless_reader(stream, schema.parsed_landing, None)
        except Exception as exc:  # fastavro raises whatever the garbage trips first
            why = f"{CORRUPT_AVRO}: schema id {schema.schema_id}: {type(exc).__name__}: {exc}"
            rejected.append(_reject(msg, why))
            continue
        if stream.tell() != len(value) - HEADER_SIZE:
            left = len(value) - HEADER_SIZE - stream.tell()
            rejected.append(
                _reject(msg, f"{CORRUPT_AVRO}: schema id {schema.schema_id}: {left} trailing byte(s)")
            )
            continue
        kept.append(msg)
        rows.append(row)
        schemas.append(schema)

    tables = []
    for lo, hi, run_schema in _runs(schemas):
        table, unfit = _run_table(topic, partition, kept[lo:hi], rows[lo:hi], run_schema, landing.cache)
        tables.append(table)
        rejected.extend(unfit)
    if not tables:  # every record was dead-lettered: an empty file still accounts for their offsets
        tables.append(_table([], _metadata(topic, partition, [], [], landing.cache)))
    table = pa.concat_tables(tables, promote_options="permissive") if len(tables) > 1 else tables[0]
    rejected.sort(key=lambda r: r.offset)
    return Batch(table, rejected)


def _runs(schemas: list[LandingSchema | None]) -> list[tuple[int, int, LandingSchema | None]]:
    """Maximal [lo, hi) runs of one writer schema; tombstones join the run they sit in."""
    runs: list[tuple[int, int, LandingSchema | None]] = []
    lo, current = 0, None
    for i, schema in enumerate(schemas):
        if schema is None or schema is current:
            continue
        if current is not None:
            runs.append((lo, i, current))
            lo = i
        current = schema
    if schemas:
        runs.append((lo, len(schemas), current))
    return runs


def _run_table(
    topic: str,
    partition: int,
    msgs: list[Message],
    rows: list[Any],
    schema: LandingSchema | None,
    cache: SchemaCache,
) -> tuple[pa.Table, list[RejectedRecord]]:
    if schema is None:  # tombstones only: no value columns to speak of
        return _table([], _metadata(topic, partition, msgs, [None] * len(msgs), cache)), []
    columns = schema.columns
    rejected: list[RejectedRecord] = []
    try:
        arrays = columns.arrays(rows)
    except (pa.ArrowException, TypeError, ValueError, OverflowError):
        bad = columns.rejects(rows)
        prefix = f"{NOT_REPRESENTABLE}: schema id {schema.schema_id}"
        rejected = [_reject(msgs[i], f"{prefix}: {why}") for i, why in bad.items()]
        msgs = [m for i, m in enumerate(msgs) if i not in bad]
        rows = [r for i, r in enumerate(rows) if i not in bad]
        arrays = columns.arrays(rows)
    ids = [None if row is avro_arrow.NULL_ROW else schema.schema_id for row in rows]
    metadata = _metadata(topic, partition, msgs, ids, cache)
    return _table(list(zip(columns.schema, arrays, strict=True)), metadata), rejected


def _metadata(
    topic: str, partition: int, msgs: Sequence[Message], schema_ids: list[int | None], cache: SchemaCache
) -> pa.StructArray:
    # Comprehensions rather than one loop with appends: this runs once per record.
    offsets: list[int] = [m.offset() for m in msgs]  # type: ignore[misc]  # never None when consumed
    timestamps = [None if t == TIMESTAMP_NOT_AVAILABLE else ts for t, ts in (m.timestamp() for m in msgs)]
    keys = [
        k.decode("utf-8", "backslashreplace") if k and k[:1] != MAGIC_BYTE else render_key(k, cache)
        for k in (m.key() for m in msgs)
    ]
    headers: list[Any] = [m.headers() for m in msgs]
    return avro_arrow.metadata_array(topic, partition, offsets, timestamps, keys, headers, schema_ids)


def _table(columns: list[tuple[pa.Field, pa.Array]], metadata: pa.StructArray) -> pa.Table:
    fields = [avro_arrow.METADATA_FIELD, *(field for field, _ in columns)]
    return pa.Table.from_arrays([metadata, *(array for _, array in columns)], schema=pa.schema(fields))
