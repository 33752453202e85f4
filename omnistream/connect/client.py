"""A small client of the Kafka Connect REST API: connectors, their configs and states, validation.

Transient failures (Connect not answering yet, a rebalance in progress, a gateway error) are retried with
backoff for a while; everything else is raised at once as a :class:`ConnectError` whose message says what
went wrong and, where it can, what to do.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx
from tenacity import (
    retry,
    retry_if_exception,
    stop_after_delay,
    wait_exponential,
)

from omnistream.errors import OmnistreamError, Unreachable

log = logging.getLogger(__name__)

# Validation may open connections to the source or sink (Debezium logs into PostgreSQL, the Snowflake
# connector tries its account), which takes far longer than any other request.
VALIDATE_TIMEOUT_S = 180.0
REQUEST_TIMEOUT_S = 30.0
# 409: the worker group is rebalancing and cannot take a write yet; 502-504: a proxy in front of it.
RETRY_STATUSES = frozenset({409, 502, 503, 504})
# Kafka 4.x (KIP-891): which installed version of a plugin a connector runs; unset means the newest.
CONNECTOR_VERSION = "connector.plugin.version"


class ConnectError(OmnistreamError):
    """Connect refused a request or could not be reached; the message says what to fix."""


class ConnectUnreachable(ConnectError, Unreachable):
    """No answer from Connect's REST port."""


class ConnectorNotFound(ConnectError):
    """No connector of that name on the cluster."""


class ValidationTimedOut(ConnectError):
    """Connect stopped waiting for a plugin's validation (its REST request timeout, 90 s by default)."""


class _Transient(Exception):
    """A response worth retrying (see RETRY_STATUSES)."""

    def __init__(self, response: httpx.Response) -> None:
        super().__init__(f"{response.status_code} {response.text[:200]}")
        self.response = response


@dataclass(frozen=True)
class TaskState:
    id: int
    state: str
    worker_id: str = ""
    trace: str = ""


@dataclass(frozen=True)
class ConnectorStatus:
    """``GET /connectors/{name}/status``: the connector's own state and each task's."""

    name: str
    state: str
    worker_id: str = ""
    trace: str = ""
    type: str = ""
    tasks: tuple[TaskState, ...] = ()

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> ConnectorStatus:
        connector = body.get("connector", {})
        tasks = tuple(
            TaskState(t["id"], t["state"], t.get("worker_id", ""), t.get("trace", ""))
            for t in sorted(body.get("tasks", []), key=lambda t: t["id"])
        )
        return cls(
            name=body["name"],
            state=connector.get("state", "UNASSIGNED"),
            worker_id=connector.get("worker_id", ""),
            trace=connector.get("trace", ""),
            type=body.get("type", ""),
            tasks=tasks,
        )

    @property
    def running(self) -> bool:
        """The connector and at least one task run, and no task is in another state."""
        return self.state == "RUNNING" and bool(self.tasks) and all(t.state == "RUNNING" for t in self.tasks)

    @property
    def failed(self) -> bool:
        return self.state == "FAILED" or any(t.state == "FAILED" for t in self.tasks)

    def describe(self) -> str:
        """``RUNNING, tasks 0 RUNNING, 1 FAILED``."""
        tasks = ", ".join(f"{t.id} {t.state}" for t in self.tasks) or "none yet"
        return f"{self.state}, tasks {tasks}"

    def failures(self) -> list[tuple[str, str]]:
        """(what, trace summary) of the connector and each failed task."""
        found = []
        if self.state == "FAILED":
            found.append(("connector", trace_summary(self.trace)))
        found += [(f"task {t.id}", trace_summary(t.trace)) for t in self.tasks if t.state == "FAILED"]
        return found


@dataclass(frozen=True)
class Validation:
    """The answer of ``PUT /connector-plugins/{class}/config/validate``.

    Connect answers with one entry per field that it or the plugin defines (a ``definition``), whether the
    config set it or not; a field of the config that nothing defines is absent, so nothing checked it.
    """

    plugin: str
    error_count: int
    errors: dict[str, list[str]] = field(default_factory=dict)  # field name -> its errors
    defined: frozenset[str] = frozenset()  # fields with a definition: the ones Connect checked
    version: str = ""  # the plugin version that validated (connector.plugin.version, Kafka 4.x)
    versions: tuple[str, ...] = ()  # the versions of the plugin installed on the worker

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Validation:
        errors: dict[str, list[str]] = {}
        defined: set[str] = set()
        version: str = ""
        versions: tuple[str, ...] = ()
        for item in body.get("configs", []):
            value = item.get("value") or {}
            if value.get("errors"):
                errors[value["name"]] = list(value["errors"])
            if item.get("definition"):
                defined.add(item["definition"]["name"])
            if value.get("name") == CONNECTOR_VERSION:
                version = str(value.get("value") or "")
                versions = tuple(str(v) for v in value.get("recommended_values") or ())
        return cls(
            body.get("name", ""),
            int(body.get("error_count", 0)),
            errors,
            frozenset(defined),
            version,
            versions,
        )

    @property
    def ok(self) -> bool:
        return self.error_count == 0


def trace_summary(trace: str, max_lines: int = 6, width: int = 300) -> str:
    """The lines of a Java stack trace that say what happened: the first and every ``Caused by``."""
    if not trace:
        return "(no trace)"
    lines = [line.strip() for line in trace.splitlines() if line.strip()]
    picked = [lines[0]] + [line for line in lines[1:] if line.startswith("Caused by:")]
    unique = list(dict.fromkeys(picked))[:max_lines]
    return "\n".join(line if len(line) <= width else line[: width - 1] + "…" for line in unique)


def _message(response: httpx.Response) -> str:
    """The ``message`` of Connect's error body, or the body itself."""
    try:
        return str(response.json().get("message", response.text))
    except (ValueError, AttributeError):
        return response.text


def _transient(exc: BaseException) -> bool:
    return isinstance(exc, httpx.TransportError | _Transient)


class ConnectClient:
    """Talks to one Connect cluster's REST API at ``url``."""

    def __init__(self, url: str, *, retry_for_s: float = 20.0) -> None:
        self.url = url.rstrip("/")
        self.retry_for_s = retry_for_s
        self._http = httpx.Client(base_url=self.url, timeout=REQUEST_TIMEOUT_S)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ConnectClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _request(
        self, method: str, path: str, *, timeout: float | None = None, **kwargs: Any
    ) -> httpx.Response:
        @retry(
            retry=retry_if_exception(_transient),
            stop=stop_after_delay(self.retry_for_s),
            wait=wait_exponential(multiplier=0.25, max=4),
            reraise=True,
        )
        def send() -> httpx.Response:
            response = self._http.request(method, path, timeout=timeout or REQUEST_TIMEOUT_S, **kwargs)
            if response.status_code in RETRY_STATUSES:
                raise _Transient(response)
            return response

        try:
            return send()
        except httpx.TransportError as exc:
            raise ConnectUnreachable(
                f"Kafka Connect does not answer at {self.url} ({type(exc).__name__}: {exc}). Start it with "
                "`omnistream stack up`, or point OMNISTREAM_CONNECT__HOST / OMNISTREAM_CONNECT__PORT at it."
            ) from exc
        except _Transient as exc:
            return exc.response

    @staticmethod
    def _check(response: httpx.Response, what: str) -> httpx.Response:
        if response.is_success:
            return response
        message = _message(response)
        if response.status_code == 404:
            raise ConnectorNotFound(f"{what}: not found ({message})")
        raise ConnectError(f"{what}: Connect answered {response.status_code}: {message}")

    def plugins(self) -> list[dict[str, Any]]:
        """Installed connector plugins (class, type, version)."""
        return list(self._check(self._request("GET", "/connector-plugins"), "list plugins").json())

    def connectors(self) -> list[str]:
        return sorted(self._check(self._request("GET", "/connectors"), "list connectors").json())

    def validate(self, config: dict[str, str]) -> Validation:
        """Connect's own check of a full config, without creating anything."""
        plugin = config.get("connector.class", "")
        response = self._request(
            "PUT",
            f"/connector-plugins/{quote(plugin, safe='')}/config/validate",
            json=config,
            timeout=VALIDATE_TIMEOUT_S,
        )
        what = f"validate {config.get('name', '?')}"
        if response.status_code == 500 and "timed out" in response.text.lower():
            # The worker goes on validating in the background; only the answer is lost.
            raise ValidationTimedOut(f"{what}: Connect stopped waiting: {_message(response)}")
        return Validation.from_json(self._check(response, what).json())

    def get_config(self, name: str) -> dict[str, str]:
        path = f"/connectors/{quote(name, safe='')}/config"
        return dict(self._check(self._request("GET", path), f"connector {name}").json())

    def put_config(self, name: str, config: dict[str, str]) -> bool:
        """Create or update a connector; True when it was created. Idempotent."""
        body = {k: v for k, v in config.items() if k != "name"}
        path = f"/connectors/{quote(name, safe='')}/config"
        response = self._check(self._request("PUT", path, json=body), f"apply {name}")
        return response.status_code == 201

    def status(self, name: str) -> ConnectorStatus:
        path = f"/connectors/{quote(name, safe='')}/status"
        return ConnectorStatus.from_json(self._check(self._request("GET", path), f"connector {name}").json())

    def statuses(self) -> list[ConnectorStatus]:
        """Every connector's status in one request."""
        body = self._check(self._request("GET", "/connectors", params={"expand": "status"}), "list").json()
        return [ConnectorStatus.from_json(item["status"]) for _, item in sorted(body.items())]

    def restart(self, name: str, *, only_failed: bool = False) -> None:
        """Restart the connector and its tasks (``includeTasks=true``)."""
        params = {"includeTasks": "true", "onlyFailed": str(only_failed).lower()}
        path = f"/connectors/{quote(name, safe='')}/restart"
        self._check(self._request("POST", path, params=params), f"restart {name}")

    def pause(self, name: str) -> None:
        """Stop the tasks from polling; a Debezium connector keeps its slot, which holds the backlog."""
        self._check(self._request("PUT", f"/connectors/{quote(name, safe='')}/pause"), f"pause {name}")

    def resume(self, name: str) -> None:
        self._check(self._request("PUT", f"/connectors/{quote(name, safe='')}/resume"), f"resume {name}")

    def delete(self, name: str) -> None:
        path = f"/connectors/{quote(name, safe='')}"
        self._check(self._request("DELETE", path), f"delete {name}")
