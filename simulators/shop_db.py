"""The statements the web shop runs against its database (the schema itself: omnistream/shop_schema.py).

The write statements run inside a transaction of the caller's, which decides when it commits.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg

from omnistream.errors import OmnistreamError
from simulators.order_plan import NewOrder

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


class ShopWriteError(OmnistreamError):
    """The database did not hold the order in the state the simulator planned for."""


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
