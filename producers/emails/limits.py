"""How large a record each of the producer's topics takes, so that an order too large for Kafka is found
before it is produced (and dead-lettered) instead of failing its batch's transaction.

Two limits apply to a record: the producer's ``message.max.bytes`` (librdkafka refuses a larger one at
``produce()``) and the topic's ``max.message.bytes`` (the broker refuses a larger record batch; it defaults
to the broker's ``message.max.bytes``). The check compares the serialized key and value, uncompressed, with
the smaller of the two less ``RECORD_FRAMING_BYTES``: conservative, since the broker measures the
compressed batch. The producer's ``batch.size`` is kept within the smallest topic limit too, so a batch of
records that each fit is never refused as a whole.

A topic's limit can be lowered while the producer runs; the producer then learns it from the broker's
refusal and reads the limits again (``read_limits``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from confluent_kafka.admin import ConfigResource

from omnistream.kafka.clients import admin
from omnistream.settings import Settings

# librdkafka's defaults for message.max.bytes and batch.size.
LIBRDKAFKA_MESSAGE_MAX_BYTES = 1_000_000
LIBRDKAFKA_BATCH_SIZE = 1_000_000
# A record batch's header (61 bytes) and a record's own length fields and attributes, with room to spare.
RECORD_FRAMING_BYTES = 512


@dataclass(frozen=True)
class RecordLimits:
    """The producer's ``message.max.bytes`` and each topic's ``max.message.bytes``."""

    producer_max: int
    topic_max: Mapping[str, int]

    def limit(self, topic: str) -> int:
        """The most bytes of key and value a record of ``topic`` may have."""
        return min(self.producer_max, self.topic_max.get(topic, self.producer_max)) - RECORD_FRAMING_BYTES

    def fits(self, topic: str, key: bytes, value: bytes) -> bool:
        return len(key) + len(value) <= self.limit(topic)

    def explain(self, topic: str) -> str:
        """Where ``limit(topic)`` comes from, for a dead letter's reason."""
        topic_max = self.topic_max.get(topic)
        of_topic = f"; the topic's max.message.bytes {topic_max:,}" if topic_max is not None else ""
        return (
            f"{self.limit(topic):,} bytes (the producer's message.max.bytes {self.producer_max:,}{of_topic}; "
            f"less {RECORD_FRAMING_BYTES} for framing)"
        )

    @property
    def batch_size(self) -> int:
        """A ``batch.size`` no topic refuses a whole batch for."""
        return min([LIBRDKAFKA_BATCH_SIZE, *(self.limit(topic) for topic in self.topic_max)])


def read_limits(settings: Settings, topics: Iterable[str], producer_max: int) -> RecordLimits:
    """The topics' ``max.message.bytes`` as the broker applies them (a topic's own, else the broker's)."""
    client = admin(settings)  # referenced until every future resolves (see omnistream.kafka.ensure_topics)
    resources = [ConfigResource(ConfigResource.Type.TOPIC, topic) for topic in topics]
    futures = client.describe_configs(resources, request_timeout=30)
    topic_max = {}
    for resource, future in futures.items():
        entries = future.result(timeout=60)
        topic_max[resource.name] = int(entries["max.message.bytes"].value)
    return RecordLimits(producer_max, topic_max)
