"""`omnistream connect …` against the running Connect, the repository's configs validated by it, and a
plugin brought in through ``connect.extra_plugin_path``.

The CLI tests apply a sandbox copy of connect/onlinedb-postgres.json from a directory of their own
(`--dir`), so the connector name, slot, publication and topics are the test's alone. The plugin-path test
runs a Kafka and a Connect of its own (a second stack), since it changes the worker's plugin.path.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from typer.testing import CliRunner

from omnistream.cli import app
from omnistream.connect.client import ConnectClient, ConnectorNotFound
from omnistream.connect.config import CONNECT_DIR, load_dir, render, secrets_path
from omnistream.connect.validation import SNOWFLAKE_SINK
from omnistream.settings import Settings
from omnistream.stack.layout import Layout
from omnistream.stack.manager import Stack
from tests.support.cdc_sandbox import CdcSandbox, cdc_sandbox
from tests.support.second_stack import second_stack_settings

pytestmark = pytest.mark.integration

PLUGIN_STACK_OFFSET = 400  # the plugin-path test's own Kafka and Connect; no other test uses it

# The fields Snowflake's validation may reject when it cannot log in with dummy credentials: the account,
# the user and key, and what only a login can check (role, database, schema). Any other field with an
# error is a real mistake in connect/snowflake-sink.json.
SNOWFLAKE_ACCOUNT_FIELDS = frozenset(
    {
        "snowflake.url.name",
        "snowflake.user.name",
        "snowflake.private.key",
        "snowflake.private.key.passphrase",
        "snowflake.authenticator",
        "snowflake.role.name",
        "snowflake.database.name",
        "snowflake.schema.name",
    }
)


def run(*args: str) -> tuple[int, str]:
    """Invoke ``omnistream connect …``; returns the exit code and the output with wrapping undone."""
    result = CliRunner().invoke(app, ["connect", *args])
    return result.exit_code, " ".join(result.output.split())


@pytest.fixture
def client(stack_settings: Settings) -> Iterator[ConnectClient]:
    with ConnectClient(stack_settings.connect.url) as connect:
        yield connect


@pytest.fixture
def sandbox(stack_settings: Settings, unique: str) -> Iterator[CdcSandbox]:
    with cdc_sandbox(stack_settings, unique) as names:
        yield names


@pytest.fixture
def config_dir(tmp_path: Path, sandbox: CdcSandbox) -> Path:
    """The sandbox connector, plus a copy of the opt-in Snowflake sink that a plain apply must skip."""
    folder = tmp_path / "connect"
    folder.mkdir()
    (folder / f"{sandbox.connector}.json").write_text(json.dumps(sandbox.file_json(), indent=2))
    (folder / "snowflake-sink.json").write_text((CONNECT_DIR / "snowflake-sink.json").read_text())
    return folder


def slot_exists(settings: Settings, slot: str) -> bool:
    with psycopg.connect(settings.postgres.dsn()) as conn:
        found = conn.execute("select 1 from pg_replication_slots where slot_name = %s", [slot]).fetchone()
    return found is not None


def test_apply_twice_status_restart_delete(
    stack_settings: Settings, client: ConnectClient, sandbox: CdcSandbox, config_dir: Path
) -> None:
    code, out = run("apply", "--dir", str(config_dir))
    assert code == 0, out
    assert f"{sandbox.connector} created: RUNNING" in out
    assert "not applied (opt-in, --include NAME): snowflake-sink" in out
    first = client.get_config(sandbox.connector)
    # The password reaches Connect as a reference to the 0600 secrets file, never as text.
    secrets = secrets_path(stack_settings).resolve()
    assert first["database.password"] == f"${{file:{secrets}:postgres.replication_password}}"
    assert stat.S_IMODE(secrets.stat().st_mode) == 0o600
    assert first["database.hostname"] == stack_settings.postgres.host

    code, out = run("apply", "--dir", str(config_dir))
    assert code == 0, out
    assert f"{sandbox.connector} unchanged: RUNNING" in out
    assert client.get_config(sandbox.connector) == first
    assert client.connectors().count(sandbox.connector) == 1

    code, out = run("status", sandbox.connector)
    assert code == 0, out
    assert re.search(rf"{sandbox.connector} │ source │ RUNNING │ 0: RUNNING", out), out

    code, out = run("restart", sandbox.connector)
    assert code == 0, out
    assert f"{sandbox.connector} restarted: RUNNING, tasks 0 RUNNING" in out

    assert slot_exists(stack_settings, sandbox.slot)
    code, out = run("delete", sandbox.connector, "--drop-slot")
    assert code == 0, out
    with pytest.raises(ConnectorNotFound):
        client.get_config(sandbox.connector)
    assert not slot_exists(stack_settings, sandbox.slot)


def test_invalid_config_is_reported_by_field_and_not_applied(
    client: ConnectClient, sandbox: CdcSandbox, tmp_path: Path
) -> None:
    document = sandbox.file_json()
    document["config"]["decimal.handling.mode"] = "exact"  # not one of string, double, precise
    (tmp_path / f"{sandbox.connector}.json").write_text(json.dumps(document))
    code, out = run("apply", "--dir", str(tmp_path))
    assert code == 1
    assert "nothing was applied" in out
    assert "decimal.handling.mode: The 'decimal.handling.mode' value is invalid" in out
    assert sandbox.connector not in client.connectors()


def test_unreachable_connect_is_a_clear_error() -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code, out = run("--url", f"http://127.0.0.1:{port}", "--retry-for", "0", "status")
    assert code == 1
    assert f"Kafka Connect does not answer at http://127.0.0.1:{port}" in out
    assert "omnistream stack up" in out


def test_unknown_connector_is_named(unique: str) -> None:
    code, out = run("status", f"missing-{unique}")
    assert code == 1
    assert f"connector missing-{unique}: not found" in out


def test_shop_connector_config_passes_connects_validation(
    stack_settings: Settings, client: ConnectClient
) -> None:
    """connect/onlinedb-postgres.json as rendered for the local stack: Debezium checks the database,
    the role's replication right and every option, and finds nothing wrong."""
    shop = next(f for f in load_dir() if f.name == "onlinedb-postgres")
    validation = client.validate(render([shop], stack_settings).configs[shop.name])
    assert validation.errors == {}


def dummy_private_key() -> str:
    """A well-formed, unregistered RSA key in the form the connector takes (PEM body, one line)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return "".join(line for line in pem.splitlines() if not line.startswith("-----"))


def snowflake_config(settings: Settings, **overrides: str) -> dict[str, str]:
    """connect/snowflake-sink.json as ``apply`` renders it, with dummy account values where the worker's
    environment has none. The private key stays a ``${env:…}`` reference that this worker cannot resolve:
    the connector then checks every field's own validator and skips its login (``omnistream connect
    validate`` resolves the key instead; tests/integration/test_connect_validate.py)."""
    sink = next(f for f in load_dir() if f.name == "snowflake-sink")
    config = render([sink], settings).configs[sink.name]
    assert config["snowflake.private.key"] == "${env:SNOWFLAKE_PRIVATE_KEY}"
    config["snowflake.url.name"] = "omnistream-dummy.eu-west-1.snowflakecomputing.com:443"
    config["snowflake.user.name"] = "OMNISTREAM_DUMMY"
    return {**config, **overrides}


def test_snowflake_sink_config_is_valid_but_for_the_account(
    stack_settings: Settings, client: ConnectClient
) -> None:
    config = snowflake_config(stack_settings)
    assert not [k for k, v in config.items() if "${" in v and k != "snowflake.private.key"]
    validation = client.validate(config)
    assert set(validation.errors) <= SNOWFLAKE_ACCOUNT_FIELDS, validation.errors

    # The same check does catch a mistake outside the account fields ...
    broken = client.validate(snowflake_config(stack_settings, **{"buffer.flush.time": "0"}))
    assert set(broken.errors) == {"buffer.flush.time"}
    # ... and with a key given inline, the connector goes on to parse the URL (here: not a Snowflake URL,
    # refused before any connection).
    account = client.validate(
        snowflake_config(
            stack_settings,
            **{"snowflake.url.name": "not-a-snowflake-account", "snowflake.private.key": dummy_private_key()},
        )
    )
    assert set(account.errors) == {"snowflake.url.name"}


def test_a_snowflake_jar_put_on_the_extra_plugin_path_is_the_one_connect_loads(
    stack_settings: Settings, tmp_path: Path
) -> None:
    """The way a user installs a newer Snowflake connector: its jar in a folder of their own, named by
    connect.extra_plugin_path, the bundled one left out with connect.exclude_bundled_plugins. Tried with
    the 2.5.0 jar from the downloads, since no newer one is served."""
    base = second_stack_settings(stack_settings, tmp_path / "state", PLUGIN_STACK_OFFSET)
    bundled = Layout.from_settings(base).dist / "connect-plugins" / "snowflake-kafka-connector"
    jars = sorted(bundled.glob("*.jar"))
    assert jars, f"no Snowflake connector jar under {bundled}"
    mine = tmp_path / "my-plugins"
    folder = mine / "snowflake-kafka-connector-mine"
    folder.mkdir(parents=True)
    for jar in jars:
        try:
            os.link(jar, folder / jar.name)  # same file system: no 160 MB copy
        except OSError:
            shutil.copy2(jar, folder / jar.name)
    settings = base.model_copy(
        update={
            "stack": base.stack.model_copy(update={"start_timeout_s": 600.0}),  # plugin scanning is slow here
            "connect": base.connect.model_copy(
                update={
                    "extra_plugin_path": str(mine),
                    "exclude_bundled_plugins": "snowflake-kafka-connector",
                }
            ),
        }
    )
    layout = Layout.from_settings(settings)
    stack = Stack(settings)
    try:
        stack.up(["connect"])
        properties = (layout.data_dir("connect") / "connect-distributed.properties").read_text()
        assert f"plugin.path={layout.data_dir('connect') / 'plugins'},{mine}\n" in properties
        plugins = httpx.get(f"{settings.connect.url}/connector-plugins", timeout=10).json()
        assert {"class": SNOWFLAKE_SINK, "type": "sink", "version": "2.5.0"} in plugins
        assert "io.debezium.connector.postgresql.PostgresConnector" in {p["class"] for p in plugins}
        log = layout.log_file("connect").read_text()
        assert f"Loading plugin from: {folder}" in log
        assert f"pluginLocation=file:{folder}/" in log
        assert "Loading plugin from: " + str(layout.data_dir("connect") / "plugins" / "snowflake") not in log
        assert f"Loading plugin from: {bundled}" not in log
        # The plugin works from there: its own validators answer.
        with ConnectClient(settings.connect.url) as client:
            broken = client.validate(snowflake_config(settings, **{"buffer.flush.time": "0"}))
        assert set(broken.errors) == {"buffer.flush.time"}
        assert broken.version == "2.5.0" and broken.versions == ("2.5.0",)
    finally:
        stack.down(purge=True)
