"""Master-data CSV files: deterministic generation, drift that changes what it should, atomic persistence."""

from __future__ import annotations

import csv
import json
import re
import shutil
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from simulators.masterdata import (
    CUSTOMERS,
    ENTITIES,
    PRODUCTS,
    STATE_FILE,
    DriftConfig,
    MasterData,
    ensure_reference,
    read_table,
    write_reference,
)
from simulators.reference import build_reference

SEED = 42
T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
ADDRESS = ("street", "city", "postcode", "country")


def csv_bytes(directory: Path) -> dict[str, bytes]:
    return {e.file_name: (directory / e.file_name).read_bytes() for e in ENTITIES.values()}


def by_key(store: MasterData, entity: str) -> dict[object, dict[str, object]]:
    key = ENTITIES[entity].key
    return {r[key]: r for r in store.records(entity)}


def test_reference_files_are_deterministic_per_seed(reference_dir: Path, tmp_path: Path) -> None:
    again, other = tmp_path / "again", tmp_path / "other"
    write_reference(again, SEED)
    write_reference(other, 7)

    assert csv_bytes(again) == csv_bytes(reference_dir)
    assert csv_bytes(other)["customers.csv"] != csv_bytes(reference_dir)["customers.csv"]


def test_reference_files_hold_the_shared_ids_and_exact_values(reference_dir: Path) -> None:
    ref = build_reference(SEED)
    customers = read_table(reference_dir / "customers.csv", CUSTOMERS)
    products = read_table(reference_dir / "products.csv", PRODUCTS)
    stores = read_table(reference_dir / "stores.csv", ENTITIES["stores"])

    assert list(customers) == [c.customer_id for c in ref.customers]
    assert list(products) == [p.sku for p in ref.products]
    assert list(stores) == [s.store_id for s in ref.stores]
    assert {k: r["unit_price"] for k, r in products.items()} == {p.sku: p.unit_price for p in ref.products}
    assert {k: r["tax_rate"] for k, r in stores.items()} == {s.store_id: s.tax_rate for s in ref.stores}
    for table in (customers, products, stores):
        assert all(r["active"] and not r["deleted"] for r in table.values())
    with (reference_dir / "products.csv").open(newline="") as fh:
        raw = list(csv.DictReader(fh))
    assert all(re.fullmatch(r"\d+\.\d{2}", row["unit_price"]) for row in raw)
    assert all(datetime.fromisoformat(row["updated_at"]).utcoffset() == timedelta(0) for row in raw)


def test_drift_changes_what_it_should_and_nothing_else(data_dir: Path) -> None:
    store = MasterData.load(data_dir)
    before = {name: by_key(store, name) for name in ENTITIES}
    config = DriftConfig(seed=SEED, moves=5, price_changes=4, new_products=2, deactivations=3, deletions=2)

    report = store.drift_once(config, now=T0)
    after = {name: by_key(store, name) for name in ENTITIES}

    assert (len(report.moved), len(report.repriced), len(report.added)) == (5, 4, 2)
    assert (len(report.deactivated), len(report.deleted)) == (3, 2)
    assert report.at == T0
    customers, products = after["customers"], after["products"]
    for cid in report.moved:
        assert tuple(customers[cid][f] for f in ADDRESS) != tuple(
            before["customers"][cid][f] for f in ADDRESS
        )
    for sku in report.repriced:
        old, new = before["products"][sku]["unit_price"], products[sku]["unit_price"]
        assert isinstance(new, Decimal) and new != old and new == new.quantize(Decimal("0.01"))
    assert report.added == ["SKU-00401", "SKU-00402"]
    assert all(products[s]["created_at"] == T0 and products[s]["active"] for s in report.added)
    assert all(customers[c]["active"] is False and not customers[c]["deleted"] for c in report.deactivated)
    assert all(customers[c]["deleted"] is True for c in report.deleted)

    touched: dict[str, set[object]] = {
        "customers": {*report.moved, *report.deactivated, *report.deleted},
        "products": {*report.repriced, *report.added},
        "stores": set(),
    }
    for name in ENTITIES:
        for key, record in after[name].items():
            if key in touched[name]:
                assert record["updated_at"] == T0
            else:
                assert record == before[name][key]


def test_deleted_customers_vanish_and_deactivated_ones_stay(data_dir: Path) -> None:
    store = MasterData.load(data_dir)
    report = store.drift_once(DriftConfig(seed=SEED, deactivations=2, deletions=2), now=T0)
    served, _ = store.page("customers", None, None, limit=10_000)
    served_ids = {r["customer_id"] for r in served}

    assert all(store.get("customers", c) is None for c in report.deleted)
    assert served_ids.isdisjoint(report.deleted)
    for cid in report.deactivated:
        record = store.get("customers", cid)
        assert record is not None and record["active"] is False
        assert cid in served_ids


def test_drift_is_persisted_atomically(data_dir: Path) -> None:
    store = MasterData.load(data_dir)
    store.drift_once(DriftConfig(seed=SEED), now=T0)
    store.drift_once(DriftConfig(seed=SEED), now=T0 + timedelta(seconds=5))

    reloaded = MasterData.load(data_dir)
    assert {n: by_key(reloaded, n) for n in ENTITIES} == {n: by_key(store, n) for n in ENTITIES}
    assert json.loads((data_dir / STATE_FILE).read_text()) == {"seed": SEED, "drift_steps": 2}
    assert sorted(p.name for p in data_dir.iterdir()) == sorted(
        [*(e.file_name for e in ENTITIES.values()), STATE_FILE]
    )


def test_drift_is_deterministic_and_a_restart_continues_the_sequence(
    reference_dir: Path, tmp_path: Path
) -> None:
    config = DriftConfig(seed=SEED, moves=4, price_changes=4, new_products=2, deactivations=2, deletions=2)
    nows = [T0 + timedelta(minutes=i) for i in range(3)]
    straight, restarted, other_seed = (tmp_path / n for n in ("straight", "restarted", "other"))
    for target in (straight, restarted, other_seed):
        shutil.copytree(reference_dir, target)

    store = MasterData.load(straight)
    for now in nows:
        store.drift_once(config, now=now)
    MasterData.load(restarted).drift_once(config, now=nows[0])
    again = MasterData.load(restarted)  # as after a restart
    for now in nows[1:]:
        again.drift_once(config, now=now)
    different = MasterData.load(other_seed)
    for now in nows:
        different.drift_once(DriftConfig(seed=SEED + 1), now=now)

    assert csv_bytes(restarted) == csv_bytes(straight)
    assert csv_bytes(other_seed)["customers.csv"] != csv_bytes(straight)["customers.csv"]


def test_drift_timestamps_never_go_backwards(data_dir: Path) -> None:
    store = MasterData.load(data_dir)
    first = store.drift_once(DriftConfig(seed=SEED), now=T0)
    second = store.drift_once(DriftConfig(seed=SEED), now=T0 - timedelta(days=365))

    assert second.at >= first.at
    assert store.now() >= second.at


def test_ensure_reference_keeps_a_drifted_state(data_dir: Path) -> None:
    MasterData.load(data_dir).drift_once(DriftConfig(seed=SEED), now=T0)
    drifted = csv_bytes(data_dir)

    assert ensure_reference(data_dir, SEED) is False
    assert csv_bytes(data_dir) == drifted


def test_ensure_reference_writes_missing_files(tmp_path: Path, reference_dir: Path) -> None:
    assert ensure_reference(tmp_path / "fresh", SEED) is True
    assert csv_bytes(tmp_path / "fresh") == csv_bytes(reference_dir)


def test_loading_without_files_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="simulate api"):
        MasterData.load(tmp_path)
