"""The metrics endpoint (a real one, on loopback) and the arithmetic behind the metrics; no Kafka."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
from confluent_kafka import KafkaError
from prometheus_client.parser import text_string_to_metric_families

from omnistream.metrics import (
    MetricsEndpointError,
    PipelineMetrics,
    kafka_error_kind,
    metrics_port,
    serve_metrics,
)
from omnistream.settings import Settings
from omnistream.sink.consumer import SinkMetrics, partition_lags, reason_class


@contextmanager
def taken_port() -> Iterator[int]:
    """A loopback port something else listens on for the duration of the block."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def free_port() -> int:
    with taken_port() as port:
        return port


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_the_endpoint_serves_its_own_registry_with_the_process_collector() -> None:
    metrics = PipelineMetrics(error_kinds=["api_retry"])
    metrics.track_topics("t")
    metrics.records_out.labels("t").inc(3)
    metrics.dead_letters.labels("t", "unparseable").inc()
    port = free_port()
    with serve_metrics(metrics.registry, Settings(), "sink_port", port) as url:
        assert url == f"http://127.0.0.1:{port}/metrics"
        got = samples(httpx.get(url, timeout=10).text)
    assert got[("omnistream_records_out_total", (("topic", "t"),))] == 3
    assert got[("omnistream_records_in_total", (("topic", "t"),))] == 0  # exported before the first record
    assert got[("omnistream_dead_letters_total", (("reason", "unparseable"), ("topic", "t")))] == 1
    assert got[("omnistream_errors_total", (("kind", "api_retry"),))] == 0
    assert got[("omnistream_last_commit_timestamp_seconds", ())] == 0
    assert got[("process_start_time_seconds", ())] > 0
    with pytest.raises(httpx.ConnectError):  # closed with the block
        httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)


def test_two_processes_worth_of_metrics_do_not_collide() -> None:
    first, second = SinkMetrics(), SinkMetrics()
    first.records_out.labels("t").inc()
    assert second.registry.get_sample_value("omnistream_records_out_total", {"topic": "t"}) is None


def test_a_taken_port_fails_with_the_port_and_the_setting_to_change() -> None:
    registry = PipelineMetrics().registry
    with (
        taken_port() as port,
        pytest.raises(MetricsEndpointError) as caught,
        serve_metrics(registry, Settings(), "email_producer_port", port),
    ):
        pass  # pragma: no cover
    message = str(caught.value)
    assert f"127.0.0.1:{port}" in message and "\n" not in message
    assert "--metrics-port" in message and "OMNISTREAM_METRICS__EMAIL_PRODUCER_PORT" in message


def test_port_zero_serves_nothing_and_the_setting_is_the_default() -> None:
    with serve_metrics(PipelineMetrics().registry, Settings(), "sink_port", 0) as url:
        assert url is None
    settings = Settings()
    assert metrics_port(settings, "masterdata_producer_port") == settings.metrics.masterdata_producer_port
    assert metrics_port(settings, "masterdata_producer_port", 0) == 0


def test_kafka_errors_are_counted_by_code_name() -> None:
    assert kafka_error_kind(KafkaError(KafkaError._TRANSPORT)) == "kafka_transport"
    assert kafka_error_kind(KafkaError(KafkaError.REQUEST_TIMED_OUT)) == "kafka_request_timed_out"
    metrics = PipelineMetrics()
    callback = metrics.kafka_error_callback("test client", logging.getLogger(__name__))
    callback(KafkaError(KafkaError._ALL_BROKERS_DOWN))
    value = metrics.registry.get_sample_value("omnistream_errors_total", {"kind": "kafka_all_brokers_down"})
    assert value == 1


def test_dead_letter_reasons_are_reduced_to_their_class() -> None:
    assert reason_class("corrupt-avro: schema id 3: 2 trailing byte(s)") == "corrupt-avro"
    assert reason_class("not-wire-format: 8 bytes starting with 0x6e") == "not-wire-format"
    assert reason_class("something new") == "other"


def _stats(**partitions: dict[str, int]) -> dict[str, object]:
    return {"topics": {"t": {"partitions": {**partitions, "-1": {"ls_offset": -1001}}}}}


def test_lag_is_the_last_stable_offset_minus_the_position() -> None:
    stats = _stats(
        **{
            # Read up to the open transaction: the records above the last stable offset are not lag.
            "0": {"lo_offset": 0, "hi_offset": 19, "ls_offset": 18, "app_offset": 18},
            "1": {"lo_offset": 0, "hi_offset": 120, "ls_offset": 120, "app_offset": 20},
            # Nothing read since the assignment: the sink's own resume point, raised to the log start.
            "2": {"lo_offset": 50, "hi_offset": 80, "ls_offset": 80, "app_offset": -1001},
            "3": {"lo_offset": 0, "hi_offset": 40, "ls_offset": 40, "app_offset": -1001},
            # No fetch answered yet: no end known.
            "4": {"lo_offset": -1001, "hi_offset": -1001, "ls_offset": -1001, "app_offset": -1001},
        }
    )
    positions = {("t", 0): 17, ("t", 1): 20, ("t", 2): 0, ("t", 3): 35, ("t", 4): 0, ("t", 5): 0}
    assert partition_lags(stats, positions) == {("t", 0): 0, ("t", 1): 100, ("t", 2): 30, ("t", 3): 5}
    assert partition_lags({}, positions) == {}
