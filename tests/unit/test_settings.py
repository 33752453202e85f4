from __future__ import annotations

from pathlib import Path

import pytest

from omnistream.settings import Settings
from omnistream.stack.versions import VERSIONS_FILE, pinned_versions, version


def test_defaults_point_at_the_local_stack() -> None:
    s = Settings()
    assert s.kafka.bootstrap_servers == f"127.0.0.1:{s.kafka.port}"
    assert s.registry.url.endswith("/apis/ccompat/v7")
    assert s.stack.state_dir == Path(".omnistream")


def test_env_vars_override_nested_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMNISTREAM_KAFKA__PORT", "29092")
    monkeypatch.setenv("OMNISTREAM_POSTGRES__APP_PASSWORD", "s3cret")
    s = Settings()
    assert s.kafka.bootstrap_servers.endswith(":29092")
    assert "s3cret" not in repr(s.postgres)  # secrets stay out of logs and tracebacks
    assert "password=s3cret" in s.postgres.app_dsn()


def test_every_default_port_is_below_the_ephemeral_range() -> None:
    s = Settings()
    ports = [
        s.postgres.port,
        s.kafka.port,
        s.kafka.controller_port,
        s.registry.port,
        s.registry.management_port,
        s.connect.port,
        s.mail.smtp_port,
        s.mail.imap_port,
        s.mail.api_port,
        s.gcs.port,
        s.api.port,
    ]
    assert len(set(ports)) == len(ports)
    assert all(1024 < p < 32768 for p in ports)


def test_every_server_version_is_pinned_once() -> None:
    pins = pinned_versions()
    for server in ("KAFKA", "DEBEZIUM", "APICURIO", "GREENMAIL", "SNOWFLAKE_CONNECTOR", "POSTGRES"):
        assert version(server) == pins[f"{server}_VERSION"]
    keys = [line.split("=")[0] for line in VERSIONS_FILE.read_text().splitlines() if "=" in line]
    assert len(keys) == len(set(keys))
    with pytest.raises(KeyError, match="not pinned"):
        version("NOPE")


def test_python_servers_are_pinned_to_the_same_version_as_in_dotenv() -> None:
    pyproject = (VERSIONS_FILE.parent / "pyproject.toml").read_text()
    assert f'"gcp-storage-emulator=={version("GCS_EMULATOR")}"' in pyproject


def test_no_secret_has_a_default_and_the_local_stack_generates_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from omnistream.settings import LOCAL_SECRETS
    from omnistream.stack.secrets import ensure_local_secrets

    for section, key in LOCAL_SECRETS:
        monkeypatch.delenv(f"OMNISTREAM_{section.upper()}__{key.upper()}", raising=False)
    monkeypatch.setenv("OMNISTREAM_API__TOKEN", "from-the-environment")
    settings = Settings(stack={"state_dir": tmp_path})
    assert settings.postgres.app_password.get_secret_value() == ""
    drawn = ensure_local_secrets(settings)
    assert sorted(drawn) == sorted(f"{s}.{k}" for s, k in LOCAL_SECRETS if (s, k) != ("api", "token"))
    path = tmp_path / "secrets.json"
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    password = settings.postgres.app_password.get_secret_value()
    assert len(password) >= 20
    again = Settings(stack={"state_dir": tmp_path})  # another process of the same stack
    assert again.postgres.app_password.get_secret_value() == password
    assert again.api.token.get_secret_value() == "from-the-environment"  # the environment wins
    assert ensure_local_secrets(again) == []
    other = Settings(stack={"state_dir": tmp_path / "other"})
    ensure_local_secrets(other)
    assert other.postgres.app_password.get_secret_value() != password  # drawn per stack
