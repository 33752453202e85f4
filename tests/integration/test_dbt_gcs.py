"""The local warehouse reads the history straight from the GCS bucket (the emulator) and loads it per file."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date
from decimal import Decimal
from pathlib import Path

import duckdb
import pytest

from omnistream.settings import Settings
from omnistream.warehouse.dbt import DbtRun, run_dbt
from omnistream.warehouse.history_load import list_history_files, load_history_duckdb, register_gcs
from simulators.gcs import ensure_bucket, storage_client, upload_tree
from simulators.history import HistoryResult, generate_history
from simulators.manifest import read_totals

pytestmark = pytest.mark.integration


@pytest.fixture
def history_bucket(
    stack_settings: Settings, unique: str, tmp_path: Path
) -> Iterator[tuple[str, HistoryResult]]:
    """A bucket of the test's own holding a small history under history/."""
    result = generate_history(tmp_path / "history_out", seed=11, rows=600, end=date(2026, 11, 1))
    client = storage_client(stack_settings.gcs)
    bucket = ensure_bucket(client, f"dbt-history-{unique}")
    upload_tree(bucket, result.root, prefix="history/")
    yield bucket.name, result
    for blob in client.list_blobs(bucket.name):
        blob.delete()
    bucket.delete()


def test_dbt_reads_the_history_from_the_bucket(
    stack_settings: Settings, history_bucket: tuple[str, HistoryResult], tmp_path: Path
) -> None:
    bucket, result = history_bucket
    run = DbtRun(
        duckdb_path=tmp_path / "omnistream.duckdb",
        landing_root=tmp_path / "landing",  # nothing landed: the streamed sources are empty views
        history_root=f"gcs://{bucket}/history",
        target_path=tmp_path / "target",
    )
    # Only what the daily sales need: every other model and the tests are covered over local files.
    run_dbt(["run", "--select", "+fct_daily_sales"], run, settings=stack_settings)
    with duckdb.connect(str(tmp_path / "omnistream.duckdb"), read_only=True) as con:
        register_gcs(con, stack_settings.gcs)  # the raw view reads the bucket
        rows = con.execute(
            "select channel, store_id, cast(order_date as varchar), order_count, line_count, net_amount,"
            " tax_amount, gross_amount from marts.fct_daily_sales"
        ).fetchall()
        files = con.execute(
            "select count(distinct source_file) from staging.stg_history__order_lines"
        ).fetchall()
    expected = {
        k: (v["orders"], v["lines"], v["net"], v["tax"], v["gross"])
        for k, v in read_totals(result.manifest_path).items()
    }
    assert {(c, s, d): (o, n, net, tax, gross) for c, s, d, o, n, net, tax, gross in rows} == expected
    assert files == [(len(result.files),)]
    assert all(isinstance(r[5], Decimal) for r in rows)


def test_history_load_from_the_bucket_is_idempotent_per_file(
    stack_settings: Settings, history_bucket: tuple[str, HistoryResult], tmp_path: Path
) -> None:
    bucket, result = history_bucket
    files = list_history_files(f"gs://{bucket}/history", stack_settings.gcs)
    assert len(files) == len(result.files)
    with duckdb.connect(str(tmp_path / "loaded.duckdb")) as con:
        first = load_history_duckdb(con, files, stack_settings.gcs)
        second = load_history_duckdb(con, files, stack_settings.gcs)
        (rows,) = con.execute("select count(*) from raw.history_order_lines").fetchall()
    assert (first.loaded, first.skipped, first.rows) == (len(files), 0, result.rows)
    assert (second.loaded, second.skipped, second.rows) == (0, len(files), 0)
    assert rows == (result.rows,)
