"""PostgreSQL → Debezium → Kafka, on the running Connect, decoded with nothing but the schema registry.

Each test captures a sandbox of its own (schema, publication, slot, connector, topic prefix), built from
connect/onlinedb-postgres.json with only those names changed, and removed afterwards.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from confluent_kafka import Consumer, KafkaException
from confluent_kafka.serialization import MessageField, SerializationContext
from psycopg import sql

from omnistream.connect import deploy
from omnistream.connect.client import ConnectClient
from omnistream.kafka.clients import admin, client_config
from omnistream.kafka.registry import registry_client
from omnistream.settings import Settings
from tests.support.cdc_sandbox import CdcSandbox, cdc_sandbox
from tests.support.decoding import avro_deserializer

pytestmark = pytest.mark.integration

DEADLINE_S = 180.0
# A price no binary float holds exactly, at the full numeric(12, 2) width.
BIG = Decimal("1234567890.12")


@dataclass(frozen=True)
class Change:
    """One record as read from Kafka, key and value decoded."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: dict[str, Any]
    value: dict[str, Any] | None
    magic: int | None


@dataclass(frozen=True)
class Committed:
    """A transaction as the writer saw it: the client clock just before it began and after it committed."""

    began_ms: int
    committed_ms: int


@pytest.fixture
def capture(stack_settings: Settings, unique: str) -> Iterator[CdcSandbox]:
    """A running sandbox connector (applied the way `omnistream connect apply` does)."""
    with cdc_sandbox(stack_settings, unique) as sandbox, ConnectClient(stack_settings.connect.url) as client:
        deploy.apply(client, stack_settings, [sandbox.connector_file()], timeout_s=DEADLINE_S)
        yield sandbox


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def transaction(
    conn: psycopg.Connection, statements: list[tuple[str, tuple[Any, ...]]]
) -> tuple[Any, Committed]:
    """Run statements in one transaction; returns the first statement's row and the commit bounds."""
    began = now_ms()
    first = None
    with conn.transaction():
        for i, (query, params) in enumerate(statements):
            cursor = conn.execute(query.encode(), params)
            if i == 0 and cursor.description is not None:  # a statement with RETURNING
                first = cursor.fetchone()
    return first, Committed(began, now_ms())


def wait_for_topics(settings: Settings, topics: list[str]) -> None:
    """Debezium creates a topic with its first record; subscribe only once they exist."""
    client = admin(settings)
    deadline = time.monotonic() + DEADLINE_S
    while not set(topics) <= set(client.list_topics(timeout=5).topics):
        assert time.monotonic() < deadline, f"topics {topics} never appeared"
        time.sleep(0.2)


def consume(settings: Settings, topics: list[str], expected: int) -> list[Change]:
    """Read ``expected`` records from the start of ``topics``, decoding keys and values via the registry."""
    wait_for_topics(settings, topics)
    registry = registry_client(settings)
    keys, values = avro_deserializer(registry), avro_deserializer(registry)
    consumer = Consumer(
        client_config(
            settings,
            **{
                "group.id": f"test-cdc-{topics[0]}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
            },
        )
    )
    changes: list[Change] = []
    try:
        consumer.subscribe(topics)
        deadline = time.monotonic() + DEADLINE_S
        while len(changes) < expected:
            assert time.monotonic() < deadline, f"only {len(changes)} of {expected} records arrived"
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error():
                raise KafkaException(msg.error())
            topic, partition, offset, raw = msg.topic(), msg.partition(), msg.offset(), msg.value()
            assert topic is not None and partition is not None and offset is not None
            changes.append(
                Change(
                    topic=topic,
                    partition=partition,
                    offset=offset,
                    timestamp_ms=msg.timestamp()[1],
                    key=keys(msg.key(), SerializationContext(topic, MessageField.KEY)),
                    value=values(raw, SerializationContext(topic, MessageField.VALUE)) if raw else None,
                    magic=raw[0] if raw else None,
                )
            )
    finally:
        consumer.close()
    return changes


def by_key(changes: list[Change], topic: str, key: dict[str, Any]) -> list[Change]:
    return sorted((c for c in changes if c.topic == topic and c.key == key), key=lambda c: c.offset)


def ops(changes: list[Change]) -> list[str | None]:
    """The operation of each record; None for a tombstone."""
    return [c.value["__op"] if c.value else None for c in changes]


def test_inserts_updates_deletes_arrive_in_order_per_key(
    stack_settings: Settings, capture: CdcSandbox
) -> None:
    commits: dict[str, Committed] = {}
    with psycopg.connect(stack_settings.postgres.app_dsn()) as conn:
        conn.execute(sql.SQL("set search_path to {}").format(sql.Identifier(capture.schema)))
        conn.commit()
        order = (
            "insert into orders (customer_id, subtotal, tax, total) values (%s, %s, %s, %s) "
            "returning order_id, created_at"
        )
        item = (
            "insert into order_items (order_id, line_number, sku, quantity, unit_price, line_total) "
            "values (%s, %s, %s, %s, %s, %s)"
        )
        kept, commits["kept c"] = transaction(
            conn, [(order, (101, Decimal("19.99"), Decimal("3.80"), Decimal("23.79")))]
        )
        kept_id, created_at = kept
        _, commits["kept items"] = transaction(
            conn,
            [
                (item, (kept_id, 1, "SKU-A", 1, Decimal("9.99"), Decimal("9.99"))),
                (item, (kept_id, 2, "SKU-B", 2, Decimal("5.00"), Decimal("10.00"))),
            ],
        )
        status = "update orders set status = %s, updated_at = now() where order_id = %s returning updated_at"
        (paid_at,), commits["kept paid"] = transaction(conn, [(status, ("paid", kept_id))])
        (shipped_at,), commits["kept shipped"] = transaction(conn, [(status, ("shipped", kept_id))])

        gone, commits["gone c"] = transaction(
            conn,
            [(order, (202, BIG, Decimal("0.01"), BIG + Decimal("0.01")))],
        )
        gone_id = gone[0]
        _, commits["gone items"] = transaction(conn, [(item, (gone_id, 1, "SKU-C", 1, BIG, BIG))])
        _, commits["gone d"] = transaction(conn, [("delete from orders where order_id = %s", (gone_id,))])

    # orders: kept c,u,u; gone c,d,tombstone. order_items: kept c, c; gone c,d (the cascade),tombstone.
    changes = consume(stack_settings, [capture.orders_topic, capture.items_topic], expected=6 + 5)

    assert {c.magic for c in changes if c.value} == {0}  # Confluent wire format

    kept_changes = by_key(changes, capture.orders_topic, {"order_id": kept_id})
    gone_changes = by_key(changes, capture.orders_topic, {"order_id": gone_id})
    assert ops(kept_changes) == ["c", "u", "u"]
    assert ops(gone_changes) == ["c", "d", None]
    for key_changes in (kept_changes, gone_changes):
        assert len({c.partition for c in key_changes}) == 1  # one partition per key: its order holds
        lsns = [c.value["__lsn"] for c in key_changes if c.value]
        assert lsns == sorted(lsns) and len(set(lsns)) == len(lsns)

    first, paid, shipped = (c.value for c in kept_changes)
    assert first is not None and paid is not None and shipped is not None
    assert [first["status"], paid["status"], shipped["status"]] == ["pending", "paid", "shipped"]
    assert (first["subtotal"], first["tax"], first["total"]) == (
        Decimal("19.99"),
        Decimal("3.80"),
        Decimal("23.79"),
    )
    assert first["tax"].as_tuple().exponent == -2  # scale 2 kept, not 3.8
    assert [first["__deleted"], paid["__deleted"]] == ["false", "false"]

    # timestamptz arrives as ISO-8601 text with its zone, the same instant as in the database.
    created = datetime.fromisoformat(first["created_at"])
    assert created.tzinfo is not None and created == created_at
    assert datetime.fromisoformat(paid["updated_at"]) == paid_at
    assert datetime.fromisoformat(shipped["updated_at"]) == shipped_at

    # The commit time lies between the client's clock readings around each transaction.
    for value, label in ((first, "kept c"), (paid, "kept paid"), (shipped, "kept shipped")):
        assert commits[label].began_ms - 1 <= value["__source_ts_ms"] <= commits[label].committed_ms + 1, (
            label
        )

    created_gone, deleted, tombstone = gone_changes
    assert created_gone.value is not None and deleted.value is not None
    assert created_gone.value["total"] == BIG + Decimal("0.01")
    # A delete carries the whole deleted row (REPLICA IDENTITY FULL), flagged, then a tombstone follows.
    assert deleted.value["__deleted"] == "true"
    assert (deleted.value["customer_id"], deleted.value["total"]) == (202, BIG + Decimal("0.01"))
    assert (
        commits["gone d"].began_ms - 1
        <= deleted.value["__source_ts_ms"]
        <= commits["gone d"].committed_ms + 1
    )
    assert tombstone.value is None and tombstone.offset == deleted.offset + 1

    items = defaultdict(list)
    for c in changes:
        if c.topic == capture.items_topic:
            items[(c.key["order_id"], c.key["line_number"])].append(c)
    assert {k: ops(sorted(v, key=lambda c: c.offset)) for k, v in items.items()} == {
        (kept_id, 1): ["c"],
        (kept_id, 2): ["c"],
        (gone_id, 1): ["c", "d", None],
    }
    cascaded = next(c.value for c in items[(gone_id, 1)] if c.value and c.value["__op"] == "d")
    assert (cascaded["unit_price"], cascaded["line_total"], cascaded["sku"]) == (BIG, BIG, "SKU-C")


def test_registered_schemas_are_served_by_id_through_the_compatible_api(
    stack_settings: Settings, capture: CdcSandbox
) -> None:
    with psycopg.connect(stack_settings.postgres.app_dsn()) as conn:
        conn.execute(sql.SQL("set search_path to {}").format(sql.Identifier(capture.schema)))
        conn.execute(b"insert into orders (customer_id, subtotal, tax, total) values (1, 1.00, 0.19, 1.19)")
        conn.commit()
    wait_for_topics(stack_settings, [capture.orders_topic])
    registry = registry_client(stack_settings)
    latest = registry.get_latest_version(f"{capture.orders_topic}-value")
    assert latest.schema_id is not None
    schema_str = registry.get_schema(latest.schema_id).schema_str
    assert schema_str is not None
    fields = {f["name"]: f["type"] for f in json.loads(schema_str)["fields"]}
    assert fields["total"]["logicalType"] == "decimal"
    assert (fields["total"]["precision"], fields["total"]["scale"]) == (12, 2)
    assert fields["created_at"]["connect.name"] == "io.debezium.time.ZonedTimestamp"
    assert {"__op", "__lsn", "__source_ts_ms", "__deleted"} <= set(fields)
    key_schema = registry.get_latest_version(f"{capture.orders_topic}-key").schema
    assert key_schema is not None and "order_id" in (key_schema.schema_str or "")
