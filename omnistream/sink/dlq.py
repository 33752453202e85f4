"""Dead letters: records the sink cannot land, sent to ``<topic>.dlq`` as ``schemas/dead_letter.avsc``.

The value is the shared ``DeadLetter`` record every producer and sink uses: the record's value bytes
exactly as read (``payload``), its key, why it was rejected (``reason``, starting with one of the
categories of :mod:`omnistream.kafka.serde` and :mod:`omnistream.sink.landing_schemas`), ``source``
``kafka://<topic>`` and ``source_id`` ``<topic>/<partition>/<offset>`` with the partition, offset and
timestamp in ``attributes``. The Kafka key
is the ``source_id``; the Kafka headers are the record's own headers, unchanged. That is everything
``omnistream replay --dlq`` needs to send the record back as it was once the cause is fixed.

A record ``replay --dlq`` sent back carries the number of its replay attempts in the header
``omnistream.replay.attempts``. Dead-lettered again, it keeps that header (with all the others) and the
count is also written to the dead letter's ``replay_attempts`` attribute, so the next replay continues the
count and gives up after its maximum instead of bouncing the record between topic and DLQ for ever.

Every dead letter is acknowledged by the broker before the file accounting for its offset is committed, so
none is lost; a crash in between sends it again on restart (at least once), which ``replay --dlq`` absorbs by
deduplicating on the origin.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer
from confluent_kafka.schema_registry import topic_subject_name_strategy
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from omnistream.dead_letter import DeadLetter
from omnistream.errors import OmnistreamError
from omnistream.kafka.clients import TopicSpec, ensure_topics, producer_config
from omnistream.kafka.registry import registry_client, with_registry
from omnistream.kafka.serde import UndecodableRecord, load_schema
from omnistream.settings import Settings
from omnistream.sink.batch import RejectedRecord
from omnistream.topics import dlq

log = logging.getLogger(__name__)

DEAD_LETTER_SCHEMA = "dead_letter"
KAFKA_SOURCE = "kafka://"
ERROR_CLASS = f"{UndecodableRecord.__module__}.{UndecodableRecord.__qualname__}"
STAGE = "landing"
DLQ_PARTITIONS = 1
# The replay attempts a record has had, as ASCII digits: set by ``replay --dlq``, kept by dead letters.
ATTEMPTS_HEADER = "omnistream.replay.attempts"
ATTEMPTS_ATTRIBUTE = "replay_attempts"


def source_id(topic: str, partition: int, offset: int) -> str:
    return f"{topic}/{partition}/{offset}"


def attempts_in(headers: Sequence[tuple[str, bytes | str | None]] | None) -> int:
    """The replay attempts counted in a record's headers (the last ``ATTEMPTS_HEADER``); 0 if none."""
    count = 0
    for name, value in headers or ():
        if name == ATTEMPTS_HEADER and value is not None:
            text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
            count = int(text) if text.isdigit() else count
    return count


def dead_letter(rejected: RejectedRecord, failed_at: datetime | None = None) -> dict[str, Any]:
    """The ``DeadLetter`` record (schemas/dead_letter.avsc) for a record the sink rejected."""
    attributes = {"partition": str(rejected.partition), "offset": str(rejected.offset), "stage": STAGE}
    if rejected.timestamp_ms is not None:
        attributes["timestamp_ms"] = str(rejected.timestamp_ms)
    attempts = attempts_in(rejected.headers)
    if attempts:  # a record replay --dlq sent back: the count goes on with it
        attributes[ATTEMPTS_ATTRIBUTE] = str(attempts)
    return DeadLetter(
        topic=rejected.topic,
        key=rejected.key,
        reason=rejected.reason,
        error_class=ERROR_CLASS,
        payload=rejected.value,
        source=f"{KAFKA_SOURCE}{rejected.topic}",
        source_id=source_id(rejected.topic, rejected.partition, rejected.offset),
        attributes=attributes,
        failed_at=failed_at or datetime.now(UTC),
    ).to_avro()


def origin_of(letter: Mapping[str, Any]) -> tuple[str, int, int] | None:
    """(topic, partition, offset) of the Kafka record a dead letter holds; None if not from a record."""
    if not str(letter.get("source") or "").startswith(KAFKA_SOURCE):
        return None
    attributes = letter.get("attributes") or {}
    try:
        return str(letter["topic"]), int(attributes["partition"]), int(attributes["offset"])
    except (KeyError, TypeError, ValueError):
        return None


class DeadLetterError(OmnistreamError):
    """The broker did not acknowledge every dead letter; nothing may be committed past them."""


class DeadLetterSender:
    """Sends dead letters and waits until the broker has every one of them."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._producer: Producer | None = None
        self._serializer: AvroSerializer | None = None
        self._ready: set[str] = set()

    @property
    def producer(self) -> Producer:
        if self._producer is None:
            self._producer = Producer(producer_config(self.settings, **{"linger.ms": 5}))
        return self._producer

    def encode(self, letter: dict[str, Any], target: str) -> bytes:
        """``letter`` (a ``DeadLetter`` record) in the wire format, its schema registered for ``target``."""
        if self._serializer is None:
            self._serializer = AvroSerializer(
                registry_client(self.settings),
                load_schema(DEAD_LETTER_SCHEMA),
                conf={"subject.name.strategy": topic_subject_name_strategy},
            )
        serializer = self._serializer
        context = SerializationContext(target, MessageField.VALUE)
        data = with_registry(f"serializing a dead letter for {target}", lambda: serializer(letter, context))
        assert data is not None
        return data

    def _ensure_topic(self, topic: str) -> None:
        if topic not in self._ready:
            ensure_topics(self.settings, [TopicSpec(topic, partitions=DLQ_PARTITIONS)])
            self._ready.add(topic)

    def send(self, rejected: list[RejectedRecord], timeout_s: float = 60.0) -> None:
        """Produce a dead letter for each of ``rejected`` and block until all are acknowledged."""
        if not rejected:
            return
        failures: list[KafkaError] = []

        def delivered(err: KafkaError | None, msg: Message) -> None:
            if err is not None:
                failures.append(err)

        producer = self.producer
        for record in rejected:
            target = dlq(record.topic)
            self._ensure_topic(target)
            value = self.encode(dead_letter(record), target)
            key = source_id(record.topic, record.partition, record.offset).encode()
            headers: list[Any] = record.headers
            log.warning("dead-lettering %s to %s: %s", key.decode(), target, record.reason)
            while True:
                try:
                    producer.produce(
                        target, value=value, key=key, headers=headers or None, on_delivery=delivered
                    )
                    break
                except BufferError:  # the local queue is full: let deliveries drain, then retry
                    producer.poll(0.5)
            producer.poll(0)
        remaining = producer.flush(timeout_s)
        if remaining or failures:
            raise DeadLetterError(
                f"{remaining} dead letter(s) unacknowledged and {len(failures)} failed"
                + (f" (first: {failures[0]})" if failures else "")
            )

    def close(self) -> None:
        if self._producer is not None:
            remaining = self._producer.flush(30)
            if remaining:
                raise KafkaException(KafkaError(KafkaError._TIMED_OUT, f"{remaining} dead letters unsent"))
