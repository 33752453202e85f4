"""What each service of the catalogue runs: one supervisord program per service.

Servers run the commands their ``omnistream.stack.services`` class builds; pipeline processes run the same
``omnistream`` commands a user would type, with the settings passed down as ``OMNISTREAM_*`` variables so
that a stack with its own state directory and ports (tests, a second stack) supervises its own processes.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

from omnistream.settings import Settings, settings_environment
from omnistream.stack.layout import Layout
from omnistream.stack.services import Service, build_services
from omnistream.supervise.catalogue import SERVICES, Kind

# The landing sink rejoins its group under this static id after a restart, so it gets its partitions
# back at once instead of after a session timeout.
SINK_INSTANCE_ID = "supervised-sink"


@dataclass(frozen=True)
class Program:
    """One supervisord ``[program:…]`` section."""

    name: str
    kind: Kind
    command: list[str]
    directory: Path
    environment: dict[str, str] = field(default_factory=dict)
    user: str | None = None
    stop_signal: str = "TERM"
    # How long a stop waits for an orderly exit (a transaction, a file, a checkpoint) before SIGKILL.
    stop_wait_s: int = 60
    priority: int = 500


def omnistream_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "omnistream", *args]


def pipeline_commands(settings: Settings) -> dict[str, list[str]]:
    """The ``omnistream`` command of every source and pipeline service."""
    p = settings.pipeline
    return {
        "api": omnistream_command("simulate", "api", "--drift"),
        "orders-simulator": omnistream_command(
            "simulate", "orders", "--rate", str(p.order_rate), "--duration", "0"
        ),
        "emails-simulator": omnistream_command(
            "simulate", "emails", "--rate", str(p.email_rate), "--duration", "0"
        ),
        "email-producer": omnistream_command("produce", "emails", "--follow"),
        "masterdata-producer": omnistream_command("produce", "masterdata", "--every", p.masterdata_every),
        "sink": omnistream_command("sink", "--instance-id", SINK_INSTANCE_ID),
        "watchdog": omnistream_command("supervise", "watch"),
        # Airflow reads its configuration (database, executor, secrets) from omnistream's settings.
        "airflow-scheduler": omnistream_command("supervise", "airflow", "scheduler"),
        "airflow-dag-processor": omnistream_command("supervise", "airflow", "dag-processor"),
        "airflow-api-server": omnistream_command("supervise", "airflow", "api-server"),
    }


def _server_program(service: Service, priority: int) -> Program:
    launch = service.launch()
    return Program(
        name=service.name,
        kind="server",
        command=launch.cmd,
        directory=launch.cwd or service.data_dir,
        environment=launch.env,
        user=launch.user,
        stop_signal=service.stop_signal.name.removeprefix("SIG"),
        stop_wait_s=120,
        priority=priority,
    )


def build_programs(
    settings: Settings, layout: Layout, servers: dict[str, Service] | None = None
) -> list[Program]:
    """Every program of the catalogue, in start order (servers first)."""
    servers = servers or build_services(settings, layout)
    # Secrets stay out of the programs' environment files: each process reads them as any omnistream
    # command does (its inherited environment, else the stack's secrets file).
    child_env = {**settings_environment(settings, secrets=False), "PYTHONUNBUFFERED": "1"}
    commands = pipeline_commands(settings)
    workdir = Path(os.getcwd())
    programs = []
    for priority, spec in enumerate(SERVICES, start=1):
        if spec.kind == "server":
            programs.append(_server_program(servers[spec.name], priority * 10))
        else:
            # The scheduler waits for the task it runs (a dbt build) before it exits.
            wait = 240 if spec.name == "airflow-scheduler" else 60
            program = Program(spec.name, spec.kind, commands[spec.name], workdir, child_env, stop_wait_s=wait)
            programs.append(replace(program, priority=priority * 10))
    return programs
