"""A warehouse built once per session by `dbt build` over landed fixtures and a small history."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pytest
from dbt_fixture_data import MasterData, OnlineOrders, StoreOrders, master_data, online_orders, store_orders

from omnistream.warehouse.dbt import DbtRun, run_dbt
from simulators.history import generate_history
from simulators.manifest import read_totals

SEED = 42
# The live sources start where the history ends; the first live day crosses UTC midnight.
HISTORY_END = date(2026, 11, 24)
LIVE_START = datetime(2026, 11, 24, 21, 0, tzinfo=UTC)
Totals = dict[tuple[str, str | None, str], tuple[int, int, Decimal, Decimal]]


@dataclass
class Warehouse:
    """A built warehouse and the ground truth it was built from."""

    root: Path
    duckdb_path: Path
    run: DbtRun
    online: OnlineOrders
    stores: StoreOrders
    masterdata: MasterData
    expected: Totals
    build_output: str

    def query(self, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
        with duckdb.connect(str(self.duckdb_path), read_only=True) as con:
            return con.execute(sql, params or []).fetchall()

    def run_results(self) -> list[dict[str, Any]]:
        assert self.run.target_path is not None
        data = json.loads((self.run.target_path / "run_results.json").read_text())
        results: list[dict[str, Any]] = data["results"]
        return results


def write_sources(root: Path) -> tuple[OnlineOrders, StoreOrders, MasterData, Totals]:
    """Landed topics under ``root/landing``, history under ``root/history``; the merged ground truth."""
    landing = root / "landing"
    online = online_orders(SEED, count=60, start=LIVE_START, step=timedelta(minutes=7))
    stores = store_orders(SEED, count=80, start=LIVE_START, step=timedelta(minutes=5))
    masterdata = master_data(SEED, LIVE_START - timedelta(days=1), LIVE_START + timedelta(hours=2))
    for topic in (online.orders, online.order_items, stores.topic, *_master_topics(masterdata)):
        topic.write(landing)
    history = generate_history(root / "history_out", seed=SEED, rows=3_000, end=HISTORY_END)

    expected: Totals = {}
    sources = [
        {
            (c, s, d.isoformat()): (t.orders, t.lines, t.net, t.tax)
            for (c, s, d), t in m.totals.items()
            if t.orders
        }
        for m in (online.manifest, stores.manifest)
    ]
    sources.append(
        {
            k: (v["orders"], v["lines"], v["net"], v["tax"])
            for k, v in read_totals(history.manifest_path).items()
        }
    )
    for totals in sources:
        for key, (orders, lines, net, tax) in totals.items():
            o, n, a, b = expected.get(key, (0, 0, Decimal("0.00"), Decimal("0.00")))
            expected[key] = (o + orders, n + lines, a + net, b + tax)
    return online, stores, masterdata, expected


def _master_topics(masterdata: MasterData) -> tuple[Any, ...]:
    return (masterdata.customers, masterdata.products, masterdata.stores)


@pytest.fixture(scope="session")
def warehouse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Warehouse]:
    root = tmp_path_factory.mktemp("warehouse")
    online, stores, masterdata, expected = write_sources(root)
    run = DbtRun(
        duckdb_path=root / "omnistream.duckdb",
        landing_root=root / "landing",
        history_root=str(root / "history_out" / "history"),
        target_path=root / "target",
    )
    result = run_dbt(["build"], run)
    yield Warehouse(
        root, root / "omnistream.duckdb", run, online, stores, masterdata, expected, result.stdout
    )
