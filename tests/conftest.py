"""Shared test fixtures.

``stack_settings`` is the real local stack, started once per test session (and left running for the next
session). A service that cannot start fails the tests that need it with the service's name, reason and
log; nothing is skipped.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from omnistream.settings import Settings, get_settings
from omnistream.stack.manager import Stack
from simulators.masterdata import write_reference


@pytest.fixture(scope="session")
def stack_settings() -> Settings:
    settings = get_settings()
    Stack(settings).up()
    return settings


@pytest.fixture(scope="module")
def reference_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The master-data simulator's reference files, written once per module from that module's ``SEED``
    (the seed its expectations are built from)."""
    path = tmp_path_factory.mktemp("masterdata-reference")
    write_reference(path, request.module.SEED)
    return path


@pytest.fixture
def data_dir(reference_dir: Path, tmp_path: Path) -> Path:
    """A copy of the reference files of this test's own, for a simulator that drifts them."""
    target = tmp_path / "masterdata"
    shutil.copytree(reference_dir, target)
    return target
