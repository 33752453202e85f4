"""docker-compose.yml, checked by a real compose implementation and against the local stack.

No Docker engine runs here, so the file is checked with the compose implementation's own ``config``
command (which resolves variables, anchors and profiles and validates against the Compose spec), then
its images, versions, ports and settings are compared with what the local stack runs, and each
healthcheck with the note beside it that names its tool (stack/compose-smoke.sh runs the stack for real,
where a Docker engine is).
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path, PurePosixPath
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


def resolved(profiles: str, **extra: str) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMPOSE_")}
    env["COMPOSE_PROFILES"] = profiles
    env.update(extra)
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


@pytest.fixture(scope="module")
def every_service(compose: dict[str, Any]) -> dict[str, Any]:
    """The services of both profiles (local-sink and snowflake)."""
    return {**compose["services"], **resolved("snowflake")["services"]}


def test_images_use_the_versions_pinned_for_the_local_stack(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["postgres"]["image"] == f"postgres:{version('POSTGRES')}-bookworm"
    assert services["kafka"]["image"] == f"apache/kafka:{version('KAFKA')}"
    assert services["registry"]["image"] == f"apicurio/apicurio-registry:{version('APICURIO')}"
    assert services["greenmail"]["image"] == f"greenmail/standalone:{version('GREENMAIL')}"
    connect_args = services["connect"]["build"]["args"]
    for pin in ("KAFKA", "DEBEZIUM", "SNOWFLAKE_CONNECTOR", "APICURIO_CONVERTER"):
        assert connect_args[f"{pin}_VERSION"] == version(pin)


def published_ports(service: dict[str, Any]) -> list[tuple[str, int]]:
    """(host address, host port) of each published port, from either form `config` prints."""
    out = []
    for port in service.get("ports") or []:
        if isinstance(port, dict):
            out.append((port.get("host_ip", ""), int(port["published"])))
        else:  # "127.0.0.1:25432:5432/tcp" (docker-compose 1.x)
            *host, published, _target = port.split("/")[0].split(":")
            out.append((host[0] if host else "", int(published)))
    return out


def local_stack_ports(s: Settings) -> set[int]:
    """Every port the local stack listens on by default (each `*port` setting of every section)."""
    ports = set()
    for section in type(s).model_fields:
        value = getattr(s, section)
        for field in getattr(type(value), "model_fields", {}):
            if field.endswith("port") and isinstance(getattr(value, field), int):
                ports.add(getattr(value, field))
    return ports


def test_host_ports_never_clash_with_the_local_stack(compose: dict[str, Any]) -> None:
    """Compose publishes the local stack's ports + 10000, on 127.0.0.1: both stacks can run at once."""
    s = Settings()
    local = local_stack_ports(s)
    assert {s.postgres.port, s.kafka.port, s.mail.imap_port, s.airflow.port} <= local
    counterparts = {
        "postgres": {s.postgres.port},
        "kafka": {s.kafka.port},
        "registry": {s.registry.port},
        "connect": {s.connect.port},
        "greenmail": {s.mail.smtp_port, s.mail.imap_port, s.mail.api_port},
        "gcs": {s.gcs.port},
        "api": {s.api.port},
        "airflow-api-server": {s.airflow.port},
        "kafka-ui": {18088},  # the local stack has no Kafka UI: the same scheme, from 18088
    }
    published = {name: published_ports(svc) for name, svc in compose["services"].items() if svc.get("ports")}
    assert set(published) == set(counterparts)
    every = [port for ports in published.values() for _, port in ports]
    assert len(every) == len(set(every))
    readme = (PROJECT_ROOT / "README.md").read_text()
    for name, ports in published.items():
        assert {port for _, port in ports} == {p + 10000 for p in counterparts[name]}, name
        for host, port in ports:
            assert host == "127.0.0.1", f"{name}: {port} is published on every interface"
            assert port not in local and 1024 < port < 32768, f"{name}: {port}"
            assert str(port) in readme, f"{name}: README does not give host port {port}"


def test_every_host_port_moves_with_its_variable() -> None:
    text = (PROJECT_ROOT / "docker-compose.yml").read_text()
    mappings = re.findall(r"^\s*(?:ports: \[|- )\"?127\.0\.0\.1:(\S+?):\d+\"?\]?$", text, re.MULTILINE)
    assert len(mappings) == 11
    assert all(re.fullmatch(r"\$\{COMPOSE_[A-Z_]+_PORT:-2\d{4}\}", m) for m in mappings), mappings
    # Kafka advertises the host port it is published on, so a client outside follows the move.
    kafka = resolved("local-sink", COMPOSE_KAFKA_PORT="29999")["services"]["kafka"]
    assert published_ports(kafka) == [("127.0.0.1", 29999)]
    assert "EXTERNAL://127.0.0.1:29999" in kafka["environment"]["KAFKA_ADVERTISED_LISTENERS"]


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
    one_shots = {name for name, service in services.items() if service.get("restart") == "no"}
    for name, service in services.items():
        for dependency, condition in (service.get("depends_on") or {}).items():
            expected = "service_completed_successfully" if dependency in one_shots else "service_healthy"
            assert condition["condition"] == expected, f"{name} -> {dependency}"
    # `docker compose up --wait` (stack/compose-smoke.sh) fails on a one-shot that exited, unless a
    # long-running service waits for it to complete (the default profile's one-shots, that is).
    awaited = {dep for service in services.values() for dep in (service.get("depends_on") or {})}
    default_one_shots = {name for name in one_shots if not services[name].get("profiles")}
    assert default_one_shots == {"init", "history"} and default_one_shots <= awaited


HEALTHCHECK_NOTE = re.compile(r"^\s*# healthcheck tool: (?P<tool>\S+) — (?P<where>.+)$")


def healthcheck_notes() -> dict[str, tuple[str, str]]:
    """The `# healthcheck tool: TOOL — WHERE` comment of each service in docker-compose.yml."""
    notes: dict[str, tuple[str, str]] = {}
    service, in_services = None, False
    for line in (PROJECT_ROOT / "docker-compose.yml").read_text().splitlines():
        if re.match(r"^[^\s#]", line):  # a top-level key: services, volumes, ...
            service = None
            in_services = line.startswith("services:")
        elif in_services and (m := re.match(r"^  ([a-z0-9-]+):\s*$", line)):
            service = m[1]
        elif (note := HEALTHCHECK_NOTE.match(line)) and service:
            assert service not in notes, f"{service}: two healthcheck notes"
            notes[service] = (note["tool"], note["where"])
    return notes


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", path.read_text())
    lines = [line.strip() for line in joined.splitlines()]
    return [
        (word.upper(), rest.strip())
        for word, _, rest in (line.partition(" ") for line in lines if line and not line.startswith("#"))
    ]


def installed_by(path: Path) -> set[str]:
    """Packages that a RUN line of the Dockerfile installs with the distribution's package manager."""
    installers = r"(?:apk add|apt-get install|microdnf install|dnf install|yum install)"
    packages: set[str] = set()
    for word, rest in dockerfile_instructions(path):
        if word == "RUN":
            for args in re.findall(installers + r"((?:\s+[^\s;&|]+)*)", rest):
                packages |= {p for p in args.split() if not p.startswith("-")}
    return packages


def test_every_healthcheck_uses_a_tool_its_image_has(every_service: dict[str, Any]) -> None:
    """Each healthcheck names its tool and where the image gets it; claims about our Dockerfiles hold."""
    notes = healthcheck_notes()
    checked = {name: s for name, s in every_service.items() if "healthcheck" in s}
    assert set(notes) == set(checked)
    for name, service in checked.items():
        tool, where = notes[name]
        kind, command = service["healthcheck"]["test"][:2]
        first = command.split()[0] if kind == "CMD-SHELL" else command
        assert kind in ("CMD", "CMD-SHELL") and PurePosixPath(first).name == tool, f"{name}: runs {first}"
        dockerfile = service.get("build", {}).get("dockerfile", "Dockerfile")
        if installed := re.search(r"installed in (\S*Dockerfile)", where):
            assert "build" in service and dockerfile == installed[1], (
                f"{name} is not built from {installed[1]}"
            )
            assert tool in installed_by(PROJECT_ROOT / installed[1]), f"{installed[1]} installs no {tool}"
        if base := re.search(r"the FROM (\S+) image of (\S*Dockerfile)", where):
            assert "build" in service and dockerfile == base[2], f"{name} is not built from {base[2]}"
            froms = [rest for word, rest in dockerfile_instructions(PROJECT_ROOT / base[2]) if word == "FROM"]
            assert froms[-1].startswith(f"{base[1]}:"), f"{base[2]}'s image is FROM {froms[-1]}"
    # connect's image (apache/kafka) ships neither curl nor wget: whatever it runs must be ours.
    assert "installed in connect/Dockerfile" in notes["connect"][1]


# PostgreSQL (10 and later) numbers its releases MAJOR.MINOR: 15.19 is one release. Others: MAJOR.MINOR.PATCH.
EXACT_VERSION_PARTS = {"postgres": 2}


def from_images(path: Path, build_args: dict[str, str]) -> list[str]:
    """The images a Dockerfile builds FROM, its ARGs filled in (build arguments over ARG defaults)."""
    values: dict[str, str] = {}
    stages: set[str] = set()
    images = []
    for word, rest in dockerfile_instructions(path):
        if word == "ARG":
            name, _, default = rest.partition("=")
            values[name] = build_args.get(name, default)
        elif word == "FROM":
            image, *alias = rest.split()
            image = re.sub(r"\$\{(\w+)\}", lambda m: values[m[1]], image)
            if alias and alias[0].upper() == "AS":
                stages.add(alias[1])
            if image not in stages:
                images.append(image)
    return images


def test_every_image_is_pinned_to_an_exact_version(every_service: dict[str, Any]) -> None:
    """No floating tag (`latest`, `15`, `3.11-slim`): every image and FROM names one release."""
    images = {}
    for name, service in every_service.items():
        if "build" in service:
            dockerfile = service["build"].get("dockerfile", "Dockerfile")
            for image in from_images(PROJECT_ROOT / dockerfile, service["build"].get("args") or {}):
                images[image] = f"{dockerfile} (built for {name})"
        else:
            images[service["image"]] = name
    # A plain `docker build .` gets the same base as compose: the ARG default is .env's pin.
    assert from_images(PROJECT_ROOT / "Dockerfile", {}) == [f"python:{version('PYTHON')}-slim-bookworm"]
    assert len(images) >= 7, images
    for image, where in images.items():
        repository, _, tag = image.rpartition(":")
        numbers = re.match(r"v?(\d+(?:\.\d+)*)", tag)
        parts = len(numbers[1].split(".")) if numbers else 0
        assert parts >= EXACT_VERSION_PARTS.get(repository, 3), f"{where}: {image} is not an exact version"


def test_compose_smoke_drives_real_services_and_ci_never_runs_it(compose: dict[str, Any]) -> None:
    """stack/compose-smoke.sh needs a Docker engine, so nothing runs it here: its syntax and the services
    it stops, runs and execs into are what can be checked."""
    script = PROJECT_ROOT / "stack" / "compose-smoke.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    named: set[str] = set()
    for line in script.read_text().splitlines():
        if stop := re.search(r"\bcompose stop (?:--timeout \d+ )?(.+)$", line):
            named |= set(stop[1].split())
        elif one := re.search(r"\bcompose (?:exec -T|run --rm --no-deps) (\S+)", line):
            named.add(one[1])
    assert {"sink", "postgres", "airflow-scheduler", "orders-simulator"} <= named <= set(compose["services"])
    assert "compose-smoke" not in (PROJECT_ROOT / ".ci" / "run").read_text()


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


def test_compose_runs_the_same_long_running_services_as_omnistream_up(every_service: dict[str, Any]) -> None:
    """One list of services (omnistream/supervise/catalogue.py): compose and `omnistream up` cannot drift."""
    from omnistream.supervise.catalogue import COMPOSE_ONLY, SERVICES

    everything = every_service
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
