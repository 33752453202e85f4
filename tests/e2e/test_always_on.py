"""``omnistream up`` left running: supervised, scheduled by Airflow, observable, and exact afterwards.

On a stack of its own (own state directory and ports), the test brings the whole pipeline up, lets data
flow, kills -9 a producer, the sink, Kafka Connect and GreenMail in turn (each must come back by itself,
with the restart shown by ``omnistream status``), waits for Airflow to run dbt, then ``down --drain`` and
reconciles the marts with the simulators' ground truth to the cent, and checks the landing zone holds
every offset exactly once.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest

from omnistream.inspect.records import record_counts
from omnistream.scheduler.client import AirflowClient
from omnistream.settings import Settings
from omnistream.sink.layout import overlapping, parse_file_name
from omnistream.stack.layout import Layout
from omnistream.stack.manager import Stack
from omnistream.stack.second import as_environment, second_stack_settings
from omnistream.supervise.catalogue import SERVICES
from omnistream.topics import STORE_ORDERS, dlq

pytestmark = pytest.mark.integration

PORT_OFFSET = 700


def omnistream(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "omnistream", *args], env=env, capture_output=True, text=True, check=False
    )


def status(env: dict[str, str]) -> tuple[int, dict[str, Any]]:
    result = omnistream(env, "status", "--json")
    assert result.stdout.strip(), result.stderr
    return result.returncode, json.loads(result.stdout)


def wait_for(what: str, check: Callable[[], bool], timeout_s: float, every_s: float = 2.0) -> float:
    """Seconds until ``check()`` holds; fails with ``what`` after ``timeout_s``."""
    began = time.monotonic()
    while not check():
        if time.monotonic() - began > timeout_s:
            raise AssertionError(f"{what}: not within {timeout_s:.0f} s")
        time.sleep(every_s)
    return time.monotonic() - began


def landed_records(settings: Settings) -> int:
    landing = settings.stack.state_dir / "landing"
    files = [str(p) for p in landing.glob("*/partition=*/*.parquet")]
    if not files:
        return 0
    with duckdb.connect() as con:
        row = con.execute("select count(*) from read_parquet(?, union_by_name=true)", [files]).fetchone()
    return row[0] if row else 0


def emails_accepted(settings: Settings) -> int:
    """Emails the mail server accepted, from the email simulator's journals."""
    runs = settings.stack.state_dir / "simulators" / "emails" / "runs"
    count = 0
    for journal in runs.glob("*.jsonl"):
        for line in journal.read_text().splitlines():
            if line.startswith("{") and json.loads(line).get("type") == "email":
                count += 1
    return count


@pytest.fixture(scope="module")
def pipeline(stack_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    settings = second_stack_settings(
        stack_settings, tmp_path_factory.mktemp("always-on") / "state", port_offset=PORT_OFFSET
    )
    settings.pipeline.order_rate = 4.0
    settings.pipeline.email_rate = 2.0
    settings.pipeline.masterdata_every = "30s"
    settings.pipeline.history_rows = 20_000
    settings.pipeline.start_seconds = 3
    settings.airflow.dbt_every_minutes = 1.0
    env = {**os.environ, **as_environment(settings)}
    try:
        up = omnistream(env, "up")
        assert up.returncode == 0, up.stdout + up.stderr
        yield settings
    finally:
        Stack(settings).down(purge=True)


def test_pipeline_stays_up_through_kills_and_reconciles_after_drain(pipeline: Settings) -> None:
    settings = pipeline
    env = {**os.environ, **as_environment(settings)}
    sv = Stack(settings).supervisor

    # 1. Healthy, and data flows for at least a minute.
    wait_for("status healthy after up", lambda: status(env)[0] == 0, timeout_s=300)
    _code, report = status(env)
    assert report["health"] == "healthy", report["findings"]
    expected = {s.name for s in SERVICES}
    assert {p["name"] for p in report["processes"] if p["state"] == "RUNNING"} == expected
    first = landed_records(settings)
    wait_for("records landing", lambda: landed_records(settings) > first, timeout_s=120)
    samples = [landed_records(settings)]
    for _ in range(3):
        time.sleep(20)
        samples.append(landed_records(settings))
    assert samples == sorted(samples) and samples[-1] > samples[0], samples

    # 2. kill -9, one at a time: each comes back by itself and status shows the restart.
    recovery: dict[str, float] = {}

    def kill_and_wait(name: str, back: Callable[[], bool]) -> None:
        before = sv.info(name).pid
        os.kill(before, signal.SIGKILL)
        began = time.monotonic()
        wait_for(
            f"{name} restarted", lambda: sv.info(name).state == "RUNNING" and sv.info(name).pid != before, 180
        )
        wait_for(f"{name} serving again", back, timeout_s=300)
        recovery[name] = time.monotonic() - began
        row = next(p for p in status(env)[1]["processes"] if p["name"] == name)
        assert row["restarts"] >= 1, row

    landed = landed_records(settings)
    kill_and_wait("email-producer", lambda: True)
    kill_and_wait("sink", lambda: landed_records(settings) > landed)

    def connector_running() -> bool:
        connectors = status(env)[1]["connectors"]
        return any(
            c["name"] == "onlinedb-postgres" and set(c["tasks"].values()) == {"RUNNING"} for c in connectors
        )

    kill_and_wait("connect", connector_running)

    # GreenMail keeps mail in memory: what it holds when it dies is gone (a real mailbox is durable). So
    # the emails stop first and the producer catches up; then the kill, and the emails resume.
    sv.stop("emails-simulator")

    def mailbox_drained() -> bool:
        counts = record_counts(settings, [STORE_ORDERS, dlq(STORE_ORDERS)])
        return sum(n for n, _exact in counts.values()) == emails_accepted(settings)

    wait_for("email producer caught up with the mailbox", mailbox_drained, timeout_s=180)
    kill_and_wait("greenmail", lambda: status(env)[0] in (0, 1))
    sv.start("emails-simulator")
    accepted = emails_accepted(settings)
    wait_for("emails flowing after GreenMail's restart", lambda: emails_accepted(settings) > accepted, 120)

    # 3. Airflow ran dbt on its schedule, successfully.
    airflow = AirflowClient(settings)
    wait_for(
        "a successful omnistream_dbt run", lambda: airflow.last_run("omnistream_dbt") is not None, 600, 5
    )
    wait_for("status healthy again", lambda: status(env)[0] == 0, timeout_s=300)
    print(f"recovery after kill -9 (s): {json.dumps({k: round(v, 1) for k, v in recovery.items()})}")

    # 4. Drain, then the marts equal the ground truth to the cent, and every offset landed once.
    down = omnistream(env, "down", "--drain")
    assert down.returncode == 0, down.stdout + down.stderr
    reconciled = omnistream(env, "reconcile", "--json")
    assert reconciled.returncode == 0, reconciled.stdout + reconciled.stderr
    result = json.loads(reconciled.stdout)
    assert result["ok"] and result["keys_compared"] > 0, result
    landing = Layout.from_settings(settings).root / "landing"
    by_partition: dict[tuple[str, int], list[Any]] = {}
    for path in landing.glob("*/partition=*/*.parquet"):
        landed_file = parse_file_name(path.name)
        assert landed_file is not None, path
        by_partition.setdefault((landed_file.topic, landed_file.partition), []).append(landed_file)
    assert by_partition
    for files in by_partition.values():
        assert overlapping(files) == []
        ordered = sorted(files)
        assert all(b.start == a.end + 1 for a, b in itertools.pairwise(ordered)), ordered
    with duckdb.connect() as con:
        row = con.execute(
            "select count(*), count(distinct (record_metadata.topic, record_metadata.partition,"
            " record_metadata.offset)) from read_parquet(?, union_by_name=true)",
            [str(landing / "*" / "partition=*" / "*.parquet")],
        ).fetchone()
    assert row is not None and row[0] == row[1] > 0, row


def test_marts_freshness_comes_from_airflow(pipeline: Settings) -> None:
    """Status reads the last successful dbt run from Airflow (the pipeline is down by now: none known)."""
    env = {**os.environ, **as_environment(pipeline)}
    code, report = status(env)
    assert code == 2 and report["health"] == "down"
    assert any("supervisord is not running" in f["what"] for f in report["findings"])
    assert Path(Layout.from_settings(pipeline).run / "pipeline.json").exists() is False
