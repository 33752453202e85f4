"""A built wheel carries its data: the Avro schemas, the connector configs, the shop's schema SQL.

Builds the wheel the way a user's ``pip install`` would (``pip wheel --no-deps``, in an isolated build
environment) and lists what is inside, so a data file that would only be found in a source checkout fails
here. Also checks that the installed package reads them through :mod:`omnistream.resources`.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from omnistream.connect.config import CONNECT_DIR
from omnistream.resources import connector_configs_dir, schemas_dir

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # A copy of the sources, so the build's egg-info and build/ stay out of the working tree.
    source = tmp_path_factory.mktemp("source")
    for name in (
        "pyproject.toml",
        "README.md",
        "omnistream",
        "simulators",
        "producers",
        "schemas",
        "connect",
    ):
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, source / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(path, source / name)
    out = tmp_path_factory.mktemp("wheel")
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(source)]
    subprocess.run(command, check=True, capture_output=True, text=True)
    (built,) = out.glob("omnistream-*.whl")
    return built


@pytest.fixture(scope="module")
def wheel_files(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as archive:
        return set(archive.namelist())


def test_the_wheel_holds_every_avro_schema(wheel_files: set[str]) -> None:
    schemas = sorted(path.name for path in (ROOT / "schemas").glob("*.avsc"))
    assert schemas, "no schemas/*.avsc to look for"
    missing = [name for name in schemas if f"omnistream/schemas/{name}" not in wheel_files]
    assert not missing


def test_the_wheel_holds_every_connector_config(wheel_files: set[str]) -> None:
    configs = sorted(path.name for path in (ROOT / "connect").glob("*.json"))
    assert "onlinedb-postgres.json" in configs
    missing = [name for name in configs if f"omnistream/connector_configs/{name}" not in wheel_files]
    assert not missing


def test_the_wheel_holds_the_shop_schema(wheel_files: set[str]) -> None:
    assert "omnistream/sql/shop_schema.sql" in wheel_files


def test_the_wheel_declares_the_plugin_commands(wheel: Path, wheel_files: set[str]) -> None:
    (name,) = [name for name in wheel_files if name.endswith(".dist-info/entry_points.txt")]
    with zipfile.ZipFile(wheel) as archive:
        declared = archive.read(name).decode()
    section = declared.split("[omnistream.commands]", 1)[1].split("[", 1)[0]
    assert sorted(line.strip() for line in section.splitlines() if line.strip()) == [
        "produce = producers.cli:produce_app",
        "simulate = simulators.cli:simulate_app",
    ]


def test_the_package_reads_its_data_through_resources() -> None:
    assert (schemas_dir() / "store_order.avsc").is_file()
    assert (connector_configs_dir() / "onlinedb-postgres.json").is_file()
    assert connector_configs_dir() == CONNECT_DIR
