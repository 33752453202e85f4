"""The watchdog: what supervisord cannot see or gives up on.

- A Kafka Connect task that FAILED stays FAILED until someone restarts it through Connect's REST API
  (its worker process is fine, so supervisord has nothing to restart). The watchdog restarts the failed
  tasks (``POST /connectors/{name}/restart?includeTasks=true&onlyFailed=true``).
- A program that supervisord marked FATAL (it kept dying right after each start, e.g. while a server it
  needs was down) is started again.

Both with exponential backoff per target (from ``watch_every_s`` up to ``restart_backoff_max_s``), reset
once the target has run for a while. Every restart is appended to ``run/watchdog.jsonl``, which
``omnistream status`` shows. The watchdog itself runs under supervisord.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from omnistream.connect.client import ConnectClient, ConnectError
from omnistream.settings import Settings
from omnistream.stack.layout import Layout
from omnistream.supervise.config import SupervisorPaths
from omnistream.supervise.control import Supervisor

log = logging.getLogger(__name__)


@dataclass
class Backoff:
    """Per-target exponential backoff: the next attempt is allowed at ``not_before``."""

    first_s: float
    max_s: float
    delay: dict[str, float] = field(default_factory=dict)
    not_before: dict[str, float] = field(default_factory=dict)

    def ready(self, target: str, now: float) -> bool:
        return now >= self.not_before.get(target, 0.0)

    def attempted(self, target: str, now: float) -> float:
        delay = min(self.max_s, self.delay.get(target, self.first_s / 2) * 2)
        self.delay[target] = delay
        self.not_before[target] = now + delay
        return delay

    def healthy(self, target: str) -> None:
        self.delay.pop(target, None)
        self.not_before.pop(target, None)


def record(path: Path, kind: str, target: str, detail: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as journal:
        journal.write(
            json.dumps({"at": time.time(), "kind": kind, "target": target, "detail": detail}) + "\n"
        )


def read_restarts(path: Path) -> tuple[Counter[str], dict[str, float]]:
    """(restarts per target, time of the last one) from the watchdog's journal."""
    counts: Counter[str] = Counter()
    last: dict[str, float] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            counts[entry["target"]] += 1
            last[entry["target"]] = float(entry["at"])
    return counts, last


class Watchdog:
    def __init__(self, settings: Settings, watch_programs: bool = True) -> None:
        self.settings = settings
        self.watch_programs = watch_programs
        self.paths = SupervisorPaths.for_layout(Layout.from_settings(settings))
        p = settings.pipeline
        self.backoff = Backoff(first_s=p.watch_every_s, max_s=p.restart_backoff_max_s)
        self.stop = threading.Event()

    def check_connect(self, client: ConnectClient, now: float) -> None:
        for status in client.statuses():
            failed_tasks = [t.id for t in status.tasks if t.state == "FAILED"]
            if status.state != "FAILED" and not failed_tasks:
                self.backoff.healthy(f"connector/{status.name}")
                continue
            target = f"connector/{status.name}"
            if not self.backoff.ready(target, now):
                continue
            what = "connector" if status.state == "FAILED" else f"task(s) {failed_tasks}"
            reason = status.failures()[0][1].splitlines()[0] if status.failures() else ""
            client.restart(status.name, only_failed=True)
            delay = self.backoff.attempted(target, now)
            log.warning(
                "restarted failed %s of %s (%s); next try in ≥ %.0f s", what, status.name, reason, delay
            )
            record(self.paths.watchdog, "connect", target, f"{what}: {reason}"[:500])

    def check_programs(self, supervisor: Supervisor, now: float) -> None:
        for name, info in supervisor.all_info().items():
            target = f"program/{name}"
            if info.state == "RUNNING" and info.uptime_s > self.settings.pipeline.restart_backoff_max_s:
                self.backoff.healthy(target)
            if info.state != "FATAL" or not self.backoff.ready(target, now):
                continue
            supervisor.start(name)
            delay = self.backoff.attempted(target, now)
            log.warning(
                "started FATAL program %s again (%s); next try in ≥ %.0f s", name, info.spawn_error, delay
            )
            record(self.paths.watchdog, "program", target, info.spawn_error or info.description)

    def run(self) -> None:
        supervisor = Supervisor(self.paths)
        with ConnectClient(self.settings.connect.url, retry_for_s=5.0) as client:
            while not self.stop.is_set():
                now = time.monotonic()
                try:
                    self.check_connect(client, now)
                except ConnectError as exc:
                    # Connect down is supervisord's business (it restarts the worker); try again later.
                    log.info("Kafka Connect not answering: %s", exc)
                try:
                    if self.watch_programs:
                        self.check_programs(supervisor, now)
                except OSError as exc:
                    log.info("supervisord not answering: %s", exc)
                self.stop.wait(self.settings.pipeline.watch_every_s)


def run_watchdog(settings: Settings, watch_programs: bool = True) -> None:
    watchdog = Watchdog(settings, watch_programs)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        watchdog.stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info(
        "watching Kafka Connect at %s and supervisord at %s", settings.connect.url, watchdog.paths.socket
    )
    watchdog.run()
