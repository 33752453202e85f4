"""The landing sink against the real stack: typed columns, metadata, deletes, dead letters, schema
evolution, recovery from files, lag, and a GCS landing zone (the emulator, through the real client)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
from typer.testing import CliRunner

from omnistream.cli import app
from omnistream.gcs import ensure_bucket, storage_client
from omnistream.kafka.clients import admin
from omnistream.kafka.offsets import committed_offsets, partition_offsets
from omnistream.settings import Settings
from omnistream.sink.consumer import FILE_METADATA_KEY, LandingSink
from omnistream.sink.lag import sink_status
from omnistream.sink.layout import LandedFile, temp_name
from omnistream.sink.store import GcsStore, open_store
from tests.support.sink import (
    ORDER_V1,
    ORDER_V2,
    AvroProducer,
    assert_files_tile,
    dead_letters,
    drain,
    landed,
    landed_files,
    metadata_offsets,
    new_topic,
    order,
    read_topic,
    sink_config,
)

pytestmark = pytest.mark.integration


def test_records_land_as_typed_columns_with_record_metadata(
    stack_settings: Settings, tmp_path: Path, unique: str
) -> None:
    topic = new_topic(stack_settings, f"sinktest.{unique}.orders")
    producer = AvroProducer(stack_settings, topic)
    sent = {i: order(i) for i in range(60)}
    for i, value in sent.items():
        producer.send(value, key=f"order-{i}", headers=[("trace", f"t{i}".encode()), ("empty", None)])
    producer.flush()

    stats = drain(stack_settings, tmp_path, f"sink-{unique}", [topic], flush_records=7)

    rows = landed(tmp_path, topic)
    assert stats.records == 60 and len(rows) == 60
    assert_files_tile(tmp_path, topic)
    assert not list(tmp_path.rglob(".*"))  # no temporaries left
    for row in rows:
        meta = row["record_metadata"]
        i = int(meta["key"].removeprefix("order-"))
        want = sent[i]
        assert row["order_id"] == i
        assert row["total"] == want["total"] and isinstance(row["total"], Decimal)
        assert row["placed_at"] == want["placed_at"]
        assert row["address"] == want["address"]
        assert row["lines"] == want["lines"]
        assert row["note"] == want["note"]
        assert meta["topic"] == topic
        assert meta["headers"] == [
            {"key": "trace", "value": f"t{i}".encode()},
            {"key": "empty", "value": None},
        ]
        assert meta["timestamp"].tzinfo is not None
        assert meta["schema_id"] is not None
    records = read_topic(stack_settings, topic)
    assert metadata_offsets(rows) == [(r.partition, r.offset) for r in records]
    assert [r["record_metadata"]["timestamp"] for r in rows] == [
        datetime.fromtimestamp(r.timestamp_ms / 1000, UTC) for r in records
    ]

    path = next(tmp_path.rglob("*.parquet"))
    schema = pq.read_schema(path)
    assert schema.field("record_metadata").type == pa.struct(
        [
            pa.field("topic", pa.string(), nullable=False),
            pa.field("partition", pa.int32(), nullable=False),
            pa.field("offset", pa.int64(), nullable=False),
            pa.field("timestamp", pa.timestamp("ms", tz="UTC")),
            pa.field("key", pa.string()),
            pa.field(
                "headers",
                pa.list_(
                    pa.struct([pa.field("key", pa.string(), nullable=False), pa.field("value", pa.binary())])
                ),
            ),
            pa.field("schema_id", pa.int64()),
        ]
    )
    assert schema.field("total").type == pa.decimal128(12, 2)
    assert schema.field("placed_at").type == pa.timestamp("us", tz="UTC")
    assert schema.field("address").type == pa.struct([("city", pa.string()), ("postcode", pa.string())])
    assert schema.field("lines").type == pa.list_(
        pa.struct([("sku", pa.string()), ("price", pa.decimal128(12, 2))])
    )
    note = json.loads(schema.metadata[FILE_METADATA_KEY])
    f = LandedFile(topic, note["partition"], note["start_offset"], note["end_offset"])
    assert path.name == f.name and note["rows"] == pq.read_metadata(path).num_rows


def test_a_tombstone_lands_as_a_delete_row(stack_settings: Settings, tmp_path: Path, unique: str) -> None:
    topic = new_topic(stack_settings, f"sinktest.{unique}.customers", partitions=1)
    producer = AvroProducer(stack_settings, topic)
    producer.send(order(1), key="42")
    producer.send(None, key="42", headers=[("reason", b"deleted upstream")])
    producer.flush()

    drain(stack_settings, tmp_path, f"sink-{unique}", [topic])

    upsert, delete = landed(tmp_path, topic)
    assert upsert["order_id"] == 1
    assert {k: v for k, v in delete.items() if k != "record_metadata"} == dict.fromkeys(
        [f["name"] for f in ORDER_V1["fields"]]
    )
    meta = delete["record_metadata"]
    assert (meta["offset"], meta["key"], meta["schema_id"]) == (1, "42", None)
    assert meta["headers"] == [{"key": "reason", "value": b"deleted upstream"}]


def test_undecodable_records_go_to_the_dlq_with_a_reason_and_the_rest_keep_flowing(
    stack_settings: Settings, tmp_path: Path, unique: str
) -> None:
    topic = new_topic(stack_settings, f"sinktest.{unique}.poison", partitions=1)
    producer = AvroProducer(stack_settings, topic)
    good = producer.encode(order(5))
    producer.send(order(1), key="a")
    producer.raw(b"\xde\xad\xbe\xef not avro at all", key="garbage", headers=[("source", b"test")])
    producer.send(order(2), key="b")
    producer.raw(b"\x00\x7f\xff\xff\xf0" + good[5:], key="unknown-id")  # a schema id nobody registered
    producer.raw(good[:-3], key="truncated")
    producer.send(order(3), key="c")
    producer.flush()

    stats = drain(stack_settings, tmp_path, f"sink-{unique}", [topic])

    rows = landed(tmp_path, topic)
    assert [r["order_id"] for r in rows] == [1, 2, 3]
    assert metadata_offsets(rows) == [(0, 0), (0, 2), (0, 5)]
    assert stats.dead_letters == 3

    letters = dead_letters(stack_settings, topic)
    by_offset = {int(letter["attributes"]["offset"]): (record, letter) for record, letter in letters}
    assert sorted(by_offset) == [1, 3, 4]
    reasons = {o: letter["reason"] for o, (_, letter) in by_offset.items()}
    assert reasons[1].startswith("not-wire-format:")
    assert reasons[3].startswith("unknown-schema:") and str(0x7FFFFFF0) in reasons[3]
    assert reasons[4].startswith("corrupt-avro:")
    original = read_topic(stack_settings, topic)
    for offset, (record, letter) in by_offset.items():
        assert (letter["key"], letter["payload"]) == (original[offset].key, original[offset].value)
        assert record.headers == original[offset].headers  # the record's own headers, unchanged
        assert record.key == f"{topic}/0/{offset}".encode()
        assert letter["topic"] == topic and letter["source"] == f"kafka://{topic}"
        assert letter["source_id"] == f"{topic}/0/{offset}"
        assert letter["attributes"]["partition"] == "0" and letter["attributes"]["stage"] == "landing"
        assert letter["error_class"] == "omnistream.kafka.serde.UndecodableRecord"
        assert letter["failed_at"].tzinfo is not None
    assert by_offset[1][0].headers == (("source", b"test"),)

    # Every offset is accounted for once: a row, or a dead letter the file's range covers and names.
    (only,) = landed_files(tmp_path, topic)[0]
    assert (only.start, only.end) == (0, 5)
    note = json.loads(pq.read_schema(tmp_path / only.path).metadata[FILE_METADATA_KEY])
    assert note["dead_lettered_offsets"] == [1, 3, 4]
    assert sorted([o for _, o in metadata_offsets(rows)] + note["dead_lettered_offsets"]) == [
        r.offset for r in original
    ]


def test_an_added_field_lands_as_a_new_column_beside_the_old_files(
    stack_settings: Settings, tmp_path: Path, unique: str
) -> None:
    topic = new_topic(stack_settings, f"sinktest.{unique}.evolve", partitions=1)
    group = f"sink-{unique}"
    v1 = AvroProducer(stack_settings, topic, ORDER_V1)
    v1.send(order(1))
    v1.send(order(2))
    v1.flush()
    drain(stack_settings, tmp_path, group, [topic])

    v2 = AvroProducer(stack_settings, topic, ORDER_V2)
    v2.send(order(3, channel="store"))
    v2.flush()
    v1.send(order(4))  # an old producer still writes v1
    v1.flush()
    drain(stack_settings, tmp_path, group, [topic])

    old, new = (tmp_path / f.path for f in landed_files(tmp_path, topic)[0])
    assert "channel" not in pq.read_schema(old).names
    assert pq.read_schema(new).field("channel").type == pa.string()

    rows = duckdb.connect().execute(
        "select order_id, channel, record_metadata.schema_id from read_parquet(?, union_by_name = true) "
        "order by order_id",
        [str(tmp_path / topic / "*" / "*.parquet")],
    )
    got = rows.fetchall()
    assert [(o, c) for o, c, _ in got] == [(1, None), (2, None), (3, "store"), (4, None)]
    assert got[0][2] == got[1][2] == got[3][2] != got[2][2]  # v1, v1, v2, v1


def test_recovery_trusts_the_files_not_the_committed_offsets(
    stack_settings: Settings, tmp_path: Path, unique: str
) -> None:
    topic = new_topic(stack_settings, f"sinktest.{unique}.recover", partitions=2)
    group = f"sink-{unique}"
    producer = AvroProducer(stack_settings, topic)
    for i in range(40):
        producer.send(order(i), key=str(i))
    producer.flush()
    drain(stack_settings, tmp_path, group, [topic], flush_records=5)
    before = landed(tmp_path, topic)

    # Committed offsets thrown back to 0, the newest file of a partition lost, a half-written leftover:
    client = admin(stack_settings)
    reset = ConsumerGroupTopicPartitions(group, [TopicPartition(topic, p, 0) for p in (0, 1)])
    client.alter_consumer_group_offsets([reset])[group].result(timeout=30)
    newest = max(f for files in landed_files(tmp_path, topic).values() for f in files)
    (tmp_path / newest.path).unlink()
    leftover = tmp_path / newest.path.replace(newest.name, temp_name(newest.name, "1-deadbeef"))
    leftover.write_bytes(b"half a file")

    drain(stack_settings, tmp_path, group, [topic], flush_records=5)

    assert landed(tmp_path, topic) == before
    assert not leftover.exists()
    assert_files_tile(tmp_path, topic)


def test_lag_is_end_offset_minus_committed_offset(
    stack_settings: Settings, tmp_path: Path, unique: str
) -> None:
    topic = new_topic(stack_settings, f"sinktest.{unique}.lag")
    group = f"sink-{unique}"
    producer = AvroProducer(stack_settings, topic)
    for i in range(30):
        producer.send(order(i), key=str(i))
    producer.flush()
    drain(stack_settings, tmp_path, group, [topic])
    for i in range(30, 47):
        producer.send(order(i), key=str(i))
    producer.flush()

    store = open_store(stack_settings, directory=tmp_path)
    rows = sink_status(stack_settings, group, [topic], store)

    client = admin(stack_settings)
    ends = {(p.topic, p.partition): p.end for p in partition_offsets(client, [topic])}
    committed = committed_offsets(client, group)
    assert len(rows) == 3
    for row in rows:
        key = (row.topic, row.partition)
        assert row.end == ends[key]
        assert row.committed == committed[key]
        assert row.lag == ends[key] - committed[key]
        assert row.landed_next == committed[key]  # committed after each file, so the same here
    assert sum(r.lag for r in rows) == 17

    result = CliRunner().invoke(
        app, ["sink", "status", "-t", topic, "--group", group, "--dir", str(tmp_path), "--json"]
    )
    assert result.exit_code == 0, result.output
    shown = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [(s["partition"], s["end"], s["committed"], s["lag"]) for s in shown] == [
        (r.partition, r.end, r.committed, r.lag) for r in rows
    ]


def test_a_gcs_bucket_can_be_the_landing_zone(stack_settings: Settings, unique: str) -> None:
    topic = new_topic(stack_settings, f"sinktest.{unique}.gcs", partitions=2)
    producer = AvroProducer(stack_settings, topic)
    for i in range(25):
        producer.send(order(i), key=str(i))
    producer.send(None, key="3")
    producer.flush()
    bucket = ensure_bucket(storage_client(stack_settings.gcs), f"omnistream-{unique}-landing")
    store = GcsStore(bucket)

    sink = LandingSink(
        stack_settings,
        store,
        sink_config(f"sink-{unique}", [topic], drain=True, flush_records=6),
    )
    sink.run()

    names = sorted(blob.name for blob in bucket.client.list_blobs(bucket))
    files = store.list_topic(topic)
    assert names == sorted(f"landing/{f.path}" for f in files)
    assert all(n.startswith(f"landing/{topic}/partition=") for n in names)
    rows = pa.concat_tables(store.read(f) for f in files).to_pylist()
    records = read_topic(stack_settings, topic)
    assert sorted(metadata_offsets(rows)) == [(r.partition, r.offset) for r in records]
    assert sum(1 for r in rows if r["order_id"] is None) == 1
