"""Build the omnistream warehouse with dbt on a schedule: staging → intermediate → marts, with tests.

The interval is ``OMNISTREAM_AIRFLOW__DBT_EVERY_MINUTES`` (settings.airflow.dbt_every_minutes, 15 by default).

One plain task runs `dbt build` as the warehouse module configures it (``omnistream.warehouse.dbt``'s
scheduled run): the target is ``dbt.target`` (``local``: DuckDB over the landed Parquet; ``snowflake``: the
Kafka connector's tables), the connection details are the ``dbt`` and ``snowflake`` settings
(``OMNISTREAM_DBT__*``, ``OMNISTREAM_SNOWFLAKE__*``), never this file. dbt runs only when the task runs:
parsing this file imports nothing but Airflow's SDK and omnistream's settings (for the interval). A build
is idempotent (views and tables are rebuilt from the raw layer, snapshots record only real changes), so a
retry or an overlapping schedule is harmless; runs do not overlap anyway (max_active_runs=1).

The task runs in the ``omnistream_warehouse`` pool (one slot), as does the history load's, so Airflow never
runs the two writers of the local DuckDB file together; the warehouse lock the task takes covers writers
outside Airflow (the CLI, `make demo`).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pendulum
from airflow.sdk import dag, task

from omnistream.settings import get_settings
from omnistream.warehouse.lock import AIRFLOW_POOL


@dag(
    dag_id="omnistream_dbt",
    schedule=timedelta(minutes=get_settings().airflow.dbt_every_minutes),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["omnistream", "dbt", "warehouse"],
    default_args={"retries": 2, "retry_delay": timedelta(minutes=1)},
    doc_md=__doc__,
)
def omnistream_dbt() -> None:
    @task(execution_timeout=timedelta(minutes=30), pool=AIRFLOW_POOL)
    def dbt_build() -> dict[str, Any]:
        """`dbt build` on the configured target; fails the task (with dbt's output) if any node fails."""
        from omnistream.warehouse.dbt import result_counts, run_dbt, scheduled_run

        # The pipeline runs while this builds: completeness tests across streams skip in-flight rows.
        run = scheduled_run()
        run_dbt(["build"], run)
        return {"target": run.target, "statuses": result_counts(run)}

    dbt_build()


omnistream_dbt()
