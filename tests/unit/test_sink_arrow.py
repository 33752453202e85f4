"""Avro to Arrow: the column types; values decoded the fast way land exactly as fastavro gives them."""

from __future__ import annotations

import io
import json
import uuid
from datetime import UTC, date, datetime, time
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pytest
from fastavro import parse_schema, schemaless_reader, schemaless_writer

from omnistream.sink.arrow import (
    METADATA_TYPE,
    NULL_ROW,
    arrow_type,
    metadata_array,
    strip_bulk_logical_types,
    to_json,
    value_columns,
)

DECIMAL = {"type": "bytes", "logicalType": "decimal", "precision": 12, "scale": 2}


@pytest.mark.parametrize(
    ("avro", "expected"),
    [
        ("boolean", pa.bool_()),
        ("int", pa.int32()),
        ("long", pa.int64()),
        ("float", pa.float32()),
        ("double", pa.float64()),
        ("bytes", pa.binary()),
        ("string", pa.string()),
        (DECIMAL, pa.decimal128(12, 2)),
        ({"type": "bytes", "logicalType": "decimal", "precision": 40, "scale": 0}, pa.decimal256(40, 0)),
        ({"type": "long", "logicalType": "timestamp-millis"}, pa.timestamp("ms", tz="UTC")),
        ({"type": "long", "logicalType": "timestamp-micros"}, pa.timestamp("us", tz="UTC")),
        ({"type": "long", "logicalType": "local-timestamp-micros"}, pa.timestamp("us")),
        ({"type": "int", "logicalType": "date"}, pa.date32()),
        ({"type": "int", "logicalType": "time-millis"}, pa.time32("ms")),
        ({"type": "long", "logicalType": "time-micros"}, pa.time64("us")),
        ({"type": "string", "logicalType": "uuid"}, pa.string()),
        ({"type": "enum", "name": "S", "symbols": ["A", "B"]}, pa.string()),
        ({"type": "fixed", "name": "F", "size": 4}, pa.binary(4)),
        ({"type": "array", "items": "long"}, pa.list_(pa.int64())),
        ({"type": "map", "values": "string"}, pa.map_(pa.string(), pa.string())),
        (["null", "string"], pa.string()),
        (["null", "string", "long"], pa.string()),
        ({"type": "string", "connect.name": "x"}, pa.string()),
        (
            {"type": "record", "name": "A", "fields": [{"name": "city", "type": "string"}]},
            pa.struct([pa.field("city", pa.string())]),
        ),
    ],
)
def test_avro_types_map_to_arrow_types(avro: Any, expected: pa.DataType) -> None:
    assert arrow_type(avro)[0] == expected


SALE = {
    "type": "record",
    "name": "Sale",
    "fields": [
        {"name": "id", "type": "long"},
        {"name": "amount", "type": DECIMAL},
        {"name": "refund", "type": ["null", DECIMAL], "default": None},
        {"name": "at", "type": {"type": "long", "logicalType": "timestamp-micros"}},
        {"name": "day", "type": {"type": "int", "logicalType": "date"}},
        {"name": "opens", "type": {"type": "long", "logicalType": "time-micros"}},
        {"name": "ref", "type": {"type": "string", "logicalType": "uuid"}},
        {"name": "lines", "type": {"type": "array", "items": DECIMAL}},
        {
            "name": "store",
            "type": {
                "type": "record",
                "name": "Store",
                "fields": [
                    {"name": "code", "type": "string"},
                    {"name": "token", "type": {"type": "string", "logicalType": "uuid"}},
                ],
            },
        },
        {"name": "extra", "type": {"type": "map", "values": "long"}},
        {"name": "either", "type": ["null", "long", "string"], "default": None},
    ],
}


def _sale(i: int, refund: Decimal | None) -> dict[str, Any]:
    return {
        "id": i,
        "amount": Decimal("-1234567890.12") if i % 2 else Decimal("0.01"),
        "refund": refund,
        "at": datetime(2026, 3, 29, 1, 30, 15, 123456, tzinfo=UTC),
        "day": date(2026, 3, 29),
        "opens": time(8, 30),
        "ref": uuid.UUID(int=i),
        "lines": [Decimal("1.10"), Decimal("-2.25")],
        "store": {"code": f"S{i}", "token": uuid.UUID(int=1000 + i)},
        "extra": {"a": i},
        "either": "x" if i % 2 else i,
    }


def _decode(schema: dict[str, Any], record: dict[str, Any]) -> Any:
    out = io.BytesIO()
    schemaless_writer(out, parse_schema(json.loads(json.dumps(schema))), record)
    stripped = parse_schema(strip_bulk_logical_types(json.loads(json.dumps(schema))))
    return schemaless_reader(io.BytesIO(out.getvalue()), stripped, None)


def test_values_land_exactly_including_the_bulk_converted_fields() -> None:
    records = [_sale(1, Decimal("99999.99")), _sale(2, None)]
    rows = [_decode(SALE, r) for r in records]
    columns = value_columns(SALE)
    table = pa.Table.from_arrays([*columns.arrays([*rows, NULL_ROW])], schema=columns.schema)

    assert table.schema.field("amount").type == pa.decimal128(12, 2)
    assert table.schema.field("at").type == pa.timestamp("us", tz="UTC")
    got = table.to_pylist()
    for record, row in zip(records, got, strict=False):
        assert row["id"] == record["id"]
        assert row["amount"] == record["amount"]
        assert row["refund"] == record["refund"]
        assert row["at"] == record["at"]
        assert row["day"] == record["day"]
        assert row["opens"] == record["opens"]
        assert row["ref"] == str(record["ref"])
        assert row["lines"] == record["lines"]
        assert row["store"] == {"code": record["store"]["code"], "token": str(record["store"]["token"])}
        assert row["extra"] == [("a", record["id"])]
        assert row["either"] == json.dumps(record["either"])
    assert got[2] == dict.fromkeys(columns.schema.names)  # a tombstone: every value column null


def test_a_decimal_beyond_its_precision_is_rejected_with_the_row_that_holds_it() -> None:
    schema = {"type": "record", "name": "M", "fields": [{"name": "amount", "type": DECIMAL}]}
    columns = value_columns(schema)
    good = {"amount": (12345).to_bytes(8, "big", signed=True)}
    too_big = {"amount": (10**12).to_bytes(8, "big", signed=True)}  # 13 digits in a decimal(12, 2)
    with pytest.raises(ValueError, match="beyond 12 digits"):
        columns.arrays([good, too_big])
    assert list(columns.rejects([good, too_big, good])) == [1]


def test_a_value_that_is_not_a_record_lands_as_one_value_column() -> None:
    columns = value_columns("string")
    table = pa.Table.from_arrays(columns.arrays(["a", NULL_ROW]), schema=columns.schema)
    assert table.column_names == ["value"]
    assert table.column("value").to_pylist() == ["a", None]


def test_a_field_may_not_take_the_metadata_column_name() -> None:
    schema = {"type": "record", "name": "X", "fields": [{"name": "record_metadata", "type": "string"}]}
    with pytest.raises(ValueError, match="record_metadata"):
        value_columns(schema)


def test_record_metadata_has_the_connector_shape() -> None:
    array = metadata_array(
        "t", 2, [7, 8], [1_700_000_000_000, None], ["k", None], [[("h", b"v")], None], [5, None]
    )
    assert array.type == METADATA_TYPE
    assert [f.name for f in METADATA_TYPE] == [
        "topic",
        "partition",
        "offset",
        "timestamp",
        "key",
        "headers",
        "schema_id",
    ]
    first = array.to_pylist()[0]
    assert first["timestamp"] == datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)
    assert first["headers"] == [{"key": "h", "value": b"v"}]
    assert array.to_pylist()[1]["key"] is None


def test_json_keeps_decimals_exact_and_times_iso() -> None:
    text = to_json({"a": Decimal("0.10"), "t": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), "b": b"\x00"})
    assert json.loads(text) == {"a": "0.10", "t": "2026-01-02T03:04:05+00:00", "b": "AA=="}
