"""Send dead letters back to the topic they came from, once the cause is fixed.

A dead letter (schemas/dead_letter.avsc) of a Kafka record holds its value bytes (``payload``), key and
origin (``source`` ``kafka://<topic>``, partition and offset in ``attributes``), and the dead-letter record
carries the original headers. It goes back unchanged: value, key and headers, to its origin topic and
partition. The resends and the replayer's own consumer-group offsets on the DLQ commit in one Kafka
transaction, so a dead letter is resent once, even across crashes, and the next run starts after the last
one handled.

The sink dead-letters a record at least once (a crash between the dead letter and its file sends it
again, and a landing replay sends it again), so several dead letters can share an origin. They are
resent once: the origins of everything before the group's committed offsets count as handled, and so does
each origin resent earlier in the same run. Dead letters of inputs that were never Kafka records (an email
a producer could not parse) cannot be resent by this and are counted as skipped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from omnistream.kafka import client_config, producer_config, registry_client
from omnistream.settings import Settings
from omnistream.sink.avro import SchemaCache, UndecodableRecord
from omnistream.sink.dlq import origin_of
from omnistream.topics import dlq

log = logging.getLogger(__name__)

POLL_TIMEOUT_S = 0.5
READ_TIMEOUT_S = 120.0


@dataclass
class DeadLetterReplay:
    """What a ``replay --dlq`` run did."""

    dlq_topic: str
    resent: int = 0
    duplicates: int = 0
    not_resendable: int = 0
    resent_to: dict[str, int] = field(default_factory=dict)


def dlq_topic_of(name: str) -> str:
    """``name`` if it is a DLQ topic already, else the DLQ beside it."""
    return name if name.endswith(".dlq") else dlq(name)


def default_group(settings: Settings) -> str:
    return f"{settings.landing.group_id}.dlq-replay"


def replay_dead_letters(settings: Settings, topic: str, group: str | None = None) -> DeadLetterReplay:
    """Resend the dead letters of ``topic`` (or of DLQ topic ``topic``) not resent before."""
    source = dlq_topic_of(topic)
    group_id = group or default_group(settings)
    report = DeadLetterReplay(source)
    consumer = Consumer(
        client_config(
            settings,
            **{
                "group.id": group_id,
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "isolation.level": "read_committed",
                "auto.offset.reset": "earliest",
                # The end of a partition written transactionally is a marker no record reaches.
                "enable.partition.eof": True,
            },
        )
    )
    try:
        metadata = consumer.list_topics(source, timeout=30).topics.get(source)
        if metadata is None or metadata.error is not None:
            log.info("%s does not exist: nothing dead-lettered", source)
            return report
        partitions = sorted(metadata.partitions)
        committed = {
            tp.partition: tp.offset
            for tp in consumer.committed([TopicPartition(source, p) for p in partitions], timeout=30)
        }
        ends = {
            p: consumer.get_watermark_offsets(TopicPartition(source, p), timeout=30)[1] for p in partitions
        }
        if all(committed[p] >= ends[p] for p in partitions):
            log.info("%s: every dead letter was handled already", source)
            return report
        _resend(settings, consumer, group_id, source, partitions, committed, ends, report)
    finally:
        consumer.close()
    return report


def _resend(
    settings: Settings,
    consumer: Consumer,
    group_id: str,
    source: str,
    partitions: list[int],
    committed: dict[int, int],
    ends: dict[int, int],
    report: DeadLetterReplay,
) -> None:
    # One transactional id per group and DLQ: a second replayer of the same DLQ fences the first.
    producer = Producer(producer_config(settings, **{"transactional.id": f"{group_id}:{source}"}))
    failures: list[KafkaError] = []

    def delivered(err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            failures.append(err)

    cache = SchemaCache(registry_client(settings))
    producer.init_transactions(30)
    producer.begin_transaction()
    try:
        handled: set[tuple[str, int, int]] = set()
        # From the beginning: the dead letters before the committed offsets tell which origins are done.
        consumer.assign([TopicPartition(source, p, OFFSET_BEGINNING) for p in partitions if ends[p] > 0])
        for msg in _read_until(consumer, source, ends):
            letter = _dead_letter(msg, cache)
            origin = origin_of(letter) if letter is not None else None
            offset: int = msg.offset()  # type: ignore[assignment]
            if offset < max(committed.get(msg.partition(), 0), 0):  # type: ignore[arg-type]
                if origin is not None:
                    handled.add(origin)
                continue
            if letter is None or origin is None:
                report.not_resendable += 1
                log.warning(
                    "%s[%s]@%d is not a dead letter of a Kafka record; skipped",
                    source,
                    msg.partition(),
                    offset,
                )
                continue
            if origin in handled:
                report.duplicates += 1
                continue
            handled.add(origin)
            target, partition, _ = origin
            while True:
                try:
                    producer.produce(
                        target,
                        value=letter["payload"],
                        key=letter["key"],
                        partition=partition,
                        headers=msg.headers(),  # the record's own, kept on its dead letter
                        on_delivery=delivered,
                    )
                    break
                except BufferError:
                    producer.poll(0.5)
            producer.poll(0)
            report.resent += 1
            report.resent_to[target] = report.resent_to.get(target, 0) + 1
        positions = [TopicPartition(source, p, ends[p]) for p in partitions]
        producer.send_offsets_to_transaction(positions, consumer.consumer_group_metadata(), 30)
        producer.commit_transaction(60)
    except BaseException:
        producer.abort_transaction(30)
        raise
    if failures:  # commit_transaction raises first if any delivery failed; kept as a guard
        raise KafkaException(failures[0])
    log.info("%s: resent %d, skipped %d duplicate(s)", source, report.resent, report.duplicates)


def _dead_letter(msg: Message, cache: SchemaCache) -> dict[str, Any] | None:
    """The DeadLetter record in ``msg``, or None if it holds something else."""
    data = msg.value()
    if data is None:
        return None
    try:
        _, letter = cache.decode(data)
    except UndecodableRecord:
        return None
    return letter if isinstance(letter, dict) and {"payload", "key", "source"} <= letter.keys() else None


def _read_until(consumer: Consumer, topic: str, ends: dict[int, int]) -> Iterator[Message]:
    """Every record of ``topic`` below the given end offsets, in order per partition."""
    pending = {p for p, end in ends.items() if end > 0}
    deadline = time.monotonic() + READ_TIMEOUT_S
    while pending:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{topic}: partitions {sorted(pending)} not read to their end")
        for msg in consumer.consume(num_messages=1000, timeout=POLL_TIMEOUT_S):
            partition: int = msg.partition()  # type: ignore[assignment]
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    pending.discard(partition)
                    continue
                raise KafkaException(err)
            offset: int = msg.offset()  # type: ignore[assignment]
            if partition not in pending or offset >= ends[partition]:
                continue
            yield msg
            if offset >= ends[partition] - 1:
                pending.discard(partition)
