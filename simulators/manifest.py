"""Ground-truth manifest: what a simulator generated, so tests can reconcile the warehouse to the cent.

A manifest is a JSON file with one row per (channel, store_id, day) holding order and line counts and
exact money sums (net = sum of line totals, tax, gross = net + tax), plus free-form ``facts`` (ids, anomaly
counts, ...). Days are UTC calendar days of the order's timestamp. Money is kept as ``Decimal`` and
written as strings, never floats.

The order and email simulators keep their truth in journals (simulators/runs.py), one line per committed
operation, each line's change to the totals in its ``truth`` field (``truth_change``); their manifest is a
summary of every journal in the out dir and says so in ``journals`` (run id → lines), so that
reconciliation (omnistream/reconcile.py) counts the journals and not the summary as well.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from omnistream.reconcile import manifest_totals, truth_of

CHANNELS = ("online", "in_store")


@dataclass
class DayTotals:
    orders: int = 0
    lines: int = 0
    net: Decimal = Decimal("0.00")
    tax: Decimal = Decimal("0.00")

    @property
    def gross(self) -> Decimal:
        return self.net + self.tax


@dataclass
class Manifest:
    source: str
    seed: int
    totals: dict[tuple[str, str | None, date], DayTotals] = field(
        default_factory=lambda: defaultdict(DayTotals)
    )
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
