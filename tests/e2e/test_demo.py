"""The demo at small scale, end to end, on a stack of its own, reconciled against the manifests.

It runs `omnistream demo` exactly as `make demo` does, in a second stack (own state directory and
ports, shared downloads) so it starts from empty servers without disturbing the session's stack.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from omnistream.settings import Settings
from omnistream.stack.manager import Stack
from omnistream.topics import PIPELINE_TOPICS
from tests.support.second_stack import as_environment, second_stack_settings

pytestmark = pytest.mark.integration


def test_demo_reconciles_the_marts_with_every_source(stack_settings: Settings, tmp_path: Path) -> None:
    settings = second_stack_settings(stack_settings, tmp_path / "demo", port_offset=600)
    env = {**os.environ, **as_environment(settings)}
    try:
        demo = subprocess.run(
            [sys.executable, "-m", "omnistream", "demo", "--scale", "small"],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        report_path = tmp_path / "demo" / "demo-report.json"
        assert demo.returncode == 0, demo.stdout[-5000:] + demo.stderr[-5000:]
        report = json.loads(report_path.read_text())
    finally:
        Stack(settings).down(purge=True)

    assert report["mismatches"] == []
    assert report["reconciled_keys"] > 1000  # ten years of history plus today's live days
    for topic in PIPELINE_TOPICS:
        assert report["landed_rows"].get(topic, 0) > 0, topic
    for mart in ("fct_orders", "fct_order_lines", "fct_daily_sales", "dim_customers", "dim_products"):
        assert report["mart_rows"][mart] > 0, mart
    assert set(report["revenue"]) == {"online", "in_store"}
    # The history came from the bucket (load-history), and a second load of the same objects loaded nothing.
    history = report["history_load"]
    assert history["first"]["loaded"] > 0 and history["again"]["loaded"] == 0
    assert history["ledger"]["from_bucket"] == history["ledger"]["files"] == history["first"]["loaded"]
    assert "reconciliation: marts equal the ground-truth manifests" in demo.stdout
