"""The DAGs parse cleanly and, run with `dag.test()`, build and load the local warehouse for real."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest

from simulators.history import generate_history
from tests.support.dbt_fixtures import online_orders, store_orders

DAGS_FOLDER = Path(__file__).resolve().parents[2] / "airflow" / "dags"
DAG_IDS = {"omnistream_dbt", "omnistream_history_load"}


def dag_bag() -> Any:
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS_FOLDER))


def test_dagbag_has_no_import_errors(airflow_db: Path) -> None:
    bag = dag_bag()
    assert bag.import_errors == {}
    assert set(bag.dag_ids) == DAG_IDS


def test_dags_are_thin_and_do_not_backfill(airflow_db: Path) -> None:
    bag = dag_bag()
    for dag_id in DAG_IDS:
        dag = bag.get_dag(dag_id)
        assert dag.catchup is False
        assert "omnistream" in dag.tags
        assert dag.max_active_runs == 1
        assert dag.doc_md


def test_parsing_the_dags_imports_nothing_heavy(airflow_db: Path) -> None:
    """The DAG processor parses these files over and over: no warehouse client, dbt or storage client."""
    import os
    import subprocess

    heavy = ["dbt", "duckdb", "snowflake", "google.cloud.storage", "gcsfs", "pyarrow", "psycopg"]
    script = (
        "import runpy, sys\n"
        f"for path in {sorted(str(p) for p in DAGS_FOLDER.glob('*.py'))!r}:\n"
        "    runpy.run_path(path)\n"
        f"print(sorted(m for m in {heavy!r} if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], env=os.environ.copy(), capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines()[-1] == "[]"


def test_the_dags_choose_no_target() -> None:
    """Which warehouse a task writes is the settings' (dbt.target), asked of the warehouse module."""
    for path in DAGS_FOLDER.glob("*.py"):
        source = path.read_text()
        assert "os.environ" not in source, path.name
        assert '"snowflake"' not in source and '"local"' not in source, path.name


def test_dbt_dag_interval_comes_from_the_settings(airflow_db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from omnistream.settings import get_settings

    monkeypatch.setenv("OMNISTREAM_AIRFLOW__DBT_EVERY_MINUTES", "7")
    get_settings.cache_clear()  # the DAG file reads the process-wide settings when it is parsed
    try:
        dag = dag_bag().get_dag("omnistream_dbt")
    finally:
        get_settings.cache_clear()
    assert dag.schedule == timedelta(minutes=7)


def test_the_warehouse_writers_share_one_pool_of_one_slot(airflow_db: Path) -> None:
    """Airflow never runs a dbt build and a history load at once: one DuckDB file, one writer."""
    import json
    import os
    import subprocess

    from omnistream.scheduler.config import AIRFLOW_BIN
    from omnistream.warehouse.lock import AIRFLOW_POOL

    bag = dag_bag()
    writers = {
        ("omnistream_dbt", "dbt_build"),
        ("omnistream_history_load", "load"),
    }
    pools = {(dag_id, task.task_id): task.pool for dag_id in DAG_IDS for task in bag.get_dag(dag_id).tasks}
    assert {key for key, pool in pools.items() if pool == AIRFLOW_POOL} == writers
    assert pools[("omnistream_history_load", "list_files")] == "default_pool"  # reads only the bucket
    shown = subprocess.run(
        [str(AIRFLOW_BIN), "pools", "get", AIRFLOW_POOL, "-o", "json"],
        env=os.environ.copy(),
        capture_output=True,
        text=True,
        check=False,
    )
    assert shown.returncode == 0, shown.stdout[-2000:] + shown.stderr[-2000:]
    (pool,) = json.loads(shown.stdout)
    assert int(pool["slots"]) == 1


@pytest.fixture
def local_warehouse(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A small landing zone and history for the DAGs to work on, and the env that points them there."""
    start = datetime(2026, 11, 24, 21, 0, tzinfo=UTC)
    online = online_orders(7, count=12, start=start, step=timedelta(minutes=9))
    stores = store_orders(7, count=15, start=start, step=timedelta(minutes=6))
    for topic in (online.orders, online.order_items, stores.topic):
        topic.write(tmp_path / "landing")
    history = generate_history(tmp_path / "history_out", seed=7, rows=400, end=date(2026, 11, 24))
    monkeypatch.setenv("OMNISTREAM_DBT__TARGET", "local")
    monkeypatch.setenv("OMNISTREAM_DBT__DUCKDB_PATH", str(tmp_path / "omnistream.duckdb"))
    monkeypatch.setenv("OMNISTREAM_DBT__LANDING_ROOT", str(tmp_path / "landing"))
    monkeypatch.setenv("OMNISTREAM_DBT__HISTORY_ROOT", str(history.root))
    monkeypatch.setenv("OMNISTREAM_HISTORY__ROOT", str(history.root))
    monkeypatch.setenv("OMNISTREAM_DBT__TARGET_PATH", str(tmp_path / "target"))
    from omnistream.settings import get_settings

    get_settings.cache_clear()  # the tasks read the dbt and history settings from the process-wide ones
    yield tmp_path
    get_settings.cache_clear()
    shutil.rmtree(tmp_path / "target", ignore_errors=True)


def _task_states(run: Any) -> dict[str, str]:
    return {ti.task_id: str(ti.state) for ti in run.get_task_instances()}


def test_dbt_dag_builds_the_local_warehouse(airflow_db: Path, local_warehouse: Path) -> None:
    run = dag_bag().get_dag("omnistream_dbt").test()
    assert _task_states(run) == {"dbt_build": "success"}
    with duckdb.connect(str(local_warehouse / "omnistream.duckdb"), read_only=True) as con:
        by_channel = "select channel, count(*) from marts.fct_orders group by channel"
        channels = dict(con.execute(by_channel).fetchall())
        sources = {s for (s,) in con.execute("select distinct source from marts.fct_orders").fetchall()}
    assert channels["online"] > 0 and channels["in_store"] > 0
    assert sources == {"onlinedb", "stores", "history"}


def test_history_dag_loads_each_file_once(airflow_db: Path, local_warehouse: Path) -> None:
    dag = dag_bag().get_dag("omnistream_history_load")
    first = dag.test(logical_date=datetime(2026, 11, 24, tzinfo=UTC))
    assert set(_task_states(first).values()) == {"success"}
    database = local_warehouse / "omnistream.duckdb"
    with duckdb.connect(str(database), read_only=True) as con:
        ((rows, files),) = con.execute(
            "select count(*), count(distinct source_file) from raw.history_order_lines"
        ).fetchall()
    assert rows == 400
    second = dag.test(logical_date=datetime(2026, 11, 25, tzinfo=UTC))
    assert set(_task_states(second).values()) == {"success"}
    with duckdb.connect(str(database), read_only=True) as con:
        assert con.execute("select count(*) from raw.history_order_lines").fetchall() == [(rows,)]
        assert con.execute("select count(*) from raw.history_files").fetchall() == [(files,)]
