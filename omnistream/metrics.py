"""Prometheus metrics of the long-running pipeline processes: one registry and one ``/metrics`` endpoint each.

The landing sink and the two producers share one vocabulary (:class:`PipelineMetrics`), so one dashboard
reads them all: records in and out per topic, dead letters per topic and reason class, errors by kind and
the time of the last commit, beside prometheus-client's process collector (start time, memory, CPU, open
files). Each process adds what only it knows (the sink's lag, the email producer's mailbox backlog, the
master-data producer's snapshots). Labels stay bounded: a topic, a partition, a reason class, an error kind
or an outcome; never an offset, a key or an error message.

A process serves its registry with :func:`serve_metrics` on the port its setting names
(``settings.metrics.<process>_port``, ``OMNISTREAM_METRICS__<PROCESS>_PORT``); port 0 turns it off.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

from confluent_kafka import KafkaError
from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    start_http_server,
)

from omnistream.errors import OmnistreamError
from omnistream.settings import Settings

log = logging.getLogger(__name__)

NAMESPACE = "omnistream"
# Outcomes of omnistream_transactions_total.
COMMITTED = "committed"
ABORTED = "aborted"


class MetricsEndpointError(OmnistreamError):
    """The metrics endpoint cannot be served (most often: its port is taken); the message says what to set."""


def new_registry() -> CollectorRegistry:
    """A registry of one's own with the process, platform and GC collectors the default registry has."""
    registry = CollectorRegistry(auto_describe=True)
    # The default registry's collector instances can be registered in another registry as they are.
    for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
        registry.register(collector)
    return registry


def counter(
    registry: CollectorRegistry, name: str, documentation: str, labels: Iterable[str] = ()
) -> Counter:
    """``omnistream_<name>_total`` in ``registry``."""
    return Counter(name, documentation, list(labels), namespace=NAMESPACE, registry=registry)


def gauge(registry: CollectorRegistry, name: str, documentation: str, labels: Iterable[str] = ()) -> Gauge:
    """``omnistream_<name>`` in ``registry``."""
    return Gauge(name, documentation, list(labels), namespace=NAMESPACE, registry=registry)


def transactions_counter(registry: CollectorRegistry, documentation: str) -> Counter:
    """``omnistream_transactions_total{outcome}``: ``committed`` or ``aborted``, both exported from zero."""
    transactions = counter(registry, "transactions", documentation, ["outcome"])
    for outcome in (COMMITTED, ABORTED):
        transactions.labels(outcome)
    return transactions


class PipelineMetrics:
    """The metrics every pipeline process exports, in a registry of its own (one per process)."""

    def __init__(self, registry: CollectorRegistry | None = None, error_kinds: Iterable[str] = ()) -> None:
        self.registry = registry if registry is not None else new_registry()
        self.records_in = counter(
            self.registry,
            "records_in",
            "Records read, per topic they are read from or meant for: records consumed (sink), emails "
            "fetched (email producer), API items read (master-data producer).",
            ["topic"],
        )
        self.records_out = counter(
            self.registry,
            "records_out",
            "Records written, per topic: landed in committed files (sink), produced in committed "
            "transactions (email producer), acknowledged by Kafka (master-data producer).",
            ["topic"],
        )
        self.dead_letters = counter(
            self.registry,
            "dead_letters",
            "Records sent to <topic>.dlq instead, per topic they were read from or meant for and reason.",
            ["topic", "reason"],
        )
        self.errors = counter(
            self.registry, "errors", "Errors the process retried or rode out, by kind.", ["kind"]
        )
        for kind in error_kinds:
            self.errors.labels(kind)
        self.last_commit = gauge(
            self.registry,
            "last_commit_timestamp_seconds",
            "Unix time of the last commit: a landed file, a committed transaction, an acknowledged flush.",
        )

    def track_topics(self, *topics: str) -> None:
        """Export the per-topic record counters of ``topics`` from zero, before their first record."""
        for topic in topics:
            self.records_in.labels(topic)
            self.records_out.labels(topic)

    def kafka_error_callback(self, client: str, logger: logging.Logger) -> Callable[[KafkaError], None]:
        """An ``error_cb`` for a Kafka client: counts the error as ``kafka_<code>`` and logs it.

        librdkafka retries what these report (a broker down, a timed-out request) on its own; it logs them
        only while no ``error_cb`` is set, hence the log line here.
        """

        def on_error(error: KafkaError) -> None:
            self.errors.labels(kafka_error_kind(error)).inc()
            (logger.error if error.fatal() else logger.warning)("%s: %s", client, error.str())

        return on_error


def kafka_error_kind(error: KafkaError) -> str:
    """``kafka_transport``, ``kafka_all_brokers_down``, …: the error code's name, a bounded label."""
    return f"kafka_{error.name().lstrip('_').lower()}"


def metrics_port(settings: Settings, setting: str, port: int | None = None) -> int:
    """``port`` if given, else ``settings.metrics.<setting>``."""
    return port if port is not None else int(getattr(settings.metrics, setting))


@contextmanager
def serve_metrics(
    registry: CollectorRegistry, settings: Settings, setting: str, port: int | None = None
) -> Iterator[str | None]:
    """Serve ``registry`` at ``http://<settings.metrics.host>:<port>/metrics`` during the block.

    ``setting`` names the port's field of ``settings.metrics`` (``sink_port``, …); ``port`` (the command's
    ``--metrics-port``) overrides it; 0 serves nothing. Yields the endpoint's URL, or None when off.
    """
    port = metrics_port(settings, setting, port)
    if port == 0:
        yield None
        return
    host = settings.metrics.host
    try:
        server, thread = start_http_server(port, host, registry)
    except OSError as exc:
        # Deliberately fatal rather than running on without metrics: a taken port is a configuration
        # error (a second instance on the same port, a stale process), and a process that quietly serves
        # no metrics hides it from the one place meant to show it. Failing at start puts it in front of
        # the user: the command exits 1 with this line, and under the supervisor it shows as a crash loop.
        raise MetricsEndpointError(
            f"cannot serve metrics on {host}:{port} ({exc.strerror or exc}): choose another port with "
            f"--metrics-port or OMNISTREAM_METRICS__{setting.upper()} (settings.metrics.{setting}); "
            "0 turns metrics off"
        ) from exc
    url = f"http://{host}:{server.server_port}/metrics"
    log.info("metrics at %s", url)
    try:
        yield url
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
