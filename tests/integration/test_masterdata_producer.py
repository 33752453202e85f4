"""The master-data producer against real servers: the API simulator over HTTP, Kafka and the registry.

Each test serves the simulator's Flask app in-process (werkzeug, a free loopback port, its own copy of the
reference data), publishes to topics of its own, and reads them back with a generic AvroDeserializer that
knows nothing but the registry. Drift and faults are switched through the app's state between pages.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext
from flask import Flask
from werkzeug.serving import BaseWSGIServer, make_server

from omnistream.kafka import admin, client_config, registry_client
from omnistream.settings import Settings
from omnistream.topics import dlq
from producers.masterdata.client import ApiAuthError, ApiClient, ApiUnavailable, RetryPolicy
from producers.masterdata.entities import ENTITY_SPECS, EntitySpec, topic_names
from producers.masterdata.producer import EntityReport, MasterDataProducer, SnapshotOptions, SnapshotReport
from simulators.api import FaultConfig, FaultInjector, api_state, create_app, stop_app
from simulators.masterdata import (
    ENTITIES,
    PRODUCTS,
    DriftConfig,
    MasterData,
    read_table,
    write_reference,
    write_table,
)

pytestmark = pytest.mark.integration

SEED = 42
TOKEN = "masterdata-test-token"
ALL = list(ENTITY_SPECS.values())
CUSTOMERS = [ENTITY_SPECS["customers"]]
QUICK = RetryPolicy(max_attempts=6, initial_s=0.01, max_backoff_s=0.05, timeout_s=10)
DRIFT = DriftConfig(seed=SEED, moves=5, price_changes=4, new_products=2, deactivations=3, deletions=3)
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Served:
    app: Flask
    server: BaseWSGIServer
    thread: threading.Thread

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}"

    @property
    def port(self) -> int:
        return self.server.server_port

    @property
    def store(self) -> MasterData:
        return api_state(self.app).store

    def set_faults(self, faults: FaultConfig | None) -> None:
        api_state(self.app).faults = FaultInjector(faults) if faults is not None else None

    def stop(self) -> None:
        """Stop serving and close the listening socket: new connections are refused."""
        if self.thread.is_alive():
            self.server.shutdown()
            self.thread.join()
            self.server.server_close()


@contextmanager
def serving(data_dir: Path, faults: FaultConfig | None = None) -> Iterator[Served]:
    """The simulator over real HTTP on a free loopback port, for the duration of the block."""
    app = create_app(data_dir, TOKEN, faults=faults)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    served = Served(app, server, thread)
    try:
        yield served
    finally:
        served.stop()
        stop_app(app)


@pytest.fixture(scope="module")
def reference_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("masterdata-reference")
    write_reference(path, SEED)
    return path


@pytest.fixture
def data_dir(reference_dir: Path, tmp_path: Path) -> Path:
    target = tmp_path / "masterdata"
    shutil.copytree(reference_dir, target)
    return target


@pytest.fixture
def api(data_dir: Path) -> Iterator[Served]:
    with serving(data_dir) as served:
        yield served


@pytest.fixture
def prefix(stack_settings: Settings, unique: str) -> Iterator[str]:
    """This test's topic prefix; its topics are deleted afterwards."""
    name = f"test.{unique}."
    yield name
    client = admin(stack_settings)
    mine = [t for t in client.list_topics(timeout=30).topics if t.startswith(name)]
    if mine:
        for future in client.delete_topics(mine, operation_timeout=30).values():
            future.result(timeout=60)


def snapshot(
    settings: Settings,
    url: str,
    prefix: str,
    specs: list[EntitySpec] = ALL,
    token: str = TOKEN,
    retry: RetryPolicy = QUICK,
    on_progress: Callable[[EntityReport], None] | None = None,
    **options: Any,
) -> SnapshotReport:
    """One snapshot by a producer of its own, as one run of the command would take it."""
    opts = SnapshotOptions(page_size=options.pop("page_size", 250), topics=topic_names(prefix), **options)
    with ApiClient(url, token, retry) as client, MasterDataProducer(settings, client, opts) as producer:
        return producer.snapshot(specs, on_progress=on_progress)


def read_topic(settings: Settings, topic: str) -> list[tuple[str, dict[str, Any] | None]]:
    """Every (key, value) in ``topic`` up to its current end, decoded with the registry's schemas only."""
    deserializer = AvroDeserializer(registry_client(settings))
    ctx = SerializationContext(topic, MessageField.VALUE)
    consumer = Consumer(client_config(settings, **{"group.id": f"reader-{topic}", "enable.auto.commit": False}))
    records: list[tuple[str, dict[str, Any] | None]] = []
    try:
        partitions = consumer.list_topics(topic, timeout=30).topics[topic].partitions
        ends = {}
        for p in partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)
            if high > low:
                ends[p] = high
        consumer.assign([TopicPartition(topic, p, 0) for p in ends])
        deadline = time.monotonic() + 60
        while ends and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error():
                raise KafkaException(msg.error())
            raw = msg.value()
            value = deserializer(raw, ctx) if raw is not None else None
            records.append((msg.key().decode(), value))
            if msg.offset() >= ends[msg.partition()] - 1:
                del ends[msg.partition()]
        assert not ends, f"{topic} not read to its end"
    finally:
        consumer.close()
    return records


def latest(records: list[tuple[str, dict[str, Any] | None]]) -> dict[str, dict[str, Any] | None]:
    """The compacted view: the last value per key (None for a tombstone)."""
    return dict(records)


def live_in_api(store: MasterData, entity: str) -> dict[str, dict[str, Any]]:
    """What the API serves now, by key, with typed values (deleted flag left out)."""
    columns = [name for name, _ in ENTITIES[entity].public_columns]
    key = ENTITIES[entity].key
    return {
        str(r[key]): {c: r[c] for c in columns} for r in store.records(entity) if not r["deleted"]
    }


def entity_fields(value: dict[str, Any] | None) -> dict[str, Any] | None:
    if value is None:
        return None
    return {k: v for k, v in value.items() if k not in ("snapshot_id", "snapshot_at")}


def assert_topic_mirrors_api(settings: Settings, prefix: str, store: MasterData, entity: str) -> None:
    """Live keys in the topic are exactly the API's entities, with equal values (decimals exactly)."""
    view = latest(read_topic(settings, topic_names(prefix)[entity]))
    live = {k: entity_fields(v) for k, v in view.items() if v is not None}
    assert live == live_in_api(store, entity)


# --- a complete snapshot ------------------------------------------------------------------------------


def test_a_snapshot_publishes_every_entity_keyed_by_id_with_exact_values(
    stack_settings: Settings, api: Served, prefix: str
) -> None:
    report = snapshot(stack_settings, api.url, prefix)

    assert report.complete
    assert [(e.entity, e.fetched, e.published, e.tombstones) for e in report.entities] == [
        ("customers", 3000, 3000, 0),
        ("products", 400, 400, 0),
        ("stores", 12, 12, 0),
    ]
    for entity in ENTITY_SPECS:
        records = read_topic(stack_settings, topic_names(prefix)[entity])
        assert len(records) == len(live_in_api(api.store, entity))
        for key, value in records:
            assert value is not None
            assert value["snapshot_id"] == report.snapshot_id
            assert value["snapshot_at"] == report.snapshot_at
            assert key == str(value[ENTITY_SPECS[entity].key_field])
        assert_topic_mirrors_api(stack_settings, prefix, api.store, entity)
    products = latest(read_topic(stack_settings, topic_names(prefix)["products"]))
    stores = latest(read_topic(stack_settings, topic_names(prefix)["stores"]))
    assert products["SKU-00001"]["unit_price"] == Decimal("27.17")  # type: ignore[index]
    assert str(products["SKU-00001"]["unit_price"]) == "27.17"  # type: ignore[index]
    assert stores["S001"]["tax_rate"] == Decimal("0.19")  # type: ignore[index]
    assert sum(v["unit_price"] for v in products.values() if v) == sum(  # the money, to the cent
        r["unit_price"] for r in api.store.records("products")
    )


def test_a_rerun_without_changes_publishes_nothing_and_no_tombstones(
    stack_settings: Settings, api: Served, prefix: str
) -> None:
    first = snapshot(stack_settings, api.url, prefix)
    before = {e: read_topic(stack_settings, topic_names(prefix)[e]) for e in ENTITY_SPECS}

    again = snapshot(stack_settings, api.url, prefix)
    republished = snapshot(stack_settings, api.url, prefix, specs=CUSTOMERS, republish=True)

    assert again.complete and again.snapshot_id != first.snapshot_id
    assert [(e.published, e.unchanged, e.tombstones) for e in again.entities] == [
        (0, 3000, 0),
        (0, 400, 0),
        (0, 12, 0),
    ]
    for entity in ("products", "stores"):
        assert read_topic(stack_settings, topic_names(prefix)[entity]) == before[entity]
    # Republished: the same key -> the same values; only the snapshot fields are new.
    customers = read_topic(stack_settings, topic_names(prefix)["customers"])
    assert republished.entities[0].published == 3000
    assert len(customers) == 6000
    old, new = latest(before["customers"]), latest(customers)
    assert {k: entity_fields(v) for k, v in new.items()} == {k: entity_fields(v) for k, v in old.items()}
    assert {v["snapshot_id"] for v in new.values() if v} == {republished.snapshot_id}


# --- deletions and drift ------------------------------------------------------------------------------


def test_a_deleted_customer_is_tombstoned_on_the_next_snapshot(
    stack_settings: Settings, api: Served, prefix: str
) -> None:
    snapshot(stack_settings, api.url, prefix)
    drift = api.store.drift_once(DRIFT)

    report = snapshot(stack_settings, api.url, prefix)

    customers, products, _ = report.entities
    assert customers.tombstones == len(drift.deleted) == 3
    assert customers.published == len(set(drift.moved + drift.deactivated) - set(drift.deleted))
    assert products.published == len(drift.repriced) + len(drift.added)
    assert products.tombstones == 0
    view = latest(read_topic(stack_settings, topic_names(prefix)["customers"]))
    assert {k for k, v in view.items() if v is None} == {str(c) for c in drift.deleted}
    for cid in set(drift.deactivated) - set(drift.deleted):
        assert view[str(cid)]["active"] is False  # type: ignore[index]
    for entity in ENTITY_SPECS:
        assert_topic_mirrors_api(stack_settings, prefix, api.store, entity)


def _break_api_after_first_customer_page(api: Served, how: str) -> Callable[[EntityReport], None]:
    """A progress callback that, once the first customer page is in, faults every request or stops the API."""

    def on_progress(report: EntityReport) -> None:
        if report.entity == "customers" and report.phase == "walking" and report.pages == 1:
            if how == "faults":
                api.set_faults(FaultConfig(error_rate=1.0))
            else:
                api.stop()

    return on_progress


@pytest.mark.parametrize("how", ["faults", "api stopped"])
def test_a_snapshot_that_fails_midway_publishes_no_tombstones(
    stack_settings: Settings, data_dir: Path, prefix: str, how: str
) -> None:
    with serving(data_dir) as api:
        snapshot(stack_settings, api.url, prefix, specs=CUSTOMERS)
        gone = api.store.drift_once(
            DriftConfig(seed=SEED, moves=0, price_changes=0, new_products=0, deactivations=0, deletions=6)
        ).deleted
        with pytest.raises(ApiUnavailable, match="kept failing"):
            snapshot(
                stack_settings,
                api.url,
                prefix,
                specs=CUSTOMERS,
                retry=RetryPolicy(max_attempts=3, initial_s=0.01, max_backoff_s=0.02, timeout_s=2),
                on_progress=_break_api_after_first_customer_page(api, how),
                page_size=200,
            )
        view = latest(read_topic(stack_settings, topic_names(prefix)["customers"]))
        assert len(view) == 3000
        assert all(v is not None for v in view.values()), "a failed snapshot published tombstones"

    with serving(data_dir) as api:  # the API is back and healthy, with the same (drifted) data
        report = snapshot(stack_settings, api.url, prefix, specs=CUSTOMERS)
        assert report.entities[0].tombstones == len(gone) == 6
        view = latest(read_topic(stack_settings, topic_names(prefix)["customers"]))
        assert {k for k, v in view.items() if v is None} == {str(c) for c in gone}
        assert_topic_mirrors_api(stack_settings, prefix, api.store, "customers")
