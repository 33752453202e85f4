"""What a compacted master-data topic says is alive: the previous snapshots' state, read from Kafka itself.

The topic is the one record of what downstream believes exists, so the producer keeps no state of its own
beside it. Read to its end, the latest value per key is the entity as last published and a tombstone (null
value) means "deleted". Whatever a crashed, half-done snapshot managed to publish is in there too, and is
right to be: every such record is an entity the API really served.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from omnistream.kafka import client_config
from omnistream.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class TopicState:
    """The live keys of a compacted topic with a fingerprint of each one's latest value."""

    topic: str
    live: dict[str, bytes] = field(default_factory=dict)
    records_read: int = 0

    def missing_from(self, seen: set[str]) -> list[str]:
        """Keys alive in the topic but absent from a complete walk: the ones to tombstone."""
        return sorted(set(self.live) - seen)


def read_topic_state(
    settings: Settings,
    topic: str,
    fingerprint: Callable[[str, bytes], bytes],
    timeout_s: float = 120.0,
) -> TopicState:
    """Read ``topic`` from the beginning to the end offsets it had when the read started.

    ``fingerprint(key, value)`` digests a live value; it runs once per live key, after the read, so values
    a later record of the same key overwrites are never decoded.
    """
    consumer = Consumer(
        client_config(
            settings,
            # Assigned partitions, no group membership and no commits: the group id is never joined.
            **{
                "group.id": f"omnistream-masterdata-state-{uuid.uuid4().hex[:12]}",
                "enable.auto.commit": False,
                "enable.partition.eof": True,
                "auto.offset.reset": "earliest",
            },
        )
    )
    latest: dict[str, bytes | None] = {}
    read = 0
    try:
        metadata = consumer.list_topics(topic, timeout=30).topics[topic]
        if metadata.error is not None:
            raise KafkaException(metadata.error)
        end: dict[int, int] = {}
        assignment = []
        for partition in metadata.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=30)
            if high > low:
                end[partition] = high
                assignment.append(TopicPartition(topic, partition, low))
        consumer.assign(assignment)
        deadline = time.monotonic() + timeout_s
        while end:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"reading {topic} to its end took over {timeout_s:.0f} s; "
                    f"{len(end)} partitions unfinished"
                )
            # consume() returns when the batch is full or the timeout passes: a short timeout keeps the
            # last, partial batch from waiting.
            for msg in consumer.consume(num_messages=5000, timeout=0.05):
                partition = msg.partition() or 0  # every message from an assigned partition has one
                error = msg.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        end.pop(partition, None)
                        continue
                    raise KafkaException(error)
                offset = msg.offset()
                if partition not in end or offset is None or offset >= end[partition]:
                    continue  # written after the read began: not part of the previous state
                raw_key = msg.key()
                if raw_key is not None:
                    key = raw_key.decode() if isinstance(raw_key, bytes) else str(raw_key)
                    latest[key] = msg.value()
                read += 1
                if offset >= end[partition] - 1:
                    end.pop(partition)
    finally:
        consumer.close()
    live = {key: fingerprint(key, value) for key, value in latest.items() if value is not None}
    log.info("%s: %d live keys in %d records read", topic, len(live), read)
    return TopicState(topic, live, read)
