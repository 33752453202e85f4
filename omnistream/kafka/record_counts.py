"""Record counts and consumer lag in records, as a ``read_committed`` consumer sees them.

Offsets are not records. A transactional producer (the email producer) leaves a control record, the
transaction marker, after every transaction on each partition it wrote to, and the records of an aborted
transaction stay in the log; both take offsets, neither is ever delivered to a ``read_committed``
consumer. So ``end - committed`` overstates lag (a group that has everything still shows 1 per partition,
the marker after its last record), and ``end - start`` overstates a topic's size. Compacted topics have
gaps of their own.

The numbers here are therefore counted, not subtracted: a consumer with ``isolation.level=read_committed``
is assigned explicit offsets and counts what it is given, up to the end of each range. The end is known
from the partition-EOF event, whose offset is the consumer's fetch position after any markers it
skipped, never by waiting for a record at ``end - 1``, which may be a marker and never arrive.

Rules the counts keep:

- A count is exact, or it is an upper bound and says so (``exact=False``, shown as ``≤ N``). Upper bounds
  come from two places: a range longer than ``cap`` offsets is counted only over its last ``cap`` offsets
  (the rest counts as offsets), and offsets past the last stable offset (an open transaction) or not read
  within ``timeout_s`` count as offsets too.
- No sleeps: every wait is a consume with a short timeout, and a partition that makes no progress for
  ``timeout_s`` stops being read.
"""

from __future__ import annotations

import bisect
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import cast

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from omnistream.kafka.clients import reader_config
from omnistream.kafka.offsets import PartitionOffsets
from omnistream.settings import Settings

log = logging.getLogger(__name__)

# Most offsets read per partition; a longer range is an upper bound beyond this. Counting runs at about
# bare-consume speed (~110-180k records/s on these 2 cores), so 200k is 1-2 s per partition.
RECORD_CAP = 200_000
# A partition that yields neither a record nor its end for this long is given up on (counted as offsets).
IDLE_TIMEOUT_S = 10.0
CONSUME_TIMEOUT_S = 0.05  # one consume call: short, so a partition's end is noticed at once
BATCH = 10_000


@dataclass(frozen=True, order=True)
class OffsetRange:
    """Offsets ``start`` .. ``end`` - 1 of one partition."""

    topic: str
    partition: int
    start: int
    end: int


@dataclass(frozen=True)
class RecordCount:
    """Records a ``read_committed`` consumer gets from a range: exact, or an upper bound."""

    records: int
    exact: bool

    def __str__(self) -> str:
        return shown(self.records, self.exact)


def shown(records: int, exact: bool) -> str:
    """A count for people: ``"42"``, or ``"≤ 42"`` when it is an upper bound."""
    return str(records) if exact else f"≤ {records}"


class PartitionTally:
    """The counting plan and tally of one partition, for any number of ranges in it.

    One window is read per partition: from the lowest range start, but no more than ``cap`` offsets back
    from the highest range end. Delivered offsets are tallied per segment between range boundaries, so
    overlapping ranges (several groups' lags, the whole partition) share one read.
    """

    def __init__(self, ranges: Iterable[OffsetRange], cap: int) -> None:
        ranges = [r for r in ranges if r.end > r.start]
        self.window_end = max((r.end for r in ranges), default=0)
        lowest = min((r.start for r in ranges), default=0)
        self.window_start = max(lowest, self.window_end - max(cap, 0))
        self._bounds = sorted(
            {self.window_start, self.window_end}
            | {min(max(x, self.window_start), self.window_end) for r in ranges for x in (r.start, r.end)}
        )
        self._segments = [0] * (len(self._bounds) - 1)
        # Where delivery stopped; below window_end only if the read ended early (open transaction, stall).
        self.reached = self.window_start
        self.done = self.window_end <= self.window_start

    def add(self, offsets: list[int]) -> None:
        """Records delivered at ``offsets``, ascending (one batch of this partition)."""
        if not offsets:
            return
        bounds, segments = self._bounds, self._segments
        # Offsets ascend within a partition, so each segment's share of the batch is a slice: bisect it.
        lo = bisect.bisect_left(offsets, self.window_start)
        for i in range(len(segments)):
            hi = bisect.bisect_left(offsets, bounds[i + 1], lo)
            segments[i] += hi - lo
            lo = hi
        last = offsets[-1]
        self.reached = max(self.reached, min(last + 1, self.window_end))
        self.done = self.done or last >= self.window_end - 1

    def end_of_partition(self, position: int) -> None:
        """The consumer reached the end it may read (high watermark or last stable offset) at ``position``."""
        self.reached = max(self.reached, min(position, self.window_end))
        self.done = True

    def result(self, r: OffsetRange) -> RecordCount:
        """The count of one of the ranges, once the read is over."""
        if r.end <= r.start:
            return RecordCount(0, True)
        counted = sum(
            n
            for lo, hi, n in zip(self._bounds[:-1], self._bounds[1:], self._segments, strict=True)
            if lo >= r.start and hi <= r.end
        )
        not_read = max(0, min(self.window_start, r.end) - r.start)  # beyond the cap
        not_reached = max(0, r.end - max(self.reached, r.start))  # past the last stable offset
        return RecordCount(counted + not_read + not_reached, not_read == 0 and not_reached == 0)


def count_records(
    settings: Settings,
    ranges: Iterable[OffsetRange],
    *,
    cap: int = RECORD_CAP,
    timeout_s: float = IDLE_TIMEOUT_S,
) -> dict[OffsetRange, RecordCount]:
    """Records a ``read_committed`` consumer would deliver from each range; markers and aborted ones are not.

    All partitions are read at once by one consumer that never joins a group or commits. At most ``cap``
    offsets are read per partition; see the module docstring for when a count is an upper bound.
    """
    wanted = list(ranges)
    tallies: dict[tuple[str, int], PartitionTally] = {}
    by_partition: dict[tuple[str, int], list[OffsetRange]] = {}
    for r in wanted:
        by_partition.setdefault((r.topic, r.partition), []).append(r)
    for key, rs in by_partition.items():
        tallies[key] = PartitionTally(rs, cap)
    pending = {key: t for key, t in tallies.items() if not t.done}
    if pending:
        _read(settings, pending, timeout_s)
    return {r: tallies[(r.topic, r.partition)].result(r) for r in wanted}


def _read(settings: Settings, pending: dict[tuple[str, int], PartitionTally], timeout_s: float) -> None:
    consumer = Consumer(
        reader_config(
            settings,
            "count",
            **{
                "isolation.level": "read_committed",
                # A start offset that retention removed meanwhile reads from the log start, not the end.
                "auto.offset.reset": "earliest",
                # The broker answers an empty fetch at once, so the end of a partition shows in ms.
                "fetch.wait.max.ms": 20,
            },
        )
    )
    try:
        consumer.assign([TopicPartition(t, p, tally.window_start) for (t, p), tally in pending.items()])
        deadline = time.monotonic() + timeout_s
        while pending and time.monotonic() < deadline:
            batch: dict[tuple[str, int], list[int]] = {key: [] for key in pending}
            ends: dict[tuple[str, int], int] = {}
            for msg in consumer.consume(num_messages=BATCH, timeout=CONSUME_TIMEOUT_S):
                err = msg.error()
                key = cast(tuple[str, int], (msg.topic(), msg.partition()))
                if err is None:
                    offsets = batch.get(key)
                    if offsets is not None:  # else prefetched for a partition already finished
                        offsets.append(cast(int, msg.offset()))
                elif err.code() == KafkaError._PARTITION_EOF:
                    # Its offset is the fetch position: past any markers and aborted records.
                    ends[key] = cast(int, msg.offset())
                else:
                    raise KafkaException(err)
            progressed = False
            for key, offsets in batch.items():
                tally = pending[key]
                tally.add(offsets)
                if key in ends:
                    tally.end_of_partition(ends[key])
                if offsets or key in ends:
                    progressed = True
                if tally.done:
                    del pending[key]
                    consumer.pause([TopicPartition(*key)])
            if progressed:
                deadline = time.monotonic() + timeout_s
        for (topic, partition), tally in pending.items():
            log.warning(
                "%s[%d]: no end reached within %.0f s at offset %d; counting the rest as offsets",
                topic,
                partition,
                timeout_s,
                tally.reached,
            )
    finally:
        consumer.close()


def range_after(p: PartitionOffsets, offset: int | None) -> OffsetRange:
    """The partition's offsets from ``offset`` (committed or resume offset; None: its start) to its end."""
    start = p.start if offset is None else min(max(offset, p.start), p.end)
    return OffsetRange(p.topic, p.partition, start, p.end)
