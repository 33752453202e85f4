"""Running the master-data producer: once, or every DURATION until stopped."""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable

from producers.masterdata.client import ApiUnavailable
from producers.masterdata.entities import EntitySpec
from producers.masterdata.producer import (
    MasterDataProducer,
    ProgressCallback,
    SnapshotFailed,
    SnapshotReport,
)

log = logging.getLogger(__name__)

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")


def parse_duration(text: str) -> float:
    """Seconds in ``30s``, ``5m``, ``1h30m``, ``250ms`` or a bare number of seconds; ValueError otherwise."""
    compact = text.strip().lower().replace(" ", "")
    try:
        seconds = float(compact)
    except ValueError:
        parts = _PART.findall(compact)
        if not parts or "".join(n + u for n, u in parts) != compact:
            raise ValueError(f"{text!r} is not a duration like 30s, 5m, 1h30m or 90") from None
        seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    if not seconds > 0:
        raise ValueError(f"a duration must be positive, got {text!r}")
    return seconds


def run_snapshots(
    producer: MasterDataProducer,
    specs: list[EntitySpec],
    every_s: float | None = None,
    on_progress: ProgressCallback | None = None,
    on_report: Callable[[SnapshotReport], None] | None = None,
    stop: threading.Event | None = None,
) -> int:
    """Take one snapshot, or one every ``every_s`` seconds until ``stop`` is set; returns how many completed.

    Once, any failure is raised. Repeating, a snapshot that fails because the API or Kafka is unavailable is
    logged and the next one tries again on schedule (it starts over with a full walk); terminal errors such
    as a rejected token are raised, since waiting will not fix them.
    """
    stop = stop or threading.Event()
    completed = 0
    while True:
        started = time.monotonic()
        try:
            report = producer.snapshot(specs, on_progress=on_progress)
        except (ApiUnavailable, SnapshotFailed) as exc:
            if every_s is None:
                raise
            log.error("snapshot failed; no tombstones published, the next one starts over: %s", exc)
        else:
            completed += 1
            if on_report is not None:
                on_report(report)
        if every_s is None:
            return completed
        # Fixed rate: the next snapshot starts `every_s` after this one started, at once if it overran.
        if stop.wait(max(0.0, every_s - (time.monotonic() - started))):
            return completed
