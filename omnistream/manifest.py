"""The ground truth's format: what a simulator generated, so the warehouse can be reconciled to the cent.

The format lives in the core because both sides use it: the simulators write it and ``omnistream
reconcile`` reads it.

A manifest is a JSON file with one row per (channel, store_id, day) holding order and line counts and
exact money sums (net = sum of line totals, tax, gross = net + tax), plus free-form ``facts`` (ids, anomaly
counts, ...). Days are UTC calendar days of the order's timestamp. Money is kept as ``Decimal`` and
written as strings, never floats.

The order and email simulators keep their truth in journals (simulators/runs.py), one line per committed
operation, each line's change to the totals in its ``truth`` field (``truth_change``); their manifest is a
summary of every journal in the out dir and says so in ``journals`` (run id → lines), so that
reconciliation (omnistream/reconcile.py) counts the journals and not the summary as well. A journal is
``<out>/runs/<run-id>.jsonl``, one JSON object per line, only ever appended to.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
JOURNAL_DIR = "runs"
CHANNELS = ("online", "in_store")
Key = tuple[str, str | None, str]  # channel, store_id (None online), ISO day


def sort_key(key: Key) -> tuple[str, str, str]:
    return key[0], key[1] or "", key[2]


@dataclass
class Totals:
    orders: int = 0
    lines: int = 0
    net: Decimal = Decimal("0.00")
    tax: Decimal = Decimal("0.00")

    @property
    def gross(self) -> Decimal:
        return self.net + self.tax

    def add(self, other: Totals) -> None:
        self.orders += other.orders
        self.lines += other.lines
        self.net += other.net
        self.tax += other.tax


def journal_paths(out: Path) -> list[Path]:
    """The journals of a simulator's out dir, in run order (their names start with the run index)."""
    runs = out / JOURNAL_DIR
    return sorted(runs.glob("*.jsonl")) if runs.is_dir() else []


def read_journal(path: Path) -> list[dict[str, Any]]:
    """Every complete record of a journal.

    The last line may be torn: the process was killed (or the machine stopped) in the middle of writing it,
    or it is being written right now. A torn line is not a record, so it is left out. Since every record is
    one JSON object on one line, a prefix of one never parses, and a last line that does parse is complete
    even if its newline is missing. A line that does not parse anywhere else means the file was damaged;
    that is an error, not something to skip.
    """
    lines = path.read_bytes().split(b"\n")
    if lines and not lines[-1]:
        lines.pop()  # the empty remainder after the final newline
    records: list[dict[str, Any]] = []
    for number, raw in enumerate(lines, start=1):
        try:
            record = json.loads(raw)
        except ValueError:
            if number == len(lines):
                log.warning("%s: ignoring a torn last line (%d bytes)", path, len(raw))
                break
            raise ValueError(f"{path}:{number} is not a JSON line; the journal is damaged") from None
        if not isinstance(record, dict):
            raise ValueError(f"{path}:{number} is not a JSON object; the journal is damaged")
        records.append(record)
    return records


def truth_of(record: dict[str, Any]) -> tuple[Key, Totals] | None:
    """The (signed) change a journal record makes to the truth, if it makes one."""
    truth = record.get("truth")
    if not truth:
        return None
    key = (truth["channel"], truth["store_id"], truth["day"])
    return key, Totals(truth["orders"], truth["lines"], Decimal(truth["net"]), Decimal(truth["tax"]))


def manifest_totals(data: dict[str, Any]) -> dict[Key, Totals]:
    """A manifest's totals keyed by (channel, store_id, day), money as Decimal."""
    return {
        (row["channel"], row["store_id"], row["day"]): Totals(
            row["orders"], row["lines"], Decimal(row["net"]), Decimal(row["tax"])
        )
        for row in data["totals"]
    }


@dataclass
class Manifest:
    source: str
    seed: int
    totals: dict[tuple[str, str | None, date], Totals] = field(default_factory=lambda: defaultdict(Totals))
    facts: dict[str, Any] = field(default_factory=dict)
    # Run id → journal lines this manifest sums up; empty for a manifest that is the truth itself.
    journals: dict[str, int] = field(default_factory=dict)

    def add_order(
        self, channel: str, store_id: str | None, day: date, lines: int, net: Decimal, tax: Decimal
    ) -> None:
        if channel not in CHANNELS:
            raise ValueError(f"unknown channel {channel!r}; expected one of {CHANNELS}")
        row = self.totals[(channel, store_id, day)]
        row.orders += 1
        row.lines += lines
        row.net += net
        row.tax += tax

    def remove_order(
        self, channel: str, store_id: str | None, day: date, lines: int, net: Decimal, tax: Decimal
    ) -> None:
        """Undo ``add_order`` (an order that was hard-deleted at the source)."""
        row = self.totals[(channel, store_id, day)]
        row.orders -= 1
        row.lines -= lines
        row.net -= net
        row.tax -= tax

    def apply(self, record: dict[str, Any]) -> None:
        """Add a journal record's change to the totals (none for most kinds of record)."""
        change = truth_of(record)
        if change is None:
            return
        (channel, store_id, day), delta = change
        if channel not in CHANNELS:
            raise ValueError(f"unknown channel {channel!r}; expected one of {CHANNELS}")
        row = self.totals[(channel, store_id, date.fromisoformat(day))]
        row.orders += delta.orders
        row.lines += delta.lines
        row.net += delta.net
        row.tax += delta.tax

    def to_json(self) -> dict[str, Any]:
        rows = [
            {
                "channel": channel,
                "store_id": store_id,
                "day": day.isoformat(),
                "orders": t.orders,
                "lines": t.lines,
                "net": str(t.net),
                "tax": str(t.tax),
                "gross": str(t.gross),
            }
            for (channel, store_id, day), t in sorted(
                self.totals.items(), key=lambda kv: (kv[0][0], kv[0][1] or "", kv[0][2])
            )
            if t.orders
        ]
        data: dict[str, Any] = {
            "source": self.source,
            "seed": self.seed,
            "written_at": datetime.now().astimezone().isoformat(),
            "totals": rows,
            "facts": self.facts,
        }
        if self.journals:
            data["journals"] = self.journals
        return data

    def write(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=2, default=str))
        tmp.replace(path)  # atomic: a reader never sees half a manifest
        return path


def truth_change(
    channel: str, store_id: str | None, day: date, lines: int, net: Decimal, tax: Decimal, sign: int = 1
) -> dict[str, Any]:
    """A journal record's ``truth`` field: one order more (``sign`` 1) or one less (-1) on its day."""
    if channel not in CHANNELS:
        raise ValueError(f"unknown channel {channel!r}; expected one of {CHANNELS}")
    return {
        "channel": channel,
        "store_id": store_id,
        "day": day.isoformat(),
        "orders": sign,
        "lines": sign * lines,
        "net": str(sign * net),
        "tax": str(sign * tax),
    }


def read_totals(path: Path) -> dict[tuple[str, str | None, str], dict[str, Any]]:
    """Load a manifest's totals keyed by (channel, store_id, day), money as Decimal."""
    return {
        key: {"orders": t.orders, "lines": t.lines, "net": t.net, "tax": t.tax, "gross": t.gross}
        for key, t in manifest_totals(json.loads(path.read_text())).items()
    }
