"""The ``omnistream`` command line.

Each command's module is imported only when that command runs: a long-running process (the watchdog, a
simulator) then carries only what it uses, and ``omnistream status`` does not load Kafka, Arrow, dbt and
Faker just to start. ``COMMANDS`` is the one list of the core's own commands.

Commands built on the core (the simulators, the producers) plug in the way dbt adapters and Airflow
providers do: an entry point in the group ``omnistream.commands`` names a Typer app or a command function
(``simulate = "simulators.cli:simulate_app"``). The core never imports them: it reads the entry points
only when asked for a command it does not have itself, and loads a plug-in's module only when that command
is wanted.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import logging
from typing import Any

import typer
from pydantic import ValidationError

# Typer carries its own copy of click; its commands and usage errors are of these classes, not click's.
from typer._click import Context
from typer._click.exceptions import NoArgsIsHelpError, UsageError
from typer.core import TyperCommand, TyperGroup

from omnistream.errors import OmnistreamError

# name → (module, attribute): a Typer app (a group of commands) or one command function.
COMMANDS: dict[str, tuple[str, str]] = {
    "up": ("omnistream.supervise.cli", "up"),
    "down": ("omnistream.supervise.cli", "down"),
    "status": ("omnistream.supervise.cli", "status"),
    "logs": ("omnistream.supervise.cli", "logs"),
    "reconcile": ("omnistream.reconcile", "reconcile_command"),
    "demo": ("omnistream.demo_cli", "demo"),
    "stack": ("omnistream.stack.cli", "stack_app"),
    "connect": ("omnistream.connect.cli", "connect_app"),
    "sink": ("omnistream.sink.cli", "sink_app"),
    "replay": ("omnistream.replay.cli", "replay_app"),
    "topics": ("omnistream.inspect.cli", "topics_app"),
    "dbt": ("omnistream.warehouse.cli", "dbt_app"),
    "supervise": ("omnistream.supervise.cli", "supervise_app"),
}
HIDDEN = {"supervise"}
PLUGIN_GROUP = "omnistream.commands"


def settings_problem(exc: ValidationError) -> str:
    """One line naming the environment variable that holds the bad value, e.g. ``OMNISTREAM_KAFKA__PORT``."""
    first = exc.errors()[0]
    variable = "OMNISTREAM_" + "__".join(str(part).upper() for part in first["loc"])
    problems = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"invalid setting {variable}={first.get('input')!r}: {first['msg']}{problems}"


@functools.cache
def plugin_commands() -> dict[str, importlib.metadata.EntryPoint]:
    """The installed plug-in commands by name; a name the core has itself stays the core's."""
    found = importlib.metadata.entry_points(group=PLUGIN_GROUP)
    return {entry.name: entry for entry in found if entry.name not in COMMANDS}


def app_commands() -> list[str]:
    """Every command the CLI offers: the core's own, then the plug-ins' by name."""
    return [*COMMANDS, *sorted(plugin_commands())]


def _load_plugin(entry: importlib.metadata.EntryPoint) -> Any:
    """The object a plug-in's entry point names, or an error saying which plug-in failed and why."""
    try:
        return entry.load()
    except Exception as exc:  # any failure to import is the plug-in's, reported the same way
        origin = f" (from {entry.dist.name} {entry.dist.version})" if entry.dist else ""
        raise OmnistreamError(
            f"command {entry.name!r} could not be loaded: {entry.value}{origin} raised "
            f"{type(exc).__name__}: {exc}"
        ) from exc


class BrokenPlugin(TyperCommand):
    """Stands in for a plug-in whose module failed to import: help lists why, running it fails on one line."""

    def __init__(self, name: str, problem: OmnistreamError) -> None:
        super().__init__(name, help=str(problem), short_help=f"(broken plug-in) {problem}")
        self.problem = problem

    def make_context(self, *args: Any, **kwargs: Any) -> Context:
        # Before parsing: the arguments were meant for a command that is not there.
        raise self.problem


def _load(name: str) -> Any:
    if name in COMMANDS:
        module, attribute = COMMANDS[name]
        return _as_command(name, getattr(importlib.import_module(module), attribute))
    try:
        target = _load_plugin(plugin_commands()[name])
    except OmnistreamError as problem:
        return BrokenPlugin(name, problem)
    return _as_command(name, target)


def _as_command(name: str, target: Any) -> Any:
    command: Any
    if isinstance(target, typer.Typer):
        command = typer.main.get_group(target)
    else:
        single = typer.Typer()
        single.command(name)(target)
        command = typer.main.get_command(single)
    command.name = name
    command.hidden = name in HIDDEN
    return command


class LazyCommands(TyperGroup):
    """A group whose subcommands are imported on first use, and where omnistream's errors become one line.

    Errors are mapped here, once: an :class:`OmnistreamError` prints ``error: <message>`` and exits with its
    code; a bad argument to a subcommand and an invalid ``OMNISTREAM_…`` setting are usage errors (2), one
    line each. Anything else is a bug and keeps its traceback.
    """

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except OmnistreamError as exc:
            typer.secho(f"error: {exc}", fg="red", err=True)
            raise typer.Exit(exc.exit_code) from None
        except ValidationError as exc:
            typer.secho(f"error: {settings_problem(exc)}", fg="red", err=True)
            raise typer.Exit(2) from None
        except NoArgsIsHelpError:
            raise  # a group called bare: its help is shown
        except UsageError as exc:
            where = f" (see {exc.ctx.command_path} --help)" if exc.ctx is not None else ""
            typer.secho(f"error: {exc.format_message()}{where}", fg="red", err=True)
            raise typer.Exit(exc.exit_code) from None

    def list_commands(self, ctx: Any) -> list[str]:
        return app_commands()

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        if cmd_name not in COMMANDS and cmd_name not in plugin_commands():
            return None
        if cmd_name not in self.commands:
            self.commands[cmd_name] = _load(cmd_name)
        return self.commands[cmd_name]


app = typer.Typer(
    cls=LazyCommands,
    help="omnistream: an omnichannel retailer's sources, streamed into one warehouse.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)


def _print_version(asked: bool) -> None:
    if asked:
        typer.echo(f"omnistream {importlib.metadata.version('omnistream')}")
        raise typer.Exit()


@app.callback()
def main(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log at DEBUG level."),
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # Client libraries log every request at INFO; that drowns the pipeline's own messages.
    for noisy in ("httpx", "httpx2", "httpcore", "urllib3", "google"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbose else logging.WARNING)
