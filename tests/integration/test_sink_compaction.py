"""Compaction under load and kill -9: merged files replace small ones and no record is lost or doubled.

The sink runs as a child process (``python -m omnistream sink``) with tiny files and compaction every
fraction of a second, so kills land before, during and after merges and sweeps (a merged file written but
its parts not deleted yet, some parts deleted, a temporary half-written). Meanwhile a reader lists and reads
the landing zone the way the reader contract says, again and again, and checks each read: every offset
once, files contiguous from the first offset. After the last kill a final sink drains the topic and waits
out the grace; then the landed rows are compared with a full read of the topic, by (partition, offset).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import signal
import subprocess
import threading
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from omnistream.settings import Settings
from omnistream.sink.layout import LandedFile, covering, live_files, parse_file_name
from tests.support.sink import (
    LoadProducer,
    assert_exactly_once,
    new_topic,
    poll_until,
    sink_process,
)

pytestmark = pytest.mark.integration

KILLS = 8
# Tiny files (cut every 0.1 s, below 1000 records), merged three at a time, checked often; merged-away
# files stay 2 s for the reader.
COMPACTION = {
    "OMNISTREAM_LANDING__COMPACT_FILES": "3",
    "OMNISTREAM_LANDING__COMPACT_RECORDS": "400",
    "OMNISTREAM_LANDING__COMPACT_GRACE_SECONDS": "2",
    "OMNISTREAM_LANDING__COMPACT_EVERY_SECONDS": "0.1",
}


def _listing(directory: Path, topic: str) -> dict[int, list[LandedFile]]:
    out: dict[int, list[LandedFile]] = {}
    for path in directory.glob(f"{topic}/partition=*/*.parquet"):
        f = parse_file_name(path.name)
        if f is not None:
            out.setdefault(f.partition, []).append(f)
    return out


def _merged_files(directory: Path, topic: str) -> set[LandedFile]:
    """Files that cover others now (merges whose parts are still there)."""
    return {cover for files in _listing(directory, topic).values() for cover in covering(files).values()}


class ContractReader(threading.Thread):
    """Reads the landing zone as the reader contract says, until stopped; keeps what went wrong."""

    def __init__(self, directory: Path, topic: str) -> None:
        super().__init__(name="reader", daemon=True)
        self.directory = directory
        self.topic = topic
        self.stop = threading.Event()
        self.reads = 0
        self.vanished = 0  # a file deleted between the listing and its read: an error, never a gap
        self.problems: list[str] = []

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.read_once()
            except FileNotFoundError:
                self.vanished += 1
            except Exception as exc:  # a torn file would show up here
                self.problems.append(f"{type(exc).__name__}: {exc}")

    def read_once(self) -> None:
        for partition, files in _listing(self.directory, self.topic).items():
            live = live_files(files)
            for a, b in itertools.pairwise(live):
                if b.start != a.end + 1:
                    self.problems.append(f"partition {partition}: {a.name} then {b.name}")
            if live and live[0].start != 0:
                self.problems.append(f"partition {partition}: the first live file is {live[0].name}")
            offsets: list[int] = []
            for f in live:
                table = pq.read_table(self.directory / f.path, columns=["record_metadata"])
                offsets.extend(table.column("record_metadata").combine_chunks().field("offset").to_pylist())
            if len(offsets) != len(set(offsets)):
                self.problems.append(f"partition {partition}: an offset read twice")
        self.reads += 1


def _run_then_kill(proc: subprocess.Popen[bytes], delay_s: float, log: Path) -> None:
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=delay_s)
    assert proc.returncode is None, "the sink exited by itself:\n" + log.read_text()[-3000:]
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL


def test_kill_9_during_compaction_loses_and_duplicates_nothing(
    stack_settings: Settings, tmp_path: Path, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in COMPACTION.items():
        monkeypatch.setenv(name, value)
    topic = new_topic(stack_settings, f"sinktest.{unique}.compact", partitions=2)
    directory = tmp_path / "landing"
    log = tmp_path / "sink.log"
    group = f"sink-{unique}"
    args = ["--topics", topic, "--dir", str(directory), "--group", group, "--instance-id", f"{group}-0"]
    args += ["--flush-records", "1000", "--flush-seconds", "0.1", "--metrics-port", "0"]
    rng = random.Random(unique)
    load = LoadProducer(stack_settings, topic, rate=400)
    reader = ContractReader(directory, topic)
    load.start()
    try:
        first = sink_process(log, *args)
        poll_until(lambda: _merged_files(directory, topic), 180, "a first merge")
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
        reader.start()
        for _ in range(KILLS):
            # Kill once the restarted sink merges again, at a random moment around its merges.
            proc = sink_process(log, *args)
            merges = log.read_text().count("merged ")
            poll_until(lambda n=merges: log.read_text().count("merged ") > n, 180, "a merge after a restart")
            _run_then_kill(proc, rng.uniform(0.0, 0.8), log)
    finally:
        load.stop.set()
        load.join(timeout=60)
    assert load.error is None, load.error

    final = sink_process(log, *args, "--drain")
    assert final.wait(timeout=300) == 0, log.read_text()[-3000:]
    reader.stop.set()
    reader.join(timeout=60)

    assert reader.problems == []
    assert reader.reads > 0
    # None is covered after the drain, and the files are mostly merged ones: a flush holds about 20
    # records here (200 a second a partition, 0.1 s), a merge at least three flushes.
    listing = _listing(directory, topic)
    assert all(covering(files) == {} for files in listing.values())
    assert sum(map(len, listing.values())) <= load.sent // 40 + 10
    assert log.read_text().count("merged ") >= KILLS + 1
    assert_exactly_once(stack_settings, directory, topic, load.sent)
