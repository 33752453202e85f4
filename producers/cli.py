"""``omnistream produce …``: the Python producers that feed Kafka."""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType
from typing import Any

import typer
from rich.console import Console

produce_app = typer.Typer(help="Run a producer: a source into its Kafka topics.", no_args_is_help=True)
log = logging.getLogger(__name__)
err_console = Console(stderr=True)

ALL_ENTITIES = "customers,products,stores"


def metrics_port_option(setting: str) -> Any:
    """``--metrics-port``, defaulting to ``settings.metrics.<setting>``."""
    return typer.Option(
        None,
        "--metrics-port",
        min=0,
        max=65535,
        help=f"Serve Prometheus metrics on this port (default: settings.metrics.{setting}); 0: off.",
    )


@produce_app.command("masterdata")
def produce_masterdata(
    once: bool = typer.Option(False, "--once", help="Take one snapshot and exit (the default)."),
    every: str | None = typer.Option(
        None,
        "--every",
        metavar="DURATION",
        help="Take a snapshot every DURATION (30s, 5m, 1h30m) until interrupted.",
    ),
    entities: str = typer.Option(ALL_ENTITIES, "--entities", help="Comma-separated entities to snapshot."),
    page_size: int = typer.Option(500, "--page-size", min=1, max=1000, help="Items per API page."),
    max_attempts: int = typer.Option(
        8, "--max-attempts", min=1, help="Tries per API request (429, 5xx, connection errors) before failing."
    ),
    republish: bool = typer.Option(
        False, "--republish", help="Publish every entity, not only new and changed ones (re-seeds consumers)."
    ),
    topic_prefix: str = typer.Option(
        "", "--topic-prefix", help="Put this in front of every topic name (side-by-side environments)."
    ),
    metrics_port: int | None = metrics_port_option("masterdata_producer_port"),
) -> None:
    """Snapshot customers, products and stores from the master-data API into compacted topics.

    Each snapshot walks every collection in full and publishes new and changed entities keyed by id.

    Once a walk is complete, it publishes a tombstone for every id that disappeared.

    The API's URL and token: OMNISTREAM_API__HOST, OMNISTREAM_API__PORT, OMNISTREAM_API__TOKEN.
    """
    # Imported here so that `omnistream --help` does not load Kafka and Avro.
    from omnistream.errors import OmnistreamError
    from omnistream.metrics import MetricsEndpointError, serve_metrics
    from omnistream.settings import get_settings
    from producers.masterdata.client import ApiClient, RetryPolicy
    from producers.masterdata.entities import select_entities, topic_names
    from producers.masterdata.producer import MasterDataMetrics, MasterDataProducer, SnapshotOptions
    from producers.masterdata.progress import SnapshotDisplay
    from producers.masterdata.run import parse_duration, run_snapshots

    if once and every is not None:
        raise typer.BadParameter("choose --once or --every, not both", param_hint="--once / --every")
    try:
        every_s = parse_duration(every) if every is not None else None
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--every") from exc
    try:
        specs = select_entities(entities.split(","))
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--entities") from exc

    settings = get_settings()
    stop = threading.Event()

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        # A supervisor's stop request ends the loop like Ctrl-C: the current snapshot is abandoned,
        # which is safe (no tombstones from a partial walk), and queued records are flushed.
        stop.set()
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    display = SnapshotDisplay()
    options = SnapshotOptions(page_size=page_size, topics=topic_names(topic_prefix), republish=republish)
    metrics = MasterDataMetrics()
    try:
        token = settings.api.token.get_secret_value()
        with (
            serve_metrics(metrics.registry, settings, "masterdata_producer_port", metrics_port),
            ApiClient(settings.api.url, token, RetryPolicy(max_attempts)) as client,
            MasterDataProducer(settings, client, options, metrics) as producer,
        ):
            run_snapshots(producer, specs, every_s, display.update, display.report, stop)
    except KeyboardInterrupt:
        display.stop()
        err_console.print("stopped; a snapshot in progress published no tombstones")
        # SIGTERM is an orderly stop (exit 0); Ctrl-C keeps the shell's convention for an interrupt.
        raise typer.Exit(0 if stop.is_set() else 130) from None
    except OmnistreamError:
        display.stop()  # the CLI prints the error, on a line of its own
        raise
    except MetricsEndpointError as exc:
        display.stop()
        # soft_wrap: one line per error in a supervisor's log, whatever the terminal's width.
        err_console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None


@produce_app.command("emails")
def produce_emails(
    follow: bool = typer.Option(
        False,
        "--follow/--once",
        help="--once: produce what the mailbox holds and exit (the default); --follow: keep running and "
        "produce new mail as it arrives (IMAP IDLE, or polling).",
    ),
    batch_size: int = typer.Option(500, "--batch-size", min=1, help="Emails per Kafka transaction."),
    folder: str = typer.Option("INBOX", "--folder", help="Mailbox folder to read."),
    archive_folder: str = typer.Option(
        "Archive",
        "--archive-folder",
        help="Move each batch's emails to this folder once its transaction has committed (created if "
        "missing), so the folder read stays small.",
    ),
    no_archive: bool = typer.Option(False, "--no-archive", help="Leave produced emails in the folder."),
    mailbox_user: str | None = typer.Option(
        None, "--mailbox-user", help="IMAP login (default: settings.mail.mailbox_user)."
    ),
    topic: str | None = typer.Option(
        None, "--topic", help="Orders topic (default: stores.order_confirmations); dead letters: <topic>.dlq."
    ),
    checkpoint_topic: str | None = typer.Option(
        None,
        "--checkpoint-topic",
        help="Compacted checkpoint topic (default: _omnistream.email_checkpoints).",
    ),
    transactional_id: str | None = typer.Option(
        None, "--transactional-id", help="Kafka transactional.id (default: derived from the mailbox folder)."
    ),
    max_rate: float = typer.Option(
        0.0, "--max-rate", min=0.0, help="Produce at most this many emails per second; 0 = unlimited."
    ),
    idle: bool = typer.Option(True, "--idle/--poll", help="--follow: wait with IMAP IDLE, or poll."),
    poll_interval: float = typer.Option(5.0, "--poll-interval", min=0.1, help="Seconds between polls."),
    imap_retry_for: float = typer.Option(
        300.0, "--imap-retry-for", min=0.0, help="Seconds to keep retrying an unreachable IMAP server."
    ),
    metrics_port: int | None = metrics_port_option("email_producer_port"),
) -> None:
    """Produce the stores' order-confirmation emails (IMAP) to Kafka, exactly once.

    One Kafka transaction per batch: its orders, its dead letters (<topic>.dlq) and the mailbox checkpoint.
    Then the batch's emails are moved to the archive folder (unless --no-archive).

    The mailbox: OMNISTREAM_MAIL__HOST, __IMAP_PORT, __MAILBOX_USER and __MAILBOX_PASSWORD.
    """
    # Imported here so that `omnistream --help` does not load Kafka and Avro.
    from confluent_kafka import KafkaException

    from omnistream.metrics import MetricsEndpointError, serve_metrics
    from omnistream.settings import get_settings
    from omnistream.topics import EMAIL_CHECKPOINTS, STORE_ORDERS
    from producers.emails.producer import BatchReport, EmailProducer, EmailTopics, ProducerOptions, Progress

    settings = get_settings()
    mail = settings.mail
    if mailbox_user is not None:
        mail = mail.model_copy(update={"mailbox_user": mailbox_user})
    try:
        options = ProducerOptions(
            folder=folder,
            batch_size=batch_size,
            transactional_id=transactional_id,
            max_rate=max_rate,
            use_idle=idle,
            poll_interval_s=poll_interval,
            imap_retry_for_s=imap_retry_for,
            archive_folder=None if no_archive else archive_folder,
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--batch-size / --max-rate / --archive-folder") from exc
    topics = EmailTopics.for_orders(topic or STORE_ORDERS, checkpoint_topic or EMAIL_CHECKPOINTS)

    def show(report: BatchReport, progress: Progress) -> None:
        skipped = f", {report.skipped} expunged" if report.skipped else ""
        typer.echo(
            f"UIDs {report.first_uid}-{report.last_uid}: {report.produced} produced, "
            f"{report.dead_lettered} dead-lettered{skipped}  "
            f"(total {progress.produced} produced, {progress.dead_lettered} dead-lettered)"
        )

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        # Finish the batch in flight (its transaction commits with its checkpoint), then stop. A second
        # Ctrl-C stops at once: the open transaction is aborted by the next start, so nothing is lost.
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        err_console.print("stopping after the current batch (Ctrl-C again to stop now)")
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    producer = EmailProducer(settings, mail, topics, options, on_batch=show)
    endpoint = serve_metrics(producer.metrics.registry, settings, "email_producer_port", metrics_port)
    try:
        with endpoint, producer:
            typer.echo(
                f"{producer.mailbox} → {topics.orders} (dead letters {topics.dead_letters}), from UID "
                f"{producer.progress.last_uid + 1} (UIDVALIDITY {producer.progress.uidvalidity})"
            )
            progress = producer.follow(stop) if follow else producer.drain(stop)
    except (KafkaException, MetricsEndpointError) as exc:  # omnistream's own errors: the CLI maps them
        err_console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        err_console.print("interrupted; the next start aborts the batch left open and reads it again")
        raise typer.Exit(130) from None
    rate = (progress.produced + progress.dead_lettered) / progress.seconds if progress.seconds else 0.0
    typer.echo(
        f"done: {progress.produced} produced, {progress.dead_lettered} dead-lettered in {progress.batches} "
        f"batches ({rate:,.0f} emails/s); last UID {progress.last_uid} (UIDVALIDITY {progress.uidvalidity})"
    )
