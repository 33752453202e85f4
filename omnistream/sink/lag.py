"""The landing sink's lag per partition: the topic's end offset minus the group's committed offset.

The committed offset is written after each file, so it trails the landing zone by at most the commits in
flight. Beside it the status shows what the files themselves say (the next offset to land), which is what
recovery goes by.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from omnistream.inspect.offsets import committed_offsets, lags, partition_offsets
from omnistream.kafka import admin
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
    lag: int
    landed_next: int | None  # the first offset no landing file covers yet

    @property
    def landed_lag(self) -> int:
        """Offsets at the end of the topic no file covers yet."""
        return max(self.end - (self.landed_next if self.landed_next is not None else self.start), 0)


def sink_status(
    settings: Settings, group: str, topics: Iterable[str], store: LandingStore | None = None
) -> list[SinkPartitionStatus]:
    """End offset, committed offset and lag (end - committed) of every partition of ``topics``."""
    client = admin(settings)
    offsets = partition_offsets(client, topics)
    committed = committed_offsets(client, group, [(p.topic, p.partition) for p in offsets])
    rows = []
    for p, lag in zip(offsets, lags(offsets, committed, group), strict=True):
        landed = resume_offset(store.list_files(p.topic, p.partition)) if store is not None else None
        rows.append(SinkPartitionStatus(p.topic, p.partition, p.start, p.end, lag.committed, lag.lag, landed))
    return rows
