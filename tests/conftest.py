"""Shared test fixtures.

``stack_settings`` is the real local stack, started once per test session (and left running for the next
session). A service that cannot start fails the tests that need it with the service's name, reason and
log; nothing is skipped.
"""

from __future__ import annotations

import pytest

from omnistream.settings import Settings, get_settings
from omnistream.stack.manager import Stack


@pytest.fixture(scope="session")
def stack_settings() -> Settings:
    settings = get_settings()
    Stack(settings).up()
    return settings
