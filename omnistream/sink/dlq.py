"""Dead letters: records the sink cannot land, sent to ``<topic>.dlq`` exactly as they arrived.

A dead letter keeps the original key, value bytes and headers, so ``omnistream replay --dlq`` can send it
back unchanged once the cause is fixed; headers prefixed ``omnistream.dlq.`` are added to say why and where
it came from (origin topic, partition, offset and timestamp). Every dead letter is acknowledged by the
broker before the file accounting for its offset is committed, so none is lost; a crash in between sends
it again on restart (at least once), which ``replay --dlq`` absorbs by deduplicating on the origin.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer
from confluent_kafka.admin import NewTopic

from omnistream.kafka import admin, producer_config
from omnistream.settings import Settings
from omnistream.sink.batch import DeadLetter
from omnistream.topics import dlq

log = logging.getLogger(__name__)

PREFIX = "omnistream.dlq."
REASON = PREFIX + "reason"
TOPIC = PREFIX + "topic"
PARTITION = PREFIX + "partition"
OFFSET = PREFIX + "offset"
TIMESTAMP = PREFIX + "timestamp"
STAGE = PREFIX + "stage"
STAGE_LANDING = "landing"
DLQ_PARTITIONS = 1


def dead_letter_headers(letter: DeadLetter) -> list[tuple[str, bytes]]:
    """The headers that say why ``letter`` was rejected and where it came from."""
    added = [
        (REASON, letter.reason),
        (STAGE, STAGE_LANDING),
        (TOPIC, letter.topic),
        (PARTITION, str(letter.partition)),
        (OFFSET, str(letter.offset)),
    ]
    if letter.timestamp_ms is not None:
        added.append((TIMESTAMP, str(letter.timestamp_ms)))
    return [(k, v.encode()) for k, v in added]


def origin_of(headers: Iterable[tuple[str, bytes | None]]) -> tuple[str, int, int] | None:
    """(topic, partition, offset) a dead letter came from, or None if it carries no origin headers."""
    found = {k: v for k, v in headers if k in (TOPIC, PARTITION, OFFSET) and v is not None}
    if len(found) < 3:
        return None
    return found[TOPIC].decode(), int(found[PARTITION]), int(found[OFFSET])


def original_headers(headers: Iterable[tuple[str, bytes | None]]) -> list[tuple[str, bytes | None]]:
    """The record's own headers, without those the dead-lettering added."""
    return [(k, v) for k, v in headers if not k.startswith(PREFIX)]


def create_topic(settings: Settings, topic: str, partitions: int) -> None:
    """Create ``topic`` unless it exists.

    ``omnistream.kafka.ensure_topics`` cannot be used as it stands: it drops its AdminClient while the
    futures are pending, which destroys the handle and fails them with ``_DESTROY``.
    """
    client = admin(settings)  # kept referenced until the future resolves
    new = NewTopic(topic, partitions, replication_factor=1)
    future = client.create_topics([new], operation_timeout=30)[topic]
    try:
        future.result(timeout=60)
        log.info("created topic %s", topic)
    except KafkaException as exc:
        if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
            raise


class DeadLetterError(RuntimeError):
    """The broker did not acknowledge every dead letter; nothing may be committed past them."""


class DeadLetterSender:
    """Sends dead letters and waits until the broker has every one of them."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._producer: Producer | None = None
        self._ready: set[str] = set()

    @property
    def producer(self) -> Producer:
        if self._producer is None:
            self._producer = Producer(producer_config(self.settings, **{"linger.ms": 5}))
        return self._producer

    def _ensure_topic(self, topic: str) -> None:
        if topic not in self._ready:
            create_topic(self.settings, topic, DLQ_PARTITIONS)
            self._ready.add(topic)

    def send(self, letters: list[DeadLetter], timeout_s: float = 60.0) -> None:
        """Produce ``letters`` to their topics' DLQs and block until all are acknowledged."""
        if not letters:
            return
        failures: list[KafkaError] = []

        def delivered(err: KafkaError | None, msg: Message) -> None:
            if err is not None:
                failures.append(err)

        producer = self.producer
        for letter in letters:
            target = dlq(letter.topic)
            self._ensure_topic(target)
            headers: list[Any] = [*letter.headers, *dead_letter_headers(letter)]
            log.warning(
                "dead-lettering %s[%d]@%d to %s: %s",
                letter.topic,
                letter.partition,
                letter.offset,
                target,
                letter.reason,
            )
            while True:
                try:
                    producer.produce(
                        target, value=letter.value, key=letter.key, headers=headers, on_delivery=delivered
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
