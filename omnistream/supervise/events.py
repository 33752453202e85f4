"""supervisord's event listener: every process state change, one JSON line each.

supervisord itself keeps no restart count. This listener (a program of supervisord's own, protocol on
stdin/stdout) appends each PROCESS_STATE event to ``run/events.jsonl``; ``omnistream status`` counts the
restarts from it and tells a crash loop (BACKOFF, FATAL) from a process that is simply up.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from supervisor import childutils

# A start that follows one of these states was not asked for by anyone: the process had died.
UNASKED_FROM = {"EXITED", "BACKOFF", "FATAL"}


def listen(out: Path) -> None:
    """Run the listener protocol forever, appending each state change to ``out``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a") as journal:
        while True:
            headers, payload = childutils.listener.wait(sys.stdin, sys.stdout)
            event = headers.get("eventname", "")
            if event.startswith("PROCESS_STATE_"):
                fields = dict(token.split(":", 1) for token in payload.split() if ":" in token)
                record = {
                    "at": time.time(),
                    "process": fields.get("processname", ""),
                    "from": fields.get("from_state", ""),
                    "to": event.removeprefix("PROCESS_STATE_"),
                    "pid": fields.get("pid"),
                    "expected": fields.get("expected"),
                }
                journal.write(json.dumps(record) + "\n")
                journal.flush()
            childutils.listener.ok(sys.stdout)


@dataclass(frozen=True)
class History:
    restarts: Counter[str]  # starts of a process that had died (not asked for)
    last_restart_at: dict[str, float]
    unexpected_exits: Counter[str]


def read_history(path: Path) -> History:
    restarts: Counter[str] = Counter()
    exits: Counter[str] = Counter()
    last: dict[str, float] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a crash
            name = record.get("process", "")
            if record.get("to") == "STARTING" and record.get("from") in UNASKED_FROM:
                restarts[name] += 1
                last[name] = float(record.get("at", 0))
            if record.get("to") == "EXITED" and record.get("expected") == "0":
                exits[name] += 1
    return History(restarts, last, exits)
