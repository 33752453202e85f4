"""Airflow for the DAG tests: its own home and SQLite metadata database, migrated once per session.

Airflow reads its configuration when first imported, so the environment is set here, before any test module
imports it, and the tests import Airflow inside their functions.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

DAGS_FOLDER = Path(__file__).resolve().parents[2] / "airflow" / "dags"
AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="omnistream-airflow-"))
atexit.register(shutil.rmtree, AIRFLOW_HOME, ignore_errors=True)

os.environ.update(
    {
        "AIRFLOW_HOME": str(AIRFLOW_HOME),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_FOLDER),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{AIRFLOW_HOME / 'airflow.db'}",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
    }
)


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """A migrated metadata database (``airflow db migrate``, as an operator would run it), with the pool."""
    airflow = Path(sys.executable).with_name("airflow")
    result = subprocess.run(
        [str(airflow), "db", "migrate"], env=os.environ.copy(), capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    from omnistream.scheduler.config import pool_command

    # The warehouse pool, set as `omnistream supervise prepare-airflow` sets it on the stack's database.
    pool = subprocess.run(pool_command(), env=os.environ.copy(), capture_output=True, text=True, check=False)
    assert pool.returncode == 0, pool.stdout[-2000:] + pool.stderr[-2000:]
    return AIRFLOW_HOME
