"""Chaos soak: the always-on pipeline under kill -9, poison and quiet periods, then reconciled to the cent.

On a second stack (own state directory and ports, shared downloads) it runs `omnistream up` with the
simulators at a steady rate. A chaos loop then injects, at random intervals, one fault at a time: kill -9
of the sink, the email producer, the master-data producer, Kafka Connect, the Kafka broker, GreenMail or
PostgreSQL (each must come back by itself); a poison email (an amount the schema cannot hold, a record
larger than the broker allows, a negative unit price, malformed MIME); or a quiet period on the shop's
tables. Every kind happens at least once, in a seeded random order. GreenMail keeps mail in memory, so
before it is killed the email simulator pauses and the producer catches up (what a crashed mail server
held unread is gone, as with any mail server that lost its disk).

Afterwards it checks that status is healthy, drains (`omnistream down --drain`) and checks that the marts
equal the simulators' ground truth to the cent, that every poison email is in the DLQ with a reason, and
that every landed offset is there exactly once. It prints the figures (and `--json` them) and exits 1 if
any check failed.

    PYTHONPATH=. .venv/bin/python bench/soak.py [--minutes 10] [--seed 7] [--port-offset 900] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import random
import signal
import smtplib
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import duckdb
from confluent_kafka import Consumer, KafkaError, TopicPartition
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext

from omnistream.inspect.records import record_counts
from omnistream.scheduler.client import AirflowClient
from omnistream.settings import Settings, get_settings
from omnistream.sink.layout import overlapping, parse_file_name
from omnistream.stack.manager import Stack
from omnistream.topics import STORE_ORDERS, dlq
from tests.support.second_stack import as_environment, second_stack_settings

KILLS = ("sink", "email-producer", "masterdata-producer", "connect", "kafka", "greenmail", "postgres")
POISON = ("decimal-overflow", "too-large", "negative-price", "malformed-mime")
FAULTS = (*(f"kill:{name}" for name in KILLS), *(f"poison:{kind}" for kind in POISON), "quiet")


@dataclass
class SoakReport:
    minutes: float = 0.0
    # A plain dict, not a Counter: dataclasses.asdict rebuilds a Counter from (key, value) pairs as keys.
    faults: dict[str, int] = field(default_factory=dict)
    recovery_s: dict[str, float] = field(default_factory=dict)  # worst per killed service
    max_lag_records: int = 0
    records_landed: int = 0
    dead_letters: int = 0
    poison_sent: dict[str, str] = field(default_factory=dict)  # Message-ID → kind
    poison_in_dlq: dict[str, str] = field(default_factory=dict)  # Message-ID → reason
    restarts_shown: dict[str, int] = field(default_factory=dict)  # by `omnistream status`, per killed service
    dbt_runs_succeeded: int = 0  # scheduled omnistream_dbt runs Airflow reports as successful
    healthy_before_drain: bool = False
    reconciliation: dict[str, Any] = field(default_factory=dict)
    offsets_exactly_once: bool = False
    failures: list[str] = field(default_factory=list)


class Soak:
    def __init__(self, settings: Settings, seed: int, say: Callable[[str], None]) -> None:
        self.settings, self.say = settings, say
        self.random = random.Random(seed)
        self.env = {**os.environ, **as_environment(settings)}
        self.stack = Stack(settings)
        self.report = SoakReport()

    def omnistream(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "omnistream", *args],
            env=self.env,
            capture_output=True,
            text=True,
            check=False,
        )

    def status(self) -> dict[str, Any]:
        result = self.omnistream("status", "--json")
        return {"exit": result.returncode, **json.loads(result.stdout or "{}")}

    def wait(self, what: str, check: Callable[[], bool], timeout_s: float) -> float:
        began = time.monotonic()
        while True:
            with contextlib.suppress(Exception):  # a server on its way back answers with errors first
                if check():
                    return time.monotonic() - began
            if time.monotonic() - began > timeout_s:
                self.report.failures.append(f"{what}: not within {timeout_s:.0f} s")
                return time.monotonic() - began
            time.sleep(1.0)

    # --- faults -------------------------------------------------------------------------------------

    def kill(self, name: str) -> None:
        sv = self.stack.supervisor
        if name == "greenmail":
            sv.stop("emails-simulator")
            self.wait("email producer caught up before GreenMail's kill", self.mailbox_drained, 300)
        before = sv.info(name).pid
        os.kill(before, signal.SIGKILL)
        began = time.monotonic()
        self.wait(
            f"{name} restarted", lambda: sv.info(name).state == "RUNNING" and sv.info(name).pid != before, 300
        )
        self.wait(f"{name} serving after kill -9", lambda: self.serving(name), 300)
        seconds = time.monotonic() - began
        self.report.recovery_s[name] = max(seconds, self.report.recovery_s.get(name, 0.0))
        if name == "greenmail":
            sv.start("emails-simulator")
        self.say(f"  kill -9 {name}: back in {seconds:.1f} s")

    def serving(self, name: str) -> bool:
        report = self.status()
        if name == "connect":
            return any(
                c["name"] == "onlinedb-postgres" and set(c["tasks"].values()) == {"RUNNING"}
                for c in report["connectors"]
            )
        row = next(p for p in report["processes"] if p["name"] == name)
        return bool(row["state"] == "RUNNING" and row.get("answers", True))

    def mailbox_drained(self) -> bool:
        counts = record_counts(self.settings, [STORE_ORDERS, dlq(STORE_ORDERS)])
        produced = sum(n for n, _ in counts.values())
        return produced == self.emails_accepted() + len(self.report.poison_sent)

    def emails_accepted(self) -> int:
        runs = self.settings.stack.state_dir / "simulators" / "emails" / "runs"
        count = 0
        for journal in runs.glob("*.jsonl"):
            for line in journal.read_text().splitlines():
                with contextlib.suppress(json.JSONDecodeError):  # the line being written
                    count += json.loads(line).get("type") == "email"
        return count

    def poison(self, kind: str) -> None:
        m = self.settings.mail
        message = poison_email(kind, m.domain, 900_000 + len(self.report.poison_sent))
        with smtplib.SMTP(m.host, m.smtp_port, timeout=30) as smtp:
            smtp.sendmail(message["From"], [m.mailbox_address], message.as_bytes())
        self.report.poison_sent[message["Message-ID"]] = kind
        self.say(f"  poison email: {kind}")

    def quiet(self, seconds: float) -> None:
        self.stack.supervisor.stop("orders-simulator")
        self.say(f"  quiet shop tables for {seconds:.0f} s")
        time.sleep(seconds)
        self.stack.supervisor.start("orders-simulator")

    def sample_lag(self) -> None:
        with contextlib.suppress(Exception):
            lag = sum(
                row["lag"] for row in self.status()["lag"] if row["group"] == self.settings.landing.group_id
            )
            self.report.max_lag_records = max(self.report.max_lag_records, lag)

    # --- the run ------------------------------------------------------------------------------------

    def run(self, minutes: float) -> SoakReport:
        up = self.omnistream("up")
        if up.returncode != 0:
            self.report.failures.append(f"omnistream up failed: {(up.stdout + up.stderr)[-1500:]}")
            return self.report
        self.wait("healthy after up", lambda: self.status()["exit"] == 0, 600)
        began = time.monotonic()
        plan = list(FAULTS)
        self.random.shuffle(plan)  # every kind once, then at random
        for fault in itertools.chain(plan, iter(lambda: self.random.choice(FAULTS), None)):
            if time.monotonic() - began > minutes * 60 and not (set(FAULTS) - set(self.report.faults)):
                break
            time.sleep(self.random.uniform(3, 12))
            self.sample_lag()
            kind, _, target = fault.partition(":")
            if kind == "kill":
                self.kill(target)
            elif kind == "poison":
                self.poison(target)
            else:
                self.quiet(60)
            self.report.faults[fault] = self.report.faults.get(fault, 0) + 1
        self.report.minutes = (time.monotonic() - began) / 60
        self.say("quiescing: waiting for a healthy status and a successful dbt run, then down --drain")
        airflow = AirflowClient(self.settings)
        self.wait(
            "a successful omnistream_dbt run", lambda: airflow.last_run("omnistream_dbt") is not None, 600
        )
        self.report.dbt_runs_succeeded = len(airflow.runs("omnistream_dbt", limit=100, state="success"))
        self.wait("healthy before the drain", lambda: self.status()["exit"] == 0, 600)
        final = self.status()
        self.report.healthy_before_drain = final["exit"] == 0
        self.report.dead_letters = sum(final.get("dead_letters", {}).values())
        restarts = {p["name"]: p["restarts"] + p["revived_by_watchdog"] for p in final.get("processes", [])}
        for name in KILLS:
            kills = self.report.faults.get(f"kill:{name}", 0)
            self.report.restarts_shown[name] = restarts.get(name, 0)
            if restarts.get(name, 0) < kills:
                self.report.failures.append(
                    f"{name}: killed {kills} times, status shows {restarts.get(name)}"
                )
        down = self.omnistream("down", "--drain")
        if down.returncode != 0:
            self.report.failures.append(f"down --drain failed: {(down.stdout + down.stderr)[-1500:]}")
            return self.report
        reconciled = self.omnistream("reconcile", "--json")
        self.report.reconciliation = json.loads(reconciled.stdout or "{}")
        if reconciled.returncode != 0:
            self.report.failures.append("the marts do not equal the ground truth")
        self.check_landing()
        return self.report

    def check_landing(self) -> None:
        landing = self.settings.stack.state_dir / "landing"
        files: dict[tuple[str, int], list[Any]] = {}
        for path in landing.glob("*/partition=*/*.parquet"):
            landed = parse_file_name(path.name)
            if landed is not None:
                files.setdefault((landed.topic, landed.partition), []).append(landed)
        tiled = all(
            not overlapping(group) and all(b.start == a.end + 1 for a, b in itertools.pairwise(sorted(group)))
            for group in files.values()
        )
        with duckdb.connect() as con:
            row = con.execute(
                "select count(*), count(distinct (record_metadata.topic, record_metadata.partition,"
                " record_metadata.offset)) from read_parquet(?, union_by_name=true)",
                [str(landing / "*" / "partition=*" / "*.parquet")],
            ).fetchone()
        self.report.records_landed = row[0] if row else 0
        self.report.offsets_exactly_once = bool(tiled and row and row[0] == row[1])
        if not self.report.offsets_exactly_once:
            self.report.failures.append(f"landing: files tile {tiled}, records/distinct offsets {row}")

    def check_poison(self) -> None:
        """Every poison email is in the DLQ, with its reason (read after the drain, servers still up)."""
        found = read_dead_letters(self.settings, dlq(STORE_ORDERS))
        for message_id in self.report.poison_sent:
            reason = next((r for payload, r in found if message_id.encode() in payload), None)
            if reason is None:
                self.report.failures.append(f"poison {message_id} is not in the DLQ")
            else:
                self.report.poison_in_dlq[message_id] = reason


def read_dead_letters(settings: Settings, topic: str) -> list[tuple[bytes, str]]:
    """(payload, reason) of every dead letter in ``topic``."""
    deserialize = AvroDeserializer(SchemaRegistryClient({"url": settings.registry.url}))
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka.bootstrap_servers,
            "group.id": f"soak-reader-{os.getpid()}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "isolation.level": "read_committed",
        }
    )
    out: list[tuple[bytes, str]] = []
    try:
        partitions = consumer.list_topics(topic, timeout=30).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        pending = set(partitions)
        deadline = time.monotonic() + 120
        while pending and time.monotonic() < deadline:
            msg = consumer.poll(1.0)
            if msg is None:
                continue
            error = msg.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    pending.discard(msg.partition())
                continue
            letter = deserialize(msg.value(), SerializationContext(topic, MessageField.VALUE))
            out.append((letter.get("payload") or b"", letter.get("reason", "")))
    finally:
        consumer.close()
    return out


def poison_email(kind: str, domain: str, number: int) -> EmailMessage:
    """A confirmation email the producer must reject (dead-letter) without stopping."""
    message = EmailMessage()
    message["From"] = f"s001@{domain}"
    message["To"] = f"confirmations@{domain}"
    message["Subject"] = f"Order confirmation S001-{number:06d}"
    message["Message-ID"] = f"<soak-{kind}-{number}@{domain}>"
    message["Date"] = "Tue, 01 Dec 2026 10:00:00 +0100"
    price, lines = "12,99 €", 1
    if kind == "decimal-overflow":
        price = "99.999.999.999,99 €"
    elif kind == "negative-price":
        price = "-11,90 €"
    elif kind == "too-large":
        lines = 60_000
    header = (
        "omnistream Berlin\nOrder confirmation\n\nStore: S001 omnistream Berlin\n"
        f"Order number: S001-{number:06d}\n"
        "Date: 2026-12-01T10:00:00+01:00\nCustomer: walk-in\nPayment: card\nCashier: Soak T.\n\n"
        "SKU       | Item             | Qty | Unit price | Line total\n"
    )
    row = f"SKU-00012 | Amet apparel 12  |   1 | {price:>10} | {price:>10}\n"
    body = header + row * lines + f"\nSubtotal: {price}\nTax (19%): 0,00 €\nTotal: {price}\n"
    if kind == "malformed-mime":
        message["Content-Type"] = 'multipart/alternative; boundary="never-closed"'
        message.set_payload(
            "--never-closed\nContent-Type: text/plain; charset=utf-8\n"
            "Content-Transfer-Encoding: base64\n\n@@@"
        )
    else:
        message.set_content(body)
    return message


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--port-offset", type=int, default=900)
    parser.add_argument("--json", action="store_true", help="Print the report as JSON.")
    parser.add_argument("--keep", action="store_true", help="Leave the stack's state directory for a look.")
    args = parser.parse_args()
    say = (lambda _: None) if args.json else print
    tmp = tempfile.mkdtemp(prefix="omnistream-soak-")
    settings = second_stack_settings(get_settings(), Path(tmp) / "state", args.port_offset)
    settings.pipeline.order_rate, settings.pipeline.email_rate = 4.0, 2.0
    settings.pipeline.masterdata_every = "30s"
    settings.pipeline.history_rows = 20_000
    settings.airflow.dbt_every_minutes = 2.0
    soak = Soak(settings, args.seed, say)
    report = soak.report
    try:
        soak.run(args.minutes)
        # The poison check reads the DLQ from Kafka: bring the servers back (no pipeline) to read it.
        soak.stack.up(progress=lambda _: None)
        soak.check_poison()
    except Exception as exc:  # the report is printed whatever happened: a crash is a failure in it
        report.failures.append(f"the soak itself failed: {type(exc).__name__}: {exc}")
    finally:
        soak.stack.down(purge=not args.keep)
    data = asdict(report)
    if args.json:
        print(json.dumps(data, indent=2, default=str))
    else:
        faults = ", ".join(f"{k} {v}" for k, v in sorted(report.faults.items()))
        print(f"minutes run: {report.minutes:.1f}; faults: {faults}")
        print(f"records landed: {report.records_landed:,}; dead letters: {report.dead_letters}")
        print(f"max consumer lag (landing sink): {report.max_lag_records:,} records")
        worst = max(report.recovery_s.items(), key=lambda kv: kv[1], default=("-", 0.0))
        print(f"worst recovery after kill -9: {worst[0]} {worst[1]:.1f} s; all: {report.recovery_s}")
        print(f"poison in the DLQ with a reason: {len(report.poison_in_dlq)} of {len(report.poison_sent)}")
        print(f"reconciliation: {report.reconciliation.get('summary', report.reconciliation)}")
        print(f"every landed offset exactly once: {report.offsets_exactly_once}")
        print("PASSED" if not report.failures else "FAILED:\n  " + "\n  ".join(report.failures))
    sys.exit(1 if report.failures else 0)


if __name__ == "__main__":
    main()
