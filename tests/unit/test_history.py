"""The history generator: layout, types, exact money, reconciliation with the manifest, determinism."""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import subprocess
import sys
import threading
from collections import defaultdict
from datetime import UTC, date, datetime
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import duckdb
import google_crc32c
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from omnistream.gcs import file_checksums, object_name, uses_emulator
from omnistream.manifest import read_totals
from omnistream.settings import GcsSettings, HistorySettings, Settings
from omnistream.warehouse.history_load import (
    SnowflakeTarget,
    list_history_files,
    load_history_into,
    snowflake_copy_statements,
    snowflake_put_statement,
    snowflake_setup_statements,
)
from omnistream.warehouse.lock import WarehouseBusy, warehouse_lock
from simulators.history import SCHEMA, HistoryResult, generate_history, history_window
from simulators.reference import ONLINE_TAX_RATE, build_reference

SEED = 7
ROWS = 60_000
END = date(2026, 11, 25)
PART = re.compile(r"history/year=(\d{4})/month=(\d{2})/part-0\.parquet")


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> HistoryResult:
    return generate_history(tmp_path_factory.mktemp("history"), seed=SEED, rows=ROWS, end=END)


@pytest.fixture(scope="module")
def table(history: HistoryResult) -> pa.Table:
    return read_history(history)


@pytest.fixture(scope="module")
def rows(table: pa.Table) -> list[dict[str, Any]]:
    return table.to_pylist()


def read_history(result: HistoryResult) -> pa.Table:
    return pa.concat_tables(pq.read_table(path) for path in result.files)


def partition_of(path: Path) -> tuple[int, int]:
    match = PART.search(path.as_posix())
    assert match is not None, path
    return int(match.group(1)), int(match.group(2))


def months_between(start: date, end: date) -> list[tuple[int, int]]:
    months = []
    year, month = start.year, start.month
    while (year, month) <= (end.year, end.month):
        months.append((year, month))
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return months


def test_window_is_ten_years_ending_before_the_end_date() -> None:
    assert history_window(date(2026, 11, 25)) == (date(2016, 11, 25), date(2026, 11, 25))
    assert history_window(date(2028, 2, 29)) == (date(2018, 2, 28), date(2028, 2, 29))


def test_one_file_per_month_in_hive_layout(history: HistoryResult) -> None:
    out = history.root.parent
    found = sorted(path.relative_to(out).as_posix() for path in out.rglob("*.parquet"))
    assert found == sorted(path.relative_to(out).as_posix() for path in history.files)
    assert all(PART.fullmatch(name) for name in found)
    months = [partition_of(Path(name)) for name in found]
    # The window ends the day before END, so END's own month is covered only up to 24 November.
    assert months == months_between(history.start, END)
    assert (out / "manifest.json").is_file()


def test_each_partition_holds_only_its_month(history: HistoryResult) -> None:
    for path in history.files:
        year, month = partition_of(path)
        ordered_at = pq.read_table(path, columns=["ordered_at"])["ordered_at"]
        assert set(pc.year(ordered_at).to_pylist()) == {year}
        assert set(pc.month(ordered_at).to_pylist()) == {month}


def test_exactly_the_requested_rows_inside_the_window(history: HistoryResult, table: pa.Table) -> None:
    assert table.num_rows == ROWS == history.rows
    first, last = pc.min_max(table["ordered_at"]).values()
    assert first.as_py() >= datetime(2016, 11, 25, tzinfo=UTC)
    assert last.as_py() < datetime(2026, 11, 25, tzinfo=UTC)


def test_columns_are_typed(table: pa.Table, rows: list[dict[str, Any]]) -> None:
    assert table.schema == SCHEMA
    assert str(table.schema.field("unit_price").type) == "decimal128(12, 2)"
    assert table.schema.field("ordered_at").type == pa.timestamp("us", tz="UTC")
    row = rows[0]
    assert all(isinstance(row[name], Decimal) for name in ("unit_price", "line_total", "tax"))
    assert row["ordered_at"].utcoffset().total_seconds() == 0
    assert all(
        r[name].as_tuple().exponent == -2 for r in rows for name in ("unit_price", "line_total", "tax")
    )


def test_money_is_exact(rows: list[dict[str, Any]]) -> None:
    ref = build_reference(SEED)
    rates = {store.store_id: store.tax_rate for store in ref.stores}
    prices = {product.sku: product.unit_price for product in ref.products}
    for row in rows:
        assert row["unit_price"] == prices[row["sku"]]
        assert row["line_total"] == row["quantity"] * row["unit_price"]
        rate = rates[row["store_id"]] if row["store_id"] else ONLINE_TAX_RATE
        assert row["tax"] == (row["line_total"] * rate).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)


def test_parquet_reconciles_with_the_manifest_to_the_cent(history: HistoryResult, table: pa.Table) -> None:
    day = pc.cast(table["ordered_at"], pa.date32())
    keyed = pa.table(
        {
            "channel": table["channel"],
            "store_id": table["store_id"],
            "day": day,
            "order_id": table["order_id"],
            "line_total": table["line_total"],
            "tax": table["tax"],
        }
    )
    grouped = keyed.group_by(["channel", "store_id", "day"]).aggregate(
        [("order_id", "count_distinct"), ("order_id", "count"), ("line_total", "sum"), ("tax", "sum")]
    )
    from_parquet = {
        (g["channel"], g["store_id"], g["day"].isoformat()): {
            "orders": g["order_id_count_distinct"],
            "lines": g["order_id_count"],
            "net": g["line_total_sum"],
            "tax": g["tax_sum"],
            "gross": g["line_total_sum"] + g["tax_sum"],
        }
        for g in grouped.to_pylist()
    }
    assert from_parquet == read_totals(history.manifest_path)
    assert sum(cell["lines"] for cell in from_parquet.values()) == ROWS


def test_orders_are_consistent_across_their_lines(rows: list[dict[str, Any]]) -> None:
    orders: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        orders[row["order_id"]].append(row)
    assert len(orders) > ROWS / 4  # several lines per order, not one order per line nor one per day
    for order_id, lines in orders.items():
        head = {(r["channel"], r["store_id"], r["customer_id"], r["ordered_at"]) for r in lines}
        assert len(head) == 1, order_id
        assert sorted(r["line_number"] for r in lines) == list(range(1, len(lines) + 1))
        channel, store_id, customer_id, _ = head.pop()
        assert order_id.startswith("H-O-" if channel == "online" else "H-S-")
        if channel == "online":
            assert store_id is None and customer_id is not None
        else:
            assert store_id is not None
    assert any(len(lines) > 1 for lines in orders.values())


def test_ids_come_from_the_reference(table: pa.Table) -> None:
    ref = build_reference(SEED)
    assert set(pc.unique(table["channel"]).to_pylist()) == {"online", "in_store"}
    assert set(pc.unique(table["store_id"]).drop_null().to_pylist()) <= {s.store_id for s in ref.stores}
    assert set(pc.unique(table["sku"]).to_pylist()) <= {p.sku for p in ref.products}
    customers = set(pc.unique(table["customer_id"]).drop_null().to_pylist())
    assert customers <= {c.customer_id for c in ref.customers}
    in_store = table.filter(pc.equal(table["channel"], "in_store"))
    assert 0 < in_store["customer_id"].null_count < in_store.num_rows  # walk-ins and known customers


def test_stores_sell_only_once_open(rows: list[dict[str, Any]]) -> None:
    opened = {store.store_id: store.opened_at.date() for store in build_reference(SEED).stores}
    assert all(r["ordered_at"].date() >= opened[r["store_id"]] for r in rows if r["store_id"])


def test_shape_grows_and_follows_the_calendar(rows: list[dict[str, Any]]) -> None:
    lines: dict[tuple[Any, ...], int] = defaultdict(int)
    for row in rows:
        at, channel = row["ordered_at"], row["channel"]
        lines[("year", at.year)] += 1
        lines[("year", at.year, channel)] += 1
        lines[("weekday", at.isoweekday(), channel)] += 1
        lines[("month", at.month)] += 1
    assert lines[("year", 2025)] > 1.5 * lines[("year", 2017)]
    share = {year: lines[("year", year, "online")] / lines[("year", year)] for year in (2017, 2025)}
    assert share[2025] > 2 * share[2017]
    assert lines[("weekday", 6, "in_store")] > 3 * lines[("weekday", 7, "in_store")]  # Saturday, Sunday
    assert lines[("month", 12)] > 1.4 * lines[("month", 2)]


def test_same_seed_same_bytes_other_seed_other_data(history: HistoryResult, tmp_path: Path) -> None:
    again = generate_history(tmp_path / "again", seed=SEED, rows=ROWS, end=END)
    other = generate_history(tmp_path / "other", seed=SEED + 1, rows=ROWS, end=END)
    assert [p.read_bytes() for p in again.files] == [p.read_bytes() for p in history.files]
    assert read_totals(again.manifest_path) == read_totals(history.manifest_path)
    assert [p.read_bytes() for p in other.files] != [p.read_bytes() for p in history.files]


def test_a_rerun_removes_partitions_it_did_not_write(tmp_path: Path) -> None:
    first = generate_history(tmp_path, seed=SEED, rows=5_000, end=date(2026, 11, 25))
    (first.files[0].parent / "part-0.parquet.tmp").write_bytes(b"left by an interrupted run")
    second = generate_history(tmp_path, seed=SEED, rows=5_000, end=date(2026, 5, 25))
    assert first.files[-1] not in second.files
    assert sorted(p for p in (tmp_path / "history").rglob("*") if p.is_file()) == sorted(second.files)
    assert not (tmp_path / "history" / "year=2026" / "month=11").exists()


def test_a_single_line(tmp_path: Path) -> None:
    result = generate_history(tmp_path, seed=SEED, rows=1, end=END)
    assert len(result.files) == 1
    assert read_history(result).num_rows == 1
    totals = read_totals(result.manifest_path)
    assert [(cell["orders"], cell["lines"]) for cell in totals.values()] == [(1, 1)]


def test_rows_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="rows"):
        generate_history(tmp_path, seed=SEED, rows=0, end=END)


def test_checksums_are_what_gcs_reports(tmp_path: Path) -> None:
    path = tmp_path / "data.bin"
    path.write_bytes(b"omnistream" * 300_000)  # larger than one read chunk
    data = path.read_bytes()
    sums = file_checksums(path)
    assert sums.md5 == base64.b64encode(hashlib.md5(data).digest()).decode()
    assert sums.crc32c == base64.b64encode(google_crc32c.Checksum(data).digest()).decode()
    assert sums.size == len(data)


def test_object_names_mirror_relative_paths(tmp_path: Path) -> None:
    path = tmp_path / "history" / "year=2020" / "month=03" / "part-0.parquet"
    assert object_name(tmp_path / "history", path, "history/") == "history/year=2020/month=03/part-0.parquet"


def test_emulator_unless_google() -> None:
    assert uses_emulator(GcsSettings(port=54443))
    assert not uses_emulator(GcsSettings(emulator_host="https://storage.googleapis.com"))


# --- the history load: checksums, the DuckDB ledger, the Snowflake SQL, the warehouse lock ----------------


def test_local_files_are_listed_with_the_checksum_gcs_would_report(history: HistoryResult) -> None:
    files = list_history_files(str(history.root))
    assert [f.name for f in files] == sorted(p.relative_to(history.root).as_posix() for p in history.files)
    for file in files[:3]:
        assert file.checksum == file_checksums(Path(file.uri)).md5


def test_duckdb_load_records_each_file_once_and_reports_progress(
    history: HistoryResult, tmp_path: Path
) -> None:
    files = list_history_files(str(history.root))
    advanced: list[int] = []
    first = load_history_into(tmp_path / "w.duckdb", files, on_files=advanced.append)
    assert (first.loaded, first.skipped, first.rows) == (len(files), 0, ROWS)
    assert sum(advanced) == len(files)
    again = load_history_into(tmp_path / "w.duckdb", files)
    assert (again.loaded, again.skipped, again.rows) == (0, len(files), 0)
    with duckdb.connect(str(tmp_path / "w.duckdb"), read_only=True) as con:
        ledger = con.execute("select source_file, checksum, row_count from raw.history_files").fetchall()
        ((rows,),) = con.execute("select count(*) from raw.history_order_lines").fetchall()
    assert rows == ROWS
    assert {(uri, checksum) for uri, checksum, _ in ledger} == {(f.uri, f.checksum) for f in files}


def test_a_changed_file_is_reloaded_in_place(tmp_path: Path) -> None:
    result = generate_history(tmp_path / "out", seed=SEED, rows=3_000, end=END)
    database = tmp_path / "w.duckdb"
    load_history_into(database, list_history_files(str(result.root)))
    changed = result.files[-1]
    table = pq.read_table(changed)
    pq.write_table(table.slice(0, table.num_rows - 2), changed)
    report = load_history_into(database, list_history_files(str(result.root)))
    assert (report.loaded, report.skipped, report.rows) == (1, len(result.files) - 1, table.num_rows - 2)
    with duckdb.connect(str(database), read_only=True) as con:
        assert con.execute("select count(*) from raw.history_order_lines").fetchall() == [(3_000 - 2,)]


def test_snowflake_stage_uses_the_storage_integration_by_default() -> None:
    target = SnowflakeTarget(stage_url="gcs://omnistream-history/history/")
    assert target.storage_integration == HistorySettings().storage_integration == "OMNISTREAM_HISTORY_GCS"
    statements = snowflake_setup_statements(target)
    assert [" ".join(st.split()[:2]) for st in statements] == [
        "create schema",
        "create table",
        "create stage",
    ]
    stage = statements[-1]
    assert " ".join(stage.split()) == (
        "create stage if not exists RAW.HISTORY_STAGE url = 'gcs://omnistream-history/history/' "
        "storage_integration = OMNISTREAM_HISTORY_GCS file_format = (type = parquet)"
    )
    custom = SnowflakeTarget(stage_url="gcs://b/h/", storage_integration="GCS_INT")
    assert "storage_integration = GCS_INT" in snowflake_setup_statements(custom)[-1]


def test_snowflake_internal_stage_is_explicit_and_takes_no_url() -> None:
    target = SnowflakeTarget(stage_url="gcs://b/history/", stage_access="internal")
    stage = " ".join(snowflake_setup_statements(target)[-1].split())
    assert stage == "create stage if not exists RAW.HISTORY_INTERNAL_STAGE file_format = (type = parquet)"
    put = snowflake_put_statement(
        target, Path("/tmp/x/year=2020/month=03/part-0.parquet"), "year=2020/month=03/part-0.parquet"
    )
    assert put == (
        "put 'file:///tmp/x/year=2020/month=03/part-0.parquet'"
        " @RAW.HISTORY_INTERNAL_STAGE/year=2020/month=03/ auto_compress = false overwrite = false"
    )
    with pytest.raises(ValueError, match="unquoted stage path"):
        snowflake_put_statement(target, Path("/tmp/x/a b.parquet"), "year=2020/a b.parquet")
    (copy,) = snowflake_copy_statements(target, ["year=2020/month=03/part-0.parquet", "year=2020/b.parquet"])
    assert "from @RAW.HISTORY_INTERNAL_STAGE" in copy
    assert "files =" not in copy  # the whole internal stage: it holds only what the loader PUT


def test_snowflake_stage_access_is_checked() -> None:
    with pytest.raises(ValueError, match="storage integration"):
        SnowflakeTarget(stage_url="gcs://b/h/", storage_integration="")
    with pytest.raises(ValueError, match="stage_access"):
        SnowflakeTarget(stage_url="gcs://b/h/", stage_access="keys")
    with pytest.raises(ValueError, match="stage_access"):
        HistorySettings(stage_access="credentials")


def test_history_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMNISTREAM_HISTORY__STAGE_ACCESS", "internal")
    monkeypatch.setenv("OMNISTREAM_HISTORY__STORAGE_INTEGRATION", "MY_GCS")
    settings = Settings()
    assert (settings.history.stage_access, settings.history.storage_integration) == ("internal", "MY_GCS")
    gcs = GcsSettings(bucket="b")
    assert settings.history.dataset(gcs) == "gs://b/history"
    assert settings.history.stage(gcs) == "gcs://b/history/"
    assert HistorySettings(root="/data/history").dataset(gcs) == "/data/history"


def test_snowflake_copy_names_at_most_a_thousand_files_each() -> None:
    names = [f"year={2000 + i // 12}/month={i % 12 + 1:02d}/part-0.parquet" for i in range(2_001)]
    copies = snowflake_copy_statements(SnowflakeTarget(stage_url="gcs://b/h/"), names)
    assert [copy.count("part-0.parquet") for copy in copies] == [1_000, 1_000, 1]
    assert all("match_by_column_name = case_insensitive" in copy for copy in copies)
    quoted = snowflake_copy_statements(SnowflakeTarget(stage_url="gcs://b/h/"), ["it's.parquet"])
    assert "files = ('it''s.parquet')" in quoted[0]


def test_the_warehouse_lock_makes_a_second_writer_wait(tmp_path: Path) -> None:
    database = tmp_path / "w.duckdb"
    # The holder keeps the lock until it is told to let go (a line on its stdin).
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from pathlib import Path; from omnistream.warehouse.lock import warehouse_lock\n"
            f"with warehouse_lock(Path({str(database)!r})):\n"
            "    print('held', flush=True); sys.stdin.readline()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    waiting, acquired = threading.Event(), threading.Event()

    class OnWaiting(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage().startswith("waiting for the warehouse"):
                waiting.set()

    def second_writer() -> None:
        with warehouse_lock(database, timeout_s=30):
            acquired.set()

    lock_logger = logging.getLogger("omnistream.warehouse.lock")
    handler, level = OnWaiting(), lock_logger.level
    lock_logger.addHandler(handler)
    lock_logger.setLevel(logging.INFO)
    try:
        assert holder.stdin is not None and holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        with (
            pytest.raises(WarehouseBusy, match="still being written"),
            warehouse_lock(database, timeout_s=0.3),
        ):
            pass
        writer = threading.Thread(target=second_writer)
        writer.start()
        assert waiting.wait(timeout=30), "the second writer never waited"
        assert not acquired.is_set()  # it waited for the holder instead of failing or going ahead
        holder.stdin.write("release\n")
        holder.stdin.flush()
        writer.join(timeout=30)
        assert acquired.is_set()  # and got the lock once the holder let go
    finally:
        lock_logger.removeHandler(handler)
        lock_logger.setLevel(level)
        if holder.stdin is not None:
            holder.stdin.close()
        holder.wait(timeout=30)
    assert holder.returncode == 0
