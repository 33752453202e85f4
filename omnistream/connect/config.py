"""Connector configs: ``connect/<name>.json`` files, rendered from the settings before they are applied.

A file is ``{"name": <name>, "config": {...}}`` with every value a string. Two placeholders are filled in
by ``omnistream connect apply`` (they look like Kafka config-provider references on purpose, but no worker
ever sees them):

``${omnistream:<section>.<key>}``
    the value of a setting, e.g. ``${omnistream:postgres.host}`` → ``127.0.0.1``. Secrets are refused here.
``${omnistream-secret:<section>.<key>}``
    a secret setting, e.g. ``${omnistream-secret:postgres.replication_password}``. The value goes into a
    0600 properties file under the state directory and the config gets Kafka's own reference to it,
    ``${file:<that file>:postgres.replication_password}``, which the worker's ``file`` config provider
    resolves when the connector starts. So the secret is in neither the repository nor Connect's config
    topic nor the REST API's answers.

``${file:…}`` and ``${env:…}`` references are left for the worker (its providers are ``file`` and ``env``,
stack/conf/connect-distributed.properties); any other ``${provider:…}`` is an error, since it would stay
unresolved at runtime.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretStr

from omnistream.settings import Settings
from omnistream.stack.layout import Layout
from omnistream.stack.versions import PROJECT_ROOT

CONNECT_DIR = PROJECT_ROOT / "connect"
# Applied only when asked for by name (`apply --include snowflake-sink`): the Snowflake sink needs an
# account, and locally the landing sink takes its place.
OPT_IN = frozenset({"snowflake-sink"})
WORKER_PROVIDERS = frozenset({"file", "env"})

PLACEHOLDER = re.compile(r"\$\{(omnistream|omnistream-secret):([A-Za-z0-9_.]+)\}")
PROVIDER_REFERENCE = re.compile(r"\$\{([^}:]+):[^}]*\}")


class ConfigFileError(ValueError):
    """A connector file is malformed or refers to something that does not exist; the message says which."""


@dataclass(frozen=True)
class ConnectorFile:
    """One ``connect/<name>.json`` as written, placeholders and all."""

    name: str
    config: dict[str, str]
    path: Path

    @property
    def connector_class(self) -> str:
        return self.config.get("connector.class", "")


@dataclass(frozen=True)
class Rendered:
    """Configs ready to PUT, and the secrets their ``${file:…}`` references point at."""

    configs: dict[str, dict[str, str]]  # connector name -> config (with "name")
    secrets: dict[str, str]  # key in the secrets file -> value
    secrets_file: Path


def secrets_path(settings: Settings) -> Path:
    """The properties file the worker's ``file`` provider reads connector secrets from."""
    return Layout.from_settings(settings).root / "connect" / "secrets.properties"


def load_file(path: Path) -> ConnectorFile:
    """Read and check one connector file."""
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigFileError(f"{path}: not valid JSON: {exc}") from exc
    if not isinstance(data, dict) or set(data) != {"name", "config"}:
        raise ConfigFileError(f'{path}: expected exactly {{"name": …, "config": {{…}}}}')
    name, config = data["name"], data["config"]
    if not isinstance(name, str) or name != path.stem:
        raise ConfigFileError(f"{path}: the connector name {name!r} must equal the file name {path.stem!r}")
    if not isinstance(config, dict) or not config:
        raise ConfigFileError(f"{path}: config must be a non-empty object")
    not_strings = [k for k, v in config.items() if not isinstance(v, str)]
    if not_strings:
        raise ConfigFileError(f"{path}: every value must be a string; not: {', '.join(not_strings)}")
    if "connector.class" not in config:
        raise ConfigFileError(f"{path}: connector.class is missing")
    return ConnectorFile(name, dict(config), path)


def load_dir(directory: Path = CONNECT_DIR) -> list[ConnectorFile]:
    """Every ``*.json`` connector file in ``directory``, by name."""
    if not directory.is_dir():
        raise ConfigFileError(f"{directory}: no such directory of connector configs")
    files = [load_file(p) for p in sorted(directory.glob("*.json"))]
    if not files:
        raise ConfigFileError(f"{directory}: no connector configs (*.json)")
    return files


def select(
    files: Sequence[ConnectorFile], include: Iterable[str] = (), only: Iterable[str] = ()
) -> list[ConnectorFile]:
    """The default set (every file but the opt-in ones) plus ``include``; or exactly ``only``."""
    by_name = {f.name: f for f in files}
    include, only = list(include), list(only)
    unknown = [n for n in include + only if n not in by_name]
    if unknown:
        raise ConfigFileError(
            f"no connector config named {', '.join(unknown)}; known: {', '.join(sorted(by_name))}"
        )
    if only:
        return [by_name[n] for n in sorted(set(only))]
    return [f for f in files if f.name not in OPT_IN or f.name in include]


def setting(settings: Settings, dotted: str) -> Any:
    """The value of ``settings.<section>.<key>`` (properties included), or ConfigFileError."""
    value: Any = settings
    for part in dotted.split("."):
        if part.startswith("_") or not hasattr(value, part):
            raise ConfigFileError(f"no setting {dotted!r} (see omnistream/settings.py)")
        value = getattr(value, part)
    if callable(value) or isinstance(value, BaseModel | dict | list):
        raise ConfigFileError(f"setting {dotted!r} is not a single value")
    return value


def render(files: Sequence[ConnectorFile], settings: Settings) -> Rendered:
    """Fill in every placeholder of ``files`` from ``settings``."""
    secrets_file = secrets_path(settings).resolve()
    secrets: dict[str, str] = {}
    configs: dict[str, dict[str, str]] = {}

    for connector in files:

        def fill(match: re.Match[str], where: str = connector.name) -> str:
            kind, dotted = match.groups()
            value = setting(settings, dotted)
            if kind == "omnistream":
                if isinstance(value, SecretStr):
                    raise ConfigFileError(
                        f"{where}: {dotted} is a secret; write ${{omnistream-secret:{dotted}}} so that it "
                        "reaches Connect through its file config provider"
                    )
                return str(value)
            if not isinstance(value, SecretStr):
                raise ConfigFileError(f"{where}: {dotted} is not a secret; write ${{omnistream:{dotted}}}")
            secrets[dotted] = value.get_secret_value()
            return f"${{file:{secrets_file}:{dotted}}}"

        config = {"name": connector.name}
        for key, raw in connector.config.items():
            value = PLACEHOLDER.sub(fill, raw)
            for provider in PROVIDER_REFERENCE.findall(value):
                if provider not in WORKER_PROVIDERS:
                    raise ConfigFileError(
                        f"{connector.name}: {key} refers to config provider {provider!r}; the worker has "
                        f"only {', '.join(sorted(WORKER_PROVIDERS))}"
                    )
            config[key] = value
        configs[connector.name] = config
    return Rendered(configs, secrets, secrets_file)


def escape_property(text: str, *, key: bool = False) -> str:
    r"""``text`` as java.util.Properties reads it back: ``\``, ``=``, ``:``, ``#``, ``!``, line breaks,
    leading blanks (all blanks in a key) and non-ASCII escaped."""
    out = []
    for i, char in enumerate(text):
        if char in "\\=:#!":
            out.append("\\" + char)
        elif char == " " and (key or i == 0):
            out.append("\\ ")
        elif char in "\t\n\r\f":
            out.append({"\t": "\\t", "\n": "\\n", "\r": "\\r", "\f": "\\f"}[char])
        elif not 0x20 <= ord(char) < 0x7F:
            # Properties files are read as ISO-8859-1; \uXXXX (UTF-16 units) survives any encoding.
            data = char.encode("utf-16-be")
            out += [f"\\u{data[j]:02x}{data[j + 1]:02x}" for j in range(0, len(data), 2)]
        else:
            out.append(char)
    return "".join(out)


def unescape_property(text: str) -> str:
    """The inverse of :func:`escape_property`."""
    out, i = [], 0
    while i < len(text):
        char = text[i]
        if char != "\\" or i + 1 == len(text):
            out.append(char)
            i += 1
            continue
        nxt = text[i + 1]
        if nxt == "u":
            out.append(chr(int(text[i + 2 : i + 6], 16)))
            i += 6
            continue
        out.append({"t": "\t", "n": "\n", "r": "\r", "f": "\f"}.get(nxt, nxt))
        i += 2
    # \uXXXX pairs of a character outside the BMP were decoded one unit each; join them again.
    return "".join(out).encode("utf-16-be", "surrogatepass").decode("utf-16-be")


def read_secrets(path: Path) -> dict[str, str]:
    """The entries of a secrets file written by :func:`write_secrets` (empty if there is none)."""
    if not path.exists():
        return {}
    entries = {}
    for line in path.read_text(encoding="ascii").splitlines():
        if not line or line.startswith("#"):
            continue
        match = re.match(r"((?:[^\\=]|\\.)*)=(.*)", line)
        if match:
            entries[unescape_property(match.group(1))] = unescape_property(match.group(2))
    return entries


def write_secrets(path: Path, secrets: dict[str, str]) -> None:
    """Merge ``secrets`` into the 0600 properties file at ``path``, atomically.

    Merged, not replaced: connectors applied earlier (another ``--only``, another directory) keep the
    entries they refer to. A lock serialises concurrent applies; the rename means a worker reading the
    file sees the old or the new one, never half of it.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with (path.parent / ".secrets.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        merged = {**read_secrets(path), **secrets}
        lines = ["# Connector secrets, written by `omnistream connect apply` from the settings. Do not edit."]
        lines += [f"{escape_property(k, key=True)}={escape_property(v)}" for k, v in sorted(merged.items())]
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".secrets-", suffix=".tmp")  # mode 0600
        try:
            with os.fdopen(fd, "w", encoding="ascii") as out:
                out.write("\n".join(lines) + "\n")
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def included_schemas(config: dict[str, str]) -> list[str]:
    """The PostgreSQL schemas named in a Debezium ``table.include.list`` (``schema.table`` entries)."""
    entries = [e.strip() for e in config.get("table.include.list", "").split(",") if e.strip()]
    return sorted({e.split(".", 1)[0] for e in entries if "." in e})
