"""The ``omnistream`` command line."""

from __future__ import annotations

import logging

import typer

from omnistream.stack.cli import stack_app
from simulators.cli import simulate_app

app = typer.Typer(
    help="omnistream: an omnichannel retailer's sources, streamed into one warehouse.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
app.add_typer(stack_app, name="stack")
app.add_typer(simulate_app, name="simulate")


@app.callback()
def main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log at DEBUG level.")) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # Client libraries log every request at INFO; that drowns the pipeline's own messages.
    for noisy in ("httpx", "httpcore", "urllib3", "google"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbose else logging.WARNING)
