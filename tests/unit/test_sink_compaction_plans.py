"""Compaction of landing files: which runs are merged, what covers what, and the merge itself on disk."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from omnistream.sink.compaction import CompactionPolicy, Compactor, merged_table, plan_merges
from omnistream.sink.layout import FILE_METADATA_KEY, LandedFile, covering, live_files, resume_offset
from omnistream.sink.store import LocalStore, OverlapError

POLICY = CompactionPolicy(min_files=3, small_records=10, max_records=30, grace_seconds=60)


def files(*ranges: tuple[int, int], partition: int = 0) -> list[LandedFile]:
    return [LandedFile("t", partition, start, end) for start, end in ranges]


def test_contiguous_small_files_are_merged_in_runs_of_at_least_min_files() -> None:
    tiles = files((0, 4), (5, 9), (10, 14), (15, 16))
    assert plan_merges(tiles, POLICY) == [tiles]
    assert plan_merges(tiles[:2], POLICY) == []  # two are not enough yet


def test_a_full_file_or_a_gap_ends_a_run() -> None:
    # (10, 29) spans 20 offsets: cut by the size limit, never merged; a gap (a retention hole) splits too.
    tiles = files((0, 2), (3, 5), (6, 9), (10, 29), (30, 31), (32, 33), (40, 41), (42, 43), (44, 45))
    assert plan_merges(tiles, POLICY) == [tiles[:3], tiles[6:]]


def test_a_merged_file_spans_at_most_max_records() -> None:
    tiles = files(*((i * 9, i * 9 + 8) for i in range(8)))  # 8 files of 9 offsets
    groups = plan_merges(tiles, POLICY)
    assert groups == [tiles[0:3], tiles[3:6]]  # 27 offsets each; the last two wait for a third
    assert all(sum(f.end - f.start + 1 for f in g) <= POLICY.max_records for g in groups)


def test_covered_files_are_not_planned_again_and_a_small_merged_file_merges_on() -> None:
    merged = LandedFile("t", 0, 0, 5)
    tiles = [merged, *files((0, 1), (2, 3), (4, 5), (6, 7), (8, 9))]
    assert plan_merges(tiles, POLICY) == [[merged, *files((6, 7), (8, 9))]]


def test_compaction_off() -> None:
    assert plan_merges(files((0, 0), (1, 1), (2, 2)), CompactionPolicy(min_files=0)) == []


def test_covering_and_live_files() -> None:
    small = files((0, 4), (5, 9), (10, 14))
    merged = LandedFile("t", 0, 0, 9)
    again = LandedFile("t", 0, 0, 14)
    listing = [*small, merged, again, LandedFile("t", 0, 15, 20)]
    assert covering(listing) == {small[0]: again, small[1]: again, small[2]: again, merged: again}
    assert live_files(listing) == [again, LandedFile("t", 0, 15, 20)]
    assert resume_offset(listing) == 21  # recovery resumes past merged and covered files alike
    # Partial overlaps are not covers: live_files never hides a real overlap from the tiling checks.
    assert covering(files((0, 9), (5, 14))) == {}
    # Files of different partitions never cover each other, listed together or not.
    assert covering([*files((0, 9)), *files((2, 3), partition=1)]) == {}


def table(start: int, end: int, dead: list[int] | None = None) -> pa.Table:
    offsets = [o for o in range(start, end + 1) if o not in (dead or [])]
    note = {"start_offset": start, "end_offset": end, "rows": len(offsets)}
    note["dead_lettered_offsets"] = dead or []
    return pa.table({"offset": offsets, "v": [f"r{o}" for o in offsets]}).replace_schema_metadata(
        {FILE_METADATA_KEY: json.dumps(note).encode()}
    )


def test_merged_table_keeps_every_row_in_order_and_one_note() -> None:
    parts = files((0, 2), (3, 5))
    widened = table(3, 5, dead=[4]).append_column("extra", pa.array([1, 2]))  # a field added meanwhile
    merged = merged_table(parts, [table(0, 2), widened])
    assert merged.column("offset").to_pylist() == [0, 1, 2, 3, 5]
    assert merged.column("extra").to_pylist() == [None, None, None, 1, 2]
    note = json.loads(merged.schema.metadata[FILE_METADATA_KEY])
    assert (note["start_offset"], note["end_offset"], note["rows"]) == (0, 5, 5)
    assert note["dead_lettered_offsets"] == [4] and note["merged_files"] == 2


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def land(store: LocalStore, ranges: list[tuple[int, int]]) -> list[LandedFile]:
    out = []
    for start, end in ranges:
        f = LandedFile("t", 0, start, end)
        store.commit(f, table(start, end))
        out.append(f)
    return out


def read_all(store: LocalStore) -> list[int]:
    offsets: list[int] = []
    for f in live_files(store.list_files("t", 0)):
        offsets.extend(pq.read_table(store.uri(f)).column("offset").to_pylist())
    return offsets


def test_a_merge_then_its_sweep_after_the_grace(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    clock = Clock()
    compactor = Compactor(store, POLICY, clock=lambda: clock.now)
    parts = land(store, [(0, 2), (3, 5), (6, 8)])
    merged, waiting = compactor.compact("t", 0)
    assert merged == LandedFile("t", 0, 0, 8) and waiting == parts
    # During the grace both are there; a reader following the contract sees each offset once.
    assert store.list_files("t", 0) == sorted([*parts, merged])
    assert read_all(store) == list(range(9))
    clock.now = (store.committed_at(merged) or 0) + POLICY.grace_seconds - 1
    assert compactor.sweep("t", 0) == parts
    clock.now += 1
    assert compactor.sweep("t", 0) == []
    assert store.list_files("t", 0) == [merged]
    assert read_all(store) == list(range(9))
    # Appending after a merge goes on as before; overlapping the merged range is still refused.
    store.commit(LandedFile("t", 0, 9, 9), table(9, 9))
    with pytest.raises(OverlapError):
        store.commit(LandedFile("t", 0, 8, 10), table(8, 10))


def test_a_merge_is_refused_unless_its_parts_are_exactly_the_live_files_of_its_range(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    parts = land(store, [(0, 2), (3, 5), (6, 8)])
    target = LandedFile("t", 0, 0, 8)
    whole = merged_table(parts, [table(0, 2), table(3, 5), table(6, 8)])
    with pytest.raises(OverlapError):  # a part left out
        store.commit_merged(target, whole, parts[:2])
    with pytest.raises(OverlapError):  # a range reaching past the parts
        store.commit_merged(LandedFile("t", 0, 0, 9), whole, parts)
    store.commit_merged(target, whole, parts)
    with pytest.raises(OverlapError):  # planned from a stale listing: the parts are covered now
        store.commit_merged(LandedFile("t", 0, 0, 5), whole, parts[:2])
    assert store.list_files("t", 0) == sorted([*parts, target])
