"""``omnistream replay``: land topics again from a point, or resend dead letters (``--dlq``)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from omnistream.replay.dead_letters import DEFAULT_MAX_ATTEMPTS, DeadLetterReplay, replay_dead_letters
from omnistream.replay.landing import PartitionReplay, ReplayPoint, plan_replay, replay
from omnistream.settings import get_settings
from omnistream.sink.store import open_store
from omnistream.topics import PIPELINE_TOPICS

replay_app = typer.Typer(
    help=(
        "Land topics again from the beginning, an offset or a time (the sink group must be stopped), "
        "or send dead letters back to their topics with --dlq."
    ),
    invoke_without_command=True,
)


TOPICS = typer.Option(None, "--topic", "-t", help="A topic to replay (repeatable).")
DIRECTORY = typer.Option(None, "--dir", help="Landing directory (default: settings.landing.dir).")


def _point(
    from_beginning: bool, offset: int | None, partition: int | None, from_time: str | None
) -> ReplayPoint:
    chosen = [from_beginning, offset is not None, from_time is not None]
    if sum(chosen) != 1:
        raise typer.BadParameter("give exactly one of --from-beginning, --offset N, --from-time ISO")
    if from_beginning:
        return ReplayPoint.beginning(partition)
    if offset is not None:
        return ReplayPoint(offset=offset, partition=partition)
    assert from_time is not None
    try:
        at = datetime.fromisoformat(from_time)
    except ValueError as exc:
        raise typer.BadParameter(f"not an ISO 8601 time: {from_time}", param_hint="--from-time") from exc
    if at.tzinfo is None:
        raise typer.BadParameter("give a time zone, e.g. 2026-11-25T08:00:00Z", param_hint="--from-time")
    return ReplayPoint(at=at, partition=partition)


def _show(plans: list[PartitionReplay], title: str) -> None:
    table = Table(title=title)
    for column in ("topic", "partition", "requested", "resumes at", "files deleted"):
        table.add_column(column, justify="left" if column == "topic" else "right")
    for p in plans:
        table.add_row(p.topic, str(p.partition), str(p.requested), str(p.effective), str(len(p.deleted)))
    Console().print(table)


def _show_dead_letters(report: DeadLetterReplay) -> None:
    """One row per record handled (resent, kept or given up), then a summary line."""
    would = "would be " if report.dry_run else ""
    if report.outcomes:
        table = Table(title=f"{report.dlq_topic}{' (dry run)' if report.dry_run else ''}")
        for column in ("record", "dead letter", "outcome", "attempt", "still failing because"):
            table.add_column(column, justify="right" if column in ("dead letter", "attempt") else "left")
        for o in report.outcomes:
            topic, partition, offset = o.origin
            table.add_row(
                f"{topic}/{partition}/{offset}",
                f"{o.dlq_partition}/{o.dlq_offset}",
                f"{would}{o.action}",
                f"{o.attempt} of {report.max_attempts}",
                o.reason,
            )
        Console(width=max(Console().width, 160)).print(table)
    typer.echo(
        f"{report.dlq_topic}: {'dry run, nothing written: ' if report.dry_run else ''}"
        f"{would}resent {report.resent} dead letter(s)"
        + "".join(f", {n} to {t}" for t, n in sorted(report.resent_to.items()))
        + f"; {would}kept {report.kept} still failing"
        + f"; {'would give' if report.dry_run else 'gave'} up on {report.gave_up}"
        + f" after {report.max_attempts} attempt(s)"
        + f"; skipped {report.duplicates} duplicate(s), {report.not_resendable} not from a Kafka record"
        + (f", {report.given_up_before} given up before" if report.given_up_before else "")
    )


@replay_app.callback()
def replay_command(
    topics: list[str] | None = TOPICS,
    all_topics: bool = typer.Option(False, "--all", help="Replay every pipeline topic."),
    from_beginning: bool = typer.Option(False, "--from-beginning", help="Replay from the first offset."),
    offset: int | None = typer.Option(None, "--offset", min=0, help="Replay from this offset."),
    partition: int | None = typer.Option(
        None, "--partition", min=0, help="Only this partition (default: all of them)."
    ),
    from_time: str | None = typer.Option(
        None, "--from-time", help="Replay from the first record at or after this ISO 8601 time."
    ),
    dlq_topic: str | None = typer.Option(
        None,
        "--dlq",
        help=(
            "Resend the dead letters of TOPIC (or of DLQ topic TOPIC.dlq) whose records the sink now "
            "decodes; keep the others in the DLQ, counting the attempt."
        ),
    ),
    max_attempts: int = typer.Option(
        DEFAULT_MAX_ATTEMPTS,
        "--max-attempts",
        min=1,
        help="With --dlq: give up on a record after this many replay attempts.",
    ),
    group: str | None = typer.Option(None, "--group", help="Sink group (default: settings.landing)."),
    directory: Path | None = DIRECTORY,
    bucket: str | None = typer.Option(None, "--bucket", help="Landing GCS bucket (default: settings)."),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Show what would be deleted (or, with --dlq, resent); change nothing."
    ),
) -> None:
    """Delete the landing files from the replay point on and reset the sink group; the next sink run
    lands those records again. A point inside a file snaps down to that file's first offset."""
    settings = get_settings()
    if dlq_topic is not None:
        _show_dead_letters(
            replay_dead_letters(settings, dlq_topic, max_attempts=max_attempts, dry_run=dry_run)
        )
        return
    names = [t for arg in topics or [] for t in arg.split(",") if t]
    if all_topics:
        names = list(PIPELINE_TOPICS)
    if not names:
        raise typer.BadParameter("give --topic TOPIC (repeatable) or --all")
    point = _point(from_beginning, offset, partition, from_time)
    store = open_store(settings, directory=directory, bucket=bucket)
    group_id = group or settings.landing.group_id
    # Every pipeline topic (--all) may include some not created yet; a topic named is one that must exist.
    if dry_run:
        plans = plan_replay(settings, store, names, point, missing_ok=all_topics)
        _show(plans, f"replay {point.describe()} (dry run)")
        return
    plans = replay(settings, store, group_id, names, point, missing_ok=all_topics)
    _show(plans, f"replayed {point.describe()} in {store.root}; run `omnistream sink` to land again")
