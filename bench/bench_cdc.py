"""Benchmark CDC end to end: PostgreSQL commit → Debezium on Kafka Connect → Avro record in Kafka.

    PYTHONPATH=. .venv/bin/python bench/bench_cdc.py --orders 1000 --rate 50 --steady-seconds 10
    PYTHONPATH=. .venv/bin/python bench/bench_cdc.py --set max.batch.size=8192 --set poll.interval.ms=50

Runs against the local stack (started if needed) in a sandbox of its own: a schema with the shop's
tables, a publication, a slot and a connector built from connect/onlinedb-postgres.json, all removed
afterwards. An order is 4 changes: the order, 2 lines, then its payment (an update). Two phases:

* burst: ``--orders`` orders written unthrottled, ``--batch`` per transaction; changes per second from
  the first commit to the last record read back, and the lag each record saw while the backlog drained;
* catch-up: the same again with the connector paused, then resumed; changes per second from the resume
  to the last record read back: what Debezium, Connect and the Avro converter sustain on their own;
* steady: ``--rate`` orders per second, one transaction each, for ``--steady-seconds``; the lag of a
  pipeline that keeps up.

Lag is measured twice: commit time in the record (``__source_ts_ms``, PostgreSQL's clock) to the Kafka
record's timestamp (set when Connect's producer sent it), and the writer's clock after COMMIT returned to
the consumer's clock when the record arrived (same host, one clock). Prints figures; asserts nothing.

Goals (issue 14), printed beside the figures with the ratio to the limit measured in the same run:
burst end to end >= 10k changes/s and >= 90% of PostgreSQL's commit rate of the same burst, burst p95
commit -> Kafka < 1 s, steady p95 commit -> Kafka < 100 ms.
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time
from dataclasses import dataclass, field

import psycopg
from confluent_kafka import Consumer, KafkaException
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext
from psycopg import sql

from omnistream.connect import deploy
from omnistream.connect.client import ConnectClient
from omnistream.kafka.clients import admin, client_config
from omnistream.kafka.registry import registry_client
from omnistream.settings import Settings, get_settings
from omnistream.stack.manager import Stack
from tests.support.cdc_sandbox import CdcSandbox, cdc_sandbox

CHANGES_PER_ORDER = 4
GOAL_RATE = 10_000  # changes/s end to end, burst
GOAL_RATIO = 0.90  # end-to-end rate / PostgreSQL's commit rate, same burst
GOAL_BURST_P95_MS = 1_000
GOAL_STEADY_P95_MS = 100
INSERT_ORDER = (
    "insert into orders (customer_id, subtotal, tax, total) values (%s, 10.00, 1.90, 11.90) "
    "returning order_id"
)
INSERT_ITEM = (
    "insert into order_items (order_id, line_number, sku, quantity, unit_price, line_total) "
    "values (%s, %s, 'SKU-BENCH', 1, 5.00, 5.00)"
)
PAY = "update orders set status = 'paid', updated_at = now() where order_id = %s"


@dataclass
class Arrivals:
    """What the reader saw, per phase: (order id, kafka ts, source ts, arrival ms) of each record."""

    records: list[tuple[int, int, int, int]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self) -> int:
        with self.lock:
            return len(self.records)

    def take(self) -> list[tuple[int, int, int, int]]:
        with self.lock:
            taken, self.records = self.records, []
        return taken


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def read(settings: Settings, sandbox: CdcSandbox, arrivals: Arrivals, stop: threading.Event) -> None:
    """Decode every record of the sandbox topics as it arrives (values only: that is where the times are)."""
    values = AvroDeserializer(registry_client(settings))
    consumer = Consumer(
        client_config(
            settings,
            **{
                "group.id": f"bench-cdc-{sandbox.suffix}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
            },
        )
    )
    try:
        consumer.subscribe([sandbox.orders_topic, sandbox.items_topic])
        while not stop.is_set():
            msg = consumer.poll(0.2)
            if msg is None:
                continue
            if msg.error():
                raise KafkaException(msg.error())
            arrived = now_ms()
            raw, topic = msg.value(), msg.topic()
            if raw is None or topic is None:
                continue
            value = values(raw, SerializationContext(topic, MessageField.VALUE))
            with arrivals.lock:
                arrivals.records.append(
                    (value["order_id"], msg.timestamp()[1], value["__source_ts_ms"], arrived)
                )
    finally:
        consumer.close()


def write_orders(conn: psycopg.Connection, customers: range) -> dict[int, int]:
    """Orders with two lines each and their payment, all in one transaction; order id -> commit ms."""
    ids = []
    with conn.transaction():
        for customer in customers:
            row = conn.execute(INSERT_ORDER.encode(), (customer,)).fetchone()
            assert row is not None
            ids.append(row[0])
        with conn.cursor() as cur:
            cur.executemany(INSERT_ITEM.encode(), [(i, n) for i in ids for n in (1, 2)])
            cur.executemany(PAY.encode(), [(i,) for i in ids])
    at = now_ms()
    return dict.fromkeys(ids, at)


def wait_for(arrivals: Arrivals, expected: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while arrivals.count() < expected:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {arrivals.count()} of {expected} records arrived in {timeout_s:.0f} s")
        time.sleep(0.05)


def p95(values: list[int]) -> float:
    return statistics.quantiles(sorted(values), n=100, method="inclusive")[94]


def percentiles(values: list[int]) -> str:
    ordered = sorted(values)
    cuts = statistics.quantiles(ordered, n=100, method="inclusive")
    return f"p50 {cuts[49]:7.0f} ms  p95 {cuts[94]:7.0f} ms  max {ordered[-1]:7.0f} ms"


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def report(
    name: str, records: list[tuple[int, int, int, int]], committed: dict[int, int], goal_p95_ms: int
) -> None:
    kafka_lag = [kafka_ts - source_ts for _, kafka_ts, source_ts, _ in records]
    client_lag = [arrived - committed[order] for order, _, _, arrived in records if order in committed]
    print(f"{name:7s} commit → Kafka append (source.ts_ms → record timestamp):  {percentiles(kafka_lag)}")
    print(f"{name:7s} commit → consumer (client clock after COMMIT returned):    {percentiles(client_lag)}")
    worst = p95(kafka_lag)
    print(
        f"{name:7s} goal: p95 commit → Kafka {worst:,.0f} ms vs < {goal_p95_ms:,} ms "
        f"(ratio {worst / goal_p95_ms:.2f}, want < 1): {verdict(worst < goal_p95_ms)}"
    )


def overrides(pairs: list[str]) -> dict[str, str]:
    """``KEY=VALUE`` options into connector config entries (every value a string, as in the files)."""
    parsed = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set wants KEY=VALUE, got {pair!r}")
        parsed[key] = value
    return parsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=5000, help="Orders written in the burst phase.")
    parser.add_argument("--batch", type=int, default=100, help="Orders per transaction in the burst phase.")
    parser.add_argument("--rate", type=float, default=50.0, help="Orders per second in the steady phase.")
    parser.add_argument("--steady-seconds", type=float, default=10.0)
    parser.add_argument(
        "--poll-interval-ms",
        type=int,
        default=None,
        help="Override Debezium's poll.interval.ms (default: the file's).",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="Override one entry of the connector config (repeatable), to measure a lever.",
    )
    args = parser.parse_args()
    extra = overrides(args.set)

    settings = get_settings()
    Stack(settings).up(["postgres", "kafka", "registry", "connect"])
    suffix = f"bench{os.getpid()}"
    with cdc_sandbox(settings, suffix) as sandbox, ConnectClient(settings.connect.url) as client:
        started = time.perf_counter()
        connector = sandbox.connector_file()
        if args.poll_interval_ms is not None:
            connector.config["poll.interval.ms"] = str(args.poll_interval_ms)
        connector.config.update(extra)
        if extra:
            print("overrides: " + ", ".join(f"{k}={v}" for k, v in extra.items()))
        deploy.apply(client, settings, [connector], timeout_s=180)
        print(f"connector RUNNING in {time.perf_counter() - started:.1f} s ({sandbox.connector})")

        arrivals, stop = Arrivals(), threading.Event()
        with psycopg.connect(settings.postgres.app_dsn()) as conn:
            conn.execute(sql.SQL("set search_path to {}").format(sql.Identifier(sandbox.schema)))
            conn.commit()
            # Warm-up: creates the topics and registers the schemas, so the reader can subscribe.
            write_orders(conn, range(1, 2))
            topics = admin(settings)
            while not {sandbox.orders_topic, sandbox.items_topic} <= set(
                topics.list_topics(timeout=5).topics
            ):
                time.sleep(0.1)
            reader = threading.Thread(target=read, args=(settings, sandbox, arrivals, stop), daemon=True)
            reader.start()
            wait_for(arrivals, CHANGES_PER_ORDER, 120)
            arrivals.take()

            committed: dict[int, int] = {}
            first_commit = time.perf_counter()
            for start in range(0, args.orders, args.batch):
                committed |= write_orders(conn, range(2 + start, 2 + min(start + args.batch, args.orders)))
            written = time.perf_counter() - first_commit
            wait_for(arrivals, CHANGES_PER_ORDER * args.orders, 600)
            drained = time.perf_counter() - first_commit
            changes = CHANGES_PER_ORDER * args.orders
            into_pg, end_to_end = changes / written, changes / drained
            print(
                f"burst   {changes:,} changes ({args.orders:,} orders, {args.batch} per transaction) "
                f"written in {written:.2f} s "
                f"({into_pg:,.0f} changes/s into PostgreSQL); all in Kafka after {drained:.2f} s: "
                f"{end_to_end:,.0f} changes/s end to end"
            )
            ratio = end_to_end / into_pg
            print(
                f"burst   goal: end to end {end_to_end:,.0f} changes/s vs >= {GOAL_RATE:,}: "
                f"{verdict(end_to_end >= GOAL_RATE)}; ratio to PostgreSQL's commit rate "
                f"{ratio:.0%} vs >= {GOAL_RATIO:.0%}: {verdict(ratio >= GOAL_RATIO)}"
            )
            report("burst", arrivals.take(), committed, GOAL_BURST_P95_MS)

            client.pause(sandbox.connector)
            deploy.wait_for_state(client, sandbox.connector, "PAUSED", timeout_s=60)
            committed = {}
            for start in range(0, args.orders, args.batch):
                first = 1_000_000 + start
                committed |= write_orders(conn, range(first, first + min(args.batch, args.orders - start)))
            resumed = time.perf_counter()
            client.resume(sandbox.connector)
            wait_for(arrivals, changes, 600)
            drained = time.perf_counter() - resumed
            print(
                f"catchup {changes:,} changes waiting in the slot, in Kafka {drained:.2f} s after resume: "
                f"{changes / drained:,.0f} changes/s"
            )
            arrivals.take()

            committed = {}
            interval = 1.0 / args.rate
            count = int(args.rate * args.steady_seconds)
            began = time.perf_counter()
            for i in range(count):
                committed |= write_orders(conn, range(100_000 + i, 100_001 + i))
                time.sleep(max(0.0, began + (i + 1) * interval - time.perf_counter()))
            wait_for(arrivals, CHANGES_PER_ORDER * count, 300)
            print(
                f"steady  {CHANGES_PER_ORDER * count:,} changes at {args.rate:g} orders/s "
                f"({CHANGES_PER_ORDER * args.rate:g} changes/s) for {args.steady_seconds:g} s"
            )
            report("steady", arrivals.take(), committed, GOAL_STEADY_P95_MS)
        stop.set()
        reader.join(timeout=10)


if __name__ == "__main__":
    main()
