"""The real supervisord as omnistream drives it: restarts after kill -9, crash loops made visible, revived."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from omnistream.settings import Settings
from omnistream.stack.layout import Layout
from omnistream.supervise import config
from omnistream.supervise.control import Supervisor
from omnistream.supervise.events import read_history
from omnistream.supervise.programs import Program
from omnistream.supervise.watchdog import Watchdog, read_restarts
from tests.support.waiting import wait_for


@pytest.fixture
def supervised(tmp_path: Path) -> Iterator[tuple[Settings, Supervisor]]:
    settings = Settings(
        stack={"state_dir": tmp_path / "state"},
        pipeline={"start_seconds": 1, "start_retries": 2, "watch_every_s": 30, "restart_backoff_max_s": 120},
    )
    layout = Layout.from_settings(settings)
    sleeper = [sys.executable, "-c", "import time; print('up', flush=True); time.sleep(600)"]
    crasher = [sys.executable, "-c", "import sys; print('cannot start', flush=True); sys.exit(3)"]
    programs = [
        Program("sleeper", "pipeline", sleeper, tmp_path, {"OMNISTREAM_X": "1"}),
        Program("crasher", "pipeline", crasher, tmp_path),
    ]
    config.write(settings, layout, programs)
    supervisor = Supervisor(config.SupervisorPaths.for_layout(layout))
    assert supervisor.ensure_running()
    try:
        yield settings, supervisor
    finally:
        for name in ("sleeper", "crasher"):
            supervisor.stop(name)
        supervisor.shutdown()
    assert not supervisor.is_running()


def test_a_killed_program_is_restarted_and_the_restart_counted(
    supervised: tuple[Settings, Supervisor],
) -> None:
    _, supervisor = supervised
    supervisor.start("sleeper")
    supervisor.start("sleeper")  # idempotent
    wait_for("sleeper running", lambda: supervisor.info("sleeper").state == "RUNNING")
    first = supervisor.info("sleeper").pid
    os.kill(first, signal.SIGKILL)
    wait_for(
        "sleeper restarted",
        lambda: supervisor.info("sleeper").state == "RUNNING" and supervisor.info("sleeper").pid != first,
    )
    wait_for("restart recorded", lambda: read_history(supervisor.paths.events).restarts["sleeper"] == 1)
    assert supervisor.info("sleeper").rss_bytes() > 0
    assert "up" in (Layout.from_settings(supervised[0]).log_file("sleeper")).read_text()


def test_a_crash_loop_ends_fatal_and_the_watchdog_starts_it_again(
    supervised: tuple[Settings, Supervisor],
) -> None:
    settings, supervisor = supervised
    supervisor.start("crasher")
    wait_for("crasher FATAL after its retries", lambda: supervisor.info("crasher").state == "FATAL")
    assert read_history(supervisor.paths.events).restarts["crasher"] >= 2  # BACKOFF → STARTING, twice
    watchdog = Watchdog(settings)
    watchdog.check_programs(supervisor, now=time.monotonic())
    counts, _ = read_restarts(supervisor.paths.watchdog)
    assert counts["program/crasher"] == 1
    assert supervisor.info("crasher").state in ("STARTING", "BACKOFF", "FATAL", "RUNNING")
    wait_for("crasher FATAL again", lambda: supervisor.info("crasher").state == "FATAL")
    # Backoff: an immediate second look does not start it again.
    watchdog.check_programs(supervisor, now=time.monotonic())
    assert read_restarts(supervisor.paths.watchdog)[0]["program/crasher"] == 1
