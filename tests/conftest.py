"""Shared test helpers."""

from __future__ import annotations

import uuid

import pytest


@pytest.fixture
def unique() -> str:
    """A short unique suffix, so each test's topics, schemas, buckets and mailboxes are its own."""
    return uuid.uuid4().hex[:10]
