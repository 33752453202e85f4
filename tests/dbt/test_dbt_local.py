"""`dbt build` on the local (DuckDB) target over landed fixtures and a small history."""

from __future__ import annotations

import json
from collections import Counter
from datetime import datetime
from decimal import Decimal

from omnistream.warehouse.dbt import run_dbt
from tests.support.dbt_fixtures import Warehouse


def test_build_runs_every_node_without_failure(warehouse: Warehouse) -> None:
    results = warehouse.run_results()
    statuses = Counter(r["status"] for r in results)
    assert statuses.keys() <= {"success", "pass"}, [
        (r["unique_id"], r["status"], r.get("message"))
        for r in results
        if r["status"] not in ("success", "pass")
    ]
    kinds = Counter(r["unique_id"].split(".")[0] for r in results)
    assert kinds["model"] >= 25
    assert kinds["snapshot"] == 3
    assert kinds["unit_test"] >= 4
    assert kinds["test"] >= 100


def test_daily_sales_equal_the_manifests_to_the_cent(warehouse: Warehouse) -> None:
    rows = warehouse.query(
        "select channel, store_id, cast(order_date as varchar), order_count, line_count, net_amount,"
        " tax_amount, gross_amount from marts.fct_daily_sales"
    )
    actual = {(c, s, d): (o, n, net, tax) for c, s, d, o, n, net, tax, gross in rows}
    assert all(gross == net + tax for *_, net, tax, gross in rows)
    assert actual == warehouse.expected
    assert {c for c, _, _ in actual} == {"online", "in_store"}


def test_marts_money_is_exact_and_instants_carry_their_zone(warehouse: Warehouse) -> None:
    types = dict(
        warehouse.query(
            "select column_name, data_type from information_schema.columns"
            " where table_schema = 'marts' and table_name = 'fct_orders'"
        )
    )
    assert types["net_amount"] == types["gross_amount"] == "DECIMAL(18,2)"
    assert types["ordered_at"] == "TIMESTAMP WITH TIME ZONE"
    ((net,),) = warehouse.query("select sum(net_amount) from marts.fct_orders where source = 'onlinedb'")
    assert isinstance(net, Decimal)


def test_online_orders_are_their_current_state_with_deletes_applied(warehouse: Warehouse) -> None:
    rows = warehouse.query(
        "select cast(source_order_id as bigint), status from marts.fct_orders where source = 'onlinedb'"
    )
    assert dict(rows) == warehouse.online.final_status
    assert warehouse.online.deleted, "the plan should delete at least one order"
    assert not set(dict(rows)) & warehouse.online.deleted


def test_redelivered_changes_are_counted_once(warehouse: Warehouse) -> None:
    ((received, dropped),) = warehouse.query(
        "select sum(live_records_received), sum(live_records_dropped) from marts.rpt_channel_reconciliation"
        " where channel = 'online'"
    )
    ((delivered,),) = warehouse.query("select sum(delivery_count - 1) from staging.stg_onlinedb__order_items")
    assert dropped + delivered == warehouse.online.duplicates
    assert received > dropped > 0


def test_resent_confirmations_count_once(warehouse: Warehouse) -> None:
    ((orders, resends),) = warehouse.query(
        "select count(*), sum(resend_count) from intermediate.int_store_orders_deduplicated"
    )
    assert orders == warehouse.stores.genuine
    assert resends == warehouse.stores.resends > 0


def test_master_data_is_kept_as_slowly_changing_dimensions(warehouse: Warehouse) -> None:
    versions = warehouse.query(
        "select sku, count(*), count(*) filter (where is_current) from marts.dim_products"
        " where sku in (select unnest(?)) group by sku",
        [warehouse.masterdata.repriced],
    )
    assert sorted(versions) == sorted((sku, 1, 1) for sku in warehouse.masterdata.repriced)
    # A snapshot taken once sees the latest version only; the second build below adds nothing new either.
    deleted = warehouse.query(
        "select count(*), count(*) filter (where is_current) from marts.dim_customers where customer_id = ?",
        [warehouse.masterdata.deleted_customer],
    )
    assert deleted == [(0, 0)]
    ((active,),) = warehouse.query(
        "select is_active from marts.dim_customers where customer_id = ? and is_current",
        [warehouse.masterdata.deactivated_customer],
    )
    assert active is False


def test_reconciliation_report_accounts_for_every_source(warehouse: Warehouse) -> None:
    rows = warehouse.query(
        "select channel, sum(history_orders), sum(live_orders), sum(mart_orders), bool_and(is_reconciled)"
        " from marts.rpt_channel_reconciliation group by channel order by channel"
    )
    expected_orders: Counter[str] = Counter()
    for (channel, _, _), (orders, *_) in warehouse.expected.items():
        expected_orders[channel] += orders
    for channel, history, live, mart, reconciled in rows:
        assert reconciled
        assert mart == history + live == expected_orders[channel]


def test_a_second_build_changes_nothing(warehouse: Warehouse) -> None:
    before = warehouse.query("select * from marts.fct_daily_sales order by daily_sales_key")
    customers_before = warehouse.query("select count(*) from marts.dim_customers")
    run_dbt(["build"], warehouse.run)
    assert warehouse.query("select * from marts.fct_daily_sales order by daily_sales_key") == before
    assert warehouse.query("select count(*) from marts.dim_customers") == customers_before


def test_source_freshness_reads_when_each_topic_last_landed(warehouse: Warehouse) -> None:
    run_dbt(["source", "freshness"], warehouse.run, check=False)  # stale fixtures are an error, not a crash
    assert warehouse.run.target_path is not None
    results = json.loads((warehouse.run.target_path / "sources.json").read_text())["results"]
    latest = {
        r["unique_id"].split(".", 2)[2]: datetime.fromisoformat(r["max_loaded_at"].replace("Z", "+00:00"))
        for r in results
    }
    topics = {
        "onlinedb.orders": warehouse.online.orders,
        "onlinedb.order_items": warehouse.online.order_items,
        "stores.order_confirmations": warehouse.stores.topic,
        "masterdata.customers": warehouse.masterdata.customers,
        "masterdata.products": warehouse.masterdata.products,
        "masterdata.stores": warehouse.masterdata.stores,
    }
    assert set(latest) == set(topics)  # the history is a static load: no freshness
    for name, topic in topics.items():
        assert latest[name] == max(r.timestamp for r in topic.records), name
