"""Partitions and their offsets: start/end offsets, groups' committed offsets, and reading to the end.

Offsets only: differences of offsets are not record counts (transaction markers, aborted records and
compaction take offsets). Counts in records are :mod:`omnistream.kafka.record_counts`.

:func:`read_to_end` is the one way to read partitions to their end. The end is the partition-EOF event
(whose position is past any transaction markers, which no record reaches) or, where end offsets are
given, the last record below them; records written after those ends are not part of the read.
"""

from __future__ import annotations

import fnmatch
import logging
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from confluent_kafka import (
    Consumer,
    ConsumerGroupTopicPartitions,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, OffsetSpec

from omnistream.errors import OmnistreamError, UsageError

log = logging.getLogger(__name__)

TIMEOUT_S = 30.0
# One consume call of read_to_end: short, so the end of the last partition is noticed at once.
CONSUME_TIMEOUT_S = 0.05
CONSUME_BATCH = 5000
# A guard on top of the request timeout: a future whose client is gone would otherwise wait forever.
RESULT_TIMEOUT_S = TIMEOUT_S + 15
NO_OFFSET = -1001  # librdkafka's "no committed offset"


@dataclass(frozen=True)
class PartitionOffsets:
    """One partition: its leader and replicas, and the offsets it holds (``start`` .. ``end`` - 1)."""

    topic: str
    partition: int
    leader: int
    replicas: tuple[int, ...]
    start: int
    end: int

    @property
    def offsets(self) -> int:
        """Offsets held: an upper bound of the records (markers, aborted records and compaction take some)."""
        return self.end - self.start


class NoSuchTopic(UsageError):
    """A topic that the cluster does not have."""


class NoSuchPartition(UsageError):
    """A partition number beyond the topic's partitions."""


class ReadTimedOut(OmnistreamError, TimeoutError):
    """Partitions not read to their end in time (an open transaction holds a read_committed end back)."""

    def __init__(self, message: str, partitions: list[int]) -> None:
        super().__init__(message)
        self.partitions = partitions


def topic_partitions(client: Consumer | AdminClient, topic: str, partition: int | None = None) -> list[int]:
    """The partitions of ``topic`` (only ``partition``, if given), sorted.

    ``NoSuchTopic`` if the cluster does not have the topic, ``NoSuchPartition`` if it lacks ``partition``.
    """
    # The whole cluster's metadata, not the topic's: asking for one topic by name makes a broker with
    # auto.create.topics.enable create it.
    metadata = client.list_topics(timeout=TIMEOUT_S).topics.get(topic)
    if metadata is None or metadata.error is not None or not metadata.partitions:
        raise NoSuchTopic(f"no such topic: {topic} (`omnistream topics list` shows the topics there are)")
    partitions = sorted(metadata.partitions)
    if partition is None:
        return partitions
    if partition not in metadata.partitions:
        raise NoSuchPartition(
            f"{topic} has {len(partitions)} partition(s), 0 to {partitions[-1]}: "
            f"there is no partition {partition}"
        )
    return [partition]


def watermarks(
    consumer: Consumer, topic: str, partitions: Iterable[int], timeout_s: float = TIMEOUT_S
) -> dict[int, tuple[int, int]]:
    """Each partition's low and high watermark (first offset held, next offset to be written), asked of
    the broker."""
    out = {}
    for p in partitions:
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s, cached=False)
        out[p] = (low, high)
    return out


def read_to_end(
    consumer: Consumer,
    topic: str,
    starts: Mapping[int, int],
    ends: Mapping[int, int] | None = None,
    timeout_s: float | None = None,
) -> Iterator[Message]:
    """Every record of ``topic`` from ``starts`` (partition → offset) to each partition's end, in order per
    partition; ``ends`` (partition → end offset) bounds the read, records at or past them are skipped.

    ``consumer`` must have ``enable.partition.eof`` (:func:`omnistream.kafka.clients.reader_config`); it is
    assigned here. A partition whose start is at or past its given end is not read. ``ReadTimedOut`` if the
    read takes longer than ``timeout_s`` (None: no limit).
    """
    # A start below 0 is a logical offset (OFFSET_BEGINNING): the partition's first offset, at least 0.
    pending = {p for p, start in starts.items() if ends is None or p not in ends or max(start, 0) < ends[p]}
    if not pending:
        return
    consumer.assign([TopicPartition(topic, p, starts[p]) for p in sorted(pending)])
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while pending:
        if deadline is not None and time.monotonic() > deadline:
            raise ReadTimedOut(
                f"{topic} not read to its end within {timeout_s:.0f} s (partitions {sorted(pending)})",
                sorted(pending),
            )
        for msg in consumer.consume(num_messages=CONSUME_BATCH, timeout=CONSUME_TIMEOUT_S):
            partition: int = msg.partition()  # type: ignore[assignment]  # set on every consumed record
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    pending.discard(partition)
                    continue
                raise KafkaException(err)
            if partition not in pending:
                continue  # prefetched for a partition already read to its end
            offset: int = msg.offset()  # type: ignore[assignment]
            end = None if ends is None else ends.get(partition)
            if end is not None and offset >= end:
                pending.discard(partition)  # written after the read began: not part of it
                continue
            yield msg
            if end is not None and offset >= end - 1:
                pending.discard(partition)


def topic_names(admin: AdminClient, *, internal: bool = False, pattern: str | None = None) -> list[str]:
    """Topics in the cluster, sorted; internal ones (``__*``, ``_*``) only if asked."""
    names = sorted(admin.list_topics(timeout=TIMEOUT_S).topics)
    if not internal:
        names = [n for n in names if not n.startswith("_")]
    if pattern:
        names = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
    return names


def partition_offsets(admin: AdminClient, topics: Iterable[str]) -> list[PartitionOffsets]:
    """Every partition of ``topics`` (those that exist) with its start and end offsets."""
    wanted = list(topics)
    metadata = admin.list_topics(timeout=TIMEOUT_S).topics
    layout: dict[tuple[str, int], tuple[int, tuple[int, ...]]] = {}
    for topic in wanted:
        meta = metadata.get(topic)
        if meta is None or meta.error is not None:
            continue
        for pid, part in meta.partitions.items():
            layout[(topic, pid)] = (part.leader, tuple(part.replicas))
    if not layout:
        return []
    starts = _list_offsets(admin, layout, OffsetSpec.earliest())
    ends = _list_offsets(admin, layout, OffsetSpec.latest())
    return [
        PartitionOffsets(topic, pid, leader, replicas, starts[(topic, pid)], ends[(topic, pid)])
        for (topic, pid), (leader, replicas) in sorted(layout.items())
    ]


def _list_offsets(
    admin: AdminClient, keys: Iterable[tuple[str, int]], spec: OffsetSpec
) -> dict[tuple[str, int], int]:
    futures = admin.list_offsets({TopicPartition(t, p): spec for t, p in keys}, request_timeout=TIMEOUT_S)
    return {(tp.topic, tp.partition): f.result(RESULT_TIMEOUT_S).offset for tp, f in futures.items()}


def committed_offsets(
    admin: AdminClient, group: str, partitions: Iterable[tuple[str, int]] | None = None
) -> dict[tuple[str, int], int]:
    """The group's committed offsets (of ``partitions``, or all it has); partitions without one are absent."""
    tps = None if partitions is None else [TopicPartition(t, p) for t, p in partitions]
    request = ConsumerGroupTopicPartitions(group, tps)
    future = admin.list_consumer_group_offsets([request], request_timeout=TIMEOUT_S)[group]
    result = future.result(RESULT_TIMEOUT_S)
    return {
        (tp.topic, tp.partition): tp.offset
        for tp in result.topic_partitions or []
        if tp.offset >= 0 and tp.error is None
    }


def group_ids(admin: AdminClient) -> list[str]:
    """Every consumer group the cluster knows, sorted."""
    return sorted(
        g.group_id
        for g in admin.list_consumer_groups(request_timeout=TIMEOUT_S).result(RESULT_TIMEOUT_S).valid
    )


def group_members(admin: AdminClient, group: str) -> tuple[str, list[str]]:
    """The group's state (e.g. ``STABLE``, ``EMPTY``, ``DEAD`` if unknown) and its members as client@host."""
    description = admin.describe_consumer_groups([group], request_timeout=TIMEOUT_S)[group].result(
        RESULT_TIMEOUT_S
    )
    state = getattr(description.state, "name", str(description.state))
    return state, [f"{m.client_id}@{m.host}" for m in description.members]
