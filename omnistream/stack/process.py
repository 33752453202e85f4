"""Background processes the stack starts: pid files, identity checks, logs, ports.

A service's pid file holds the pid and the marker its command line must contain, so ``stop`` never
signals a process the stack did not start, even if the pid was reused.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Running:
    pid: int
    marker: str


def read_pidfile(pidfile: Path) -> Running | None:
    if not pidfile.exists():
        return None
    pid, _, marker = pidfile.read_text().partition("\n")
    try:
        return Running(int(pid), marker.strip())
    except ValueError:
        return None


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def is_running(pid: int) -> bool:
    """The pid exists and is not a zombie (a process that exited but was not yet reaped)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def is_ours(running: Running) -> bool:
    """The pid is running and still runs the command we started."""
    return is_running(running.pid) and running.marker in cmdline(running.pid)


def alive_pid(pidfile: Path) -> int | None:
    running = read_pidfile(pidfile)
    return running.pid if running and is_ours(running) else None


def spawn(
    cmd: list[str],
    *,
    pidfile: Path,
    logfile: Path,
    marker: str,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    user: str | None = None,
) -> int:
    """Start ``cmd`` detached from this process (own session), output appended to ``logfile``."""
    logfile.parent.mkdir(parents=True, exist_ok=True)
    pidfile.parent.mkdir(parents=True, exist_ok=True)
    if cwd:
        cwd.mkdir(parents=True, exist_ok=True)
    if user:
        cmd = ["runuser", "-u", user, "--", *cmd]
    with logfile.open("ab") as out:
        out.write(f"\n==== {time.strftime('%Y-%m-%dT%H:%M:%S%z')} starting: {' '.join(cmd)}\n".encode())
        out.flush()
        proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            cwd=cwd,
            start_new_session=True,  # survives the CLI; stop signals the whole process group
        )
    pidfile.write_text(f"{proc.pid}\n{marker}\n")
    return proc.pid


def stop(pidfile: Path, sig: signal.Signals = signal.SIGTERM, timeout_s: float = 30.0) -> bool:
    """Stop the process group recorded in ``pidfile`` (then SIGKILL after ``timeout_s``); True if it ran."""
    running = read_pidfile(pidfile)
    if running is None or not is_ours(running):
        pidfile.unlink(missing_ok=True)
        return False
    with contextlib.suppress(ProcessLookupError):
        os.killpg(running.pid, sig)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and is_ours(running):
        time.sleep(0.2)
    if is_ours(running):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(running.pid, signal.SIGKILL)
        while is_ours(running):
            time.sleep(0.1)
    # Reap it when this process started it (a long-lived caller such as a test session), so no zombie
    # is left behind; a process started by an earlier CLI call was reaped by init already.
    with contextlib.suppress(ChildProcessError):
        os.waitpid(running.pid, os.WNOHANG)
    pidfile.unlink(missing_ok=True)
    return True


def port_open(host: str, port: int, timeout_s: float = 0.5) -> bool:
    """Something accepts TCP connections on host:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        return sock.connect_ex((host, port)) == 0


def tail(path: Path, lines: int = 20) -> str:
    if not path.exists():
        return "(no log yet)"
    with path.open("rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - 64 * 1024))
        return "\n".join(f.read().decode(errors="replace").splitlines()[-lines:])


def rss_kib(pid: int) -> int:
    """Resident memory of a process and all its descendants, in KiB."""
    total = 0
    for child in [pid, *descendants(pid)]:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{child}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out
