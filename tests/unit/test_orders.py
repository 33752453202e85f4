"""The online-order plan and its manifest, without a database."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from omnistream.manifest import Manifest, read_totals
from omnistream.reconcile import journal_paths, journal_totals, read_journal, source_truth
from omnistream.shop_schema import schema_ddl
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
from simulators.orders import (
    MANIFEST_NAME,
    OrderRecord,
    OrdersConfig,
    OrdersRun,
    create_record,
    delete_record,
    manifest_from_journals,
    status_record,
)
from simulators.reference import ONLINE_TAX_RATE, build_reference, money
from simulators.runs import EarlierRuns, OutDirInUse, RunJournal, run_index


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


# -- runs that may not end: journals, the manifest built from them, seeds ----------------------------------


def journal_a_run(
    out: Path, seed: int, new_orders: int, first_id: int, day: datetime
) -> list[dict[str, Any]]:
    """Journal a run's plan as if the database had committed every operation, the way simulate_orders does;
    returns the records written (after the header)."""
    records: list[dict[str, Any]] = []
    run = OrdersRun(config=OrdersConfig(seed=seed, count=new_orders))
    with RunJournal.open_next(out, "orders") as journal:
        journal.write(
            {"type": "run", "run_id": journal.run_id, "seed": seed + journal.index, "schema": "shop"}
        )
        next_id = first_id
        for i, op in enumerate(plan(seed + journal.index, new_orders)):
            at = day + timedelta(seconds=i)
            if isinstance(op, NewOrder):
                record = create_record(op, next_id, at)
                next_id += 1
            elif isinstance(op, StatusChange):
                record = status_record(op, run.orders[op.ref].order_id, at)
            else:
                record = delete_record(op, run.orders[op.ref], at)
            run.add(record)
            journal.write(record)
            records.append(record)
        journal.write({"type": "end", "reason": "done"})
    return records


def test_the_manifest_of_journals_is_the_sum_of_their_runs(tmp_path: Path) -> None:
    midnight = datetime(2026, 6, 1, 23, 59, 30, tzinfo=UTC)  # the runs cross into the next UTC day
    first = journal_a_run(tmp_path, 5, 40, 1, midnight)
    second = journal_a_run(tmp_path, 5, 25, 1000, midnight + timedelta(minutes=5))
    current = OrdersRun(config=OrdersConfig(seed=5, count=25), run_id="now")
    manifest = manifest_from_journals(tmp_path, current)

    # The same totals three ways: in-memory runs, the manifest, and reconciliation's reading of the journals.
    in_memory = OrdersRun(config=OrdersConfig(seed=5))
    for run_id, records in (("a", first), ("b", second)):
        for record in records:
            in_memory.add(record, run_id=run_id)
    assert {k: v for k, v in manifest.totals.items() if v.orders} == in_memory.manifest().totals
    truth = source_truth(tmp_path)
    assert truth.totals == journal_totals(first + second)
    as_written = read_totals(manifest.write(tmp_path / MANIFEST_NAME))
    assert {k: (v["orders"], v["net"], v["tax"]) for k, v in as_written.items()} == {
        k: (t.orders, t.net, t.tax) for k, t in truth.totals.items()
    }
    assert {day for _, _, day in as_written} == {"2026-06-01", "2026-06-02"}

    # The facts cover both runs; the manifest says which journals it sums up, so it is not counted again.
    facts = manifest.facts
    assert facts["orders_created"] == 65
    assert facts["deleted_order_ids"] == sorted(
        r["order_id"] for r in first + second if r["type"] == "delete"
    )
    assert [r["seed"] for r in facts["runs"]] == [5, 6]
    assert [r["ended"] for r in facts["runs"]] == ["done", "done"]
    assert facts["run"]["run_id"] == "now"
    assert sorted(manifest.journals) == [p.stem for p in journal_paths(tmp_path)]
    assert manifest.journals == {p.stem: len(read_journal(p)) for p in journal_paths(tmp_path)}
    assert not truth.manifest_counted
    assert source_truth(tmp_path).totals == truth.totals


def test_a_torn_last_line_is_left_out_and_a_damaged_one_is_an_error(tmp_path: Path) -> None:
    records = journal_a_run(tmp_path, 9, 10, 1, datetime(2026, 6, 1, tzinfo=UTC))
    (path,) = journal_paths(tmp_path)
    whole = read_journal(path)
    # kill -9 (or a power cut) while a line was being written leaves the start of it and no newline; the line
    # never became a record, so the truth is what the complete lines say.
    create = json.dumps(create_record(plan(9, 1)[0], 99, datetime(2026, 6, 1, tzinfo=UTC)), default=str)
    with path.open("ab") as f:
        f.write(create[:57].encode())
    assert read_journal(path) == whole
    assert source_truth(tmp_path).totals == journal_totals(records)
    # A complete last line without its newline is a record all the same.
    with path.open("ab") as f:
        f.truncate(path.stat().st_size - 57)
        f.write(create.encode())
    assert read_journal(path)[-1]["order_id"] == 99
    # Anything unreadable before the last line is damage, not a torn write: refuse to guess.
    lines = path.read_bytes().split(b"\n")
    path.write_bytes(b"\n".join([lines[0], lines[1][:20], *lines[2:]]))
    with pytest.raises(ValueError, match=r":2 is not a JSON line; the journal is damaged"):
        read_journal(path)


def test_each_run_plays_the_next_seed_and_the_out_dir_has_one_run_at_a_time(tmp_path: Path) -> None:
    indexes = []
    for _ in range(3):
        with RunJournal.open_next(tmp_path, "orders") as journal:
            indexes.append(journal.index)
            with pytest.raises(OutDirInUse, match="another orders simulator is running"):
                RunJournal.open_next(tmp_path, "orders")
    assert indexes == [0, 1, 2]
    assert [run_index(p) for p in journal_paths(tmp_path)] == [0, 1, 2]
    # Seeds base + index: each run its own operations, each reproducible; prices stay the master data's.
    plans = [plan(42 + i, 50) for i in indexes]
    assert plans[0] != plans[1] != plans[2]
    assert plans[1] == plan(43, 50)
    prices = {p.sku: p.unit_price for p in build_reference(42).products}
    seeded = OrderPlanner(43, build_reference(42))
    for batch in seeded.operations(30):
        for op in batch:
            if isinstance(op, NewOrder):
                assert all(line.unit_price == prices[line.sku] for line in op.lines)


def test_a_run_refuses_an_out_dir_of_another_schema(tmp_path: Path) -> None:
    journal_a_run(tmp_path, 1, 3, 1, datetime(2026, 6, 1, tzinfo=UTC))

    def other_schema(earlier: EarlierRuns) -> None:
        earlier.check_same("schema", "test_x", "schema", tmp_path)

    with pytest.raises(OutDirInUse, match="holds the runs of schema 'shop'"):
        RunJournal.open_next(tmp_path, "orders", check=other_schema)
    assert len(journal_paths(tmp_path)) == 1  # refused before a journal was started


def test_an_endless_plan_starts_with_every_bounded_one() -> None:
    endless = OrderPlanner(3).operations(None)
    assert [op for _, batch in zip(range(200), endless, strict=False) for op in batch] == plan(3, 200)


def test_config_without_an_end() -> None:
    assert OrdersConfig(rate=2, duration=0).new_orders is None
    assert OrdersConfig(rate=2, duration=0, count=5).new_orders == 5
    with pytest.raises(ValueError, match="needs a count"):
        _ = OrdersConfig(rate=0, duration=0).new_orders
