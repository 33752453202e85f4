"""``omnistream dbt …``: build the warehouse and load the history."""

from __future__ import annotations

from pathlib import Path

import typer

from omnistream.settings import get_settings
from omnistream.warehouse.dbt import TARGETS, DbtError, DbtRun, run_dbt

dbt_app = typer.Typer(help="The warehouse: dbt (staging → intermediate → marts) and the history load.")

PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True}
TARGET = typer.Option("local", "--target", "-t", help=f"dbt target: one of {', '.join(TARGETS)}.")
DUCKDB = typer.Option(
    None, "--duckdb", help="DuckDB file (default: <state dir>/warehouse/omnistream.duckdb)."
)
LANDING = typer.Option(None, "--landing", help="Landing root (default: <state dir>/landing).")
HISTORY = typer.Option(
    None,
    "--history",
    help="History dataset: a directory or gs://bucket/history (default: the simulator's local output if "
    "there is one, else the bucket).",
)


def _run(
    ctx: typer.Context,
    command: list[str],
    target: str,
    duckdb: Path | None,
    landing: Path | None,
    history: str | None,
) -> None:
    run = DbtRun(target=target, duckdb_path=duckdb, landing_root=landing, history_root=history)
    try:
        result = run_dbt([*command, *ctx.args], run, capture=False, check=False)
    except DbtError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from exc
    raise typer.Exit(result.returncode)


@dbt_app.command("build", context_settings=PASS_THROUGH)
def build(
    ctx: typer.Context,
    target: str = TARGET,
    duckdb: Path | None = DUCKDB,
    landing: Path | None = LANDING,
    history: str | None = HISTORY,
) -> None:
    """`dbt build`: models, snapshots, seeds and tests; extra arguments go to dbt (e.g. --select marts)."""
    _run(ctx, ["build"], target, duckdb, landing, history)


@dbt_app.command("freshness", context_settings=PASS_THROUGH)
def freshness(
    ctx: typer.Context,
    target: str = TARGET,
    duckdb: Path | None = DUCKDB,
    landing: Path | None = LANDING,
    history: str | None = HISTORY,
) -> None:
    """`dbt source freshness`: how long ago each landed topic last received a record."""
    _run(ctx, ["source", "freshness"], target, duckdb, landing, history)


@dbt_app.command("run-dbt", context_settings=PASS_THROUGH)
def run_any(
    ctx: typer.Context,
    target: str = TARGET,
    duckdb: Path | None = DUCKDB,
    landing: Path | None = LANDING,
    history: str | None = HISTORY,
) -> None:
    """Any dbt command with the warehouse's environment: `omnistream dbt run-dbt test --select staging`."""
    if not ctx.args:
        typer.echo("say which dbt command to run, e.g. `omnistream dbt run-dbt test`", err=True)
        raise typer.Exit(2)
    _run(ctx, [], target, duckdb, landing, history)


@dbt_app.command("load-history")
def load_history(
    target: str = TARGET,
    history: str | None = HISTORY,
    duckdb: Path | None = DUCKDB,
    stage_url: str | None = typer.Option(
        None, "--stage-url", help="Snowflake: the external stage's URL (default: gcs://<bucket>/history/)."
    ),
    storage_integration: str | None = typer.Option(
        None, "--storage-integration", help="Snowflake: the storage integration that grants the stage access."
    ),
) -> None:
    """Load the history's Parquet files into the warehouse, each file once (COPY INTO on Snowflake)."""
    from omnistream.warehouse.dbt import default_duckdb_path, default_history_root
    from omnistream.warehouse.history_load import (
        SnowflakeTarget,
        list_history_files,
        load_history_duckdb,
        load_history_snowflake,
    )

    settings = get_settings()
    root = history or default_history_root(settings)
    files = list_history_files(root, settings.gcs)
    if target == "snowflake":
        from omnistream.warehouse.snowflake import connect

        url = stage_url or f"gcs://{settings.gcs.bucket}/history/"
        with connect() as con:
            report = load_history_snowflake(
                con.cursor(), SnowflakeTarget(url, storage_integration), [f.name for f in files]
            )
    else:
        import duckdb as duckdb_module

        path = duckdb or default_duckdb_path(settings)
        path.parent.mkdir(parents=True, exist_ok=True)
        with duckdb_module.connect(str(path)) as con:
            report = load_history_duckdb(con, files, settings.gcs)
    typer.echo(f"{report.loaded} files loaded ({report.rows:,} rows), {report.skipped} already loaded")
