"""The warehouse over data the real landing sink wrote: records produced with the registry's Avro serializer
to topics of this test's own, landed by `LandingSink`, then built with dbt and reconciled with the manifest.

The sink lands ``<topic>/partition=<p>/…``; the test's topics carry a unique suffix, so their directories
are renamed to the pipeline's topic names before dbt reads them (the files inside are untouched).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest

from omnistream import topics
from omnistream.settings import Settings
from omnistream.sink.layout import file_name, parse_file_name
from omnistream.warehouse.dbt import DbtRun, run_dbt
from tests.support.dbt_fixtures import SCHEMAS, master_data, store_orders
from tests.support.sink import AvroProducer, drain, new_topic

pytestmark = pytest.mark.integration

START = datetime(2026, 11, 24, 22, 0, tzinfo=UTC)


def split_files_alongside(topic_dir: Path) -> None:
    """Leave each landed file's two halves beside it, as compaction's grace period does (the merged file
    and the small files it replaced are both listed): readers must read each record once."""
    split = 0
    for path in sorted(topic_dir.glob("partition=*/*.parquet")):
        landed = parse_file_name(path.name)
        table = pq.read_table(path)
        assert landed is not None, path
        if table.num_rows < 2:
            continue
        split += 1
        half = table.num_rows // 2
        for piece in (table.slice(0, half), table.slice(half)):
            offsets = [m["offset"] for m in piece.column("record_metadata").to_pylist()]
            name = file_name(landed.topic, landed.partition, min(offsets), max(offsets))
            pq.write_table(piece, path.with_name(name))
    assert split, f"no landed file of two or more records in {topic_dir}"


def test_marts_over_records_the_sink_landed(stack_settings: Settings, unique: str, tmp_path: Path) -> None:
    stores = store_orders(23, count=40, start=START, step=timedelta(minutes=4))
    masterdata = master_data(23, START - timedelta(days=1), START + timedelta(hours=1))
    produced = {
        topics.STORE_ORDERS: (stores.topic, "store_order"),
        topics.PRODUCTS: (masterdata.products, "product"),
        topics.STORES: (masterdata.stores, "store"),
    }
    names = {}
    for canonical, (topic, schema) in produced.items():
        name = new_topic(stack_settings, f"{canonical}.{unique}")
        names[canonical] = name
        producer = AvroProducer(stack_settings, name, json.loads((SCHEMAS / f"{schema}.avsc").read_text()))
        for record in topic.records:
            producer.send(record.value, key=record.key)
        producer.flush()
    raw = tmp_path / "landed"
    stats = drain(stack_settings, raw, f"dbt-{unique}", list(names.values()))
    assert stats.records == sum(len(topic.records) for topic, _ in produced.values())

    landing = tmp_path / "landing"
    landing.mkdir()
    for canonical, name in names.items():
        (raw / name).rename(landing / canonical)
    split_files_alongside(landing / topics.STORE_ORDERS)
    run = DbtRun(
        duckdb_path=tmp_path / "omnistream.duckdb",
        landing_root=landing,
        history_root=str(tmp_path / "no-history"),
        target_path=tmp_path / "target",
    )
    run_dbt(["build"], run, settings=stack_settings)

    with duckdb.connect(str(tmp_path / "omnistream.duckdb"), read_only=True) as con:
        rows = con.execute(
            "select channel, store_id, cast(order_date as varchar), order_count, line_count, net_amount,"
            " tax_amount from marts.fct_daily_sales"
        ).fetchall()
        ((landed_rows,),) = con.execute("select count(*) from raw.stores_order_confirmations").fetchall()
        ((keys_match,),) = con.execute(
            "select bool_and(order_number = struct_extract(record_metadata, 'key'))"
            " from raw.stores_order_confirmations"
        ).fetchall()
        ((resends,),) = con.execute(
            "select sum(resend_count) from intermediate.int_store_orders_deduplicated"
        ).fetchall()
        current = (
            "select sku, unit_price from marts.dim_products where is_current and sku in (select unnest(?))"
        )
        prices = dict(con.execute(current, [masterdata.repriced]).fetchall())
    expected = {
        (channel, store, day.isoformat()): (t.orders, t.lines, t.net, t.tax)
        for (channel, store, day), t in stores.manifest.totals.items()
        if t.orders
    }
    assert {(c, s, d): (o, n, net, tax) for c, s, d, o, n, net, tax in rows} == expected
    assert landed_rows == len(stores.topic.records)  # the covered copies are not read twice
    assert keys_match
    assert resends == stores.resends > 0
    repriced = {
        r.key: r.value["unit_price"] for r in masterdata.products.records if r.value and r.timestamp > START
    }
    assert prices == repriced
