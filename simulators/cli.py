"""``omnistream simulate …``: run one source simulator."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import typer

from omnistream.errors import Unreachable
from omnistream.settings import get_settings

simulate_app = typer.Typer(
    help="Generate a source: the master-data API, online orders, store emails, history.", no_args_is_help=True
)

SEED = typer.Option(42, "--seed", help="Same seed, same data.")
OUT = typer.Option(
    None, "--out", help="Where to write files and the manifest (default: <state dir>/simulators/<source>)."
)


def out_dir(out: Path | None, source: str) -> Path:
    return out or get_settings().stack.state_dir / "simulators" / source


@simulate_app.command("api")
def simulate_api(
    seed: int = SEED,
    out: Path | None = OUT,
    host: str | None = typer.Option(None, "--host", help="Bind address (default: settings.api.host)."),
    port: int | None = typer.Option(None, "--port", help="Port (default: settings.api.port)."),
    drift: bool = typer.Option(False, "--drift/--no-drift", help="Change the data while serving."),
    drift_every: float = typer.Option(5.0, "--drift-every", min=0.001, help="Seconds between drift steps."),
    faults: float = typer.Option(
        0.0,
        "--faults",
        min=0.0,
        max=1.0,
        help="Share of API requests answered 500, 429 or slowly; a third each.",
    ),
    duration: float = typer.Option(0.0, "--duration", min=0.0, help="Seconds to serve; 0 = until stopped."),
) -> None:
    """Serve the master-data REST API (customers, products, stores) from CSV files, written if missing."""
    from simulators.api import FaultConfig, serve
    from simulators.masterdata import DriftConfig

    api = get_settings().api
    serve(
        out_dir(out, "masterdata"),
        host or api.host,
        port if port is not None else api.port,
        api.token.get_secret_value(),
        seed,
        drift=DriftConfig(seed=seed, every_s=drift_every) if drift else None,
        faults=FaultConfig.from_rate(faults, seed=seed) if faults > 0 else None,
        duration_s=duration,
    )


HISTORY_END_DATE = typer.Option(
    None,
    "--end-date",
    formats=["%Y-%m-%d"],
    help="First day not covered (the day live sources begin); default: today (UTC).",
)


@simulate_app.command("history")
def simulate_history(
    seed: int = SEED,
    rows: int = typer.Option(6_000_000, "--rows", min=1, help="Order lines to generate, both channels."),
    out: Path | None = OUT,
    end_date: datetime | None = HISTORY_END_DATE,
    upload: bool = typer.Option(True, "--upload/--no-upload", help="Upload the files to the GCS bucket."),
    prefix: str = typer.Option("history/", "--prefix", help="Object name prefix in the bucket."),
) -> None:
    """Write ten years of order lines as Parquet (year/month partitions) and upload them idempotently."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from omnistream.gcs import ensure_bucket, storage_client, upload_tree
    from simulators.history import generate_history

    end = end_date.date() if end_date else datetime.now(UTC).date()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns) as progress:
        task = progress.add_task(f"generating {rows:,} lines", total=None)
        result = generate_history(
            out_dir(out, "history"),
            seed=seed,
            rows=rows,
            end=end,
            on_month=lambda done, total: progress.update(task, completed=done, total=total),
        )
    typer.echo(
        f"wrote {result.rows:,} lines in {result.orders:,} orders from {result.start} to {result.end} "
        f"(exclusive), {len(result.files)} files under {result.root}; manifest {result.manifest_path}"
    )
    if not upload:
        return
    gcs = get_settings().gcs
    bucket = ensure_bucket(storage_client(gcs), gcs.bucket)
    with Progress(*columns) as progress:
        task = progress.add_task(f"uploading to gs://{gcs.bucket}/{prefix}", total=len(result.files))
        report = upload_tree(
            bucket, result.root, prefix=prefix, on_file=lambda _path, _sent: progress.advance(task)
        )
    typer.echo(
        f"gs://{gcs.bucket}/{prefix}: {report.uploaded} uploaded ({report.bytes_uploaded:,} bytes), "
        f"{report.skipped} unchanged"
    )


FOREVER = "0 = until stopped by SIGTERM or SIGINT, which ends it between two operations"


def _check_bounded(rate: float, count: int | None) -> None:
    if rate <= 0 and count is None:
        raise typer.BadParameter("an unthrottled run (--rate 0) needs --count", param_hint="--count")


def _run_simulator(run: Callable[[], Path]) -> None:
    """Run a journalled simulator; if its server stays away, say that the journal is still the truth."""
    try:
        path = run()
    except Unreachable as exc:  # the server stayed unreachable past the retries
        raise Unreachable(f"{exc}; the journal covers everything committed before it") from exc
    typer.echo(f"manifest {path}")


@simulate_app.command("orders")
def simulate_orders_command(
    seed: int = typer.Option(
        42, "--seed", help="Same seed, same data; the n-th run in an out dir plays seed+n."
    ),
    rate: float = typer.Option(
        5.0, "--rate", min=0.0, help="New orders per second; 0 = unthrottled (needs --count)."
    ),
    duration: float = typer.Option(
        60.0, "--duration", min=0.0, help=f"Seconds to write new orders for; {FOREVER}."
    ),
    count: int | None = typer.Option(None, "--count", min=0, help="New orders (overrides rate x duration)."),
    schema: str = typer.Option("shop", "--schema", help="Postgres schema to write into."),
    schema_only: bool = typer.Option(False, "--schema-only", help="Create the tables, write no orders."),
    out: Path | None = OUT,
) -> None:
    """Write online orders into PostgreSQL and move them through their lifecycle.

    Each run journals what PostgreSQL committed in <out>/runs/; <out>/manifest.json sums up every run.
    """
    from simulators.orders import OrdersConfig, simulate_orders

    if schema_only:
        import psycopg

        from omnistream.shop_schema import ensure_shop_schema

        with psycopg.connect(get_settings().postgres.app_dsn()) as conn:
            ensure_shop_schema(conn, schema=schema)
        return

    _check_bounded(rate, count)
    config = OrdersConfig(seed=seed, rate=rate, duration=duration, count=count, schema=schema)
    dsn = get_settings().postgres.app_dsn()
    _run_simulator(lambda: simulate_orders(dsn, config, out_dir(out, "orders")))


@simulate_app.command("emails")
def simulate_emails_command(
    seed: int = typer.Option(
        42, "--seed", help="Same seed, same data; the n-th run in an out dir plays seed+n."
    ),
    rate: float = typer.Option(
        5.0, "--rate", min=0.0, help="Emails per second; 0 = unthrottled (needs --count)."
    ),
    duration: float = typer.Option(60.0, "--duration", min=0.0, help=f"Seconds to send for; {FOREVER}."),
    count: int | None = typer.Option(None, "--count", min=0, help="Emails (overrides rate x duration)."),
    anomaly_share: float = typer.Option(
        0.05,
        "--anomaly-share",
        min=0.0,
        max=1.0,
        help="Share of emails that are anomalies: duplicates, QP/base64, non-ASCII, malformed; a sixth each.",
    ),
    start_number: int = typer.Option(
        1,
        "--start-number",
        min=1,
        help="Lowest first order number of every store (a run continues after the earlier runs' numbers).",
    ),
    to: str | None = typer.Option(None, "--to", help="Recipient (default: the confirmations mailbox)."),
    out: Path | None = OUT,
) -> None:
    """Send in-store order-confirmation emails over SMTP, one per purchase at a branch store.

    Each run journals what the server accepted in <out>/runs/; <out>/manifest.json sums up every run.
    """
    from simulators.email_sender import EmailsConfig, simulate_emails

    _check_bounded(rate, count)
    config = EmailsConfig(
        seed=seed,
        rate=rate,
        duration=duration,
        count=count,
        anomaly_share=anomaly_share,
        start_number=start_number,
        recipient=to,
    )
    mail = get_settings().mail
    _run_simulator(lambda: simulate_emails(mail, config, out_dir(out, "emails")))
