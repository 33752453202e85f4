"""Landed data for the dbt tests, made with the simulators' own planners and written in the landing layout.

The landing sink writes ``<topic>/partition=<p>/<topic>+<p>+<start>+<end>.parquet`` with the value's typed
columns and a ``record_metadata`` struct; these files are written with the sink's own Arrow types and file
names, so the warehouse reads exactly what the sink lands. The data is what the real sources would send:

- online orders: ``OrderPlanner``'s operations as Debezium change events (ExtractNewRecordState, fields
  ``__op``/``__lsn``/``__source_ts_ms``/``__deleted``, a tombstone after each delete), with a stretch of
  events delivered twice (at least once);
- in-store orders: ``EmailPlanner``'s well-formed emails as ``StoreOrder`` records, re-sends included
  (malformed emails go to the dead-letter topic, not here);
- master data: two snapshots of the reference data: a few price changes, a deactivation and a tombstone.

Each source returns its ground-truth manifest, built with ``simulators.manifest.Manifest`` as the
simulators build theirs.
"""

from __future__ import annotations

import json
import zlib
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from omnistream import topics
from omnistream.manifest import Manifest, read_totals
from omnistream.sink.arrow import METADATA_COLUMN, arrow_type, metadata_array
from omnistream.sink.layout import LandedFile
from omnistream.warehouse.dbt import DbtRun
from simulators.email_plan import EmailPlanner
from simulators.history import generate_history
from simulators.order_plan import DeleteOrder, NewOrder, OrderPlanner, StatusChange
from simulators.reference import build_reference

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
MONEY = pa.decimal128(12, 2)

# Debezium's flattened change events of shop.orders / order_items (timestamptz: a ZonedTimestamp string).
CDC_META = [
    pa.field("__deleted", pa.string()),
    pa.field("__op", pa.string()),
    pa.field("__lsn", pa.int64()),
    pa.field("__source_ts_ms", pa.int64()),
]
ORDERS_SCHEMA = pa.schema(
    [
        pa.field("order_id", pa.int64()),
        pa.field("customer_id", pa.int64()),
        pa.field("status", pa.string()),
        pa.field("currency", pa.string()),
        pa.field("subtotal", MONEY),
        pa.field("tax", MONEY),
        pa.field("total", MONEY),
        pa.field("created_at", pa.string()),
        pa.field("updated_at", pa.string()),
        *CDC_META,
    ]
)
ORDER_ITEMS_SCHEMA = pa.schema(
    [
        pa.field("order_id", pa.int64()),
        pa.field("line_number", pa.int32()),
        pa.field("sku", pa.string()),
        pa.field("quantity", pa.int32()),
        pa.field("unit_price", MONEY),
        pa.field("line_total", MONEY),
        *CDC_META,
    ]
)


def avsc_schema(name: str) -> pa.Schema:
    """The value columns the landing sink gives records of ``schemas/<name>.avsc``."""
    struct, _ = arrow_type(json.loads((SCHEMAS / f"{name}.avsc").read_text()))
    return pa.schema(list(struct))


@dataclass
class Record:
    """One Kafka record: its value (None for a tombstone), key, partition and create time."""

    value: dict[str, Any] | None
    key: str
    partition: int
    timestamp: datetime


@dataclass
class Topic:
    """The records of one topic in produce order; offsets are assigned per partition when written."""

    name: str
    schema: pa.Schema
    records: list[Record] = field(default_factory=list)

    def write(self, root: Path, rows_per_file: int = 50) -> list[Path]:
        by_partition: dict[int, list[Record]] = defaultdict(list)
        for record in self.records:
            by_partition[record.partition].append(record)
        written = []
        for partition, records in sorted(by_partition.items()):
            for start in range(0, len(records), rows_per_file):
                chunk = records[start : start + rows_per_file]
                landed = LandedFile(self.name, partition, start, start + len(chunk) - 1)
                path = root / landed.path
                path.parent.mkdir(parents=True, exist_ok=True)
                pq.write_table(self._table(partition, start, chunk), path, compression="zstd")
                written.append(path)
        return written

    def _table(self, partition: int, first_offset: int, records: list[Record]) -> pa.Table:
        columns = [
            pa.array([None if r.value is None else r.value[f.name] for r in records], f.type)
            for f in self.schema
        ]
        metadata = metadata_array(
            self.name,
            partition,
            list(range(first_offset, first_offset + len(records))),
            [int(r.timestamp.timestamp() * 1000) for r in records],
            [r.key for r in records],
            [[] for _ in records],
            [1 for _ in records],
        )
        names = [*self.schema.names, METADATA_COLUMN]
        return pa.Table.from_arrays([*columns, metadata], names=names)


def _zoned(ts: datetime) -> str:
    """Debezium's io.debezium.time.ZonedTimestamp text."""
    return ts.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _partition(key: str, partitions: int) -> int:
    return zlib.crc32(key.encode()) % partitions


@dataclass
class OnlineOrders:
    """The CDC topics of one simulated run of the web shop, and what the database holds at its end."""

    orders: Topic
    order_items: Topic
    manifest: Manifest
    final_status: dict[int, str]  # existing orders only
    deleted: set[int]
    status_history: dict[int, list[str]]
    duplicates: int  # change events delivered twice, both topics


def online_orders(
    seed: int,
    count: int,
    start: datetime,
    step: timedelta,
    partitions: int = 3,
    replay: tuple[int, int] = (30, 50),
) -> OnlineOrders:
    """``count`` new orders and their lifecycle as change events; events ``replay[0]:replay[1]`` of each topic
    are delivered a second time after the rest, as Connect does after a crash before committing offsets."""
    orders_topic = Topic(topics.ORDERS, ORDERS_SCHEMA)
    items_topic = Topic(topics.ORDER_ITEMS, ORDER_ITEMS_SCHEMA)
    state: dict[int, dict[str, Any]] = {}
    lines: dict[int, list[dict[str, Any]]] = {}
    id_of_ref: dict[int, int] = {}
    history: dict[int, list[str]] = defaultdict(list)
    lsn = 24_000_000
    now = start

    def emit(topic: Topic, key_field: dict[str, Any], row: dict[str, Any], op: str) -> None:
        nonlocal lsn
        lsn += 8
        value = {**row, "__op": op, "__lsn": lsn, "__source_ts_ms": int(now.timestamp() * 1000)}
        value["__deleted"] = "true" if op == "d" else "false"
        key = json.dumps(key_field, separators=(",", ":"))
        partition = _partition(str(key_field["order_id"]), partitions)
        topic.records.append(Record(value, key, partition, now))
        if op == "d":
            topic.records.append(Record(None, key, partition, now))

    planner = OrderPlanner(seed)
    for batch in planner.operations(count):
        for op in batch:
            now += step
            if isinstance(op, NewOrder):
                order_id = len(id_of_ref) + 1
                id_of_ref[op.ref] = order_id
                row: dict[str, Any] = {
                    "order_id": order_id,
                    "customer_id": op.customer_id,
                    "status": "pending",
                    "currency": op.currency,
                    "subtotal": op.subtotal,
                    "tax": op.tax,
                    "total": op.total,
                    "created_at": _zoned(now),
                    "updated_at": _zoned(now),
                }
                state[order_id] = row
                emit(orders_topic, {"order_id": order_id}, row, "c")
                lines[order_id] = []
                for line in op.lines:
                    item = {
                        "order_id": order_id,
                        "line_number": line.line_number,
                        "sku": line.sku,
                        "quantity": line.quantity,
                        "unit_price": line.unit_price,
                        "line_total": line.line_total,
                    }
                    lines[order_id].append(item)
                    emit(items_topic, {"order_id": order_id, "line_number": line.line_number}, item, "c")
                history[order_id].append("pending")
            elif isinstance(op, StatusChange):
                order_id = id_of_ref[op.ref]
                row = {**state[order_id], "status": op.to_status, "updated_at": _zoned(now)}
                state[order_id] = row
                emit(orders_topic, {"order_id": order_id}, row, "u")
                history[order_id].append(op.to_status)
            elif isinstance(op, DeleteOrder):
                order_id = id_of_ref[op.ref]
                emit(orders_topic, {"order_id": order_id}, state.pop(order_id), "d")
                for item in lines.pop(order_id):  # ON DELETE CASCADE, after the parent row
                    emit(items_topic, {"order_id": order_id, "line_number": item["line_number"]}, item, "d")
                history[order_id].append("deleted")
    duplicates = 0
    for topic in (orders_topic, items_topic):
        again = [r for r in topic.records[replay[0] : replay[1]]]
        topic.records.extend(Record(r.value, r.key, r.partition, now + step) for r in again)
        duplicates += sum(1 for r in again if r.value is not None)

    manifest = Manifest(source="orders", seed=seed)
    for order_id, row in state.items():
        created = datetime.fromisoformat(row["created_at"])
        manifest.add_order("online", None, created.date(), len(lines[order_id]), row["subtotal"], row["tax"])
    deleted = set(id_of_ref.values()) - set(state)
    final = {order_id: row["status"] for order_id, row in state.items()}
    return OnlineOrders(orders_topic, items_topic, manifest, final, deleted, dict(history), duplicates)


@dataclass
class StoreOrders:
    topic: Topic
    manifest: Manifest
    resends: int
    genuine: int


def store_orders(seed: int, count: int, start: datetime, step: timedelta, partitions: int = 2) -> StoreOrders:
    """``count`` confirmation emails as the email producer publishes them: re-sends kept, malformed not."""
    topic = Topic(topics.STORE_ORDERS, avsc_schema("store_order"))
    manifest = Manifest(source="emails", seed=seed)
    purchased: dict[int, datetime] = {}
    resends = genuine = 0
    now = start
    mailbox = "imap://confirmations@127.0.0.1:13143/INBOX"
    for planned in EmailPlanner(seed, count, anomaly_share=0.3).emails():
        now += step
        if planned.malformed:
            continue
        purchase = planned.purchase
        if planned.duplicate_of is None:
            purchased[planned.seq] = now
            genuine += 1
            day = now.astimezone(UTC).date()
            manifest.add_order(
                "in_store", purchase.store.store_id, day, len(purchase.lines), purchase.subtotal, purchase.tax
            )
        else:
            resends += 1
        ordered_at = purchased[planned.seq if planned.duplicate_of is None else planned.duplicate_of]
        value = {
            "order_number": purchase.order_number,
            "store_id": purchase.store.store_id,
            "store_name": purchase.store.name,
            "ordered_at": ordered_at,
            "ordered_at_local": ordered_at.astimezone(ZoneInfo(purchase.store.timezone)).isoformat(),
            "customer_id": purchase.customer_id,
            "payment_method": purchase.payment_method,
            "cashier": purchase.cashier,
            "lines": [
                {
                    "line_number": line.line_number,
                    "sku": line.sku,
                    "name": line.name,
                    "quantity": line.quantity,
                    "unit_price": line.unit_price,
                    "line_total": line.line_total,
                }
                for line in purchase.lines
            ],
            "subtotal": purchase.subtotal,
            "tax_rate": purchase.store.tax_rate,
            "tax": purchase.tax,
            "total": purchase.total,
            "currency": "EUR",
            "message_id": f"<{seed}-{planned.seq}@stores.omnistream.local>",
            "mailbox": mailbox,
            "uidvalidity": 1,
            "imap_uid": planned.seq + 1,
            "received_at": now,
        }
        key = purchase.order_number
        topic.records.append(Record(value, key, _partition(key, partitions), now))
    return StoreOrders(topic, manifest, resends, genuine)


@dataclass
class MasterData:
    customers: Topic
    products: Topic
    stores: Topic
    repriced: list[str]
    deleted_customer: int
    deactivated_customer: int


def master_data(seed: int, first: datetime, second: datetime) -> MasterData:
    """Two snapshots: everything at ``first``; at ``second`` three price changes, a deactivation, a delete."""
    ref = build_reference(seed)
    customers = Topic(topics.CUSTOMERS, avsc_schema("customer"))
    products = Topic(topics.PRODUCTS, avsc_schema("product"))
    stores = Topic(topics.STORES, avsc_schema("store"))

    def snap(at: datetime) -> dict[str, Any]:
        return {"snapshot_id": f"snap-{at:%Y%m%d%H%M%S}", "snapshot_at": at}

    for c in ref.customers:
        value = {
            "customer_id": c.customer_id,
            "first_name": c.first_name,
            "last_name": c.last_name,
            "email": c.email,
            "street": c.street,
            "city": c.city,
            "postcode": c.postcode,
            "country": c.country,
            "active": True,
            "created_at": c.created_at,
            "updated_at": c.created_at,
            **snap(first),
        }
        customers.records.append(Record(value, str(c.customer_id), 0, first))
    for p in ref.products:
        value = {
            "sku": p.sku,
            "name": p.name,
            "category": p.category,
            "unit_price": p.unit_price,
            "active": True,
            "created_at": p.created_at,
            "updated_at": p.created_at,
            **snap(first),
        }
        products.records.append(Record(value, p.sku, 0, first))
    for s in ref.stores:
        value = {
            "store_id": s.store_id,
            "name": s.name,
            "city": s.city,
            "country": s.country,
            "locale": s.locale,
            "timezone": s.timezone,
            "tax_rate": s.tax_rate,
            "opened_at": s.opened_at,
            "active": True,
            "updated_at": s.opened_at,
            **snap(first),
        }
        stores.records.append(Record(value, s.store_id, 0, first))

    repriced = [p.sku for p in ref.products[:3]]
    for record in products.records[:3]:
        assert record.value is not None
        value = {
            **record.value,
            "unit_price": record.value["unit_price"] + Decimal("1.00"),
            "updated_at": second,
        }
        products.records.append(Record({**value, **snap(second)}, record.key, 0, second))
    deactivated = ref.customers[1].customer_id
    first_record = customers.records[1].value
    assert first_record is not None
    customers.records.append(
        Record(
            {**first_record, "active": False, "updated_at": second, **snap(second)},
            str(deactivated),
            0,
            second,
        )
    )
    deleted = ref.customers[2].customer_id
    customers.records.append(Record(None, str(deleted), 0, second))
    return MasterData(customers, products, stores, repriced, deleted, deactivated)


def merged_totals(
    manifests: Iterable[Manifest],
) -> dict[tuple[str, str | None, date], tuple[int, int, Decimal, Decimal]]:
    """(channel, store, day) → (orders, lines, net, tax) summed over manifests."""
    out: dict[tuple[str, str | None, date], tuple[int, int, Decimal, Decimal]] = {}
    for manifest in manifests:
        for key, t in manifest.totals.items():
            if not t.orders:
                continue
            o, n, net, tax = out.get(key, (0, 0, Decimal("0.00"), Decimal("0.00")))
            out[key] = (o + t.orders, n + t.lines, net + t.net, tax + t.tax)
    return out


# --- the Snowflake Kafka connector's layout ------------------------------------------------------------


def _snowflake_type(typ: pa.DataType) -> str:
    if pa.types.is_decimal(typ):
        return f"number({typ.precision}, {typ.scale})"
    if pa.types.is_int64(typ):
        return "bigint"
    if pa.types.is_integer(typ):
        return "integer"
    if pa.types.is_boolean(typ):
        return "boolean"
    if pa.types.is_timestamp(typ):
        return "timestamp_tz"
    if pa.types.is_string(typ):
        return "varchar"
    if pa.types.is_list(typ):
        return "array"
    return "variant"


def _json_value(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, list):
        return [_json_value(v) for v in value]
    if isinstance(value, dict):
        return {k: _json_value(v) for k, v in value.items()}
    return value


def load_snowflake_table(cursor: Any, schema: str, table: str, topic: Topic, chunk: int = 200) -> int:
    """Create and fill ``schema.table`` as the Snowflake connector does with schematization: RECORD_METADATA
    (a variant: offset, partition, topic, key, CreateTime in epoch ms, schema_id) and one column per field."""
    columns = [(f.name, _snowflake_type(f.type)) for f in topic.schema]
    ddl = ", ".join(f'"{name.upper()}" {typ}' for name, typ in [("record_metadata", "variant"), *columns])
    cursor.execute(f"create or replace table {schema}.{table} ({ddl})")
    offsets: dict[int, int] = defaultdict(int)
    rows = []
    for record in topic.records:
        offset = offsets[record.partition]
        offsets[record.partition] += 1
        metadata = {
            "offset": offset,
            "partition": record.partition,
            "topic": topic.name,
            "key": record.key,
            "CreateTime": int(record.timestamp.timestamp() * 1000),
            "schema_id": 1,
        }
        values: list[Any] = [json.dumps(metadata)]
        for name, typ in columns:
            value = None if record.value is None else record.value[name]
            if typ in ("array", "variant") and value is not None:
                value = json.dumps(_json_value(value))
            elif isinstance(value, datetime):
                value = value.isoformat()
            elif isinstance(value, Decimal):
                value = str(value)
            values.append(value)
        rows.append(values)
    names = ", ".join(f'"{name.upper()}"' for name in ["record_metadata", *[n for n, _ in columns]])
    select = ", ".join(
        f"parse_json(column{i + 1})" if typ in ("array", "variant") else f"cast(column{i + 1} as {typ})"
        for i, (_, typ) in enumerate([("record_metadata", "variant"), *columns])
    )
    placeholders = "(" + ", ".join(["%s"] * (len(columns) + 1)) + ")"
    for start in range(0, len(rows), chunk):
        batch = rows[start : start + chunk]
        values_sql = ", ".join([placeholders] * len(batch))
        cursor.execute(
            f"insert into {schema}.{table} ({names}) select {select} from values {values_sql}",
            [v for row in batch for v in row],
        )
    return len(rows)


# --- a whole set of sources, and the warehouse built from them ---------------------------------------------

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
