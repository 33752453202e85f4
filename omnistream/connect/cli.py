"""``omnistream connect apply | validate | status | restart | delete``: the pipeline's Kafka Connect
connectors."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, TypeVar

import psycopg
import typer
from rich.console import Console
from rich.table import Table

from omnistream.connect import deploy, validation
from omnistream.connect.client import ConnectClient, ConnectError, ConnectorStatus
from omnistream.connect.config import (
    CONNECT_DIR,
    OPT_IN,
    Resolved,
    load_dir,
    render,
    resolve,
    select,
)
from omnistream.settings import get_settings

connect_app = typer.Typer(
    help="Kafka Connect connectors (connect/*.json): apply, validate, status, restart, delete.",
    no_args_is_help=True,
)
console = Console()
T = TypeVar("T")

Names = Annotated[list[str], typer.Argument(help="Connector names.")]
ConfigDir = Annotated[Path, typer.Option("--dir", help="Folder of connector configs, one <name>.json each.")]
Timeout = Annotated[
    float, typer.Option("--timeout", min=1.0, help="Seconds to wait for each connector to reach RUNNING.")
]


@connect_app.callback()
def options(
    ctx: typer.Context,
    url: Annotated[
        str | None, typer.Option("--url", help="Connect REST URL (default: from settings.connect).")
    ] = None,
    retry_for: Annotated[
        float, typer.Option("--retry-for", min=0.0, help="Seconds to retry while Connect does not answer.")
    ] = 20.0,
) -> None:
    ctx.obj = ConnectClient(url or get_settings().connect.url, retry_for_s=retry_for)
    ctx.call_on_close(ctx.obj.close)


def _progress(name: str, what: str) -> None:
    console.print(f"[dim]…[/dim] {name}: {what}", highlight=False)


@contextlib.contextmanager
def _errors() -> Iterator[None]:
    """PostgreSQL's errors become a red message and exit status 1, without a Python traceback.

    Connect's and the config files' errors are omnistream's own: the CLI group prints those.
    """
    try:
        yield
    except psycopg.Error as exc:  # preparing the captured schema, or dropping a slot
        pg = get_settings().postgres
        console.print(f"[red]error:[/red] PostgreSQL at {pg.host}:{pg.port}: {exc}".strip(), highlight=False)
        raise typer.Exit(1) from None


def _with_spinner(message: str, action: Callable[[], T]) -> T:
    with console.status(message):
        return action()


@connect_app.command()
def apply(
    ctx: typer.Context,
    directory: ConfigDir = CONNECT_DIR,
    include: Annotated[
        list[str] | None,
        typer.Option("--include", help=f"Also apply an opt-in connector ({', '.join(sorted(OPT_IN))})."),
    ] = None,
    only: Annotated[list[str] | None, typer.Option("--only", help="Apply just these connectors.")] = None,
    timeout: Timeout = 180.0,
    ensure_schema: Annotated[
        bool,
        typer.Option(
            "--ensure-schema/--no-ensure-schema",
            help="Create the shop's tables in the captured schemas first (as the application role).",
        ),
    ] = True,
) -> None:
    """Create or update every connector (idempotent) and wait until each runs."""
    client: ConnectClient = ctx.obj
    with _errors():
        files = select(load_dir(directory), include or (), only or ())
        results = _with_spinner(
            f"applying {', '.join(f.name for f in files)} to {client.url}",
            lambda: deploy.apply(
                client,
                get_settings(),
                files,
                timeout_s=timeout,
                progress=_progress,
                ensure_schemas=ensure_schema,
            ),
        )
    for result in results:
        console.print(f"[green]{result.name}[/green] {result.action}: {result.status.describe()}")
    skipped = sorted({f.name for f in load_dir(directory)} & OPT_IN - {f.name for f in files})
    if skipped:
        console.print(f"[dim]not applied (opt-in, --include NAME): {', '.join(skipped)}[/dim]")


@connect_app.command()
def validate(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Connector name (connect/<name>.json).")],
    directory: ConfigDir = CONNECT_DIR,
) -> None:
    """Resolve every placeholder as the worker would, ask Connect to validate, say what it checked.

    Exit status 0 if Connect found no error, 1 if it found some or a placeholder has no value, 2 if there
    is no such connector config.
    """
    client: ConnectClient = ctx.obj
    with _errors():
        files = {f.name: f for f in load_dir(directory)}
    if name not in files:
        console.print(
            f"[red]error:[/red] no connector config named {name!r} in {directory} "
            f"(known: {', '.join(sorted(files))})",
            highlight=False,
        )
        raise typer.Exit(2)
    with _errors():
        resolved = resolve(render([files[name]], get_settings()), name)
        try:
            report = _with_spinner(
                f"validating {name} on {client.url}", lambda: validation.validate(client, resolved)
            )
        except ConnectError as exc:  # Connect's message may quote the config it was sent
            raise ConnectError(resolved.redact(str(exc))) from None
    _print_report(report, resolved, client.url)
    if not report.ok:
        raise typer.Exit(1)


def _print_report(report: validation.Report, resolved: Resolved, url: str) -> None:
    """The report, with no resolved value in it (Connect's messages are scrubbed of them too)."""
    v = report.validation
    versions = f" (installed: {', '.join(v.versions)})" if len(v.versions) > 1 else ""
    plugin = f"{report.plugin} {v.version}".strip()
    console.print(f"[bold]{report.name}[/bold]: validated by {plugin}{versions} on {url}", highlight=False)
    if report.references:
        console.print("resolved before sending (values not shown):")
        for ref in report.references:
            console.print(f"  {ref.field} ← {ref.text}: {ref.source}", highlight=False, markup=False)
    checked, unchecked = report.checked, report.unchecked
    console.print(
        f"checked by Connect ({len(checked)} of {len(report.submitted)} fields): {', '.join(checked)}",
        highlight=False,
    )
    if unchecked:
        console.print(
            "[yellow]not checked[/yellow] (no definition in Connect's answer): " + ", ".join(unchecked),
            highlight=False,
        )
    if v.errors:
        console.print(f"[red]{v.error_count} error(s):[/red]")
        for field, errors in sorted(v.errors.items()):
            for error in errors:
                text = resolved.redact(error)
                console.print(f"  {text if text.startswith(field) else f'{field}: {text}'}", markup=False)
    if report.account:
        console.print(f"account: {report.account}", highlight=False)
    if report.at_start_only:
        console.print(f"not checked here: {report.at_start_only}", highlight=False)
    console.print("[green]valid[/green]" if report.ok else f"[red]invalid[/red]: {v.error_count} error(s)")


@connect_app.command()
def status(
    ctx: typer.Context,
    names: Annotated[list[str] | None, typer.Argument(help="Connector names (default: all).")] = None,
    trace: Annotated[bool, typer.Option("--trace", help="Print failed tasks' full stack traces.")] = False,
) -> None:
    """Connector and task states, with the errors of failed ones. Exit status 1 if any FAILED."""
    client: ConnectClient = ctx.obj
    with _errors():
        statuses = [client.status(n) for n in names] if names else client.statuses()
    if not statuses:
        console.print(f"no connectors on {client.url}")
        return
    table = Table("connector", "type", "state", "tasks", "error")
    for s in statuses:
        errors = "\n".join(f"{what}: {summary}" for what, summary in s.failures())
        table.add_row(s.name, s.type, _state(s.state), _tasks(s), errors)
    console.print(table)
    if trace:
        for s in statuses:
            for what, text in [("connector", s.trace)] + [(f"task {t.id}", t.trace) for t in s.tasks]:
                if text:
                    console.print(f"[bold]{s.name} {what}[/bold]")
                    console.print(text, markup=False, highlight=False)
    if any(s.failed for s in statuses):
        raise typer.Exit(1)


def _state(state: str) -> str:
    colour = {"RUNNING": "green", "FAILED": "red", "PAUSED": "yellow", "STOPPED": "yellow"}.get(state, "cyan")
    return f"[{colour}]{state}[/{colour}]"


def _tasks(s: ConnectorStatus) -> str:
    return "\n".join(f"{t.id}: {_state(t.state)}" for t in s.tasks) or "-"


@connect_app.command()
def restart(
    ctx: typer.Context,
    names: Names,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Wait until each runs again.")] = True,
    timeout: Timeout = 180.0,
) -> None:
    """Restart connectors together with their tasks (includeTasks=true)."""
    client: ConnectClient = ctx.obj
    with _errors():
        statuses = deploy.restart(client, names, wait=wait, timeout_s=timeout, progress=_progress)
    for s in statuses:
        console.print(f"[green]{s.name}[/green] restarted: {s.describe()}")


@connect_app.command()
def delete(
    ctx: typer.Context,
    names: Names,
    drop_slot: Annotated[
        bool,
        typer.Option(
            "--drop-slot",
            help="Also drop a Debezium PostgreSQL connector's replication slot (otherwise it keeps WAL).",
        ),
    ] = False,
) -> None:
    """Delete connectors. A Debezium connector's replication slot stays unless --drop-slot."""
    client: ConnectClient = ctx.obj
    with _errors():
        for name in names:
            left = deploy.delete(client, get_settings(), name, drop_slot=drop_slot, progress=_progress)
            if left:
                console.print(
                    f"[yellow]replication slot {left} is kept[/yellow] (it retains WAL until dropped): "
                    f"resume with the same slot.name, or drop it with "
                    f"`select pg_drop_replication_slot('{left}')`"
                )
            console.print(f"[green]{name}[/green] deleted")
