"""The online-order simulator against the stack's PostgreSQL, each test in a schema of its own."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import errors, sql
from typer.testing import CliRunner

from omnistream.settings import Settings, get_settings
from simulators.cli import simulate_app
from simulators.manifest import read_totals
from simulators.order_plan import LEGAL_TRANSITIONS, STATUSES
from simulators.orders import MANIFEST_NAME, OrdersConfig, run_orders
from simulators.reference import ONLINE_TAX_RATE
from simulators.shop_db import ensure_shop_schema, use_schema

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
