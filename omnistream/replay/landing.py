"""Replay topics into the landing zone from a point: delete the files from there on, reset the group.

The replay point of a partition is an offset: 0 for ``--from-beginning``, the given offset, or the first
offset at or after a timestamp. Files are immutable, so the point snaps *down* to a file boundary: every
file with ``endOffset`` at or after the point is deleted, including one that straddles it, and the
effective point is the ``endOffset`` + 1 of the last file kept (the straddling file's ``startOffset``,
as files tile the offsets). The next sink run resumes there — recovery reads the files — and lands
everything from there again, the same records into the same columns, so a warehouse built after a replay
equals one built live. (File boundaries may differ; rows do not.)

Files are deleted newest first, so an interrupted replay leaves a prefix of the files and the sink simply
resumes after it; running the replay again finishes the job. The sink group must have no members (a
running sink would resume from files that are being deleted); it is checked before and after. The
group's committed offsets are reset to the effective point so its lag reads right from the start.
Records dead-lettered in the replayed range are dead-lettered again; ``replay --dlq`` deduplicates them by
their origin.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

from omnistream.errors import OmnistreamError
from omnistream.kafka.clients import connect
from omnistream.kafka.offsets import (
    RESULT_TIMEOUT_S,
    TIMEOUT_S,
    NoSuchPartition,
    NoSuchTopic,
    PartitionOffsets,
    group_members,
    partition_offsets,
)
from omnistream.settings import Settings
from omnistream.sink.layout import LandedFile, resume_offset
from omnistream.sink.store import LandingStore

log = logging.getLogger(__name__)


class GroupActiveError(OmnistreamError):
    """The sink group has members; a replay would race them."""


@dataclass(frozen=True)
class ReplayPoint:
    """Where to replay from: the beginning, an offset (in every partition or one), or a time."""

    offset: int | None = None
    partition: int | None = None
    at: datetime | None = None

    @classmethod
    def beginning(cls, partition: int | None = None) -> ReplayPoint:
        return cls(offset=0, partition=partition)

    def describe(self) -> str:
        where = "" if self.partition is None else f" in partition {self.partition}"
        if self.at is not None:
            return f"from {self.at.isoformat()}{where}"
        return f"from offset {self.offset}{where}"


@dataclass(frozen=True)
class PartitionReplay:
    """What a replay does to one partition."""

    topic: str
    partition: int
    requested: int
    effective: int
    deleted: tuple[LandedFile, ...]

    @property
    def changes(self) -> bool:
        return bool(self.deleted)


def snap(files: Iterable[LandedFile], requested: int) -> tuple[int, list[LandedFile]]:
    """Where landing resumes after a replay from ``requested``, and the files to delete (newest first).

    Every file reaching ``requested`` goes; landing resumes after the last file kept (from the
    beginning, 0, if none is kept), which is ``requested`` itself when it is a file boundary.
    """
    files = list(files)
    doomed = sorted((f for f in files if f.end >= requested), key=lambda f: f.end, reverse=True)
    kept = [f for f in files if f.end < requested]
    return resume_offset(kept) or 0, doomed


def require_inactive(client: AdminClient, group: str) -> None:
    """GroupActiveError unless ``group`` has no members."""
    state, members = group_members(client, group)
    if members:
        raise GroupActiveError(
            f"consumer group {group!r} is active ({state}, {len(members)} member(s): {', '.join(members)}). "
            "Stop every `omnistream sink` of this group, then run the replay again."
        )


def _requested_offsets(
    client: AdminClient, offsets: list[PartitionOffsets], point: ReplayPoint
) -> dict[tuple[str, int], int]:
    chosen = [p for p in offsets if point.partition is None or p.partition == point.partition]
    if point.at is None:
        assert point.offset is not None
        return {(p.topic, p.partition): point.offset for p in chosen}
    spec = OffsetSpec.for_timestamp(int(point.at.timestamp() * 1000))
    futures = client.list_offsets(
        {TopicPartition(p.topic, p.partition): spec for p in chosen}, request_timeout=TIMEOUT_S
    )
    ends = {(p.topic, p.partition): p.end for p in offsets}
    requested = {}
    for tp, future in futures.items():
        offset = future.result(RESULT_TIMEOUT_S).offset
        # No record at or after that time: nothing to replay, which the end offset expresses.
        requested[(tp.topic, tp.partition)] = offset if offset >= 0 else ends[(tp.topic, tp.partition)]
    return requested


def _check_exist(topics: list[str], offsets: list[PartitionOffsets], partition: int | None) -> None:
    """``NoSuchTopic`` for a topic the cluster lacks, ``NoSuchPartition`` for a partition beyond a topic's."""
    partitions: dict[str, list[int]] = {}
    for p in offsets:
        partitions.setdefault(p.topic, []).append(p.partition)
    for topic in topics:
        if topic not in partitions:
            raise NoSuchTopic(f"no such topic: {topic} (`omnistream topics list` shows the topics there are)")
        if partition is not None and partition not in partitions[topic]:
            count = len(partitions[topic])
            raise NoSuchPartition(
                f"{topic} has {count} partition(s), 0 to {count - 1}: there is no partition {partition}"
            )


def plan_replay(
    settings: Settings,
    store: LandingStore,
    topics: Iterable[str],
    point: ReplayPoint,
    *,
    missing_ok: bool = False,
) -> list[PartitionReplay]:
    """What a replay of ``topics`` from ``point`` would delete, per partition, without doing it.

    ``NoSuchTopic`` / ``NoSuchPartition`` for what the cluster does not have, unless ``missing_ok`` (every
    pipeline topic, some of which may not have been created yet): then those are left out.
    """
    client = connect(settings)
    names = list(topics)
    offsets = partition_offsets(client, names)
    if not missing_ok:
        _check_exist(names, offsets, point.partition)
    requested = _requested_offsets(client, offsets, point)
    starts = {(p.topic, p.partition): p.start for p in offsets}
    plans = []
    for (topic, partition), offset in sorted(requested.items()):
        effective, doomed = snap(store.list_files(topic, partition), offset)
        # Resuming "from the beginning" is from the log start; an offset below it would only inflate lag.
        effective = max(effective, starts[(topic, partition)])
        plans.append(PartitionReplay(topic, partition, offset, effective, tuple(doomed)))
    return plans


def replay(
    settings: Settings,
    store: LandingStore,
    group: str,
    topics: Iterable[str],
    point: ReplayPoint,
    *,
    missing_ok: bool = False,
) -> list[PartitionReplay]:
    """Delete the landing files of ``topics`` from ``point`` on and reset ``group`` to match."""
    client = connect(settings)
    require_inactive(client, group)
    plans = plan_replay(settings, store, topics, point, missing_ok=missing_ok)
    for plan in plans:
        store.remove_temporaries(plan.topic, plan.partition)
        for file in plan.deleted:  # newest first: what is left is always a prefix
            store.delete(file)
        if plan.deleted:
            log.info(
                "%s[%d]: deleted %d file(s); landing resumes at offset %d",
                plan.topic,
                plan.partition,
                len(plan.deleted),
                plan.effective,
            )
    _reset_group(client, group, [p for p in plans if p.changes])
    require_inactive(client, group)  # a sink that joined meanwhile may have read files now gone
    return plans


def _reset_group(client: AdminClient, group: str, plans: list[PartitionReplay]) -> None:
    if not plans:
        return
    request = ConsumerGroupTopicPartitions(
        group, [TopicPartition(p.topic, p.partition, p.effective) for p in plans]
    )
    result = client.alter_consumer_group_offsets([request], request_timeout=TIMEOUT_S)[group].result(
        RESULT_TIMEOUT_S
    )
    failed = [tp for tp in result.topic_partitions or [] if tp.error is not None]
    if failed:
        raise GroupActiveError(
            f"could not reset the offsets of group {group!r} ({failed[0].error}); "
            "is a sink of this group running? Stop it and run the replay again."
        )
