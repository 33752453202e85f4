from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from datetime import date
from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from omnistream.errors import UsageError
from omnistream.settings import (
    LOCAL_SECRETS,
    Settings,
    SnowflakeSettings,
    dbt_profile_outputs,
    known_variables,
    settings_environment,
    unknown_variables,
    warn_unknown_variables,
)
from omnistream.stack.versions import VERSIONS_FILE, pinned_versions, version
from omnistream.warehouse.dbt import (
    PROJECT_DIR,
    DbtRun,
    adapter,
    configured_run,
    dbt_env,
    default_duckdb_path,
    scheduled_run,
)
from omnistream.warehouse.snowflake import connect_params

REPO_ROOT = Path(__file__).resolve().parents[2]


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


def _clean_environment(monkeypatch: pytest.MonkeyPatch, cwd: Path) -> None:
    """No OMNISTREAM_ variable of this process and no .env file: only what the test sets counts."""
    for name in list(os.environ):
        if name.upper().startswith("OMNISTREAM_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(cwd)


def test_settings_environment_round_trips_every_section(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _clean_environment(monkeypatch, tmp_path)
    settings = Settings(
        stack={"state_dir": tmp_path / "state", "start_timeout_s": 99.5},
        postgres={"port": 25432, "app_password": "app-secret"},
        kafka={"port": 29092},
        registry={"heap": "256m"},
        connect={"group_id": "other-connect"},
        mail={"domain": "mail.example"},
        gcs={"bucket": "other-bucket"},
        api={"token": "api-secret"},
        landing={"dir": tmp_path / "landing", "flush_records": 7},
        metrics={"sink_port": 0},
        airflow={"dbt_in_flight_minutes": 5},
        pipeline={"sources": "none"},
        history={"root": "gs://b/h", "stage_access": "internal", "storage_integration": "MY_GCS"},
        dbt={
            "target": "snowflake",
            "duckdb_path": tmp_path / "w.duckdb",
            "threads": 4,
            "gcs_token": "google_default",
            "date_spine_start": date(2020, 1, 1),
            "in_flight_minutes": 12,
        },
        snowflake={"account": "org-acct", "password": "sf-secret", "schema": "ANALYTICS", "port": 8443},
    )
    env = settings_environment(settings)
    sections = {name.removeprefix("OMNISTREAM_").split("__")[0].lower() for name in env}
    assert sections == set(Settings.model_fields)
    assert env["OMNISTREAM_SNOWFLAKE__SCHEMA"] == "ANALYTICS"  # the variable the dbt profile reads
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    again = Settings()
    assert again.model_dump() == settings.model_dump()
    secrets = [(s, k) for s, k in LOCAL_SECRETS] + [("snowflake", "password")]
    for section, key in secrets:
        assert getattr(getattr(again, section), key) == getattr(getattr(settings, section), key)
    assert again.snowflake.password.get_secret_value() == "sf-secret"


def test_dbt_targets_are_the_profiles_outputs() -> None:
    assert dbt_profile_outputs() == {"local": "duckdb", "snowflake": "snowflake"}
    assert (adapter("local"), adapter("snowflake")) == ("duckdb", "snowflake")
    with pytest.raises(ValidationError, match=r"dbt.target is one of local, snowflake .*not 'nosuch'"):
        Settings(dbt={"target": "nosuch"})


def test_dbt_and_snowflake_values_are_checked(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _clean_environment(monkeypatch, tmp_path)
    with pytest.raises(ValidationError, match="date_spine_start must come before"):
        Settings(dbt={"date_spine_start": "2030-01-01", "date_spine_end": "2020-01-01"})
    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        Settings(dbt={"threads": 0})
    with pytest.raises(ValidationError, match="'https' or 'http'"):
        Settings(snowflake={"protocol": "ftp"})
    monkeypatch.setenv("OMNISTREAM_SNOWFLAKE__SCHEMA", "MARTS")
    monkeypatch.setenv("OMNISTREAM_SNOWFLAKE__PASSWORD", "hunter2")
    settings = Settings()
    assert settings.snowflake.schema_ == "MARTS"
    assert "hunter2" not in repr(settings.snowflake)


def _dbt_env_vars(text: str) -> dict[str, str | None]:
    """``env_var('NAME'[, 'default'])`` calls in a dbt file: name → default (None without one)."""
    calls = re.finditer(r"env_var\(\s*'(OMNISTREAM_\w+)'\s*(,\s*'([^']*)'\s*)?\)", text)
    return {call[1]: call[3] if call[2] else None for call in calls}


def test_every_variable_dbt_reads_is_a_setting() -> None:
    read: set[str] = set()
    for path in PROJECT_DIR.rglob("*"):
        if path.suffix in (".yml", ".sql") and "target" not in path.relative_to(PROJECT_DIR).parts:
            read.update(_dbt_env_vars(path.read_text()))
    assert "OMNISTREAM_DBT__TARGET" in read and "OMNISTREAM_SNOWFLAKE__SCHEMA" in read
    assert read <= known_variables(), sorted(read - known_variables())


def test_the_dbt_profiles_defaults_are_the_settings_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Plain dbt (without omnistream setting the variables) builds what omnistream would."""
    _clean_environment(monkeypatch, tmp_path)
    settings = Settings()
    written = dbt_env(DbtRun(duckdb_path=tmp_path / "unused.duckdb"), settings, base={})
    # The profile's relative default is taken from dbt/, the setting's from the repository's root.
    written["OMNISTREAM_DBT__DUCKDB_PATH"] = os.path.normpath(
        Path("dbt") / ".." / default_duckdb_path(settings)
    )
    defaults = _dbt_env_vars((PROJECT_DIR / "profiles.yml").read_text())
    assert defaults, "no env_var() found in dbt/profiles.yml"
    for name, default in defaults.items():
        assert default is not None, f"{name} has no default in dbt/profiles.yml"
        if default.startswith("../"):
            default = os.path.normpath(Path("dbt") / default)
        assert written[name] == default, name


def test_dbt_gets_its_variables_from_the_settings(tmp_path: Path) -> None:
    settings = Settings(
        stack={"state_dir": tmp_path},
        dbt={"target": "snowflake", "threads": 3, "raw_schema": "landing"},
        snowflake={"account": "org-acct", "password": "sf-secret", "schema": "ANALYTICS"},
    )
    # A stale variable of the caller's environment does not win over the settings.
    env = dbt_env(DbtRun(), settings, base={"OMNISTREAM_DBT__TARGET": "local", "PATH": "/bin"})
    assert env["PATH"] == "/bin"
    assert env["OMNISTREAM_DBT__TARGET"] == "snowflake"
    assert env["OMNISTREAM_DBT__THREADS"] == "3"
    assert env["OMNISTREAM_DBT__RAW_SCHEMA"] == "landing"
    assert env["OMNISTREAM_DBT__DUCKDB_PATH"] == str(tmp_path.resolve() / "warehouse" / "omnistream.duckdb")
    assert env["OMNISTREAM_SNOWFLAKE__ACCOUNT"] == "org-acct"
    assert env["OMNISTREAM_SNOWFLAKE__PASSWORD"] == "sf-secret"
    assert env["OMNISTREAM_SNOWFLAKE__SCHEMA"] == "ANALYTICS"
    assert "OMNISTREAM_POSTGRES__APP_PASSWORD" not in env  # only the sections dbt reads
    assert set(_dbt_env_vars((PROJECT_DIR / "profiles.yml").read_text())) <= set(env)
    # A run's own choices win over the settings.
    local = dbt_env(DbtRun(target="local", threads=1), settings, base={})
    assert (local["OMNISTREAM_DBT__TARGET"], local["OMNISTREAM_DBT__THREADS"]) == ("local", "1")


def test_the_scheduled_run_skips_rows_in_flight(tmp_path: Path) -> None:
    settings = Settings(stack={"state_dir": tmp_path}, airflow={"dbt_in_flight_minutes": 20})
    assert configured_run(settings).in_flight_minutes == 0
    scheduled = scheduled_run(settings)
    assert (scheduled.target, scheduled.in_flight_minutes) == ("local", 20)
    assert scheduled.duckdb_path == tmp_path / "warehouse" / "omnistream.duckdb"
    with pytest.raises(UsageError, match="unknown dbt target 'nosuch'"):
        DbtRun(target="nosuch")


def test_snowflake_connection_comes_from_the_settings() -> None:
    with pytest.raises(UsageError, match="OMNISTREAM_SNOWFLAKE__ACCOUNT"):
        connect_params(SnowflakeSettings())
    account = SnowflakeSettings(account="org-acct", user="loader", password=SecretStr("pw"))
    params = connect_params(account)
    assert params["account"] == "org-acct" and params["password"] == "pw"
    assert "host" not in params  # Snowflake itself: the connector derives the host from the account
    stand_in = connect_params(
        account.model_copy(update={"host": "127.0.0.1", "port": 8080, "protocol": "http"})
    )
    assert (stand_in["host"], stand_in["port"], stand_in["protocol"]) == ("127.0.0.1", 8080, "http")


def test_unknown_variables_are_named_with_the_closest_known_one() -> None:
    unknown = unknown_variables(
        [
            "OMNISTREAM_KAFKA__PROT",
            "OMNISTREAM_KAFKA__PORT",
            "omnistream_dbt__target",  # the settings read names without case
            "OMNISTREAM_SNOWFLAKE__SCHEMA",
            "OMNISTREAM_KAFKA",  # a whole section as JSON
            "OMNISTREAM_DBT__TRAGET",
            "OMNISTREAM_QQQQQQ",
            "PATH",
        ]
    )
    assert unknown == {
        "OMNISTREAM_KAFKA__PROT": "OMNISTREAM_KAFKA__PORT",
        "OMNISTREAM_DBT__TRAGET": "OMNISTREAM_DBT__TARGET",
        "OMNISTREAM_QQQQQQ": None,
    }


def test_unknown_variables_are_warned_about_one_line_each(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("KAFKA_VERSION=4.3.1\nOMNISTREAM_GCS__BUKET=b\n")
    with caplog.at_level(logging.WARNING, logger="omnistream.settings"):
        warn_unknown_variables({"OMNISTREAM_KAFKA__PROT": "1", "OMNISTREAM_QQQQQQ": "1", "HOME": "/"})
    assert [r.getMessage() for r in caplog.records] == [
        "unknown setting OMNISTREAM_GCS__BUKET is ignored; did you mean OMNISTREAM_GCS__BUCKET?",
        "unknown setting OMNISTREAM_KAFKA__PROT is ignored; did you mean OMNISTREAM_KAFKA__PORT?",
        "unknown setting OMNISTREAM_QQQQQQ is ignored",
    ]
    assert {r.levelno for r in caplog.records} == {logging.WARNING}


def test_unknown_variables_are_warned_about_once_per_process(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("OMNISTREAM_")}
    env.update(OMNISTREAM_KAFKA__PROT="1", PYTHONPATH=str(REPO_ROOT))
    script = (
        "from omnistream.settings import get_settings\n"
        "first = get_settings()\n"
        "get_settings.cache_clear()\n"
        "assert get_settings().kafka.port == first.kafka.port\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr  # a warning, never a failure
    warnings = [line for line in result.stderr.splitlines() if "OMNISTREAM_KAFKA__PROT" in line]
    assert warnings == [
        "unknown setting OMNISTREAM_KAFKA__PROT is ignored; did you mean OMNISTREAM_KAFKA__PORT?"
    ]
