"""kill -9 the landing sink at random moments under load, several times: nothing lost, nothing duplicated.

The sink runs as a child process (``python -m omnistream sink``) with tiny files, so kills land before,
during and after file commits and before offset commits, while a producer keeps writing valid records,
deletes and garbage. After the last kill a final sink drains the topic; then the landed rows are compared
with a full read of the topic, by (partition, offset).
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, cast

import pytest
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext
from test_sink_support import (
    AvroProducer,
    Record,
    assert_files_tile,
    dead_letters,
    landed,
    metadata_offsets,
    new_topic,
    order,
    read_topic,
    sink_process,
)

from omnistream.kafka import registry_client
from omnistream.settings import Settings

pytestmark = pytest.mark.integration

KILLS = 6
RATE = 300  # records per second while the sink is being killed


class LoadProducer(threading.Thread):
    """Writes orders at a steady rate until stopped: every 50th a delete, every 97th garbage bytes."""

    def __init__(self, settings: Settings, topic: str) -> None:
        super().__init__(name="load", daemon=True)
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
                self.stop.wait(max(0.0, started + self.sent / RATE - time.monotonic()))
            self.producer.flush()
        except BaseException as exc:
            self.error = exc


def _files(directory: Path) -> int:
    return sum(1 for _ in directory.rglob("*.parquet"))


def _run_until_landing_then_kill(
    proc: subprocess.Popen[bytes], directory: Path, delay_s: float, log: Path
) -> None:
    """Wait (on the process) until it has committed a file of its own, then ``delay_s`` more, then kill -9."""
    before = _files(directory)
    deadline = time.monotonic() + 90
    while _files(directory) <= before:
        assert time.monotonic() < deadline, "the sink landed nothing:\n" + log.read_text()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=0.05)
        assert proc.returncode is None, "the sink exited by itself:\n" + log.read_text()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=delay_s)
    assert proc.returncode is None, "the sink exited by itself:\n" + log.read_text()
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL


def _expected_row(record: Record, deserialize: AvroDeserializer, topic: str) -> tuple[object, ...]:
    if record.value is None:
        return (record.key.decode() if record.key else None, None, None)
    value = cast(dict[str, Any], deserialize(record.value, SerializationContext(topic, MessageField.VALUE)))
    return (record.key.decode() if record.key else None, value["order_id"], value["total"])


def test_kill_9_at_random_moments_under_load_loses_and_duplicates_nothing(
    stack_settings: Settings, tmp_path: Path, unique: str
) -> None:
    topic = new_topic(stack_settings, f"sinktest.{unique}.crash")
    directory = tmp_path / "landing"
    log = tmp_path / "sink.log"
    group = f"sink-{unique}"
    args = [
        "--topics",
        topic,
        "--dir",
        str(directory),
        "--group",
        group,
        "--instance-id",
        f"{group}-0",  # a restarted sink takes its partitions back at once
        "--flush-records",
        "25",
        "--flush-seconds",
        "0.2",
    ]
    rng = random.Random(unique)
    load = LoadProducer(stack_settings, topic)
    load.start()
    try:
        for _ in range(KILLS):
            _run_until_landing_then_kill(sink_process(log, *args), directory, rng.uniform(0.0, 1.2), log)
    finally:
        load.stop.set()
        load.join(timeout=60)
    assert load.error is None, load.error
    assert load.sent > 0

    final = sink_process(log, *args, "--drain")
    assert final.wait(timeout=180) == 0, log.read_text()

    records = read_topic(stack_settings, topic)
    assert len(records) == load.sent
    rows = landed(directory, topic, "record_metadata, order_id, total")
    offsets = metadata_offsets(rows)
    assert len(offsets) == len(set(offsets)), "a record landed twice"
    dead_origins = {
        (int(letter["attributes"]["partition"]), int(letter["attributes"]["offset"]))
        for _, letter in dead_letters(stack_settings, topic)
    }
    garbage = {(r.partition, r.offset) for r in records if r.value is not None and r.value[:1] != b"\x00"}
    assert dead_origins == garbage  # dead letters may repeat after a crash, but only the garbage is there
    assert set(offsets).isdisjoint(dead_origins)
    assert set(offsets) | dead_origins == {(r.partition, r.offset) for r in records}, "a record was lost"

    deserialize = AvroDeserializer(registry_client(stack_settings))
    by_offset = {(r.partition, r.offset): r for r in records}
    for row, at in zip(rows, offsets, strict=True):
        got = (row["record_metadata"]["key"], row["order_id"], row["total"])
        assert got == _expected_row(by_offset[at], deserialize, topic), at
    assert_files_tile(directory, topic)
    assert not list(directory.rglob(".*.tmp")), "a half-written file was left behind"
    assert log.read_text().count("assigned ") >= KILLS + 1
