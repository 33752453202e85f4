"""Prometheus metrics of the sink and both producers, scraped from the running commands on the real stack.

Each test runs the real command in a process of its own (as the supervisor does) with ``--metrics-port``
on a free port, scrapes ``/metrics`` over HTTP, and checks the counters against what it wrote to the
sources and what ended up in the landing zone or the topics.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from confluent_kafka import Producer
from prometheus_client.parser import text_string_to_metric_families

from omnistream.kafka.clients import producer_config
from omnistream.settings import MailSettings, Settings
from omnistream.stack.versions import PROJECT_ROOT
from producers.emails.producer import EmailTopics
from producers.masterdata.entities import topic_names
from simulators.api import FaultConfig, FaultInjector, api_state
from simulators.email_sender import EmailsConfig, send_emails
from simulators.masterdata import PRODUCTS, DriftConfig, read_table, write_reference, write_table
from tests.support.email import read_topics, wait_for_mail
from tests.support.masterdata import TOKEN, read_topic, serving
from tests.support.sink import AvroProducer, dead_letters, landed, new_topic, order, poll_until, sink_process

pytestmark = pytest.mark.integration

# Servers below the ephemeral range: an outgoing connection cannot take the port between pick and bind.
PORTS = range(21000, 32000)


def free_port() -> int:
    """A loopback port nothing listens on now."""
    while True:
        port = random.choice(PORTS)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port


class Scrape:
    """One scrape of ``/metrics``: every sample by name and labels."""

    def __init__(self, text: str) -> None:
        self.samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    def __call__(self, name: str, **labels: str) -> float | None:
        return self.samples.get((name, tuple(sorted(labels.items()))))

    def labelled(self, name: str) -> dict[tuple[tuple[str, str], ...], float]:
        return {labels: value for (n, labels), value in self.samples.items() if n == name}


def scrape(port: int) -> Scrape | None:
    """The endpoint's metrics, or None while it is not up yet."""
    try:
        response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
    except httpx.TransportError:
        return None
    response.raise_for_status()
    return Scrape(response.text)


def wait_for_metrics(
    port: int, process: subprocess.Popen[bytes], log: Path, condition: Callable[[Scrape], bool], what: str
) -> Scrape:
    """Scrape until ``condition`` holds; fail if the process exits first."""
    last: list[Scrape] = []

    def holds() -> bool:
        assert process.poll() is None, f"the process exited ({process.returncode}):\n{log.read_text()}"
        got = scrape(port)
        if got is None:
            return False
        last[:] = [got]
        return condition(got)

    try:
        poll_until(holds, 180, what, every_s=0.5)
    except AssertionError as exc:
        seen = last[0].samples if last else None
        raise AssertionError(f"{exc}\nlast scrape: {seen}\n{log.read_text()}") from None
    return last[0]


def command(log: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """``python -m omnistream ARGS`` as a child process, its output appended to ``log``."""
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "omnistream", *args],
            cwd=PROJECT_ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def terminate(process: subprocess.Popen[bytes], log: Path) -> None:
    """SIGTERM, as the supervisor stops a process: it must finish what it holds and exit 0."""
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 0, log.read_text()


@contextlib.contextmanager
def running(process: subprocess.Popen[bytes]) -> Iterator[subprocess.Popen[bytes]]:
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)


# -- the landing sink -------------------------------------------------------------------------------------


def test_the_sink_counts_what_it_consumed_landed_and_dead_lettered(
    stack_settings: Settings, tmp_path: Path, unique: str
) -> None:
    topic = new_topic(stack_settings, f"metricstest.{unique}.orders", partitions=2)
    avro = AvroProducer(stack_settings, topic)
    # Written in transactions, as the email producer writes: each commit leaves a marker at the end of the
    # partition, which is an offset but no record, so it must not show as lag.
    producer = Producer(producer_config(stack_settings, **{"transactional.id": f"metricstest-{unique}"}))
    producer.init_transactions(60)
    batches: list[list[tuple[int, bytes | None]]] = [
        [(i % 2, avro.encode(order(i))) for i in range(20)],
        [(i % 2, avro.encode(order(i))) for i in range(20, 39)] + [(1, None)],  # a tombstone
        [(0, b"not an avro record")],  # poison: not in the wire format
    ]
    for batch in batches:
        producer.begin_transaction()
        for partition, value in batch:
            producer.produce(topic, value, f"k{partition}".encode(), partition=partition)
        producer.commit_transaction(60)
    landing = tmp_path / "landing"
    log = tmp_path / "sink.log"
    port = free_port()
    started = time.time()

    args = (
        *("--topics", topic, "--dir", str(landing), "--group", f"metrics-{unique}"),
        *("--flush-seconds", "0.5", "--metrics-port", str(port)),
    )
    with running(sink_process(log, *args)) as sink:
        got = wait_for_metrics(
            port,
            sink,
            log,
            lambda m: (
                m("omnistream_records_out_total", topic=topic) == 40
                and m("omnistream_sink_buffered_records", topic=topic) == 0
                and len(m.labelled("omnistream_sink_lag_records")) == 2
            ),
            "40 records landed and the lag of both partitions",
        )
        assert got("omnistream_records_in_total", topic=topic) == 41
        assert got("omnistream_dead_letters_total", topic=topic, reason="not-wire-format") == 1
        assert got.labelled("omnistream_dead_letters_total") == {
            (("reason", "not-wire-format"), ("topic", topic)): 1
        }
        files = sorted(landing.rglob("*.parquet"))
        assert got("omnistream_transactions_total", outcome="committed") == len(files) > 0
        assert got("omnistream_transactions_total", outcome="aborted") == 0
        assert got("omnistream_errors_total", kind="offset_commit") == 0
        assert got("omnistream_sink_lag_records", topic=topic, partition="0") == 0
        assert got("omnistream_sink_lag_records", topic=topic, partition="1") == 0
        last_commit = got("omnistream_last_commit_timestamp_seconds")
        assert last_commit is not None and started < last_commit <= time.time()
        process_start = got("process_start_time_seconds")
        assert process_start is not None and started - 1 <= process_start <= last_commit

        # The counters say what the landing zone and the dead-letter topic hold.
        rows = landed(landing, topic)
        assert len(rows) == 40 and sum(1 for r in rows if r["order_id"] is None) == 1  # the tombstone
        [(_, letter)] = dead_letters(stack_settings, topic)
        assert letter["reason"].startswith("not-wire-format")

        terminate(sink, log)
    assert "landed 40 record(s)" in log.read_text()


# -- the email producer ---------------------------------------------------------------------------------


def test_the_email_producer_counts_emails_orders_dead_letters_transactions_and_backlog(
    stack_settings: Settings, mailbox: MailSettings, topics: EmailTopics, unique: str, tmp_path: Path
) -> None:
    count, batch = 40, 10
    facts = send_emails(mailbox, EmailsConfig(seed=41, rate=0, count=count, anomaly_share=0.3)).finish().facts
    malformed = facts["malformed_count"]
    assert 0 < malformed < count
    wait_for_mail(mailbox, count)
    orders = topics.orders
    env = {
        "OMNISTREAM_MAIL__MAILBOX_USER": mailbox.mailbox_user,
        "OMNISTREAM_MAIL__MAILBOX_PASSWORD": mailbox.mailbox_password.get_secret_value(),
    }
    log = tmp_path / "producer.log"
    port = free_port()
    started = time.time()
    args = (
        *("produce", "emails", "--follow", "--batch-size", str(batch)),
        *("--topic", orders, "--checkpoint-topic", topics.checkpoints),
        *("--transactional-id", f"metricstest-{unique}", "--metrics-port", str(port)),
    )

    with running(command(log, *args, env=env)) as producer:
        got = wait_for_metrics(
            port,
            producer,
            log,
            lambda m: (
                m("omnistream_records_out_total", topic=orders) == count - malformed
                and m("omnistream_email_mailbox_backlog_messages") == 0
            ),
            f"{count - malformed} orders produced and an empty backlog",
        )
        assert got("omnistream_records_in_total", topic=orders) == count
        assert got("omnistream_dead_letters_total", topic=orders, reason="unparseable") == malformed
        assert got("omnistream_transactions_total", outcome="committed") == math.ceil(count / batch)
        assert got("omnistream_transactions_total", outcome="aborted") == 0
        for kind in ("transaction_retry", "commit_retry", "init_retry", "delivery"):
            assert got("omnistream_errors_total", kind=kind) == 0
        first_commit = got("omnistream_last_commit_timestamp_seconds")
        assert first_commit is not None and started < first_commit <= time.time()
        assert got("process_start_time_seconds") is not None

        # New mail while it follows the mailbox: the counters move on from there.
        send_emails(mailbox, EmailsConfig(seed=42, rate=0, count=5, anomaly_share=0.0, start_number=500))
        got = wait_for_metrics(
            port,
            producer,
            log,
            lambda m: (
                m("omnistream_records_out_total", topic=orders) == count - malformed + 5
                and m("omnistream_email_mailbox_backlog_messages") == 0
            ),
            "the five new emails produced",
        )
        assert got("omnistream_records_in_total", topic=orders) == count + 5
        # One transaction or more: the producer may wake for the first of the five before the last is in.
        committed = got("omnistream_transactions_total", outcome="committed")
        assert committed is not None and math.ceil(count / batch) < committed <= math.ceil(count / batch) + 5
        assert got("omnistream_last_commit_timestamp_seconds") >= first_commit  # type: ignore[operator]

        terminate(producer, log)
    records = read_topics(stack_settings, [orders, topics.dead_letters], decode=False)
    assert len(records[orders]) == count - malformed + 5
    assert len(records[topics.dead_letters]) == malformed


# -- the master-data producer ---------------------------------------------------------------------------


class CountingFaults(FaultInjector):
    """The API's own fault injection, counting the failures it serves (each one a retry for the client)."""

    def __init__(self, config: FaultConfig) -> None:
        super().__init__(config)
        self.failures = 0

    def draw(self) -> str | None:
        fault = super().draw()
        if fault in ("error", "throttle"):
            self.failures += 1
        return fault


@pytest.fixture
def masterdata_dir(tmp_path: Path) -> Path:
    """The reference data with one product priced beyond the schema's two decimals: a poison item."""
    path = tmp_path / "masterdata"
    write_reference(path, 42)
    rows = read_table(path / PRODUCTS.file_name, PRODUCTS)
    rows["SKU-00007"]["unit_price"] = Decimal("12.345")
    write_table(path / PRODUCTS.file_name, PRODUCTS, rows)
    return path


def test_the_masterdata_producer_counts_items_records_dead_letters_retries_and_tombstones(
    stack_settings: Settings, masterdata_dir: Path, prefix: str, tmp_path: Path
) -> None:
    topics = topic_names(prefix)
    customers, products, stores = topics["customers"], topics["products"], topics["stores"]
    log = tmp_path / "producer.log"

    with serving(masterdata_dir) as api:
        faults = CountingFaults(FaultConfig(error_rate=0.2, throttle_rate=0.15, retry_after_s=0, seed=7))
        api_state(api.app).faults = faults
        env = {"OMNISTREAM_API__HOST": "127.0.0.1", "OMNISTREAM_API__PORT": str(api.port)}
        env["OMNISTREAM_API__TOKEN"] = TOKEN
        port = free_port()
        started = time.time()
        args = ("produce", "masterdata", "--every", "1h", "--topic-prefix", prefix, "--max-attempts", "10")

        with running(command(log, *args, "--metrics-port", str(port), env=env)) as producer:
            got = wait_for_metrics(
                port,
                producer,
                log,
                lambda m: m("omnistream_masterdata_snapshots_total", outcome="complete") == 1,
                "the first snapshot",
            )
            assert faults.failures > 0
            assert got("omnistream_errors_total", kind="api_retry") == faults.failures
            assert got("omnistream_errors_total", kind="delivery") == 0
            assert got("omnistream_masterdata_snapshots_total", outcome="failed") == 0
            for topic, items, out in ((customers, 3000, 3000), (products, 400, 399), (stores, 12, 12)):
                assert got("omnistream_records_in_total", topic=topic) == items
                assert got("omnistream_records_out_total", topic=topic) == out
                assert got("omnistream_masterdata_tombstones_total", topic=topic) == 0
            assert got.labelled("omnistream_dead_letters_total") == {
                (("reason", "invalid-record"), ("topic", products)): 1
            }
            last_commit = got("omnistream_last_commit_timestamp_seconds")
            last_snapshot = got("omnistream_masterdata_last_snapshot_timestamp_seconds")
            assert last_commit is not None and last_snapshot is not None
            assert started < last_commit <= last_snapshot <= time.time()
            terminate(producer, log)
        assert len(read_topic(stack_settings, customers)) == 3000

        # Customers deleted at the source: the next run (a restart, counters from zero) tombstones them.
        api_state(api.app).faults = None
        deletions = DriftConfig(
            seed=5, moves=0, price_changes=0, new_products=0, deactivations=0, deletions=4
        )
        gone = api.store.drift_once(deletions).deleted
        assert len(gone) == 4
        port = free_port()
        with running(command(log, *args, "--metrics-port", str(port), env=env)) as producer:
            got = wait_for_metrics(
                port,
                producer,
                log,
                lambda m: m("omnistream_masterdata_snapshots_total", outcome="complete") == 1,
                "the second snapshot",
            )
            live = 3000 - len(gone)
            assert got("omnistream_records_in_total", topic=customers) == live
            assert got("omnistream_masterdata_tombstones_total", topic=customers) == len(gone)
            assert got("omnistream_records_out_total", topic=customers) == len(gone)  # nothing else changed
            assert got("omnistream_records_out_total", topic=stores) == 0
            assert got("omnistream_errors_total", kind="api_retry") == 0
            terminate(producer, log)
        assert len(read_topic(stack_settings, customers)) == 3000 + len(gone)


# -- a taken port ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "variable"),
    [
        (("sink", "--topics", "metricstest.none"), "OMNISTREAM_METRICS__SINK_PORT"),
        (("produce", "emails", "--follow"), "OMNISTREAM_METRICS__EMAIL_PRODUCER_PORT"),
        (("produce", "masterdata", "--every", "5m"), "OMNISTREAM_METRICS__MASTERDATA_PRODUCER_PORT"),
    ],
)
def test_a_taken_metrics_port_fails_at_start_with_one_line_naming_port_and_setting(
    tmp_path: Path, args: tuple[str, ...], variable: str
) -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", free_port()))
        other.listen()
        port = other.getsockname()[1]
        log = tmp_path / "command.log"
        process = command(log, *args, env={variable: str(port)})
        assert process.wait(timeout=120) == 1, log.read_text()
    [line] = [line for line in log.read_text().splitlines() if "metrics" in line]
    assert f"127.0.0.1:{port}" in line and variable in line and "--metrics-port" in line
