"""``omnistream up | down | status | logs``, and the two helpers supervisord runs (``supervise …``)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from omnistream.supervise.catalogue import SERVICES

# Wide enough for the status tables when stdout is not a terminal (cron, a log file).
console = Console(width=None if Console().is_terminal else 150)
LOG_NAMES = (*(s.name for s in SERVICES), "events", "supervisord")

supervise_app = typer.Typer(
    help="Processes supervisord runs for omnistream itself (not for direct use).", no_args_is_help=True
)


def _progress(message: str) -> None:
    console.print(f"[dim]…[/dim] {message}", highlight=False)


def up(
    sources: str = typer.Option(
        "simulated",
        "--sources",
        help="simulated: also run the API, order and email simulators; none: real sources feed the pipeline.",
    ),
) -> None:
    """Run the whole pipeline continuously under supervisord (idempotent: what runs is left alone)."""
    from omnistream.scheduler.config import AirflowSetupError
    from omnistream.settings import get_settings
    from omnistream.stack.manager import ServiceFailed
    from omnistream.supervise.pipeline import SOURCES
    from omnistream.supervise.pipeline import up as pipeline_up

    if sources not in SOURCES:
        raise typer.BadParameter(f"choose one of {', '.join(SOURCES)}", param_hint="--sources")
    try:
        result = pipeline_up(get_settings(), sources, _progress)
    except ServiceFailed as failure:
        console.print(f"[red]{failure.service} did not come up:[/red] {failure.reason}", highlight=False)
        console.print(f"log: {failure.logfile}")
        raise typer.Exit(1) from None
    except AirflowSetupError as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(1) from None
    already = f"; already running: {', '.join(result.already_running)}" if result.already_running else ""
    console.print(f"[green]pipeline up[/green] in {result.seconds:.1f}s{already}")
    console.print("`omnistream status` shows whether data flows; `omnistream logs NAME -f` follows one part.")


def down(
    drain: bool = typer.Option(
        False, "--drain", help="First let every producer and the sink catch up and build the marts once more."
    ),
    purge: bool = typer.Option(
        False, "--purge", help="Also delete data, logs, landed files and the warehouse."
    ),
) -> None:
    """Stop the pipeline and the servers in order; each process finishes its transaction or file first."""
    from omnistream.settings import get_settings
    from omnistream.supervise.pipeline import PipelineError
    from omnistream.supervise.pipeline import down as pipeline_down

    try:
        pipeline_down(get_settings(), drain=drain, purge=purge, progress=_progress)
    except PipelineError as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False)
        console.print("the pipeline is still up: fix the cause and run `omnistream down --drain` again")
        raise typer.Exit(1) from None
    console.print("[green]pipeline down[/green]")


def status(as_json: bool = typer.Option(False, "--json", help="One JSON document, for monitoring.")) -> None:
    """Whether data flows: processes, connectors, lag, slot, dead letters, freshness, marts.

    Exit status 0 healthy, 1 degraded, 2 down.
    """
    from omnistream.settings import get_settings
    from omnistream.supervise.status import collect_status

    report = collect_status(get_settings())
    if as_json:
        typer.echo(json.dumps(report.to_json(), indent=2, default=str))
    else:
        _print(report.to_json())
    raise typer.Exit(report.exit_code)


def logs(
    name: Annotated[str, typer.Argument(help=f"One of {', '.join(LOG_NAMES)}.")],
    lines: int = typer.Option(50, "--lines", "-n", min=0),
    follow: bool = typer.Option(False, "--follow", "-f"),
) -> None:
    """Show (or follow) the log of one server or process (rotated by supervisord)."""
    from omnistream.settings import get_settings
    from omnistream.stack.layout import Layout

    if name not in LOG_NAMES:
        raise typer.BadParameter(
            f"unknown name {name!r}; choose from {', '.join(LOG_NAMES)}", param_hint="NAME"
        )
    logfile = Layout.from_settings(get_settings()).log_file(name)
    if not logfile.exists():
        console.print(f"no log yet at {logfile}")
        raise typer.Exit(1)
    subprocess.run(["tail", f"-n{lines}", *(["-F"] if follow else []), str(logfile)], check=False)


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def _print(report: dict[str, Any]) -> None:
    colour = {"healthy": "green", "degraded": "yellow", "down": "red"}[report["health"]]
    console.print(f"[bold {colour}]{report['health'].upper()}[/bold {colour}]  {report['at']}")
    for finding in report["findings"]:
        console.print(
            f"  [{'red' if finding['level'] == 'down' else 'yellow'}]•[/] {finding['what']}", highlight=False
        )
    table = Table("process", "kind", "state", "uptime", "restarts", "memory", "detail", title="processes")
    for p in report["processes"]:
        if not p["expected"] and p["state"] in ("STOPPED", "ABSENT"):
            continue
        state = p["state"] + ("" if p.get("answers", True) else " (no answer)")
        restarts = str(p["restarts"]) + (
            f" (+{p['revived_by_watchdog']} watchdog)" if p["revived_by_watchdog"] else ""
        )
        memory = f"{p['rss_mib']} MiB" if p["rss_mib"] else "-"
        table.add_row(
            p["name"], p["kind"], state, _age(p["uptime_s"] or None), restarts, memory, p["detail"][:50]
        )
    console.print(table)
    if report["connectors"]:
        table = Table("connector", "state", "tasks", "task restarts", title="Kafka Connect")
        for c in report["connectors"]:
            tasks = ", ".join(f"{i} {s}" for i, s in c["tasks"].items()) or "none"
            table.add_row(c["name"], c["state"], tasks, str(c["task_restarts"]))
        console.print(table)
    if report["lag"]:
        table = Table(
            "group", "topic", "partition", "committed", "end", "lag (records)", title="consumer lag"
        )
        for row in report["lag"]:
            lag = str(row["lag"]) if row["exact"] else f"≤ {row['lag']}"
            committed = "-" if row["committed"] is None else str(row["committed"])
            table.add_row(row["group"], row["topic"], str(row["partition"]), committed, str(row["end"]), lag)
        console.print(table)
    for slot in report["slots"]:
        ahead = slot["confirmed_ahead_of_offset_bytes"]
        console.print(
            f"replication slot {slot['slot']}: {'active' if slot['active'] else 'inactive'}, retains "
            f"{(slot['retained_wal_bytes'] or 0) / 2**20:.1f} MiB of WAL; "
            f"confirmed {slot['confirmed_flush_lsn']}, "
            f"connector offset {slot['connector_offset_lsn'] or '-'}"
            + (f" (slot confirmed {ahead} bytes past the offset!)" if ahead and ahead > 0 else ""),
            highlight=False,
        )
    if report["dead_letters"]:
        console.print(
            "dead letters: " + ", ".join(f"{t} {n}" for t, n in sorted(report["dead_letters"].items())),
            highlight=False,
        )
    if report["freshness"]:
        fresh = ", ".join(f"{f['topic']} {_age(f['age_s'])}" for f in report["freshness"])
        console.print(f"newest landed record: {fresh}", highlight=False)
    if report["marts"]:
        m = report["marts"]
        console.print(
            f"marts ({m['dag']}): last success {m['last_success_at'] or 'never'}, "
            f"latest run {m['latest_state'] or '-'}",
            highlight=False,
        )
    if report["reconciliation"]:
        r = report["reconciliation"]
        console.print(f"last reconciliation: {json.dumps(r, default=str)[:200]}", highlight=False)
    for section, error in report["errors"].items():
        console.print(f"[yellow]{section}: could not be read:[/yellow] {error}", highlight=False)


@supervise_app.command("events")
def events(
    out: Annotated[Path, typer.Option("--out", help="Where to append the state changes.")],
) -> None:
    """supervisord event listener: append every process state change to a JSON-lines file."""
    from omnistream.supervise.events import listen

    listen(out)


@supervise_app.command("watch")
def watch(
    connect_only: bool = typer.Option(
        False, "--connect-only", help="Only Kafka Connect's tasks (no supervisord to watch, e.g. compose)."
    ),
) -> None:
    """Restart FAILED Kafka Connect tasks and FATAL programs, with backoff, until SIGTERM."""
    from omnistream.settings import get_settings
    from omnistream.supervise.watchdog import run_watchdog

    run_watchdog(get_settings(), watch_programs=not connect_only)


AIRFLOW_COMPONENTS = ("scheduler", "dag-processor", "api-server")


@supervise_app.command("prepare-airflow")
def prepare_airflow() -> None:
    """Airflow's secrets, role and metadata database in PostgreSQL, and `airflow db migrate` (idempotent)."""
    from omnistream.scheduler.config import AirflowSetupError
    from omnistream.scheduler.config import prepare_airflow as prepare
    from omnistream.settings import get_settings

    try:
        prepare(get_settings())
    except AirflowSetupError as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(1) from None


@supervise_app.command("airflow")
def airflow(
    component: Annotated[str, typer.Argument(help=f"One of {', '.join(AIRFLOW_COMPONENTS)}.")],
) -> None:
    """Run one Airflow component with omnistream's Airflow configuration (replaces this process)."""
    import os

    from omnistream.scheduler.config import airflow_commands, process_environment
    from omnistream.settings import get_settings

    if component not in AIRFLOW_COMPONENTS:
        raise typer.BadParameter(f"choose one of {', '.join(AIRFLOW_COMPONENTS)}", param_hint="COMPONENT")
    settings = get_settings()
    argv = airflow_commands(settings)[f"airflow-{component}"]
    # exec, not a child: supervisord's signals and its pid go straight to Airflow.
    os.execve(argv[0], argv, process_environment(settings))
