"""Load the history's Parquet files from the GCS bucket into the warehouse, idempotently, per file.

Snowflake (``OMNISTREAM_DBT__TARGET=snowflake``): ``COPY INTO raw.history_order_lines`` with the files named,
from an external stage over ``gcs://<bucket>/history/`` granted by the storage integration
``OMNISTREAM_HISTORY__STORAGE_INTEGRATION`` (default ``OMNISTREAM_HISTORY_GCS``), or, with
``OMNISTREAM_HISTORY__STAGE_ACCESS=internal``, from an internal stage the task PUTs the files into with its
own Google credentials. Snowflake's load metadata skips files already loaded. Local (DuckDB): each new or
changed file is downloaded with the storage client, loaded in its own transaction and recorded with its
checksum. Either way a re-run loads nothing twice, so the DAG can run daily and pick up new months. The
bucket, stage and credentials come from the environment (``OMNISTREAM_*``); nothing is read at parse time.

The load runs in the ``omnistream_warehouse`` pool (one slot), as does the dbt DAG's build: the local
warehouse is one DuckDB file, which one process at a time may write.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pendulum
from airflow.sdk import dag, task

from omnistream.warehouse.lock import AIRFLOW_POOL


@dag(
    dag_id="omnistream_history_load",
    schedule="@daily",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["omnistream", "history", "warehouse"],
    default_args={"retries": 2, "retry_delay": timedelta(minutes=2)},
    doc_md=__doc__,
)
def omnistream_history_load() -> None:
    @task
    def list_files() -> list[dict[str, str]]:
        """The files (name, URI, checksum) in the bucket, or under OMNISTREAM_HISTORY__ROOT if set."""
        from omnistream.settings import get_settings
        from omnistream.warehouse.history_load import list_history_files

        settings = get_settings()
        return [
            {"name": f.name, "uri": f.uri, "checksum": f.checksum}
            for f in list_history_files(settings.history.dataset(settings.gcs), settings.gcs)
        ]

    @task(pool=AIRFLOW_POOL)
    def load(files: list[dict[str, str]]) -> dict[str, Any]:
        """Load the files into the target warehouse; files already loaded are skipped."""
        import os
        from pathlib import Path

        from omnistream.settings import get_settings
        from omnistream.warehouse.dbt import default_duckdb_path
        from omnistream.warehouse.history_load import (
            HistoryFile,
            SnowflakeTarget,
            load_history_into,
            load_history_snowflake,
        )

        settings = get_settings()
        history = [HistoryFile(**f) for f in files]
        target = os.environ.get("OMNISTREAM_DBT__TARGET", "local")
        if target == "snowflake":
            from omnistream.warehouse.snowflake import connect

            stage = SnowflakeTarget(
                stage_url=settings.history.stage(settings.gcs),
                storage_integration=settings.history.storage_integration,
                stage_access=settings.history.stage_access,
            )
            with connect() as con:
                report = load_history_snowflake(con.cursor(), stage, history, settings.gcs)
        else:
            path = Path(os.environ.get("OMNISTREAM_DBT__DUCKDB_PATH") or default_duckdb_path(settings))
            report = load_history_into(path, history, settings.gcs)
        return {"target": target, "loaded": report.loaded, "skipped": report.skipped, "rows": report.rows}

    load(list_files())  # type: ignore[arg-type]  # TaskFlow hands over the upstream XCom


omnistream_history_load()
