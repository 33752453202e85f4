"""Landing sink figures: records per second landed, and latency from Kafka append to a queryable file.

1. Throughput: pre-produce N small Avro records (Confluent wire format, schema registered in the registry)
   to a fresh 3-partition topic, then time one sink draining them (``--drain``: it exits once every
   partition is landed to its end), group join included.
2. Latency: a fresh topic with ``message.timestamp.type=LogAppendTime`` (so each record's timestamp is the
   broker's append time), a sink running at the default flush settings, a producer at a steady rate; the
   latency of a record is its file's commit time (the file's mtime) minus its append time.

Needs the local stack (``omnistream stack up``). Prints figures; asserts nothing.

    .venv/bin/python bench/bench_sink.py [--records 500000] [--rate 2000] [--seconds 20]
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import statistics
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from confluent_kafka import KafkaError, Message, Producer
from confluent_kafka.schema_registry import Schema
from fastavro import parse_schema, schemaless_writer

from omnistream.kafka.clients import TopicSpec, ensure_topics, producer_config
from omnistream.kafka.registry import registry_client
from omnistream.settings import Settings, get_settings
from omnistream.sink.consumer import LandingSink, SinkConfig
from omnistream.sink.store import LocalStore

SCHEMA = {
    "type": "record",
    "name": "BenchSale",
    "namespace": "omnistream.bench",
    "fields": [
        {"name": "sale_id", "type": "long"},
        {"name": "store_id", "type": "int"},
        {"name": "sku", "type": "string"},
        {"name": "quantity", "type": "int"},
        {"name": "amount", "type": {"type": "bytes", "logicalType": "decimal", "precision": 12, "scale": 2}},
        {"name": "sold_at", "type": {"type": "long", "logicalType": "timestamp-micros"}},
    ],
}


def register(settings: Settings, topic: str) -> int:
    return registry_client(settings).register_schema(f"{topic}-value", Schema(json.dumps(SCHEMA), "AVRO"))


class Encoder:
    """Confluent wire format by hand: the same bytes AvroSerializer writes, at fastavro's speed."""

    def __init__(self, schema_id: int) -> None:
        self.header = b"\x00" + schema_id.to_bytes(4, "big")
        self.parsed = parse_schema(SCHEMA)

    def encode(self, i: int) -> bytes:
        buf = io.BytesIO()
        buf.write(self.header)
        schemaless_writer(
            buf,
            self.parsed,
            {
                "sale_id": i,
                "store_id": i % 40,
                "sku": f"SKU-{i % 5000:05d}",
                "quantity": 1 + i % 5,
                "amount": Decimal(i % 100_000) / 100,
                "sold_at": datetime.now(UTC),
            },
        )
        return buf.getvalue()


def produce(settings: Settings, topic: str, encoder: Encoder, count: int, rate: float | None = None) -> None:
    errors: list[KafkaError] = []

    def delivered(err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            errors.append(err)

    producer = Producer(producer_config(settings))
    started = time.monotonic()
    for i in range(count):
        if rate is not None:
            wait = started + i / rate - time.monotonic()
            if wait > 0:
                time.sleep(wait)
        while True:
            try:
                producer.produce(topic, encoder.encode(i), key=str(i % 997), on_delivery=delivered)
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    producer.flush(60)
    if errors:
        raise RuntimeError(f"{len(errors)} produce errors, first: {errors[0]}")


def throughput(settings: Settings, records: int, root: Path) -> None:
    topic = f"bench.sink.{uuid.uuid4().hex[:8]}"
    ensure_topics(settings, [TopicSpec(topic, 3)])
    encoder = Encoder(register(settings, topic))
    t0 = time.monotonic()
    produce(settings, topic, encoder, records)
    print(f"pre-produced {records:,} records in {time.monotonic() - t0:.1f} s")

    config = SinkConfig(
        group_id=f"bench-{topic}",
        topics=[topic],
        flush_records=settings.landing.flush_records,
        flush_seconds=settings.landing.flush_seconds,
        drain=True,
    )
    sink = LandingSink(settings, LocalStore(root / "throughput"), config)
    t0 = time.monotonic()
    stats = sink.run()
    elapsed = time.monotonic() - t0
    print(
        f"throughput: {stats.records:,} records landed in {stats.files} files in {elapsed:.2f} s "
        f"= {stats.records / elapsed:,.0f} records/s (group join included; "
        f"flush_records={config.flush_records})"
    )
    size = sum(f.stat().st_size for f in (root / "throughput").rglob("*.parquet"))
    print(f"  {size / 1e6:.1f} MB of Parquet, {size / max(stats.records, 1):.1f} bytes/record")


def latency(settings: Settings, rate: float, seconds: float, root: Path) -> None:
    topic = f"bench.sink.latency.{uuid.uuid4().hex[:8]}"
    ensure_topics(settings, [TopicSpec(topic, 3, {"message.timestamp.type": "LogAppendTime"})])
    encoder = Encoder(register(settings, topic))
    directory = root / "latency"
    config = SinkConfig(
        group_id=f"bench-{topic}",
        topics=[topic],
        flush_records=settings.landing.flush_records,
        flush_seconds=settings.landing.flush_seconds,
    )
    sink = LandingSink(settings, LocalStore(directory), config)
    runner = threading.Thread(target=sink.run, name="sink")
    runner.start()
    count = int(rate * seconds)
    produce(settings, topic, encoder, count, rate=rate)
    deadline = time.monotonic() + 60
    landed = 0
    while landed < count and time.monotonic() < deadline:
        time.sleep(0.5)
        landed = sum(pq.read_metadata(f).num_rows for f in directory.rglob("*.parquet"))
    sink.request_stop()
    runner.join()
    delays: list[float] = []
    for path in directory.rglob("*.parquet"):
        committed = os.stat(path).st_mtime
        metadata = pq.read_table(path, columns=["record_metadata"]).column("record_metadata").combine_chunks()
        appended = metadata.field("timestamp").cast(pa.int64()).to_pylist()
        delays.extend(committed - ms / 1000 for ms in appended)
    delays.sort()
    q = statistics.quantiles(delays, n=100)
    print(
        f"latency append -> queryable file at flush_records={config.flush_records}, "
        f"flush_seconds={config.flush_seconds}, {rate:.0f} records/s over 3 partitions, "
        f"{len(delays):,} records: "
        f"p50 {q[49]:.2f} s, p95 {q[94]:.2f} s, max {delays[-1]:.2f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=500_000)
    parser.add_argument("--rate", type=float, default=2_000)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--skip-latency", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    settings = get_settings()
    print(f"{os.cpu_count()} cores; Kafka {settings.kafka.bootstrap_servers}")
    with tempfile.TemporaryDirectory(prefix="bench-sink-") as tmp:
        throughput(settings, args.records, Path(tmp))
        if not args.skip_latency:
            latency(settings, args.rate, args.seconds, Path(tmp))


if __name__ == "__main__":
    main()
