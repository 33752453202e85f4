"""Avro schemas to Arrow types, decoded values to Arrow columns, and the ``record_metadata`` struct.

The value's fields become typed columns, the shape the Snowflake connector gives schematized tables:

============================  ==========================================================
Avro                          Arrow / Parquet
============================  ==========================================================
boolean, int, long            bool, int32, int64
float, double                 float32, float64
string, enum, uuid            string
bytes / fixed                 binary / fixed_size_binary(size)
decimal(p, s)                 decimal128(p, s) (decimal256 beyond 38 digits)
timestamp-millis/micros/nanos timestamp(ms/us/ns, tz=UTC)
local-timestamp-*             timestamp without time zone
date, time-millis/micros      date32, time32(ms), time64(us)
record                        struct
array, map                    list, map<string, …>
union [null, T]               T, nullable
union of several types        string holding the value as JSON (the Snowflake VARIANT's place)
============================  ==========================================================

A value schema that is not a record lands as one column named ``value``.

Speed: fastavro's logical-type conversions (``Decimal`` and ``datetime`` objects, which pyarrow then takes
apart again) cost more than the decode itself. So for the value's own fields of the common logical types
(decimal bytes up to 18 digits, timestamps, dates, times, uuid; nullable or not) the sink decodes with those
logical types stripped and builds the Arrow column from the raw integers and bytes in bulk.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import numpy as np
import pyarrow as pa

from omnistream.kafka.serde import to_json

Converter = Callable[[Any], Any]
Builder = Callable[[list[Any]], pa.Array]

METADATA_COLUMN = "record_metadata"
HEADER_TYPE = pa.struct([pa.field("key", pa.string(), nullable=False), pa.field("value", pa.binary())])
METADATA_TYPE = pa.struct(
    [
        pa.field("topic", pa.string(), nullable=False),
        pa.field("partition", pa.int32(), nullable=False),
        pa.field("offset", pa.int64(), nullable=False),
        pa.field("timestamp", pa.timestamp("ms", tz="UTC")),
        pa.field("key", pa.string()),
        pa.field("headers", pa.list_(HEADER_TYPE)),
        pa.field("schema_id", pa.int64()),
    ]
)
METADATA_FIELD = pa.field(METADATA_COLUMN, METADATA_TYPE, nullable=False)

_PRIMITIVES: dict[str, pa.DataType] = {
    "null": pa.null(),
    "boolean": pa.bool_(),
    "int": pa.int32(),
    "long": pa.int64(),
    "float": pa.float32(),
    "double": pa.float64(),
    "bytes": pa.binary(),
    "string": pa.string(),
}
_TIMESTAMPS = {
    "timestamp-millis": pa.timestamp("ms", tz="UTC"),
    "timestamp-micros": pa.timestamp("us", tz="UTC"),
    "timestamp-nanos": pa.timestamp("ns", tz="UTC"),
    "local-timestamp-millis": pa.timestamp("ms"),
    "local-timestamp-micros": pa.timestamp("us"),
    "local-timestamp-nanos": pa.timestamp("ns"),
}
_TEMPORAL = {"date": pa.date32(), "time-millis": pa.time32("ms"), "time-micros": pa.time64("us")}


def _json_text(value: Any) -> Any:
    return None if value is None else to_json(value)


def _uuid_text(value: Any) -> Any:
    return None if value is None else str(value)


def arrow_type(avro: Any) -> tuple[pa.DataType, Converter | None]:
    """The Arrow type for an (expanded) Avro type, and how to convert fastavro's values, if at all."""
    if isinstance(avro, str):
        if avro not in _PRIMITIVES:
            raise ValueError(f"unresolved Avro type name {avro!r}")
        return _PRIMITIVES[avro], None
    if isinstance(avro, list):
        branches = [b for b in avro if b != "null"]
        if not branches:
            return pa.null(), None
        if len(branches) == 1:
            return arrow_type(branches[0])
        return pa.string(), _json_text
    if not isinstance(avro, dict):
        raise TypeError(f"not an Avro type: {avro!r}")
    base = avro["type"]
    logical = avro.get("logicalType")
    if logical == "decimal" and base in ("bytes", "fixed"):
        precision, scale = int(avro["precision"]), int(avro.get("scale", 0))
        return (pa.decimal128 if precision <= 38 else pa.decimal256)(precision, scale), None
    if logical in _TIMESTAMPS and base == "long":
        return _TIMESTAMPS[logical], None
    if logical in _TEMPORAL:
        return _TEMPORAL[logical], None
    if logical == "uuid" and base == "string":
        return pa.string(), _uuid_text
    if base in ("record", "error"):
        return _struct(avro["fields"])
    if base == "enum":
        return pa.string(), None
    if base == "array":
        item, convert = arrow_type(avro["items"])
        return pa.list_(item), None if convert is None else _each(convert)
    if base == "map":
        item, convert = arrow_type(avro["values"])
        return pa.map_(pa.string(), item), _map_items(convert)
    if base == "fixed":
        return pa.binary(int(avro["size"])), None
    return arrow_type(base)  # {"type": "string", ...} with properties, or an unknown logical type


def _struct(fields: Sequence[dict[str, Any]]) -> tuple[pa.DataType, Converter | None]:
    mapped = [(f["name"], *arrow_type(f["type"])) for f in fields]
    struct = pa.struct([pa.field(name, typ) for name, typ, _ in mapped])
    converters = {name: convert for name, _, convert in mapped if convert is not None}
    if not converters:
        return struct, None

    def convert(record: Any) -> Any:
        if record is None:
            return None
        return {k: (converters[k](v) if k in converters else v) for k, v in record.items()}

    return struct, convert


def _each(convert: Converter) -> Converter:
    return lambda items: None if items is None else [convert(x) for x in items]


def _map_items(convert: Converter | None) -> Converter:
    # pyarrow builds a map from (key, value) pairs; a dict works too, but not beside tuples.
    if convert is None:
        return lambda m: None if m is None else list(m.items())
    return lambda m: None if m is None else [(k, convert(v)) for k, v in m.items()]


class _NullRow(dict[str, Any]):
    """A row whose every field is null: a tombstone's value columns."""

    def __missing__(self, key: str) -> None:
        return None


NULL_ROW: dict[str, Any] = _NullRow()


def _single(avro: Any) -> Any:
    """``T`` for ``T`` or ``["null", T]`` / ``[T, "null"]``; None for any other union."""
    if isinstance(avro, list):
        branches = [b for b in avro if b != "null"]
        return branches[0] if len(branches) == 1 and len(avro) == 2 else None
    return avro


def _bulk_kind(avro: Any) -> str | None:
    """How a value field of this type is decoded raw and converted in bulk, if it is (see module doc)."""
    t = _single(avro)
    if not isinstance(t, dict):
        return None
    logical, base = t.get("logicalType"), t.get("type")
    if logical == "decimal" and base == "bytes" and int(t.get("precision", 99)) <= 18:
        return "decimal"
    if (logical in _TIMESTAMPS and base == "long") or (
        (logical, base) in (("date", "int"), ("time-millis", "int"), ("time-micros", "long"))
    ):
        return "integer"
    if logical == "uuid" and base == "string":
        return "string"
    return None


def _plain(avro: Any) -> Any:
    return {k: v for k, v in avro.items() if k != "logicalType"} if isinstance(avro, dict) else avro


def strip_bulk_logical_types(avro: Any) -> Any:
    """A copy of a record schema whose fields of a bulk-converted type lose their ``logicalType``."""
    if not (isinstance(avro, dict) and avro.get("type") in ("record", "error")):
        return avro
    fields = []
    for f in avro["fields"]:
        if _bulk_kind(f["type"]) is not None:
            t = f["type"]
            f = {**f, "type": [_plain(b) for b in t] if isinstance(t, list) else _plain(t)}
        fields.append(f)
    return {**avro, "fields": fields}


def _validity(values: list[Any]) -> tuple[pa.Buffer | None, int]:
    if None not in values:
        return None, 0
    valid = np.fromiter((v is not None for v in values), dtype=bool, count=len(values))
    return pa.py_buffer(np.packbits(valid, bitorder="little")), len(values) - int(valid.sum())


def _decimal_builder(typ: pa.Decimal128Type) -> Builder:
    """decimal128 from Avro's big-endian two's-complement unscaled bytes, through int64, in bulk."""
    limit = 10**typ.precision

    def build(values: list[Any]) -> pa.Array:
        n = len(values)
        try:
            unscaled = np.fromiter(
                (0 if v is None else int.from_bytes(v, "big", signed=True) for v in values),
                dtype=np.int64,
                count=n,
            )
        except OverflowError as exc:
            raise ValueError(f"decimal beyond {typ.precision} digits") from exc
        if n and bool(((unscaled >= limit) | (unscaled <= -limit)).any()):
            raise ValueError(f"decimal beyond {typ.precision} digits")
        # decimal128 is 16 little-endian bytes: the int64, then its sign extended.
        words = np.empty((n, 2), dtype=np.int64)
        words[:, 0] = unscaled
        words[:, 1] = unscaled >> 63
        validity, nulls = _validity(values)
        return pa.Array.from_buffers(typ, n, [validity, pa.py_buffer(words)], null_count=nulls)

    return build


def _bulk_builder(kind: str, typ: pa.DataType) -> Builder:
    if kind == "decimal" and sys.byteorder == "little":
        return _decimal_builder(typ)
    if kind == "decimal":  # big-endian host: through Python decimals
        scale = typ.scale

        def through_decimals(values: list[Any]) -> pa.Array:
            unscaled = (None if v is None else int.from_bytes(v, "big", signed=True) for v in values)
            return pa.array([None if u is None else Decimal(u).scaleb(-scale) for u in unscaled], type=typ)

        return through_decimals
    # Integers (epoch units, days, time of day) and plain strings: pyarrow takes them as they are.
    return lambda values: pa.array(values, type=typ)


@dataclass(frozen=True)
class ValueColumns:
    """How the decoded values of one writer schema become Arrow columns."""

    schema: pa.Schema
    converters: tuple[Converter | None, ...]
    builders: tuple[Builder | None, ...]
    is_record: bool

    def arrays(self, rows: Sequence[Any]) -> list[pa.Array]:
        """One array per column for ``rows`` (decoded values; NULL_ROW for a tombstone)."""
        out = []
        for field, convert, build in zip(self.schema, self.converters, self.builders, strict=True):
            if self.is_record:
                name = field.name
                values = [row[name] for row in rows]
            else:
                values = [None if row is NULL_ROW else row for row in rows]
            if build is not None:
                out.append(build(values))
                continue
            if convert is not None:
                values = [convert(v) for v in values]
            out.append(pa.array(values, type=field.type))
        return out

    def rejects(self, rows: Sequence[Any]) -> dict[int, str]:
        """Rows (by index) whose values do not fit their columns, and why; slow, for a rare bad batch."""
        bad: dict[int, str] = {}
        for i, row in enumerate(rows):
            try:
                self.arrays([row])
            except (pa.ArrowException, TypeError, ValueError, OverflowError) as exc:
                bad[i] = f"{type(exc).__name__}: {exc}"
        return bad


def value_columns(avro: Any) -> ValueColumns:
    """The columns of a value written with the (expanded) Avro schema ``avro``.

    Fields of a bulk-converted type expect the values a decode with :func:`strip_bulk_logical_types`
    returns; everything else expects fastavro's usual values.
    """
    if isinstance(avro, dict) and avro.get("type") in ("record", "error"):
        fields, converters, builders = [], [], []
        for f in avro["fields"]:
            if f["name"] == METADATA_COLUMN:
                raise ValueError(f"a value field may not be named {METADATA_COLUMN}")
            typ, convert = arrow_type(f["type"])
            kind = _bulk_kind(f["type"])
            fields.append(pa.field(f["name"], typ))
            converters.append(None if kind else convert)
            builders.append(_bulk_builder(kind, typ) if kind else None)
        return ValueColumns(pa.schema(fields), tuple(converters), tuple(builders), is_record=True)
    typ, convert = arrow_type(avro)
    return ValueColumns(pa.schema([pa.field("value", typ)]), (convert,), (None,), is_record=False)


def metadata_array(
    topic: str,
    partition: int,
    offsets: list[int],
    timestamps: list[int | None],
    keys: list[str | None],
    headers: list[list[tuple[str, bytes | None]] | None],
    schema_ids: list[int | None],
) -> pa.StructArray:
    """The ``record_metadata`` column."""
    n = len(offsets)
    return pa.StructArray.from_arrays(
        [
            pa.array([topic] * n, pa.string()),
            pa.array([partition] * n, pa.int32()),
            pa.array(offsets, pa.int64()),
            pa.array(timestamps, pa.timestamp("ms", tz="UTC")),
            pa.array(keys, pa.string()),
            pa.array(headers, pa.list_(HEADER_TYPE)),
            pa.array(schema_ids, pa.int64()),
        ],
        fields=list(METADATA_TYPE),
    )
