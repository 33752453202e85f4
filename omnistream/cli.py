"""The ``omnistream`` command line."""

from __future__ import annotations

import logging

import typer

from omnistream.connect.cli import connect_app
from omnistream.demo_cli import demo
from omnistream.inspect.cli import topics_app
from omnistream.replay.cli import replay_app
from omnistream.sink.cli import sink_app
from omnistream.stack.cli import stack_app
from omnistream.warehouse.cli import dbt_app
from producers.cli import produce_app
from simulators.cli import simulate_app

app = typer.Typer(
    help="omnistream: an omnichannel retailer's sources, streamed into one warehouse.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
app.add_typer(stack_app, name="stack")
app.add_typer(connect_app, name="connect")
app.add_typer(simulate_app, name="simulate")
app.add_typer(produce_app, name="produce")
app.add_typer(sink_app, name="sink")
app.add_typer(replay_app, name="replay")
app.add_typer(topics_app, name="topics")
app.add_typer(dbt_app, name="dbt")
app.command("demo")(demo)


@app.callback()
def main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log at DEBUG level.")) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # Client libraries log every request at INFO; that drowns the pipeline's own messages.
    for noisy in ("httpx", "httpx2", "httpcore", "urllib3", "google"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbose else logging.WARNING)
