"""The ``omnistream`` command line.

Each command's module is imported only when that command runs: a long-running process (the watchdog, a
simulator) then carries only what it uses, and ``omnistream status`` does not load Kafka, Arrow, dbt and
Faker just to start. ``COMMANDS`` is the one list of what the CLI offers.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

import typer
from typer.core import TyperGroup

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
    """A group whose subcommands are imported on first use."""

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


@app.callback()
def main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log at DEBUG level.")) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # Client libraries log every request at INFO; that drowns the pipeline's own messages.
    for noisy in ("httpx", "httpx2", "httpcore", "urllib3", "google"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbose else logging.WARNING)
