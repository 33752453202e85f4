"""The last records of a topic, decoded through the registry to JSON (decimals as strings, times ISO 8601)."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import (
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)

from omnistream.kafka import client_config, registry_client
from omnistream.settings import Settings
from omnistream.sink.arrow import to_json
from omnistream.sink.avro import SchemaCache, UndecodableRecord
from omnistream.sink.batch import headers_of, render_key

POLL_TIMEOUT_S = 0.5
TIMEOUT_S = 30.0


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
    """The last ``n`` records of ``topic`` (of one partition, or of all, by timestamp), oldest first."""
    consumer = Consumer(
        client_config(
            settings,
            **{
                # Never committed: the group exists only in this client.
                "group.id": f"omnistream-tail-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "enable.partition.eof": True,
            },
        )
    )
    cache = SchemaCache(registry_client(settings))
    try:
        metadata = consumer.list_topics(topic, timeout=TIMEOUT_S).topics.get(topic)
        if metadata is None or metadata.error is not None:
            raise KafkaException(metadata.error if metadata else KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART))
        partitions = [p for p in sorted(metadata.partitions) if partition is None or p == partition]
        assignment = []
        for p in partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=TIMEOUT_S)
            if high > low:
                assignment.append(TopicPartition(topic, p, max(low, high - n)))
        msgs = _read_to_end(consumer, assignment)
    finally:
        consumer.close()
    msgs.sort(key=lambda m: (m.timestamp()[1], m.partition(), m.offset()))
    return [render(m, cache) for m in msgs[-n:]] if n > 0 else []


def _read_to_end(consumer: Consumer, assignment: list[TopicPartition]) -> list[Message]:
    pending = {tp.partition for tp in assignment}
    if not pending:
        return []
    consumer.assign(assignment)
    out: list[Message] = []
    while pending:
        for msg in consumer.consume(num_messages=1000, timeout=POLL_TIMEOUT_S):
            err = msg.error()
            if err is None:
                out.append(msg)
            elif err.code() == KafkaError._PARTITION_EOF:
                pending.discard(msg.partition())  # type: ignore[arg-type]
            else:
                raise KafkaException(err)
    return out
