"""The email producer against the real stack: GreenMail (IMAP), Kafka (transactions), the schema registry.

Each test has its own mailbox (GreenMail's REST API), its own topics, subjects and transactional.id. Records
are read back the way the warehouse's loaders read them: ``read_committed``, decoded by a generic
``AvroDeserializer`` that knows nothing but the registry.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException
from imapclient import IMAPClient
from pydantic import SecretStr

from omnistream.kafka.transactions import Fenced
from omnistream.manifest import read_totals
from omnistream.settings import MailSettings, Settings
from omnistream.stack.versions import PROJECT_ROOT
from producers.emails.imap import ImapUnavailable, MailboxError, MailboxReader
from producers.emails.producer import EmailProducer, EmailTopics, ProducerOptions
from simulators.email_sender import MANIFEST_NAME, EmailsConfig, send_emails
from tests.support.email import read_topics, wait_for_mail

pytestmark = pytest.mark.integration


# -- fixtures and helpers --------------------------------------------------------------------------------


def new_producer(
    settings: Settings, mail: MailSettings, topics: EmailTopics, transactional_id: str, **options: Any
) -> EmailProducer:
    return EmailProducer(
        settings, mail, topics, ProducerOptions(transactional_id=transactional_id, **options)
    )


def store_day_totals(orders: list[dict[str, Any]]) -> dict[tuple[str, str | None, str], dict[str, Any]]:
    """Manifest-shaped totals of the first record per order number (re-sends dropped, as downstream does)."""
    first: dict[str, dict[str, Any]] = {}
    for order in sorted(orders, key=lambda o: (o["uidvalidity"], o["imap_uid"])):
        first.setdefault(order["order_number"], order)
    out: dict[tuple[str, str | None, str], dict[str, Any]] = {}
    for order in first.values():
        key = ("in_store", order["store_id"], order["ordered_at"].astimezone(UTC).date().isoformat())
        row = out.setdefault(key, {"orders": 0, "lines": 0, "net": Decimal("0.00"), "tax": Decimal("0.00")})
        row["orders"] += 1
        row["lines"] += len(order["lines"])
        row["net"] += order["subtotal"]
        row["tax"] += order["tax"]
    for row in out.values():
        row["gross"] = row["net"] + row["tax"]
    return out


# -- exactly once, reconciled with the simulator ---------------------------------------------------------


def test_every_email_arrives_exactly_once_and_reconciles_to_the_cent(
    stack_settings: Settings, mailbox: MailSettings, topics: EmailTopics, unique: str, tmp_path: Path
) -> None:
    count = 96
    run = send_emails(mailbox, EmailsConfig(seed=31, rate=0, count=count, anomaly_share=0.25))
    manifest = run.finish().write(tmp_path / MANIFEST_NAME)
    facts = json.loads(manifest.read_text())["facts"]
    wait_for_mail(mailbox, count)

    reports = []
    with new_producer(stack_settings, mailbox, topics, f"test-{unique}", batch_size=25) as producer:
        producer.on_batch = lambda report, _progress: reports.append(report)
        progress = producer.drain()
    assert (progress.produced, progress.dead_lettered, progress.last_uid) == (
        count - facts["malformed_count"],
        facts["malformed_count"],
        count,
    )
    assert [(r.first_uid, r.last_uid) for r in reports] == [(1, 25), (26, 50), (51, 75), (76, 96)]

    records = read_topics(stack_settings, [topics.orders, topics.dead_letters, topics.checkpoints])
    orders = [r["value"] for r in records[topics.orders]]
    letters = [r["value"] for r in records[topics.dead_letters]]

    # Every email exactly once: as an order or as a dead letter, never both, never twice.
    order_ids = [o["message_id"] for o in orders]
    letter_ids = [d["source_id"] for d in letters]
    assert len(orders) + len(letters) == count == facts["emails_sent"]
    assert sorted(order_ids + letter_ids) == sorted(m["message_id"] for m in facts["messages"])
    assert len(set(order_ids + letter_ids)) == count

    # Re-sent confirmations are there as separate records with their own Message-IDs, same order number.
    assert len(orders) - len({o["order_number"] for o in orders}) == facts["duplicates"]
    for dup in facts["anomalies"]["duplicate"]:
        same = [o for o in orders if o["order_number"] == dup["order_number"]]
        assert {o["message_id"] for o in same} >= {dup["message_id"], dup["original_message_id"]}

    # The orders add up to the manifest, per store and UTC day, to the cent.
    assert store_day_totals(orders) == read_totals(manifest)

    # Keys, provenance and types as the warehouse sees them through the registry alone.
    for record in records[topics.orders]:
        order = record["value"]
        assert record["key"] == order["order_number"].encode()
        assert order["mailbox"] == f"imap://{mailbox.mailbox_user}@{mailbox.host}:{mailbox.imap_port}/INBOX"
        assert isinstance(order["total"], Decimal) and order["total"] == order["subtotal"] + order["tax"]
        assert order["ordered_at"].tzinfo is not None
        assert datetime.fromisoformat(order["ordered_at_local"]) == order["ordered_at"]
        assert order["currency"] == "EUR"
    assert sorted(
        o["imap_uid"] for o in orders + [{"imap_uid": int(d["attributes"]["imap_uid"])} for d in letters]
    ) == list(range(1, count + 1))

    # Malformed emails are dead letters with the reason, their raw bytes and where they came from.
    malformed = {m["message_id"]: m for m in facts["malformed"]}
    assert set(letter_ids) == set(malformed)
    for record in records[topics.dead_letters]:
        letter = record["value"]
        kind = malformed[letter["source_id"]]["kind"]
        assert record["key"] == letter["source_id"].encode()
        assert letter["topic"] == topics.orders
        assert letter["error_class"] == "producers.emails.parser.ParseError"
        assert letter["key"] == malformed[letter["source_id"]]["order_number"].encode()
        if kind == "missing_total":
            assert letter["reason"] == "missing field(s) in the text/plain part: Total"
        else:
            assert "is garbled: cut off after 4 of 5 columns" in letter["reason"]
            assert "U+FFFD" in letter["reason"]
        assert f"Message-ID: {letter['source_id']}".encode() in letter["payload"]
        assert letter["attributes"]["uidvalidity"] == str(orders[0]["uidvalidity"])

    # The checkpoint, committed with the last batch.
    checkpoints = [r["value"] for r in records[topics.checkpoints]]
    assert [(c["last_uid"], c["sequence"]) for c in checkpoints] == [(25, 1), (50, 2), (75, 3), (96, 4)]
    assert {c["uidvalidity"] for c in checkpoints} == {orders[0]["uidvalidity"]}

    # A second run finds nothing new and writes nothing.
    with new_producer(stack_settings, mailbox, topics, f"test-{unique}", batch_size=25) as again:
        assert again.progress.last_uid == count
        assert again.drain().produced == 0
    after = read_topics(stack_settings, [topics.orders, topics.dead_letters], decode=False)
    assert [len(after[t]) for t in (topics.orders, topics.dead_letters)] == [len(orders), len(letters)]


# -- kill -9 in the middle of a batch ---------------------------------------------------------------------


def test_kill_9_in_the_middle_of_a_batch_loses_and_duplicates_nothing(
    stack_settings: Settings, mailbox: MailSettings, topics: EmailTopics, unique: str, tmp_path: Path
) -> None:
    count, batch = 60, 20
    run = send_emails(mailbox, EmailsConfig(seed=32, rate=0, count=count, anomaly_share=0.2))
    manifest = run.finish().write(tmp_path / MANIFEST_NAME)
    facts = json.loads(manifest.read_text())["facts"]
    wait_for_mail(mailbox, count)

    env = {
        **os.environ,
        "OMNISTREAM_MAIL__MAILBOX_USER": mailbox.mailbox_user,
        "OMNISTREAM_MAIL__MAILBOX_PASSWORD": mailbox.mailbox_password.get_secret_value(),
    }
    command = [
        *(sys.executable, "-m", "omnistream", "produce", "emails"),
        *("--batch-size", str(batch), "--topic", topics.orders, "--checkpoint-topic", topics.checkpoints),
        *("--transactional-id", f"test-{unique}"),
    ]
    log_path = tmp_path / "producer.log"
    # Paced at 10 emails/s, a batch of 20 keeps its transaction open for about two seconds: long enough to
    # be sure the kill lands inside one.
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [*command, "--follow", "--max-rate", "10"],
            cwd=PROJECT_ROOT,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        watcher = Consumer(
            {
                "bootstrap.servers": stack_settings.kafka.bootstrap_servers,
                "group.id": f"test-watch-{unique}",
                "enable.auto.commit": False,
                "isolation.level": "read_uncommitted",
                "auto.offset.reset": "earliest",
                "topic.metadata.refresh.interval.ms": 500,
            }
        )
        seen = 0
        deadline = time.monotonic() + 90
        try:
            watcher.subscribe([topics.orders, topics.dead_letters])
            # Kill once the second batch is a quarter written: the first one committed, the second open.
            while seen < batch + 5:
                assert time.monotonic() < deadline, log_path.read_text()
                assert process.poll() is None, f"the producer exited early:\n{log_path.read_text()}"
                msg = watcher.poll(0.2)
                if msg is None:
                    continue
                error = msg.error()
                if error is None:
                    seen += 1
                elif error.code() != KafkaError.UNKNOWN_TOPIC_OR_PART:  # topics not created yet
                    raise KafkaException(error)
        finally:
            watcher.close()
        os.kill(process.pid, signal.SIGKILL)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL

    # In the log: the first batch committed and records of the second one, in a transaction left open.
    uncommitted = read_topics(stack_settings, [topics.orders, topics.dead_letters], "read_uncommitted", False)
    committed = read_topics(stack_settings, [topics.orders, topics.dead_letters], decode=False)
    in_log = sum(len(v) for v in uncommitted.values())
    visible = sum(len(v) for v in committed.values())
    assert visible == batch < seen <= in_log < 2 * batch

    restart = subprocess.run(
        [*command, "--once"], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert restart.returncode == 0, restart.stdout + restart.stderr
    assert f"from UID {batch + 1} " in restart.stdout  # resumed after the committed batch

    records = read_topics(stack_settings, [topics.orders, topics.dead_letters])
    orders = [r["value"] for r in records[topics.orders]]
    letters = [r["value"] for r in records[topics.dead_letters]]
    ids = [o["message_id"] for o in orders] + [d["source_id"] for d in letters]
    assert len(ids) == len(set(ids)) == count
    assert set(ids) == {m["message_id"] for m in facts["messages"]}
    assert {d["source_id"] for d in letters} == {m["message_id"] for m in facts["malformed"]}
    assert store_day_totals(orders) == read_totals(manifest)
    # The aborted batch's records are still in the log; read_committed consumers never see them.
    in_log_after = sum(
        len(v)
        for v in read_topics(
            stack_settings, [topics.orders, topics.dead_letters], "read_uncommitted", False
        ).values()
    )
    assert in_log_after == count + (in_log - batch)


# -- --follow --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("use_idle", [True, False], ids=["idle", "polling"])
def test_follow_produces_new_mail_as_it_arrives(
    stack_settings: Settings, mailbox: MailSettings, topics: EmailTopics, unique: str, use_idle: bool
) -> None:
    stop = threading.Event()
    producer = new_producer(
        stack_settings, mailbox, topics, f"test-{unique}", use_idle=use_idle, poll_interval_s=0.5
    )
    failures: list[BaseException] = []

    def follow() -> None:
        try:
            with producer:
                producer.follow(stop, wait_s=30)
        except BaseException as exc:  # reported by the test below
            failures.append(exc)

    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    try:
        # Sent while the producer waits on an empty mailbox: it has to notice them by itself.
        send_emails(mailbox, EmailsConfig(seed=35, rate=0, count=4, anomaly_share=0.0))
        deadline = time.monotonic() + 60
        produced = 0
        while produced < 4:
            assert time.monotonic() < deadline, f"{produced} of 4 records after 60 s"
            assert not failures, failures
            produced = producer.progress.produced
            thread.join(timeout=0.2)
    finally:
        stop.set()
        thread.join(timeout=60)
    assert not thread.is_alive()
    assert not failures, failures
    records = read_topics(stack_settings, [topics.orders])
    assert sorted(r["value"]["imap_uid"] for r in records[topics.orders]) == [1, 2, 3, 4]


def test_cli_follow_stops_cleanly_on_sigterm(
    stack_settings: Settings, mailbox: MailSettings, topics: EmailTopics, unique: str, tmp_path: Path
) -> None:
    send_emails(mailbox, EmailsConfig(seed=36, rate=0, count=3, anomaly_share=0.0))
    wait_for_mail(mailbox, 3)
    env = {
        **os.environ,
        "OMNISTREAM_MAIL__MAILBOX_USER": mailbox.mailbox_user,
        "OMNISTREAM_MAIL__MAILBOX_PASSWORD": mailbox.mailbox_password.get_secret_value(),
    }
    command = [
        *(sys.executable, "-m", "omnistream", "produce", "emails", "--follow"),
        *("--topic", topics.orders, "--checkpoint-topic", topics.checkpoints),
        *("--transactional-id", f"test-{unique}"),
    ]
    out_path = tmp_path / "producer.out"
    with out_path.open("wb") as out:
        process = subprocess.Popen(command, cwd=PROJECT_ROOT, env=env, stdout=out, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 90
        while "UIDs 1-3: 3 produced" not in out_path.read_text():
            assert time.monotonic() < deadline, out_path.read_text()
            assert process.poll() is None, out_path.read_text()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=0.2)
        process.send_signal(signal.SIGTERM)  # while it waits for new mail
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)
    assert "done: 3 produced, 0 dead-lettered in 1 batches" in out_path.read_text()


# -- UIDVALIDITY ------------------------------------------------------------------------------------------


def test_a_new_uidvalidity_voids_the_checkpoint_and_rereads_the_folder(
    stack_settings: Settings,
    mailbox: MailSettings,
    topics: EmailTopics,
    unique: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    send_emails(mailbox, EmailsConfig(seed=33, rate=0, count=6, anomaly_share=0.0))
    inbox = wait_for_mail(mailbox, 6)
    folder = "Stores"
    with IMAPClient(mailbox.host, mailbox.imap_port, ssl=False, timeout=30) as imap:
        imap.login(mailbox.mailbox_user, mailbox.mailbox_password.get_secret_value())
        imap.create_folder(folder)
        imap.select_folder("INBOX")
        imap.copy(inbox[:4], folder)
        first_validity = imap.folder_status(folder, [b"UIDVALIDITY"])[b"UIDVALIDITY"]

    with new_producer(stack_settings, mailbox, topics, f"test-{unique}", folder=folder) as producer:
        assert producer.drain().produced == 4

    # The folder is replaced by a new one of the same name (moved aside and made again, as a migration
    # does): its UIDs start over at 1 under a new UIDVALIDITY, so UIDs 1 and 2 are new emails though the
    # checkpoint says UID 4 was read. (Moved, not deleted: GreenMail 2.1.8 drops the session that deletes a
    # folder another session had open.)
    with IMAPClient(mailbox.host, mailbox.imap_port, ssl=False, timeout=30) as imap:
        imap.login(mailbox.mailbox_user, mailbox.mailbox_password.get_secret_value())
        # GreenMail's UIDVALIDITY is the folder's creation time in seconds: a folder made again within the
        # same second would keep it, so make it again until it differs, as a real server's would.
        deadline = time.monotonic() + 10
        second_validity, moved = first_validity, 0
        while second_validity == first_validity and time.monotonic() < deadline:
            moved += 1
            imap.rename_folder(folder, f"{folder}-old-{moved}")
            imap.create_folder(folder)
            second_validity = imap.folder_status(folder, [b"UIDVALIDITY"])[b"UIDVALIDITY"]
        imap.select_folder("INBOX")
        imap.copy(inbox[4:], folder)
    assert second_validity != first_validity
    wait_for_mail(mailbox, 2, folder)

    with (
        caplog.at_level(logging.ERROR, logger="producers.emails.producer"),
        new_producer(stack_settings, mailbox, topics, f"test-{unique}", folder=folder) as producer,
    ):
        progress = producer.drain()
    assert (progress.produced, progress.last_uid, progress.uidvalidity) == (2, 2, second_validity)
    assert f"changed from {first_validity} to {second_validity}" in caplog.text
    assert "Reading the folder again from UID 1" in caplog.text

    records = read_topics(stack_settings, [topics.orders, topics.checkpoints])
    orders = [r["value"] for r in records[topics.orders]]
    assert sorted((o["uidvalidity"], o["imap_uid"]) for o in orders) == [
        *((first_validity, uid) for uid in (1, 2, 3, 4)),
        (second_validity, 1),
        (second_validity, 2),
    ]
    assert len({o["order_number"] for o in orders}) == 6  # the six emails, each once
    latest = records[topics.checkpoints][-1]["value"]
    assert (latest["uidvalidity"], latest["last_uid"], latest["sequence"]) == (second_validity, 2, 2)


def test_an_oversized_email_is_dead_lettered_truncated_without_holding_back_the_others(
    stack_settings: Settings, mailbox: MailSettings, topics: EmailTopics, unique: str
) -> None:
    send_emails(mailbox, EmailsConfig(seed=37, rate=0, count=2, anomaly_share=0.0))
    wait_for_mail(mailbox, 2)
    # Bigger than a Kafka record may be: a scanned receipt someone forwarded to the stores' mailbox.
    oversized = (
        b"Subject: receipt scan\r\nMessage-ID: <scan@example.com>\r\n\r\n" + b"x" * 1_500_000 + b"\r\n"
    )
    with IMAPClient(mailbox.host, mailbox.imap_port, ssl=False, timeout=30) as imap:
        imap.login(mailbox.mailbox_user, mailbox.mailbox_password.get_secret_value())
        imap.append("INBOX", oversized)
    send_emails(mailbox, EmailsConfig(seed=37, rate=0, count=1, anomaly_share=0.0, start_number=100))
    wait_for_mail(mailbox, 4)

    with new_producer(stack_settings, mailbox, topics, f"test-{unique}") as producer:
        progress = producer.drain()
    assert (progress.produced, progress.dead_lettered, progress.last_uid) == (3, 1, 4)
    records = read_topics(stack_settings, [topics.dead_letters])
    [letter] = [r["value"] for r in records[topics.dead_letters]]
    assert letter["source_id"] == "<scan@example.com>"
    assert letter["reason"].startswith("missing field(s) in the text/plain part: Store, Order number")
    assert len(letter["payload"]) == 512 * 1024
    assert oversized.startswith(letter["payload"])
    assert letter["attributes"]["payload_truncated"] == "true"
    assert int(letter["attributes"]["payload_size"]) >= len(oversized)
    assert letter["attributes"]["imap_uid"] == "3"


# -- one producer per mailbox -----------------------------------------------------------------------------


def test_a_second_instance_fences_the_first(
    stack_settings: Settings, mailbox: MailSettings, topics: EmailTopics, unique: str
) -> None:
    send_emails(mailbox, EmailsConfig(seed=34, rate=0, count=3, anomaly_share=0.0))
    wait_for_mail(mailbox, 3)
    first = new_producer(stack_settings, mailbox, topics, f"test-{unique}")
    first.start()
    try:
        with new_producer(stack_settings, mailbox, topics, f"test-{unique}") as second:
            with pytest.raises(Fenced, match="took over"):
                first.drain()
            assert second.drain().produced == 3
    finally:
        first.close()
    records = read_topics(stack_settings, [topics.orders], decode=False)
    assert len(records[topics.orders]) == 3


# -- IMAP outages and mistakes ----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


class TcpRelay:
    """Relays connections on a local port to the real server: the network path that comes back."""

    def __init__(self, port: int, target: tuple[str, int]) -> None:
        self._server = socket.create_server(("127.0.0.1", port))
        self._target = target
        self._sockets: list[socket.socket] = [self._server]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return  # closed
            upstream = socket.create_connection(self._target)
            self._sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            sink.close()

    def close(self) -> None:
        for s in self._sockets:
            s.close()


def test_an_imap_outage_is_retried_until_the_server_is_back(
    mailbox: MailSettings, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()  # nothing listens here yet: the server is "down"
    reader = MailboxReader(mailbox.model_copy(update={"imap_port": port}), retry_for_s=120)
    opened: dict[str, int] = {}
    thread = threading.Thread(target=lambda: opened.update(uidvalidity=reader.open()), daemon=True)
    with caplog.at_level(logging.WARNING, logger="producers.emails.imap"):
        thread.start()
        deadline = time.monotonic() + 30
        while "unavailable while connecting" not in caplog.text:
            assert time.monotonic() < deadline, "no retry was logged"
            thread.join(timeout=0.1)
        relay = TcpRelay(port, (mailbox.host, mailbox.imap_port))  # the server is back
        try:
            thread.join(timeout=60)
            assert not thread.is_alive()
            assert opened["uidvalidity"] > 0
            assert reader.new_uids(after=0) == []
        finally:
            reader.close()
            relay.close()
    assert "ConnectionRefusedError" in caplog.text
    assert "retry 1 in" in caplog.text


def test_an_imap_server_that_stays_away_fails_with_what_to_check(mailbox: MailSettings) -> None:
    reader = MailboxReader(mailbox.model_copy(update={"imap_port": free_port()}), retry_for_s=1.0)
    with pytest.raises(ImapUnavailable, match=r"unreachable for 1 s while connecting.*OMNISTREAM_MAIL__HOST"):
        reader.open()


def test_a_refused_login_is_not_retried_and_says_what_to_fix(mailbox: MailSettings) -> None:
    reader = MailboxReader(
        mailbox.model_copy(update={"mailbox_password": SecretStr("wrong")}), retry_for_s=60
    )
    with pytest.raises(MailboxError, match=r"login as .* refused.*OMNISTREAM_MAIL__MAILBOX_PASSWORD"):
        reader.open()
    with pytest.raises(MailboxError, match=r"cannot open folder 'Nowhere'"):
        MailboxReader(mailbox, folder="Nowhere").open()
