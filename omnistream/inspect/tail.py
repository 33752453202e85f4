"""The last records of a topic, decoded through the registry to JSON (decimals as strings, times ISO 8601)."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, Consumer, Message

from omnistream.kafka.clients import connect, reader_config
from omnistream.kafka.offsets import read_to_end, topic_partitions, watermarks
from omnistream.kafka.registry import registry_client
from omnistream.kafka.serde import SchemaCache, UndecodableRecord, headers_of, render_key, to_json
from omnistream.settings import Settings

# A command waits this long for a failing registry, not the minutes a long-running process does.
REGISTRY_RETRY_FOR_S = 10.0


def _text(value: bytes | None) -> str | None:
    if value is None:
        return None
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return "base64:" + base64.b64encode(value).decode("ascii")


def render(msg: Message, cache: SchemaCache) -> dict[str, Any]:
    """One record as a JSON-ready dict; a value that does not decode is shown as base64 with the reason."""
    ts_type, ts = msg.timestamp()
    out: dict[str, Any] = {
        "topic": msg.topic(),
        "partition": msg.partition(),
        "offset": msg.offset(),
        "timestamp": None
        if ts_type == TIMESTAMP_NOT_AVAILABLE
        else datetime.fromtimestamp(ts / 1000, UTC).isoformat(timespec="milliseconds"),
        "key": render_key(msg.key(), cache),
        "headers": {k: _text(v) for k, v in headers_of(msg)},
    }
    data = msg.value()
    if data is None:
        out["value"] = None  # a tombstone
        return out
    try:
        schema, value = cache.decode(data)
    except UndecodableRecord as exc:
        out["value"] = None
        out["error"] = str(exc)
        out["value_base64"] = base64.b64encode(data).decode("ascii")
        return out
    out["schema_id"] = schema.schema_id
    out["value"] = json.loads(to_json(value))
    return out


def tail(settings: Settings, topic: str, n: int, partition: int | None = None) -> list[dict[str, Any]]:
    """The last ``n`` records of ``topic`` (of one partition, or of all, by timestamp), oldest first.

    ``NoSuchTopic`` / ``NoSuchPartition`` for a topic or partition that does not exist, ``KafkaUnreachable``
    / ``RegistryUnreachable`` for a server that does not answer.
    """
    partitions = topic_partitions(connect(settings), topic, partition)
    consumer = Consumer(reader_config(settings, "tail"))
    cache = SchemaCache(registry_client(settings), retry_for_s=REGISTRY_RETRY_FOR_S)
    try:
        marks = watermarks(consumer, topic, partitions)
        starts = {p: max(low, high - n) for p, (low, high) in marks.items() if high > low}
        msgs = list(read_to_end(consumer, topic, starts, {p: marks[p][1] for p in starts}))
    finally:
        consumer.close()
    msgs.sort(key=lambda m: (m.timestamp()[1], m.partition(), m.offset()))
    return [render(m, cache) for m in msgs[-n:]] if n > 0 else []
