"""Landed data for the dbt tests, made by the pipeline's own code from the simulators' plans.

Every record goes the way the real one does, short of the servers: it is serialized to the Confluent wire
format by confluent-kafka's ``AvroSerializer`` (against an in-memory registry), then landed by the sink's own
``build_batch`` (its Arrow types and ``record_metadata``) and ``LocalStore.commit`` (its file names and
atomic writes) under ``<root>/landing``. So the warehouse reads exactly what the sink lands:

- online orders: ``OrderPlanner``'s operations as the rows ``simulators.shop_db`` writes, turned into
  Debezium change events (ExtractNewRecordState with ``__op``/``__lsn``/``__source_ts_ms``/``__deleted``,
  a tombstone after each delete; value and key schemas in ``debezium/``, since Debezium, not Python, makes
  them), with a stretch of events delivered twice (at least once);
- in-store orders: ``EmailPlanner``'s emails rendered by ``simulators.emails.build_message``, parsed by the
  email producer's ``parse_email`` into ``StoreOrder`` records and serialized by its ``EmailSerde``
  (re-sends kept; the emails the parser refuses go to the dead-letter topic, not here);
- master data: two snapshots of ``simulators.masterdata``'s reference tables as the API serves them
  (``public_view``), converted by the producer's ``RecordConverter``: everything first, then three price
  changes, a deactivation and a tombstone (the producer publishes only what changed).

The ground truth is the simulators' own: ``OrdersRun`` and ``EmailsRun`` fold in the journal records of
what was written or sent, as the simulators do, and give their manifests.
"""

from __future__ import annotations

import json
import zlib
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import duckdb
import pyarrow as pa
from confluent_kafka import TIMESTAMP_CREATE_TIME, Message
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from omnistream import topics
from omnistream.kafka.registry import registry_client
from omnistream.kafka.serde import SCHEMAS_DIR, SchemaCache, json_default, load_schema, schema_id_of, to_json
from omnistream.manifest import Manifest
from omnistream.reconcile import MANIFEST_NAME, expected_totals, source_truth
from omnistream.settings import get_settings
from omnistream.sink.batch import build_batch
from omnistream.sink.landing_schemas import LandingSchemas
from omnistream.sink.layout import LandedFile
from omnistream.sink.store import LocalStore
from omnistream.warehouse.dbt import DbtRun
from producers.emails.model import Provenance
from producers.emails.parser import ParseError, parse_email
from producers.emails.serde import EmailSerde
from producers.masterdata.entities import ENTITY_SPECS
from producers.masterdata.producer import new_snapshot_id
from producers.masterdata.records import RecordConverter
from simulators.email_plan import EmailPlanner
from simulators.email_sender import EmailsConfig, EmailsRun
from simulators.emails import build_message
from simulators.history import generate_history
from simulators.masterdata import ENTITIES, public_view, reference_tables
from simulators.order_plan import DeleteOrder, NewOrder, OrderPlanner, StatusChange
from simulators.orders import OrdersConfig, OrdersRun, create_record, delete_record, status_record
from simulators.reference import build_reference

SCHEMAS = SCHEMAS_DIR  # the producers' value schemas (schemas/*.avsc)
DEBEZIUM_SCHEMAS = Path(__file__).resolve().parents[1] / "dbt" / "debezium"
MAILBOX = "imap://confirmations@127.0.0.1:13143/INBOX"
RECIPIENT = "confirmations@omnistream.local"
MAIL_DOMAIN = "stores.omnistream.local"
UIDVALIDITY = 1


def fixture_registry() -> SchemaRegistryClient:
    """The local stack's schema registry, shared by the serializers and the sink's decoder."""
    return registry_client(get_settings())


def fixture_subject(ctx: SerializationContext, record_name: str | None) -> str:
    # Subjects of their own: the fixtures' Debezium schemas must not become versions of the subjects the
    # stack's real connector registers under the same topic names.
    return f"dbt-fixtures.{ctx.topic}-{ctx.field}"


def avro_serializer(registry: SchemaRegistryClient, schema_text: str) -> AvroSerializer:
    conf = {"auto.register.schemas": True, "subject.name.strategy": fixture_subject}
    return AvroSerializer(registry, schema_text, conf=conf)


def debezium_schema(name: str) -> str:
    return (DEBEZIUM_SCHEMAS / f"{name}.avsc").read_text()


@dataclass
class Record:
    """One Kafka record: its value (None for a tombstone), key, partition and create time.

    ``value`` and ``key`` are as given to the serializer; ``key`` is a string (the producers' UTF-8 keys)
    or, for Debezium's Avro keys, a dict.
    """

    value: dict[str, Any] | None
    key: str | dict[str, Any]
    partition: int
    timestamp: datetime
    serialized: bytes | None = None  # the value's wire format, when the producer's own serde made it

    @property
    def key_text(self) -> str:
        """The key as the sink (and the Snowflake connector) writes it into the record metadata."""
        return self.key if isinstance(self.key, str) else to_json(self.key)


@dataclass
class Topic:
    """The records of one topic in produce order; offsets are assigned per partition when landed."""

    name: str
    registry: SchemaRegistryClient
    value_schema: str  # Avro schema text
    key_schema: str | None = None  # Avro keys (Debezium); None: UTF-8 string keys
    records: list[Record] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._value_serializer = avro_serializer(self.registry, self.value_schema)
        self._key_serializer = (
            None if self.key_schema is None else avro_serializer(self.registry, self.key_schema)
        )

    def serialized_value(self, record: Record) -> bytes | None:
        if record.value is None:
            return None
        if record.serialized is not None:
            return record.serialized
        serialized = self._value_serializer(record.value, SerializationContext(self.name, MessageField.VALUE))
        assert serialized is not None  # a value that is not None serializes to bytes
        return serialized

    def serialized_key(self, record: Record) -> bytes:
        if self._key_serializer is None:
            assert isinstance(record.key, str)
            return record.key.encode()
        serialized = self._key_serializer(record.key, SerializationContext(self.name, MessageField.KEY))
        assert serialized is not None
        return serialized

    def message(self, record: Record, offset: int) -> Message:
        """The record as the sink's consumer receives it."""
        return Message(
            topic=self.name,
            partition=record.partition,
            offset=offset,
            key=self.serialized_key(record),
            value=self.serialized_value(record),
            timestamp=(TIMESTAMP_CREATE_TIME, int(record.timestamp.timestamp() * 1000)),
            headers=[],
        )

    def write(self, root: Path, rows_per_file: int = 50) -> list[LandedFile]:
        """Land the records under ``root`` as the sink does, ``rows_per_file`` offsets per file."""
        by_partition: dict[int, list[Record]] = defaultdict(list)
        for record in self.records:
            by_partition[record.partition].append(record)
        store = LocalStore(root)
        schemas = LandingSchemas(SchemaCache(self.registry))
        landed = []
        for partition, records in sorted(by_partition.items()):
            for start in range(0, len(records), rows_per_file):
                chunk = records[start : start + rows_per_file]
                msgs = [self.message(r, start + i) for i, r in enumerate(chunk)]
                batch = build_batch(self.name, partition, msgs, schemas)
                assert not batch.rejected, batch.rejected
                file = LandedFile(self.name, partition, start, start + len(chunk) - 1)
                store.commit(file, batch.table)
                landed.append(file)
        return landed

    @property
    def columns(self) -> pa.Schema:
        """The value columns the sink lands (and the Snowflake connector's schematized columns)."""
        value = next(v for v in map(self.serialized_value, self.records) if v is not None)
        return LandingSchemas(SchemaCache(self.registry)).of(value).arrow_schema


def kafka_partition(key: str, partitions: int) -> int:
    """librdkafka's default (consistent) partitioner for a keyed record: CRC32 of the key."""
    return zlib.crc32(key.encode()) % partitions


# --- online orders: Debezium's change events ------------------------------------------------------------


def zoned_timestamp(ts: datetime) -> str:
    """Debezium's io.debezium.time.ZonedTimestamp text."""
    return ts.astimezone(UTC).isoformat().replace("+00:00", "Z")


@dataclass
class OnlineOrders:
    """The CDC topics of one simulated run of the web shop, and what the database holds at its end."""

    orders: Topic
    order_items: Topic
    manifest: Manifest
    final_status: dict[int, str]  # existing orders only
    deleted: set[int]
    duplicates: int  # change events delivered twice, both topics


def online_orders(
    seed: int,
    count: int,
    start: datetime,
    step: timedelta,
    partitions: int = 3,
    replay: tuple[int, int] = (30, 50),
    *,
    registry: SchemaRegistryClient | None = None,
) -> OnlineOrders:
    """``count`` new orders and their lifecycle as change events; events ``replay[0]:replay[1]`` of each topic
    are delivered a second time after the rest, as Connect does after a crash before committing offsets."""
    registry = registry or fixture_registry()
    orders_topic = Topic(
        topics.ORDERS,
        registry,
        debezium_schema(f"{topics.ORDERS}-value"),
        debezium_schema(f"{topics.ORDERS}-key"),
    )
    items_topic = Topic(
        topics.ORDER_ITEMS,
        registry,
        debezium_schema(f"{topics.ORDER_ITEMS}-value"),
        debezium_schema(f"{topics.ORDER_ITEMS}-key"),
    )
    run = OrdersRun(OrdersConfig(seed=seed, count=count))
    rows: dict[int, dict[str, Any]] = {}  # what shop.orders holds, by order_id
    lines: dict[int, list[dict[str, Any]]] = {}  # what shop.order_items holds
    lsn = 24_000_000
    now = start

    def emit(topic: Topic, key: dict[str, Any], row: dict[str, Any], op: str) -> None:
        nonlocal lsn
        lsn += 8
        value = {**row, "__op": op, "__lsn": lsn, "__source_ts_ms": int(now.timestamp() * 1000)}
        value["__deleted"] = "true" if op == "d" else "false"
        partition = kafka_partition(str(key["order_id"]), partitions)
        topic.records.append(Record(value, key, partition, now))
        if op == "d":
            topic.records.append(Record(None, key, partition, now))

    for batch in OrderPlanner(seed).operations(count):
        for op in batch:
            now += step
            if isinstance(op, NewOrder):
                order_id = len(run.orders) + 1  # the identity column's next value
                record = create_record(op, order_id, now)
                # The columns simulators.shop_db's INSERT_ORDER writes, and their defaults.
                rows[order_id] = {
                    "order_id": order_id,
                    "customer_id": op.customer_id,
                    "status": "pending",
                    "currency": op.currency,
                    "subtotal": op.subtotal,
                    "tax": op.tax,
                    "total": op.total,
                    "created_at": zoned_timestamp(now),
                    "updated_at": zoned_timestamp(now),
                }
                emit(orders_topic, {"order_id": order_id}, rows[order_id], "c")
                lines[order_id] = [
                    {
                        "order_id": order_id,
                        "line_number": line.line_number,
                        "sku": line.sku,
                        "quantity": line.quantity,
                        "unit_price": line.unit_price,
                        "line_total": line.line_total,
                    }
                    for line in op.lines
                ]
                for item in lines[order_id]:
                    emit(items_topic, {"order_id": order_id, "line_number": item["line_number"]}, item, "c")
            elif isinstance(op, StatusChange):
                order_id = run.orders[op.ref].order_id
                record = status_record(op, order_id, now)
                rows[order_id] = {
                    **rows[order_id],
                    "status": op.to_status,
                    "updated_at": zoned_timestamp(now),
                }
                emit(orders_topic, {"order_id": order_id}, rows[order_id], "u")
            elif isinstance(op, DeleteOrder):
                order = run.orders[op.ref]
                record = delete_record(op, order, now)
                emit(orders_topic, {"order_id": order.order_id}, rows.pop(order.order_id), "d")
                for item in lines.pop(order.order_id):  # ON DELETE CASCADE, after the parent row
                    key = {"order_id": order.order_id, "line_number": item["line_number"]}
                    emit(items_topic, key, item, "d")
            run.add(record)
    duplicates = 0
    for topic in (orders_topic, items_topic):
        again = topic.records[replay[0] : replay[1]]
        topic.records.extend(Record(r.value, r.key, r.partition, now + step) for r in again)
        duplicates += sum(1 for r in again if r.value is not None)

    existing = [r for r in run.orders.values() if not r.deleted]
    return OnlineOrders(
        orders_topic,
        items_topic,
        run.manifest(),
        {r.order_id: r.status for r in existing},
        {r.order_id for r in run.orders.values() if r.deleted},
        duplicates,
    )


# --- in-store orders: confirmation emails through the email producer's parser ---------------------------


@dataclass
class StoreOrders:
    topic: Topic
    manifest: Manifest
    resends: int
    genuine: int


def store_orders(
    seed: int,
    count: int,
    start: datetime,
    step: timedelta,
    partitions: int = 2,
    *,
    registry: SchemaRegistryClient | None = None,
) -> StoreOrders:
    """``count`` confirmation emails as the email producer publishes them: re-sends kept, refused ones not."""
    registry = registry or fixture_registry()
    serde = EmailSerde.registered(
        registry, topics.STORE_ORDERS, topics.dlq(topics.STORE_ORDERS), topics.EMAIL_CHECKPOINTS
    )
    topic = Topic(topics.STORE_ORDERS, registry, load_schema("store_order"))
    config = EmailsConfig(seed=seed, count=count, anomaly_share=0.3)
    sent = EmailsRun(config, RECIPIENT)
    originals: dict[int, tuple[datetime, str]] = {}  # seq -> purchase time, Message-ID
    now = start
    for planned in EmailPlanner(seed, count, anomaly_share=config.anomaly_share).emails():
        now += step
        message_id = f"<{seed}-{planned.seq}@{MAIL_DOMAIN}>"
        # As simulators.email_sender.send_emails does: the till's local time to the second; a re-send
        # repeats its original's purchase time.
        sent_at = now.astimezone(ZoneInfo(planned.purchase.store.timezone)).replace(microsecond=0)
        original_id = None
        if planned.duplicate_of is not None:
            purchased_at, original_id = originals[planned.duplicate_of]
        else:
            purchased_at = sent_at
        if planned.genuine:
            originals[planned.seq] = (purchased_at, message_id)
        raw = build_message(planned, purchased_at, sent_at, RECIPIENT, MAIL_DOMAIN, message_id).as_bytes()
        sent.record(planned, message_id, purchased_at, original_id)
        try:
            order = parse_email(raw, Provenance(MAILBOX, UIDVALIDITY, planned.seq + 1, now))
        except ParseError:
            continue  # a dead letter, not a landed order
        partition = kafka_partition(order.order_number, partitions)
        topic.records.append(Record(order.to_avro(), order.order_number, partition, now, serde.order(order)))
    return StoreOrders(topic, sent.manifest, len(sent.anomalies["duplicate"]), sent.orders)


# --- master data: two snapshots through the producer's record converter ----------------------------------


@dataclass
class MasterData:
    customers: Topic
    products: Topic
    stores: Topic
    repriced: list[str]
    deleted_customer: int
    deactivated_customer: int


def master_data(
    seed: int, first: datetime, second: datetime, *, registry: SchemaRegistryClient | None = None
) -> MasterData:
    """Two snapshots: everything at ``first``; at ``second`` three price changes, a deactivation, a delete."""
    registry = registry or fixture_registry()
    tables = reference_tables(build_reference(seed))
    specs = {name: ENTITY_SPECS[name] for name in ("customers", "products", "stores")}
    converters = {
        name: RecordConverter(load_schema(spec.schema), spec.key_field) for name, spec in specs.items()
    }
    entity_topics = {
        name: Topic(spec.topic, registry, load_schema(spec.schema)) for name, spec in specs.items()
    }

    def publish(name: str, records: list[dict[str, Any]], at: datetime) -> None:
        """What the producer publishes for records the API serves in the snapshot taken at ``at``."""
        snapshot_id = new_snapshot_id(at)
        for record in records:
            item = public_view(ENTITIES[name], record)
            key = converters[name].key(item)
            assert key is not None
            value = converters[name].convert(item, snapshot_id, at)
            entity_topics[name].records.append(Record(value, key, 0, at))

    for name, rows in tables.items():
        publish(name, [rows[key] for key in sorted(rows)], first)

    products = [tables["products"][sku] for sku in sorted(tables["products"])[:3]]
    repriced = [
        {**p, "unit_price": p["unit_price"] + Decimal("1.00"), "updated_at": second} for p in products
    ]
    publish("products", repriced, second)
    customer_ids = sorted(tables["customers"])
    deactivated, deleted = int(customer_ids[1]), int(customer_ids[2])
    publish(
        "customers", [{**tables["customers"][deactivated], "active": False, "updated_at": second}], second
    )
    # The API no longer serves the deleted customer: the snapshot ends with its tombstone.
    entity_topics["customers"].records.append(Record(None, str(deleted), 0, second))
    return MasterData(
        entity_topics["customers"],
        entity_topics["products"],
        entity_topics["stores"],
        [p["sku"] for p in products],
        deleted,
        deactivated,
    )


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


def load_snowflake_table(cursor: Any, schema: str, table: str, topic: Topic, chunk: int = 200) -> int:
    """Create and fill ``schema.table`` as the Snowflake connector does with schematization: RECORD_METADATA
    (a variant: offset, partition, topic, key, CreateTime in epoch ms, schema_id) and one column per field."""
    columns = [(f.name, _snowflake_type(f.type)) for f in topic.columns]
    ddl = ", ".join(f'"{name.upper()}" {typ}' for name, typ in [("record_metadata", "variant"), *columns])
    cursor.execute(f"create or replace table {schema}.{table} ({ddl})")
    offsets: dict[int, int] = defaultdict(int)
    rows = []
    for record in topic.records:
        offset = offsets[record.partition]
        offsets[record.partition] += 1
        serialized = topic.serialized_value(record)
        metadata = {
            "offset": offset,
            "partition": record.partition,
            "topic": topic.name,
            "key": record.key_text,
            "CreateTime": int(record.timestamp.timestamp() * 1000),
            "schema_id": None if serialized is None else schema_id_of(serialized),
        }
        values: list[Any] = [to_json(metadata)]
        for name, typ in columns:
            value = None if record.value is None else record.value[name]
            if typ in ("array", "variant") and value is not None:
                value = to_json(value)
            elif value is not None and not isinstance(value, bool | int | str):
                value = json_default(value)  # Decimal, datetime: exact text the cast reads back
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
    """Landed topics under ``root/landing``, history under ``root/history_out``; the merged ground truth.

    The truth is put together as ``omnistream reconcile`` does it: each source's manifest in its out dir,
    read back by ``omnistream.reconcile``.
    """
    registry = fixture_registry()
    online = online_orders(SEED, count=60, start=LIVE_START, step=timedelta(minutes=7), registry=registry)
    stores = store_orders(SEED, count=80, start=LIVE_START, step=timedelta(minutes=5), registry=registry)
    first, second = LIVE_START - timedelta(days=1), LIVE_START + timedelta(hours=2)
    masterdata = master_data(SEED, first, second, registry=registry)
    landed = (online.orders, online.order_items, stores.topic)
    for topic in (*landed, masterdata.customers, masterdata.products, masterdata.stores):
        topic.write(root / "landing")
    history_out = root / "history_out"
    generate_history(history_out, seed=SEED, rows=3_000, end=HISTORY_END)
    outs = [history_out]
    for name, manifest in (("orders", online.manifest), ("emails", stores.manifest)):
        out = root / "simulators" / name
        manifest.write(out / MANIFEST_NAME)
        outs.append(out)
    truth = expected_totals(source_truth(out) for out in outs)
    expected = {key: (t.orders, t.lines, t.net, t.tax) for key, t in truth.items()}
    return online, stores, masterdata, expected
