"""A warehouse built once per session by `dbt build` over landed fixtures and a small history."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from omnistream.warehouse.dbt import DbtRun, run_dbt
from tests.support.dbt_fixtures import Warehouse, write_sources


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
