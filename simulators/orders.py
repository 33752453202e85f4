"""Online orders: write the web shop's traffic into PostgreSQL and record what was written.

New orders arrive at ``rate`` per second for ``duration`` seconds (or ``count`` of them), each inserted with
its lines in one transaction; after each, the plan (simulators/order_plan.py) moves earlier orders along their
lifecycle, one transaction per change, or hard-deletes one. The operations are fixed by the seed; their
times are the database's own transaction times, recorded as they happen.

The manifest holds the orders that still exist at the end (channel ``online``, no store, UTC day of
``created_at``), and facts: status counts, deleted order ids, operation and transition counts, and each
order's status history with the database's timestamps.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg

from simulators.manifest import Manifest
from simulators.order_plan import (
    OPERATIONS,
    STATUSES,
    NewOrder,
    Operation,
    OrderPlanner,
    StatusChange,
)
from simulators.shop_db import (
    SHOP_SCHEMA,
    change_status,
    delete_order,
    ensure_shop_schema,
    insert_order,
    use_schema,
)

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
CHANNEL = "online"


@dataclass(frozen=True)
class OrdersConfig:
    """One run of the online-order simulator."""

    seed: int = 42
    rate: float = 5.0  # new orders per second; 0 or less: as fast as the database allows
    duration: float = 60.0  # seconds
    count: int | None = None  # new orders; overrides rate x duration
    schema: str = SHOP_SCHEMA

    @property
    def new_orders(self) -> int:
        if self.count is not None:
            return self.count
        if self.rate <= 0:
            raise ValueError("an unthrottled run (rate <= 0) needs a count")
        return round(self.rate * self.duration)


@dataclass
class OrderRecord:
    """What the database holds (or held) for one planned order."""

    order_id: int
    created_at: datetime
    lines: int
    subtotal: Decimal
    tax: Decimal
    status: str = "pending"
    deleted: bool = False
    history: list[tuple[str, datetime]] = field(default_factory=list)


@dataclass
class OrdersRun:
    """The outcome of a run: every order by plan ref, operation counts, wall-clock figures."""

    config: OrdersConfig
    orders: dict[int, OrderRecord] = field(default_factory=dict)
    operations: Counter[str] = field(default_factory=Counter)
    transitions: Counter[str] = field(default_factory=Counter)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    seconds: float = 0.0
    interrupted: bool = False

    def apply(self, conn: psycopg.Connection, op: Operation) -> None:
        """Run one planned operation in its own transaction and record its result."""
        if isinstance(op, NewOrder):
            order_id, created_at = insert_order(conn, op)
            self.orders[op.ref] = OrderRecord(
                order_id=order_id,
                created_at=created_at,
                lines=len(op.lines),
                subtotal=op.subtotal,
                tax=op.tax,
                history=[("pending", created_at)],
            )
            self.operations["create"] += 1
        elif isinstance(op, StatusChange):
            record = self.orders[op.ref]
            updated_at = change_status(conn, record.order_id, op.from_status, op.to_status)
            record.status = op.to_status
            record.history.append((op.to_status, updated_at))
            self.operations[op.kind] += 1
            self.transitions[f"{op.from_status}->{op.to_status}"] += 1
        else:
            record = self.orders[op.ref]
            deleted_at = delete_order(conn, record.order_id)
            record.deleted = True
            record.history.append(("deleted", deleted_at))
            self.operations["delete"] += 1

    def manifest(self) -> Manifest:
        """The ground truth: orders still in the database, and the facts of the run."""
        manifest = Manifest(source="orders", seed=self.config.seed)
        for record in self.orders.values():
            if not record.deleted:
                day = record.created_at.astimezone(UTC).date()
                manifest.add_order(CHANNEL, None, day, record.lines, record.subtotal, record.tax)
        manifest.facts = self.facts()
        return manifest

    def facts(self) -> dict[str, Any]:
        existing = [r for r in self.orders.values() if not r.deleted]
        status_counts = Counter(r.status for r in existing)
        return {
            "schema": self.config.schema,
            "orders_created": len(self.orders),
            "orders_existing": len(existing),
            "status_counts": {status: status_counts[status] for status in STATUSES},
            "deleted_order_ids": sorted(r.order_id for r in self.orders.values() if r.deleted),
            "operations": {kind: self.operations[kind] for kind in OPERATIONS},
            "transitions": dict(sorted(self.transitions.items())),
            "status_history": {
                str(r.order_id): [[status, at.isoformat()] for status, at in r.history]
                for r in self.orders.values()
            },
            "run": {
                "interrupted": self.interrupted,
                "rate": self.config.rate,
                "duration": self.config.duration,
                "new_orders": self.config.new_orders,
                "started_at": self.started_at.isoformat() if self.started_at else None,
                "finished_at": self.finished_at.isoformat() if self.finished_at else None,
                "seconds": round(self.seconds, 3),
                "orders_per_second": round(len(self.orders) / self.seconds, 1) if self.seconds else None,
            },
        }


def run_orders(
    conn: psycopg.Connection,
    config: OrdersConfig,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> OrdersRun:
    """Set up the schema on ``conn`` and play the plan into it, paced at ``config.rate``."""
    ensure_shop_schema(conn, config.schema)
    use_schema(conn, config.schema)
    run = OrdersRun(config=config)
    planner = OrderPlanner(config.seed)
    total = config.new_orders
    interval = 1.0 / config.rate if config.rate > 0 else 0.0
    log.info("writing %d orders into schema %s at %s/s", total, config.schema, config.rate or "max")
    run.started_at = datetime.now(UTC)
    start = clock()
    behind_logged = False
    try:
        for i, batch in enumerate(planner.operations(total)):
            wait = start + i * interval - clock()
            if wait > 0:
                sleep(wait)
            elif interval and wait < -1.0 and not behind_logged:
                log.warning("falling behind the requested rate by %.1f s; the database is the limit", -wait)
                behind_logged = True
            for op in batch:
                run.apply(conn, op)
    except KeyboardInterrupt:
        # The operation in flight was rolled back; everything recorded so far is committed.
        log.warning("interrupted; the manifest covers the operations committed so far")
        run.interrupted = True
    run.seconds = clock() - start
    run.finished_at = datetime.now(UTC)
    log.info("wrote %d orders with %d operations in %.1f s", total, sum(run.operations.values()), run.seconds)
    return run


def simulate_orders(dsn: str, config: OrdersConfig, out: Path) -> Path:
    """Connect to ``dsn``, run, write the manifest into directory ``out``; returns the manifest's path."""
    with psycopg.connect(dsn, application_name="omnistream-orders") as conn:
        run = run_orders(conn, config)
    path = run.manifest().write(out / MANIFEST_NAME)
    log.info("manifest written to %s", path)
    return path
