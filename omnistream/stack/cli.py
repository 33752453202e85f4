"""``omnistream stack up | down | status | logs | install``."""

from __future__ import annotations

import subprocess
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from omnistream.settings import get_settings
from omnistream.stack.manager import ServiceFailed, Stack
from omnistream.stack.services import SERVICE_NAMES

stack_app = typer.Typer(
    help="The local stack: the pipeline's real servers as native processes.", no_args_is_help=True
)
console = Console()

Services = Annotated[
    list[str] | None, typer.Argument(help=f"Services (default all): {', '.join(SERVICE_NAMES)}.")
]


def _progress(message: str) -> None:
    console.print(f"[dim]…[/dim] {message}")


@stack_app.command()
def install() -> None:
    """Download the servers (Maven Central jars, Debian's PostgreSQL) without starting them."""
    Stack(get_settings()).install(_progress)
    console.print("[green]installed[/green]")


@stack_app.command()
def up(services: Services = None) -> None:
    """Start the servers (idempotent: running ones are left alone) and wait until each answers."""
    stack = Stack(get_settings())
    try:
        report = stack.up(services, _progress)
    except ServiceFailed as failure:
        console.print(f"[red]{failure.service} did not come up:[/red] {failure.reason}")
        console.print(f"log: {failure.logfile}")
        console.print(failure.args[0].split("--- last lines ---\n", 1)[1], markup=False, highlight=False)
        raise typer.Exit(1) from None
    already = f"; already running: {', '.join(report.already_running)}" if report.already_running else ""
    console.print(f"[green]stack up[/green] in {report.seconds:.1f}s{already}")
    _print_status(stack)


@stack_app.command()
def bootstrap(services: Services = None) -> None:
    """Apply the idempotent set-up (Postgres roles and publication, registry rules) to running servers.

    ``stack up`` does this itself; this command is for servers it did not start (docker compose, cloud).
    """
    stack = Stack(get_settings())
    for service in stack.select(services):
        service.bootstrap()
        console.print(f"{service.name}: bootstrapped")


@stack_app.command()
def down(
    purge: bool = typer.Option(
        False, "--purge", help="Also delete data, logs, landed files and the warehouse (downloads are kept)."
    ),
) -> None:
    """Stop the processes the stack started."""
    stopped = Stack(get_settings()).down(purge, _progress)
    console.print(f"stopped {len(stopped)} service(s)")


@stack_app.command()
def status() -> None:
    """Each service with its pid, endpoints, health and memory."""
    stack = Stack(get_settings())
    if not _print_status(stack):
        raise typer.Exit(1)


@stack_app.command()
def logs(
    service: Annotated[str, typer.Argument(help=f"One of {', '.join(SERVICE_NAMES)}.")],
    lines: int = typer.Option(50, "--lines", "-n"),
    follow: bool = typer.Option(False, "--follow", "-f"),
) -> None:
    """Show (or follow) a service's log."""
    if service not in SERVICE_NAMES:
        raise typer.BadParameter(f"unknown service {service!r}; choose from {', '.join(SERVICE_NAMES)}")
    logfile = Stack(get_settings()).layout.log_file(service)
    if not logfile.exists():
        console.print(f"no log yet at {logfile}")
        raise typer.Exit(1)
    subprocess.run(["tail", f"-n{lines}", *(["-F"] if follow else []), str(logfile)], check=False)


def _print_status(stack: Stack) -> bool:
    table = Table("service", "pid", "endpoints", "health", "memory")
    all_healthy = True
    for s in stack.status():
        all_healthy &= s.healthy
        health = "[green]healthy[/green]" if s.healthy else f"[red]down[/red] {s.detail[:60]}"
        memory = f"{s.rss_kib / 1024:.0f} MiB" if s.pid else "-"
        table.add_row(s.name, str(s.pid or "-"), "\n".join(s.endpoints.values()), health, memory)
    console.print(table)
    return all_healthy
