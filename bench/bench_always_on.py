"""The always-on pipeline (`omnistream up`) on a second stack: start-up, memory, recovery after kill -9.

Prints: seconds from `up` to the first landed record and to the first successful `omnistream_dbt` run
(Airflow on a 1-minute schedule here), the memory of every supervised process once data flows (resident
and proportional: RSS counts shared libraries once per process, PSS shares them out, so the PSS total is
what the set costs the machine), and for each of email-producer, sink, greenmail and connect the seconds
from `kill -9` until it serves again. Downloads are shared with the default state directory.

    PYTHONPATH=. .venv/bin/python bench/bench_always_on.py [--port-offset 800]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import psutil

from omnistream.scheduler.client import AirflowClient
from omnistream.settings import Settings, get_settings
from omnistream.stack.manager import Stack
from omnistream.stack.secrets import ensure_local_secrets
from tests.support.second_stack import as_environment, second_stack_settings


def wait(what: str, check: Callable[[], bool], timeout_s: float = 900.0) -> float:
    began = time.monotonic()
    while True:
        with contextlib.suppress(Exception):  # "not yet" comes in many shapes while things start
            if check():
                return time.monotonic() - began
        if time.monotonic() - began > timeout_s:
            raise SystemExit(f"{what}: not within {timeout_s:.0f} s")
        time.sleep(1.0)


def landed(settings: Settings) -> bool:
    return any((settings.stack.state_dir / "landing").glob("*/partition=*/*.parquet"))


def memory(pid: int) -> tuple[int, int]:
    """(RSS, PSS) in bytes of a process and its children."""
    rss = pss = 0
    with contextlib.suppress(psutil.Error):
        root = psutil.Process(pid)
        for proc in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                info = proc.memory_full_info()
                rss, pss = rss + info.rss, pss + info.pss
    return rss, pss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port-offset", type=int, default=800)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="omnistream-bench-") as tmp:
        settings = second_stack_settings(get_settings(), Path(tmp) / "state", args.port_offset)
        settings.airflow.dbt_every_minutes = 1.0
        settings.pipeline.history_rows = 20_000
        env = {**os.environ, **as_environment(settings)}
        stack = Stack(settings)
        try:
            began = time.monotonic()
            up = subprocess.run(
                [sys.executable, "-m", "omnistream", "up"], env=env, capture_output=True, text=True
            )
            if up.returncode != 0:
                raise SystemExit(f"omnistream up failed:\n{up.stdout}{up.stderr}")
            up_s = time.monotonic() - began
            ensure_local_secrets(settings)  # drawn by `up`: read them back (the GreenMail check logs in)
            first_landed = up_s + wait("first landed record", lambda: landed(settings))
            airflow = AirflowClient(settings)
            first_dbt = first_landed + wait(
                "first dbt run", lambda: airflow.last_run("omnistream_dbt") is not None
            )
            sv = stack.supervisor
            rows = [(name, *memory(info.pid)) for name, info in sorted(sv.all_info().items()) if info.pid]
            recovery: dict[str, float] = {}
            checks: dict[str, Callable[[], bool]] = {
                "email-producer": lambda: True,
                "sink": lambda: True,
                "greenmail": lambda: stack.services["greenmail"].check() is None,
                "connect": lambda: (
                    httpx.get(
                        f"{settings.connect.url}/connectors/onlinedb-postgres/status", timeout=2
                    ).json()["tasks"][0]["state"]
                    == "RUNNING"
                ),
            }
            for name, serving in checks.items():
                before = sv.info(name).pid
                os.kill(before, signal.SIGKILL)
                began = time.monotonic()
                wait(
                    f"{name} back",
                    lambda n=name, b=before: sv.info(n).state == "RUNNING" and sv.info(n).pid != b,
                )
                wait(f"{name} serving", serving)
                recovery[name] = time.monotonic() - began
        finally:
            stack.down(purge=True)
    print(f"omnistream up (new stack):            {up_s:6.1f} s")
    print(f"up → first landed record:             {first_landed:6.1f} s")
    print(f"up → first successful dbt run:        {first_dbt:6.1f} s  (Airflow schedule: 1 minute)")
    print("memory once data flows (RSS / PSS):")
    for name, rss, pss in rows:
        print(f"  {name:<24} {rss / 2**20:7.0f} MiB {pss / 2**20:7.0f} MiB")
    total_rss, total_pss = sum(r[1] for r in rows), sum(r[2] for r in rows)
    print(f"  {'total':<24} {total_rss / 2**20:7.0f} MiB {total_pss / 2**20:7.0f} MiB  (goal < 4096 MiB)")
    for name, seconds in recovery.items():
        print(f"recovery after kill -9: {name:<16} {seconds:6.1f} s")


if __name__ == "__main__":
    main()
