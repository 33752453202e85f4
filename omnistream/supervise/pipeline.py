"""``omnistream up`` and ``omnistream down``: the whole pipeline, continuously, under supervisord.

``up`` is idempotent: it starts the servers (``omnistream stack up``), does the one-shot set-up that
docker-compose.yml's ``init`` and ``history`` services do (the Debezium connector, the history in the
bucket, Airflow's metadata database), then starts every source, pipeline and scheduler program that is
not already running. ``down`` stops them in the reverse order, each finishing its unit of work (a Kafka
transaction, a landing file); ``down --drain`` first lets every producer and the sink catch up and builds
the marts once more, so they can be reconciled with the sources afterwards.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from omnistream.connect.postgres import wait_until_slots_confirm_wal_end
from omnistream.errors import OmnistreamError
from omnistream.settings import Settings, settings_environment
from omnistream.stack.manager import Stack
from omnistream.supervise.catalogue import SERVICES, Kind
from omnistream.supervise.control import RUNNING_STATES

log = logging.getLogger(__name__)

Progress = Callable[[str], None]
SOURCES = ("simulated", "none")


class PipelineError(OmnistreamError):
    """A step of ``up`` or ``down`` failed; the message names it and where to look."""


@dataclass
class UpResult:
    started: list[str] = field(default_factory=list)
    already_running: list[str] = field(default_factory=list)
    seconds: float = 0.0


def mode_file(stack: Stack) -> Path:
    """What ``up`` was asked to run; ``status`` expects exactly those programs to be up."""
    return stack.layout.run / "pipeline.json"


def read_mode(stack: Stack) -> dict[str, object] | None:
    path = mode_file(stack)
    return json.loads(path.read_text()) if path.exists() else None


def expected_kinds(sources: str) -> tuple[Kind, ...]:
    return (
        ("server", "source", "pipeline", "scheduler")
        if sources == "simulated"
        else (
            "server",
            "pipeline",
            "scheduler",
        )
    )


def _omnistream(settings: Settings, *args: str, what: str) -> None:
    """Run an ``omnistream`` command as a user would, with this stack's settings; fail with its output."""
    env = {**os.environ, **settings_environment(settings, secrets=False)}
    result = subprocess.run(
        [sys.executable, "-m", "omnistream", *args], env=env, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        output = (result.stdout + result.stderr).strip()[-2000:]
        raise PipelineError(f"{what} failed (omnistream {' '.join(args)}):\n{output}")


def up(settings: Settings, sources: str = "simulated", progress: Progress = log.info) -> UpResult:
    if sources not in SOURCES:
        raise ValueError(f"--sources must be one of {', '.join(SOURCES)}, not {sources!r}")
    began = time.monotonic()
    settings = settings.model_copy(
        update={"pipeline": settings.pipeline.model_copy(update={"sources": sources})}
    )
    stack = Stack(settings)
    stack.up(progress=progress)
    progress("connectors: applying the Debezium PostgreSQL connector")
    _omnistream(settings, "connect", "apply", what="applying the connectors")
    history_manifest = settings.stack.state_dir / "simulators" / "history" / "manifest.json"
    if sources == "simulated" and not history_manifest.exists():
        rows = settings.pipeline.history_rows
        progress(f"history: {rows:,} order lines → Parquet → GCS bucket (once)")
        _omnistream(settings, "simulate", "history", "--rows", str(rows), what="generating the history")
    progress("airflow: metadata database and configuration")
    from omnistream.scheduler.config import prepare_airflow

    prepare_airflow(settings)
    mode_file(stack).write_text(json.dumps({"sources": sources, "up_at": time.time()}))
    result = UpResult()
    kinds = expected_kinds(sources)
    for spec in SERVICES:
        if spec.kind == "server" or spec.kind not in kinds:
            continue
        if stack.supervisor.info(spec.name).state in RUNNING_STATES:
            result.already_running.append(spec.name)
            continue
        stack.supervisor.start(spec.name)
        result.started.append(spec.name)
        progress(f"{spec.name}: started")
    result.seconds = time.monotonic() - began
    return result


def down(settings: Settings, drain: bool = False, purge: bool = False, progress: Progress = log.info) -> None:
    stack = Stack(settings)
    if drain and stack.supervisor.is_running():
        Drain(settings, stack, progress).run()
    stack.down(purge=purge, progress=progress)
    mode_file(stack).unlink(missing_ok=True)


class Drain:
    """Catch every record up before stopping, so the marts equal what the sources produced.

    Order matters: the sources stop first (so there is an end to catch up to); each producer is then
    stopped (it commits or aborts its open transaction) and run once more in its bounded form, which
    produces whatever is left and exits; the sink does the same after Debezium confirmed every change;
    Airflow stops, and one last ``dbt build`` takes the marts up to the last landed record.
    """

    def __init__(self, settings: Settings, stack: Stack, progress: Progress) -> None:
        self.settings, self.stack, self.progress = settings, stack, progress

    def run(self) -> None:
        sv = self.stack.supervisor
        self.stack.stop_programs(["orders-simulator", "emails-simulator"], self.progress)
        self.stack.stop_programs(["email-producer"], self.progress)
        self.progress("email producer: producing what the mailbox still holds")
        _omnistream(self.settings, "produce", "emails", "--once", what="draining the mailbox")
        if sv.info("api").state in RUNNING_STATES or self.settings.pipeline.sources == "none":
            self.stack.stop_programs(["masterdata-producer"], self.progress)
            self.progress("master data: one last complete snapshot")
            _omnistream(
                self.settings, "produce", "masterdata", "--once", what="the last master-data snapshot"
            )
        self.stack.stop_programs(["api"], self.progress)
        self.wait_for_cdc()
        self.stack.stop_programs(["sink"], self.progress)
        self.progress("landing sink: landing what is left")
        _omnistream(self.settings, "sink", "--drain", what="draining the landing sink")
        # The scheduler first (it lets a running dbt build finish), the API server it reports to last.
        self.stack.stop_programs(
            ["airflow-scheduler", "airflow-dag-processor", "airflow-api-server"], self.progress
        )
        self.progress("dbt build: the marts up to the last landed record")
        _omnistream(self.settings, "dbt", "build", what="the last dbt build")

    def wait_for_cdc(self, timeout_s: float = 180.0) -> None:
        self.progress("Debezium: waiting until every committed change is in Kafka")
        if not wait_until_slots_confirm_wal_end(self.settings, timeout_s):
            raise PipelineError(
                f"Debezium did not catch up within {timeout_s:.0f}s; see `omnistream connect status`"
            )
