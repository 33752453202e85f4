"""Landing sink figures: records per second landed, and latency from Kafka append to a queryable file.

1. Throughput: pre-produce N small Avro records (Confluent wire format, schema registered in the registry)
   to a fresh 3-partition topic, then time, on the same records: a bare confluent-kafka consume (a fresh
   group, subscribe, read to the end of every partition: the limit), ``omnistream sink --drain`` run from
   the CLI as a child process (interpreter start-up, group join and the last file included; the goal is
   >= 80% of the bare rate), and one in-process sink draining them (for the breakdown).
2. Latency: a fresh topic with ``message.timestamp.type=LogAppendTime`` (so each record's timestamp is the
   broker's append time), a sink running at the default flush settings, a producer at a steady rate; the
   latency of a record is the commit time (mtime) of the first file that holds it minus its append time
   (goal: p95 <= 2 s). The files left at the end show whether compaction keeps their number bounded.

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
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from confluent_kafka import Consumer, KafkaError, Message, Producer
from confluent_kafka.schema_registry import Schema
from fastavro import parse_schema, schemaless_writer

from omnistream.kafka.clients import TopicSpec, client_config, ensure_topics, producer_config
from omnistream.kafka.registry import registry_client
from omnistream.settings import Settings, get_settings
from omnistream.sink.cli import compaction_policy
from omnistream.sink.consumer import LandingSink, SinkConfig
from omnistream.sink.layout import parse_file_name
from omnistream.sink.store import LocalStore

ROOT = Path(__file__).resolve().parents[1]
LATENCY_GOAL_S = 2.0
THROUGHPUT_GOAL = 0.80

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


def bare_consume(settings: Settings, topic: str, partitions: int) -> tuple[int, float]:
    """Records read and seconds taken by a plain consumer of a fresh group, from creation to the last EOF."""
    t0 = time.monotonic()
    consumer = Consumer(
        client_config(
            settings,
            **{
                "group.id": f"bench-bare-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "isolation.level": "read_committed",
                "enable.partition.eof": True,
            },
        )
    )
    count, eof = 0, set()
    try:
        consumer.subscribe([topic])
        while len(eof) < partitions:
            for msg in consumer.consume(num_messages=10_000, timeout=0.5):
                err = msg.error()
                if err is None:
                    count += 1
                elif err.code() == KafkaError._PARTITION_EOF:
                    eof.add(msg.partition())
                else:
                    raise RuntimeError(err)
    finally:
        consumer.close()
    return count, time.monotonic() - t0


def cli_drain(topic: str, directory: Path) -> tuple[int, float]:
    """``omnistream sink --drain`` as a child process: records landed and wall-clock seconds."""
    command = [sys.executable, "-m", "omnistream", "sink", "--drain", "--topics", topic]
    command += ["--dir", str(directory), "--group", f"bench-cli-{topic}", "--metrics-port", "0"]
    t0 = time.monotonic()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    elapsed = time.monotonic() - t0
    if done.returncode != 0:
        raise RuntimeError(f"sink --drain failed: {done.stderr[-2000:]}")
    landed = sum(pq.read_metadata(f).num_rows for f in directory.rglob("*.parquet"))
    return landed, elapsed


def throughput(settings: Settings, records: int, root: Path) -> None:
    topic = f"bench.sink.{uuid.uuid4().hex[:8]}"
    ensure_topics(settings, [TopicSpec(topic, 3)])
    encoder = Encoder(register(settings, topic))
    t0 = time.monotonic()
    produce(settings, topic, encoder, records)
    print(f"pre-produced {records:,} records in {time.monotonic() - t0:.1f} s")

    bare, bare_s = bare_consume(settings, topic, 3)
    bare_rate = bare / bare_s
    print(f"bare consume: {bare:,} records in {bare_s:.2f} s = {bare_rate:,.0f} records/s (group join incl.)")

    cli, cli_s = cli_drain(topic, root / "cli")
    cli_rate = cli / cli_s
    print(
        f"sink --drain (CLI): {cli:,} records in {cli_s:.2f} s = {cli_rate:,.0f} records/s "
        f"(start-up included); ratio to bare consume {cli_rate / bare_rate:.2f} "
        f"(goal >= {THROUGHPUT_GOAL:.2f})"
    )

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
        f"in-process sink: {stats.records:,} records landed in {stats.files} files in {elapsed:.2f} s "
        f"= {stats.records / elapsed:,.0f} records/s (group join included; "
        f"flush_records={config.flush_records}); "
        f"ratio to bare consume {stats.records / elapsed / bare_rate:.2f}"
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
        compaction=compaction_policy(settings.landing, settings.landing.flush_records),
    )
    sink = LandingSink(settings, LocalStore(directory), config)
    runner = threading.Thread(target=sink.run, name="sink")
    runner.start()
    # Files are read as they appear (compaction replaces the small ones later): a record's latency is that
    # of the first file holding it, the moment a reader could first query it.
    delays: dict[tuple[int, int], float] = {}
    seen: set[Path] = set()

    def scan() -> None:
        for path in sorted(directory.rglob("*.parquet")):
            if path in seen:
                continue
            try:
                committed = os.stat(path).st_mtime
                metadata = pq.read_table(path, columns=["record_metadata"]).column("record_metadata")
            except (FileNotFoundError, OSError):
                continue  # replaced by a merged file between the listing and the read
            seen.add(path)
            metadata = metadata.combine_chunks()
            partition = parse_file_name(path.name).partition  # type: ignore[union-attr]
            appended = metadata.field("timestamp").cast(pa.int64()).to_pylist()
            for offset, ms in zip(metadata.field("offset").to_pylist(), appended, strict=True):
                delays.setdefault((partition, offset), committed - ms / 1000)

    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(0.1):
            scan()

    watcher = threading.Thread(target=watch, name="watch")
    watcher.start()
    count = int(rate * seconds)
    produce(settings, topic, encoder, count, rate=rate)
    deadline = time.monotonic() + 60
    while len(delays) < count and time.monotonic() < deadline:
        time.sleep(0.2)
    stop.set()
    watcher.join()
    sink.request_stop()
    runner.join()
    files = list(directory.rglob("*.parquet"))
    ordered = sorted(delays.values())
    q = statistics.quantiles(ordered, n=100)
    print(
        f"latency append -> queryable file at flush_records={config.flush_records}, "
        f"flush_seconds={config.flush_seconds}, {rate:.0f} records/s over 3 partitions, "
        f"{len(ordered):,} records: "
        f"p50 {q[49]:.2f} s, p95 {q[94]:.2f} s, max {ordered[-1]:.2f} s; "
        f"ratio p95 / goal {q[94] / LATENCY_GOAL_S:.2f} (goal <= 1.00, p95 <= {LATENCY_GOAL_S:.0f} s)"
    )
    merged = sum(sink.metrics.merged.labels(topic)._value.get() for _ in [0])
    print(
        f"  {len(files)} files left for {sink.stats.files} flushed ({len(files) / 3:.1f} per partition; "
        f"{merged:.0f} merged by compaction, compact_files={settings.landing.compact_files})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=500_000)
    parser.add_argument("--rate", type=float, default=2_000)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--skip-throughput", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    settings = get_settings()
    print(f"{os.cpu_count()} cores; Kafka {settings.kafka.bootstrap_servers}")
    with tempfile.TemporaryDirectory(prefix="bench-sink-") as tmp:
        if not args.skip_throughput:
            throughput(settings, args.records, Path(tmp))
        if not args.skip_latency:
            latency(settings, args.rate, args.seconds, Path(tmp))


if __name__ == "__main__":
    main()
