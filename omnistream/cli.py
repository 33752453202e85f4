"""The ``omnistream`` command line.

Each command's module is imported only when that command runs: a long-running process (the watchdog, a
simulator) then carries only what it uses, and ``omnistream status`` does not load Kafka, Arrow, dbt and
Faker just to start. ``COMMANDS`` is the one list of what the CLI offers.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
from typing import Any

import typer
from pydantic import ValidationError
from typer.core import TyperGroup

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
    "simulate": ("simulators.cli", "simulate_app"),
    "produce": ("producers.cli", "produce_app"),
    "sink": ("omnistream.sink.cli", "sink_app"),
    "replay": ("omnistream.replay.cli", "replay_app"),
    "topics": ("omnistream.inspect.cli", "topics_app"),
    "dbt": ("omnistream.warehouse.cli", "dbt_app"),
    "supervise": ("omnistream.supervise.cli", "supervise_app"),
}
HIDDEN = {"supervise"}


def settings_problem(exc: ValidationError) -> str:
    """One line naming the environment variable that holds the bad value, e.g. ``OMNISTREAM_KAFKA__PORT``."""
    first = exc.errors()[0]
    variable = "OMNISTREAM_" + "__".join(str(part).upper() for part in first["loc"])
    problems = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"invalid setting {variable}={first.get('input')!r}: {first['msg']}{problems}"


def _load(name: str) -> Any:
    module, attribute = COMMANDS[name]
    target = getattr(importlib.import_module(module), attribute)
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
    code; an invalid ``OMNISTREAM_…`` setting is a usage error (2). Anything else is a bug and keeps its
    traceback.
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

    def list_commands(self, ctx: Any) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        if cmd_name not in COMMANDS:
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
