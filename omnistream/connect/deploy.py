"""Apply connector configs to a Connect cluster and wait until they run; restart and delete them.

``apply`` is idempotent: every config is rendered, all are validated by Connect before any is written
(so one bad file changes nothing), each new or changed one is PUT (create or update) and then every
connector is watched until it and all of its tasks are RUNNING. A connector that FAILED is restarted
once; if it fails again, the task's trace summary is raised.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from omnistream.connect import postgres
from omnistream.connect.client import (
    ConnectClient,
    ConnectError,
    ConnectorNotFound,
    ConnectorStatus,
    Validation,
)
from omnistream.connect.config import ConnectorFile, Rendered, included_schemas, render, write_secrets
from omnistream.settings import Settings

log = logging.getLogger(__name__)

# (connector name, what is happening now) — the CLI shows it; the default logs it.
Progress = Callable[[str, str], None]
POLL_S = 0.5
RESTART_GRACE_S = 10.0


def _log_progress(name: str, what: str) -> None:
    log.info("%s: %s", name, what)


class InvalidConnectorConfigs(ConnectError):
    """Connect's validation found errors; nothing was applied."""

    def __init__(self, invalid: dict[str, Validation]) -> None:
        self.invalid = invalid
        lines = []
        for name, validation in invalid.items():
            lines.append(f"{name}: {validation.error_count} invalid field(s)")
            lines += [
                f"  {field}: {'; '.join(errors)}" for field, errors in sorted(validation.errors.items())
            ]
        super().__init__("Connect rejected the config, nothing was applied:\n" + "\n".join(lines))


class ConnectorFailed(ConnectError):
    """The connector or one of its tasks is FAILED."""

    def __init__(self, status: ConnectorStatus) -> None:
        self.status = status
        details = "\n".join(
            f"  {what}: {summary}".replace("\n", "\n    ") for what, summary in status.failures()
        )
        super().__init__(
            f"{status.name} FAILED ({status.describe()}):\n{details}\n"
            f"Full traces: omnistream connect status {status.name}; after fixing the cause: "
            f"omnistream connect restart {status.name}"
        )


class ConnectorTimeout(ConnectError):
    """The connector did not reach RUNNING in time."""


@dataclass(frozen=True)
class Applied:
    name: str
    action: str  # created, updated, unchanged
    status: ConnectorStatus


def prepare(files: Sequence[ConnectorFile], settings: Settings) -> Rendered:
    """Render the configs and write the secrets they refer to."""
    rendered = render(files, settings)
    if rendered.secrets:
        write_secrets(rendered.secrets_file, rendered.secrets)
    return rendered


def validate_all(client: ConnectClient, configs: dict[str, dict[str, str]], progress: Progress) -> None:
    """Raise InvalidConnectorConfigs naming every invalid field of every config."""
    invalid = {}
    for name, config in configs.items():
        progress(name, "validating")
        validation = client.validate(config)
        if not validation.ok:
            invalid[name] = validation
    if invalid:
        raise InvalidConnectorConfigs(invalid)


def wait_running(
    client: ConnectClient,
    name: str,
    *,
    timeout_s: float,
    progress: Progress = _log_progress,
    restart_failed: bool = True,
) -> ConnectorStatus:
    """Poll until ``name`` and all its tasks are RUNNING; a FAILED one is restarted once, then raised."""
    deadline = time.monotonic() + timeout_s
    restarted_at: float | None = None  # when the one restart was asked for
    settled = not restart_failed  # a FAILED state now is the answer, not a leftover
    last = ""
    status: ConnectorStatus | None = None
    while True:
        try:
            status = client.status(name)
        except ConnectorNotFound:
            status = None  # just created: the status topic has not caught up yet
        if status is not None:
            if status.running:
                progress(name, status.describe())
                return status
            if not status.failed and restarted_at is not None:
                settled = True
            if status.failed:
                if restarted_at is None and not settled:
                    progress(name, f"{status.describe()}; restarting once")
                    client.restart(name, only_failed=True)
                    restarted_at = time.monotonic()
                # The status topic may still show the failure from before the restart for a moment.
                elif settled or time.monotonic() - (restarted_at or 0.0) > RESTART_GRACE_S:
                    raise ConnectorFailed(status)
            now = status.describe()
            if now != last:
                progress(name, now)
                last = now
        if time.monotonic() > deadline:
            seen = status.describe() if status else "no status reported"
            raise ConnectorTimeout(
                f"{name} is not RUNNING after {timeout_s:.0f} s ({seen}); "
                f"see `omnistream connect status {name}` and the Connect log"
            )
        time.sleep(POLL_S)


def wait_for_state(client: ConnectClient, name: str, state: str, *, timeout_s: float) -> ConnectorStatus:
    """Poll until the connector and all its tasks report ``state`` (e.g. PAUSED after a pause)."""
    deadline = time.monotonic() + timeout_s
    while True:
        status = client.status(name)
        if status.state == state and status.tasks and all(t.state == state for t in status.tasks):
            return status
        if time.monotonic() > deadline:
            raise ConnectorTimeout(f"{name} is not {state} after {timeout_s:.0f} s ({status.describe()})")
        time.sleep(POLL_S)


def wait_gone(client: ConnectClient, name: str, *, timeout_s: float) -> None:
    """Poll until Connect no longer reports a status for ``name``: its tasks have stopped.

    The DELETE returns before the tasks stop; a Debezium task still starting could otherwise create its
    replication slot again right after it was dropped.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            status = client.status(name)
        except ConnectorNotFound:
            return
        if time.monotonic() > deadline:
            raise ConnectorTimeout(
                f"{name} still reports {status.describe()} {timeout_s:.0f} s after deletion"
            )
        time.sleep(POLL_S)


def apply(
    client: ConnectClient,
    settings: Settings,
    files: Sequence[ConnectorFile],
    *,
    timeout_s: float = 180.0,
    progress: Progress = _log_progress,
    ensure_schemas: bool = True,
) -> list[Applied]:
    """Validate, then create or update every connector of ``files`` and wait for each to run."""
    rendered = prepare(files, settings)
    if ensure_schemas:
        # The Debezium connector should find the shop's tables when it starts (and snapshot them).
        for connector in files:
            if connector.connector_class == postgres.POSTGRES_CONNECTOR:
                schemas = included_schemas(rendered.configs[connector.name])
                progress(connector.name, f"ensuring schema {', '.join(schemas)}")
                postgres.ensure_captured_schemas(settings, schemas)
    validate_all(client, rendered.configs, progress)
    results = []
    for name, config in rendered.configs.items():
        try:
            current: dict[str, str] | None = client.get_config(name)
        except ConnectorNotFound:
            current = None
        action = "created" if current is None else ("unchanged" if current == config else "updated")
        # Connect restarts a connector on every PUT, even of the config it already has: skip those.
        if action == "unchanged":
            progress(name, "config unchanged")
        else:
            progress(name, "applying")
            client.put_config(name, config)
        status = wait_running(client, name, timeout_s=timeout_s, progress=progress)
        results.append(Applied(name, action, status))
    return results


def restart(
    client: ConnectClient,
    names: Sequence[str],
    *,
    wait: bool = True,
    timeout_s: float = 180.0,
    progress: Progress = _log_progress,
) -> list[ConnectorStatus]:
    """Restart each connector with its tasks; with ``wait``, until they run again."""
    statuses = []
    for name in names:
        progress(name, "restarting")
        client.restart(name)
        if wait:
            statuses.append(
                wait_running(client, name, timeout_s=timeout_s, progress=progress, restart_failed=False)
            )
        else:
            statuses.append(client.status(name))
    return statuses


def delete(
    client: ConnectClient,
    settings: Settings,
    name: str,
    *,
    drop_slot: bool = False,
    timeout_s: float = 60.0,
    progress: Progress = _log_progress,
) -> str | None:
    """Delete connector ``name``; with ``drop_slot``, also drop the replication slot of a Debezium
    PostgreSQL connector. Returns the name of a slot left behind, if any."""
    config = client.get_config(name)
    client.delete(name)
    wait_gone(client, name, timeout_s=timeout_s)
    progress(name, "deleted")
    if config.get("connector.class") != postgres.POSTGRES_CONNECTOR:
        return None
    slot = config.get("slot.name", "debezium")
    if not drop_slot:
        return slot
    progress(name, f"dropping replication slot {slot}")
    postgres.drop_slot(settings, slot, dbname=config.get("database.dbname"))
    return None
