"""The schema registry: one client, one rule for what is worth retrying, and schema registration.

Transient, retried with exponential backoff (or what the registry asks for in ``Retry-After``): connection
errors and timeouts, 408, 429 and 5xx. Everything else is terminal and raised at once; a schema the
registry refuses is :class:`SchemaRejected`. A registry that stays unreachable past the retry window is
:class:`RegistryUnreachable`.

The client is built with confluent-kafka's own retries off (``max.retries`` 0), so tenacity here is the one
retry layer: two nested layers would multiply the waits and ignore ``Retry-After``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TypeVar

from confluent_kafka.schema_registry import Schema, SchemaRegistryClient

# The HTTP library the registry client itself uses (httpx2 where installed, else httpx): its errors are
# the ones to recognise, and confluent-kafka names this module as the place to import it from.
from confluent_kafka.schema_registry.common._httpx_compat import httpx
from confluent_kafka.schema_registry.error import SchemaRegistryError
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_delay, wait_exponential

from omnistream.errors import OmnistreamError, Unreachable
from omnistream.http_retry import parse_retry_after
from omnistream.kafka.serde import load_schema
from omnistream.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")

# Seconds per request: an unresponsive registry fails a call (and is retried) instead of hanging it.
REQUEST_TIMEOUT_S = 15
# A registry that keeps failing for this long is down (long-running producers and the sink).
RETRY_FOR_S = 120.0
# A Retry-After above this is capped, so one odd header cannot park a process for hours.
MAX_RETRY_AFTER_S = 60.0
TRANSIENT_STATUS = frozenset({408, 429})
# SchemaRegistryError's status when the answer was not HTTP at all.
NO_STATUS = -1


class SchemaRejected(OmnistreamError):
    """The registry refused a schema (most often: not BACKWARD-compatible with the subject's last version)."""


class RegistryUnreachable(Unreachable):
    """The schema registry did not answer within the retry window."""


def is_transient(exc: BaseException) -> bool:
    """A registry failure worth retrying: unreachable, timing out, throttling (408, 429) or failing (5xx)."""
    if isinstance(exc, SchemaRegistryError):
        status = exc.http_status_code
        return status == NO_STATUS or status in TRANSIENT_STATUS or status >= 500
    # Not every OSError: a missing file is no reason to wait for the registry.
    return isinstance(exc, httpx.TransportError | ConnectionError | TimeoutError)


# The Retry-After of the last answer each thread got from a registry: SchemaRegistryError does not carry
# the response's headers, so a response hook keeps it where the retry's wait can find it.
_last_answer = threading.local()


def _remember_retry_after(response: httpx.Response) -> None:
    _last_answer.retry_after = parse_retry_after(response.headers.get("Retry-After"))


def registry_client(settings: Settings) -> SchemaRegistryClient:
    """A client of the configured registry whose answers' ``Retry-After`` the retries honour."""
    client = SchemaRegistryClient(
        {"url": settings.registry.url, "timeout": REQUEST_TIMEOUT_S, "max.retries": 0}
    )
    # The client's httpx session is where its answers arrive; no public hook reaches it otherwise.
    client._rest_client.session.event_hooks["response"].append(_remember_retry_after)
    return client


class _wait_retry_after_or_backoff:  # named like tenacity's own wait strategies
    """What the registry asked for in ``Retry-After`` (429, 503); without it, exponential backoff."""

    def __init__(self) -> None:
        self._backoff = wait_exponential(multiplier=0.5, max=10)

    def __call__(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome is not None else None
        asked = getattr(_last_answer, "retry_after", None)
        if isinstance(exc, SchemaRegistryError) and asked is not None:
            return min(asked, MAX_RETRY_AFTER_S)
        return float(self._backoff(state))


def _retrying(retry_for_s: float) -> Retrying:
    return Retrying(
        retry=retry_if_exception(is_transient),
        wait=_wait_retry_after_or_backoff(),
        stop=stop_after_delay(retry_for_s),
        before_sleep=lambda state: log.warning(
            "schema registry unavailable (%s); retry %d",
            state.outcome.exception() if state.outcome else None,
            state.attempt_number,
        ),
        reraise=True,
    )


def with_registry(what: str, call: Callable[[], T], retry_for_s: float = RETRY_FOR_S) -> T:
    """``call()``, retried while the registry fails transiently; ``RegistryUnreachable`` if it stays so."""
    try:
        return _retrying(retry_for_s)(call)
    except Exception as exc:
        if is_transient(exc):
            raise RegistryUnreachable(
                f"the schema registry did not answer for {retry_for_s:.0f} s "
                f"while {what} ({type(exc).__name__}: {exc}); check that it is running (omnistream stack "
                "status) and OMNISTREAM_REGISTRY__HOST / OMNISTREAM_REGISTRY__PORT"
            ) from exc
        raise


def value_subject(topic: str) -> str:
    """The value subject of ``topic`` under the topic-name strategy."""
    return f"{topic}-value"


def register_schema(
    registry: SchemaRegistryClient,
    subject: str,
    schema_name: str,
    retry_for_s: float = RETRY_FOR_S,
) -> int:
    """Register ``schemas/<schema_name>.avsc`` under ``subject``; its id (idempotent).

    ``SchemaRejected`` if the registry refuses it, ``RegistryUnreachable`` if it does not answer.
    """
    schema = Schema(load_schema(schema_name), "AVRO")
    try:
        schema_id = with_registry(
            f"registering {subject}", lambda: registry.register_schema(subject, schema), retry_for_s
        )
    except SchemaRegistryError as exc:
        raise SchemaRejected(
            f"the schema registry refused schemas/{schema_name}.avsc for subject {subject!r}: {exc}. "
            "The registry enforces BACKWARD compatibility: add fields with defaults, or write to new topics."
        ) from exc
    log.info("schema %s registered under %s (id %d)", schema_name, subject, schema_id)
    return schema_id
