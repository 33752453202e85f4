"""docker-compose.yml, checked by a real compose implementation and against the local stack.

No Docker engine runs here, so the file is checked with the compose implementation's own ``config``
command (which resolves variables, anchors and profiles and validates against the Compose spec), then
its images, versions, ports and settings are compared with what the local stack runs.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
from typing import Any

import pytest
import yaml

from omnistream.settings import Settings
from omnistream.stack.versions import PROJECT_ROOT, version

COMPOSE_SECRETS = (
    "POSTGRES_PASSWORD",
    "SHOP_APP_PASSWORD",
    "DEBEZIUM_PASSWORD",
    "MAILBOX_PASSWORD",
    "API_TOKEN",
)


def compose_command() -> list[str]:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
    if probe.returncode == 0:
        return ["docker", "compose"]
    raise AssertionError(
        "no compose implementation: run stack/install-system-packages.sh (installs docker-compose)"
    )


def resolved(profiles: str) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMPOSE_")}
    env["COMPOSE_PROFILES"] = profiles
    env.update(dict.fromkeys(COMPOSE_SECRETS, "from-the-environment"))
    result = subprocess.run(
        [*compose_command(), "-f", "docker-compose.yml", "config"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "is not set" not in result.stderr, result.stderr  # every ${VAR} is pinned or defaulted
    return yaml.safe_load(result.stdout)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return resolved("local-sink")


def test_images_use_the_versions_pinned_for_the_local_stack(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["postgres"]["image"] == f"postgres:{version('POSTGRES')}"
    assert services["kafka"]["image"] == f"apache/kafka:{version('KAFKA')}"
    assert services["registry"]["image"] == f"apicurio/apicurio-registry:{version('APICURIO')}"
    assert services["greenmail"]["image"] == f"greenmail/standalone:{version('GREENMAIL')}"
    connect_args = services["connect"]["build"]["args"]
    for pin in ("KAFKA", "DEBEZIUM", "SNOWFLAKE_CONNECTOR", "APICURIO_CONVERTER"):
        assert connect_args[f"{pin}_VERSION"] == version(pin)


def test_host_ports_are_the_local_stack_defaults(compose: dict[str, Any]) -> None:
    s = Settings()
    expected = {
        "postgres": {s.postgres.port},
        "kafka": {s.kafka.port},
        "registry": {s.registry.port},
        "connect": {s.connect.port},
        "greenmail": {s.mail.smtp_port, s.mail.imap_port, s.mail.api_port},
        "gcs": {s.gcs.port},
        "api": {s.api.port},
    }
    for service, ports in expected.items():
        published = {int(p["published"]) for p in compose["services"][service]["ports"]}
        assert published == ports, service


def test_every_omnistream_variable_is_a_real_setting(compose: dict[str, Any]) -> None:
    seen = 0
    for name, service in compose["services"].items():
        env = {k: v for k, v in (service.get("environment") or {}).items() if k.startswith("OMNISTREAM_")}
        for key in env:
            section, _, field = key.removeprefix("OMNISTREAM_").lower().partition("__")
            assert field in type(getattr(Settings(), section)).model_fields, f"{name}: {key}"
            seen += 1
        if env:
            loaded = Settings(**_nested(env))
            assert loaded.kafka.bootstrap_servers == "kafka:9092"
    assert seen > 0


def _nested(env: dict[str, str]) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for key, value in env.items():
        section, _, field = key.removeprefix("OMNISTREAM_").lower().partition("__")
        out.setdefault(section, {})[field] = value
    return out


def test_servers_have_healthchecks_and_dependents_wait_for_them(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for server in ("postgres", "kafka", "registry", "connect", "greenmail", "gcs", "api"):
        assert "healthcheck" in services[server], server
    for name, service in services.items():
        for dependency, condition in (service.get("depends_on") or {}).items():
            expected = "service_completed_successfully" if dependency == "init" else "service_healthy"
            assert condition["condition"] == expected, f"{name} -> {dependency}"


def test_snowflake_profile_swaps_the_local_sink_for_the_connector(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["sink"]["profiles"] == ["local-sink"]
    assert services["snowflake-sink"]["profiles"] == ["snowflake"]
    # Only the two landings are behind profiles; the default profile comes from .env.
    assert [n for n, s in services.items() if s.get("profiles")] == ["sink", "snowflake-sink"]
    env_lines = (PROJECT_ROOT / ".env").read_text().splitlines()
    assert "COMPOSE_PROFILES=local-sink" in env_lines


def test_every_omnistream_command_in_the_file_exists(compose: dict[str, Any]) -> None:
    """Each service that runs the omnistream image runs a command the CLI really has."""
    checked = 0
    for name, service in compose["services"].items():
        if service.get("image") != "omnistream:local" or service.get("entrypoint"):
            continue
        words = list(itertools.takewhile(lambda w: not w.startswith("-"), service["command"]))[:3]
        cmd = [sys.executable, "-m", "omnistream", *words, "--help"]
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        assert result.returncode == 0, f"{name}: omnistream {' '.join(words)}: {result.stdout}{result.stderr}"
        checked += 1
    assert checked >= 5


def test_compose_connect_worker_matches_the_local_stack_worker() -> None:
    """Both Connect workers set the same keys (converters, storage topics, config providers)."""

    def keys(path: str) -> set[str]:
        lines = (PROJECT_ROOT / path).read_text().splitlines()
        return {line.split("=", 1)[0] for line in lines if "=" in line and not line.startswith("#")}

    assert keys("connect/connect-distributed.properties") == keys("stack/conf/connect-distributed.properties")


def test_compose_runs_the_same_long_running_services_as_omnistream_up(compose: dict[str, Any]) -> None:
    """One list of services (omnistream/supervise/catalogue.py): compose and `omnistream up` cannot drift."""
    from omnistream.supervise.catalogue import COMPOSE_ONLY, SERVICES

    everything = {**compose["services"], **resolved("snowflake")["services"]}
    assert set(everything) == {s.name for s in SERVICES} | set(COMPOSE_ONLY)
    for spec in SERVICES:
        assert everything[spec.name].get("restart") == "unless-stopped", spec.name
    for name in COMPOSE_ONLY:
        if name != "kafka-ui":  # the one long-running service `up` cannot run: no registry here serves it
            assert everything[name].get("restart") == "no", name


def test_compose_commands_are_the_supervised_programs_commands(compose: dict[str, Any]) -> None:
    """Every source and pipeline service runs the same omnistream command, with the same options."""
    from omnistream.supervise.programs import pipeline_commands

    commands = pipeline_commands(Settings())
    services = compose["services"]
    for name, argv in commands.items():
        ours = argv[3:]  # after `python -m omnistream`
        theirs = [w for w in services[name]["command"] if w not in ("--host", "0.0.0.0", "--port", "5000")]
        if name == "watchdog":
            theirs = [w for w in theirs if w != "--connect-only"]  # compose has no supervisord to watch
        # Rates and intervals are settings; the command and its flags are the same.
        assert [w for w in theirs if w.startswith("-") or w.isalpha()] == [
            w for w in ours if w.startswith("-") or w.isalpha()
        ], name


def test_compose_requires_every_secret_and_names_the_missing_one() -> None:
    """No password has a default in the file: an unset one stops compose with its name."""
    text = (PROJECT_ROOT / "docker-compose.yml").read_text()
    for secret in COMPOSE_SECRETS:
        assert f"${{{secret}:?" in text and f"${{{secret}:-" not in text, secret
    env = {k: v for k, v in os.environ.items() if k not in COMPOSE_SECRETS and not k.startswith("COMPOSE_")}
    env.update(dict.fromkeys(COMPOSE_SECRETS[1:], "set"))
    result = subprocess.run(
        [*compose_command(), "-f", "docker-compose.yml", "config"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0
    assert "set POSTGRES_PASSWORD" in result.stderr
