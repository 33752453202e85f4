"""`omnistream connect validate NAME` against the running Connect: placeholders resolved first, then the
report of what Connect checked.

For the Snowflake sink there is no account here. A local HTTP endpoint stands in for one: it answers every
login the way Snowflake refuses a key ("JWT token is invalid."), so the test sees the connector's real
login attempt (the JDBC driver's request, signed with the resolved key) and what the report makes of it.
"""

from __future__ import annotations

import base64
import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from typer.testing import CliRunner

from omnistream.cli import app
from omnistream.connect.config import CONNECT_DIR
from omnistream.settings import Settings

pytestmark = pytest.mark.integration

SNOWFLAKE_ENV = ("SNOWFLAKE_URL", "SNOWFLAKE_USER", "SNOWFLAKE_PRIVATE_KEY")


def run(*args: str) -> tuple[int, str]:
    """``omnistream connect …``: exit code and output with wrapping undone (wide, so that no long path or
    reference is folded inside a word)."""
    result = CliRunner().invoke(app, ["connect", *args], env={"COLUMNS": "1000"})
    return result.exit_code, " ".join(result.output.split())


@dataclass
class LoginStandIn:
    """An HTTP endpoint at ``url`` that refuses every Snowflake login; ``logins`` holds what it was sent."""

    url: str
    logins: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (path with query, body)


@pytest.fixture
def refused_login() -> Iterator[LoginStandIn]:
    stand_in = LoginStandIn("")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            stand_in.logins.append((self.path, json.loads(body or b"{}")))
            # Snowflake's answer to a key it does not know: HTTP 200, success false.
            answer = json.dumps(
                {"data": None, "code": "390144", "message": "JWT token is invalid.", "success": False}
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *_: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    stand_in.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield stand_in
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def key_pair() -> tuple[rsa.RSAPrivateKey, str]:
    """A fresh, unregistered RSA key and the form the connector takes it in (PEM body, one line)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return key, "".join(line for line in pem.splitlines() if not line.startswith("-----"))


def signed_by(token: str, key: rsa.RSAPrivateKey) -> bool:
    """Whether the RS256 JWT ``token`` was signed with ``key``."""
    header, payload, signature = token.split(".")

    def unb64(part: str) -> bytes:
        return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))

    try:
        key.public_key().verify(
            unb64(signature), f"{header}.{payload}".encode(), padding.PKCS1v15(), hashes.SHA256()
        )
    except Exception:
        return False
    return True


def test_a_missing_value_is_named_and_nothing_reaches_connect(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in SNOWFLAKE_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SNOWFLAKE_USER", "OMNISTREAM_DUMMY")
    with socket.socket() as probe:  # a Connect URL nothing answers: resolving must fail first
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code, out = run("--url", f"http://127.0.0.1:{port}", "--retry-for", "0", "validate", "snowflake-sink")
    assert code == 1, out
    assert "snowflake-sink: 2 reference(s) have no value here; nothing was sent to Connect" in out
    assert "snowflake.url.name: ${env:SNOWFLAKE_URL}: environment variable SNOWFLAKE_URL is not set" in out
    assert "environment variable SNOWFLAKE_PRIVATE_KEY is not set" in out
    assert "SNOWFLAKE_USER" not in out
    assert "does not answer" not in out


def test_a_file_reference_without_its_key_is_named(tmp_path: Path) -> None:
    credentials = tmp_path / "credentials.properties"
    credentials.write_text("# the password is elsewhere\nuser = someone\n")
    document = json.loads((CONNECT_DIR / "onlinedb-postgres.json").read_text())
    document["config"]["database.password"] = f"${{file:{credentials}:password}}"
    (tmp_path / "onlinedb-postgres.json").write_text(json.dumps(document))
    code, out = run("validate", "onlinedb-postgres", "--dir", str(tmp_path))
    assert code == 1, out
    assert f"database.password: ${{file:{credentials}:password}}: {credentials} has no key 'password'" in out


def test_an_unknown_name_is_one_line_and_exit_2(unique: str) -> None:
    code, out = run("validate", f"nope-{unique}")
    assert code == 2
    assert out == (
        f"error: no connector config named 'nope-{unique}' in {CONNECT_DIR} "
        "(known: onlinedb-postgres, snowflake-sink)"
    )


def test_the_debezium_config_is_resolved_and_valid(stack_settings: Settings) -> None:
    code, out = run("validate", "onlinedb-postgres")
    assert code == 0, out
    assert (
        "onlinedb-postgres: validated by io.debezium.connector.postgresql.PostgresConnector 3.6.1.Final"
        in out
    )
    assert "database.password ← ${file:" in out and "setting postgres.replication_password" in out
    assert stack_settings.postgres.replication_password.get_secret_value() not in out
    checked = out.split("checked by Connect (")[1].split(" not checked")[0]
    for name in ("database.hostname", "database.password", "slot.name", "decimal.handling.mode"):
        assert name in checked
    # The converters' own options are passed on unchecked: Connect's answer has no definition for them.
    assert "not checked (no definition in Connect's answer):" in out
    assert "value.converter.apicurio.registry.url" in out.split("not checked")[1]
    assert out.endswith("valid")


def test_the_snowflake_sink_with_resolved_dummy_values_tries_the_account(
    stack_settings: Settings, refused_login: LoginStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    key, key_text = key_pair()
    monkeypatch.setenv("SNOWFLAKE_URL", refused_login.url)
    monkeypatch.setenv("SNOWFLAKE_USER", "OMNISTREAM_DUMMY")
    monkeypatch.setenv("SNOWFLAKE_PRIVATE_KEY", key_text)
    code, out = run("validate", "snowflake-sink")
    assert code == 1, out
    assert "validated by com.snowflake.kafka.connector.SnowflakeSinkConnector 2.5.0" in out
    for name in ("SNOWFLAKE_URL", "SNOWFLAKE_USER", "SNOWFLAKE_PRIVATE_KEY"):
        assert f"← ${{env:{name}}}: environment variable {name}" in out
    assert key_text not in out and key_text[:40] not in out

    checked = out.split("checked by Connect (")[1].split(" not checked")[0]
    assert checked.startswith("24 of 30 fields)")
    for name in (
        "snowflake.url.name",
        "snowflake.private.key",
        "snowflake.topic2table.map",
        "buffer.flush.time",
    ):
        assert name in checked
    unchecked = out.split("not checked (no definition in Connect's answer):")[1].split(" 3 error(s)")[0]
    assert "snowflake.enable.schematization" in unchecked
    assert "3 error(s): snowflake.private.key: Cannot connect to Snowflake" in out
    assert "account: the connector tried to log in to the account and could not" in out
    assert "checks them only when it starts" in out

    # The login did reach the stand-in, as the connector's JDBC driver sends it: database, schema and
    # role from the file, user from the environment, a JWT signed with the resolved key.
    assert len(refused_login.logins) == 1
    path, body = refused_login.logins[0]
    query = parse_qs(urlsplit(path).query)
    assert urlsplit(path).path == "/session/v1/login-request"
    assert (query["databaseName"], query["schemaName"], query["roleName"]) == (
        ["OMNISTREAM"],
        ["RAW"],
        ["OMNISTREAM_LOADER"],
    )
    assert body["data"]["LOGIN_NAME"] == "OMNISTREAM_DUMMY"
    assert signed_by(body["data"]["TOKEN"], key)


def test_a_field_error_means_the_account_is_not_contacted(
    refused_login: LoginStandIn, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _, key_text = key_pair()
    monkeypatch.setenv("SNOWFLAKE_URL", refused_login.url)
    monkeypatch.setenv("SNOWFLAKE_USER", "OMNISTREAM_DUMMY")
    monkeypatch.setenv("SNOWFLAKE_PRIVATE_KEY", key_text)
    document = json.loads((CONNECT_DIR / "snowflake-sink.json").read_text())
    document["config"]["buffer.flush.time"] = "0"
    (tmp_path / "snowflake-sink.json").write_text(json.dumps(document))
    code, out = run("validate", "snowflake-sink", "--dir", str(tmp_path))
    assert code == 1, out
    assert "1 error(s): buffer.flush.time: Invalid value 0 for configuration buffer.flush.time" in out
    assert (
        "account: the account was not contacted: the connector tries it only when every field passes its "
        "own check" in out
    )
    assert refused_login.logins == []
