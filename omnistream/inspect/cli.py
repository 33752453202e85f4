"""``omnistream topics list | describe TOPIC | tail TOPIC -n N``."""

from __future__ import annotations

import json
from dataclasses import asdict

import typer
from rich.console import Console
from rich.table import Table

from omnistream.inspect.offsets import partition_offsets, topic_group_lags, topic_names
from omnistream.inspect.tail import tail
from omnistream.kafka import admin
from omnistream.settings import get_settings

topics_app = typer.Typer(help="Inspect topics: partitions, offsets, consumer lag, last records.")

AS_JSON = typer.Option(False, "--json", help="JSON instead of a table.")


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
    as_json: bool = AS_JSON,
) -> None:
    """Topics with their partition count and the offsets they hold."""
    client = admin(get_settings())
    names = topic_names(client, internal=internal, pattern=pattern)
    offsets = partition_offsets(client, names)
    summary: dict[str, list[int]] = {name: [0, 0] for name in names}
    for p in offsets:
        summary[p.topic][0] += 1
        summary[p.topic][1] += p.records
    if as_json:
        for name, (partitions, records) in summary.items():
            typer.echo(json.dumps({"topic": name, "partitions": partitions, "records": records}))
        return
    _table("topics", ["topic", "partitions", "records"], [[n, *v] for n, v in summary.items()])


@topics_app.command("describe")
def describe(topic: str = typer.Argument(..., help="Topic name."), as_json: bool = AS_JSON) -> None:
    """Partitions (leader, start and end offsets) and every consumer group's committed offset and lag."""
    client = admin(get_settings())
    offsets = partition_offsets(client, [topic])
    if not offsets:
        typer.secho(f"error: no topic {topic}", fg="red", err=True)
        raise typer.Exit(1)
    lags = topic_group_lags(client, topic)
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "topic": topic,
                    "partitions": [{**asdict(p), "records": p.records} for p in offsets],
                    "groups": [asdict(g) for g in lags],
                }
            )
        )
        return
    _table(
        topic,
        ["partition", "leader", "replicas", "start", "end", "records"],
        [[p.partition, p.leader, ",".join(map(str, p.replicas)), p.start, p.end, p.records] for p in offsets],
    )
    _table(
        f"consumer groups on {topic}",
        ["group", "partition", "committed", "end", "lag"],
        [[g.group, g.partition, g.committed, g.end, g.lag] for g in lags],
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
