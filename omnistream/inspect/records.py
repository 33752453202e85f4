"""Consumer groups' lag and topics' sizes in records, as a ``read_committed`` consumer sees them.

Counted, not subtracted (see :mod:`omnistream.kafka.record_counts` on why offsets are not records). An
unreachable broker raises :class:`omnistream.kafka.clients.KafkaUnreachable` after ``CONNECT_TIMEOUT_S``,
not after each request's own timeout.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable
from dataclasses import dataclass

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from omnistream.kafka.clients import connect
from omnistream.kafka.offsets import (
    PartitionOffsets,
    committed_offsets,
    group_ids,
    partition_offsets,
    topic_names,
)
from omnistream.kafka.record_counts import (
    IDLE_TIMEOUT_S,
    RECORD_CAP,
    OffsetRange,
    RecordCount,
    count_records,
    range_after,
)
from omnistream.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PartitionLag:
    """A group's committed offset on one partition and the records after it (``lag``, not offsets)."""

    topic: str
    partition: int
    committed: int | None  # None: the group has no offset here, so every record is lag
    end: int  # the partition's end offset (high watermark)
    lag: int  # records, an upper bound unless ``exact``
    exact: bool


def group_lag(
    settings: Settings,
    group_id: str,
    topics: list[str] | None = None,
    *,
    cap: int = RECORD_CAP,
    timeout_s: float = IDLE_TIMEOUT_S,
) -> list[PartitionLag]:
    """The group's lag in records on every partition of ``topics`` (None: the topics it has committed on).

    A partition without a committed offset has all its records as lag. Sorted by (topic, partition).
    """
    return groups_lag(settings, [group_id], topics, cap=cap, timeout_s=timeout_s).get(group_id, [])


def groups_lag(
    settings: Settings,
    groups: Iterable[str],
    topics: list[str] | None = None,
    *,
    committed_only: bool = False,
    cap: int = RECORD_CAP,
    timeout_s: float = IDLE_TIMEOUT_S,
) -> dict[str, list[PartitionLag]]:
    """:func:`group_lag` of several groups, counted in one read.

    With ``committed_only``, a group that has no committed offset on any of ``topics`` is left out.
    """
    plans = _lag_plans(connect(settings), groups, topics, committed_only)
    counts = count_records(
        settings, [r for plan in plans.values() for _, _, r in plan], cap=cap, timeout_s=timeout_s
    )
    return _lags(plans, counts)


def describe_topic(
    settings: Settings, topic: str, *, cap: int = RECORD_CAP, timeout_s: float = IDLE_TIMEOUT_S
) -> tuple[list[tuple[PartitionOffsets, RecordCount]], dict[str, list[PartitionLag]]]:
    """The topic's partitions with their records, and the lag of every group that has committed on it.

    One read counts both. No partitions: the topic does not exist.
    """
    client = connect(settings)
    offsets = partition_offsets(client, [topic])
    if not offsets:
        return [], {}
    plans = _lag_plans(client, group_ids(client), [topic], committed_only=True, offsets=offsets)
    ranges = [OffsetRange(p.topic, p.partition, p.start, p.end) for p in offsets]
    counts = count_records(
        settings, ranges + [r for plan in plans.values() for _, _, r in plan], cap=cap, timeout_s=timeout_s
    )
    return [(p, counts[r]) for p, r in zip(offsets, ranges, strict=True)], _lags(plans, counts)


_Plan = list[tuple[PartitionOffsets, int | None, OffsetRange]]


def _lag_plans(
    client: AdminClient,
    groups: Iterable[str],
    topics: list[str] | None,
    committed_only: bool,
    offsets: list[PartitionOffsets] | None = None,
) -> dict[str, _Plan]:
    """Per group, each partition with its committed offset and the range of offsets after it."""
    by_key: dict[tuple[str, int], PartitionOffsets] = {}
    if topics is not None:
        if offsets is None:
            offsets = partition_offsets(client, topics)
        by_key = {(p.topic, p.partition): p for p in offsets}
        if not by_key:
            return {}
    committed: dict[str, dict[tuple[str, int], int]] = {}
    for group in groups:
        try:
            committed[group] = committed_offsets(client, group, None if topics is None else list(by_key))
        except KafkaException as exc:  # a group being deleted or rebalancing right now
            log.debug("no offsets for group %s: %s", group, exc)
    if topics is None:
        wanted = sorted({t for done in committed.values() for t, _ in done})
        by_key = {(p.topic, p.partition): p for p in partition_offsets(client, wanted)} if wanted else {}
    plans: dict[str, _Plan] = {}
    for group, done in committed.items():
        if committed_only and not done:
            continue
        group_topics = {t for t, _ in done} if topics is None else set(topics)
        plans[group] = [
            (p, done.get(key), range_after(p, done.get(key)))
            for key, p in sorted(by_key.items())
            if p.topic in group_topics
        ]
    return plans


def _lags(plans: dict[str, _Plan], counts: dict[OffsetRange, RecordCount]) -> dict[str, list[PartitionLag]]:
    return {
        group: [
            PartitionLag(p.topic, p.partition, c, p.end, counts[r].records, counts[r].exact)
            for p, c, r in plan
        ]
        for group, plan in plans.items()
    }


def partition_counts(
    settings: Settings, topics: list[str], *, cap: int = RECORD_CAP, timeout_s: float = IDLE_TIMEOUT_S
) -> list[tuple[PartitionOffsets, RecordCount]]:
    """Every partition of ``topics`` (those that exist) with its offsets and the records it holds."""
    offsets = partition_offsets(connect(settings), topics)
    ranges = [OffsetRange(p.topic, p.partition, p.start, p.end) for p in offsets]
    counts = count_records(settings, ranges, cap=cap, timeout_s=timeout_s)
    return [(p, counts[r]) for p, r in zip(offsets, ranges, strict=True)]


def record_counts(
    settings: Settings, topics: list[str], *, cap: int = RECORD_CAP, timeout_s: float = IDLE_TIMEOUT_S
) -> dict[str, tuple[int, bool]]:
    """Records per topic and whether the count is exact; topics that do not exist are left out."""
    out: dict[str, tuple[int, bool]] = {}
    for p, count in partition_counts(settings, topics, cap=cap, timeout_s=timeout_s):
        records, exact = out.get(p.topic, (0, True))
        out[p.topic] = (records + count.records, exact and count.exact)
    return out


def dlq_depths(
    settings: Settings, *, cap: int = RECORD_CAP, among: Collection[str] | None = None
) -> dict[str, int]:
    """Records in every dead-letter topic (``*.dlq``) that exists, or in those of ``among`` that exist;
    an upper bound beyond ``cap``."""
    names = [
        n
        for n in topic_names(connect(settings), internal=True)
        if n.endswith(".dlq") and (among is None or n in among)
    ]
    counts = record_counts(settings, names, cap=cap) if names else {}
    return {name: counts.get(name, (0, True))[0] for name in names}


def consumer_groups(settings: Settings) -> list[str]:
    """Every consumer group the cluster knows, sorted."""
    return group_ids(connect(settings))
