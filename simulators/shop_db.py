"""The online shop's database: its schema and the statements the web shop runs against it.

The write statements run inside a transaction of the caller's, which decides when it commits.
"""

from __future__ import annotations

import logging
from datetime import datetime
from importlib import resources
from typing import Any

import psycopg
from psycopg import sql

from simulators.order_plan import NewOrder

log = logging.getLogger(__name__)

SHOP_SCHEMA = "shop"
# Serialises concurrent schema set-ups (the stack and a simulator starting together).
_DDL_LOCK_KEY = "omnistream.ensure_shop_schema"

# Each write returns the id of its transaction, so that a commit cut off by a lost connection can be looked
# up afterwards (``transaction_status``) instead of being guessed at.
INSERT_ORDER = """
insert into orders (customer_id, status, currency, subtotal, tax, total)
values (%s, 'pending', %s, %s, %s, %s)
returning order_id, created_at, pg_current_xact_id()::text
"""
INSERT_ITEM = """
insert into order_items (order_id, line_number, sku, quantity, unit_price, line_total)
values (%s, %s, %s, %s, %s, %s)
"""
# The status guard turns a lost or illegal transition into "no row", which the caller treats as an error.
UPDATE_STATUS = """
update orders set status = %s, updated_at = now()
where order_id = %s and status = %s
returning updated_at, pg_current_xact_id()::text
"""
DELETE_ORDER = "delete from orders where order_id = %s returning now(), pg_current_xact_id()::text"
TRANSACTION_STATUS = "select pg_xact_status(%s::xid8)"


class ShopWriteError(RuntimeError):
    """The database did not hold the order in the state the simulator planned for."""


def schema_ddl() -> str:
    """The DDL of the shop's tables (simulators/sql/shop_schema.sql)."""
    return resources.files("simulators").joinpath("sql/shop_schema.sql").read_text(encoding="utf-8")


def ensure_shop_schema(conn: psycopg.Connection, schema: str = SHOP_SCHEMA) -> None:
    """Create ``schema`` if it is missing and its tables, indexes and replica identity; idempotent.

    Runs in one transaction, committed on return unless ``conn`` is already inside one. The schema is
    created only when missing, so a role that owns an existing schema but may not create schemas in the
    database (the application role) can run it.
    """
    with conn.transaction(), conn.cursor() as cur:
        cur.execute("select pg_advisory_xact_lock(hashtext(%s))", (_DDL_LOCK_KEY,))
        cur.execute("select 1 from pg_namespace where nspname = %s", (schema,))
        if cur.fetchone() is None:
            log.info("creating schema %s", schema)
            cur.execute(sql.SQL("create schema {}").format(sql.Identifier(schema)))
        cur.execute(sql.SQL("set local search_path to {}").format(sql.Identifier(schema)))
        cur.execute(schema_ddl().encode())
    log.info("schema %s is ready", schema)


def use_schema(conn: psycopg.Connection, schema: str) -> None:
    """Point the session's unqualified names at ``schema``."""
    conn.execute(sql.SQL("set search_path to {}").format(sql.Identifier(schema)))
    conn.commit()


def insert_order(cur: psycopg.Cursor[Any], order: NewOrder) -> tuple[tuple[int, datetime], str]:
    """Insert ``order`` and its lines in the caller's transaction; returns ((order_id, created_at), xid)."""
    cur.execute(INSERT_ORDER, (order.customer_id, order.currency, order.subtotal, order.tax, order.total))
    row = cur.fetchone()
    assert row is not None  # an INSERT … RETURNING always returns its row
    order_id, created_at, xid = row
    cur.executemany(
        INSERT_ITEM,
        [
            (order_id, line.line_number, line.sku, line.quantity, line.unit_price, line.line_total)
            for line in order.lines
        ],
    )
    return (order_id, created_at), xid


def change_status(
    cur: psycopg.Cursor[Any], order_id: int, from_status: str, to_status: str
) -> tuple[datetime, str]:
    """Move an order from ``from_status`` to ``to_status`` in the caller's transaction; (updated_at, xid)."""
    cur.execute(UPDATE_STATUS, (to_status, order_id, from_status))
    row = cur.fetchone()
    if row is None:
        raise ShopWriteError(f"order {order_id} is not {from_status!r}; cannot move it to {to_status!r}")
    return row[0], row[1]


def delete_order(cur: psycopg.Cursor[Any], order_id: int) -> tuple[datetime, str]:
    """Hard-delete an order (its lines cascade) in the caller's transaction; (transaction time, xid)."""
    cur.execute(DELETE_ORDER, (order_id,))
    row = cur.fetchone()
    if row is None:
        raise ShopWriteError(f"order {order_id} does not exist; cannot delete it")
    return row[0], row[1]


def transaction_status(conn: psycopg.Connection, xid: str) -> str | None:
    """``committed``, ``aborted`` or ``in progress`` for a recent transaction id; None if too old to tell."""
    with conn.transaction(), conn.cursor() as cur:
        cur.execute(TRANSACTION_STATUS, (xid,))
        row = cur.fetchone()
    return None if row is None else row[0]
