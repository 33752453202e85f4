"""The main job on the local stack: every source, through Kafka and the landing zone, into the marts.

Each step runs the same ``omnistream`` command a user would, as a subprocess, and shows its progress.
The history takes the production path: generated, uploaded to the GCS bucket (the emulator), then loaded
from the bucket into the warehouse with ``omnistream dbt load-history`` (each object downloaded and its
checksum checked and recorded), and loaded a second time to show that nothing is loaded twice. The report
reconciles the marts with the simulators' ground truth, history included, to the cent
(omnistream/reconcile.py).
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb

from omnistream.connect.postgres import wait_until_slots_confirm_wal_end
from omnistream.reconcile import reconcile
from omnistream.settings import Settings
from omnistream.stack.manager import Stack
from omnistream.warehouse.dbt import DbtRun, default_duckdb_path, run_dbt

log = logging.getLogger(__name__)

CONNECTOR = "onlinedb-postgres"


@dataclass(frozen=True)
class Scale:
    history_rows: int
    live_seconds: float
    order_rate: float
    email_rate: float


SCALES = {
    "small": Scale(history_rows=200_000, live_seconds=30, order_rate=5, email_rate=3),
    "full": Scale(history_rows=6_000_000, live_seconds=120, order_rate=10, email_rate=5),
}


@dataclass
class DemoReport:
    seconds: dict[str, float] = field(default_factory=dict)
    landed_rows: dict[str, int] = field(default_factory=dict)
    mart_rows: dict[str, int] = field(default_factory=dict)
    revenue: dict[str, Decimal] = field(default_factory=dict)
    latency_ms: dict[str, float] = field(default_factory=dict)
    mismatches: list[str] = field(default_factory=list)
    reconciled_keys: int = 0
    # The history load from the bucket: the first load's report, the second's, and the warehouse's ledger.
    history_load: dict[str, Any] = field(default_factory=dict)


def omnistream(*args: str) -> list[str]:
    return [sys.executable, "-m", "omnistream", *args]


class Demo:
    def __init__(self, settings: Settings, scale: Scale, seed: int, say: Any) -> None:
        self.settings, self.scale, self.seed, self.say = settings, scale, seed, say
        self.state = settings.stack.state_dir
        self.report = DemoReport()

    def step(self, name: str, *commands: list[str]) -> list[str]:
        """Run commands side by side; fail with the command's output if one fails; return their outputs."""
        self.say(f"[bold]{name}[/bold]")
        began = time.monotonic()
        procs = [
            subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for c in commands
        ]
        outputs = []
        for command, proc in zip(commands, procs, strict=True):
            output, _ = proc.communicate()
            if proc.returncode != 0:
                raise RuntimeError(f"{' '.join(command[2:])} failed:\n{output[-3000:]}")
            outputs.append(output)
        self.report.seconds[name] = time.monotonic() - began
        self.say(f"  done in {self.report.seconds[name]:.1f}s")
        return outputs

    def run(self) -> DemoReport:
        stack = Stack(self.settings)
        # The report reconciles the warehouse with what this run generated, so it starts from empty
        # servers: a previous run's orders, mails and topics would otherwise be counted too.
        self.say("[bold]starting the local stack from empty data directories[/bold]")
        began = time.monotonic()
        stack.down(purge=True, progress=lambda m: self.say(f"  {m}"))
        stack.up(progress=lambda m: self.say(f"  {m}"))
        self.report.seconds["stack up"] = time.monotonic() - began
        sims = self.state / "simulators"
        seed = str(self.seed)
        self.step(
            f"history: {self.scale.history_rows:,} order lines → Parquet → GCS bucket",
            omnistream("simulate", "history", "--seed", seed, "--rows", str(self.scale.history_rows)),
        )
        history = f"gs://{self.settings.gcs.bucket}/history"
        self.load_history(history)
        self.step("connectors: Debezium PostgreSQL → Kafka", omnistream("connect", "apply"))
        api = subprocess.Popen(
            omnistream("simulate", "api", "--seed", seed, "--drift", "--drift-every", "5"),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            live = str(self.scale.live_seconds)
            self.step(
                f"live sources for {self.scale.live_seconds:.0f}s: online orders, store emails, master data",
                omnistream(
                    "simulate",
                    "orders",
                    "--seed",
                    seed,
                    "--rate",
                    str(self.scale.order_rate),
                    "--duration",
                    live,
                    "--out",
                    str(sims / "orders"),
                ),
                omnistream(
                    "simulate",
                    "emails",
                    "--seed",
                    seed,
                    "--rate",
                    str(self.scale.email_rate),
                    "--duration",
                    live,
                    "--out",
                    str(sims / "emails"),
                ),
                omnistream("produce", "masterdata", "--once"),
            )
            self.step(
                "producers: emails and a final master-data snapshot",
                omnistream("produce", "emails", "--once"),
                omnistream("produce", "masterdata", "--once"),
            )
        finally:
            api.terminate()
            api.wait(timeout=30)
        self.wait_for_cdc()
        self.step("landing sink: Kafka → Parquet, until caught up", omnistream("sink", "--drain"))
        self.say("[bold]dbt build[/bold]")
        began = time.monotonic()
        run_dbt(["build"], DbtRun(history_root=history), self.settings)
        self.report.seconds["dbt build"] = time.monotonic() - began
        self.collect()
        return self.report

    def load_history(self, history: str) -> None:
        """Bucket → warehouse with `omnistream dbt load-history`, twice: the second run must load nothing."""
        load = omnistream("dbt", "load-history", "--history", history, "--json")
        (first,) = self.step("history: bucket → warehouse (load-history)", load)
        (again,) = self.step("history: load again (checksums unchanged: nothing to load)", load)
        first_report, again_report = _last_json(first), _last_json(again)
        if again_report["loaded"] or again_report["skipped"] != first_report["loaded"]:
            raise RuntimeError(f"a second history load loaded files again: {again_report}")
        self.report.history_load = {"first": first_report, "again": again_report}

    def wait_for_cdc(self, timeout_s: float = 120) -> None:
        """Until Debezium has confirmed every change committed so far (its slot reached the WAL end)."""
        self.say("[bold]waiting for Debezium to catch up[/bold]")
        if not wait_until_slots_confirm_wal_end(self.settings, timeout_s):
            raise RuntimeError(
                f"Debezium did not catch up within {timeout_s:.0f}s; see `omnistream connect status`"
            )

    def collect(self) -> None:
        con = duckdb.connect(str(default_duckdb_path(self.settings)), read_only=True)
        try:
            ledger = con.execute(
                "select count(*), coalesce(sum(row_count), 0), count(*) filter (where source_file like 'gcs://%')"
                " from raw.history_files"
            ).fetchone()
            if ledger and self.report.history_load:
                files, rows, from_bucket = ledger
                self.report.history_load["ledger"] = {
                    "files": files,
                    "rows": rows,
                    "from_bucket": from_bucket,
                }
            marts = con.execute(
                "select table_schema, table_name from information_schema.tables "
                "where table_schema like '%marts' order by table_name"
            ).fetchall()
            for schema, table in marts:
                counted = con.execute(f'select count(*) from "{schema}"."{table}"').fetchone()
                self.report.mart_rows[table] = counted[0] if counted else 0
            daily_sales = next(
                f'"{schema}"."{table}"' for schema, table in marts if table == "fct_daily_sales"
            )
            by_channel = (
                f"select channel, sum(gross_amount) from {daily_sales} group by channel order by channel"
            )
            for channel, gross in con.execute(by_channel).fetchall():
                self.report.revenue[channel] = Decimal(gross)
        finally:
            con.close()
        landing = self.state / "landing"
        files = duckdb.connect()
        for topic_dir in sorted(p for p in landing.iterdir() if p.is_dir()) if landing.exists() else []:
            rows = files.execute(f"select count(*) from read_parquet('{topic_dir}/**/*.parquet')").fetchone()
            self.report.landed_rows[topic_dir.name] = rows[0] if rows else 0
        self.latency(files, landing)
        result = reconcile(self.settings)
        self.report.mismatches = [m.describe() for m in result.mismatches]
        self.report.reconciled_keys = result.keys_compared

    def latency(self, files: duckdb.DuckDBPyConnection, landing: Path) -> None:
        """Postgres commit → Kafka append, from the landed CDC records' own timestamps."""
        orders = landing / "onlinedb.shop.orders"
        if not orders.exists():
            return
        row = files.execute(
            "select quantile_cont(ms, 0.5), quantile_cont(ms, 0.95) from ("
            " select epoch_ms(record_metadata.timestamp) - __source_ts_ms as ms"
            f" from read_parquet('{orders}/**/*.parquet', union_by_name=true)"
            " where __source_ts_ms is not null)"
        ).fetchone()
        if row and row[0] is not None:
            self.report.latency_ms = {"p50": float(row[0]), "p95": float(row[1])}


def _last_json(output: str) -> dict[str, Any]:
    """The JSON report a command printed last (its log lines may precede it)."""
    line = next(line for line in reversed(output.splitlines()) if line.startswith("{"))
    report: dict[str, Any] = json.loads(line)
    return report


def report_lines(report: DemoReport) -> list[str]:
    lines = [""]
    if report.history_load:
        first, again = report.history_load["first"], report.history_load["again"]
        ledger = report.history_load.get("ledger", {})
        lines += [
            f"history loaded from {first['source']}: {first['loaded']} files, {first['rows']:,} rows; "
            f"loaded again: {again['loaded']} files, {again['skipped']} already loaded",
            f"  warehouse ledger raw.history_files: {ledger.get('files', 0)} files "
            f"({ledger.get('from_bucket', 0)} from the bucket), {ledger.get('rows', 0):,} rows, "
            "each with its MD5",
        ]
    lines += ["rows landed per topic:"]
    lines += [f"  {topic:<40} {n:>10,}" for topic, n in report.landed_rows.items()]
    lines += ["rows per mart:"] + [f"  {mart:<40} {n:>10,}" for mart, n in report.mart_rows.items()]
    lines += ["revenue (gross) per channel:"] + [f"  {c:<40} {v:>14,.2f}" for c, v in report.revenue.items()]
    if report.latency_ms:
        lines.append(
            f"Postgres commit → Kafka append: p50 {report.latency_ms['p50']:.0f} ms, "
            f"p95 {report.latency_ms['p95']:.0f} ms"
        )
    lines.append("step times: " + ", ".join(f"{k} {v:.0f}s" for k, v in report.seconds.items()))
    if report.mismatches:
        lines.append(f"reconciliation FAILED on {len(report.mismatches)} of {report.reconciled_keys} keys:")
        lines += [f"  {m}" for m in report.mismatches[:20]]
    else:
        lines.append(
            f"reconciliation: marts equal the ground-truth manifests on all {report.reconciled_keys} "
            "(channel, store, day) keys, to the cent"
        )
    return lines


def write_report(report: DemoReport, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "seconds": report.seconds,
        "landed_rows": report.landed_rows,
        "mart_rows": report.mart_rows,
        "revenue": {k: str(v) for k, v in report.revenue.items()},
        "latency_ms": report.latency_ms,
        "reconciled_keys": report.reconciled_keys,
        "mismatches": report.mismatches,
        "history_load": report.history_load,
    }
    path.write_text(json.dumps(data, indent=2))
