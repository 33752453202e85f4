"""Helpers for tests that run a simulator as a supervisor would: a subprocess, stopped by a signal."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from omnistream.manifest import journal_paths, read_journal
from omnistream.stack.versions import PROJECT_ROOT


def start(args: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """``omnistream <args>`` in the background, its output appended to ``log``."""
    with log.open("ab") as log_file:
        return subprocess.Popen(
            [sys.executable, "-m", "omnistream", *args],
            cwd=PROJECT_ROOT,
            env={**os.environ, **(env or {})},
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )


def stop(process: subprocess.Popen[bytes], sig: signal.Signals, log: Path) -> None:
    """Send ``sig`` and wait for the process to end (failing with its log if it does not)."""
    process.send_signal(sig)
    try:
        process.wait(timeout=120)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise AssertionError(f"the simulator did not stop on {sig.name}:\n{log.read_text()}") from None


def records_by_run(out: Path) -> dict[str, list[dict[str, Any]]]:
    """Each run's journal records, in run order (read as they are written: a torn last line is left out)."""
    return {path.stem: read_journal(path) for path in journal_paths(out)}


def wait_for_records(
    out: Path, kind: str, at_least: int, process: subprocess.Popen[bytes], log: Path, run: int = -1
) -> list[dict[str, Any]]:
    """The records of run ``run`` (default: the last) once it has journalled ``at_least`` of ``kind``."""
    deadline = time.monotonic() + 180
    while True:
        journals = list(records_by_run(out).values())
        records = journals[run] if -len(journals) <= run < len(journals) else []
        if sum(r["type"] == kind for r in records) >= at_least:
            return records
        assert process.poll() is None, f"the simulator exited early:\n{log.read_text()}"
        assert time.monotonic() < deadline, (
            f"{at_least} {kind} records did not come in time:\n{log.read_text()}"
        )
        time.sleep(0.2)


def wait_for_log(log: Path, text: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while text not in log.read_text():
        assert process.poll() is None, f"the simulator exited:\n{log.read_text()}"
        assert time.monotonic() < deadline, f"{text!r} was not logged:\n{log.read_text()}"
        time.sleep(0.2)
