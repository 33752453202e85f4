"""What ``topics`` and ``replay`` say when asked for what is not there, or when a server does not answer.

Each case runs the real ``omnistream`` command in its own process, with the environment a user would
set, and checks the one line it prints and its exit code: 2 for a usage error (no such topic or
partition), 1 for a failure (Kafka or the registry unreachable). Never a traceback.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from omnistream.kafka.clients import admin
from omnistream.settings import Settings
from tests.support.sink import AvroProducer, new_topic, order

pytestmark = pytest.mark.integration

OMNISTREAM = str(Path(sys.executable).with_name("omnistream"))


def _run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [OMNISTREAM, *args], env={**os.environ, **env}, capture_output=True, text=True, check=False
    )


def _error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The ``error:`` line the command ended with (log lines may come before it); never a traceback."""
    assert "Traceback" not in result.stderr and "╭" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines, f"nothing on stderr; stdout: {result.stdout}"
    assert lines[-1].startswith("error: "), result.stderr
    assert [line for line in lines if line.startswith("error: ")] == [lines[-1]], result.stderr
    return lines[-1]


def test_tail_of_a_topic_that_does_not_exist_is_a_usage_error(stack_settings: Settings, unique: str) -> None:
    missing = f"nosuch.{unique}"
    result = _run("topics", "tail", missing)
    assert result.returncode == 2
    assert _error_line(result) == (
        f"error: no such topic: {missing} (`omnistream topics list` shows the topics there are)"
    )
    # Asking for it did not create it (a broker with auto.create.topics.enable creates what is asked for).
    assert missing not in admin(stack_settings).list_topics(timeout=30).topics


def test_tail_of_a_partition_beyond_the_topics_is_a_usage_error(
    stack_settings: Settings, unique: str
) -> None:
    topic = new_topic(stack_settings, f"clierrors.{unique}.orders", partitions=3)
    result = _run("topics", "tail", topic, "--partition", "99")
    assert result.returncode == 2
    assert _error_line(result) == f"error: {topic} has 3 partition(s), 0 to 2: there is no partition 99"


def test_replay_of_a_topic_that_does_not_exist_is_a_usage_error(
    stack_settings: Settings, unique: str, tmp_path: Path
) -> None:
    missing = f"nosuch.{unique}"
    result = _run("replay", "--topic", missing, "--from-beginning", "--dry-run", "--dir", str(tmp_path))
    assert result.returncode == 2
    assert _error_line(result) == (
        f"error: no such topic: {missing} (`omnistream topics list` shows the topics there are)"
    )


def test_an_unreachable_kafka_is_one_line_and_exit_1(stack_settings: Settings) -> None:
    result = _run("topics", "list", OMNISTREAM_KAFKA__PORT="1")
    assert result.returncode == 1
    line = _error_line(result)
    assert line.startswith("error: Kafka at 127.0.0.1:1 did not answer within 5 s"), line
    assert "OMNISTREAM_KAFKA__HOST / OMNISTREAM_KAFKA__PORT" in line
    # librdkafka's own connection complaints are debug detail, not the command's output.
    assert "Connection refused (after" not in result.stderr


def test_an_unreachable_registry_is_one_line_and_exit_1(stack_settings: Settings, unique: str) -> None:
    topic = new_topic(stack_settings, f"clierrors.{unique}.orders", partitions=1)
    producer = AvroProducer(stack_settings, topic)
    producer.send(order(1), key="k1")
    producer.flush()
    result = _run("topics", "tail", topic, "-n", "1", OMNISTREAM_REGISTRY__PORT="1")
    assert result.returncode == 1
    line = _error_line(result)
    assert line.startswith("error: the schema registry did not answer for 10 s while fetching schema id "), (
        line
    )
    assert "OMNISTREAM_REGISTRY__HOST / OMNISTREAM_REGISTRY__PORT" in line
