"""The watchdog restarts a FAILED Debezium task through Connect's REST API, with backoff, and records it."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from omnistream.connect import deploy
from omnistream.connect.client import ConnectClient, ConnectorNotFound
from omnistream.settings import Settings
from omnistream.supervise.watchdog import Watchdog, read_restarts
from tests.support.cdc_sandbox import cdc_sandbox
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration


def test_a_failed_task_is_restarted_with_backoff_until_it_runs(
    stack_settings: Settings, unique: str, tmp_path: Path
) -> None:
    # The watchdog's journal goes to a state directory of the test's own; Connect is the shared one.
    settings = stack_settings.model_copy(
        update={"stack": stack_settings.stack.model_copy(update={"state_dir": tmp_path / "state"})}
    )
    with cdc_sandbox(stack_settings, unique) as sandbox, ConnectClient(stack_settings.connect.url) as client:
        missing = f"{sandbox.publication}_later"
        connector = sandbox.connector_file()
        connector = replace(connector, config={**connector.config, "publication.name": missing})
        rendered = deploy.prepare([connector], stack_settings)
        client.put_config(sandbox.connector, rendered.configs[sandbox.connector])

        def task_state() -> str:
            try:
                tasks = client.status(sandbox.connector).tasks
            except ConnectorNotFound:  # Connect has not written its first status yet
                return "UNASSIGNED"
            return tasks[0].state if tasks else "UNASSIGNED"

        wait_for("the task to fail on its missing publication", lambda: task_state() == "FAILED", 180, 1)
        watchdog = Watchdog(settings)
        now = time.monotonic()
        watchdog.check_connect(client, now)
        counts, _ = read_restarts(watchdog.paths.watchdog)
        assert counts[f"connector/{sandbox.connector}"] == 1
        seen: list[str] = []

        def failed_after_restart() -> bool:
            seen.append(task_state())
            return "FAILED" in seen[1:] and any(state != "FAILED" for state in seen)

        # Polled often: the restart (FAILED → RESTARTING/RUNNING → FAILED) takes about a second.
        wait_for("the restarted task to fail again", failed_after_restart, 180, every_s=0.05)
        watchdog.check_connect(client, now + 1)  # within the backoff: left alone
        assert read_restarts(watchdog.paths.watchdog)[0][f"connector/{sandbox.connector}"] == 1

        # The cause goes away; the next try after the backoff brings the task back.
        with psycopg.connect(stack_settings.postgres.dsn(), autocommit=True) as conn:
            conn.execute(
                sql.SQL("create publication {} for table {}, {}").format(
                    sql.Identifier(missing),
                    sql.Identifier(sandbox.schema, "orders"),
                    sql.Identifier(sandbox.schema, "order_items"),
                )
            )
        try:
            watchdog.check_connect(client, now + settings.pipeline.restart_backoff_max_s + 1)
            assert read_restarts(watchdog.paths.watchdog)[0][f"connector/{sandbox.connector}"] == 2
            wait_for("the task running after the fix", lambda: task_state() == "RUNNING", 180, 1)
        finally:
            with psycopg.connect(stack_settings.postgres.dsn(), autocommit=True) as conn:
                client.delete(sandbox.connector)
                time.sleep(2)  # the task lets go of its slot a moment after the delete
                conn.execute(sql.SQL("drop publication if exists {}").format(sql.Identifier(missing)))
