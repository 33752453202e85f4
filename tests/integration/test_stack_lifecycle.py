"""``omnistream stack``: idempotent up, a down that leaves nothing behind, failures reported by name."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from omnistream.settings import Settings
from omnistream.stack.layout import Layout
from omnistream.stack.manager import ServiceFailed, Stack
from omnistream.stack.services import SERVICE_NAMES
from tests.support.second_stack import second_stack_settings

pytestmark = pytest.mark.integration


def test_up_twice_leaves_running_services_alone(stack_settings: Settings) -> None:
    stack = Stack(stack_settings)
    before = {name: stack.pid(service) for name, service in stack.services.items()}
    report = stack.up()
    assert report.started == []
    assert sorted(report.already_running) == sorted(SERVICE_NAMES)
    assert {name: stack.pid(service) for name, service in stack.services.items()} == before
    assert all(s.healthy for s in stack.status())


def test_down_stops_every_process_it_started(stack_settings: Settings, tmp_path: Path) -> None:
    settings = second_stack_settings(stack_settings, tmp_path / "second", port_offset=200)
    stack = Stack(settings)
    try:
        stack.up()
        pids = {name: stack.pid(service) for name, service in stack.services.items()}
        assert all(pids.values()), pids
        supervisord = psutil.Process(int(stack.supervisor.paths.pidfile.read_text()))
        family = [supervisord, *supervisord.children(recursive=True)]
        assert {p.pid for p in family} >= set(pids.values())  # every server is supervisord's child
    finally:
        stopped = stack.down(purge=True)
    assert set(SERVICE_NAMES) <= set(stopped)
    survivors = [p.pid for p in family if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert survivors == []
    assert sorted(p.name for p in (tmp_path / "second").iterdir()) == ["stack.lock"]


def test_taken_port_is_reported_with_the_service_name(stack_settings: Settings, tmp_path: Path) -> None:
    settings = second_stack_settings(stack_settings, tmp_path / "taken", port_offset=300)
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind((settings.gcs.host, settings.gcs.port))
        squatter.listen()
        try:
            with pytest.raises(ServiceFailed) as failure:
                Stack(settings).up(["gcs"])
        finally:
            Stack(settings).down()
        assert failure.value.service == "gcs"
        assert "already in use" in failure.value.reason

        env = {
            **os.environ,
            "OMNISTREAM_STACK__STATE_DIR": str(tmp_path / "taken"),
            "OMNISTREAM_STACK__DIST_DIR": str(Layout.from_settings(stack_settings).dist),
            "OMNISTREAM_GCS__PORT": str(settings.gcs.port),
        }
        try:
            cli = subprocess.run(
                [sys.executable, "-m", "omnistream", "stack", "up", "gcs"],
                env=env,
                capture_output=True,
                text=True,
                check=False,
            )
        finally:
            down = [sys.executable, "-m", "omnistream", "stack", "down"]
            subprocess.run(down, env=env, capture_output=True, check=False)
    assert cli.returncode == 1
    assert "gcs did not come up" in cli.stdout
    assert f"port {settings.gcs.port}" in cli.stdout


def test_status_command_reports_every_service_healthy(stack_settings: Settings) -> None:
    cli = subprocess.run(
        [sys.executable, "-m", "omnistream", "stack", "status"], capture_output=True, text=True, check=False
    )
    assert cli.returncode == 0, cli.stdout + cli.stderr
    for name in SERVICE_NAMES:
        assert name in cli.stdout
    assert cli.stdout.count("healthy") == len(SERVICE_NAMES)
