"""The master-data API client: keyset paging over real HTTP, retrying only what is transient.

Transient (retried with exponential backoff, honouring ``Retry-After``): 408, 429, 5xx, connection errors
and timeouts. Terminal (raised at once with what to fix): every other 4xx and answers that break the
contract. A walk follows ``next_cursor`` to the end; keyset paging keeps it complete while the data drifts.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt
from tenacity.wait import wait_base, wait_exponential_jitter

from omnistream.errors import OmnistreamError, Unreachable
from omnistream.http_retry import parse_retry_after

log = logging.getLogger(__name__)

API_PREFIX = "/api/v1"
TOKEN_VARIABLE = "OMNISTREAM_API__TOKEN"
# Network trouble that a later attempt can outlive; a malformed URL (UnsupportedProtocol) cannot.
RETRYABLE_TRANSPORT_ERRORS = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)


class ApiError(OmnistreamError):
    """The API refused the request for a reason retrying cannot fix; the message says what to change."""


class ApiAuthError(ApiError):
    """The API rejected the bearer token."""


class ApiUnavailable(Unreachable):
    """The API kept failing with transient errors until the retries ran out."""


class TransientApiError(OmnistreamError):
    """One answer worth retrying: 408, 429 or 5xx, with the server's ``Retry-After`` if it sent one."""

    def __init__(self, status: int, detail: str, retry_after: float | None) -> None:
        super().__init__(f"{status}: {detail}")
        self.status = status
        self.detail = detail
        self.retry_after = retry_after


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try one request before the snapshot gives up."""

    max_attempts: int = 8
    initial_s: float = 0.5
    max_backoff_s: float = 30.0
    # A Retry-After above this is capped, so one odd header cannot park the producer for hours.
    max_retry_after_s: float = 300.0
    timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if min(self.initial_s, self.max_backoff_s, self.max_retry_after_s) < 0 or self.timeout_s <= 0:
            raise ValueError("waits must not be negative and the timeout must be positive")


@dataclass
class RequestStats:
    """What a client did: requests sent, retries by reason, and every wait before a retry."""

    requests: int = 0
    retries: Counter[str] = field(default_factory=Counter)
    waits: list[tuple[str, float, float | None]] = field(default_factory=list)  # reason, waited, asked


@dataclass(frozen=True)
class Page:
    """One page of a collection."""

    items: list[dict[str, Any]]
    next_cursor: str | None
    as_of: str


class wait_retry_after_or_backoff(wait_base):  # named like tenacity's own wait strategies
    """Wait what the server asked for in ``Retry-After``; without it, exponential backoff with jitter."""

    def __init__(self, policy: RetryPolicy) -> None:
        self.policy = policy
        # Jitter of up to one initial wait spreads retries of several producers without dwarfing short waits.
        self._backoff = wait_exponential_jitter(
            multiplier=policy.initial_s, jitter=policy.initial_s, max=policy.max_backoff_s
        )

    def __call__(self, retry_state: RetryCallState) -> float:
        exc = retry_state.outcome.exception() if retry_state.outcome is not None else None
        if isinstance(exc, TransientApiError) and exc.retry_after is not None:
            return min(exc.retry_after, self.policy.max_retry_after_s)
        return float(self._backoff(retry_state))


def _problem_detail(response: httpx.Response) -> str:
    """The ``detail`` (and offending ``parameter``) of a problem document, or the start of the body."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:200] or response.reason_phrase
    if not isinstance(body, dict):
        return response.text[:200]
    detail = str(body.get("detail") or body.get("title") or response.reason_phrase)
    if body.get("parameter"):
        detail += f" (parameter {body['parameter']!r})"
    return detail


def _reason(exc: BaseException | None) -> str:
    if isinstance(exc, TransientApiError):
        return str(exc.status)
    return type(exc).__name__


class ApiClient:
    """Lists master-data collections page by page with the configured bearer token."""

    def __init__(self, base_url: str, token: str, retry: RetryPolicy | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.retry = retry or RetryPolicy()
        self.stats = RequestStats()
        self._http = httpx.Client(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
            timeout=self.retry.timeout_s,
        )

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def check(self, entity: str) -> None:
        """One small request, so a wrong URL or token fails before any other work is done."""
        self.page(entity, {"page_size": 1})

    def walk(self, entity: str, page_size: int = 500) -> Iterator[Page]:
        """Every page of ``entity`` (a full walk: no ``updated_since``), following the cursor to the end."""
        params: dict[str, str | int] = {"page_size": page_size}
        while True:
            page = self.page(entity, params)
            yield page
            if page.next_cursor is None:
                return
            params = {"page_size": page_size, "cursor": page.next_cursor}

    def page(self, entity: str, params: dict[str, str | int]) -> Page:
        """One page, retried on transient failures; ApiUnavailable once the attempts are used up."""
        path = f"{API_PREFIX}/{entity}"
        retrying = Retrying(
            retry=retry_if_exception_type((TransientApiError, *RETRYABLE_TRANSPORT_ERRORS)),
            wait=wait_retry_after_or_backoff(self.retry),
            stop=stop_after_attempt(self.retry.max_attempts),
            before_sleep=self._before_retry,
            reraise=True,
        )
        try:
            for attempt in retrying:
                with attempt:
                    return self._get_page(path, params)
        except (TransientApiError, *RETRYABLE_TRANSPORT_ERRORS) as exc:
            raise ApiUnavailable(
                f"the master-data API at {self.base_url} kept failing on {path} "
                f"({_reason(exc)}: {exc}) after {self.retry.max_attempts} attempts; "
                "is it up and healthy? (OMNISTREAM_API__HOST / OMNISTREAM_API__PORT)"
            ) from exc
        raise AssertionError("unreachable: tenacity either returns or raises")  # pragma: no cover

    def _get_page(self, path: str, params: dict[str, str | int]) -> Page:
        self.stats.requests += 1
        response = self._http.get(path, params=params)
        status = response.status_code
        if status == 200:
            return self._parse_page(path, response)
        detail = _problem_detail(response)
        if status in (408, 429) or status >= 500:
            raise TransientApiError(status, detail, parse_retry_after(response.headers.get("Retry-After")))
        if status == 401:
            raise ApiAuthError(
                f"the API rejected the token ({detail}); set {TOKEN_VARIABLE} to the master-data API's token"
            )
        if status == 403:
            raise ApiAuthError(f"the API's token may not read {path} ({detail}); check {TOKEN_VARIABLE}")
        if status == 404:
            raise ApiError(
                f"{self.base_url}{path} does not exist ({detail}); "
                "do OMNISTREAM_API__HOST / OMNISTREAM_API__PORT point at the master-data API?"
            )
        raise ApiError(f"the API refused GET {path} with {status}: {detail}")

    def _parse_page(self, path: str, response: httpx.Response) -> Page:
        try:
            body = response.json()
            items, next_cursor, as_of = body["items"], body["next_cursor"], body["as_of"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ApiError(f"GET {path} answered 200 with something that is not a page: {exc!r}") from exc
        if not isinstance(items, list) or not (next_cursor is None or isinstance(next_cursor, str)):
            raise ApiError(f"GET {path} answered 200 with a malformed page (items or next_cursor)")
        return Page(items, next_cursor, str(as_of))

    def _before_retry(self, retry_state: RetryCallState) -> None:
        exc = retry_state.outcome.exception() if retry_state.outcome is not None else None
        reason = _reason(exc)
        waited = retry_state.next_action.sleep if retry_state.next_action is not None else 0.0
        asked = exc.retry_after if isinstance(exc, TransientApiError) else None
        self.stats.retries[reason] += 1
        self.stats.waits.append((reason, waited, asked))
        log.warning(
            "master-data API: %s on attempt %d; retrying in %.2f s%s",
            reason,
            retry_state.attempt_number,
            waited,
            f" (Retry-After {asked:g} s)" if asked is not None and math.isfinite(asked) else "",
        )
