"""``omnistream dbt …``: build the warehouse and load the history."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from omnistream.errors import UsageError
from omnistream.settings import STAGE_ACCESS, get_settings
from omnistream.warehouse.dbt import TARGETS, DbtRun, run_dbt

if TYPE_CHECKING:
    pass

dbt_app = typer.Typer(help="The warehouse: dbt (staging → intermediate → marts) and the history load.")

PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True}
TARGET = typer.Option(
    None, "--target", "-t", help=f"dbt target: one of {', '.join(TARGETS)} (default: dbt.target, local)."
)
DUCKDB = typer.Option(
    None,
    "--duckdb",
    help="DuckDB file (default: dbt.duckdb_path, else <state dir>/warehouse/omnistream.duckdb).",
)
LANDING = typer.Option(
    None, "--landing", help="Landing root (default: dbt.landing_root, else where the sink lands)."
)
HISTORY = typer.Option(
    None,
    "--history",
    help="History dataset: a directory (read in place) or gs://bucket/history (loaded into the warehouse "
    "first, each file once, as load-history does); default: dbt.history_root, else the simulator's local "
    "output if there is one, else the bucket.",
)


def _run(
    ctx: typer.Context,
    command: list[str],
    target: str | None,
    duckdb: Path | None,
    landing: Path | None,
    history: str | None,
) -> None:
    run = DbtRun(target=target, duckdb_path=duckdb, landing_root=landing, history_root=history)
    result = run_dbt([*command, *ctx.args], run, capture=False, check=False)
    raise typer.Exit(result.returncode)


@dbt_app.command("build", context_settings=PASS_THROUGH)
def build(
    ctx: typer.Context,
    target: str | None = TARGET,
    duckdb: Path | None = DUCKDB,
    landing: Path | None = LANDING,
    history: str | None = HISTORY,
) -> None:
    """`dbt build`: models, snapshots, seeds and tests; extra arguments go to dbt (e.g. --select marts)."""
    _run(ctx, ["build"], target, duckdb, landing, history)


@dbt_app.command("freshness", context_settings=PASS_THROUGH)
def freshness(
    ctx: typer.Context,
    target: str | None = TARGET,
    duckdb: Path | None = DUCKDB,
    landing: Path | None = LANDING,
    history: str | None = HISTORY,
) -> None:
    """`dbt source freshness`: how long ago each landed topic last received a record."""
    _run(ctx, ["source", "freshness"], target, duckdb, landing, history)


@dbt_app.command("run-dbt", context_settings=PASS_THROUGH)
def run_any(
    ctx: typer.Context,
    target: str | None = TARGET,
    duckdb: Path | None = DUCKDB,
    landing: Path | None = LANDING,
    history: str | None = HISTORY,
) -> None:
    """Any dbt command with the warehouse's environment: `omnistream dbt run-dbt test --select staging`."""
    if not ctx.args:
        raise UsageError("say which dbt command to run, e.g. `omnistream dbt run-dbt test`")
    _run(ctx, [], target, duckdb, landing, history)


@dbt_app.command("load-history")
def load_history(
    target: str | None = TARGET,
    history: str | None = typer.Option(
        None,
        "--history",
        help="History dataset: gs://bucket/prefix or a directory (default: history.root, else "
        "gs://<gcs.bucket>/history).",
    ),
    duckdb: Path | None = DUCKDB,
    stage_url: str | None = typer.Option(
        None, "--stage-url", help="Snowflake: the external stage's URL (default: gcs://<bucket>/history/)."
    ),
    stage_access: str | None = typer.Option(
        None,
        "--stage-access",
        help="Snowflake: `integration` (external stage granted by a storage integration; the default) or "
        "`internal` (PUT into an internal stage, reading the bucket with this process's Google credentials).",
    ),
    storage_integration: str | None = typer.Option(
        None,
        "--storage-integration",
        help="Snowflake: the storage integration that grants the external stage the bucket "
        "(default: history.storage_integration, OMNISTREAM_HISTORY_GCS).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Load the history's Parquet files into the warehouse, each file once (COPY INTO on Snowflake).

    A progress bar goes to stderr when it is a terminal."""
    import json

    from omnistream.warehouse.dbt import adapter, check_target
    from omnistream.warehouse.history_load import SnowflakeTarget, list_history_files, load_history

    settings = get_settings()
    target = check_target(target or settings.dbt.target)
    if stage_access not in (None, *STAGE_ACCESS):
        raise UsageError(f"--stage-access is `integration` or `internal`, not {stage_access!r}")
    stage = None
    if adapter(target) == "snowflake":
        stage = SnowflakeTarget(
            stage_url=stage_url or settings.history.stage(settings.gcs),
            storage_integration=storage_integration or settings.history.storage_integration,
            stage_access=stage_access or settings.history.stage_access,
        )
    root = history or settings.history.dataset(settings.gcs)
    files = list_history_files(root, settings.gcs)
    with _progress(f"loading {root}", len(files)) as advance:
        report = load_history(
            files, settings, target=target, duckdb_path=duckdb, stage=stage, on_files=advance
        )
    if as_json:
        typer.echo(json.dumps({"source": root, "target": target, **dataclasses.asdict(report)}))
    else:
        typer.echo(
            f"{root}: {report.loaded} files loaded ({report.rows:,} rows), {report.skipped} already loaded"
        )


@contextlib.contextmanager
def _progress(description: str, total: int) -> Iterator[Callable[[int], None]]:
    """A bar on stderr (the style of `simulate history`); nothing when stderr is not a terminal."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, disable=not console.is_terminal) as progress:
        task = progress.add_task(description, total=total)
        yield lambda files: progress.advance(task, files)
