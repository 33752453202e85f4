"""Online orders: write the web shop's traffic into PostgreSQL and record exactly what was committed.

New orders arrive at ``rate`` per second, for ``duration`` seconds, or ``count`` of them, or until stopped
(``duration`` 0), each inserted with its lines in one transaction; after each, the plan
(simulators/order_plan.py) moves earlier orders of the same run along their lifecycle, one transaction per
change, or hard-deletes one. The operations are fixed by the seed; their times are the database's own
transaction times, recorded as they happen.

Runs that may not end (simulators/runs.py): every run appends to its own journal under ``<out>/runs/``,
one line per committed transaction (a new order with its amounts and its ``truth``, a status change, a
delete that takes the order's amounts off the truth again), so the ground truth survives SIGTERM, ``kill
-9`` and restarts. Run ``n`` in an out dir plays seed ``seed + n``; order ids come from the database's
identity column and each run moves only its own orders, so runs never collide. SIGTERM or SIGINT stops the
run between two transactions. A bounded run, and a run that was stopped, ends by writing ``manifest.json``:
the orders of every journal in the out dir that still exist (channel ``online``, no store, UTC day of
``created_at``), and facts: status counts, deleted order ids, operation and transition counts, each order's
status history with the database's timestamps, and the runs.

Outages: a lost connection (or a server that is down or starting) is retried with backoff for
``retry_for_s`` seconds, then the run fails and its supervisor restarts it. A transaction whose COMMIT was
cut off is looked up by its transaction id once the server is back (``pg_xact_status``): recorded if it
committed, run again if not. Nothing is recorded that did not commit.

The one known gap: the journal line is written just after the COMMIT returns. A ``kill -9`` (or a crash)
in the microseconds between the two leaves a committed transaction out of the truth.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import psycopg
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_delay, wait_exponential

from omnistream.errors import Unreachable
from omnistream.manifest import Manifest, journal_paths, read_journal, truth_change
from omnistream.shop_schema import SHOP_SCHEMA, ensure_shop_schema, use_schema
from simulators.order_plan import (
    OPERATIONS,
    STATUSES,
    DeleteOrder,
    NewOrder,
    Operation,
    OrderPlanner,
    StatusChange,
)
from simulators.reference import build_reference
from simulators.runs import EarlierRuns, RunJournal, Stopping, StopSignal
from simulators.shop_db import ShopWriteError, change_status, delete_order, insert_order, transaction_status

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
CHANNEL = "online"
SOURCE = "orders"
# A server that vanishes without a word (no RST: a host down, a network split) is noticed within ~30 s,
# idle (keepalives) or waiting for an answer (tcp_user_timeout, ms), instead of after TCP's 15 minutes.
CONNECT_OPTIONS: dict[str, Any] = {
    "connect_timeout": 10,
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "tcp_user_timeout": 30_000,
}
# Server-side reasons a connection is gone or cannot be had yet; client-side failures have no SQLSTATE.
OUTAGE_SQLSTATES = frozenset({"57P01", "57P02", "57P03"})  # admin/crash shutdown, cannot connect now
T = TypeVar("T")


@dataclass(frozen=True)
class OrdersConfig:
    """One run of the online-order simulator."""

    seed: int = 42
    rate: float = 5.0  # new orders per second; 0 or less: as fast as the database allows
    duration: float = 60.0  # seconds; 0: until stopped (SIGTERM/SIGINT)
    count: int | None = None  # new orders; overrides rate x duration
    schema: str = SHOP_SCHEMA
    retry_for_s: float = 60.0  # how long a database outage is ridden out before the run fails

    @property
    def new_orders(self) -> int | None:
        """New orders to write; None: until stopped."""
        if self.count is not None:
            return self.count
        if self.rate <= 0:
            raise ValueError("an unthrottled run (rate <= 0) needs a count")
        if self.duration == 0:
            return None
        return round(self.rate * self.duration)


class ShopUnavailable(Unreachable):
    """The shop database cannot be reached (refused, dropped, shutting down, starting up)."""


def _is_outage(exc: psycopg.OperationalError, conn: psycopg.Connection | None) -> bool:
    if conn is not None and conn.broken:
        return True
    state = exc.sqlstate
    if state is None:
        return conn is None  # a failed connection attempt; on a live connection it is something else
    return state.startswith("08") or state in OUTAGE_SQLSTATES


class ShopSession:
    """The simulator's connection to the shop database, re-opened after an outage.

    ``write`` runs one statement function in one transaction and returns its result once the transaction
    is known to have committed, however many connections that takes.
    """

    def __init__(
        self,
        connect: Callable[[], psycopg.Connection],
        schema: str,
        retry_for_s: float = 0.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._connect = connect
        self._schema = schema
        self._retry_for_s = retry_for_s
        self._sleep = sleep
        self._conn: psycopg.Connection | None = None

    def close(self) -> None:
        if self._conn is not None and not self._conn.closed:
            self._conn.close()
        self._conn = None

    def _retrying(self) -> Retrying:
        return Retrying(
            retry=retry_if_exception_type(ShopUnavailable),
            stop=stop_after_delay(self._retry_for_s),
            wait=wait_exponential(multiplier=0.2, max=5),
            sleep=self._sleep,
            before_sleep=self._log_retry,
            reraise=True,
        )

    @staticmethod
    def _log_retry(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        log.warning("PostgreSQL unavailable (%s); retrying in %.1f s", error, wait)

    @contextmanager
    def _outage_is_transient(self, conn: psycopg.Connection | None) -> Iterator[None]:
        try:
            yield
        except psycopg.OperationalError as exc:
            if not _is_outage(exc, conn):
                raise
            if conn is not None and not conn.closed:
                conn.close()
            self._conn = None
            message = " ".join(str(exc).split()) or type(exc).__name__  # libpq's messages span lines
            raise ShopUnavailable(f"PostgreSQL: {message}") from exc

    def _connection(self) -> psycopg.Connection:
        if self._conn is not None and (self._conn.closed or self._conn.broken):
            self.close()
        if self._conn is None:
            with self._outage_is_transient(None):
                conn = self._connect()
            with self._outage_is_transient(conn):
                ensure_shop_schema(conn, self._schema)
                use_schema(conn, self._schema)
            self._conn = conn
        return self._conn

    def connect(self) -> None:
        """Open the connection (and set the schema up), riding out an outage."""
        for attempt in self._retrying():
            with attempt:
                self._connection()

    def write(self, statement: Callable[[psycopg.Cursor[Any]], tuple[T, str]]) -> T:
        """Run ``statement`` (returning its result and transaction id) in a transaction; once committed."""
        cut_off: tuple[T, str] | None = None  # the result and xid of a transaction whose COMMIT was lost
        for attempt in self._retrying():
            with attempt:
                conn = self._connection()
                if cut_off is not None:
                    with self._outage_is_transient(conn):
                        status = transaction_status(conn, cut_off[1])
                    if status == "committed":
                        log.info("the transaction cut off by the outage had committed (xid %s)", cut_off[1])
                        return cut_off[0]
                    if status == "in progress":
                        raise ShopUnavailable(f"transaction {cut_off[1]} is still in progress")
                    if status is None:
                        raise ShopWriteError(f"cannot tell whether transaction {cut_off[1]} committed")
                    log.info("the transaction cut off by the outage was rolled back; running it again")
                    cut_off = None
                done: tuple[T, str] | None = None
                try:
                    with self._outage_is_transient(conn), conn.transaction(), conn.cursor() as cur:
                        done = statement(cur)
                except ShopUnavailable:
                    cut_off = done  # the statement ran: only the COMMIT can have been cut off
                    raise
                assert done is not None
                return done[0]
        raise AssertionError("unreachable: tenacity re-raises the last error")


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


def _time(value: datetime | str) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(value)


def create_record(op: NewOrder, order_id: int, created_at: datetime) -> dict[str, Any]:
    """The journal record of a committed new order: it adds itself to the truth on its UTC day."""
    day = created_at.astimezone(UTC).date()
    return {
        "type": "create",
        "ref": op.ref,
        "order_id": order_id,
        "at": created_at,
        "lines": len(op.lines),
        "net": op.subtotal,
        "tax": op.tax,
        "truth": truth_change(CHANNEL, None, day, len(op.lines), op.subtotal, op.tax),
    }


def status_record(op: StatusChange, order_id: int, at: datetime) -> dict[str, Any]:
    """The journal record of a committed status change (the truth counts orders, whatever their status)."""
    return {
        "type": "status",
        "ref": op.ref,
        "order_id": order_id,
        "kind": op.kind,
        "from": op.from_status,
        "to": op.to_status,
        "at": at,
    }


def delete_record(op: DeleteOrder, order: OrderRecord, at: datetime) -> dict[str, Any]:
    """The journal record of a committed hard delete: it takes the order off the truth again."""
    day = order.created_at.astimezone(UTC).date()
    return {
        "type": "delete",
        "ref": op.ref,
        "order_id": order.order_id,
        "status": op.status,
        "at": at,
        "truth": truth_change(CHANNEL, None, day, order.lines, order.subtotal, order.tax, sign=-1),
    }


@dataclass
class OrdersRun:
    """Orders by plan ref (or by (run id, ref) across runs), operation counts, wall-clock figures."""

    config: OrdersConfig
    orders: dict[Any, OrderRecord] = field(default_factory=dict)
    operations: Counter[str] = field(default_factory=Counter)
    transitions: Counter[str] = field(default_factory=Counter)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    seconds: float = 0.0
    interrupted: bool = False
    seed: int | None = None  # the seed this run's plan was drawn with (config.seed + run index)
    run_id: str | None = None

    def apply(self, session: ShopSession, op: Operation) -> dict[str, Any]:
        """Run one planned operation in its own transaction; returns its journal record, once committed."""
        if isinstance(op, NewOrder):
            new: NewOrder = op
            record = create_record(new, *session.write(lambda cur: insert_order(cur, new)))
        elif isinstance(op, StatusChange):
            change: StatusChange = op
            order_id = self.orders[change.ref].order_id
            at = session.write(lambda cur: change_status(cur, order_id, change.from_status, change.to_status))
            record = status_record(change, order_id, at)
        else:
            order = self.orders[op.ref]
            record = delete_record(op, order, session.write(lambda cur: delete_order(cur, order.order_id)))
        self.add(record)
        return record

    def add(self, record: dict[str, Any], run_id: str | None = None) -> None:
        """Fold one journal record in; ``run_id`` keys the order when runs are put together."""
        key = record["ref"] if run_id is None else (run_id, record["ref"])
        at = _time(record["at"])
        kind = record["type"]
        if kind == "create":
            self.orders[key] = OrderRecord(
                order_id=record["order_id"],
                created_at=at,
                lines=record["lines"],
                subtotal=Decimal(record["net"]),
                tax=Decimal(record["tax"]),
                history=[("pending", at)],
            )
            self.operations["create"] += 1
        elif kind == "status":
            order = self.orders[key]
            order.status = record["to"]
            order.history.append((record["to"], at))
            self.operations[record["kind"]] += 1
            self.transitions[f"{record['from']}->{record['to']}"] += 1
        elif kind == "delete":
            order = self.orders[key]
            order.deleted = True
            order.history.append(("deleted", at))
            self.operations["delete"] += 1
        else:
            raise ValueError(f"not an orders journal record: {record}")

    def manifest(self) -> Manifest:
        """The ground truth of this run alone: its orders still in the database, and its facts."""
        manifest = Manifest(source=SOURCE, seed=self.config.seed)
        for record in self.orders.values():
            if not record.deleted:
                day = record.created_at.astimezone(UTC).date()
                manifest.add_order(CHANNEL, None, day, record.lines, record.subtotal, record.tax)
        manifest.facts = self.facts()
        return manifest

    def facts(self, run: OrdersRun | None = None) -> dict[str, Any]:
        """Facts of the orders folded in; ``run`` (default: this) is the run the ``run`` section describes."""
        run = run or self
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
            "run": run.run_facts(),
        }

    def run_facts(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "seed": self.seed if self.seed is not None else self.config.seed,
            "interrupted": self.interrupted,
            "rate": self.config.rate,
            "duration": self.config.duration,
            "new_orders": self.config.new_orders,
            "started_at": self.started_at.isoformat() if self.started_at else None,
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "seconds": round(self.seconds, 3),
            "orders_per_second": round(len(self.orders) / self.seconds, 1) if self.seconds else None,
        }


def _play(
    session: ShopSession,
    run: OrdersRun,
    stop: StopSignal,
    on_commit: Callable[[dict[str, Any]], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Play the run's plan into the database, paced at the rate, until done or stopped."""
    config = run.config
    total = config.new_orders
    planner = OrderPlanner(run.seed if run.seed is not None else config.seed, build_reference(config.seed))
    interval = 1.0 / config.rate if config.rate > 0 else 0.0
    what = f"{total} orders" if total is not None else "orders until stopped"
    log.info("writing %s into schema %s at %s/s", what, config.schema, config.rate or "max")
    run.started_at = datetime.now(UTC)
    start = clock()
    behind_logged = False
    try:
        session.connect()
        for i, batch in enumerate(planner.operations(total)):
            wait = start + i * interval - clock()
            if stop.wait(wait):
                break
            if interval and wait < -1.0 and not behind_logged:
                log.warning(
                    "falling behind the requested rate by %.1f s (the database is slow, or was away)", -wait
                )
                behind_logged = True
            for op in batch:
                if stop.is_set():
                    break
                record = run.apply(session, op)
                if on_commit is not None:
                    on_commit(record)
            if stop.is_set():
                break
    except Stopping:
        pass  # asked to stop while waiting for the database; the operation in hand never committed
    run.interrupted = stop.is_set()
    if run.interrupted:
        log.info("stopped (%s); the truth covers the operations committed so far", stop.received)
    run.seconds = clock() - start
    run.finished_at = datetime.now(UTC)
    log.info(
        "wrote %d orders with %d operations in %.1f s",
        len(run.orders),
        sum(run.operations.values()),
        run.seconds,
    )


def run_orders(
    conn: psycopg.Connection, config: OrdersConfig, clock: Callable[[], float] = time.monotonic
) -> OrdersRun:
    """Set up the schema on ``conn`` and play the plan into it, paced at ``config.rate``; no journal.

    A bounded run for tests and benchmarks: it stops at the first database error (there is only ``conn``).
    """
    if config.new_orders is None:
        raise ValueError("run_orders needs a bounded run (a count, or a duration above 0)")
    run = OrdersRun(config=config)
    _play(ShopSession(lambda: conn, config.schema), run, StopSignal(), clock=clock)
    return run


def _run_header(journal: RunJournal, config: OrdersConfig, run: OrdersRun) -> dict[str, Any]:
    return {
        "type": "run",
        "source": SOURCE,
        "run_id": journal.run_id,
        "run_index": journal.index,
        "seed": run.seed,
        "base_seed": config.seed,
        "schema": config.schema,
        "started_at": datetime.now(UTC),
        "pid": os.getpid(),
        "config": {"rate": config.rate, "duration": config.duration, "count": config.count},
    }


def manifest_from_journals(out: Path, current: OrdersRun) -> Manifest:
    """The summary of every journal in ``out``: totals from their ``truth``, facts of all their orders."""
    everything = OrdersRun(config=current.config)
    manifest = Manifest(source=SOURCE, seed=current.config.seed)
    runs: list[dict[str, Any]] = []
    for path in journal_paths(out):
        records = read_journal(path)
        manifest.journals[path.stem] = len(records)
        ended = None
        for record in records:
            if record["type"] == "run":
                runs.append({k: record.get(k) for k in ("run_id", "seed", "schema", "started_at")})
            elif record["type"] == "end":
                ended = record
            else:
                if record["type"] in ("create", "status", "delete"):
                    everything.add(record, run_id=path.stem)
                manifest.apply(record)  # an adopted manifest's totals too
        if runs and runs[-1]["run_id"] == path.stem:
            runs[-1]["ended"] = ended["reason"] if ended else None  # None: killed, or still running
    manifest.facts = everything.facts(run=current)
    manifest.facts["runs"] = runs
    return manifest


def simulate_orders(dsn: str, config: OrdersConfig, out: Path, stop: StopSignal | None = None) -> Path:
    """Run with a journal in ``out/runs``, then write ``out/manifest.json``; returns the manifest's path.

    Stops at the end of a bounded run, or on SIGTERM/SIGINT (or ``stop``) between two transactions.
    """
    stop = stop or StopSignal()

    def same_schema(earlier: EarlierRuns) -> None:
        earlier.check_same("schema", config.schema, "schema", out)

    with stop.installed(), RunJournal.open_next(out, SOURCE, check=same_schema) as journal:
        run = OrdersRun(config=config, seed=config.seed + journal.index, run_id=journal.run_id)
        journal.write(_run_header(journal, config, run))
        session = ShopSession(
            lambda: psycopg.connect(dsn, application_name="omnistream-orders", **CONNECT_OPTIONS),
            config.schema,
            retry_for_s=config.retry_for_s,
            sleep=stop.sleep,
        )
        try:
            _play(session, run, stop, on_commit=journal.write)
        except BaseException as exc:
            journal.write({"type": "end", "at": datetime.now(UTC), "reason": f"failed: {exc!r}"})
            raise
        finally:
            session.close()
        reason = f"stopped by {stop.received}" if run.interrupted else "done"
        journal.write(
            {"type": "end", "at": run.finished_at, "reason": reason, "seconds": round(run.seconds, 3)}
        )
        path = manifest_from_journals(out, run).write(out / MANIFEST_NAME)
    log.info("manifest written to %s", path)
    return path
