"""The online-order simulator against the stack's PostgreSQL, each test in a schema of its own."""

from __future__ import annotations

import itertools
import json
import logging
import signal
import subprocess
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import errors, sql
from typer.testing import CliRunner

from omnistream.manifest import journal_paths, read_journal, read_totals
from omnistream.reconcile import source_truth
from omnistream.settings import Settings, get_settings
from omnistream.shop_schema import ensure_shop_schema, use_schema
from simulators.cli import simulate_app
from simulators.order_plan import LEGAL_TRANSITIONS, STATUSES, NewOrder, OrderPlanner
from simulators.orders import MANIFEST_NAME, OrdersConfig, ShopSession, run_orders
from simulators.reference import ONLINE_TAX_RATE
from simulators.shop_db import insert_order
from tests.support.outage_relay import OutageRelay
from tests.support.simulator_runs import records_by_run, start, stop, wait_for_log, wait_for_records

pytestmark = pytest.mark.integration


@pytest.fixture
def schema(stack_settings: Settings, unique: str) -> Iterator[str]:
    """A schema owned by the application role, dropped afterwards (the superuser creates it, as the stack
    creates ``shop``)."""
    name = f"test_orders_{unique}"
    pg = stack_settings.postgres
    with psycopg.connect(pg.dsn(), autocommit=True) as admin:
        admin.execute(
            sql.SQL("create schema {} authorization {}").format(
                sql.Identifier(name), sql.Identifier(pg.app_user)
            )
        )
    yield name
    with psycopg.connect(pg.dsn(), autocommit=True) as admin:
        admin.execute(sql.SQL("drop schema {} cascade").format(sql.Identifier(name)))


@pytest.fixture
def conn(stack_settings: Settings) -> Iterator[psycopg.Connection]:
    """A connection as the web shop's application role."""
    with psycopg.connect(stack_settings.postgres.app_dsn()) as connection:
        yield connection


def rows(conn: psycopg.Connection, query: str, *params: Any) -> list[tuple[Any, ...]]:
    with conn.cursor() as cur:
        cur.execute(query.encode(), params)
        result = cur.fetchall()
    conn.commit()
    return result


def test_schema_setup_is_idempotent_and_ready_for_cdc(conn: psycopg.Connection, schema: str) -> None:
    ensure_shop_schema(conn, schema)
    ensure_shop_schema(conn, schema)
    identities = rows(
        conn,
        "select c.relname, c.relreplident from pg_class c join pg_namespace n on n.oid = c.relnamespace "
        "where n.nspname = %s and c.relkind = 'r' order by 1",
        schema,
    )
    assert identities == [("order_items", "f"), ("orders", "f")]
    use_schema(conn, schema)
    insert = "insert into orders (customer_id, status, subtotal, tax, total) values (1, %s, %s, %s, %s)"
    for status, subtotal, tax, total, error in [
        ("pending", "10.00", "1.90", "11.91", errors.CheckViolation),  # total <> subtotal + tax
        ("lost", "10.00", "1.90", "11.90", errors.CheckViolation),  # not a status
    ]:
        with pytest.raises(error), conn.transaction():
            conn.execute(insert.encode(), (status, Decimal(subtotal), Decimal(tax), Decimal(total)))
    with pytest.raises(errors.CheckViolation), conn.transaction():
        row = conn.execute(
            b"insert into orders (customer_id, subtotal, tax, total) values (1, 0, 0, 0) returning order_id"
        ).fetchone()
        assert row is not None
        conn.execute(b"insert into order_items values (%s, 1, 'SKU-00001', 0, 1.00, 0.00)", row)  # quantity 0


def test_run_keeps_every_invariant_and_matches_its_manifest(
    conn: psycopg.Connection, schema: str, tmp_path: Path
) -> None:
    run = run_orders(conn, OrdersConfig(seed=7, rate=0, count=400, schema=schema))
    path = run.manifest().write(tmp_path / MANIFEST_NAME)
    facts = json.loads(path.read_text())["facts"]
    use_schema(conn, schema)

    # Money: totals add up, lines add up to the subtotal, tax is the online rate rounded half-up.
    assert rows(conn, "select count(*) from orders where total <> subtotal + tax") == [(0,)]
    assert rows(
        conn, "select count(*) from orders where tax <> round(subtotal * %s, 2)", ONLINE_TAX_RATE
    ) == [(0,)]
    assert rows(
        conn,
        "select count(*) from orders o left join (select order_id, sum(line_total) s from order_items "
        "group by order_id) i using (order_id) where i.s is distinct from o.subtotal",
    ) == [(0,)]
    assert rows(conn, "select count(*) from order_items where line_total <> unit_price * quantity") == [(0,)]

    # Deleted orders are gone, lines and all.
    deleted = facts["deleted_order_ids"]
    assert deleted
    assert rows(conn, "select count(*) from orders where order_id = any(%s)", deleted) == [(0,)]
    assert rows(conn, "select count(*) from order_items where order_id = any(%s)", deleted) == [(0,)]

    # Statuses: the counts, and only a pending order was never touched after its insert.
    counts = dict(rows(conn, "select status, count(*) from orders group by status"))
    assert {s: counts.get(s, 0) for s in STATUSES} == facts["status_counts"]
    assert rows(
        conn, "select count(*) from orders where (status = 'pending') <> (updated_at = created_at)"
    ) == [(0,)]

    # Each order's history is a legal path, and the database holds its last step.
    in_db = {r[0]: r[1:] for r in rows(conn, "select order_id, status, created_at, updated_at from orders")}
    assert len(facts["status_history"]) == facts["orders_created"] == 400
    for order_id, history in facts["status_history"].items():
        steps = [status for status, _ in history]
        assert steps[0] == "pending"
        for before, after in itertools.pairwise(steps):
            assert (before, after) in LEGAL_TRANSITIONS or after == "deleted", (order_id, steps)
        assert "deleted" not in steps[:-1]
        if steps[-1] == "deleted":
            assert int(order_id) not in in_db
        else:
            status, created_at, updated_at = in_db[int(order_id)]
            assert status == steps[-1]
            assert created_at.isoformat() == history[0][1]
            assert updated_at.isoformat() == history[-1][1]
    assert sum(facts["transitions"].values()) == sum(
        n for op, n in facts["operations"].items() if op not in ("create", "delete")
    )

    # The manifest is the database, to the cent, per UTC day.
    db_totals = {
        ("online", None, day.isoformat()): {
            "orders": n,
            "lines": lines,
            "net": net,
            "tax": tax,
            "gross": gross,
        }
        for day, n, lines, net, tax, gross in rows(
            conn,
            "select (o.created_at at time zone 'UTC')::date, count(*), sum(i.lines), sum(o.subtotal), "
            "sum(o.tax), sum(o.total) from orders o join (select order_id, count(*) lines from order_items "
            "group by order_id) i using (order_id) group by 1",
        )
    }
    assert read_totals(path) == db_totals


def test_same_seed_writes_the_same_orders(conn: psycopg.Connection, schema: str) -> None:
    first = run_orders(conn, OrdersConfig(seed=11, rate=0, count=80, schema=schema))
    second = run_orders(conn, OrdersConfig(seed=11, rate=0, count=80, schema=schema))

    def shape(run_ids: list[int]) -> list[tuple[Any, ...]]:
        return rows(
            conn,
            "select o.customer_id, o.status, o.subtotal, o.tax, o.total, "
            "array_agg(i.sku order by i.line_number) from orders o join order_items i using (order_id) "
            "where o.order_id = any(%s) group by o.order_id order by o.order_id",
            run_ids,
        )

    first_ids = [r.order_id for r in first.orders.values()]
    second_ids = [r.order_id for r in second.orders.values()]
    assert set(first_ids).isdisjoint(second_ids)
    assert shape(first_ids) == shape(second_ids)
    assert first.operations == second.operations


def test_cli_paces_new_orders_and_writes_the_manifest(
    stack_settings: Settings, schema: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pg = stack_settings.postgres
    monkeypatch.setenv("OMNISTREAM_POSTGRES__HOST", pg.host)
    monkeypatch.setenv("OMNISTREAM_POSTGRES__PORT", str(pg.port))
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(
            simulate_app,
            [
                "orders",
                "--seed",
                "3",
                "--rate",
                "40",
                "--duration",
                "1",
                "--schema",
                schema,
                "--out",
                str(tmp_path),
            ],
        )
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    facts = json.loads((tmp_path / MANIFEST_NAME).read_text())["facts"]
    assert facts["orders_created"] == facts["operations"]["create"] == 40
    assert facts["run"]["seconds"] >= 39 / 40  # the 40th order is due 0.975 s after the first


# -- runs under a supervisor: SIGTERM, kill -9 and restarts, outages ---------------------------------------

Figures = dict[tuple[str, str | None, str], tuple[int, int, Decimal, Decimal]]


def db_figures(conn: psycopg.Connection, schema: str) -> Figures:
    """Orders, lines, net and tax per UTC day, as the database holds them."""
    query = sql.SQL(
        "select (o.created_at at time zone 'UTC')::date, count(*), sum(i.lines), sum(o.subtotal), sum(o.tax) "
        "from {}.orders o join (select order_id, count(*) lines from {}.order_items group by order_id) i "
        "using (order_id) group by 1"
    ).format(sql.Identifier(schema), sql.Identifier(schema))
    with conn.cursor() as cur:
        cur.execute(query)
        result = cur.fetchall()
    conn.commit()
    return {("online", None, day.isoformat()): (n, lines, net, tax) for day, n, lines, net, tax in result}


def journal_figures(out: Path) -> Figures:
    """The same figures from the journals, read the way reconciliation reads them."""
    return {k: (t.orders, t.lines, t.net, t.tax) for k, t in source_truth(out).totals.items()}


def start_orders(
    out: Path, schema: str, log: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    args = ["simulate", "orders", "--seed", "7", "--rate", "20", "--duration", "0"]
    return start([*args, "--schema", schema, "--out", str(out)], log, env)


def wait_for_creates(
    out: Path, at_least: int, process: subprocess.Popen[bytes], log: Path, run: int = -1
) -> list[dict[str, Any]]:
    return wait_for_records(out, "create", at_least, process, log, run)


def assert_runs_move_only_their_own_orders(out: Path) -> None:
    for run_id, records in records_by_run(out).items():
        created = {r["order_id"] for r in records if r["type"] == "create"}
        moved = {r["order_id"] for r in records if r["type"] in ("status", "delete")}
        assert moved <= created, run_id


def test_sigterm_stops_between_transactions_and_the_journal_is_the_database(
    conn: psycopg.Connection, schema: str, tmp_path: Path
) -> None:
    out, log = tmp_path / "orders", tmp_path / "orders.log"
    process = start_orders(out, schema, log)
    try:
        wait_for_creates(out, 40, process, log)
    finally:
        stop(process, signal.SIGTERM, log)
    assert process.returncode == 0, log.read_text()

    (records,) = records_by_run(out).values()
    assert records[0]["type"] == "run" and records[0]["seed"] == 7 and records[0]["schema"] == schema
    assert records[-1]["type"] == "end" and records[-1]["reason"] == "stopped by SIGTERM"
    assert journal_figures(out) == db_figures(conn, schema)
    # Every order's last journalled step is what the database holds; deleted orders are gone.
    last: dict[int, str] = {}
    for r in records[1:-1]:
        last[r["order_id"]] = {"create": "pending", "status": r.get("to"), "delete": "deleted"}[r["type"]]
    in_db = dict(rows(conn, f'select order_id, status from "{schema}".orders'))
    assert in_db == {order_id: status for order_id, status in last.items() if status != "deleted"}
    # The run's manifest sums up its journal, and says so (so reconciliation does not count it twice).
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert manifest["journals"] == {p.stem: len(records) for p in journal_paths(out)}
    assert manifest["facts"]["run"]["interrupted"] is True
    assert manifest["facts"]["orders_created"] == len(last)
    assert {
        k: (v["orders"], v["lines"], v["net"], v["tax"]) for k, v in read_totals(out / MANIFEST_NAME).items()
    } == (db_figures(conn, schema))


def test_kill_9_then_a_restart_continues_with_the_next_seed_and_the_truth_is_the_database(
    conn: psycopg.Connection, schema: str, tmp_path: Path
) -> None:
    out, log = tmp_path / "orders", tmp_path / "orders.log"
    first = start_orders(out, schema, log)
    try:
        wait_for_creates(out, 25, first, log)
    finally:
        stop(first, signal.SIGKILL, log)
    assert first.returncode == -signal.SIGKILL
    (killed,) = records_by_run(out).values()
    assert killed[-1]["type"] != "end"  # no orderly end: the journal simply stops

    second = start_orders(out, schema, log)
    try:
        wait_for_creates(out, 25, second, log, run=1)
    finally:
        stop(second, signal.SIGTERM, log)
    assert second.returncode == 0, log.read_text()

    runs = records_by_run(out)
    assert len(runs) == 2
    headers = [records[0] for records in runs.values()]
    assert [(h["run_index"], h["seed"], h["base_seed"]) for h in headers] == [(0, 7, 7), (1, 8, 7)]
    ids = [{r["order_id"] for r in records if r["type"] == "create"} for records in runs.values()]
    assert ids[0].isdisjoint(ids[1])
    assert_runs_move_only_their_own_orders(out)
    # Both runs together are the database, to the cent, and so is the manifest the second run wrote.
    assert journal_figures(out) == db_figures(conn, schema)
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert [r["ended"] for r in manifest["facts"]["runs"]] == [None, "stopped by SIGTERM"]
    assert manifest["facts"]["orders_created"] == len(ids[0]) + len(ids[1])
    totals = read_totals(out / MANIFEST_NAME)
    assert {k: (v["orders"], v["lines"], v["net"], v["tax"]) for k, v in totals.items()} == db_figures(
        conn, schema
    )


def test_a_database_outage_is_ridden_out_and_nothing_uncommitted_is_recorded(
    stack_settings: Settings, conn: psycopg.Connection, schema: str, tmp_path: Path
) -> None:
    out, log = tmp_path / "orders", tmp_path / "orders.log"
    pg = stack_settings.postgres
    relay = OutageRelay((pg.host, pg.port))
    process = start_orders(out, schema, log, env={"OMNISTREAM_POSTGRES__PORT": str(relay.port)})
    try:
        before = wait_for_creates(out, 20, process, log)
        relay.cut()  # the database is gone: the connection reset, new ones refused
        wait_for_log(log, "PostgreSQL unavailable", process)
        during = len(read_journal(journal_paths(out)[0]))
        time.sleep(3)
        assert len(read_journal(journal_paths(out)[0])) == during  # nothing commits while it is away
        assert process.poll() is None, log.read_text()
        relay.restore()
        wait_for_creates(out, sum(r["type"] == "create" for r in before) + 20, process, log)
    finally:
        stop(process, signal.SIGTERM, log)
        relay.close()
    assert process.returncode == 0, log.read_text()
    assert relay.connections >= 2  # it came back on a new connection
    (records,) = records_by_run(out).values()
    assert records[-1]["reason"] == "stopped by SIGTERM"
    assert journal_figures(out) == db_figures(conn, schema)
    in_db = {r[0] for r in rows(conn, f'select order_id from "{schema}".orders')}
    created = {r["order_id"] for r in records if r["type"] == "create"}
    deleted = {r["order_id"] for r in records if r["type"] == "delete"}
    assert in_db == created - deleted


@pytest.mark.parametrize("committed", [True, False], ids=["commit-went-through", "commit-lost"])
def test_a_commit_cut_off_by_an_outage_is_looked_up_not_guessed(
    stack_settings: Settings,
    conn: psycopg.Connection,
    schema: str,
    committed: bool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    pg = stack_settings.postgres
    relay = OutageRelay((pg.host, pg.port))
    dsn = pg.model_copy(update={"port": relay.port}).app_dsn()
    session = ShopSession(lambda: psycopg.connect(dsn), schema, retry_for_s=60)
    order = next(iter(OrderPlanner(3).operations(1)))[0]
    assert isinstance(order, NewOrder)
    calls = []

    def insert(cur: psycopg.Cursor[Any]) -> tuple[tuple[int, Any], str]:
        result = insert_order(cur, order)
        calls.append(result[0][0])
        if len(calls) == 1:  # the COMMIT that follows reaches the server and its answer is lost, or is lost
            relay.lose_next_request_or_reply(deliver=committed)
        return result

    try:
        with caplog.at_level(logging.INFO, logger="simulators.orders"):
            order_id, _ = session.write(insert)
    finally:
        session.close()
        relay.close()
    in_db = [r[0] for r in rows(conn, f'select order_id from "{schema}".orders')]
    assert in_db == [order_id]  # once, whichever way the COMMIT went
    assert "PostgreSQL unavailable" in caplog.text
    if committed:
        assert calls == [order_id]  # not run again: the server said the transaction had committed
        assert "had committed" in caplog.text
    else:
        assert len(calls) == 2 and calls[1] == order_id  # rolled back, so run again
        assert "was rolled back; running it again" in caplog.text


def test_sigterm_while_the_database_is_away_stops_at_once_with_nothing_half_done(
    stack_settings: Settings, conn: psycopg.Connection, schema: str, tmp_path: Path
) -> None:
    out, log = tmp_path / "orders", tmp_path / "orders.log"
    pg = stack_settings.postgres
    relay = OutageRelay((pg.host, pg.port))
    process = start_orders(out, schema, log, env={"OMNISTREAM_POSTGRES__PORT": str(relay.port)})
    try:
        wait_for_creates(out, 10, process, log)
        relay.cut()
        wait_for_log(log, "PostgreSQL unavailable", process)
        began = time.monotonic()
        stop(process, signal.SIGTERM, log)
        stopped_in = time.monotonic() - began
    finally:
        relay.close()
    assert process.returncode == 0, log.read_text()
    assert stopped_in < 30, f"the back-off held up the stop for {stopped_in:.0f} s"  # a supervisor waits 60 s
    (records,) = records_by_run(out).values()
    assert records[-1]["reason"] == "stopped by SIGTERM"
    assert journal_figures(out) == db_figures(conn, schema)
