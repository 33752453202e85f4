"""The landing sink's lag per partition, in records: what the group has not committed, and what no file has.

The committed offset is written after each file, so it trails the landing zone by at most the commits in
flight. Beside it the status shows what the files themselves say (the next offset to land), which is what
recovery goes by. Both lags are counted as a ``read_committed`` consumer sees the topic (see
:mod:`omnistream.kafka.record_counts`): the transaction marker after the last landed record is no lag.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from omnistream.kafka.clients import connect
from omnistream.kafka.offsets import committed_offsets, partition_offsets
from omnistream.kafka.record_counts import RECORD_CAP, count_records, range_after
from omnistream.settings import Settings
from omnistream.sink.layout import resume_offset
from omnistream.sink.store import LandingStore


@dataclass(frozen=True)
class SinkPartitionStatus:
    topic: str
    partition: int
    start: int
    end: int
    committed: int | None
    lag: int  # records after the committed offset (all of them if none is committed)
    landed_next: int | None  # the first offset no landing file covers yet
    unlanded: int  # records at or after landed_next (all of them if no file)
    exact: bool = True  # False: lag and unlanded are upper bounds (see omnistream.kafka.record_counts)


def sink_status(
    settings: Settings,
    group: str,
    topics: Iterable[str],
    store: LandingStore | None = None,
    *,
    cap: int = RECORD_CAP,
) -> list[SinkPartitionStatus]:
    """End offset, committed offset, lag and unlanded records of every partition of ``topics``."""
    client = connect(settings)
    offsets = partition_offsets(client, topics)
    committed = committed_offsets(client, group, [(p.topic, p.partition) for p in offsets])
    plans = []
    for p in offsets:
        done = committed.get((p.topic, p.partition))
        landed = resume_offset(store.list_files(p.topic, p.partition)) if store is not None else None
        plans.append((p, done, landed, range_after(p, done), range_after(p, landed)))
    counts = count_records(settings, [r for *_, lag, unlanded in plans for r in (lag, unlanded)], cap=cap)
    return [
        SinkPartitionStatus(
            p.topic,
            p.partition,
            p.start,
            p.end,
            done,
            counts[lag].records,
            landed,
            counts[unlanded].records,
            counts[lag].exact and counts[unlanded].exact,
        )
        for p, done, landed, lag, unlanded in plans
    ]
