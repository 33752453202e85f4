"""`dbt build --target snowflake`, executed against fakesnow's Snowflake-protocol server (a real subprocess).

The landed topics are loaded as the Snowflake Kafka connector lays them out (a table per topic,
RECORD_METADATA variant + one column per field, names from connect/snowflake-sink.json's topic2table map)
and the history with the history loader's COPY INTO from an external stage; the stage points at a local
directory here, the bucket's stand-in, because fakesnow reads stages through DuckDB, which has no GCS
client. The stage is created as the loader creates it by default, with its storage integration (fakesnow
accepts the clause and grants nothing); the fallback, PUT into an internal stage, runs for real too.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import snowflake.connector

from omnistream.warehouse.dbt import DbtRun, run_dbt
from omnistream.warehouse.history_load import (
    LoadReport,
    SnowflakeTarget,
    list_history_files,
    load_history_snowflake,
)
from tests.support.dbt_fixtures import Totals, load_snowflake_table, write_sources

DATABASE = "OMNISTREAM"
START_DEADLINE_S = 60.0
# The snapshot macros fakesnow needs, loaded into this run only (dbt_project.yml's test_macro_path).
FAKESNOW_MACROS = Path(__file__).resolve().parent / "fakesnow_macros"
FAKESNOW_VARS = ["--vars", json.dumps({"test_macro_path": str(FAKESNOW_MACROS)})]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(port: int, process: subprocess.Popen[bytes], deadline_s: float) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"fakesnow exited with {process.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)  # polling a server that is starting; not a wait in a test's logic
    raise TimeoutError(f"fakesnow did not listen on port {port} within {deadline_s} s")


@dataclass
class SnowflakeWarehouse:
    port: int
    expected: Totals
    first_load: LoadReport
    second_load: LoadReport
    builds: list[str]
    history: Path

    def connect(self) -> Any:
        return snowflake.connector.connect(
            account="fakesnow",
            user="omnistream",
            password="omnistream",
            host="127.0.0.1",
            port=self.port,
            protocol="http",
            database=DATABASE,
        )

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        with self.connect() as con:
            cur = con.cursor()
            cur.execute(sql)
            return list(cur.fetchall())


@pytest.fixture(scope="module")
def snowflake_warehouse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SnowflakeWarehouse]:
    root = tmp_path_factory.mktemp("snowflake")
    online, stores, masterdata, expected = write_sources(root)
    port = free_port()
    log = (root / "fakesnow.log").open("wb")
    fakesnow = Path(sys.executable).with_name("fakesnow")
    process = subprocess.Popen(
        [str(fakesnow), "-s", "-p", str(port), "--host", "127.0.0.1"], stdout=log, stderr=subprocess.STDOUT
    )
    try:
        wait_for_port(port, process, START_DEADLINE_S)
        history = root / "history_out" / "history"
        warehouse = SnowflakeWarehouse(port, expected, LoadReport(0, 0, 0), LoadReport(0, 0, 0), [], history)
        with warehouse.connect() as con:
            cur = con.cursor()
            cur.execute(f"create database if not exists {DATABASE}")
            cur.execute(f"use database {DATABASE}")
            cur.execute("create schema if not exists RAW")
            tables = {
                "onlinedb_shop_orders": online.orders,
                "onlinedb_shop_order_items": online.order_items,
                "stores_order_confirmations": stores.topic,
                "masterdata_customers": masterdata.customers,
                "masterdata_products": masterdata.products,
                "masterdata_stores": masterdata.stores,
            }
            for table, topic in tables.items():
                load_snowflake_table(cur, "RAW", table.upper(), topic)
            files = list_history_files(str(history))
            target = SnowflakeTarget(stage_url=f"file://{history}/", include_source_file=False)
            assert target.stage_access == "integration" and target.storage_integration
            warehouse.first_load = load_history_snowflake(cur, target, files)
            warehouse.second_load = load_history_snowflake(cur, target, files)
        run = DbtRun(
            target="snowflake",
            target_path=root / "target",
            extra_env={
                "OMNISTREAM_SNOWFLAKE__ACCOUNT": "fakesnow",
                "OMNISTREAM_SNOWFLAKE__HOST": "127.0.0.1",
                "OMNISTREAM_SNOWFLAKE__PORT": str(port),
                "OMNISTREAM_SNOWFLAKE__PROTOCOL": "http",
                "OMNISTREAM_SNOWFLAKE__USER": "omnistream",
                "OMNISTREAM_SNOWFLAKE__PASSWORD": "omnistream",
                "OMNISTREAM_SNOWFLAKE__DATABASE": DATABASE,
            },
        )
        # Unit tests are checks of the models' logic, run on the local target; dbt-snowflake stages their
        # fixtures in temporary tables, which fakesnow cannot create in a named database.
        for _ in range(2):
            build = ["build", "--exclude-resource-type", "unit_test", *FAKESNOW_VARS]
            warehouse.builds.append(run_dbt(build, run).stdout)
        yield warehouse
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def test_history_copy_loads_each_file_once(snowflake_warehouse: SnowflakeWarehouse) -> None:
    first, second = snowflake_warehouse.first_load, snowflake_warehouse.second_load
    assert first.loaded > 0 and first.skipped == 0 and first.rows == 3_000
    assert second == LoadReport(loaded=0, skipped=first.loaded, rows=0)
    assert snowflake_warehouse.query("select count(*) from RAW.HISTORY_ORDER_LINES") == [(3_000,)]


def test_history_put_into_an_internal_stage_loads_each_file_once(
    snowflake_warehouse: SnowflakeWarehouse,
) -> None:
    """The fallback without a storage integration: the loader PUTs the files, then the same COPY."""
    files = list_history_files(str(snowflake_warehouse.history))
    target = SnowflakeTarget(
        stage_url="", stage_access="internal", schema="HISTORY_PUT", include_source_file=False
    )
    with snowflake_warehouse.connect() as con:
        cur = con.cursor()
        first = load_history_snowflake(cur, target, files)
        again = load_history_snowflake(cur, target, files)
        cur.execute("list @HISTORY_PUT.HISTORY_INTERNAL_STAGE")
        staged = len(cur.fetchall())
    assert (first.loaded, first.skipped, first.rows) == (len(files), 0, 3_000)
    assert again == LoadReport(loaded=0, skipped=len(files), rows=0)
    assert staged == len(files)
    assert snowflake_warehouse.query("select count(*) from HISTORY_PUT.HISTORY_ORDER_LINES") == [(3_000,)]


def test_build_succeeds_twice(snowflake_warehouse: SnowflakeWarehouse) -> None:
    for output in snowflake_warehouse.builds:
        done = [line for line in output.splitlines() if "Done. PASS=" in line]
        assert done and "ERROR=0" in done[-1] and "SKIP=0" in done[-1], output[-3000:]


def test_daily_sales_equal_the_manifests_to_the_cent(snowflake_warehouse: SnowflakeWarehouse) -> None:
    rows = snowflake_warehouse.query(
        "select channel, store_id, order_date, order_count, line_count, net_amount, tax_amount, gross_amount"
        " from marts.fct_daily_sales"
    )
    actual = {}
    for channel, store, day, orders, lines, net, tax, gross in rows:
        assert isinstance(net, Decimal) and gross == net + tax
        assert isinstance(day, date)
        actual[(channel, store, day.isoformat())] = (orders, lines, net, tax)
    assert actual == snowflake_warehouse.expected


def test_master_data_snapshots_survive_a_second_build(snowflake_warehouse: SnowflakeWarehouse) -> None:
    rows = snowflake_warehouse.query("select count(*), count_if(is_current) from marts.dim_products")
    assert rows == [(400, 400)]
