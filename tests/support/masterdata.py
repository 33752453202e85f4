"""The master-data API simulator served over real HTTP in-process, and its topics read back by key."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer
from confluent_kafka.serialization import MessageField, SerializationContext
from flask import Flask
from werkzeug.serving import BaseWSGIServer, make_server

from omnistream.kafka.clients import reader_config
from omnistream.kafka.offsets import read_to_end, topic_partitions, watermarks
from omnistream.kafka.registry import registry_client
from omnistream.settings import Settings
from simulators.api import FaultConfig, FaultInjector, api_state, create_app, stop_app
from simulators.masterdata import MasterData
from tests.support.decoding import avro_deserializer

TOKEN = "masterdata-test-token"


@dataclass
class Served:
    app: Flask
    server: BaseWSGIServer
    thread: threading.Thread

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}"

    @property
    def port(self) -> int:
        return self.server.server_port

    @property
    def store(self) -> MasterData:
        return api_state(self.app).store

    def set_faults(self, faults: FaultConfig | None) -> None:
        api_state(self.app).faults = FaultInjector(faults) if faults is not None else None

    def stop(self) -> None:
        """Stop serving and close the listening socket: new connections are refused."""
        if self.thread.is_alive():
            self.server.shutdown()
            self.thread.join()
            self.server.server_close()


@contextmanager
def serving(data_dir: Path, faults: FaultConfig | None = None) -> Iterator[Served]:
    """The simulator over real HTTP on a free loopback port, for the duration of the block."""
    app = create_app(data_dir, TOKEN, faults=faults)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    served = Served(app, server, thread)
    try:
        yield served
    finally:
        served.stop()
        stop_app(app)


def read_topic(settings: Settings, topic: str) -> list[tuple[str, dict[str, Any] | None]]:
    """Every (key, value) in ``topic`` up to its current end, by partition and offset.

    Values are decoded with the writer's schema from the registry, nothing else.
    """
    deserializer = avro_deserializer(registry_client(settings))
    ctx = SerializationContext(topic, MessageField.VALUE)
    consumer = Consumer(reader_config(settings, "test-reader"))
    records: list[tuple[int, int, str, dict[str, Any] | None]] = []
    try:
        ends = {
            p: high
            for p, (low, high) in watermarks(consumer, topic, topic_partitions(consumer, topic)).items()
            if high > low
        }
        for msg in read_to_end(consumer, topic, dict.fromkeys(ends, OFFSET_BEGINNING), ends, timeout_s=60):
            partition, offset, key, raw = msg.partition(), msg.offset(), msg.key(), msg.value()
            assert partition is not None and offset is not None and isinstance(key, bytes)
            value = deserializer(raw, ctx) if raw is not None else None
            records.append((partition, offset, key.decode(), value))
    finally:
        consumer.close()
    return [(key, value) for _, _, key, value in sorted(records, key=lambda r: r[:2])]
