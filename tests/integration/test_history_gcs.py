"""History files in the real GCS emulator: upload, idempotent re-upload, changed files re-sent, read back."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from omnistream.gcs import ensure_bucket, storage_client, upload_tree, uses_emulator
from omnistream.settings import Settings
from simulators.history import generate_history

pytestmark = pytest.mark.integration

END = date(2026, 11, 25)
ONE_YEAR = "year=2020/*/*.parquet"  # twelve files are enough where the whole tree is not the point


def test_upload_is_idempotent_and_resends_only_changed_files(
    stack_settings: Settings, tmp_path: Path, unique: str
) -> None:
    history = generate_history(tmp_path, seed=11, rows=20_000, end=END)
    bucket = ensure_bucket(storage_client(stack_settings.gcs), f"omnistream-{unique}-upload")
    sizes = sum(path.stat().st_size for path in history.files)

    first = upload_tree(bucket, history.root, prefix="history/")
    assert (first.uploaded, first.skipped, first.bytes_uploaded) == (len(history.files), 0, sizes)

    second = upload_tree(bucket, history.root, prefix="history/")
    assert (second.uploaded, second.skipped, second.bytes_uploaded) == (0, len(history.files), 0)

    changed = history.files[len(history.files) // 2]
    table = pq.read_table(changed)
    pq.write_table(table.slice(0, table.num_rows - 1), changed, compression="zstd")
    third = upload_tree(bucket, history.root, prefix="history/")
    assert (third.uploaded, third.skipped) == (1, len(history.files) - 1)
    assert third.bytes_uploaded == changed.stat().st_size

    objects = {blob.name: blob for blob in bucket.client.list_blobs(bucket)}
    expected = {"history/" + path.relative_to(history.root).as_posix(): path for path in history.files}
    assert set(objects) == set(expected)
    for name, path in expected.items():
        assert objects[name].download_as_bytes() == path.read_bytes(), name
        assert objects[name].content_type == "application/vnd.apache.parquet"


def test_regenerating_the_same_history_uploads_nothing(
    stack_settings: Settings, tmp_path: Path, unique: str
) -> None:
    bucket = ensure_bucket(storage_client(stack_settings.gcs), f"omnistream-{unique}-regen")
    first = generate_history(tmp_path / "first", seed=12, rows=3_000, end=END)
    assert upload_tree(bucket, first.root, prefix="hist/", pattern=ONE_YEAR).uploaded == 12

    again = generate_history(tmp_path / "again", seed=12, rows=3_000, end=END)
    report = upload_tree(bucket, again.root, prefix="hist/", pattern=ONE_YEAR)
    assert (report.uploaded, report.skipped) == (0, 12)

    other = generate_history(tmp_path / "other", seed=13, rows=3_000, end=END)
    assert upload_tree(bucket, other.root, prefix="hist/", pattern=ONE_YEAR).uploaded == 12


def test_prefixes_keep_uploads_apart(stack_settings: Settings, tmp_path: Path, unique: str) -> None:
    bucket = ensure_bucket(storage_client(stack_settings.gcs), f"omnistream-{unique}-prefix")
    history = generate_history(tmp_path, seed=14, rows=2_000, end=END)
    assert upload_tree(bucket, history.root, prefix="a", pattern=ONE_YEAR).uploaded == 12
    assert upload_tree(bucket, history.root, prefix="b/", pattern=ONE_YEAR).uploaded == 12
    names = sorted(blob.name for blob in bucket.client.list_blobs(bucket))
    assert names[0] == "a/year=2020/month=01/part-0.parquet"
    assert {name.split("/", 1)[0] for name in names} == {"a", "b"}
    assert len(names) == 24


def test_ensure_bucket_creates_a_missing_bucket_once(stack_settings: Settings, unique: str) -> None:
    assert uses_emulator(stack_settings.gcs)
    client = storage_client(stack_settings.gcs)
    name = f"omnistream-{unique}-create"
    assert client.lookup_bucket(name) is None
    created = ensure_bucket(client, name)
    assert created.name == name
    assert client.lookup_bucket(name) is not None
    assert ensure_bucket(client, name).name == name
