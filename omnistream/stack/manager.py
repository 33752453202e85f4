"""Start, check and stop the local stack's servers, as programs of the stack's supervisord.

supervisord (omnistream/supervise) owns every process: this module renders its configuration, asks it to
start each server once what the server needs answers, waits until the server answers a real request and
bootstraps it. A server that crashes later is restarted by supervisord, not by this code.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from omnistream.errors import OmnistreamError
from omnistream.settings import SECRETS_FILE, Settings
from omnistream.stack import process
from omnistream.stack.install import install_jars, postgres_bin_dir
from omnistream.stack.layout import Layout
from omnistream.stack.secrets import ensure_local_secrets
from omnistream.stack.services import SERVICE_NAMES, Postgres, Service, build_services
from omnistream.supervise import config
from omnistream.supervise.catalogue import SERVICES
from omnistream.supervise.control import RUNNING_STATES, Supervisor
from omnistream.supervise.programs import build_programs

log = logging.getLogger(__name__)

Progress = Callable[[str], None]


class ServiceFailed(OmnistreamError):
    """A service did not come up; says which, why, and where its log is."""

    def __init__(self, service: str, reason: str, logfile: Path) -> None:
        self.service, self.reason, self.logfile = service, reason, logfile
        super().__init__(
            f"{service} did not come up: {reason}\n"
            f"log: {logfile}\n--- last lines ---\n{process.tail(logfile)}"
        )


@dataclass
class ServiceStatus:
    name: str
    pid: int | None
    endpoints: dict[str, str]
    healthy: bool
    detail: str = ""
    rss_kib: int = 0


@dataclass
class UpReport:
    started: list[str] = field(default_factory=list)
    already_running: list[str] = field(default_factory=list)
    seconds: float = 0.0


class Stack:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.layout = Layout.from_settings(settings)
        self.services = build_services(settings, self.layout)
        self.supervisor = Supervisor(config.SupervisorPaths.for_layout(self.layout))

    def select(self, names: Iterable[str] | None) -> list[Service]:
        """The named services plus everything they need, in start order."""
        wanted = set(names or SERVICE_NAMES)
        unknown = wanted - set(SERVICE_NAMES)
        if unknown:
            raise ValueError(f"unknown service(s) {sorted(unknown)}; choose from {list(SERVICE_NAMES)}")
        todo = list(wanted)
        while todo:
            for need in self.services[todo.pop()].needs:
                if need not in wanted:
                    wanted.add(need)
                    todo.append(need)
        return [self.services[n] for n in SERVICE_NAMES if n in wanted]

    def install(self, progress: Progress = log.info) -> None:
        progress("checking installed servers (the first run downloads about 700 MB from Maven Central)")
        fetched = install_jars(self.layout.dist)
        if fetched:
            progress(f"fetched {', '.join(fetched)}")
        postgres_bin_dir()

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """One ``up``/``down`` at a time per state directory (two shells, or parallel test runs)."""
        self.layout.root.mkdir(parents=True, exist_ok=True)
        with (self.layout.root / "stack.lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def pid(self, service: Service) -> int | None:
        """The server's pid while supervisord runs it, else None."""
        if not self.supervisor.is_running():
            return None
        info = self.supervisor.info(service.name)
        return info.pid if info.state in ("STARTING", "RUNNING") and info.pid else None

    def ensure_supervisor(self) -> None:
        """Render supervisord's configuration and start it, or make a running one take the new version."""
        programs = build_programs(self.settings, self.layout, self.services)
        _, changed = config.write(self.settings, self.layout, programs)
        if not self.supervisor.ensure_running() and changed:
            self.supervisor.reread()

    def up(self, names: Iterable[str] | None = None, progress: Progress = log.info) -> UpReport:
        """Start what is not running and wait until every selected service answers a real request."""
        with self._exclusive():
            return self._up(names, progress)

    def _up(self, names: Iterable[str] | None, progress: Progress) -> UpReport:
        began = time.monotonic()
        selected = self.select(names)
        self.install(progress)
        drawn = ensure_local_secrets(self.settings)
        if drawn:
            progress(f"generated {', '.join(drawn)} into {self.layout.root / SECRETS_FILE} (mode 0600)")
        self.ensure_supervisor()
        report = UpReport()
        pending = {s.name: s for s in selected}
        started_at: dict[str, float] = {}
        healthy: set[str] = set()
        deadline = time.monotonic() + self.settings.stack.start_timeout_s
        while pending:
            for service in list(pending.values()):
                if service.name in started_at or not set(service.needs) <= healthy:
                    continue
                if self.supervisor.info(service.name).state in RUNNING_STATES:
                    report.already_running.append(service.name)
                else:
                    self._start(service)
                    report.started.append(service.name)
                started_at[service.name] = time.monotonic()
                progress(f"{service.name}: waiting until it answers")
            for name in [n for n in pending if n in started_at]:
                service = pending[name]
                info = self.supervisor.info(name)
                if info.state in ("FATAL", "EXITED", "STOPPED"):
                    reason = f"the process exited ({info.description or info.spawn_error})"
                    raise ServiceFailed(name, reason, self.layout.log_file(name))
                error = _check(service) or _bootstrap(service)
                if error is None:
                    healthy.add(name)
                    del pending[name]
                    progress(f"{name}: ready after {time.monotonic() - started_at[name]:.1f}s")
                elif time.monotonic() > deadline:
                    raise ServiceFailed(
                        name,
                        f"no answer within {self.settings.stack.start_timeout_s:.0f}s ({error})",
                        self.layout.log_file(name),
                    )
            if pending:
                time.sleep(0.3)
        report.seconds = time.monotonic() - began
        return report

    def _start(self, service: Service) -> None:
        logfile = self.layout.log_file(service.name)
        for label, (host, port) in service.ports().items():
            if process.port_open(host, port):
                raise ServiceFailed(
                    service.name,
                    f"port {port} ({label}) on {host} is already in use by another process; "
                    f"stop it or choose another port (see the configuration reference)",
                    logfile,
                )
        try:
            service.prepare()
            self.supervisor.start(service.name)
        except Exception as exc:  # initdb, formatting storage, exec…: say which service and why
            raise ServiceFailed(service.name, f"could not be started: {exc}", logfile) from exc

    def stop_programs(self, names: Iterable[str], progress: Progress = log.info) -> list[str]:
        """Stop these programs one after another (each finishes its unit of work first)."""
        stopped = []
        for name in names:
            if self.supervisor.stop(name):
                stopped.append(name)
                progress(f"{name}: stopped")
        return stopped

    def down(self, purge: bool = False, progress: Progress = log.info) -> list[str]:
        """Stop every program (pipeline first, servers last), then supervisord; ``purge`` deletes the data."""
        with self._exclusive():
            return self._down(purge, progress)

    def _down(self, purge: bool, progress: Progress) -> list[str]:
        stopped: list[str] = []
        if self.supervisor.is_running():
            programs = self.supervisor.all_info()
            # Everything that is not a server stops first, in reverse start order, then the servers.
            order = [s.name for s in reversed(SERVICES)] + sorted(programs)
            others = [n for n in dict.fromkeys(order) if n in programs and n not in SERVICE_NAMES]
            stopped = self.stop_programs(others, progress)
            stopped += self.stop_programs([n for n in reversed(SERVICE_NAMES) if n in programs], progress)
            self.supervisor.shutdown()
            progress("supervisord: stopped")
        if purge:
            postgres = self.services["postgres"]
            assert isinstance(postgres, Postgres)
            if postgres.data_dir.is_symlink():
                shutil.rmtree(postgres.data_dir.resolve(), ignore_errors=True)
            # Everything under the state directory but the downloads is data the servers or the pipeline
            # wrote (landing files, the warehouse, simulator output, secrets): a purge leaves none of it,
            # since landed files left beside emptied topics would be taken for records already landed.
            for entry in self.layout.root.iterdir():
                if entry == self.layout.dist or entry.name == "stack.lock":
                    continue
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
            progress(f"purged everything under {self.layout.root} but the downloads")
        return stopped

    def status(self) -> list[ServiceStatus]:
        infos = self.supervisor.all_info() if self.supervisor.is_running() else {}
        out = []
        for service in self.services.values():
            info = infos.get(service.name)
            pid = info.pid if info and info.state in ("STARTING", "RUNNING") and info.pid else None
            error = _check(service) if pid else (f"not running ({info.state})" if info else "not running")
            out.append(
                ServiceStatus(
                    name=service.name,
                    pid=pid,
                    endpoints=service.endpoints(),
                    healthy=error is None,
                    detail=error or "",
                    rss_kib=(info.rss_bytes() // 1024) if info else 0,
                )
            )
        return out


def _bootstrap(service: Service) -> str | None:
    """None once the service's set-up is done, else why not. A server that answers reads may still be
    slow to take its first write (the registry's kafkasql storage writes through Kafka and waits to read
    it back), so a failed set-up is retried like a failed check, until the start deadline."""
    try:
        service.bootstrap()
    except Exception as exc:  # the same "not ready yet" as a failed check; the last reason is reported
        return f"set-up failed: {type(exc).__name__}: {exc}".strip()
    return None


def _check(service: Service) -> str | None:
    """None when the service answers a real request, else why not."""
    try:
        service.check()
    except Exception as exc:  # any client error means "not ready": keep the reason for the report
        return f"{type(exc).__name__}: {exc}".strip()
    return None
