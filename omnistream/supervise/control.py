"""supervisord itself: start it for a state directory, talk to it over its XML-RPC socket, stop it.

One supervisord per state directory owns every process of that stack. omnistream never signals a
process itself: it asks supervisord to start or stop a program, and supervisord keeps it alive.
"""

from __future__ import annotations

import contextlib
import logging
import subprocess
import sys
import time
import xmlrpc.client
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
from supervisor.xmlrpc import SupervisorTransport

from omnistream.errors import OmnistreamError
from omnistream.supervise.config import SupervisorPaths

log = logging.getLogger(__name__)

RUNNING_STATES = ("STARTING", "RUNNING", "BACKOFF", "STOPPING")


class SupervisorError(OmnistreamError):
    """supervisord did not start, or refused a request; the message says what to do."""


@dataclass(frozen=True)
class ProcessInfo:
    name: str
    state: str  # STOPPED, STARTING, RUNNING, BACKOFF, STOPPING, EXITED, FATAL, UNKNOWN
    pid: int
    started_at: float  # unix seconds of the last start; 0 if never started
    now: float
    exit_status: int
    spawn_error: str
    description: str

    @property
    def uptime_s(self) -> float:
        return max(0.0, self.now - self.started_at) if self.state == "RUNNING" else 0.0

    def rss_bytes(self) -> int:
        """Resident memory of the process and all its children (a JVM, Airflow's task processes)."""
        if not self.pid:
            return 0
        try:
            root = psutil.Process(self.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            return 0
        total = 0
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                total += proc.memory_info().rss
        return total


class Supervisor:
    """A handle on the supervisord of one state directory."""

    def __init__(self, paths: SupervisorPaths) -> None:
        self.paths = paths

    def _proxy(self) -> Any:
        transport = SupervisorTransport(None, None, f"unix://{self.paths.socket}")
        return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)

    @property
    def rpc(self) -> Any:
        return self._proxy().supervisor

    def is_running(self) -> bool:
        if not self.paths.socket.exists():
            return False
        try:
            return self.rpc.getState()["statename"] == "RUNNING"
        except (OSError, xmlrpc.client.Fault):
            return False

    def ensure_running(self, timeout_s: float = 30.0) -> bool:
        """Start supervisord with the rendered configuration unless it runs; True if it was started."""
        if self.is_running():
            return False
        self.paths.socket.unlink(missing_ok=True)  # left by a supervisord that was killed
        self.paths.events.unlink(missing_ok=True)  # restart counts start afresh with the supervisor
        supervisord = Path(sys.executable).parent / "supervisord"
        result = subprocess.run(
            [str(supervisord), "-c", str(self.paths.conf)], capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            raise SupervisorError(
                f"supervisord did not start: {(result.stderr or result.stdout).strip()}; "
                f"see {self.paths.logfile}"
            )
        deadline = time.monotonic() + timeout_s
        while not self.is_running():
            if time.monotonic() > deadline:
                raise SupervisorError(
                    f"supervisord did not answer on {self.paths.socket}; see {self.paths.logfile}"
                )
            time.sleep(0.2)
        return True

    def reread(self) -> None:
        """Apply a changed configuration: add new programs, replace changed ones, drop removed ones.

        The same as ``supervisorctl update``; a changed program is stopped and re-added (not restarted:
        programs do not autostart, the caller starts what it needs).
        """
        added, changed, removed = self.rpc.reloadConfig()[0]
        for name in removed + changed:
            with contextlib.suppress(xmlrpc.client.Fault):
                self.rpc.stopProcessGroup(name)
            self.rpc.removeProcessGroup(name)
        for name in added + changed:
            self.rpc.addProcessGroup(name)

    def info(self, name: str) -> ProcessInfo:
        return _info(self.rpc.getProcessInfo(name))

    def all_info(self) -> dict[str, ProcessInfo]:
        return {i["name"]: _info(i) for i in self.rpc.getAllProcessInfo()}

    def start(self, name: str) -> None:
        """Start a program unless it is already starting or running (idempotent)."""
        try:
            self.rpc.startProcess(name, False)
        except xmlrpc.client.Fault as fault:
            if "ALREADY_STARTED" not in fault.faultString:
                raise SupervisorError(f"supervisord could not start {name}: {fault.faultString}") from None

    def stop(self, name: str) -> bool:
        """Stop a program and wait until it exited (supervisord sends SIGKILL after stopwaitsecs)."""
        try:
            self.rpc.stopProcess(name, True)
        except xmlrpc.client.Fault as fault:
            if "NOT_RUNNING" in fault.faultString:
                return False
            raise SupervisorError(f"supervisord could not stop {name}: {fault.faultString}") from None
        return True

    def shutdown(self, timeout_s: float = 60.0) -> None:
        """Stop supervisord (its programs were stopped in order before); wait until its pid is gone."""
        pid = int(self.paths.pidfile.read_text().strip()) if self.paths.pidfile.exists() else 0
        with contextlib.suppress(OSError, xmlrpc.client.Fault):
            self.rpc.shutdown()
        if pid:
            with contextlib.suppress(psutil.Error):
                psutil.Process(pid).wait(timeout_s)


def _info(raw: dict[str, Any]) -> ProcessInfo:
    return ProcessInfo(
        name=raw["name"],
        state=raw["statename"],
        pid=raw["pid"],
        started_at=float(raw["start"]),
        now=float(raw["now"]),
        exit_status=raw["exitstatus"],
        spawn_error=raw.get("spawnerr", ""),
        description=raw.get("description", ""),
    )
