"""Compaction: runs of small contiguous files of a partition merged into one, atomically.

A short flush interval lands a file per partition every second or so; compaction keeps their number
bounded. It runs in the sink process, on partitions the sink owns, between polls (one merge at a time, so
flushes are never held up for long). A merge of the contiguous files ``parts`` is three steps, and a kill -9
after any of them loses and duplicates nothing:

1. Plan: among the partition's live files (those no other file covers), find runs of at least
   ``min_files`` contiguous small files (each spanning fewer offsets than ``small_records``, i.e. cut by
   the flush interval, not by the size limit), the merged file spanning at most ``max_records`` offsets.
2. Write the merged file ``<topic>+<p>+<first start>+<last end>.parquet``: the parts' rows in offset
   order and one ``omnistream.landing`` note (rows, dead-lettered offsets), committed atomically like any
   landing file (temporary dot-name, fsync, hard link), and refused unless the parts are still exactly
   the live files of that range. A kill before the link leaves a temporary, which recovery removes.
3. After ``grace_seconds`` from the merged file's commit, delete the parts. Until then they are *covered*:
   the merged file accounts for their offsets, recovery resumes past both (it takes the highest end), and
   readers skip them. Whoever finds covered files past their grace deletes them: the next compaction
   pass, or recovery when a partition is assigned, after a crash.

The reader contract (also in the README): list a partition's files once, skip every file whose offset
range lies within another listed file's range (:func:`omnistream.sink.layout.live_files`; equivalently,
keep one row per ``record_metadata`` (partition, offset): the copies are the same record), and finish
reading within the grace period. Then every record is read exactly once: the grace keeps the parts in
place while any listing that might have missed the merged file is still reading them, and a reader that
takes longer gets an error for a vanished file, never a silent gap.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from omnistream.sink.layout import FILE_METADATA_KEY, LandedFile, covering, live_files
from omnistream.sink.store import LandingStore, OverlapError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CompactionPolicy:
    """When to merge and how long merged-away files stay for readers still holding a listing."""

    # Merge once this many contiguous small files have piled up; 0 turns compaction off.
    min_files: int = 10
    # A file spanning fewer offsets than this is small (the sink sets it to its flush_records).
    small_records: int = 10_000
    # A merged file spans at most this many offsets.
    max_records: int = 100_000
    grace_seconds: float = 10.0
    # How often the sink runs a pass over the partitions that landed files.
    every_seconds: float = 5.0

    @property
    def enabled(self) -> bool:
        return self.min_files > 1


def span(file: LandedFile) -> int:
    return file.end - file.start + 1


def plan_merges(files: list[LandedFile], policy: CompactionPolicy) -> list[list[LandedFile]]:
    """The groups of live files to merge, each contiguous, small, ``min_files`` or more, in offset order."""
    if not policy.enabled:
        return []
    groups: list[list[LandedFile]] = []
    run: list[LandedFile] = []
    total = 0

    def close() -> None:
        if len(run) >= policy.min_files:
            groups.append(list(run))

    for f in live_files(files):
        small = span(f) < policy.small_records
        if small and run and f.start == run[-1].end + 1 and total + span(f) <= policy.max_records:
            run.append(f)
            total += span(f)
            continue
        close()
        run, total = ([f], span(f)) if small else ([], 0)
    close()
    return groups


def merged_table(parts: list[LandedFile], tables: list[pa.Table]) -> pa.Table:
    """The parts' rows as one table (columns unified across schema changes) with one landing note."""
    first, last = parts[0], parts[-1]
    dead: list[int] = []
    rows = 0
    for table in tables:
        part_note = json.loads((table.schema.metadata or {}).get(FILE_METADATA_KEY, b"{}"))
        dead.extend(part_note.get("dead_lettered_offsets", []))
        rows += table.num_rows
    plain = [t.replace_schema_metadata(None) for t in tables]
    merged = pa.concat_tables(plain, promote_options="permissive") if len(plain) > 1 else plain[0]
    if merged.num_rows != rows:
        raise ValueError(f"merging {len(parts)} files gave {merged.num_rows} rows, not {rows}")
    note: dict[str, Any] = {
        "topic": first.topic,
        "partition": first.partition,
        "start_offset": first.start,
        "end_offset": last.end,
        "rows": rows,
        "dead_lettered_offsets": sorted(dead),
        "merged_files": len(parts),
    }
    metadata = {**(tables[-1].schema.metadata or {}), FILE_METADATA_KEY: json.dumps(note).encode()}
    return merged.replace_schema_metadata(metadata)


class Compactor:
    """Merges and sweeps the files of partitions the sink owns (see the module docstring)."""

    def __init__(
        self,
        store: LandingStore,
        policy: CompactionPolicy,
        *,
        clock: Callable[[], float] = time.time,
        on_merge: Callable[[LandedFile, int], None] | None = None,
    ) -> None:
        self.store = store
        self.policy = policy
        self.clock = clock
        self.on_merge = on_merge

    def sweep(self, topic: str, partition: int, files: list[LandedFile] | None = None) -> list[LandedFile]:
        """Delete covered files whose cover is past its grace; return the covered files still waiting."""
        files = self.store.list_files(topic, partition) if files is None else files
        waiting = []
        now = self.clock()
        for part, cover in sorted(covering(files).items()):
            committed = self.store.committed_at(cover)
            if committed is None:
                continue  # the cover itself is gone (a newer merge covers both): the next pass sees it
            if now - committed >= self.policy.grace_seconds:
                self.store.delete(part)
                log.debug("deleted %s, merged into %s", part.name, cover.name)
            else:
                waiting.append(part)
        return waiting

    def compact(self, topic: str, partition: int) -> tuple[LandedFile | None, list[LandedFile]]:
        """Sweep the partition, then do its first planned merge: the merged file (or None) and the
        covered files still waiting for their grace."""
        files = self.store.list_files(topic, partition)
        waiting = self.sweep(topic, partition, files)
        groups = plan_merges(files, self.policy)
        merged = self.merge(groups[0]) if groups else None
        return merged, [*waiting, *(groups[0] if merged else [])]

    def merge(self, parts: list[LandedFile]) -> LandedFile | None:
        """Write one file replacing ``parts``; None if the partition changed under the plan."""
        first, last = parts[0], parts[-1]
        target = LandedFile(first.topic, first.partition, first.start, last.end)
        try:
            table = merged_table(parts, [self.store.read(p) for p in parts])
            self.store.commit_merged(target, table, parts)
        except (OverlapError, FileNotFoundError) as exc:  # another writer got there first
            log.warning("not merging %d file(s) into %s: %s", len(parts), target.name, exc)
            return None
        log.info("merged %d file(s) into %s (%d rows)", len(parts), target.name, table.num_rows)
        if self.on_merge is not None:
            self.on_merge(target, len(parts))
        return target

    def pending(self, topic: str, partition: int) -> list[LandedFile]:
        """Covered files not yet deleted."""
        return sorted(covering(self.store.list_files(topic, partition)))
