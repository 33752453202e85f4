"""``omnistream demo``: the whole pipeline on the local stack, with a report."""

from __future__ import annotations

import typer
from rich.console import Console

from omnistream.demo import SCALES, Demo, report_lines, write_report
from omnistream.settings import get_settings

console = Console()


def demo(
    scale: str = typer.Option(
        "small", "--scale", help=f"One of {', '.join(SCALES)} (full: 6M history rows)."
    ),
    seed: int = typer.Option(42, "--seed"),
) -> None:
    """Run every source through Kafka and the landing zone into the marts, then reconcile and report."""
    if scale not in SCALES:
        raise typer.BadParameter(f"choose one of {', '.join(SCALES)}", param_hint="--scale")
    settings = get_settings()
    report = Demo(settings, SCALES[scale], seed, console.print).run()
    for line in report_lines(report):
        console.print(line, markup=False, highlight=False)
    write_report(report, settings.stack.state_dir / "demo-report.json")
    console.print(
        "\nThe stack is still up for inspection: `omnistream topics list`, `omnistream stack status`."
    )
    console.print("Stop it with `.venv/bin/omnistream stack down` (add --purge to delete its data).")
    if report.mismatches:
        raise typer.Exit(1)
