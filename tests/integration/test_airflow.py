"""Airflow as the local stack runs it: scheduler, DAG processor and API server, on the stack's PostgreSQL.

The module starts its own Airflow (own state directory, API port, database, role and history bucket, so it
never meets the one `omnistream up` runs) with the omnistream_dbt DAG due every minute, and checks through
the REST API that the DAGs run on schedule and succeed on an empty landing zone, then that the UI shows it.
Figures (memory per process, seconds from start to the first successful dbt run) are logged, not asserted.
"""

from __future__ import annotations

import html
import logging
import os
import re
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TypeVar

import psutil
import psycopg
import pytest
from psycopg import sql

from omnistream.gcs import ensure_bucket, storage_client
from omnistream.scheduler.client import AirflowClient, AirflowUnreachable, DagNotFound, DagRunInfo
from omnistream.scheduler.config import (
    airflow_commands,
    airflow_environment,
    airflow_home,
    prepare_airflow,
    process_environment,
    secrets_path,
)
from omnistream.settings import Settings
from omnistream.stack.layout import Layout

pytestmark = pytest.mark.integration

log = logging.getLogger(__name__)

API_PORT = 18190  # beside the stack's 18090, so both can run at once
DBT_DAG = "omnistream_dbt"
HISTORY_DAG = "omnistream_history_load"
# The API server first: the tasks report to it, and its execution API is built on the first request.
START_ORDER = ("airflow-api-server", "airflow-scheduler", "airflow-dag-processor")
REPO = Path(__file__).resolve().parents[2]
SCREENSHOT = REPO / "docs" / "airflow-ui.png"
# Deadlines for the loops below: they fail with what Airflow logged, they do not time the test.
START_DEADLINE_S = 600.0
RUN_DEADLINE_S = 900.0

T = TypeVar("T")


@dataclass
class RunningAirflow:
    settings: Settings
    client: AirflowClient
    logs: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    started_at: float = 0.0
    figures: dict[str, float] = field(default_factory=dict)

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        with (self.logs / f"{name}.log").open("wb") as out:
            self.processes[name] = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)

    def diagnosis(self) -> str:
        """Which processes died, and the end of each one's log."""
        parts = []
        for name, proc in self.processes.items():
            state = "running" if proc.poll() is None else f"exited with {proc.returncode}"
            lines = (self.logs / f"{name}.log").read_text(errors="replace").splitlines()[-25:]
            parts.append(f"--- {name} ({state}) ---\n" + "\n".join(lines))
        return "\n".join(parts)

    def wait_for(self, what: str, probe: Callable[[], T | None], deadline_s: float) -> T:
        """``probe()`` until it returns something, or fail saying what never happened and why."""
        deadline = time.monotonic() + deadline_s
        while True:
            dead = [name for name, proc in self.processes.items() if proc.poll() is not None]
            assert not dead, f"{', '.join(dead)} exited while waiting for {what}\n{self.diagnosis()}"
            found = probe()
            if found is not None:
                return found
            assert time.monotonic() < deadline, f"no {what} after {deadline_s:.0f} s\n{self.diagnosis()}"
            time.sleep(2)

    def stop(self) -> None:
        """SIGTERM in reverse start order, each waited for: the scheduler finishes its running task (which
        reports to the API server), so the API server goes last."""
        for name in reversed(START_ORDER):
            proc = self.processes.get(name)
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=300)
            except subprocess.TimeoutExpired:  # a cleanup guard, not a test limit: never leave it running
                log.warning("%s did not stop within 300 s of SIGTERM; killing its process group", name)
                for child in psutil.Process(proc.pid).children(recursive=True):
                    child.kill()
                proc.kill()
                proc.wait()


def _memory(proc: subprocess.Popen[bytes]) -> tuple[int, int, int]:
    """MiB: the program's own RSS, RSS with its children, PSS with its children (shared pages split)."""
    main = psutil.Process(proc.pid)
    rss = pss = 0
    for p in [main, *main.children(recursive=True)]:
        with_shared = p.memory_full_info()
        rss += with_shared.rss
        pss += with_shared.pss
    return main.memory_info().rss >> 20, rss >> 20, pss >> 20


def _drop_database_and_role(settings: Settings) -> None:
    pg, af = settings.postgres, settings.airflow
    with psycopg.connect(pg.dsn(dbname="postgres"), autocommit=True, connect_timeout=10) as conn:
        conn.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(af.database)))
        conn.execute(sql.SQL("drop role if exists {}").format(sql.Identifier(af.user)))


@pytest.fixture(scope="module")
def airflow(stack_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningAirflow]:
    unique = uuid.uuid4().hex[:10]
    state = tmp_path_factory.mktemp("airflow-state")
    settings = stack_settings.model_copy(
        update={
            "stack": stack_settings.stack.model_copy(
                update={"state_dir": state, "dist_dir": Layout.from_settings(stack_settings).dist}
            ),
            # An empty bucket: the history load and dbt find no history files, as on a fresh stack.
            "gcs": stack_settings.gcs.model_copy(update={"bucket": f"airflow-test-{unique}"}),
            "airflow": stack_settings.airflow.model_copy(
                update={
                    "port": API_PORT,
                    "database": f"airflow_test_{unique}",
                    "user": f"airflow_test_{unique}",
                    "dbt_every_minutes": 1.0,
                }
            ),
        }
    )
    gcs = storage_client(settings.gcs)
    bucket = ensure_bucket(gcs, settings.gcs.bucket)
    logs = state / "logs"
    logs.mkdir()
    running = RunningAirflow(settings, AirflowClient(settings, retry_for_s=0), logs)
    try:
        began = time.monotonic()
        prepare_airflow(settings)
        running.figures["prepare_s"] = time.monotonic() - began
        began = time.monotonic()
        prepare_airflow(settings)  # idempotent, and quick the second time
        running.figures["prepare_again_s"] = time.monotonic() - began

        env = process_environment(settings)
        commands = airflow_commands(settings)
        running.started_at = time.monotonic()
        running.start(START_ORDER[0], commands[START_ORDER[0]], env)

        def api_answers() -> dict[str, object] | None:
            try:
                return running.client.execution_api_healthy()
            except AirflowUnreachable:
                return None

        running.wait_for("answer from the API server", api_answers, START_DEADLINE_S)
        running.figures["api_server_ready_s"] = time.monotonic() - running.started_at
        for name in START_ORDER[1:]:
            running.start(name, commands[name], env)
        yield running
    finally:
        running.stop()
        running.client.close()
        _drop_database_and_role(settings)
        for blob in gcs.list_blobs(bucket.name):
            blob.delete()
        bucket.delete()


def test_secrets_are_generated_once_private_and_outside_the_repository(airflow: RunningAirflow) -> None:
    path = secrets_path(airflow.settings)
    assert path.stat().st_mode & 0o777 == 0o600
    assert not path.resolve().is_relative_to(REPO)
    env = airflow_environment(airflow.settings)
    assert env == airflow_environment(airflow.settings)  # read back, not generated anew
    assert env["AIRFLOW__API_AUTH__JWT_SECRET"] in path.read_text()
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://")
    assert env["OMNISTREAM_AIRFLOW__DBT_EVERY_MINUTES"] == "1.0"


def _successful_run(airflow: RunningAirflow, dag_id: str) -> DagRunInfo:
    """The DAG's first successful run; a run that failed (after its retries) fails the test with its log."""

    def probe() -> DagRunInfo | None:
        try:
            runs = airflow.client.runs(dag_id, limit=10)
        except DagNotFound:  # not parsed yet
            return None
        failed = [run for run in runs if run.state == "failed"]
        assert not failed, f"{dag_id} run {failed[0].dag_run_id} failed\n{_task_logs(airflow, dag_id)}"
        return airflow.client.last_run(dag_id) if any(run.state == "success" for run in runs) else None

    return airflow.wait_for(f"successful {dag_id} run", probe, RUN_DEADLINE_S)


def _task_logs(airflow: RunningAirflow, dag_id: str) -> str:
    base = airflow_home(airflow.settings) / "logs" / f"dag_id={dag_id}"
    files = sorted(base.rglob("*.log"), key=lambda p: p.stat().st_mtime)[-1:]
    return "\n".join(f"--- {f}\n" + "\n".join(f.read_text().splitlines()[-30:]) for f in files)


def test_dbt_dag_builds_the_empty_warehouse_on_schedule(airflow: RunningAirflow) -> None:
    run = _successful_run(airflow, DBT_DAG)
    airflow.figures["start_to_first_dbt_run_s"] = time.monotonic() - airflow.started_at

    assert run.run_type == "scheduled"
    assert run.start_date is not None and run.start_date.tzinfo is not None
    assert run.end_date is not None and run.end_date >= run.start_date
    result = airflow.client.task_result(DBT_DAG, run.dag_run_id, "dbt_build")
    assert result["target"] == "local"
    assert result["statuses"] and set(result["statuses"]) <= {"success", "pass"}, result
    # The task saw the test's settings: the warehouse is under its state directory.
    assert (airflow.settings.stack.state_dir / "warehouse" / "omnistream.duckdb").exists()

    health = airflow.client.healthy()
    for part in ("metadatabase", "scheduler", "dag_processor"):
        assert health[part]["status"] == "healthy", health

    for name, proc in airflow.processes.items():
        own, rss, pss = _memory(proc)
        airflow.figures[f"{name}_rss_mib"] = own
        airflow.figures[f"{name}_with_children_rss_mib"] = rss
        airflow.figures[f"{name}_with_children_pss_mib"] = pss
    log.info("Airflow figures: %s", {k: round(v, 1) for k, v in airflow.figures.items()})


def test_history_dag_succeeds_on_an_empty_bucket(airflow: RunningAirflow) -> None:
    run = _successful_run(airflow, HISTORY_DAG)
    loaded = airflow.client.task_result(HISTORY_DAG, run.dag_run_id, "load")
    assert loaded["loaded"] == 0 and loaded["rows"] == 0, loaded


def test_dbt_dag_runs_at_the_configured_interval(airflow: RunningAirflow) -> None:
    dag = airflow.client.dag(DBT_DAG)
    assert dag["timetable_summary"] == str(timedelta(minutes=1)), dag  # "0:01:00", from the settings
    assert dag["is_paused"] is False

    def two_scheduled() -> list[DagRunInfo] | None:
        runs = [r for r in airflow.client.runs(DBT_DAG, limit=10) if r.run_type == "scheduled"]
        return runs[:2] if len(runs) >= 2 else None

    newer, older = airflow.wait_for(f"second scheduled {DBT_DAG} run", two_scheduled, RUN_DEADLINE_S)
    assert newer.logical_date is not None and older.logical_date is not None
    # A minute after the previous one, or later when that one ran longer (max_active_runs=1).
    assert newer.logical_date - older.logical_date >= timedelta(minutes=1)


def _chromium(*args: str, user_data: Path) -> subprocess.CompletedProcess[str]:
    argv = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
    argv += [f"--user-data-dir={user_data}", "--window-size=1400,900", "--virtual-time-budget=20000", *args]
    return subprocess.run(argv, capture_output=True, text=True, check=False)


def test_ui_shows_the_dag_with_its_successful_run(airflow: RunningAirflow, tmp_path: Path) -> None:
    run = _successful_run(airflow, DBT_DAG)
    url = f"{airflow.settings.airflow.url}/dags/{DBT_DAG}/runs"

    page = _chromium("--dump-dom", url, user_data=tmp_path / "chromium")
    assert page.returncode == 0, page.stderr[-2000:]
    dom = page.stdout
    (airflow.logs / "ui-runs.html").write_text(dom)
    # The page is rendered by JavaScript from the API's answers: the successful run's id and a Success
    # badge are there only if the UI loaded (and authenticated itself) and drew the runs table.
    assert DBT_DAG in dom, dom[-3000:]
    assert run.dag_run_id in html.unescape(dom), dom[-3000:]
    assert re.search(r">\s*Success\s*<", dom), dom[-3000:]

    SCREENSHOT.parent.mkdir(exist_ok=True)
    shot = _chromium(f"--screenshot={SCREENSHOT}", url, user_data=tmp_path / "chromium")
    assert shot.returncode == 0, shot.stderr[-2000:]
    assert SCREENSHOT.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert os.path.getsize(SCREENSHOT) > 20_000  # a rendered page, not a blank one
