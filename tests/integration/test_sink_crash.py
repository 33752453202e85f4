"""kill -9 the landing sink at random moments under load, several times: nothing lost, nothing duplicated.

The sink runs as a child process (``python -m omnistream sink``) with tiny files, so kills land before,
during and after file commits and before offset commits, while a producer keeps writing valid records,
deletes and garbage. After the last kill a final sink drains the topic; then the landed rows are compared
with a full read of the topic, by (partition, offset).
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest

from omnistream.settings import Settings
from tests.support.sink import LoadProducer, assert_exactly_once, new_topic, sink_process

pytestmark = pytest.mark.integration

KILLS = 6


def _files(directory: Path) -> int:
    return sum(1 for _ in directory.rglob("*.parquet"))


def _run_until_landing_then_kill(
    proc: subprocess.Popen[bytes], directory: Path, delay_s: float, log: Path
) -> None:
    """Wait (on the process) until it has committed a file of its own, then ``delay_s`` more, then kill -9."""
    before = _files(directory)
    deadline = time.monotonic() + 90
    while _files(directory) <= before:
        assert time.monotonic() < deadline, "the sink landed nothing:\n" + log.read_text()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=0.05)
        assert proc.returncode is None, "the sink exited by itself:\n" + log.read_text()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=delay_s)
    assert proc.returncode is None, "the sink exited by itself:\n" + log.read_text()
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL


def test_kill_9_at_random_moments_under_load_loses_and_duplicates_nothing(
    stack_settings: Settings, tmp_path: Path, unique: str
) -> None:
    topic = new_topic(stack_settings, f"sinktest.{unique}.crash")
    directory = tmp_path / "landing"
    log = tmp_path / "sink.log"
    group = f"sink-{unique}"
    args = [
        "--topics",
        topic,
        "--dir",
        str(directory),
        "--group",
        group,
        "--instance-id",
        f"{group}-0",  # a restarted sink takes its partitions back at once
        "--flush-records",
        "25",
        "--flush-seconds",
        "0.2",
    ]
    rng = random.Random(unique)
    load = LoadProducer(stack_settings, topic)
    load.start()
    try:
        for _ in range(KILLS):
            _run_until_landing_then_kill(sink_process(log, *args), directory, rng.uniform(0.0, 1.2), log)
    finally:
        load.stop.set()
        load.join(timeout=60)
    assert load.error is None, load.error
    assert load.sent > 0

    final = sink_process(log, *args, "--drain")
    assert final.wait(timeout=180) == 0, log.read_text()

    assert_exactly_once(stack_settings, directory, topic, load.sent)
    assert log.read_text().count("assigned ") >= KILLS + 1
