"""Partitions, start/end offsets, consumer groups and their committed offsets, through the admin API.

Offsets only: differences of offsets are not record counts (transaction markers, aborted records and
compaction take offsets). Counts and lag in records are :mod:`omnistream.inspect.records`.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Iterable
from dataclasses import dataclass

from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

log = logging.getLogger(__name__)

TIMEOUT_S = 30.0
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
