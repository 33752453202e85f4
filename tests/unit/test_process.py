from __future__ import annotations

import sys
from pathlib import Path

import pytest

from omnistream.settings import Settings
from omnistream.stack import process
from omnistream.stack.manager import Stack

SLEEPER = [sys.executable, "-c", "import time; time.sleep(600)"]


def test_spawn_and_stop_a_detached_process(tmp_path: Path) -> None:
    pidfile, logfile = tmp_path / "run" / "s.pid", tmp_path / "logs" / "s.log"
    pid = process.spawn(SLEEPER, pidfile=pidfile, logfile=logfile, marker="time.sleep(600)")
    assert process.alive_pid(pidfile) == pid
    assert process.stop(pidfile, timeout_s=5)
    assert not process.is_running(pid)
    assert not pidfile.exists()
    assert "starting:" in logfile.read_text()


def test_stop_leaves_alone_a_pid_that_runs_something_else(tmp_path: Path) -> None:
    pidfile = tmp_path / "s.pid"
    pid = process.spawn(SLEEPER, pidfile=pidfile, logfile=tmp_path / "s.log", marker="time.sleep(600)")
    try:
        # The pid file now claims the process runs another command, as after a reboot and pid reuse.
        pidfile.write_text(f"{pid}\nkafka.Kafka /elsewhere/server.properties\n")
        assert process.alive_pid(pidfile) is None
        assert not process.stop(pidfile)
        assert process.is_running(pid)
    finally:
        pidfile.write_text(f"{pid}\ntime.sleep(600)\n")
        process.stop(pidfile, timeout_s=5)


def test_select_adds_what_a_service_needs_in_start_order(tmp_path: Path) -> None:
    stack = Stack(Settings(stack={"state_dir": tmp_path}))
    assert [s.name for s in stack.select(["connect"])] == ["kafka", "connect"]
    assert [s.name for s in stack.select(["registry", "postgres"])] == ["postgres", "kafka", "registry"]
    with pytest.raises(ValueError, match="unknown service"):
        stack.select(["zookeeper"])


def test_tail_returns_the_last_lines(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    log.write_text("\n".join(f"line {i}" for i in range(100)))
    assert process.tail(log, 3).splitlines() == ["line 97", "line 98", "line 99"]
    assert process.tail(tmp_path / "missing.log") == "(no log yet)"
