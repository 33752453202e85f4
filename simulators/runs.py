"""Runs of a simulator that may never end: their journals, their seeds, and how they stop.

A simulator under a supervisor runs until SIGTERM, may be killed with SIGKILL, and is started again. What
it wrote must stay exactly known through all of that, so each run appends to a journal of its own::

    <out>/runs/<index>-<UTC start>.jsonl     e.g. <out>/runs/00003-20261125T180405Z.jsonl
    <out>/runs/.lock                          held (flock) by the run in progress

One JSON object per line: a ``run`` header, then one line per operation the server committed or accepted,
written with a single ``write(2)`` as soon as it did (a line is in the file once the call returns, so a
``kill -9`` loses at most the line being written), and an ``end`` line when the run stops in order. The
journals are the ground truth; ``manifest.json`` is a summary built from them (see omnistream/reconcile.py for
how they are read, and omnistream/manifest.py for the summary). Lines are not fsynced one by one: they
survive the process, not a power cut.

Run ``n`` (0 for the first in an out dir) plays the plan of seed ``base seed + n``: runs differ from each
other, and each is reproducible. A ``manifest.json`` from before journals is adopted as run 0
(``00000-legacy.jsonl``: its totals and order numbers) when the first journalled run starts, so that its truth
is neither lost when the manifest is rewritten nor counted twice.

One run at a time per out dir: the lock is released by the kernel when the process ends, however it ends,
so a restart after ``kill -9`` finds it free.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from types import FrameType
from typing import Any

from omnistream.errors import UsageError
from omnistream.manifest import JOURNAL_DIR, MANIFEST_NAME, journal_paths, read_journal

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"
LEGACY_RUN_ID = "00000-legacy"
_INDEX = re.compile(r"^(\d+)-")


class OutDirInUse(UsageError):
    """The out dir is another run's: a simulator running now, or earlier runs against another target."""


# Not an error: how a wait tells the run loop that a stop was asked for; the loop ends the run cleanly.
class Stopping(Exception):
    """The run was asked to stop (SIGTERM/SIGINT) while waiting; nothing was left half done."""


class StopSignal:
    """Set by SIGTERM or SIGINT; a run checks it between operations and waits on it instead of sleeping."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.received: str | None = None

    def is_set(self) -> bool:
        return self._event.is_set()

    def set(self, reason: str = "stop") -> None:
        self.received = self.received or reason
        self._event.set()

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; True if a stop was asked for (at once, or while waiting)."""
        return self._event.wait(max(0.0, seconds))

    def sleep(self, seconds: float) -> None:
        """Sleep ``seconds``, or raise ``Stopping`` as soon as a stop is asked for (for retry back-offs)."""
        if self.wait(seconds):
            raise Stopping(self.received)

    @contextmanager
    def installed(self) -> Iterator[StopSignal]:
        """Route SIGTERM and SIGINT to this signal for the duration (main thread only; elsewhere a no-op)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return

        def handle(signum: int, _frame: FrameType | None) -> None:
            name = signal.Signals(signum).name
            if not self.is_set():
                log.info("%s received; stopping after the operation in hand", name)
            self.set(name)

        previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def _default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"cannot write {type(value).__name__} to a journal")


class RunJournal:
    """The journal of one run: opened exclusively, appended line by line, closed with an ``end`` line."""

    def __init__(self, path: Path, index: int, lock_fd: int, earlier: EarlierRuns) -> None:
        self.path = path
        self.index = index
        self.run_id = path.stem
        self.earlier = earlier
        self._lock_fd = lock_fd
        self._fd: int | None = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o644)
        self.lines = 0

    @classmethod
    def open_next(
        cls, out: Path, source: str, check: Callable[[EarlierRuns], None] | None = None
    ) -> RunJournal:
        """Take the out dir's lock, read the earlier runs (``check`` may refuse them), start the next run."""
        runs = out / JOURNAL_DIR
        runs.mkdir(parents=True, exist_ok=True)
        lock_fd = os.open(runs / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(lock_fd)
            raise OutDirInUse(
                f"another {source} simulator is running with out dir {out}; "
                "stop it, or give this one an out dir of its own (--out)"
            ) from None
        try:
            adopt_legacy_manifest(out)
            earlier = EarlierRuns.read(out)
            if check is not None:
                check(earlier)
            index = next_run_index(out)
            started = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
            journal = cls(runs / f"{index:05d}-{started}.jsonl", index, lock_fd, earlier)
        except BaseException:
            os.close(lock_fd)  # closing the descriptor releases the lock
            raise
        log.info("journal %s", journal.path)
        return journal

    def write(self, record: dict[str, Any]) -> None:
        """Append one record; it is in the file (the OS's page cache) when this returns."""
        if self._fd is None:
            raise RuntimeError(f"journal {self.path} is closed")
        line = (json.dumps(record, default=_default, separators=(",", ":")) + "\n").encode()
        written = os.write(self._fd, line)
        while written < len(line):  # a regular file takes it all at once; a full disk may not
            written += os.write(self._fd, line[written:])
        self.lines += 1

    def close(self) -> None:
        if self._fd is not None:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    def __enter__(self) -> RunJournal:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def adopt_legacy_manifest(out: Path) -> None:
    """Turn a manifest written before journals into the out dir's first journal (see the module docstring)."""
    manifest = out / MANIFEST_NAME
    if not manifest.is_file():
        return
    data = json.loads(manifest.read_text())
    if "journals" in data:
        return
    facts = data.get("facts", {})
    path = out / JOURNAL_DIR / f"{LEGACY_RUN_ID}.jsonl"
    header = {
        "type": "run",
        "run_id": LEGACY_RUN_ID,
        "run_index": 0,
        "legacy": True,
        "seed": data.get("seed"),
    }
    header |= {k: facts[k] for k in ("schema", "recipient") if k in facts}
    records = [header]
    for row in data["totals"]:  # a row stands for many orders; the truth's counts and sums are deltas
        truth = {k: row[k] for k in ("channel", "store_id", "day", "orders", "lines", "net", "tax")}
        records.append({"type": "legacy_totals", "truth": truth})
    records += [
        {"type": "legacy_message", "order_number": m["order_number"]} for m in facts.get("messages", [])
    ]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records))
    tmp.replace(path)
    # The manifest now sums up that journal: reconciliation counts the journal, not both.
    data["journals"] = {LEGACY_RUN_ID: len(records)}
    tmp = manifest.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(manifest)
    log.info("adopted %s (written before journals) as %s", manifest, path)


def run_index(path: Path) -> int:
    """The index a journal's name starts with."""
    match = _INDEX.match(path.name)
    if match is None:
        raise ValueError(f"{path} is not named <index>-<start>.jsonl")
    return int(match.group(1))


def next_run_index(out: Path) -> int:
    """One more than the highest run index in ``out`` (0 for the first run)."""
    return max((run_index(p) + 1 for p in journal_paths(out)), default=0)


@dataclass(frozen=True)
class EarlierRuns:
    """What a new run needs to know about the runs before it in its out dir."""

    headers: list[dict[str, Any]]
    records: list[dict[str, Any]]  # every line after the headers, in run order

    @classmethod
    def read(cls, out: Path) -> EarlierRuns:
        headers: list[dict[str, Any]] = []
        records: list[dict[str, Any]] = []
        for path in journal_paths(out):
            for record in read_journal(path):
                (headers if record.get("type") == "run" else records).append(record)
        return cls(headers, records)

    def check_same(self, field: str, value: Any, what: str, out: Path) -> None:
        """Refuse to mix runs against different targets in one out dir: their truth would be one sum."""
        for header in self.headers:
            if header.get(field) != value:
                raise OutDirInUse(
                    f"{out} holds the runs of {what} {header.get(field)!r} (run {header.get('run_id')}); "
                    f"give runs of {what} {value!r} an out dir of their own (--out)"
                )
