"""The online-order plan and its manifest, without a database."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from simulators.manifest import Manifest
from simulators.order_plan import (
    LEGAL_TRANSITIONS,
    OPERATIONS,
    STATUSES,
    DeleteOrder,
    NewOrder,
    Operation,
    OrderPlanner,
    StatusChange,
)
from simulators.orders import OrderRecord, OrdersConfig, OrdersRun
from simulators.reference import ONLINE_TAX_RATE, build_reference, money
from simulators.shop_db import schema_ddl


def plan(seed: int, new_orders: int) -> list[Operation]:
    return [op for batch in OrderPlanner(seed).operations(new_orders) for op in batch]


def kind(op: Operation) -> str:
    if isinstance(op, NewOrder):
        return "create"
    if isinstance(op, StatusChange):
        return op.kind
    return "delete"


def test_same_seed_gives_the_same_operations() -> None:
    assert plan(7, 300) == plan(7, 300)
    assert plan(7, 300) != plan(8, 300)


def test_a_longer_run_starts_with_the_shorter_one() -> None:
    assert plan(7, 300)[: len(plan(7, 100))] == plan(7, 100)


def test_every_operation_follows_the_lifecycle() -> None:
    status: dict[int, str] = {}
    for op in plan(42, 1000):
        if isinstance(op, NewOrder):
            assert op.ref not in status
            status[op.ref] = "pending"
        elif isinstance(op, StatusChange):
            assert status[op.ref] == op.from_status
            assert (op.from_status, op.to_status) in LEGAL_TRANSITIONS
            status[op.ref] = op.to_status
        else:
            assert status.pop(op.ref) == op.status  # deletes only orders that exist, once
    assert set(status.values()) <= set(STATUSES)


def test_every_operation_kind_occurs_in_a_short_run() -> None:
    assert {kind(op) for op in plan(42, 200)} == set(OPERATIONS)


def test_new_orders_are_priced_exactly() -> None:
    reference = build_reference(42)
    prices = {p.sku: p.unit_price for p in reference.products}
    customers = {c.customer_id for c in reference.customers}
    orders = [op for op in plan(42, 500) if isinstance(op, NewOrder)]
    assert [o.ref for o in orders] == list(range(500))
    for order in orders:
        assert order.customer_id in customers
        assert [line.line_number for line in order.lines] == list(range(1, len(order.lines) + 1))
        assert len({line.sku for line in order.lines}) == len(order.lines)
        for line in order.lines:
            assert line.quantity > 0
            assert line.unit_price == prices[line.sku]
            assert line.line_total == line.unit_price * line.quantity
        assert order.subtotal == sum(line.line_total for line in order.lines)
        assert order.tax == money(order.subtotal * ONLINE_TAX_RATE)
        assert order.total == order.subtotal + order.tax
        assert order.tax.as_tuple().exponent == -2


def test_config_counts_new_orders() -> None:
    assert OrdersConfig(rate=4, duration=2.5).new_orders == 10
    assert OrdersConfig(rate=4, duration=2.5, count=3).new_orders == 3
    with pytest.raises(ValueError, match="needs a count"):
        _ = OrdersConfig(rate=0).new_orders


def test_ddl_allows_exactly_the_planned_statuses() -> None:
    ddl = schema_ddl()
    match = re.search(r"check \(status in \(([^)]*)\)\)", ddl)
    assert match is not None
    assert tuple(s.strip(" '\n") for s in match.group(1).split(",")) == STATUSES
    assert "replica identity full" in ddl


def test_manifest_counts_existing_orders_on_their_utc_day() -> None:
    berlin = timezone(timedelta(hours=2))
    run = OrdersRun(config=OrdersConfig(seed=1, count=3))
    run.orders = {
        # 00:30 in Berlin is still the previous day in UTC
        0: OrderRecord(1, datetime(2026, 6, 2, 0, 30, tzinfo=berlin), 2, Decimal("10.00"), Decimal("1.90")),
        1: OrderRecord(2, datetime(2026, 6, 2, 12, 0, tzinfo=UTC), 1, Decimal("5.01"), Decimal("0.95")),
        2: OrderRecord(3, datetime(2026, 6, 2, 13, 0, tzinfo=UTC), 4, Decimal("99.00"), Decimal("18.81")),
    }
    run.orders[1].status = "paid"
    run.orders[2].deleted = True
    manifest = run.manifest()
    expected = Manifest(source="orders", seed=1)
    expected.add_order("online", None, datetime(2026, 6, 1).date(), 2, Decimal("10.00"), Decimal("1.90"))
    expected.add_order("online", None, datetime(2026, 6, 2).date(), 1, Decimal("5.01"), Decimal("0.95"))
    assert manifest.totals == expected.totals
    assert manifest.facts["status_counts"] == dict.fromkeys(STATUSES, 0) | {"pending": 1, "paid": 1}
    assert manifest.facts["deleted_order_ids"] == [3]
    assert manifest.facts["orders_existing"] == 2


def test_deletes_are_planned_only_for_existing_orders() -> None:
    deleted = [op.ref for op in plan(42, 1000) if isinstance(op, DeleteOrder)]
    assert deleted
    assert len(deleted) == len(set(deleted))
