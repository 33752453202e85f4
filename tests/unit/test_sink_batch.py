"""One partition's records to one table: rows, tombstones, dead letters, schema changes, metadata.

The schemas are given to the cache directly under fixed ids, so no registry is involved here; the
integration tests do the same through the real one.
"""

from __future__ import annotations

import io
import json
from decimal import Decimal
from typing import Any

import pyarrow as pa
from confluent_kafka import Message
from fastavro import parse_schema, schemaless_writer

from omnistream.kafka.serde import SchemaCache, WriterSchema
from omnistream.sink.batch import build_batch
from omnistream.sink.landing_schemas import LandingSchemas

V1 = {
    "type": "record",
    "name": "Order",
    "fields": [
        {"name": "order_id", "type": "long"},
        {"name": "total", "type": {"type": "bytes", "logicalType": "decimal", "precision": 12, "scale": 2}},
    ],
}
V2 = {**V1, "fields": [*V1["fields"], {"name": "channel", "type": "string", "default": "web"}]}
KEY = {"type": "record", "name": "Key", "fields": [{"name": "order_id", "type": "long"}]}


def _cache() -> LandingSchemas:
    cache = SchemaCache(registry=None)  # type: ignore[arg-type]  # every id is known below
    for schema_id, schema in ((1, V1), (2, V2), (9, KEY)):
        cache.add(WriterSchema(schema_id, json.dumps(schema)))
    return LandingSchemas(cache)


def _wire(schema_id: int, schema: dict[str, Any], value: dict[str, Any]) -> bytes:
    out = io.BytesIO()
    out.write(b"\x00" + schema_id.to_bytes(4, "big"))
    schemaless_writer(out, parse_schema(json.loads(json.dumps(schema))), value)
    return out.getvalue()


def _msg(offset: int, value: bytes | None, key: bytes | None = b"k", headers: Any = None) -> Message:
    return Message(
        topic="shop.orders",
        partition=1,
        offset=offset,
        key=key,
        value=value,
        headers=headers,
        timestamp=(1, 1_700_000_000_000 + offset),
    )


def test_rows_tombstones_and_dead_letters_are_told_apart() -> None:
    good = _wire(1, V1, {"order_id": 7, "total": Decimal("12.34")})
    msgs = [
        _msg(10, good, headers=[("trace", b"abc")]),
        _msg(11, None, key=b"7"),
        _msg(12, b"\x13garbage"),
        _msg(13, good[:-1]),  # truncated
        _msg(14, good + b"\x00"),  # trailing byte
        _msg(15, b"\x00\x00\x00\x00\x01"),  # header only
        _msg(16, good, key=_wire(9, KEY, {"order_id": 7})),
    ]
    batch = build_batch("shop.orders", 1, msgs, _cache())

    rows = batch.table.to_pylist()
    assert [r["record_metadata"]["offset"] for r in rows] == [10, 11, 16]
    assert rows[0]["order_id"] == 7 and rows[0]["total"] == Decimal("12.34")
    assert rows[0]["record_metadata"]["headers"] == [{"key": "trace", "value": b"abc"}]
    assert rows[0]["record_metadata"]["schema_id"] == 1
    assert rows[1]["order_id"] is None and rows[1]["total"] is None  # the delete
    assert rows[1]["record_metadata"]["key"] == "7" and rows[1]["record_metadata"]["schema_id"] is None
    assert rows[2]["record_metadata"]["key"] == '{"order_id":7}'  # an Avro key, decoded

    reasons = {d.offset: d.reason.split(":")[0] for d in batch.rejected}
    assert reasons == {12: "not-wire-format", 13: "corrupt-avro", 14: "corrupt-avro", 15: "corrupt-avro"}
    assert next(d for d in batch.rejected if d.offset == 12).value == b"\x13garbage"


def test_a_batch_spanning_an_added_field_has_both_shapes() -> None:
    msgs = [
        _msg(0, _wire(1, V1, {"order_id": 1, "total": Decimal("1.00")})),
        _msg(1, _wire(2, V2, {"order_id": 2, "total": Decimal("2.00"), "channel": "store"})),
        _msg(2, None),
        _msg(3, _wire(1, V1, {"order_id": 3, "total": Decimal("3.00")})),
    ]
    table = build_batch("shop.orders", 1, msgs, _cache()).table
    assert table.schema.field("channel").type == pa.string()
    assert table.column("channel").to_pylist() == [None, "store", None, None]
    assert table.column("order_id").to_pylist() == [1, 2, None, 3]
    assert [m["schema_id"] for m in table.column("record_metadata").to_pylist()] == [1, 2, None, 1]


def test_a_batch_of_only_dead_letters_is_an_empty_table_with_metadata() -> None:
    batch = build_batch("shop.orders", 1, [_msg(5, b"nope"), _msg(6, b"")], _cache())
    assert batch.table.num_rows == 0
    assert batch.table.column_names == ["record_metadata"]
    assert [d.offset for d in batch.rejected] == [5, 6]
