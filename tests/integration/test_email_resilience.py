"""The email producer is never stuck, and its mailbox stays bounded: against the real stack.

Each poison email sits between good ones in one batch. The good ones must be produced exactly once, the
poison must be in the dead-letter topic with its reason, and a producer that follows the mailbox (run as
supervisord runs it, a process of its own) must still be running and produce mail sent afterwards.

Then: a record the broker refuses although it passed the size check, the archive folder (after commit,
and after a stop between commit and move), and a folder renumbered under a following producer.

Each test has its own mailbox, folders, topics, subjects and transactional.id (see tests.support.email).
"""

from __future__ import annotations

import re
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource

from omnistream.kafka.clients import TopicSpec, ensure_topics
from omnistream.settings import MailSettings, Settings
from omnistream.stack.versions import PROJECT_ROOT
from producers.emails.imap import MailboxReader
from producers.emails.producer import EmailProducer, EmailTopics, ProducerOptions
from simulators.email_plan import EmailPlanner, PlannedEmail, PurchaseLine, StorePurchase
from simulators.email_sender import EmailsConfig, send_emails
from simulators.emails import build_message, new_message_id, render_text
from simulators.reference import build_reference
from tests.support.email import (
    CRLF,
    FollowingProducer,
    append,
    imap_session,
    message_ids,
    producer_command,
    producer_env,
    read_topics,
    wait_for_mail,
)

pytestmark = pytest.mark.integration

D = Decimal
SEED = 51
GERMAN_STORE = next(s for s in build_reference(SEED).stores if s.locale == "de_DE")


# -- emails ----------------------------------------------------------------------------------------------


def confirmation(mail: MailSettings, number: int, lines: list[PurchaseLine]) -> tuple[str, bytes]:
    """A confirmation from the German store as its POS writes it (text and HTML): (Message-ID, bytes)."""
    purchase = StorePurchase(
        GERMAN_STORE, f"{GERMAN_STORE.store_id}-{number:06d}", None, "card", "Anna K.", tuple(lines)
    )
    at = datetime.now(ZoneInfo(GERMAN_STORE.timezone)).replace(microsecond=0)
    message_id = new_message_id(mail.domain)
    msg = build_message(PlannedEmail(0, purchase), at, at, mail.mailbox_address, mail.domain, message_id)
    return message_id, msg.as_bytes(policy=CRLF)


def text_confirmation(mail: MailSettings, number: int, lines: list[PurchaseLine]) -> tuple[str, bytes]:
    """The same as plain text only: a POS that sends no HTML part (half the size for the same lines)."""
    purchase = StorePurchase(
        GERMAN_STORE, f"{GERMAN_STORE.store_id}-{number:06d}", None, "card", "Anna K.", tuple(lines)
    )
    at = datetime.now(ZoneInfo(GERMAN_STORE.timezone)).replace(microsecond=0)
    message_id = new_message_id(mail.domain)
    head = (
        f"From: {GERMAN_STORE.store_id.lower()}@{mail.domain}\r\nTo: {mail.mailbox_address}\r\n"
        f"Subject: Order confirmation {purchase.order_number}\r\nMessage-ID: {message_id}\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: 8bit\r\n\r\n"
    )
    body = render_text(PlannedEmail(0, purchase), at).replace("\n", "\r\n")
    return message_id, (head + body).encode()


def many_lines(count: int, distinct: bool = False) -> list[PurchaseLine]:
    """``count`` item lines; ``distinct``: each named differently, so that they compress little."""

    def name(n: int) -> str:
        return f"Artikel {uuid.uuid4().hex}" if distinct else "Tasse kitchen"

    return [PurchaseLine(n, f"SKU-{n:05d}", name(n), 1, D("1.00")) for n in range(1, count + 1)]


@dataclass(frozen=True)
class Poison:
    """An email that must become a dead letter, and what its dead letter must say."""

    build: Callable[[MailSettings], tuple[str, bytes]]
    error_class: str
    reason: str  # a regular expression the reason matches from its start
    truncated: bool = False


POISONS = {
    # Parses (every amount consistent), but decimal(12,2) holds at most 10 digits before the point.
    "amount-beyond-the-schema": Poison(
        lambda mail: confirmation(
            mail, 900001, [PurchaseLine(1, "SKU-00001", "Vitrine", 1, D("99999999999.99"))]
        ),
        "producers.emails.serde.RecordDoesNotFit",
        r"the order does not fit schemas/store_order\.avsc: "
        r"lines\[0\]\.unit_price = 99999999999\.99 does not fit decimal\(12,2\), at most 10 digits before",
    ),
    # A valid order of 60,000 lines (about 3.5 MB of email): its record is about 1.9 MB, over the 1 MB that
    # the producer's message.max.bytes allows.
    "too-large-for-kafka": Poison(
        lambda mail: text_confirmation(mail, 900002, many_lines(60_000)),
        "producers.emails.producer.RecordTooLarge",
        r"the order record is [\d,]+ bytes serialized \(key and value\), more than test\.\w+\.stores\."
        r"order_confirmations takes: 999,488 bytes \(the producer's message\.max\.bytes 1,000,000; the "
        r"topic's max\.message\.bytes 1,048,588; less 512 for framing\)",
        truncated=True,
    ),
    # The order that landed as -23,80 €: a "return" as negative lines of a confirmation.
    "negative-unit-price": Poison(
        lambda mail: confirmation(
            mail, 900003, [PurchaseLine(1, "SKU-00002", "Tasse kitchen", 2, D("-10.00"))]
        ),
        "producers.emails.parser.ParseError",
        r"item line 1 \(SKU-00002\) unit price -10,00 € is negative: an order confirmation confirms a sale",
    ),
}


def send_good(mail: MailSettings, count: int, start_number: int) -> list[str]:
    """``count`` well-formed confirmations over SMTP, as the stores send them; their Message-IDs."""
    run = send_emails(
        mail, EmailsConfig(seed=SEED, rate=0, count=count, anomaly_share=0.0, start_number=start_number)
    )
    return [m["message_id"] for m in run.messages]


def planned_emails(mail: MailSettings, count: int, start_number: int) -> list[tuple[str, str, bytes]]:
    """``count`` well-formed confirmations, built but not sent: (Message-ID, order number, bytes)."""
    out = []
    for planned in EmailPlanner(SEED, count, 0.0, start_number).emails():
        at = datetime.now(ZoneInfo(planned.purchase.store.timezone)).replace(microsecond=0)
        message_id = new_message_id(mail.domain)
        msg = build_message(planned, at, at, mail.mailbox_address, mail.domain, message_id)
        out.append((message_id, planned.purchase.order_number, msg.as_bytes(policy=CRLF)))
    return out


def orders_and_letters(
    settings: Settings, topics: EmailTopics
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    records = read_topics(settings, [topics.orders, topics.dead_letters])
    return [r["value"] for r in records[topics.orders]], [r["value"] for r in records[topics.dead_letters]]


# -- a poison email never stops the producer -------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(POISONS))
def test_a_poison_email_is_dead_lettered_and_the_following_producer_goes_on(
    stack_settings: Settings,
    mailbox: MailSettings,
    topics: EmailTopics,
    unique: str,
    tmp_path: Path,
    kind: str,
) -> None:
    poison = POISONS[kind]
    good = send_good(mailbox, 2, start_number=1)
    wait_for_mail(mailbox, 2)
    poison_id, raw = poison.build(mailbox)
    append(mailbox, raw)
    good += send_good(mailbox, 2, start_number=100)
    wait_for_mail(mailbox, 5)

    # One batch: the poison is in the same transaction as the four good emails.
    with FollowingProducer(mailbox, topics, f"test-{unique}", tmp_path / "producer.log") as producer:
        producer.wait_for(produced=4, dead_lettered=1)
        assert producer.alive
        good += send_good(mailbox, 1, start_number=200)  # sent to a producer that met the poison
        producer.wait_for(produced=5, dead_lettered=1)
        assert producer.alive

    orders, letters = orders_and_letters(stack_settings, topics)
    assert sorted(o["message_id"] for o in orders) == sorted(good)  # each good email once
    [letter] = letters
    assert letter["source_id"] == poison_id
    assert letter["error_class"] == poison.error_class
    assert re.match(poison.reason, letter["reason"]), letter["reason"]
    assert letter["attributes"]["imap_uid"] == "3"
    assert int(letter["attributes"]["payload_size"]) == len(raw)
    if poison.truncated:
        assert letter["attributes"]["payload_truncated"] == "true"
        assert len(letter["payload"]) == 512 * 1024
        assert raw.startswith(letter["payload"])
    else:
        assert letter["payload"] == raw
    # Committed, so archived: the folder holds nothing, the archive the six emails with the poison whole.
    assert message_ids(mailbox, "INBOX") == []
    assert sorted(message_ids(mailbox, "Archive")) == sorted([*good, poison_id])


def test_a_record_the_broker_refuses_after_the_size_check_is_dead_lettered_and_its_batch_commits_once(
    stack_settings: Settings, mailbox: MailSettings, topics: EmailTopics, unique: str
) -> None:
    # The size check uses the limits read at start; the topic's limit is lowered after it, so the broker
    # is the first to refuse: the whole transaction is doomed and has to be made again without it.
    good = send_good(mailbox, 2, start_number=1)
    wait_for_mail(mailbox, 2)
    # A record of about 60 kB, 30 kB compressed: over the limit set below however the broker measures it.
    medium_id, medium = confirmation(mailbox, 900004, many_lines(1000, distinct=True))
    append(mailbox, medium)
    good += send_good(mailbox, 2, start_number=100)
    wait_for_mail(mailbox, 5)

    # One partition: the good records share the refused one's record batch, and are refused with it.
    ensure_topics(stack_settings, [TopicSpec(topics.orders, partitions=1)])
    producer = EmailProducer(
        stack_settings, mailbox, topics, ProducerOptions(transactional_id=f"test-{unique}")
    )
    with producer:
        set_max_message_bytes(stack_settings, topics.orders, 8192)
        progress = producer.drain()
        assert (progress.produced, progress.dead_lettered, progress.batches) == (4, 1, 1)
        aborted = aborted_transactions(producer)
        assert aborted >= 1
        assert producer.metrics.registry.get_sample_value(
            "omnistream_errors_total", {"kind": "record_refused"}
        )

        # Now the limit is known: the next such email is dead-lettered before producing, nothing aborted.
        second_id, second = confirmation(mailbox, 900005, many_lines(1000, distinct=True))
        append(mailbox, second)
        good += send_good(mailbox, 1, start_number=200)
        wait_for_mail(mailbox, 2)  # the first five are archived
        again = producer.drain()
        assert (again.produced, again.dead_lettered) == (5, 2)
        assert aborted_transactions(producer) == aborted

    orders, letters = orders_and_letters(stack_settings, topics)
    assert sorted(o["message_id"] for o in orders) == sorted(good)
    assert sorted(d["source_id"] for d in letters) == sorted([medium_id, second_id])
    for letter in letters:
        assert letter["error_class"] == "producers.emails.producer.RecordTooLarge"
        assert "the topic's max.message.bytes 8,192" in letter["reason"]


def set_max_message_bytes(settings: Settings, topic: str, limit: int) -> None:
    admin = AdminClient({"bootstrap.servers": settings.kafka.bootstrap_servers})
    entry = ConfigEntry("max.message.bytes", str(limit), incremental_operation=AlterConfigOpType.SET)
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic, incremental_configs=[entry])
    for future in admin.incremental_alter_configs([resource]).values():
        future.result(timeout=60)


def aborted_transactions(producer: EmailProducer) -> float:
    value = producer.metrics.registry.get_sample_value(
        "omnistream_transactions_total", {"outcome": "aborted"}
    )
    return value or 0.0


# -- mail stays bounded ----------------------------------------------------------------------------------


def test_committed_mail_is_moved_to_the_archive_and_later_mail_is_produced_in_uid_order(
    stack_settings: Settings, mailbox: MailSettings, topics: EmailTopics, unique: str, tmp_path: Path
) -> None:
    first = send_good(mailbox, 3, start_number=1)
    wait_for_mail(mailbox, 3)
    with FollowingProducer(
        mailbox, topics, f"test-{unique}", tmp_path / "producer.log", "--archive-folder", "Processed"
    ) as producer:
        producer.wait_for(produced=3, dead_lettered=0)
        later = send_good(mailbox, 2, start_number=100)  # UIDs 4 and 5: never reused after an expunge
        producer.wait_for(produced=5, dead_lettered=0)
        deadline = time.monotonic() + 60
        while message_ids(mailbox, "INBOX"):  # moved right after the commit that the totals show
            assert time.monotonic() < deadline, message_ids(mailbox, "INBOX")
            time.sleep(0.2)
        assert producer.alive

    assert sorted(message_ids(mailbox, "Processed")) == sorted(first + later)
    records = read_topics(stack_settings, [topics.orders, topics.checkpoints])
    orders = [r["value"] for r in records[topics.orders]]
    # UIDs in the order the emails arrived, each produced once, none reused after the first three moved.
    assert sorted((o["imap_uid"], o["message_id"]) for o in orders) == list(enumerate(first + later, start=1))
    assert records[topics.checkpoints][-1]["value"]["last_uid"] == 5


def test_mail_left_in_the_folder_after_its_commit_is_skipped_and_archived_by_the_next_run(
    stack_settings: Settings, mailbox: MailSettings, topics: EmailTopics, unique: str
) -> None:
    sent = send_good(mailbox, 4, start_number=1)
    wait_for_mail(mailbox, 4)
    # Committed but not moved, as a crash between commit and move leaves them.
    once = subprocess.run(
        [*producer_command(topics, f"test-{unique}", "--once", "--no-archive")],
        cwd=PROJECT_ROOT,
        env=producer_env(mailbox),
        capture_output=True,
        text=True,
    )
    assert once.returncode == 0, once.stdout + once.stderr
    assert "done: 4 produced" in once.stdout
    assert sorted(message_ids(mailbox, "INBOX")) == sorted(sent)

    later = send_good(mailbox, 1, start_number=100)
    wait_for_mail(mailbox, 5)
    with EmailProducer(
        stack_settings, mailbox, topics, ProducerOptions(transactional_id=f"test-{unique}")
    ) as producer:
        progress = producer.drain()
    assert (progress.produced, progress.last_uid) == (1, 5)  # UIDs 1-4 skipped: at or below the checkpoint
    assert message_ids(mailbox, "INBOX") == []
    assert sorted(message_ids(mailbox, "Archive")) == sorted(sent + later)
    orders, _ = orders_and_letters(stack_settings, topics)
    assert sorted(o["message_id"] for o in orders) == sorted(sent + later)  # none twice


def test_archiving_without_imap_move_copies_and_expunges_only_the_emails_given(mailbox: MailSettings) -> None:
    emails = planned_emails(mailbox, 4, start_number=1)
    for _, _, raw in emails:
        append(mailbox, raw)
    uids = wait_for_mail(mailbox, 4)
    reader = MailboxReader(mailbox, readonly=False, use_move=False)
    try:
        uidvalidity = reader.open()
        reader.ensure_folder("Archive")
        reader.archive(uids[:3], "Archive", uidvalidity)
        reader.archive(uids[:3], "Archive", uidvalidity)  # again, as after a stop before its end: a no-op
        assert reader.uids_through(uids[-1]) == [uids[3]]
        assert reader.new_uids(after=0) == [uids[3]]
    finally:
        reader.close()
    assert message_ids(mailbox, "INBOX") == [emails[3][0]]
    assert message_ids(mailbox, "Archive") == [m for m, _, _ in emails[:3]]
    with imap_session(mailbox) as imap:
        imap.select_folder("INBOX", readonly=True)
        assert imap.search(["DELETED"]) == []


# -- a renumbered folder ---------------------------------------------------------------------------------


def test_a_folder_made_again_under_a_following_producer_is_produced_in_full_once(
    stack_settings: Settings, mailbox: MailSettings, topics: EmailTopics, unique: str, tmp_path: Path
) -> None:
    """The server coming back empty, as the test can stage it without restarting the shared GreenMail: the
    test's own folder is deleted and made again, which gives it a new UIDVALIDITY and UIDs from 1 again,
    below the checkpoint. Every email of the new folder must be produced, once; an email that was in the
    old folder too (restored into the new one) is produced again under the new UIDVALIDITY, the same order
    number twice in Kafka, which staging flags as a re-send and the intermediate layer drops."""
    folder = "Stores"
    before = planned_emails(mailbox, 4, start_number=1)
    after = planned_emails(mailbox, 4, start_number=100)
    with imap_session(mailbox) as imap:
        imap.create_folder(folder)
        first_validity = imap.folder_status(folder, [b"UIDVALIDITY"])[b"UIDVALIDITY"]
    for _, _, raw in before:
        append(mailbox, raw, folder)

    with FollowingProducer(
        mailbox, topics, f"test-{unique}", tmp_path / "producer.log", "--folder", folder
    ) as producer:
        producer.wait_for(produced=4, dead_lettered=0)
        with imap_session(mailbox) as imap:
            imap.delete_folder(folder)  # the producer's session is dropped (BYE)
            # It reconnects and finds no folder: it waits for it, as for a server that is away.
            deadline = time.monotonic() + 60
            while "FolderGone" not in producer.log():
                assert time.monotonic() < deadline and producer.alive, producer.log()
                time.sleep(0.1)
            imap.create_folder(folder)
            second_validity = imap.folder_status(folder, [b"UIDVALIDITY"])[b"UIDVALIDITY"]
        assert second_validity != first_validity  # GreenMail's is the creation time in seconds
        restored = before[0]  # in the old folder and the new one
        for _, _, raw in [restored, *after[:3]]:
            append(mailbox, raw, folder)
        producer.wait_for(produced=8, dead_lettered=0)
        append(mailbox, after[3][2], folder)  # sent afterwards, to a producer that lived through it
        producer.wait_for(produced=9, dead_lettered=0)
        assert producer.alive
    assert f"changed from {first_validity} to {second_validity}" in producer.log()

    orders, _ = orders_and_letters(stack_settings, topics)
    by_validity = {
        validity: sorted((o["imap_uid"], o["message_id"]) for o in orders if o["uidvalidity"] == validity)
        for validity in (first_validity, second_validity)
    }
    assert by_validity[first_validity] == [(uid, m) for uid, (m, _, _) in enumerate(before, start=1)]
    new_folder = [restored, *after]
    assert by_validity[second_validity] == [(uid, m) for uid, (m, _, _) in enumerate(new_folder, start=1)]
    assert len(orders) == 9  # nothing else, nothing twice under one UIDVALIDITY
    # Downstream, one order per order number: the restored email counts once.
    numbers = [o["order_number"] for o in orders]
    assert sorted(set(numbers)) == sorted(n for _, n, _ in before + after)
    assert numbers.count(restored[1]) == 2
    assert message_ids(mailbox, folder) == []
    assert sorted(message_ids(mailbox, "Archive")) == sorted(m for m, _, _ in before + new_folder)
