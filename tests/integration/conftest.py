"""Fixtures the integration tests share: names of the test's own on the shared stack, each removed afterwards.

``mailbox`` and ``topics`` are the email producer's mailbox and topics; ``reference_dir`` and ``data_dir``
the master-data simulator's files; ``prefix`` a topic prefix for the master-data producer's topics.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from omnistream.kafka.clients import admin
from omnistream.settings import MailSettings, Settings
from producers.emails.producer import EmailTopics
from tests.support.email import mailbox_logins, own_mailbox, own_topics


@pytest.fixture
def unique() -> str:
    """A short unique suffix, so each test's topics, schemas, buckets and mailboxes are its own."""
    return uuid.uuid4().hex[:10]


@pytest.fixture
def mailbox(stack_settings: Settings, unique: str, request: pytest.FixtureRequest) -> Iterator[MailSettings]:
    """A fresh GreenMail mailbox of this test's own, named after its module; gone afterwards."""
    module = request.module.__name__.rpartition(".")[2].removeprefix("test_").replace("_", "-")
    with own_mailbox(stack_settings, f"{module}-{unique}") as mail:
        yield mail
    assert mail.mailbox_user not in mailbox_logins(mail)


@pytest.fixture
def topics(stack_settings: Settings, unique: str) -> Iterator[EmailTopics]:
    """The email producer's orders, dead-letter and checkpoint topics of this test's own; removed with their
    subjects afterwards."""
    with own_topics(stack_settings, unique) as names:
        yield names


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
