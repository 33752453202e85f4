"""What the email producer's tests share: a mailbox and topics of the test's own, mail put in and looked at
over IMAP, records read back as the warehouse's loaders read them, and the producer run as supervisord runs
it (``omnistream produce emails --follow`` in a process of its own).
"""

from __future__ import annotations

import contextlib
import email
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from email import policy
from pathlib import Path
from typing import Any

import httpx
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.serialization import MessageField, SerializationContext
from imapclient import IMAPClient
from pydantic import SecretStr

from omnistream.kafka.registry import registry_client
from omnistream.settings import MailSettings, Settings
from omnistream.stack.versions import PROJECT_ROOT
from producers.emails.producer import EmailTopics
from tests.support.decoding import avro_deserializer

# RFC 5322 line ends, as a mail server stores a message.
CRLF = policy.compat32.clone(linesep="\r\n")
_TOTALS = re.compile(r"\(total (\d+) produced, (\d+) dead-lettered\)")


@contextlib.contextmanager
def own_mailbox(settings: Settings, user: str) -> Iterator[MailSettings]:
    """Mail settings for a fresh mailbox ``user`` (GreenMail's REST API), removed afterwards."""
    mail = settings.mail.model_copy(
        update={"mailbox_user": user, "mailbox_password": SecretStr(uuid.uuid4().hex)}
    )
    api = f"http://{mail.host}:{mail.api_port}/api/user"
    account = {
        "email": mail.mailbox_address,
        "login": mail.mailbox_user,
        "password": mail.mailbox_password.get_secret_value(),
    }
    httpx.post(api, json=account, timeout=10).raise_for_status()
    try:
        yield mail
    finally:
        # GreenMail answers 500 when it deletes a user whose mailbox was opened over IMAP, though it is gone.
        httpx.delete(f"{api}/{mail.mailbox_user}", timeout=10)


def mailbox_logins(mail: MailSettings) -> set[str]:
    """The logins of GreenMail's users: the truth about a mailbox whose delete answered 500."""
    users = httpx.get(f"http://{mail.host}:{mail.api_port}/api/user", timeout=10).raise_for_status().json()
    return {user["login"] for user in users}


@contextlib.contextmanager
def own_topics(settings: Settings, unique: str) -> Iterator[EmailTopics]:
    """Orders, dead-letter and checkpoint topics of the test's own; removed with their subjects afterwards."""
    names = EmailTopics.for_orders(f"test.{unique}.stores.order_confirmations", f"test.{unique}.checkpoints")
    try:
        yield names
    finally:
        all_topics = [names.orders, names.dead_letters, names.checkpoints]
        admin = AdminClient({"bootstrap.servers": settings.kafka.bootstrap_servers})
        for future in admin.delete_topics(all_topics, operation_timeout=30).values():
            with contextlib.suppress(KafkaException):  # a topic this test never got to create
                future.result(timeout=60)
        registry = registry_client(settings)
        for topic in all_topics:
            for permanent in (False, True):
                # Cleanup of a shared registry must not fail the test (a subject it never registered).
                with contextlib.suppress(Exception):
                    registry.delete_subject(f"{topic}-value", permanent=permanent)


@contextlib.contextmanager
def imap_session(mail: MailSettings) -> Iterator[IMAPClient]:
    with IMAPClient(mail.host, mail.imap_port, ssl=False, timeout=30) as imap:
        imap.login(mail.mailbox_user, mail.mailbox_password.get_secret_value())
        yield imap


def append(mail: MailSettings, raw: bytes, folder: str = "INBOX") -> None:
    """Put the message ``raw`` into ``folder``, as delivery would."""
    with imap_session(mail) as imap:
        imap.append(folder, raw)


def wait_for_mail(
    mail: MailSettings, count: int, folder: str = "INBOX", deadline_s: float = 60.0
) -> list[int]:
    """The folder's UIDs, once ``count`` messages have arrived (IMAP IDLE wakes us)."""
    deadline = time.monotonic() + deadline_s
    with imap_session(mail) as imap:
        imap.select_folder(folder, readonly=True)
        uids = imap.search("ALL")
        while len(uids) < count and time.monotonic() < deadline:
            imap.idle()
            imap.idle_check(timeout=max(0.1, min(5.0, deadline - time.monotonic())))
            imap.idle_done()
            uids = imap.search("ALL")
    assert len(uids) == count, f"{len(uids)} messages arrived in {folder}, expected {count}"
    return sorted(uids)


def message_ids(mail: MailSettings, folder: str) -> list[str]:
    """The Message-IDs of the messages in ``folder``, in UID order (one per message, duplicates kept)."""
    with imap_session(mail) as imap:
        imap.select_folder(folder, readonly=True)
        uids = sorted(imap.search("ALL"))
        if not uids:
            return []
        headers = imap.fetch(uids, ["BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)]"])
    found = []
    for uid in uids:
        raw = next(v for k, v in headers[uid].items() if k.startswith(b"BODY[HEADER"))
        found.append(str(email.message_from_bytes(raw)["Message-ID"]).strip())
    return found


def read_topics(
    settings: Settings, topics: list[str], isolation: str = "read_committed", decode: bool = True
) -> dict[str, list[dict[str, Any]]]:
    """Every record of ``topics``, read to the end (the last stable offset when read_committed).

    Values are decoded by a generic AvroDeserializer: the writer's schema comes from the registry only.
    """
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka.bootstrap_servers,
            "group.id": f"test-reader-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "isolation.level": isolation,
            "enable.partition.eof": True,
            "fetch.wait.max.ms": 50,
        }
    )
    deserializer = avro_deserializer(registry_client(settings))
    out: dict[str, list[dict[str, Any]]] = {topic: [] for topic in topics}
    try:
        assignment = [
            TopicPartition(topic, p, OFFSET_BEGINNING)
            for topic in topics
            for p in consumer.list_topics(topic, timeout=30).topics[topic].partitions
        ]
        consumer.assign(assignment)
        pending: set[tuple[str | None, int | None]] = {(tp.topic, tp.partition) for tp in assignment}
        deadline = time.monotonic() + 60
        while pending and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            error = msg.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    pending.discard((msg.topic(), msg.partition()))
                    continue
                raise KafkaException(error)
            topic = msg.topic()
            assert topic is not None
            value = msg.value()
            record: dict[str, Any] = {"key": msg.key(), "partition": msg.partition(), "offset": msg.offset()}
            if decode and value is not None:
                ctx = SerializationContext(topic, MessageField.VALUE)
                record["value"] = deserializer(value, ctx)
            out[topic].append(record)
        assert not pending, f"partitions {pending} not read to their end"
    finally:
        consumer.close()
    return out


def producer_env(mail: MailSettings) -> dict[str, str]:
    """The environment a producer process of ``mail``'s mailbox runs with."""
    return {
        **os.environ,
        "OMNISTREAM_MAIL__MAILBOX_USER": mail.mailbox_user,
        "OMNISTREAM_MAIL__MAILBOX_PASSWORD": mail.mailbox_password.get_secret_value(),
    }


def producer_command(topics: EmailTopics, transactional_id: str, *options: str) -> list[str]:
    return [
        *(sys.executable, "-m", "omnistream", "produce", "emails"),
        *("--topic", topics.orders, "--checkpoint-topic", topics.checkpoints),
        *("--transactional-id", transactional_id),
        *("--metrics-port", "0"),  # the supervised producer may hold the default port
        *options,
    ]


class FollowingProducer:
    """``omnistream produce emails --follow``, as supervisord runs it, in a process of its own.

    Its output (the batch lines and the log) goes to ``log_path``; ``totals`` reads the running totals
    from the last batch line. Stopped with SIGTERM on leaving the ``with`` block, which it must obey (exit 0).
    """

    def __init__(
        self, mail: MailSettings, topics: EmailTopics, transactional_id: str, log_path: Path, *options: str
    ) -> None:
        self.log_path = log_path
        self._command = producer_command(topics, transactional_id, "--follow", *options)
        self._env = producer_env(mail)
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> FollowingProducer:
        with self.log_path.open("wb") as log_file:
            self.process = subprocess.Popen(
                self._command, cwd=PROJECT_ROOT, env=self._env, stdout=log_file, stderr=subprocess.STDOUT
            )
        return self

    def __exit__(self, *exc_info: object) -> None:
        process = self._process()
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            finally:
                if process.poll() is None:
                    process.kill()
                    process.wait(timeout=30)
        if exc_info[0] is None:  # the test passed so far: the stop must have been orderly
            assert process.returncode == 0, f"exit {process.returncode}:\n{self.log()}"

    def _process(self) -> subprocess.Popen[bytes]:
        assert self.process is not None, "use FollowingProducer in a with block"
        return self.process

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    @property
    def alive(self) -> bool:
        return self._process().poll() is None

    def totals(self) -> tuple[int, int]:
        """(produced, dead-lettered) as of the last committed batch."""
        found = _TOTALS.findall(self.log())
        return (int(found[-1][0]), int(found[-1][1])) if found else (0, 0)

    def wait_for(self, produced: int, dead_lettered: int, deadline_s: float = 300.0) -> None:
        """Until the totals reach ``produced`` and ``dead_lettered``; fails if the process exits first."""
        deadline = time.monotonic() + deadline_s
        while self.totals() != (produced, dead_lettered):
            assert self.alive, f"the producer exited ({self._process().returncode}):\n{self.log()}"
            assert time.monotonic() < deadline, (
                f"totals {self.totals()} after {deadline_s:.0f} s:\n{self.log()}"
            )
            time.sleep(0.2)
