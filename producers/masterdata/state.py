"""What a compacted master-data topic says is alive: the previous snapshots' state, read from Kafka itself.

The topic is the one record of what downstream believes exists, so the producer keeps no state of its own
beside it. Read to its end, the latest value per key is the entity as last published and a tombstone (null
value) means "deleted". Whatever a crashed, half-done snapshot managed to publish is in there too, and is
right to be: every such record is an entity the API really served.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from confluent_kafka import Consumer

from omnistream.kafka.clients import reader_config
from omnistream.kafka.offsets import read_to_end, topic_partitions, watermarks
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
    """Read ``topic`` from the beginning to the end offsets it had when the read started; ``ReadTimedOut``
    if that takes longer than ``timeout_s``.

    ``fingerprint(key, value)`` digests a live value; it runs once per live key, after the read, so values
    a later record of the same key overwrites are never decoded.
    """
    consumer = Consumer(reader_config(settings, "masterdata-state", **{"auto.offset.reset": "earliest"}))
    latest: dict[str, bytes | None] = {}
    read = 0
    try:
        partitions = topic_partitions(consumer, topic)
        marks = watermarks(consumer, topic, partitions)
        # To the ends the topic had when the read started: later records are not the previous state.
        for msg in read_to_end(
            consumer,
            topic,
            {p: low for p, (low, _) in marks.items()},
            {p: high for p, (_, high) in marks.items()},
            timeout_s,
        ):
            raw_key = msg.key()
            if raw_key is not None:
                key = raw_key.decode() if isinstance(raw_key, bytes) else str(raw_key)
                latest[key] = msg.value()
            read += 1
    finally:
        consumer.close()
    live = {key: fingerprint(key, value) for key, value in latest.items() if value is not None}
    log.info("%s: %d live keys in %d records read", topic, len(live), read)
    return TopicState(topic, live, read)
