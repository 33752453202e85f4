"""Helpers shared by the landing sink, replay and topics tests (no tests of its own).

Records are produced the way the pipeline's producers do it, through confluent-kafka's AvroSerializer and
the real registry (Confluent wire format), under test schemas defined here; a topic is read back in full
with a plain consumer, and the landing zone with DuckDB.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, cast

import duckdb
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    Message,
    Producer,
)
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from omnistream.kafka.clients import TopicSpec, ensure_topics, producer_config, reader_config
from omnistream.kafka.offsets import read_to_end, topic_partitions, watermarks
from omnistream.kafka.registry import registry_client
from omnistream.kafka.serde import headers_of
from omnistream.settings import Settings
from omnistream.sink.consumer import LandingSink, SinkConfig, SinkStats
from omnistream.sink.layout import live_files, overlapping, parse_file_name
from omnistream.sink.store import LocalStore
from omnistream.topics import dlq
from tests.support.decoding import Decode, avro_deserializer

ROOT = Path(__file__).resolve().parents[2]
MONEY = {"type": "bytes", "logicalType": "decimal", "precision": 12, "scale": 2}
ORDER_V1: dict[str, Any] = {
    "type": "record",
    "name": "TestOrder",
    "namespace": "omnistream.test.sink",
    "fields": [
        {"name": "order_id", "type": "long"},
        {"name": "store", "type": "string"},
        {"name": "total", "type": MONEY},
        {"name": "placed_at", "type": {"type": "long", "logicalType": "timestamp-micros"}},
        {
            "name": "address",
            "type": {
                "type": "record",
                "name": "TestAddress",
                "fields": [{"name": "city", "type": "string"}, {"name": "postcode", "type": "string"}],
            },
        },
        {
            "name": "lines",
            "type": {
                "type": "array",
                "items": {
                    "type": "record",
                    "name": "TestLine",
                    "fields": [{"name": "sku", "type": "string"}, {"name": "price", "type": MONEY}],
                },
            },
        },
        {"name": "note", "type": ["null", "string"], "default": None},
    ],
}
# BACKWARD compatible: a field added with a default.
ORDER_V2: dict[str, Any] = {
    **ORDER_V1,
    "fields": [*ORDER_V1["fields"], {"name": "channel", "type": "string", "default": "web"}],
}
BASE_TIME = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)


def order(i: int, **extra: Any) -> dict[str, Any]:
    """A test order; money exact, times UTC."""
    return {
        "order_id": i,
        "store": f"S{i % 4:02d}",
        "total": Decimal(i * 137 % 100_000) / 100 - Decimal("12.50"),
        "placed_at": BASE_TIME + timedelta(seconds=i, microseconds=i),
        "address": {"city": f"City {i % 7}", "postcode": f"{10000 + i}"},
        "lines": [{"sku": f"SKU-{i}", "price": Decimal("0.99")}, {"sku": "BAG", "price": Decimal("0.10")}],
        "note": None if i % 3 else f"note {i}",
        **extra,
    }


class AvroProducer:
    """Produces test records (Avro values through the registry, raw bytes, tombstones) and checks delivery."""

    def __init__(self, settings: Settings, topic: str, schema: dict[str, Any] = ORDER_V1) -> None:
        self.topic = topic
        self.producer = Producer(producer_config(settings, **{"linger.ms": 5}))
        self.serializer = AvroSerializer(registry_client(settings), json.dumps(schema))
        self.errors: list[KafkaError] = []
        self.delivered: list[tuple[int, int]] = []

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self.errors.append(err)
        else:
            self.delivered.append((msg.partition(), msg.offset()))  # type: ignore[arg-type]

    def encode(self, value: dict[str, Any]) -> bytes:
        data = self.serializer(value, SerializationContext(self.topic, MessageField.VALUE))
        assert data is not None
        return data

    def send(self, value: dict[str, Any] | None, key: str | bytes | None = None, **kwargs: Any) -> None:
        self.raw(None if value is None else self.encode(value), key, **kwargs)

    def raw(self, value: bytes | None, key: str | bytes | None = None, **kwargs: Any) -> None:
        while True:
            try:
                self.producer.produce(self.topic, value, key, on_delivery=self._on_delivery, **kwargs)
                break
            except BufferError:
                self.producer.poll(0.1)
        self.producer.poll(0)

    def flush(self) -> None:
        assert self.producer.flush(30) == 0, "records left undelivered"
        assert not self.errors, self.errors


def new_topic(settings: Settings, name: str, partitions: int = 3) -> str:
    ensure_topics(settings, [TopicSpec(name, partitions)])
    return name


def sink_config(group: str, topics: list[str], **kwargs: Any) -> SinkConfig:
    return SinkConfig(
        group_id=group, topics=topics, **{"flush_records": 1000, "flush_seconds": 1.0, **kwargs}
    )


def drain(settings: Settings, directory: Path, group: str, topics: list[str], **kwargs: Any) -> SinkStats:
    """Run one sink until every partition of ``topics`` is landed to its end."""
    return LandingSink(
        settings, LocalStore(directory), sink_config(group, topics, drain=True, **kwargs)
    ).run()


@dataclass(frozen=True)
class Record:
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...]
    timestamp_ms: int


def header(record: Record, name: str) -> str:
    """The text of the first header called ``name``."""
    value = dict(record.headers)[name]
    assert value is not None, name
    return value.decode()


def read_topic(settings: Settings, topic: str, timeout_s: float = 60.0) -> list[Record]:
    """Every record of ``topic``, in (partition, offset) order."""
    consumer = Consumer(reader_config(settings, "test-reader"))
    try:
        partitions = topic_partitions(consumer, topic)
        starts = {
            p: OFFSET_BEGINNING for p, (_, high) in watermarks(consumer, topic, partitions).items() if high
        }
        out = [
            Record(
                msg.partition(),  # type: ignore[arg-type]
                msg.offset(),  # type: ignore[arg-type]
                msg.key(),
                msg.value(),
                tuple(headers_of(msg)),
                msg.timestamp()[1],
            )
            for msg in read_to_end(consumer, topic, starts, timeout_s=timeout_s)
        ]
    finally:
        consumer.close()
    return sorted(out, key=lambda r: (r.partition, r.offset))


def dead_letters(settings: Settings, topic: str) -> list[tuple[Record, dict[str, Any]]]:
    """The records of ``topic``'s DLQ with their DeadLetter values decoded through the registry."""
    deserialize = avro_deserializer(registry_client(settings))
    out = []
    for record in read_topic(settings, dlq(topic)):
        letter = deserialize(record.value, SerializationContext(dlq(topic), MessageField.VALUE))
        assert isinstance(letter, dict)
        out.append((record, letter))
    return out


def landed(directory: Path, topic: str, columns: str = "*") -> list[dict[str, Any]]:
    """The landed rows of ``topic`` (its live files, union by name), in (partition, offset) order.

    Read as the reader contract says (omnistream.sink.compaction): one listing, covered files skipped.
    """
    listing = [f for p in directory.glob(f"{topic}/partition=*/*.parquet") if (f := parse_file_name(p.name))]
    paths = [str(directory / f.path) for f in live_files(listing)]
    if not paths:
        return []
    cursor = duckdb.connect().execute(
        f"select {columns} from read_parquet(?, union_by_name = true, hive_partitioning = false) "
        "order by record_metadata.partition, record_metadata.offset",
        [paths],
    )
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def landed_files(directory: Path, topic: str) -> dict[int, list[Any]]:
    """The committed files of ``topic`` by partition (parsed names), asserting the name layout."""
    out: dict[int, list[Any]] = {}
    for path in sorted((directory / topic).glob("partition=*/*")):
        f = parse_file_name(path.name)
        assert f is not None, f"not a landing file name: {path}"
        assert path.parent.name == f"partition={f.partition}" and f.topic == topic
        out.setdefault(f.partition, []).append(f)
    return out


def assert_files_tile(directory: Path, topic: str) -> None:
    """No overlaps, no gaps between consecutive live files of a partition, nothing half-written left."""
    for partition, all_files in landed_files(directory, topic).items():
        files = live_files(all_files)
        assert overlapping(files) == [], (partition, files)
        ordered = sorted(files)
        for a, b in itertools.pairwise(ordered):
            assert b.start == a.end + 1, (partition, a, b)


def metadata_offsets(rows: Iterable[dict[str, Any]]) -> list[tuple[int, int]]:
    return [(r["record_metadata"]["partition"], r["record_metadata"]["offset"]) for r in rows]


class LoadProducer(threading.Thread):
    """Writes orders at a steady rate until stopped: every 50th a delete, every 97th garbage bytes."""

    def __init__(self, settings: Settings, topic: str, rate: float = 300) -> None:
        super().__init__(name="load", daemon=True)
        self.rate = rate
        self.producer = AvroProducer(settings, topic)
        self.stop = threading.Event()
        self.sent = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            started = time.monotonic()
            while not self.stop.is_set():
                i = self.sent
                if i % 97 == 96:
                    self.producer.raw(b"\xff" + os.urandom(11), key=f"junk-{i}")  # never wire format
                elif i % 50 == 49:
                    self.producer.send(None, key=str(i - 1))
                else:
                    self.producer.send(order(i), key=str(i))
                self.sent += 1
                # Paced by waiting on the stop flag, so stopping is immediate.
                self.stop.wait(max(0.0, started + self.sent / self.rate - time.monotonic()))
            self.producer.flush()
        except BaseException as exc:
            self.error = exc


def _expected_row(record: Record, deserialize: Decode, topic: str) -> tuple[object, ...]:
    if record.value is None:
        return (record.key.decode() if record.key else None, None, None)
    value = cast(dict[str, Any], deserialize(record.value, SerializationContext(topic, MessageField.VALUE)))
    return (record.key.decode() if record.key else None, value["order_id"], value["total"])


def assert_exactly_once(settings: Settings, directory: Path, topic: str, sent: int) -> None:
    """Every record of ``topic`` landed once or dead-lettered (garbage only), none twice; files tile."""
    records = read_topic(settings, topic)
    assert len(records) == sent
    rows = landed(directory, topic, "record_metadata, order_id, total")
    offsets = metadata_offsets(rows)
    assert len(offsets) == len(set(offsets)), "a record landed twice"
    dead_origins = {
        (int(letter["attributes"]["partition"]), int(letter["attributes"]["offset"]))
        for _, letter in dead_letters(settings, topic)
    }
    garbage = {(r.partition, r.offset) for r in records if r.value is not None and r.value[:1] != b"\x00"}
    assert dead_origins == garbage  # dead letters may repeat after a crash, but only the garbage is there
    assert set(offsets).isdisjoint(dead_origins)
    assert set(offsets) | dead_origins == {(r.partition, r.offset) for r in records}, "a record was lost"

    deserialize = avro_deserializer(registry_client(settings))
    by_offset = {(r.partition, r.offset): r for r in records}
    for row, at in zip(rows, offsets, strict=True):
        got = (row["record_metadata"]["key"], row["order_id"], row["total"])
        assert got == _expected_row(by_offset[at], deserialize, topic), at
    assert_files_tile(directory, topic)
    assert not list(directory.rglob(".*.tmp")), "a half-written file was left behind"


def poll_until(condition: Callable[[], object], timeout_s: float, what: str, every_s: float = 0.05) -> None:
    """Check ``condition`` every ``every_s`` until it holds; fail after ``timeout_s`` saying ``what``."""
    idle = threading.Event()  # never set: its wait is the pause between checks
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        idle.wait(every_s)


class SinkThread(threading.Thread):
    """A landing sink running in a thread of the test; an error it dies of is kept for the test to raise."""

    def __init__(self, settings: Settings, directory: Path, config: SinkConfig) -> None:
        super().__init__(name=f"sink-{config.group_id}", daemon=True)
        self.sink = LandingSink(settings, LocalStore(directory), config)
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.sink.run()
        except BaseException as exc:
            self.error = exc

    def stop(self) -> None:
        self.sink.request_stop()
        self.join(60)
        assert not self.is_alive(), "the sink did not stop"
        if self.error is not None:
            raise self.error


def sink_process(log: Path, *args: str) -> subprocess.Popen[bytes]:
    """``python -m omnistream sink ARGS`` as a child process, its output appended to ``log``."""
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "omnistream", "sink", *args],
            cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
