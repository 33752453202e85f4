"""``omnistream sink``: land Kafka topics as Parquet files; ``omnistream sink status``: its lag."""

from __future__ import annotations

import json
import logging
import re
import signal
from dataclasses import asdict, replace
from pathlib import Path
from types import FrameType

import typer
from rich.console import Console
from rich.table import Table

from omnistream.settings import LandingSettings, get_settings
from omnistream.sink.compaction import CompactionPolicy
from omnistream.sink.consumer import LandingSink, SinkConfig
from omnistream.sink.lag import sink_status
from omnistream.sink.store import open_store
from omnistream.topics import PIPELINE_TOPICS

log = logging.getLogger(__name__)

sink_app = typer.Typer(
    help="Land Kafka topics as Parquet files, exactly once per (topic, partition, offset).",
    invoke_without_command=True,
)

TOPICS = typer.Option(
    None, "--topics", "-t", help="Topics to land (repeat or comma-separate); default: the pipeline topics."
)
DIRECTORY = typer.Option(None, "--dir", help="Landing directory (default: settings.landing.dir).")
BUCKET = typer.Option(None, "--bucket", help="A GCS bucket to land in (default: settings.landing.bucket).")
GROUP = typer.Option(None, "--group", help="Consumer group (default: settings.landing.group_id).")


def topic_list(topics: list[str] | None) -> list[str]:
    names = [t.strip() for arg in topics or [] for t in arg.split(",") if t.strip()]
    return names or list(PIPELINE_TOPICS)


def compaction_policy(landing: LandingSettings, flush_records: int) -> CompactionPolicy:
    """The settings' compaction, with "small" meaning a file the size limit did not cut."""
    return CompactionPolicy(
        min_files=landing.compact_files,
        small_records=flush_records,
        max_records=landing.compact_records,
        grace_seconds=landing.compact_grace_seconds,
        every_seconds=landing.compact_every_seconds,
    )


@sink_app.callback()
def sink(
    ctx: typer.Context,
    topics: list[str] | None = TOPICS,
    pattern: str | None = typer.Option(
        None, "--pattern", help="Land every topic matching this regex instead, e.g. '^onlinedb\\.'."
    ),
    directory: Path | None = DIRECTORY,
    bucket: str | None = BUCKET,
    group: str | None = GROUP,
    flush_records: int | None = typer.Option(None, "--flush-records", min=1, help="Most records per file."),
    flush_seconds: float | None = typer.Option(
        None, "--flush-seconds", min=0.0, help="Most seconds a record waits in memory."
    ),
    drain: bool = typer.Option(False, "--drain", help="Exit once all assigned partitions are landed."),
    instance_id: str | None = typer.Option(
        None,
        "--instance-id",
        help="Static group membership: restarted under the same id, a sink gets its partitions back at once.",
    ),
    metrics_port: int | None = typer.Option(
        None,
        "--metrics-port",
        min=0,
        max=65535,
        help="Serve Prometheus metrics on this port (default: settings.metrics.sink_port); 0 turns them off.",
    ),
) -> None:
    """Run a landing sink (a member of the consumer group) until Ctrl-C or SIGTERM."""
    if ctx.invoked_subcommand is not None:
        return
    from omnistream.metrics import MetricsEndpointError, serve_metrics
    from omnistream.sink.consumer import SinkMetrics

    settings = get_settings()
    if pattern:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise typer.BadParameter(f"not a regex: {exc}", param_hint="--pattern") from exc
    config = SinkConfig(
        group_id=group or settings.landing.group_id,
        topics=topic_list(topics),
        pattern=pattern,
        flush_records=flush_records or settings.landing.flush_records,
        flush_seconds=settings.landing.flush_seconds if flush_seconds is None else flush_seconds,
        drain=drain,
        instance_id=instance_id,
    )
    config = replace(config, compaction=compaction_policy(settings.landing, config.flush_records))
    metrics = SinkMetrics()
    landing = LandingSink(
        settings, open_store(settings, directory=directory, bucket=bucket), config, metrics=metrics
    )

    def stop(signum: int, frame: FrameType | None) -> None:
        log.info("signal %d: flushing and stopping", signum)
        landing.request_stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        with serve_metrics(metrics.registry, settings, "sink_port", metrics_port):
            stats = landing.run()
    except MetricsEndpointError as exc:  # not one of omnistream's own errors (the CLI group maps those)
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(1) from exc
    typer.echo(
        f"landed {stats.records} record(s) in {stats.files} file(s), {stats.dead_letters} dead letter(s)"
    )


@sink_app.command("status")
def status(
    topics: list[str] | None = TOPICS,
    directory: Path | None = DIRECTORY,
    bucket: str | None = BUCKET,
    group: str | None = GROUP,
    as_json: bool = typer.Option(False, "--json", help="One JSON object per partition."),
) -> None:
    """Lag per partition in records after the group's committed offset, and how far the files reach.

    Records as a read_committed consumer sees them (transaction markers are no lag); "≤ N" is an upper
    bound, for a partition too far behind to count.
    """
    from omnistream.kafka.record_counts import shown

    settings = get_settings()
    group_id = group or settings.landing.group_id
    store = open_store(settings, directory=directory, bucket=bucket)
    rows = sink_status(settings, group_id, topic_list(topics), store)
    if as_json:
        for row in rows:
            typer.echo(json.dumps({**asdict(row), "group": group_id}))
        return
    table = Table(title=f"landing sink {group_id} → {store.root}")
    for column in ("topic", "partition", "start", "end", "committed", "lag", "landed to", "unlanded"):
        table.add_column(column, justify="left" if column == "topic" else "right")
    for row in rows:
        table.add_row(
            row.topic,
            str(row.partition),
            str(row.start),
            str(row.end),
            "-" if row.committed is None else str(row.committed),
            shown(row.lag, row.exact),
            "-" if row.landed_next is None else str(row.landed_next),
            shown(row.unlanded, row.exact),
        )
    if not rows:
        typer.echo("none of these topics exist: " + ", ".join(topic_list(topics)))
        return
    Console().print(table)
