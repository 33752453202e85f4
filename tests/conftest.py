"""Shared test fixtures.

``stack_settings`` is the real local stack, started once per test session (and left running for the next
session). A service that cannot start fails the tests that need it with the service's name, reason and
log; nothing is skipped.
"""

from __future__ import annotations

import uuid

import pytest

from omnistream.settings import Settings, get_settings
from omnistream.stack.manager import Stack


@pytest.fixture
def unique() -> str:
    """A short unique suffix, so each test's topics, schemas, buckets and mailboxes are its own."""
    return uuid.uuid4().hex[:10]


@pytest.fixture(scope="session")
def stack_settings() -> Settings:
    settings = get_settings()
    Stack(settings).up()
    return settings
