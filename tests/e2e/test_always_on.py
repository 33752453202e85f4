"""``omnistream up`` left running, the way users run it: the chaos soak's 3-minute version (bench/soak.py).

On a stack of its own (own state directory and ports), the soak brings the whole pipeline up under
supervisord and, while the simulators run, kills -9 the sink, both producers, Kafka Connect, the broker,
GreenMail and PostgreSQL, sends poison emails and holds a quiet period on the shop's tables. Each part
must come back by itself with its restart shown by ``omnistream status``, Airflow must run dbt on its
schedule, and after ``omnistream down --drain`` the marts must equal the simulators' ground truth to the
cent, every poison email must be in the DLQ with a reason and every landed offset must be there once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from omnistream.settings import Settings

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SOAK = ROOT / "bench" / "soak.py"
KILLED = ("sink", "email-producer", "masterdata-producer", "connect", "kafka", "greenmail", "postgres")
POISON = ("decimal-overflow", "too-large", "negative-price", "malformed-mime")


def soak_environment() -> dict[str, str]:
    """This environment with the repository root first on the path: the soak imports ``tests.support``."""
    path = [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(path)}


def test_the_pipeline_survives_three_minutes_of_chaos_and_reconciles(stack_settings: Settings) -> None:
    # stack_settings: the shared downloads are installed; the soak runs its own second stack beside it.
    run = subprocess.run(
        [sys.executable, str(SOAK), "--minutes", "3", "--seed", "11", "--port-offset", "700", "--json"],
        env=soak_environment(),
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.stdout.strip(), run.stderr[-3000:]
    report = json.loads(run.stdout)
    print(json.dumps({k: report[k] for k in ("minutes", "faults", "recovery_s", "max_lag_records")}))
    assert report["failures"] == [], report["failures"]
    assert run.returncode == 0, run.stderr[-3000:]

    # Every kind of fault happened, and each killed part came back with its restart shown by status.
    assert {f"kill:{name}" for name in KILLED} <= set(report["faults"])
    assert {f"poison:{kind}" for kind in POISON} <= set(report["faults"]) and "quiet" in report["faults"]
    for name in KILLED:
        assert report["restarts_shown"][name] >= report["faults"][f"kill:{name}"], name
        assert report["recovery_s"][name] > 0, name

    # Data flowed, Airflow ran dbt on its schedule, and status was healthy once the faults stopped.
    assert report["records_landed"] > 0
    assert report["dbt_runs_succeeded"] >= 1
    assert report["healthy_before_drain"]

    # Nothing lost, nothing duplicated, poison kept with its reason.
    assert report["reconciliation"]["ok"] and report["reconciliation"]["keys_compared"] > 0
    assert report["offsets_exactly_once"]
    assert set(report["poison_in_dlq"]) == set(report["poison_sent"])
    assert all(reason.strip() for reason in report["poison_in_dlq"].values())
