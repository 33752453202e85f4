"""The local warehouse takes the history from the GCS bucket (the emulator), the way `make demo` does.

Every command runs as a user runs it (`omnistream dbt …` in a subprocess), so what it prints is what a user
sees: no ``Task was destroyed but it is pending!`` (gcsfs's prefetcher), no DuckDB lock error.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import date
from decimal import Decimal
from pathlib import Path

import duckdb
import pytest

from omnistream.gcs import ensure_bucket, storage_client, upload_tree
from omnistream.manifest import read_totals
from omnistream.settings import Settings
from omnistream.warehouse.dbt import PROJECT_DIR, DbtRun, dbt_env, dbt_executable
from omnistream.warehouse.lock import lock_path
from simulators.history import HistoryResult, generate_history
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

PENDING_TASK = "Task was destroyed but it is pending"
LOCK_ERROR = "Could not set lock on file"


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


def omnistream(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "omnistream", *args],
        capture_output=True,
        text=True,
        check=False,
        env=env,
        timeout=600,
    )


def dbt_run_env(tmp_path: Path) -> dict[str, str]:
    """This environment, with dbt's target and logs kept in the test's own directory."""
    return {**os.environ, "DBT_TARGET_PATH": str(tmp_path / "target"), "DBT_LOG_PATH": str(tmp_path / "logs")}


def output_of(result: subprocess.CompletedProcess[str]) -> str:
    return result.stdout + result.stderr


def expected_daily_sales(result: HistoryResult) -> dict[tuple[str, str, str], tuple]:
    return {
        k: (v["orders"], v["lines"], v["net"], v["tax"], v["gross"])
        for k, v in read_totals(result.manifest_path).items()
    }


def test_load_history_from_the_bucket_is_idempotent_and_quiet(
    stack_settings: Settings, history_bucket: tuple[str, HistoryResult], tmp_path: Path
) -> None:
    bucket, result = history_bucket
    database = tmp_path / "loaded.duckdb"
    command = (
        "dbt",
        "load-history",
        "--history",
        f"gs://{bucket}/history",
        "--duckdb",
        str(database),
        "--json",
    )
    first, again = omnistream(*command), omnistream(*command)
    for run in (first, again):
        assert run.returncode == 0, output_of(run)[-3000:]
        assert PENDING_TASK not in output_of(run)
    files = len(result.files)
    assert json.loads(first.stdout.splitlines()[-1]) == {
        "source": f"gs://{bucket}/history",
        "target": "local",
        "loaded": files,
        "skipped": 0,
        "rows": result.rows,
    }
    assert json.loads(again.stdout.splitlines()[-1])["skipped"] == files
    with duckdb.connect(str(database), read_only=True) as con:
        (rows,) = con.execute("select count(*) from raw.history_order_lines").fetchall()
        ledger = dict(con.execute("select source_file, checksum from raw.history_files").fetchall())
    assert rows == (result.rows,)
    client = storage_client(stack_settings.gcs)
    assert ledger == {
        f"gcs://{bucket}/{b.name}": b.md5_hash for b in client.list_blobs(bucket, prefix="history/")
    }


def test_load_history_names_a_missing_bucket_and_a_bad_stage_access_in_one_line(
    stack_settings: Settings, unique: str, tmp_path: Path
) -> None:
    missing = omnistream(
        "dbt",
        "load-history",
        "--history",
        f"gs://no-such-{unique}/history",
        "--duckdb",
        str(tmp_path / "w.duckdb"),
    )
    assert missing.returncode == 1, output_of(missing)
    assert missing.stderr.strip() == (
        f"error: gs://no-such-{unique}/history: no such bucket at {stack_settings.gcs.endpoint}"
    )
    assert not (tmp_path / "w.duckdb").exists()  # nothing was written

    bad = omnistream("dbt", "load-history", "--stage-access", "open-sesame")
    assert bad.returncode == 2, output_of(bad)
    assert bad.stderr.strip() == "error: --stage-access is `integration` or `internal`, not 'open-sesame'"


def test_dbt_builds_the_daily_sales_from_the_bucket(
    history_bucket: tuple[str, HistoryResult], tmp_path: Path
) -> None:
    bucket, result = history_bucket
    database = tmp_path / "omnistream.duckdb"
    env = dbt_run_env(tmp_path)
    # Only what the daily sales need: every other model and the tests are covered over local files.
    run = omnistream(
        "dbt",
        "run-dbt",
        "run",
        "--select",
        "+fct_daily_sales",
        "--history",
        f"gs://{bucket}/history",
        "--duckdb",
        str(database),
        "--landing",
        str(tmp_path / "landing"),  # nothing landed: the streamed sources are empty views
        env=env,
    )
    assert run.returncode == 0, output_of(run)[-3000:]
    assert PENDING_TASK not in output_of(run)
    with duckdb.connect(str(database), read_only=True) as con:
        rows = con.execute(
            "select channel, store_id, cast(order_date as varchar), order_count, line_count, net_amount,"
            " tax_amount, gross_amount from marts.fct_daily_sales"
        ).fetchall()
        files = con.execute(
            "select count(distinct source_file) from staging.stg_history__order_lines"
        ).fetchall()
        kind = con.execute(
            "select table_type from information_schema.tables"
            " where table_schema = 'raw' and table_name = 'history_order_lines'"
        ).fetchall()
    assert {(c, s, d): (o, n, net, tax, gross) for c, s, d, o, n, net, tax, gross in rows} == (
        expected_daily_sales(result)
    )
    assert files == [(len(result.files),)]
    assert kind == [("BASE TABLE",)]  # loaded from the bucket, not a view reading it in place
    assert all(isinstance(r[5], Decimal) for r in rows)


def test_dbt_reading_the_bucket_in_place_is_quiet(
    stack_settings: Settings, history_bucket: tuple[str, HistoryResult], tmp_path: Path
) -> None:
    """dbt on its own, with the history root var on the bucket: the raw view reads it through gcsfs."""
    bucket, result = history_bucket
    run = DbtRun(
        duckdb_path=tmp_path / "omnistream.duckdb",
        landing_root=tmp_path / "landing",
        history_root=f"gcs://{bucket}/history",
        target_path=tmp_path / "target",
    )
    dbt = subprocess.run(
        [dbt_executable(), "run", "--select", "stg_history__order_lines"],
        cwd=PROJECT_DIR,
        env=dbt_env(run, stack_settings),
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert dbt.returncode == 0, output_of(dbt)[-3000:]
    assert f"history_order_lines ({len(result.files)} files)" in dbt.stdout
    assert PENDING_TASK not in output_of(dbt)
    # The view reads every file when queried: through gcsfs, in a process of its own, whose log is kept.
    query = subprocess.run(
        [
            sys.executable,
            "-c",
            "import duckdb, sys\n"
            "from omnistream.settings import get_settings\n"
            "from omnistream.warehouse.history_load import register_gcs\n"
            "con = duckdb.connect(sys.argv[1], read_only=True)\n"
            "con.execute('set enable_progress_bar = false')\n"
            "register_gcs(con, get_settings().gcs)\n"
            "print(con.execute('select count(*) from staging.stg_history__order_lines').fetchall()[0][0])\n",
            str(tmp_path / "omnistream.duckdb"),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert query.returncode == 0, output_of(query)[-3000:]
    assert query.stdout.strip() == str(result.rows)
    assert PENDING_TASK not in output_of(query)


def test_a_history_load_waits_for_a_dbt_build_instead_of_failing(
    history_bucket: tuple[str, HistoryResult], tmp_path: Path
) -> None:
    """Two writers of one DuckDB file at once, as the two DAGs or a user and a DAG would start them."""
    bucket, result = history_bucket
    database = tmp_path / "omnistream.duckdb"
    env = dbt_run_env(tmp_path)
    build = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "omnistream",
            "dbt",
            "build",
            "--history",
            str(result.root),
            "--duckdb",
            str(database),
            "--landing",
            str(tmp_path / "landing"),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:

        def build_holds_the_lock() -> bool:
            assert build.poll() is None, "the build ended before the load started"
            return lock_path(database).exists() and "pid" in lock_path(database).read_text()

        wait_for("the build to take the warehouse lock", build_holds_the_lock, timeout_s=120)
        load = omnistream(
            "dbt", "load-history", "--history", f"gs://{bucket}/history", "--duckdb", str(database)
        )
        built, _ = build.communicate(timeout=600)
    finally:
        if build.poll() is None:
            build.kill()
    assert build.returncode == 0, built[-3000:]
    assert load.returncode == 0, output_of(load)[-3000:]
    assert "waiting for the warehouse" in output_of(load)  # they did overlap: the load waited
    for output in (built, output_of(load)):
        assert LOCK_ERROR not in output
        assert PENDING_TASK not in output
    with duckdb.connect(str(database), read_only=True) as con:
        assert con.execute("select count(*) from raw.history_order_lines").fetchall() == [(result.rows,)]
