"""Reconciliation: the marts against the simulators' ground truth, per (channel, store, day), to the cent.

The ground truth lives under ``<state>/simulators/<source>/``, in two forms:

- ``manifest.json``: totals per (channel, store_id, UTC day), money as strings (omnistream/manifest.py).
- ``runs/<run-id>.jsonl``: one journal per run of a simulator that may run forever (simulators/runs.py),
  a JSON object per line, appended after each operation the server committed or accepted. A line that
  changes the truth carries ``"truth": {"channel", "store_id", "day", "orders", "lines", "net", "tax"}``,
  signed: a new order adds one, a hard-deleted order subtracts itself again.

Nothing is counted twice: a manifest that lists ``journals`` was built from them, so only the journals
count (and every journal must still be there); a manifest without that list (the history, or a run from
before journals) counts as it is. Journals are read as they are being written, which is safe: they are only
appended to.

``reconcile()`` compares the truth with ``fct_daily_sales`` (order count and gross amount) and writes
``<state>/reconciliation.json``. It can be exact only once the pipeline has caught up with the sources:
stop the simulators, let Debezium, the email producer and the landing sink drain, build dbt, then reconcile.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import typer

from omnistream.errors import OmnistreamError
from omnistream.manifest import (
    JOURNAL_DIR,
    MANIFEST_NAME,
    Key,
    Totals,
    journal_paths,
    manifest_totals,
    read_journal,
    sort_key,
    truth_of,
)
from omnistream.settings import Settings, get_settings
from omnistream.warehouse.dbt import default_duckdb_path

log = logging.getLogger(__name__)

REPORT_NAME = "reconciliation.json"
MISMATCHES_KEPT = 50
CENT = Decimal("0.01")
# DuckDB lets one process write a database file, and readers in other processes wait for it to finish:
# reconciling while dbt builds waits for the build (with a limit), rather than failing at once.
LOCKED_WAIT_S = 120.0


# --- reading the ground truth ---------------------------------------------------------------------------


def journal_totals(records: Iterable[dict[str, Any]]) -> dict[Key, Totals]:
    """The truth a journal's records add up to; keys whose orders were all deleted again drop out."""
    totals: dict[Key, Totals] = {}
    for record in records:
        change = truth_of(record)
        if change is not None:
            totals.setdefault(change[0], Totals()).add(change[1])
    return {key: t for key, t in totals.items() if t.orders or t.net or t.tax}


def in_doubt(records: Iterable[dict[str, Any]]) -> int:
    """Emails reserved (``sending``) with no outcome (``email`` or ``unsent``): cut off by a kill -9 in
    flight, or given up on after the server was handed them (``in_doubt``); perhaps accepted by the server
    and so in the marts, but never in the truth."""
    reserved: set[int] = set()
    for record in records:
        if record.get("type") == "sending":
            reserved.add(record["seq"])
        elif record.get("type") in ("email", "unsent"):
            reserved.discard(record["seq"])
    return len(reserved)


@dataclass
class SourceTruth:
    """What one simulator's out dir contributes, and from where."""

    name: str
    manifest: Path | None = None
    manifest_counted: bool = False
    journals: list[Path] = field(default_factory=list)
    records: int = 0
    in_doubt: int = 0
    totals: dict[Key, Totals] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        orders = sum(t.orders for t in self.totals.values())
        gross = sum((t.gross for t in self.totals.values()), Decimal("0.00"))
        return {
            "manifest": str(self.manifest) if self.manifest else None,
            "manifest_counted": self.manifest_counted,
            "journals": len(self.journals),
            "journal_records": self.records,
            "in_doubt": self.in_doubt,
            "orders": orders,
            "gross": str(gross),
        }


def source_truth(out: Path) -> SourceTruth:
    """The truth of one simulator's out dir: its journals, plus its manifest unless built from them."""
    source = SourceTruth(out.name)
    totals: dict[Key, Totals] = {}
    paths = journal_paths(out)
    for path in paths:
        records = read_journal(path)
        source.records += len(records)
        source.in_doubt += in_doubt(records)
        for key, t in journal_totals(records).items():
            totals.setdefault(key, Totals()).add(t)
    source.journals = paths
    manifest = out / MANIFEST_NAME
    if manifest.is_file():
        source.manifest = manifest
        data = json.loads(manifest.read_text())
        covered = data.get("journals")
        if covered is None:
            source.manifest_counted = True
            for key, t in manifest_totals(data).items():
                totals.setdefault(key, Totals()).add(t)
        else:
            missing = sorted(set(covered) - {p.stem for p in paths})
            if missing:
                raise ValueError(
                    f"{manifest} was built from journals that are gone ({', '.join(missing)} under "
                    f"{out / JOURNAL_DIR}); the truth cannot be rebuilt without them"
                )
    source.totals = {key: t for key, t in totals.items() if t.orders or t.net or t.tax}
    return source


def ground_truth(root: Path) -> list[SourceTruth]:
    """Every simulator's truth under ``root`` (``<state>/simulators``), by source name."""
    if not root.is_dir():
        return []
    return [
        source_truth(out)
        for out in sorted(p for p in root.iterdir() if p.is_dir())
        if (out / MANIFEST_NAME).is_file() or journal_paths(out)
    ]


def expected_totals(sources: Iterable[SourceTruth]) -> dict[Key, Totals]:
    totals: dict[Key, Totals] = {}
    for source in sources:
        for key, t in source.totals.items():
            totals.setdefault(key, Totals()).add(t)
    return totals


# --- comparing with the marts ---------------------------------------------------------------------------

Figures = tuple[int, Decimal]  # order count, gross amount


@dataclass(frozen=True)
class Mismatch:
    key: Key
    expected: Figures | None  # None: the truth has no orders for the key
    actual: Figures | None  # None: the marts have no row for the key

    def describe(self) -> str:
        def show(figures: Figures | None) -> str:
            return "none" if figures is None else f"{figures[0]} orders, gross {figures[1]}"

        return f"{self.key}: truth {show(self.expected)}, marts {show(self.actual)}"

    def to_json(self) -> dict[str, Any]:
        def figures(f: Figures | None) -> dict[str, Any] | None:
            return None if f is None else {"orders": f[0], "gross": str(f[1])}

        channel, store_id, day = self.key
        return {
            "channel": channel,
            "store_id": store_id,
            "day": day,
            "expected": figures(self.expected),
            "actual": figures(self.actual),
        }


def compare(expected: dict[Key, Figures], actual: dict[Key, Figures]) -> tuple[int, list[Mismatch]]:
    """Keys compared, and the keys whose order count or gross (to the cent) differ, in key order."""
    keys = sorted(set(expected) | set(actual), key=sort_key)
    mismatches = [
        Mismatch(key, expected.get(key), actual.get(key))
        for key in keys
        if expected.get(key) != actual.get(key)
    ]
    return len(keys), mismatches


def figures_of(totals: dict[Key, Totals]) -> dict[Key, Figures]:
    return {key: (t.orders, t.gross.quantize(CENT)) for key, t in totals.items()}


def read_daily_sales(duckdb_path: Path) -> dict[Key, Figures]:
    """``fct_daily_sales`` per (channel, store, day): order count and gross amount."""
    import duckdb

    if not duckdb_path.is_file():
        raise ReconcileError(f"no warehouse at {duckdb_path}; build it first (`omnistream dbt build`)")
    deadline = time.monotonic() + LOCKED_WAIT_S
    while True:
        try:
            con = duckdb.connect(str(duckdb_path), read_only=True)
            break
        except duckdb.IOException as exc:
            if "lock" not in str(exc).lower() or time.monotonic() > deadline:
                raise ReconcileError(f"cannot open the warehouse {duckdb_path}: {exc}") from exc
            log.info("the warehouse is being written (a dbt build?); waiting")
            time.sleep(2.0)
    try:
        found = con.execute(
            "select table_schema from information_schema.tables "
            "where table_name = 'fct_daily_sales' and table_schema like '%marts'"
        ).fetchall()
        if not found:
            raise ReconcileError(f"{duckdb_path} has no marts.fct_daily_sales; run `omnistream dbt build`")
        rows = con.execute(
            "select channel, store_id, cast(order_date as varchar), order_count, gross_amount "
            f'from "{found[0][0]}".fct_daily_sales'
        ).fetchall()
    finally:
        con.close()
    return {(c, s, d): (int(n), Decimal(g).quantize(CENT)) for c, s, d, n, g in rows}


class ReconcileError(OmnistreamError):
    """Reconciliation could not run (no warehouse, no marts); the message says what to do."""


@dataclass
class Reconciliation:
    at: datetime
    duckdb_path: Path
    keys_compared: int
    mismatches: list[Mismatch]
    sources: list[SourceTruth]
    expected: dict[Key, Figures]

    @property
    def ok(self) -> bool:
        return not self.mismatches

    @property
    def orders(self) -> int:
        return sum(n for n, _ in self.expected.values())

    @property
    def gross(self) -> Decimal:
        return sum((g for _, g in self.expected.values()), Decimal("0.00"))

    def to_json(self) -> dict[str, Any]:
        return {
            "at": self.at.isoformat(),
            "ok": self.ok,
            "summary": self.summary(),
            "duckdb_path": str(self.duckdb_path),
            "keys_compared": self.keys_compared,
            "expected_orders": self.orders,
            "expected_gross": str(self.gross),
            "mismatch_count": len(self.mismatches),
            "mismatches": [m.to_json() for m in self.mismatches[:MISMATCHES_KEPT]],
            "sources": {s.name: s.summary() for s in self.sources},
        }

    def summary(self) -> str:
        """One line, for a terminal or a monitor."""
        if self.ok:
            return (
                f"reconciliation ok: the marts equal the ground truth on all {self.keys_compared:,} "
                f"(channel, store, day) keys, to the cent ({self.orders:,} orders, gross {self.gross:,.2f})"
            )
        doubt = sum(s.in_doubt for s in self.sources)
        return (
            f"reconciliation FAILED: {len(self.mismatches):,} of {self.keys_compared:,} keys differ; "
            f"first {self.mismatches[0].describe()}"
            + (f" ({doubt} emails in doubt after a kill -9)" if doubt else "")
        )


def report_path(settings: Settings) -> Path:
    return settings.stack.state_dir / REPORT_NAME


def reconcile(settings: Settings, duckdb_path: Path | None = None) -> Reconciliation:
    """Compare ``fct_daily_sales`` with the truth under ``<state>/simulators``; write the report."""
    path = duckdb_path or default_duckdb_path(settings)
    sources = ground_truth(settings.stack.state_dir / "simulators")
    expected = figures_of(expected_totals(sources))
    actual = read_daily_sales(path)
    keys, mismatches = compare(expected, actual)
    result = Reconciliation(datetime.now().astimezone(), path, keys, mismatches, sources, expected)
    report = report_path(settings)
    report.parent.mkdir(parents=True, exist_ok=True)
    tmp = report.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result.to_json(), indent=2))
    tmp.replace(report)  # a reader (`omnistream status`) never sees half a report
    log.info("%s", result.summary())
    return result


def last_reconciliation(settings: Settings) -> dict[str, Any] | None:
    """The report of the last ``reconcile()``, or None if there has not been one."""
    path = report_path(settings)
    if not path.is_file():
        return None
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def reconcile_command(
    json_output: bool = typer.Option(False, "--json", help="Print the whole report as JSON."),
) -> None:
    """Compare the marts with the simulators' ground truth, to the cent; exit 1 on a mismatch."""
    settings = get_settings()
    try:
        result = reconcile(settings)
    except (ReconcileError, ValueError) as exc:
        typer.echo(f"reconciliation could not run: {exc}", err=True)
        raise typer.Exit(2) from None
    if json_output:
        typer.echo(json.dumps(result.to_json(), indent=2))
    else:
        typer.echo(result.summary())
    if not result.ok:
        raise typer.Exit(1)
