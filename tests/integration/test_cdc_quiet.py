"""Debezium resumes by itself after a quiet period, through Connect and broker restarts, on its own stack.

The failure this guards against: the shop's tables are quiet while other databases of the same cluster
write WAL; the replication slot gets confirmed past the offset Kafka Connect stored (the JDBC driver
confirming keep-alive LSNs, ``lsn.flush.mode=connector_and_driver``); the next Connect or broker restart
resumes from that offset, Debezium finds the slot's WAL gone and the task FAILS for good ("…is no longer
available on the server"). With ``lsn.flush.mode=connector`` and ``heartbeat.action.query`` (see
connect/README.md) the slot is confirmed only up to the stored offset, and the heartbeat write keeps that
offset — and so the WAL the slot retains — moving while the shop is quiet.

Restarting servers would disturb everyone's stack, so these tests run a second one (own state directory,
ports shifted by ``PORT_OFFSET``, shared downloads) with the pipeline's real connector config, applied by
``omnistream connect apply`` exactly as a user does.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

import httpx
import psycopg
import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException
from confluent_kafka.serialization import MessageField, SerializationContext
from psycopg import sql

from omnistream.kafka.clients import client_config
from omnistream.kafka.registry import registry_client
from omnistream.settings import Settings
from omnistream.shop_schema import SHOP_SCHEMA, use_schema
from omnistream.stack.manager import Stack
from simulators.order_plan import NewOrder, OrderLine
from simulators.shop_db import insert_order
from tests.support.decoding import avro_deserializer
from tests.support.second_stack import as_environment, second_stack_settings

pytestmark = pytest.mark.integration

PORT_OFFSET = 500  # this module's own second stack; no other test uses it
SERVERS = ["postgres", "kafka", "registry", "connect"]
CONNECTOR = "onlinedb-postgres"
SLOT = "omnistream_onlinedb"
ORDERS_TOPIC, ITEMS_TOPIC = "onlinedb.shop.orders", "onlinedb.shop.order_items"
QUIET_S = 75.0  # longer than the 40 s that broke the old configuration, and several heartbeats (10 s)
DEADLINE_S = 420.0  # generous: Connect may hold a killed worker's tasks for a while before reassigning
OTHER_DATABASE = "quiet_neighbour"
BALLAST_BYTES = 512 * 1024  # one incompressible row; ~1 MB of WAL a second at the writer's pace
MiB = 2**20


@dataclass
class QuietStack:
    settings: Settings
    stack: Stack

    @property
    def environment(self) -> dict[str, str]:
        return {**os.environ, **as_environment(self.settings)}

    def superuser(self, dbname: str | None = None) -> psycopg.Connection:
        return psycopg.connect(self.settings.postgres.dsn(dbname=dbname), autocommit=True, connect_timeout=5)


@pytest.fixture(scope="module")
def quiet_stack(stack_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[QuietStack]:
    """A second stack running the pipeline's own Debezium connector, applied by the CLI."""
    state_dir = tmp_path_factory.mktemp("cdc-quiet") / "stack"
    settings = second_stack_settings(stack_settings, state_dir, port_offset=PORT_OFFSET)
    stack = Stack(settings)
    try:
        stack.up(SERVERS)  # also draws this stack's passwords into ``settings``
        quiet = QuietStack(settings, stack)
        applied = subprocess.run(
            [sys.executable, "-m", "omnistream", "connect", "apply", "--only", CONNECTOR],
            env=quiet.environment,
            capture_output=True,
            text=True,
            check=False,
        )
        assert applied.returncode == 0, applied.stdout[-3000:] + applied.stderr[-3000:]
        with quiet.superuser() as conn:
            conn.execute(sql.SQL("create database {}").format(sql.Identifier(OTHER_DATABASE)))
        yield quiet
    finally:
        stack.down(purge=True)


# --- the shop's writes and what reaches Kafka ------------------------------------------------------------


def write_orders(quiet: QuietStack, count: int, first_ref: int) -> dict[int, int]:
    """Insert ``count`` orders, one transaction each; returns order_id → number of lines."""
    written = {}
    with psycopg.connect(quiet.settings.postgres.app_dsn()) as conn:
        use_schema(conn, SHOP_SCHEMA)
        for ref in range(first_ref, first_ref + count):
            lines = tuple(
                OrderLine(n, f"SKU-{ref % 7}-{n}", n, Decimal("4.25") + n) for n in range(1, ref % 3 + 2)
            )
            with conn.transaction(), conn.cursor() as cur:
                (order_id, _), _ = insert_order(cur, NewOrder(ref=ref, customer_id=1000 + ref, lines=lines))
            written[order_id] = len(lines)
    return written


def read_changes(
    quiet: QuietStack, orders: dict[int, int], *, deadline_s: float = DEADLINE_S
) -> dict[str, list[dict[str, Any]]]:
    """Read both topics from the start until every order and every line of ``orders`` has a row record.

    Duplicates are expected (Debezium is at least once after a crash); staging removes them by (key, LSN).
    """
    wanted_orders = set(orders)
    wanted_items = {(o, n) for o, lines in orders.items() for n in range(1, lines + 1)}
    registry = registry_client(quiet.settings)
    keys, values = avro_deserializer(registry), avro_deserializer(registry)
    consumer = Consumer(
        client_config(
            quiet.settings,
            **{
                "group.id": f"test-cdc-quiet-{uuid.uuid4().hex[:8]}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
            },
        )
    )
    seen: dict[str, list[dict[str, Any]]] = {ORDERS_TOPIC: [], ITEMS_TOPIC: []}
    try:
        consumer.subscribe([ORDERS_TOPIC, ITEMS_TOPIC])
        deadline = time.monotonic() + deadline_s
        while True:
            got_orders = {v["order_id"] for v in seen[ORDERS_TOPIC]}
            got_items = {(v["order_id"], v["line_number"]) for v in seen[ITEMS_TOPIC]}
            missing_orders, missing_items = wanted_orders - got_orders, wanted_items - got_items
            if not missing_orders and not missing_items:
                return seen
            assert time.monotonic() < deadline, (
                f"after {deadline_s:.0f} s, {len(missing_orders)} orders (e.g. {sorted(missing_orders)[:5]}) "
                f"and {len(missing_items)} lines (e.g. {sorted(missing_items)[:5]}) never reached Kafka"
            )
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            error = msg.error()
            if error is not None:
                # Debezium creates a topic with its first record.
                if error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                    continue
                raise KafkaException(error)
            topic, raw = msg.topic(), msg.value()
            assert topic is not None
            if raw is None:
                continue  # a tombstone; these tests delete nothing
            value = values(raw, SerializationContext(topic, MessageField.VALUE))
            keys(msg.key(), SerializationContext(topic, MessageField.KEY))  # every key decodes too
            seen[topic].append(value)
    finally:
        consumer.close()


# --- watching the slot, the stored offset and the heartbeat row ---------------------------------------


@dataclass(frozen=True)
class Sample:
    """One look at the slot and, right after, at the offset Connect stored (None: Connect did not answer)."""

    at: float  # time.monotonic()
    current_lsn: int
    confirmed_flush_lsn: int
    restart_lsn: int
    offset: dict[str, int] | None

    @property
    def retained(self) -> int:
        """WAL the slot keeps the server from removing: pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)."""
        return self.current_lsn - self.restart_lsn


def flushed_lsn(offset: dict[str, int]) -> int:
    """The offset's LSN Debezium confirms to the slot (``commitOffset``: the commit LSN, else the last)."""
    return offset.get("lsn_commit") or offset.get("lsn_proc") or offset["lsn"]


def resume_lsn(offset: dict[str, int]) -> int:
    """Where a restarted task resumes; its start-up check wants the slot's restart_lsn at or before it."""
    return offset.get("lsn_proc") or offset["lsn"]


def lsn_text(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def stored_offset(settings: Settings) -> dict[str, int] | None:
    """The Debezium task's committed offset (``GET /connectors/…/offsets``), or None if Connect is away."""
    try:
        response = httpx.get(f"{settings.connect.url}/connectors/{CONNECTOR}/offsets", timeout=5)
    except httpx.HTTPError:
        return None
    if response.status_code != 200:
        return None
    for entry in response.json().get("offsets", []):
        offset = entry.get("offset") or {}
        if isinstance(offset.get("lsn"), int):
            return {k: v for k, v in offset.items() if k.startswith("lsn") and isinstance(v, int)}
    return None


@dataclass
class SlotWatch:
    """Samples the slot and the stored offset every second in a thread, for as long as a test runs."""

    quiet: QuietStack
    samples: list[Sample] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> SlotWatch:
        self._thread = threading.Thread(target=self._run, name="slot-watch", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join()

    def _run(self) -> None:
        with self.quiet.superuser() as conn:
            while not self._stop.wait(1.0):
                row = conn.execute(
                    "select (pg_current_wal_lsn() - '0/0')::bigint, (confirmed_flush_lsn - '0/0')::bigint,"
                    " (restart_lsn - '0/0')::bigint from pg_replication_slots where slot_name = %s",
                    [SLOT],
                ).fetchone()
                if row is None:
                    continue
                # The slot first, then the offset: offsets only grow, so a slot confirmed at most up to
                # the stored offset can never look ahead of one read after it.
                current, confirmed, restart_lsn = row
                offset = stored_offset(self.quiet.settings)
                self.samples.append(Sample(time.monotonic(), current, confirmed, restart_lsn, offset))

    def since(self, at: float) -> list[Sample]:
        return [s for s in self.samples if s.at >= at]

    def confirmed_ahead_of_offset(self) -> list[str]:
        """Each time the slot was confirmed past the stored offset, or restart_lsn past the resume point."""
        bad = []
        for s in self.samples:
            if s.offset is None:
                continue
            if s.confirmed_flush_lsn > flushed_lsn(s.offset):
                bad.append(
                    f"confirmed_flush_lsn {lsn_text(s.confirmed_flush_lsn)} > stored offset "
                    f"{lsn_text(flushed_lsn(s.offset))}"
                )
            if s.restart_lsn > resume_lsn(s.offset):
                bad.append(
                    f"restart_lsn {lsn_text(s.restart_lsn)} > stored resume LSN "
                    f"{lsn_text(resume_lsn(s.offset))}"
                )
        return bad


def beat_at(quiet: QuietStack) -> datetime | None:
    with quiet.superuser() as conn:
        row = conn.execute("select beat_at from shop.debezium_heartbeat where id = 1").fetchone()
    return row[0] if row else None


# --- WAL in another database of the same cluster -------------------------------------------------------


@dataclass
class Neighbour:
    """Writes incompressible rows into another database of the cluster, in a thread, until stopped."""

    quiet: QuietStack
    pause_s: float = 0.5
    bytes_written: int = 0
    errors: list[BaseException] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Neighbour:
        with self.quiet.superuser(OTHER_DATABASE) as conn:
            conn.execute("create table if not exists ballast (id bigserial primary key, payload bytea)")
            conn.execute("alter table ballast alter column payload set storage external")  # no compression
        self._thread = threading.Thread(target=self._run, name="neighbour-writer", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join()
        assert not self.errors, f"the other database's writer failed: {self.errors[0]!r}"

    def _run(self) -> None:
        try:
            with self.quiet.superuser(OTHER_DATABASE) as conn:
                rows = 0
                while not self._stop.wait(self.pause_s):
                    conn.execute(
                        "insert into ballast (payload) select decode(string_agg(md5(random()::text), ''),"
                        " 'hex') from generate_series(1, %s)",
                        [BALLAST_BYTES // 16],
                    )
                    self.bytes_written += BALLAST_BYTES
                    rows += 1
                    if rows % 40 == 0:
                        conn.execute("truncate ballast")  # WAL, not disk, is what this writer is for
        except BaseException as exc:  # reported by __exit__ in the test's thread
            self.errors.append(exc)


# --- restarts ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recovery:
    what: str
    restart_s: float  # the restart itself: supervisord stopped and started the server (or respawned it)
    running_after_s: float  # from the server's new start to connector and task RUNNING again
    streaming_after_s: float  # … to a heartbeat written and an offset stored after the restart


def connector_state(settings: Settings) -> tuple[str, list[tuple[str, str]]] | None:
    """(connector state, [(task state, trace)]), or None while Connect does not answer."""
    try:
        response = httpx.get(f"{settings.connect.url}/connectors/{CONNECTOR}/status", timeout=5)
    except httpx.HTTPError:
        return None
    if response.status_code != 200:
        return None
    body = response.json()
    tasks = [(t["state"], t.get("trace", "")) for t in body.get("tasks", [])]
    return body["connector"]["state"], tasks


def wait_until_streaming(
    quiet: QuietStack, watch: SlotWatch, what: str, began: float, offset_before: int
) -> tuple[float, float]:
    """Wait, without ever restarting anything, until the task runs and stores offsets past ``offset_before``.

    A task may report RUNNING for a moment before its start-up check fails it, so RUNNING alone proves
    nothing: the proof is a heartbeat written after the restart and an offset stored beyond the one
    before it, with the task still RUNNING. Returns when it was RUNNING and when streaming (monotonic).
    """
    beat_before = beat_at(quiet)
    running_at: float | None = None
    deadline = began + DEADLINE_S
    while True:
        state = connector_state(quiet.settings)
        if state is not None:
            connector, tasks = state
            failed = [trace for task_state, trace in tasks if task_state == "FAILED"]
            assert connector != "FAILED" and not failed, (
                f"after {what} the connector failed by itself: {connector}; "
                + "\n".join(trace.splitlines()[0] for trace in failed if trace)
            )
            running = connector == "RUNNING" and bool(tasks) and all(t == "RUNNING" for t, _ in tasks)
            if running and running_at is None:
                running_at = time.monotonic()
            latest = watch.samples[-1] if watch.samples else None
            beat = beat_at(quiet)
            if (
                running
                and latest is not None
                and latest.offset is not None
                and latest.at > began
                and flushed_lsn(latest.offset) > offset_before
                and beat is not None
                and (beat_before is None or beat > beat_before)
            ):
                assert running_at is not None
                return running_at, time.monotonic()
        assert time.monotonic() < deadline, (
            f"{DEADLINE_S:.0f} s after {what} the connector does not stream again "
            f"(status {state}, heartbeat {beat_at(quiet)} vs {beat_before} before)"
        )
        time.sleep(0.5)


def restart(quiet: QuietStack, watch: SlotWatch, what: str, action: Callable[[], None]) -> Recovery:
    offset = stored_offset(quiet.settings)
    assert offset is not None, f"no stored offset before {what}"
    began = time.monotonic()
    action()
    restarted = time.monotonic()
    running, streaming = wait_until_streaming(quiet, watch, what, began, flushed_lsn(offset))
    recovery = Recovery(what, restarted - began, max(0.0, running - restarted), streaming - restarted)
    print(
        f"{what}: restarted in {recovery.restart_s:.1f} s, then RUNNING after "
        f"{recovery.running_after_s:.1f} s and streaming (heartbeat + new offset) after "
        f"{recovery.streaming_after_s:.1f} s"
    )
    return recovery


def stop_start(quiet: QuietStack, program: str) -> Callable[[], None]:
    def action() -> None:
        quiet.stack.supervisor.stop(program)
        quiet.stack.supervisor.start(program)

    return action


def kill_9(quiet: QuietStack, program: str) -> Callable[[], None]:
    """SIGKILL the server; supervisord restarts it (autorestart), nothing in the test does."""

    def action() -> None:
        before = quiet.stack.supervisor.info(program)
        assert before.state == "RUNNING" and before.pid, before
        os.kill(before.pid, signal.SIGKILL)
        deadline = time.monotonic() + DEADLINE_S
        while True:
            now = quiet.stack.supervisor.info(program)
            if now.state == "RUNNING" and now.pid and now.pid != before.pid:
                return
            assert time.monotonic() < deadline, f"supervisord did not restart {program}: {now}"
            time.sleep(0.2)

    return action


def quiet_for(seconds: float) -> None:
    """Nothing is written to the shop's tables meanwhile; the neighbour keeps writing WAL."""
    time.sleep(seconds)


# --- the tests --------------------------------------------------------------------------------------


def test_restarts_after_a_quiet_period_resume_by_themselves(quiet_stack: QuietStack) -> None:
    before = write_orders(quiet_stack, 20, first_ref=1)
    read_changes(quiet_stack, before)  # captured before the shop goes quiet

    recoveries = []
    with SlotWatch(quiet_stack) as watch, Neighbour(quiet_stack) as neighbour:
        quiet_began, beat_began = time.monotonic(), beat_at(quiet_stack)
        quiet_for(QUIET_S)
        beat_quiet = beat_at(quiet_stack)
        assert beat_quiet is not None and (beat_began is None or beat_quiet > beat_began), (
            f"the heartbeat row did not move during the quiet period ({beat_began} → {beat_quiet})"
        )
        stop_connect = stop_start(quiet_stack, "connect")
        recoveries.append(restart(quiet_stack, watch, "Connect stop/start", stop_connect))
        quiet_for(30)
        recoveries.append(restart(quiet_stack, watch, "Connect kill -9", kill_9(quiet_stack, "connect")))
        quiet_for(30)
        recoveries.append(restart(quiet_stack, watch, "broker stop/start", stop_start(quiet_stack, "kafka")))
        quiet_for(30)
        quiet_s = time.monotonic() - quiet_began
        neighbour_mib = neighbour.bytes_written / MiB

    after = write_orders(quiet_stack, 20, first_ref=1001)
    seen = read_changes(quiet_stack, before | after)

    print(
        f"shop quiet for {quiet_s:.0f} s while {neighbour_mib:.0f} MiB went into {OTHER_DATABASE}; "
        f"{len(seen[ORDERS_TOPIC])} order records for {len(before) + len(after)} orders, "
        f"{len(seen[ITEMS_TOPIC])} line records; {len(watch.samples)} slot samples"
    )
    assert neighbour_mib > 50, "the other database wrote too little WAL to prove anything"
    assert [r.what for r in recoveries] == ["Connect stop/start", "Connect kill -9", "broker stop/start"]
    ahead = watch.confirmed_ahead_of_offset()
    assert ahead == [], f"the slot passed the stored offset {len(ahead)} times, first: {ahead[0]}"
    assert sum(s.offset is not None for s in watch.samples) > QUIET_S, "too few samples with a stored offset"
    statuses = {v["__op"] for v in seen[ORDERS_TOPIC]}
    assert statuses <= {"c", "r"}, statuses  # inserts (and a snapshot's reads), nothing else happened


def test_retained_wal_stays_bounded_while_the_shop_is_quiet(quiet_stack: QuietStack) -> None:
    write_orders(quiet_stack, 3, first_ref=5001)
    with SlotWatch(quiet_stack) as watch, Neighbour(quiet_stack, pause_s=0.25) as neighbour:
        began, beat_began = time.monotonic(), beat_at(quiet_stack)
        quiet_for(2 * QUIET_S)
        beat_end = beat_at(quiet_stack)
    samples = watch.since(began)
    assert len(samples) > QUIET_S, f"only {len(samples)} samples"
    written = samples[-1].current_lsn - samples[0].current_lsn
    retained = [s.retained for s in samples]
    drops = [a - b for a, b in itertools.pairwise(retained) if b < a - MiB]
    # Past the first minute, the slot keeps at most the WAL of the last 45 s (one heartbeat, 10 s, plus
    # Connect's offset flush, 5 s, plus PostgreSQL's running-transactions record, every 15 s, that lets
    # restart_lsn move, plus margin) and one 16 MiB segment: bounded by time, not by the WAL written.
    over = []
    for s in samples:
        if s.at - began < 60:
            continue
        window = [p for p in samples if s.at - 45 <= p.at <= s.at]
        recent = s.current_lsn - window[0].current_lsn
        if s.retained > recent + 16 * MiB:
            over.append(f"at {s.at - began:.0f} s: {s.retained / MiB:.1f} MiB > {recent / MiB:.1f} MiB + 16")
    print(
        f"{written / MiB:.0f} MiB of WAL in {samples[-1].at - began:.0f} s "
        f"({neighbour.bytes_written / MiB:.0f} MiB of rows); slot retained max "
        f"{max(retained) / MiB:.1f} MiB, last {retained[-1] / MiB:.1f} MiB; {len(drops)} drops "
        f"(largest {max(drops, default=0) / MiB:.1f} MiB)"
    )
    assert written > 100 * MiB, f"only {written / MiB:.0f} MiB of WAL: too little to prove anything"
    assert beat_end is not None and (beat_began is None or beat_end > beat_began), "the heartbeat did not run"
    assert len(drops) >= 3, f"retained WAL never dropped after heartbeats: {[r // MiB for r in retained]}"
    assert over == [], f"the slot held WAL beyond the last 45 s: {over[:5]}"
    assert max(retained) < written / 2, "the slot held on to most of the WAL written"
