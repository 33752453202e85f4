"""One writer at a time for the local warehouse, across processes.

DuckDB lets a single process open a database file for writing; a second one fails at once with
``IO Error: Could not set lock on file``. A dbt build, a history load and ``omnistream down --drain`` all
write the same file, started by hand, by ``make demo`` or by the two Airflow DAGs. Each takes this lock
(an ``flock`` on ``<file>.lock`` beside the database) for as long as it writes, so the later one waits for
the earlier instead of failing. The kernel drops the lock when its holder exits, however it exits, so a
killed writer never leaves it behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

from omnistream.errors import OmnistreamError

logger = logging.getLogger(__name__)

# The Airflow pool both DAGs' warehouse tasks run in: one slot, so the scheduler never starts a build and a
# history load together (created by `omnistream supervise prepare-airflow`). The lock still covers
# writers Airflow does not schedule (the CLI, `make demo`, `down --drain`).
AIRFLOW_POOL = "omnistream_warehouse"
DEFAULT_TIMEOUT_S = 3600.0  # longer than any build or load; Airflow's own task timeouts are shorter
POLL_S = 0.5


class WarehouseBusy(OmnistreamError):
    """Another process held the warehouse for longer than the caller was willing to wait."""


def lock_path(database: Path) -> Path:
    return database.with_name(database.name + ".lock")


@contextlib.contextmanager
def warehouse_lock(database: Path, timeout_s: float = DEFAULT_TIMEOUT_S) -> Iterator[None]:
    """Hold the DuckDB file ``database`` for writing; wait (up to ``timeout_s``) while another does."""
    path = lock_path(database)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+") as handle:
        deadline = time.monotonic() + timeout_s
        waiting = False
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not waiting:
                    handle.seek(0)
                    holder = handle.read().strip() or "another process"
                    logger.info("waiting for the warehouse %s: %s is writing it", database, holder)
                    waiting = True
                if time.monotonic() >= deadline:
                    raise WarehouseBusy(
                        f"the warehouse {database} was still being written by another process after "
                        f"{timeout_s:.0f}s (lock {path}); try again when it has finished"
                    ) from None
                time.sleep(POLL_S)
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(f"pid {os.getpid()}\n")
            handle.flush()
            yield
        finally:
            handle.seek(0)
            handle.truncate()
            fcntl.flock(handle, fcntl.LOCK_UN)
