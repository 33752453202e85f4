"""A small client of Airflow's REST API v2: health, DAG runs, triggering and unpausing DAGs.

The local stack's Airflow uses the simple auth manager with every user an admin (see ``config``), so a token
is had without credentials from ``GET /auth/token``; it is fetched on first use and again when the API
answers 401 (tokens expire after a day). Connection failures and 502-504 answers are retried with backoff for
a while (the API server may be starting); then :class:`AirflowUnreachable` says where Airflow was expected.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote

import httpx
from tenacity import retry, retry_if_exception, stop_after_delay, wait_exponential

from omnistream.errors import OmnistreamError, Unreachable
from omnistream.settings import Settings

log = logging.getLogger(__name__)

REQUEST_TIMEOUT_S = 30.0
RETRY_STATUSES = frozenset({502, 503, 504})


class AirflowError(OmnistreamError):
    """Airflow refused a request; the message says what and why."""


class AirflowUnreachable(AirflowError, Unreachable):
    """No answer from Airflow's API server."""


class DagNotFound(AirflowError):
    """No DAG of that id (yet: a new DAG file is known once the DAG processor has parsed it)."""


class _Transient(Exception):
    """A 502-504 answer, retried; never leaves the client (the last one is returned as the response)."""

    def __init__(self, response: httpx.Response) -> None:
        super().__init__(f"{response.status_code} {response.text[:200]}")
        self.response = response


def _transient(exc: BaseException) -> bool:
    return isinstance(exc, httpx.TransportError | _Transient)


def _timestamp(value: str | None) -> datetime | None:
    """An ISO 8601 timestamp from the API (always with an offset) as an aware datetime."""
    if not value:
        return None
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        raise AirflowError(f"Airflow returned a timestamp without a time zone: {value!r}")
    return parsed


@dataclass(frozen=True)
class DagRunInfo:
    """One DAG run as ``GET /api/v2/dags/{dag_id}/dagRuns`` describes it; dates are timezone-aware."""

    dag_id: str
    dag_run_id: str
    state: str
    run_type: str
    start_date: datetime | None
    end_date: datetime | None
    logical_date: datetime | None = None

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> DagRunInfo:
        return cls(
            dag_id=body["dag_id"],
            dag_run_id=body["dag_run_id"],
            state=body["state"],
            run_type=body.get("run_type", ""),
            start_date=_timestamp(body.get("start_date")),
            end_date=_timestamp(body.get("end_date")),
            logical_date=_timestamp(body.get("logical_date")),
        )


class AirflowClient:
    """Talks to the local stack's Airflow API server (``settings.airflow.url``)."""

    def __init__(self, settings: Settings, *, retry_for_s: float = 20.0) -> None:
        self.url = settings.airflow.url.rstrip("/")
        self.retry_for_s = retry_for_s
        self._http = httpx.Client(base_url=self.url, timeout=REQUEST_TIMEOUT_S)
        self._token: str | None = None

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> AirflowClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        @retry(
            retry=retry_if_exception(_transient),
            stop=stop_after_delay(self.retry_for_s),
            wait=wait_exponential(multiplier=0.25, max=4),
            reraise=True,
        )
        def send() -> httpx.Response:
            response = self._http.request(method, path, **kwargs)
            if response.status_code in RETRY_STATUSES:
                raise _Transient(response)
            return response

        try:
            return send()
        except httpx.TimeoutException as exc:
            raise AirflowUnreachable(
                f"Airflow at {self.url} did not answer {method} {path} within {REQUEST_TIMEOUT_S:.0f} s "
                f"({type(exc).__name__}); it may still be starting, or be overloaded"
            ) from exc
        except httpx.TransportError as exc:
            raise AirflowUnreachable(
                f"Airflow does not answer at {self.url} ({type(exc).__name__}: {exc}). Start it with "
                "`omnistream up`, or point OMNISTREAM_AIRFLOW__HOST / OMNISTREAM_AIRFLOW__PORT at it."
            ) from exc
        except _Transient as exc:
            return exc.response

    def _fetch_token(self) -> str:
        response = self._send("GET", "/auth/token")
        if response.status_code == 403:
            raise AirflowError(
                f"Airflow at {self.url} does not hand out tokens without credentials: it is not the local "
                "stack's Airflow (simple auth manager with simple_auth_manager_all_admins=True)"
            )
        return str(self._check(response, "get a token")["access_token"])

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        if self._token is None:
            self._token = self._fetch_token()
        response = self._send(method, path, headers={"Authorization": f"Bearer {self._token}"}, **kwargs)
        if response.status_code == 401:  # expired: one fresh token, one more try
            self._token = self._fetch_token()
            response = self._send(method, path, headers={"Authorization": f"Bearer {self._token}"}, **kwargs)
        return response

    @staticmethod
    def _check(response: httpx.Response, what: str) -> Any:
        if response.is_success:
            return response.json()
        try:
            detail = response.json().get("detail", response.text)
        except ValueError:
            detail = response.text
        if response.status_code == 404:
            raise DagNotFound(f"{what}: not found ({detail})")
        raise AirflowError(f"{what}: Airflow answered {response.status_code}: {detail}")

    def healthy(self) -> dict[str, Any]:
        """``GET /api/v2/monitor/health``: metadatabase, scheduler, triggerer, dag_processor, each with a
        ``status`` (``healthy``/``unhealthy``; the local stack runs no triggerer, so its status is null)."""
        return dict(self._check(self._send("GET", "/api/v2/monitor/health"), "health"))

    def execution_api_healthy(self) -> dict[str, Any]:
        """``GET /execution/health``, the API the tasks report to. It is built on its first request (half
        a minute on two busy cores): asking once before the scheduler starts spares the first tasks a wait."""
        return dict(self._check(self._send("GET", "/execution/health"), "execution API health"))

    def runs(self, dag_id: str, limit: int = 25, state: str | None = None) -> list[DagRunInfo]:
        """The DAG's latest runs, newest first (by when each was due: ``run_after``, never null)."""
        params: dict[str, Any] = {"limit": limit, "order_by": "-run_after"}
        if state is not None:
            params["state"] = state
        path = f"/api/v2/dags/{quote(dag_id, safe='')}/dagRuns"
        body = self._check(self._request("GET", path, params=params), f"runs of {dag_id}")
        return [DagRunInfo.from_json(run) for run in body["dag_runs"]]

    def last_run(self, dag_id: str, state: str = "success") -> DagRunInfo | None:
        """The DAG's most recent run in ``state``, or None."""
        found = self.runs(dag_id, limit=1, state=state)
        return found[0] if found else None

    def trigger(self, dag_id: str) -> str:
        """Start a manual run now; returns its ``dag_run_id``."""
        path = f"/api/v2/dags/{quote(dag_id, safe='')}/dagRuns"
        body = self._check(self._request("POST", path, json={"logical_date": None}), f"trigger {dag_id}")
        return str(body["dag_run_id"])

    def dag(self, dag_id: str) -> dict[str, Any]:
        """``GET /api/v2/dags/{dag_id}``: ``is_paused``, ``timetable_summary``, ``next_dagrun_run_after``…"""
        path = f"/api/v2/dags/{quote(dag_id, safe='')}"
        return dict(self._check(self._request("GET", path), f"DAG {dag_id}"))

    def unpause(self, dag_id: str) -> None:
        path = f"/api/v2/dags/{quote(dag_id, safe='')}"
        self._check(self._request("PATCH", path, json={"is_paused": False}), f"unpause {dag_id}")

    def task_result(self, dag_id: str, dag_run_id: str, task_id: str) -> Any:
        """What a task of a run returned (its ``return_value`` XCom), deserialized."""
        path = (
            f"/api/v2/dags/{quote(dag_id, safe='')}/dagRuns/{quote(dag_run_id, safe='')}"
            f"/taskInstances/{quote(task_id, safe='')}/xcomEntries/return_value"
        )
        params = {"deserialize": "true", "stringify": "false"}
        body = self._check(self._request("GET", path, params=params), f"result of {dag_id}.{task_id}")
        return body["value"]
