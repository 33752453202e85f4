"""The master-data producer against real servers: the API simulator over HTTP, Kafka and the registry.

Each test serves the simulator's Flask app in-process (werkzeug, a free loopback port, its own copy of the
reference data), publishes to topics of its own, and reads them back with a generic AvroDeserializer that
knows nothing but the registry. Drift and faults are switched through the app's state between pages.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaException, TopicPartition

from omnistream.kafka.clients import admin, client_config
from omnistream.settings import Settings
from omnistream.topics import dlq
from producers.masterdata.client import ApiAuthError, ApiClient, ApiUnavailable, RetryPolicy
from producers.masterdata.entities import ENTITY_SPECS, EntitySpec, topic_names
from producers.masterdata.producer import EntityReport, MasterDataProducer, SnapshotOptions, SnapshotReport
from simulators.api import FaultConfig
from simulators.masterdata import (
    ENTITIES,
    PRODUCTS,
    DriftConfig,
    MasterData,
    read_table,
    write_table,
)
from tests.support.masterdata import TOKEN, Served, read_topic, serving

pytestmark = pytest.mark.integration

SEED = 42
ALL = list(ENTITY_SPECS.values())
CUSTOMERS = [ENTITY_SPECS["customers"]]
QUICK = RetryPolicy(max_attempts=6, initial_s=0.01, max_backoff_s=0.05, timeout_s=10)
DRIFT = DriftConfig(seed=SEED, moves=5, price_changes=4, new_products=2, deactivations=3, deletions=3)
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def api(data_dir: Path) -> Iterator[Served]:
    with serving(data_dir) as served:
        yield served


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


def latest(records: list[tuple[str, dict[str, Any] | None]]) -> dict[str, dict[str, Any] | None]:
    """The compacted view: the last value per key (None for a tombstone)."""
    return dict(records)


def live_in_api(store: MasterData, entity: str) -> dict[str, dict[str, Any]]:
    """What the API serves now, by key, with typed values (deleted flag left out)."""
    columns = [name for name, _ in ENTITIES[entity].public_columns]
    key = ENTITIES[entity].key
    return {str(r[key]): {c: r[c] for c in columns} for r in store.records(entity) if not r["deleted"]}


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


# --- API faults and terminal errors -------------------------------------------------------------------


def test_api_faults_are_retried_honouring_retry_after_and_the_snapshot_completes(
    stack_settings: Settings, data_dir: Path, prefix: str
) -> None:
    faults = FaultConfig(
        error_rate=0.2, throttle_rate=0.15, slow_rate=0.1, slow_s=0.05, retry_after_s=1, seed=3
    )
    with serving(data_dir, faults=faults) as api, ApiClient(api.url, TOKEN, QUICK) as client:
        opts = SnapshotOptions(page_size=250, topics=topic_names(prefix))
        with MasterDataProducer(stack_settings, client, opts) as producer:
            report = producer.snapshot(ALL)

        assert [(e.entity, e.fetched, e.published) for e in report.entities] == [
            ("customers", 3000, 3000),
            ("products", 400, 400),
            ("stores", 12, 12),
        ]
        assert client.stats.retries["500"] > 0 and client.stats.retries["429"] > 0
        throttled = [(waited, asked) for reason, waited, asked in client.stats.waits if reason == "429"]
        assert throttled and all(asked == 1 and waited == asked for waited, asked in throttled)
        for entity in ENTITY_SPECS:
            assert_topic_mirrors_api(stack_settings, prefix, api.store, entity)


def test_a_rejected_token_fails_fast_with_what_to_set(
    stack_settings: Settings, api: Served, prefix: str
) -> None:
    with ApiClient(api.url, "not-the-token", QUICK) as client:
        opts = SnapshotOptions(topics=topic_names(prefix))
        with (
            MasterDataProducer(stack_settings, client, opts) as producer,
            pytest.raises(ApiAuthError, match=r"rejected the token.*set OMNISTREAM_API__TOKEN"),
        ):
            producer.snapshot(ALL)
        assert client.stats.requests == 1  # no retries
    existing = admin(stack_settings).list_topics(timeout=30).topics
    assert not [t for t in existing if t.startswith(prefix)], (
        "nothing should be set up before the API answers"
    )


def test_an_item_that_does_not_fit_the_schema_goes_to_the_dead_letter_topic_and_is_not_tombstoned(
    stack_settings: Settings, data_dir: Path, prefix: str
) -> None:
    with serving(data_dir) as api:
        snapshot(stack_settings, api.url, prefix, specs=[ENTITY_SPECS["products"]])
    rows = read_table(data_dir / PRODUCTS.file_name, PRODUCTS)
    rows["SKU-00007"]["unit_price"] = Decimal("12.345")  # three decimals: no exact price in decimal(12,2)
    write_table(data_dir / PRODUCTS.file_name, PRODUCTS, rows)

    with serving(data_dir) as api:
        report = snapshot(stack_settings, api.url, prefix, specs=[ENTITY_SPECS["products"]])

    [products] = report.entities
    assert (products.fetched, products.invalid, products.published, products.tombstones) == (400, 1, 0, 0)
    topic = topic_names(prefix)["products"]
    assert latest(read_topic(stack_settings, topic))["SKU-00007"] is not None  # the last good version stays
    [(key, letter)] = read_topic(stack_settings, dlq(topic))
    assert key == "SKU-00007" and letter is not None
    assert letter["topic"] == topic and letter["source_id"] == "SKU-00007"
    assert "unit_price" in letter["reason"] and letter["error_class"].endswith("InvalidRecord")
    assert json.loads(letter["payload"])["unit_price"] == "12.345"  # the item exactly as the API sent it
    assert letter["attributes"] == {"entity": "products", "snapshot_id": report.snapshot_id}


# --- the command line ---------------------------------------------------------------------------------


def _run_command(
    api: Served, prefix: str, *args: str, token: str = TOKEN, **popen: Any
) -> subprocess.Popen[str]:
    """``omnistream produce masterdata`` in a process of its own, pointed at ``api`` by environment."""
    command = [sys.executable, "-m", "omnistream", "produce", "masterdata", "--topic-prefix", prefix]
    env = {
        **os.environ,
        "OMNISTREAM_API__HOST": "127.0.0.1",
        "OMNISTREAM_API__PORT": str(api.port),
        "OMNISTREAM_API__TOKEN": token,
    }
    return subprocess.Popen(
        [*command, "--page-size", "100", "--max-attempts", "3", *args], env=env, cwd=ROOT, text=True, **popen
    )


@contextmanager
def new_records(settings: Settings, topic: str) -> Iterator[Callable[[int], None]]:
    """Watch ``topic`` from its current end; the callable blocks until that many new records arrived."""
    consumer = Consumer(
        client_config(settings, **{"group.id": f"watch-{topic}", "enable.auto.commit": False})
    )
    partitions = consumer.list_topics(topic, timeout=30).topics[topic].partitions
    ends = [consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1] for p in partitions]
    consumer.assign([TopicPartition(topic, p, end) for p, end in zip(partitions, ends, strict=True)])
    seen = 0

    def wait_for(count: int) -> None:
        nonlocal seen
        deadline = time.monotonic() + 90
        while seen < count:
            assert time.monotonic() < deadline, f"{topic}: {seen} of {count} new records arrived"
            msg = consumer.poll(0.5)
            if msg is not None:
                if msg.error():
                    raise KafkaException(msg.error())
                seen += 1

    try:
        yield wait_for
    finally:
        consumer.close()


def test_the_command_reports_a_rejected_token_and_exits_1(api: Served, prefix: str) -> None:
    process = _run_command(
        api, prefix, "--once", token="wrong", stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    _, err = process.communicate(timeout=120)
    assert process.returncode == 1
    assert "rejected the token" in err and "OMNISTREAM_API__TOKEN" in err


def test_a_producer_killed_mid_snapshot_publishes_no_tombstones_and_the_next_run_completes(
    stack_settings: Settings, api: Served, prefix: str
) -> None:
    snapshot(stack_settings, api.url, prefix, specs=CUSTOMERS)
    gone = api.store.drift_once(DRIFT).deleted
    topic = topic_names(prefix)["customers"]
    api.set_faults(FaultConfig(slow_rate=1.0, slow_s=0.1))  # a slow API: the walk takes a few seconds

    with new_records(stack_settings, topic) as wait_for:
        process = _run_command(
            api, prefix, "--once", "--entities", "customers", "--republish", stderr=subprocess.DEVNULL
        )
        try:
            wait_for(300)  # well into the walk, far from its end
            process.send_signal(signal.SIGKILL)
        finally:
            process.kill()
            process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL

    view = latest(read_topic(stack_settings, topic))
    assert len(view) == 3000
    assert all(v is not None for v in view.values()), "a killed snapshot published tombstones"

    api.set_faults(None)
    report = snapshot(stack_settings, api.url, prefix, specs=CUSTOMERS)
    assert report.entities[0].tombstones == len(gone)
    view = latest(read_topic(stack_settings, topic))
    assert {k for k, v in view.items() if v is None} == {str(c) for c in gone}
    assert_topic_mirrors_api(stack_settings, prefix, api.store, "customers")


def test_the_command_snapshots_every_interval_until_terminated(
    stack_settings: Settings, api: Served, prefix: str
) -> None:
    stores = [ENTITY_SPECS["stores"]]
    snapshot(stack_settings, api.url, prefix, specs=stores)
    topic = topic_names(prefix)["stores"]

    with new_records(stack_settings, topic) as wait_for:
        process = _run_command(
            api, prefix, "--every", "1s", "--entities", "stores", "--republish",
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            # Three snapshots, every store in each; the first two have printed their reports by then.
            wait_for(3 * 12)
            process.send_signal(signal.SIGTERM)
            out, _ = process.communicate(timeout=60)
        finally:
            process.kill()
            process.wait(timeout=30)

    assert process.returncode == 0
    snapshots = {v["snapshot_id"] for _, v in read_topic(stack_settings, topic) if v is not None}
    assert len(snapshots) >= 4  # the one taken in-process, then three or more by the command
    assert out.count("snapshot ") >= 2
