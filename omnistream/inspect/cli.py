"""``omnistream topics list | describe TOPIC | tail TOPIC -n N``."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from omnistream.inspect.records import describe_topic, partition_counts
from omnistream.inspect.tail import tail
from omnistream.kafka.clients import connect
from omnistream.kafka.offsets import NoSuchTopic, topic_names
from omnistream.kafka.record_counts import RECORD_CAP, shown
from omnistream.settings import get_settings

topics_app = typer.Typer(help="Inspect topics: partitions, offsets, records, consumer lag, last records.")

AS_JSON = typer.Option(False, "--json", help="JSON instead of a table.")
CAP = typer.Option(
    RECORD_CAP,
    "--cap",
    min=0,
    help="Count records exactly over at most this many offsets per partition; beyond, an upper bound (≤).",
)


def _table(title: str, columns: list[str], rows: list[list[object]]) -> None:
    table = Table(title=title)
    for i, column in enumerate(columns):
        table.add_column(column, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*("-" if v is None else str(v) for v in row))
    Console().print(table)


@topics_app.command("list")
def list_topics(
    internal: bool = typer.Option(False, "--internal", help="Include internal topics (_*, __*)."),
    pattern: str | None = typer.Option(None, "--match", help="Only topics matching this glob."),
    cap: int = CAP,
    as_json: bool = AS_JSON,
) -> None:
    """Topics with their partition count, the offsets they span and the records they hold.

    Records are what a read_committed consumer gets: transaction markers and aborted records take offsets
    but are not records.
    """
    settings = get_settings()
    names = topic_names(connect(settings), internal=internal, pattern=pattern)
    counts = partition_counts(settings, names, cap=cap)
    summary: dict[str, dict[str, Any]] = {
        name: {"topic": name, "partitions": 0, "offsets": 0, "records": 0, "exact": True} for name in names
    }
    for p, count in counts:
        row = summary[p.topic]
        row["partitions"] += 1
        row["offsets"] += p.offsets
        row["records"] += count.records
        row["exact"] = row["exact"] and count.exact
    if as_json:
        for row in summary.values():
            typer.echo(json.dumps(row))
        return
    _table(
        "topics",
        ["topic", "partitions", "offsets", "records"],
        [
            [r["topic"], r["partitions"], r["offsets"], shown(r["records"], r["exact"])]
            for r in summary.values()
        ],
    )


@topics_app.command("describe")
def describe(
    topic: str = typer.Argument(..., help="Topic name."), cap: int = CAP, as_json: bool = AS_JSON
) -> None:
    """Partitions (leader, start and end offsets, records) and every consumer group's lag in records."""
    settings = get_settings()
    counts, lags = describe_topic(settings, topic, cap=cap)
    if not counts:
        raise NoSuchTopic(f"no such topic: {topic} (`omnistream topics list` shows the topics there are)")
    if as_json:
        partitions = [
            {**asdict(p), "offsets": p.offsets, "records": c.records, "exact": c.exact} for p, c in counts
        ]
        groups = [{"group": group, **asdict(lag)} for group, rows in lags.items() for lag in rows]
        typer.echo(json.dumps({"topic": topic, "partitions": partitions, "groups": groups}))
        return
    _table(
        topic,
        ["partition", "leader", "replicas", "start", "end", "offsets", "records"],
        [
            [p.partition, p.leader, ",".join(map(str, p.replicas)), p.start, p.end, p.offsets, str(c)]
            for p, c in counts
        ],
    )
    _table(
        f"consumer groups on {topic} (lag in records)",
        ["group", "partition", "committed", "end", "lag"],
        [
            [group, lag.partition, lag.committed, lag.end, shown(lag.lag, lag.exact)]
            for group, rows in lags.items()
            for lag in rows
        ],
    )


@topics_app.command("tail")
def tail_command(
    topic: str = typer.Argument(..., help="Topic name."),
    n: int = typer.Option(10, "-n", "--lines", min=0, help="How many records."),
    partition: int | None = typer.Option(None, "--partition", "-p", min=0, help="Only this partition."),
    pretty: bool = typer.Option(False, "--pretty", help="Indented JSON."),
) -> None:
    """The last N records, decoded through the schema registry, as JSON lines (oldest first)."""
    for record in tail(get_settings(), topic, n, partition):
        typer.echo(json.dumps(record, indent=2 if pretty else None, ensure_ascii=False))
