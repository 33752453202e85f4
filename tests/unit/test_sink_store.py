"""The local landing store: atomic, create-only commits; temporaries removed; overlaps refused."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from omnistream.settings import Settings
from omnistream.sink.layout import LandedFile, temp_name
from omnistream.sink.store import LocalStore, OverlapError, landing_dir, open_store


def _table(n: int) -> pa.Table:
    return pa.table({"x": list(range(n))})


def test_commit_lists_reads_and_deletes(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    first, second = LandedFile("t.a", 0, 0, 9), LandedFile("t.a", 0, 10, 14)
    store.commit(first, _table(10))
    store.commit(second, _table(5))
    store.commit(LandedFile("t.a", 2, 0, 0), _table(1))

    assert store.list_files("t.a", 0) == [first, second]
    assert store.list_topic("t.a") == [first, second, LandedFile("t.a", 2, 0, 0)]
    assert (tmp_path / "t.a" / "partition=0" / "t.a+0+10+14.parquet").is_file()
    assert store.read(second).num_rows == 5
    assert store.list_files("other", 0) == [] and store.list_topic("other") == []

    store.delete(second)
    assert store.list_files("t.a", 0) == [first]


def test_a_file_overlapping_a_committed_one_is_refused(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.commit(LandedFile("t", 0, 0, 9), _table(10))
    for clash in (LandedFile("t", 0, 0, 9), LandedFile("t", 0, 5, 20), LandedFile("t", 0, 9, 9)):
        with pytest.raises(OverlapError):
            store.commit(clash, _table(1))
    assert store.list_files("t", 0) == [LandedFile("t", 0, 0, 9)]
    assert [p.name for p in (tmp_path / "t" / "partition=0").iterdir()] == ["t+0+0+9.parquet"]


def test_leftover_temporaries_are_removed_and_never_listed(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.commit(LandedFile("t", 1, 0, 3), _table(4))
    directory = tmp_path / "t" / "partition=1"
    leftover = directory / temp_name("t+1+4+8.parquet", f"{os.getpid()}-0badf00d")
    pq.write_table(_table(5), leftover)

    assert store.list_files("t", 1) == [LandedFile("t", 1, 0, 3)]
    assert store.remove_temporaries("t", 1) == 1
    assert not leftover.exists()
    assert store.remove_temporaries("t", 1) == 0
    assert store.remove_temporaries("absent", 0) == 0


def test_the_landing_zone_is_under_the_state_dir_unless_configured(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    defaults = Settings()
    assert landing_dir(defaults) == defaults.stack.state_dir / "landing"
    assert defaults.landing.group_id == "omnistream-landing" and defaults.landing.bucket == ""

    monkeypatch.setenv("OMNISTREAM_LANDING__DIR", str(tmp_path))
    monkeypatch.setenv("OMNISTREAM_LANDING__FLUSH_RECORDS", "7")
    monkeypatch.setenv("OMNISTREAM_LANDING__FLUSH_SECONDS", "0.5")
    configured = Settings()
    assert landing_dir(configured) == tmp_path
    assert (configured.landing.flush_records, configured.landing.flush_seconds) == (7, 0.5)
    store = open_store(configured)
    assert isinstance(store, LocalStore) and store.root == str(tmp_path)
