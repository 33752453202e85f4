"""Load the history's Parquet files from the GCS bucket into the warehouse, idempotently, per file.

The warehouse is the configured dbt target's (``OMNISTREAM_DBT__TARGET``), as
``omnistream.warehouse.history_load`` loads it. Snowflake: ``COPY INTO raw.history_order_lines`` with the
files named, from an external stage over ``gcs://<bucket>/history/`` granted by the storage integration
``OMNISTREAM_HISTORY__STORAGE_INTEGRATION`` (default ``OMNISTREAM_HISTORY_GCS``), or, with
``OMNISTREAM_HISTORY__STAGE_ACCESS=internal``, from an internal stage the task PUTs the files into with its
own Google credentials. Snowflake's load metadata skips files already loaded. Local (DuckDB): each new or
changed file is downloaded with the storage client, loaded in its own transaction and recorded with its
checksum. Either way a re-run loads nothing twice, so the DAG can run daily and pick up new months. The
bucket, stage and credentials are the settings (``OMNISTREAM_*``); nothing is read at parse time.

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
        import dataclasses

        from omnistream.settings import get_settings
        from omnistream.warehouse.history_load import configured_history_files

        return [dataclasses.asdict(f) for f in configured_history_files(get_settings())]

    @task(pool=AIRFLOW_POOL)
    def load(files: list[dict[str, str]]) -> dict[str, Any]:
        """Load the files into the configured warehouse; files already loaded are skipped."""
        import dataclasses

        from omnistream.settings import get_settings
        from omnistream.warehouse.history_load import HistoryFile, load_history

        settings = get_settings()
        report = load_history([HistoryFile(**f) for f in files], settings)
        return {"target": settings.dbt.target, **dataclasses.asdict(report)}

    load(list_files())  # type: ignore[arg-type]  # TaskFlow hands over the upstream XCom


omnistream_history_load()
