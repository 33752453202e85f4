"""Master data at rest: the reference data as CSV files, the in-memory store the API serves, and drift.

Three files live in the data directory, one row per entity ever created (deleted ones included):
``customers.csv``, ``products.csv``, ``stores.csv``. Every row carries ``active``, ``deleted`` and
``updated_at`` (ISO 8601, UTC, microseconds). A fourth file, ``masterdata_state.json``, remembers the seed
and how many drift steps have been applied, so a restarted simulator continues the same sequence.

Drift (opt-in) changes the data the way a live system does: customers move house, prices change, new
products appear, some customers are deactivated (they stay, ``active=false``) and some are deleted (they
vanish from the API). Each step is deterministic for (seed, step number) and every file is written
atomically (temporary file + rename), so a reader or a restart never sees half a file.
"""

from __future__ import annotations

import bisect
import csv
import json
import logging
import math
import os
import random
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Any

from faker import Faker

from simulators.reference import CATEGORIES, Reference, build_reference, money

logger = logging.getLogger(__name__)

Key = int | str
Record = dict[str, Any]

STATE_FILE = "masterdata_state.json"
MIN_PRICE = Decimal("0.99")
MAX_PRICE = Decimal("999.99")
# Customers' countries and the Faker locale that makes a plausible address there.
LOCALE_BY_COUNTRY = {"DE": "de_DE", "FR": "fr_FR", "NL": "nl_NL", "IE": "en_IE", "ES": "es_ES", "IT": "it_IT"}


@dataclass(frozen=True)
class Entity:
    """One master-data entity: its name (also the URL segment and file stem), key and typed columns."""

    name: str
    key: str
    columns: tuple[tuple[str, str], ...]  # (column, kind); kinds: int, str, decimal, bool, datetime

    @property
    def file_name(self) -> str:
        return f"{self.name}.csv"

    @property
    def key_kind(self) -> str:
        return dict(self.columns)[self.key]

    @property
    def public_columns(self) -> tuple[tuple[str, str], ...]:
        """Columns the API returns: everything but the ``deleted`` flag (deleted rows are never served)."""
        return tuple(c for c in self.columns if c[0] != "deleted")


CUSTOMERS = Entity(
    "customers",
    "customer_id",
    (
        ("customer_id", "int"),
        ("first_name", "str"),
        ("last_name", "str"),
        ("email", "str"),
        ("street", "str"),
        ("city", "str"),
        ("postcode", "str"),
        ("country", "str"),
        ("active", "bool"),
        ("deleted", "bool"),
        ("created_at", "datetime"),
        ("updated_at", "datetime"),
    ),
)
PRODUCTS = Entity(
    "products",
    "sku",
    (
        ("sku", "str"),
        ("name", "str"),
        ("category", "str"),
        ("unit_price", "decimal"),
        ("active", "bool"),
        ("deleted", "bool"),
        ("created_at", "datetime"),
        ("updated_at", "datetime"),
    ),
)
STORES = Entity(
    "stores",
    "store_id",
    (
        ("store_id", "str"),
        ("name", "str"),
        ("city", "str"),
        ("country", "str"),
        ("locale", "str"),
        ("timezone", "str"),
        ("tax_rate", "decimal"),
        ("opened_at", "datetime"),
        ("active", "bool"),
        ("deleted", "bool"),
        ("updated_at", "datetime"),
    ),
)
ENTITIES: dict[str, Entity] = {e.name: e for e in (CUSTOMERS, PRODUCTS, STORES)}


def format_timestamp(value: datetime) -> str:
    """ISO 8601 in UTC with microseconds and an explicit ``+00:00`` zone: one format everywhere."""
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def encode_value(kind: str, value: Any) -> str | int | bool:
    """A typed value as the API serves it: money and rates as decimal strings, timestamps as ISO strings."""
    if kind == "datetime":
        return format_timestamp(value)
    if kind == "decimal":
        return str(value)
    if kind in ("int", "bool"):
        return value
    return str(value)


def _to_csv(kind: str, value: Any) -> str:
    if kind == "bool":
        return "true" if value else "false"
    return str(encode_value(kind, value))


def _from_csv(kind: str, text: str) -> Any:
    if kind == "int":
        return int(text)
    if kind == "decimal":
        return Decimal(text)
    if kind == "bool":
        if text not in ("true", "false"):
            raise ValueError(f"expected true/false, got {text!r}")
        return text == "true"
    if kind == "datetime":
        parsed = datetime.fromisoformat(text)
        if parsed.tzinfo is None:
            raise ValueError(f"timestamp without a zone: {text!r}")
        return parsed.astimezone(UTC)
    return text


def public_view(entity: Entity, record: Record) -> dict[str, Any]:
    """The JSON object the API returns for one record."""
    return {name: encode_value(kind, record[name]) for name, kind in entity.public_columns}


def reference_tables(ref: Reference) -> dict[str, dict[Key, Record]]:
    """The reference data as records, every entity active, not deleted, updated when it was created."""
    customers: dict[Key, Record] = {
        c.customer_id: {
            "customer_id": c.customer_id,
            "first_name": c.first_name,
            "last_name": c.last_name,
            "email": c.email,
            "street": c.street,
            "city": c.city,
            "postcode": c.postcode,
            "country": c.country,
            "active": True,
            "deleted": False,
            "created_at": c.created_at,
            "updated_at": c.created_at,
        }
        for c in ref.customers
    }
    products: dict[Key, Record] = {
        p.sku: {
            "sku": p.sku,
            "name": p.name,
            "category": p.category,
            "unit_price": p.unit_price,
            "active": True,
            "deleted": False,
            "created_at": p.created_at,
            "updated_at": p.created_at,
        }
        for p in ref.products
    }
    stores: dict[Key, Record] = {
        s.store_id: {
            "store_id": s.store_id,
            "name": s.name,
            "city": s.city,
            "country": s.country,
            "locale": s.locale,
            "timezone": s.timezone,
            "tax_rate": s.tax_rate,
            "opened_at": s.opened_at,
            "active": True,
            "deleted": False,
            "updated_at": s.opened_at,
        }
        for s in ref.stores
    }
    return {"customers": customers, "products": products, "stores": stores}


def _atomic_write(path: Path, write: Any) -> None:
    """Write ``path`` through a temporary file in the same directory and rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp_name, 0o644)  # mkstemp creates 0600; these are plain data files
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def write_table(path: Path, entity: Entity, rows: dict[Key, Record]) -> None:
    """Write one entity's rows, sorted by key, as CSV (atomically)."""

    def write(fh: Any) -> None:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow([name for name, _ in entity.columns])
        for key in sorted(rows):
            writer.writerow([_to_csv(kind, rows[key][name]) for name, kind in entity.columns])

    _atomic_write(path, write)


def read_table(path: Path, entity: Entity) -> dict[Key, Record]:
    """Read one entity's CSV back into typed records keyed by id."""
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        expected = [name for name, _ in entity.columns]
        if reader.fieldnames != expected:
            raise ValueError(f"{path}: columns {reader.fieldnames} differ from {expected}")
        rows: dict[Key, Record] = {}
        for raw in reader:
            record = {name: _from_csv(kind, raw[name]) for name, kind in entity.columns}
            rows[record[entity.key]] = record
    return rows


def _write_state(data_dir: Path, seed: int, drift_steps: int) -> None:
    payload = json.dumps({"seed": seed, "drift_steps": drift_steps}, indent=2) + "\n"
    _atomic_write(data_dir / STATE_FILE, lambda fh: fh.write(payload))


def write_reference(data_dir: Path, seed: int) -> list[Path]:
    """Write the reference data for ``seed`` as CSV files in ``data_dir``, replacing what is there."""
    tables = reference_tables(build_reference(seed))
    paths = []
    for name, entity in ENTITIES.items():
        path = data_dir / entity.file_name
        write_table(path, entity, tables[name])
        paths.append(path)
    _write_state(data_dir, seed, 0)
    logger.info("wrote master data for seed %d to %s", seed, data_dir)
    return paths


def ensure_reference(data_dir: Path, seed: int) -> bool:
    """Write the reference data unless it is already there (a drifted state is kept). True if written."""
    if all((data_dir / e.file_name).exists() for e in ENTITIES.values()):
        logger.info("master data already in %s; continuing from it", data_dir)
        return False
    write_reference(data_dir, seed)
    return True


@dataclass(frozen=True)
class DriftConfig:
    """What one drift step changes, how often the server applies one, and the seed that decides which."""

    seed: int = 42
    every_s: float = 5.0
    moves: int = 3
    price_changes: int = 3
    new_products: int = 1
    deactivations: int = 1
    deletions: int = 1

    def __post_init__(self) -> None:
        counts = (self.moves, self.price_changes, self.new_products, self.deactivations, self.deletions)
        if self.every_s < 0 or any(n < 0 for n in counts):
            raise ValueError("drift interval and counts must not be negative")


@dataclass
class DriftReport:
    """What one drift step did, by id."""

    step: int
    at: datetime
    moved: list[int] = field(default_factory=list)
    repriced: list[str] = field(default_factory=list)
    added: list[str] = field(default_factory=list)
    deactivated: list[int] = field(default_factory=list)
    deleted: list[int] = field(default_factory=list)


@lru_cache(maxsize=len(LOCALE_BY_COUNTRY))
def _faker(locale: str) -> Faker:
    return Faker(locale)


def _sku_number(sku: str) -> int:
    return int(sku.rsplit("-", 1)[1])


class MasterData:
    """All master data in memory, safe to read and drift from several threads, persisted to CSV files."""

    def __init__(
        self,
        tables: dict[str, dict[Key, Record]],
        data_dir: Path | None = None,
        seed: int = 42,
        drift_steps: int = 0,
    ) -> None:
        self._tables = tables
        self._keys = {name: sorted(rows) for name, rows in tables.items()}
        self.data_dir = data_dir
        self.seed = seed
        self.drift_steps = drift_steps
        self._lock = threading.Condition(threading.RLock())
        # Timestamps handed out never go backwards, so `updated_since=<as_of>` never misses a later change.
        self._last_ts = max(
            (r["updated_at"] for rows in tables.values() for r in rows.values()),
            default=datetime.min.replace(tzinfo=UTC),
        )

    @classmethod
    def load(cls, data_dir: Path) -> MasterData:
        """Read the CSV files (and drift state) from ``data_dir``."""
        missing = [e.file_name for e in ENTITIES.values() if not (data_dir / e.file_name).exists()]
        if missing:
            raise FileNotFoundError(
                f"{data_dir} lacks {', '.join(missing)}; run `omnistream simulate api` once"
            )
        tables = {name: read_table(data_dir / e.file_name, e) for name, e in ENTITIES.items()}
        state_path = data_dir / STATE_FILE
        state = json.loads(state_path.read_text()) if state_path.exists() else {}
        return cls(tables, data_dir, int(state.get("seed", 42)), int(state.get("drift_steps", 0)))

    def save(self) -> None:
        """Write every table and the drift state back to the data directory, each file atomically."""
        if self.data_dir is None:
            return
        with self._lock:
            for name, entity in ENTITIES.items():
                write_table(self.data_dir / entity.file_name, entity, self._tables[name])
            _write_state(self.data_dir, self.seed, self.drift_steps)

    def now(self) -> datetime:
        """The current time, never earlier than any timestamp already handed out."""
        with self._lock:
            self._last_ts = max(datetime.now(UTC), self._last_ts)
            return self._last_ts

    def get(self, entity: str, key: Key) -> Record | None:
        """One live (not deleted) record, or None."""
        with self._lock:
            record = self._tables[entity].get(key)
            if record is None or record["deleted"]:
                return None
            return dict(record)

    def page(
        self, entity: str, after: Key | None, since: datetime | None, limit: int
    ) -> tuple[list[Record], bool]:
        """Up to ``limit`` live records with key > ``after`` and ``updated_at >= since``, in key order.

        Returns the records and whether more match beyond them.
        """
        with self._lock:
            keys = self._keys[entity]
            rows = self._tables[entity]
            start = 0 if after is None else bisect.bisect_right(keys, after)
            found: list[Record] = []
            for key in keys[start:]:
                record = rows[key]
                if record["deleted"] or (since is not None and record["updated_at"] < since):
                    continue
                if len(found) == limit:
                    return found, True
                found.append(dict(record))
            return found, False

    def live_keys(self, entity: str) -> list[Key]:
        """Keys of every record the API serves, in order."""
        with self._lock:
            return [k for k in self._keys[entity] if not self._tables[entity][k]["deleted"]]

    def records(self, entity: str) -> Iterator[Record]:
        """Copies of every record of ``entity``, deleted ones included, in key order."""
        with self._lock:
            return iter([dict(self._tables[entity][k]) for k in self._keys[entity]])

    def drift_once(self, config: DriftConfig, now: datetime | None = None) -> DriftReport:
        """Apply one drift step, persist it and return what changed."""
        with self._lock:
            at = max(now.astimezone(UTC), self._last_ts) if now is not None else self.now()
            self._last_ts = at
            rng = random.Random(f"{config.seed}:{self.drift_steps}")
            report = DriftReport(step=self.drift_steps, at=at)
            self._move_customers(rng, config.moves, at, report)
            self._reprice_products(rng, config.price_changes, at, report)
            self._add_products(rng, config.new_products, at, report)
            self._deactivate_customers(rng, config.deactivations, at, report)
            self._delete_customers(rng, config.deletions, at, report)
            self.drift_steps += 1
            self.save()
            self._lock.notify_all()
        logger.info(
            "drift step %d: %d moved, %d repriced, %d added, %d deactivated, %d deleted",
            report.step,
            len(report.moved),
            len(report.repriced),
            len(report.added),
            len(report.deactivated),
            len(report.deleted),
        )
        return report

    def wait_for_drift_steps(self, steps: int, timeout: float) -> bool:
        """Block until at least ``steps`` drift steps have been applied; False if ``timeout`` passed first."""
        with self._lock:
            return self._lock.wait_for(lambda: self.drift_steps >= steps, timeout)

    def _pick(self, rng: random.Random, entity: str, count: int, active_only: bool = False) -> list[Any]:
        rows = self._tables[entity]
        candidates = [
            k for k in self._keys[entity] if not rows[k]["deleted"] and (rows[k]["active"] or not active_only)
        ]
        return sorted(rng.sample(candidates, min(count, len(candidates))))

    def _move_customers(self, rng: random.Random, count: int, at: datetime, report: DriftReport) -> None:
        for key in self._pick(rng, "customers", count):
            record = self._tables["customers"][key]
            # Most people move within their country; a few move abroad.
            country = record["country"] if rng.random() < 0.8 else rng.choice(sorted(LOCALE_BY_COUNTRY))
            fake = _faker(LOCALE_BY_COUNTRY.get(country, "en_IE"))
            fake.seed_instance(rng.getrandbits(32))
            record.update(
                street=fake.street_address(),
                city=fake.city(),
                postcode=fake.postcode(),
                country=country,
                updated_at=at,
            )
            report.moved.append(key)

    def _reprice_products(self, rng: random.Random, count: int, at: datetime, report: DriftReport) -> None:
        for key in self._pick(rng, "products", count):
            record = self._tables["products"][key]
            factor = Decimal(str(round(rng.uniform(0.85, 1.15), 4)))
            price = min(max(money(record["unit_price"] * factor), MIN_PRICE), MAX_PRICE)
            if price == record["unit_price"]:
                price = price + Decimal("0.01") if price < MAX_PRICE else price - Decimal("0.01")
            record.update(unit_price=price, updated_at=at)
            report.repriced.append(key)

    def _add_products(self, rng: random.Random, count: int, at: datetime, report: DriftReport) -> None:
        products = self._tables["products"]
        number = max((_sku_number(str(k)) for k in products), default=0)
        for _ in range(count):
            number += 1
            sku = f"SKU-{number:05d}"
            category = CATEGORIES[(number - 1) % len(CATEGORIES)]
            fake = _faker(rng.choice(sorted(LOCALE_BY_COUNTRY.values())))
            fake.seed_instance(rng.getrandbits(32))
            price = min(max(money(math.exp(rng.gauss(3.2, 0.8))), MIN_PRICE), MAX_PRICE)
            products[sku] = {
                "sku": sku,
                "name": f"{fake.word().capitalize()} {category} {number}",
                "category": category,
                "unit_price": price,
                "active": True,
                "deleted": False,
                "created_at": at,
                "updated_at": at,
            }
            bisect.insort(self._keys["products"], sku)
            report.added.append(sku)

    def _deactivate_customers(
        self, rng: random.Random, count: int, at: datetime, report: DriftReport
    ) -> None:
        for key in self._pick(rng, "customers", count, active_only=True):
            self._tables["customers"][key].update(active=False, updated_at=at)
            report.deactivated.append(key)

    def _delete_customers(self, rng: random.Random, count: int, at: datetime, report: DriftReport) -> None:
        for key in self._pick(rng, "customers", count):
            self._tables["customers"][key].update(deleted=True, updated_at=at)
            report.deleted.append(key)


class DriftLoop:
    """A background thread applying one drift step every ``config.every_s`` seconds until stopped."""

    def __init__(self, store: MasterData, config: DriftConfig) -> None:
        if config.every_s <= 0:
            raise ValueError("a drift loop needs every_s > 0")
        self.store = store
        self.config = config
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="masterdata-drift", daemon=True)

    def start(self) -> DriftLoop:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.config.every_s):
            try:
                self.store.drift_once(self.config)
            except Exception:  # a failed step must not kill the server's drift for good
                logger.exception("drift step failed")
