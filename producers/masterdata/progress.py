"""The command line's view of a snapshot: a live line per entity, then a summary table."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from producers.masterdata.producer import EntityReport, SnapshotReport


class SnapshotDisplay:
    """Shows records per entity while a snapshot runs; ``report`` prints its summary when done."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self._progress: Progress | None = None
        self._tasks: dict[str, TaskID] = {}

    def _start(self) -> Progress:
        progress = Progress(
            SpinnerColumn(finished_text="[green]✓"),
            TextColumn("[bold]{task.fields[entity]:<9}"),
            TextColumn("{task.fields[phase]:<13}"),
            TextColumn("{task.completed:>9,.0f} records"),
            TextColumn("{task.fields[published]:>9,} published"),
            TextColumn("{task.fields[tombstones]:>7,} tombstones"),
            TextColumn("{task.fields[invalid]:>5,} rejected"),
            TimeElapsedColumn(),
            console=self.console,
        )
        progress.start()
        self._progress, self._tasks = progress, {}
        return progress

    def update(self, r: EntityReport) -> None:
        """Progress callback for ``MasterDataProducer.snapshot``."""
        progress = self._progress or self._start()
        fields: dict[str, Any] = {
            "phase": r.phase,
            "published": r.published,
            "tombstones": r.tombstones,
            "invalid": r.invalid,
        }
        if r.entity not in self._tasks:
            self._tasks[r.entity] = progress.add_task(r.entity, total=None, entity=r.entity, **fields)
        progress.update(self._tasks[r.entity], completed=r.fetched, **fields)
        if r.phase == "done":  # a total makes the task finished: a tick instead of the spinner
            progress.update(self._tasks[r.entity], total=r.fetched, completed=r.fetched)
        if r.phase in ("done", "failed"):
            progress.stop_task(self._tasks[r.entity])

    def stop(self) -> None:
        """End the live display (also after a failure, so the terminal is left tidy)."""
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def report(self, report: SnapshotReport) -> None:
        """Print one completed snapshot's figures."""
        self.stop()
        table = Table(title=f"snapshot {report.snapshot_id} ({report.snapshot_at:%Y-%m-%d %H:%M:%S} UTC)")
        table.add_column("entity")
        for column in ("records", "published", "unchanged", "rejected", "tombstones"):
            table.add_column(column, justify="right")
        table.add_column("topic", overflow="fold")
        for e in report.entities:
            figures = (e.fetched, e.published, e.unchanged, e.invalid, e.tombstones)
            table.add_row(e.entity, *(f"{n:,}" for n in figures), e.topic)
        Console().print(table)
