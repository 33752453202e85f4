"""supervisord's configuration, rendered from the programs (never edited by hand).

Every program is registered with ``autostart=false``: ``omnistream stack up`` starts the servers and
``omnistream up`` the rest, each in order and only once what it needs answers. Once started, a program is
restarted whenever it exits unexpectedly (``autorestart=true``). One that dies within ``startsecs`` of a
start is retried after 1 s, 2 s, 3 s, … (supervisord's backoff) up to ``startretries`` times and then
marked FATAL, which ``omnistream status`` reports as a crash loop; the watchdog tries a FATAL program
again later, with its own capped backoff. Logs are rotated by supervisord itself.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from omnistream.settings import Settings
from omnistream.stack.layout import Layout
from omnistream.supervise.programs import Program

LOG_MAX_BYTES = "20MB"
LOG_BACKUPS = 5
# Unix socket paths are limited to 107 bytes; a deep state directory gets its socket in the temp dir.
MAX_SOCKET_PATH = 100


@dataclass(frozen=True)
class SupervisorPaths:
    conf: Path
    socket: Path
    pidfile: Path
    logfile: Path
    events: Path  # state changes recorded by the event listener
    watchdog: Path  # restarts done by the watchdog

    @classmethod
    def for_layout(cls, layout: Layout) -> SupervisorPaths:
        run = layout.run
        socket = run / "supervisor.sock"
        if len(str(socket)) > MAX_SOCKET_PATH:
            digest = hashlib.sha1(str(layout.root).encode()).hexdigest()[:12]
            socket = Path(tempfile.gettempdir()) / f"omnistream-{digest}.sock"
        return cls(
            conf=run / "supervisord.conf",
            socket=socket,
            pidfile=run / "supervisord.pid",
            logfile=layout.logs / "supervisord.log",
            events=run / "events.jsonl",
            watchdog=run / "watchdog.jsonl",
        )


def _escape(value: str) -> str:
    """supervisord interpolates ``%(name)s``: a literal percent sign is written twice."""
    return value.replace("%", "%%")


def env_file(layout: Layout, program: Program) -> Path:
    return layout.run / "env" / f"{program.name}.json"


def _command(program: Program, layout: Layout) -> list[str]:
    """The program's command; with an environment, started through the launcher that reads its file."""
    if not program.environment:
        return program.command
    launcher = [sys.executable, "-m", "omnistream.supervise.launch", str(env_file(layout, program)), "--"]
    return [*launcher, *program.command]


def _program_section(program: Program, layout: Layout, settings: Settings) -> str:
    p = settings.pipeline
    log = layout.log_file(program.name)
    lines = [
        f"[program:{program.name}]",
        f"command={_escape(shlex.join(_command(program, layout)))}",
        f"directory={_escape(str(program.directory))}",
        "autostart=false",
        "autorestart=true",
        f"startsecs={p.start_seconds}",
        f"startretries={p.start_retries}",
        f"stopsignal={program.stop_signal}",
        f"stopwaitsecs={program.stop_wait_s}",
        # Signals go to the whole process group (a JVM's children, Airflow's task processes).
        "stopasgroup=true",
        "killasgroup=true",
        f"priority={program.priority}",
        "redirect_stderr=true",
        f"stdout_logfile={_escape(str(log))}",
        f"stdout_logfile_maxbytes={LOG_MAX_BYTES}",
        f"stdout_logfile_backups={LOG_BACKUPS}",
    ]
    if program.user:
        lines.append(f"user={program.user}")
    return "\n".join(lines)


def render(settings: Settings, layout: Layout, programs: list[Program]) -> str:
    paths = SupervisorPaths.for_layout(layout)
    bin_dir = Path(sys.executable).parent
    listener = [sys.executable, "-m", "omnistream", "supervise", "events", "--out", str(paths.events)]
    sections = [
        "; Rendered by omnistream (omnistream/supervise/config.py) at every `stack up` / `up`; do not edit.",
        "[unix_http_server]",
        f"file={_escape(str(paths.socket))}",
        "chmod=0700",
        "",
        "[supervisord]",
        f"logfile={_escape(str(paths.logfile))}",
        f"logfile_maxbytes={LOG_MAX_BYTES}",
        f"logfile_backups={LOG_BACKUPS}",
        f"pidfile={_escape(str(paths.pidfile))}",
        f"childlogdir={_escape(str(layout.logs))}",
        "nodaemon=false",
        "minfds=4096",
        "loglevel=info",
        "",
        "[rpcinterface:supervisor]",
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
        "",
        "[supervisorctl]",
        f"serverurl=unix://{_escape(str(paths.socket))}",
        "",
        "[eventlistener:events]",
        f"command={_escape(shlex.join(listener))}",
        "events=PROCESS_STATE",
        "autostart=true",
        "autorestart=true",
        "buffer_size=1000",
        # stdout is the listener's protocol channel; its own log lines go to stderr.
        f"stderr_logfile={_escape(str(layout.log_file('events')))}",
        f"stderr_logfile_maxbytes={LOG_MAX_BYTES}",
        "stderr_logfile_backups=2",
        f'environment=PATH="{_escape(str(bin_dir))}:{_escape(os.environ.get("PATH", "/usr/bin:/bin"))}"',
        "",
    ]
    sections += [_program_section(program, layout, settings) + "\n" for program in programs]
    return "\n".join(sections)


def write(settings: Settings, layout: Layout, programs: list[Program]) -> tuple[Path, bool]:
    """Write the configuration and each program's environment file (0600); True when any changed."""
    paths = SupervisorPaths.for_layout(layout)
    paths.conf.parent.mkdir(parents=True, exist_ok=True)
    layout.logs.mkdir(parents=True, exist_ok=True)
    for program in programs:  # supervisord refuses to spawn into a missing working directory
        program.directory.mkdir(parents=True, exist_ok=True)
    changed = False
    for program in programs:
        if program.environment:
            text = json.dumps(program.environment, indent=1, sort_keys=True)
            changed |= _write_private(env_file(layout, program), text)
    changed |= _write_private(paths.conf, render(settings, layout, programs))
    return paths.conf, changed


def _write_private(path: Path, text: str) -> bool:
    """Write ``text`` atomically, readable by its owner only (it may hold secrets); True when it changed."""
    if path.exists() and path.read_text() == text:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    tmp.replace(path)
    return True
