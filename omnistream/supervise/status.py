"""``omnistream status``: one view of whether data flows, and an exit code for cron and monitoring.

Every section is gathered on its own and reports its own failure, so a server that is down shows as a
finding in the view instead of hiding the rest. Health levels:

- ``down`` (exit 2): supervisord is not running, or a server is not running or does not answer;
- ``degraded`` (exit 1): an expected program is not RUNNING (crash loop, FATAL, stopped), a connector or
  task is not RUNNING, the last dbt run failed or none succeeded lately, a slot retains too much WAL, or a
  streaming topic has landed nothing for ``pipeline.stale_after_s`` while the simulators run;
- ``healthy`` (exit 0): none of the above. Lag and dead letters are shown, not judged: a backlog that is
  being worked off and a dead letter with its reason are both normal.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import psycopg

from omnistream.connect.client import ConnectClient, ConnectError
from omnistream.settings import Settings
from omnistream.stack.manager import Stack
from omnistream.supervise import events, watchdog
from omnistream.supervise.catalogue import SERVICES
from omnistream.supervise.pipeline import expected_kinds, read_mode
from omnistream.topics import ORDER_ITEMS, ORDERS, PIPELINE_TOPICS, STORE_ORDERS, dlq

HEALTHY, DEGRADED, DOWN = "healthy", "degraded", "down"
EXIT_CODES = {HEALTHY: 0, DEGRADED: 1, DOWN: 2}
STREAMING_TOPICS = (ORDERS, ORDER_ITEMS, STORE_ORDERS)
CONNECTOR = "onlinedb-postgres"
# The schema registry reads its own journal topic with consumer groups of this prefix: not pipeline lag.
REGISTRY_GROUP_PREFIX = "apicurio-"
# What status reports lag and dead letters for: the pipeline's topics and their DLQs, not whatever else
# the cluster holds (a shared broker, topics a test or a user made).
WATCHED_TOPICS = frozenset((*PIPELINE_TOPICS, *(dlq(topic) for topic in PIPELINE_TOPICS)))


@dataclass
class Finding:
    level: str  # degraded or down
    what: str


@dataclass
class Report:
    at: str
    health: str = HEALTHY
    findings: list[Finding] = field(default_factory=list)
    processes: list[dict[str, Any]] = field(default_factory=list)
    connectors: list[dict[str, Any]] = field(default_factory=list)
    lag: list[dict[str, Any]] = field(default_factory=list)
    slots: list[dict[str, Any]] = field(default_factory=list)
    dead_letters: dict[str, int] = field(default_factory=dict)
    freshness: list[dict[str, Any]] = field(default_factory=list)
    marts: dict[str, Any] = field(default_factory=dict)
    reconciliation: dict[str, Any] | None = None
    errors: dict[str, str] = field(default_factory=dict)  # a section that could not be gathered

    def flag(self, level: str, what: str) -> None:
        self.findings.append(Finding(level, what))
        if level == DOWN or (level == DEGRADED and self.health == HEALTHY):
            self.health = level

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.health]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, UTC).isoformat() if ts else None


class StatusCollector:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.stack = Stack(settings)
        self.mode = read_mode(self.stack)
        self.sources = str(self.mode["sources"]) if self.mode else None
        self.report = Report(at=datetime.now(UTC).isoformat())

    def collect(self) -> Report:
        if not self.processes():
            return self.report
        for name, section in (
            ("connectors", self.connectors),
            ("lag", self.lag),
            ("slots", self.slots),
            ("dead_letters", self.dead_letters),
            ("freshness", self.freshness),
            ("marts", self.marts),
            ("reconciliation", self.reconciliation),
        ):
            try:
                section()
            except Exception as exc:  # one section failing must not hide the others: report it instead
                self.report.errors[name] = f"{type(exc).__name__}: {exc}".strip()[:300]
        return self.report

    def processes(self) -> bool:
        """Servers and programs from supervisord; False when there is no supervisord to ask."""
        sv = self.stack.supervisor
        if not sv.is_running():
            self.report.flag(DOWN, "supervisord is not running: start the pipeline with `omnistream up`")
            return False
        infos = sv.all_info()
        history = events.read_history(sv.paths.events)
        revived, _ = watchdog.read_restarts(sv.paths.watchdog)
        expected = (
            {s.name for s in SERVICES if s.kind in expected_kinds(self.sources)}
            if self.sources
            else {s.name for s in SERVICES if s.kind == "server"}
        )
        health = {s.name: s for s in self.stack.status()}
        for spec in SERVICES:
            info = infos.get(spec.name)
            state = info.state if info else "ABSENT"
            row: dict[str, Any] = {
                "name": spec.name,
                "kind": spec.kind,
                "state": state,
                "expected": spec.name in expected,
                "pid": info.pid if info else 0,
                "uptime_s": round(info.uptime_s) if info else 0,
                "restarts": history.restarts.get(spec.name, 0),
                "last_restart_at": _iso(history.last_restart_at.get(spec.name)),
                "revived_by_watchdog": revived.get(f"program/{spec.name}", 0),
                "rss_mib": round(info.rss_bytes() / 2**20) if info else 0,
                "detail": info.spawn_error if info and info.state in ("BACKOFF", "FATAL") else "",
            }
            if spec.kind == "server" and spec.name in health and info and info.state == "RUNNING":
                row["answers"] = health[spec.name].healthy
                row["detail"] = health[spec.name].detail[:120]
            self.report.processes.append(row)
            if spec.name not in expected:
                continue
            if spec.kind == "server" and (state != "RUNNING" or not row.get("answers", False)):
                self.report.flag(DOWN, f"server {spec.name} is {state.lower()}" + _detail(row))
            elif state in ("BACKOFF", "FATAL"):
                self.report.flag(DEGRADED, f"{spec.name} is in a crash loop ({state})" + _detail(row))
            elif state != "RUNNING":
                self.report.flag(DEGRADED, f"{spec.name} is {state.lower()}")
        return True

    def connectors(self) -> None:
        counts, last = watchdog.read_restarts(self.stack.supervisor.paths.watchdog)
        with ConnectClient(self.settings.connect.url, retry_for_s=2.0) as client:
            try:
                statuses = client.statuses()
            except ConnectError as exc:
                self.report.flag(DEGRADED, f"Kafka Connect does not answer: {exc}")
                return
        for status in statuses:
            target = f"connector/{status.name}"
            self.report.connectors.append(
                {
                    "name": status.name,
                    "state": status.state,
                    "tasks": {str(t.id): t.state for t in status.tasks},
                    "task_restarts": counts.get(target, 0),
                    "last_task_restart_at": _iso(last.get(target)),
                    "failures": [f"{what}: {trace}" for what, trace in status.failures()],
                }
            )
            if not status.running:
                self.report.flag(DEGRADED, f"connector {status.name}: {status.describe()}")
        if self.sources and not any(c["name"] == CONNECTOR for c in self.report.connectors):
            self.report.flag(DEGRADED, f"connector {CONNECTOR} is not deployed: `omnistream connect apply`")

    def lag(self) -> None:
        from omnistream.inspect.records import consumer_groups, group_lag

        for group in consumer_groups(self.settings):
            if group.startswith(REGISTRY_GROUP_PREFIX):
                continue
            for row in group_lag(self.settings, group):
                if row.topic in WATCHED_TOPICS:
                    self.report.lag.append({"group": group, **asdict(row)})

    def slots(self) -> None:
        pg = self.settings.postgres
        with psycopg.connect(pg.dsn(), autocommit=True, connect_timeout=3) as conn:
            rows = conn.execute(
                "select slot_name, active, confirmed_flush_lsn::text,"
                " pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint"
                " from pg_replication_slots where slot_type = 'logical' order by slot_name"
            ).fetchall()
            stored = self._stored_lsn()
            for slot, active, confirmed, retained in rows:
                ahead = None
                if stored is not None and confirmed:
                    diff = conn.execute(
                        "select pg_wal_lsn_diff(%s::pg_lsn, %s::pg_lsn)::bigint", [confirmed, stored]
                    )
                    ahead = (diff.fetchone() or [None])[0]
                self.report.slots.append(
                    {
                        "slot": slot,
                        "active": active,
                        "confirmed_flush_lsn": confirmed,
                        "retained_wal_bytes": retained,
                        "connector_offset_lsn": stored,
                        # > 0: the slot was confirmed past what the connector stored; a restart then
                        # asks for WAL the server no longer keeps.
                        "confirmed_ahead_of_offset_bytes": ahead,
                    }
                )
                if ahead is not None and ahead > 0:
                    self.report.flag(
                        DEGRADED,
                        f"replication slot {slot} is confirmed {ahead} bytes past the connector's stored"
                        " offset: a Connect restart would ask for WAL the server no longer keeps",
                    )
                if retained is not None and retained > self.settings.pipeline.max_retained_wal_bytes:
                    self.report.flag(
                        DEGRADED, f"replication slot {slot} retains {retained / 2**20:.0f} MiB of WAL"
                    )

    def _stored_lsn(self) -> str | None:
        """The LSN in the Debezium connector's committed offset (Connect's ``GET /connectors/…/offsets``)."""
        import httpx

        try:
            response = httpx.get(f"{self.settings.connect.url}/connectors/{CONNECTOR}/offsets", timeout=3)
        except httpx.HTTPError:
            return None
        if response.status_code != 200:
            return None
        for entry in response.json().get("offsets", []):
            lsn = entry.get("offset", {}).get("lsn")
            if isinstance(lsn, int):
                return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"
        return None

    def dead_letters(self) -> None:
        from omnistream.inspect.records import dlq_depths

        self.report.dead_letters = dlq_depths(self.settings, among=WATCHED_TOPICS)

    def freshness(self) -> None:
        landing = self.settings.landing.dir or self.settings.stack.state_dir / "landing"
        now = time.time()
        for topic in PIPELINE_TOPICS:
            newest = _newest_landed(Path(landing) / topic)
            age = now - newest if newest else None
            self.report.freshness.append(
                {
                    "topic": topic,
                    "newest_record_at": _iso(newest),
                    "age_s": round(age) if age is not None else None,
                }
            )
            stale = age is None or age > self.settings.pipeline.stale_after_s
            quiet_allowed = not self._up_for(self.settings.pipeline.stale_after_s)
            if self.sources == "simulated" and topic in STREAMING_TOPICS and stale and not quiet_allowed:
                when = f"{age:.0f} s ago" if age is not None else "never"
                self.report.flag(DEGRADED, f"{topic}: newest landed record {when}")

    def marts(self) -> None:
        from omnistream.scheduler.client import AirflowClient

        client = AirflowClient(self.settings)
        last_ok = client.last_run("omnistream_dbt", state="success")
        latest = client.runs("omnistream_dbt", limit=1)
        self.report.marts = {
            "dag": "omnistream_dbt",
            "last_success_at": last_ok.end_date.isoformat() if last_ok and last_ok.end_date else None,
            "latest_state": latest[0].state if latest else None,
        }
        if latest and latest[0].state == "failed":
            self.report.flag(DEGRADED, "the last omnistream_dbt run failed: see the Airflow UI")
        every_s = self.settings.airflow.dbt_every_minutes * 60
        if self.sources and self._up_for(3 * every_s + 600):
            ended = last_ok.end_date.timestamp() if last_ok and last_ok.end_date else 0.0
            if time.time() - ended > 3 * every_s + 600:
                self.report.flag(DEGRADED, "no successful omnistream_dbt run lately: the marts are stale")

    def _up_for(self, seconds: float) -> bool:
        up_at = float(self.mode.get("up_at", 0)) if self.mode else 0.0  # type: ignore[arg-type]
        return time.time() - up_at > seconds

    def reconciliation(self) -> None:
        from omnistream.reconcile import last_reconciliation

        self.report.reconciliation = last_reconciliation(self.settings)


def _detail(row: dict[str, Any]) -> str:
    return f": {row['detail']}" if row.get("detail") else ""


def _newest_landed(topic_dir: Path) -> float | None:
    """Kafka timestamp (unix s) of the newest landed record: read from the newest file of each partition."""
    if not topic_dir.is_dir():
        return None
    newest_files = []
    for partition in topic_dir.glob("partition=*"):
        files = sorted(partition.glob("*.parquet"), key=lambda f: int(f.stem.rsplit("+", 1)[-1]))
        if files:
            newest_files.append(str(files[-1]))
    if not newest_files:
        return None
    with duckdb.connect() as con:
        row = con.execute(
            "select max(epoch_ms(record_metadata.timestamp)) from read_parquet(?, union_by_name=true)",
            [newest_files],
        ).fetchone()
    return row[0] / 1000 if row and row[0] is not None else None


def collect_status(settings: Settings) -> Report:
    return StatusCollector(settings).collect()
