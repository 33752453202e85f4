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

:func:`resolve` goes one step further for ``omnistream connect validate``: it replaces those references
with the values the worker's providers would read, so that Connect validates the values the connector
will really run with. Kafka Connect resolves references itself before it validates, but only with what
the worker can read; one it cannot resolve reaches the connector as text, and the Snowflake connector
then skips its login check.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import re
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretStr

from omnistream.errors import OmnistreamError
from omnistream.resources import connector_configs_dir
from omnistream.settings import Settings
from omnistream.stack.layout import Layout

CONNECT_DIR = connector_configs_dir()
# Applied only when asked for by name (`apply --include snowflake-sink`): the Snowflake sink needs an
# account, and locally the landing sink takes its place.
OPT_IN = frozenset({"snowflake-sink"})
WORKER_PROVIDERS = frozenset({"file", "env"})

PLACEHOLDER = re.compile(r"\$\{(omnistream|omnistream-secret):([A-Za-z0-9_.]+)\}")
PROVIDER_REFERENCE = re.compile(r"\$\{([^}:]+):[^}]*\}")
# Kafka's ConfigTransformer pattern: ${provider:[path:]key}.
WORKER_REFERENCE = re.compile(r"\$\{([^}]*?):(([^}]*?):)?([^}]*?)\}")


class ConfigFileError(OmnistreamError):
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


@dataclass(frozen=True)
class Reference:
    """One worker reference that :func:`resolve` replaced: where, which, and where its value came from."""

    field: str
    text: str  # e.g. ${env:SNOWFLAKE_URL}
    source: str  # e.g. "environment variable SNOWFLAKE_URL"; never the value


@dataclass(frozen=True)
class Resolved:
    """A config with no reference left, as the connector would receive it; and what was replaced."""

    name: str
    config: dict[str, str]
    references: tuple[Reference, ...]
    # The values put in, so that output can be scrubbed of them; never shown.
    values: tuple[str, ...] = dataclasses.field(default=(), repr=False)

    def redact(self, text: str) -> str:
        """``text`` with every value put in by :func:`resolve` replaced by ``[resolved]``."""
        for value in sorted(self.values, key=len, reverse=True):
            if len(value) >= 4:
                text = text.replace(value, "[resolved]")
        return text


class UnresolvedReferences(ConfigFileError):
    """References whose provider would find no value; the message names each (never a value)."""

    def __init__(self, name: str, missing: Sequence[tuple[str, str, str]]) -> None:
        self.missing = list(missing)  # (field, reference, why)
        lines = [f"{name}: {len(self.missing)} reference(s) have no value here; nothing was sent to Connect:"]
        lines += [f"  {field}: {text}: {why}" for field, text, why in self.missing]
        super().__init__("\n".join(lines))


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


def resolve(rendered: Rendered, name: str, environ: Mapping[str, str] | None = None) -> Resolved:
    """``rendered.configs[name]`` with every ``${env:…}`` and ``${file:…}`` reference replaced by what the
    worker's provider would read.

    ``${env:VAR}`` comes from ``environ`` (this process's environment by default: the worker reads its
    own, which is the same only if it was started with the same variables). ``${file:path:key}`` comes
    from that properties file, except the secrets file :func:`render` refers to, whose values come from
    the settings, as ``apply`` would write them. Every reference without a value is named in one
    :class:`UnresolvedReferences`; an empty variable is a value (the provider passes it on as it is).
    """
    environ = os.environ if environ is None else environ
    files: dict[Path, dict[str, str] | str] = {}  # path -> its entries, or why it cannot be read
    missing: list[tuple[str, str, str]] = []
    references: list[Reference] = []
    values: list[str] = []

    def from_file(path: Path, key: str) -> tuple[str | None, str]:
        if path == rendered.secrets_file and key in rendered.secrets:
            return rendered.secrets[key], f"setting {key} (apply writes it to {path})"
        if path not in files:
            try:
                files[path] = read_properties(path)
            except OSError as exc:
                files[path] = f"cannot read {path} ({exc.strerror or type(exc).__name__})"
        entries = files[path]
        if isinstance(entries, str):
            return None, entries
        if key not in entries:
            return None, f"{path} has no key {key!r}"
        return entries[key], f"{path}, key {key}"

    def lookup(provider: str, path: str | None, key: str) -> tuple[str | None, str]:
        """(value or None, where it came from or why there is none)."""
        if provider == "env" and not path:
            value = environ.get(key)
            return value, f"environment variable {key}" + ("" if value is not None else " is not set")
        if provider == "file" and path:
            return from_file(Path(path), key)
        return None, f"the worker's providers ({', '.join(sorted(WORKER_PROVIDERS))}) cannot read it"

    config: dict[str, str] = {}
    for field, text in rendered.configs[name].items():
        parts, end = [], 0
        for match in WORKER_REFERENCE.finditer(text):
            provider, _, path, key = match.groups()
            value, source = lookup(provider, path, key)
            parts.append(text[end : match.start()])
            if value is None:
                missing.append((field, match.group(0), source))
                parts.append(match.group(0))
            else:
                references.append(Reference(field, match.group(0), source))
                values.append(value)
                parts.append(value)
            end = match.end()
        config[field] = "".join(parts) + text[end:]
    if missing:
        raise UnresolvedReferences(name, missing)
    return Resolved(name, config, tuple(references), tuple(values))


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


def read_properties(path: Path) -> dict[str, str]:
    """A properties file as java.util.Properties (and so Kafka's ``file`` provider) reads it: comments,
    ``=``, ``:`` or blank separators, continued lines, escapes."""
    entries: dict[str, str] = {}
    lines = iter(path.read_text(encoding="latin-1").splitlines())
    for raw in lines:
        line = raw.lstrip(" \t\f")
        if not line or line[0] in "#!":
            continue
        # A line ending in an odd number of backslashes continues on the next one.
        while (len(line) - len(line.rstrip("\\"))) % 2 == 1:
            line = line[:-1] + next(lines, "").lstrip(" \t\f")
        match = re.match(r"((?:[^\\=: \t\f]|\\.)*)[ \t\f]*[=:]?[ \t\f]*(.*)", line)
        if match:
            entries[unescape_property(match.group(1))] = unescape_property(match.group(2))
    return entries


def read_secrets(path: Path) -> dict[str, str]:
    """The entries of a secrets file written by :func:`write_secrets` (empty if there is none)."""
    return read_properties(path) if path.exists() else {}


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
