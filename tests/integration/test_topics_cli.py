"""``omnistream topics list | describe | tail`` on the real stack: offsets, records, lag, decoded records.

Records here are written without transactions, so offsets and records agree; ``test_record_counts`` has
the transactional topics where they do not.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
from typer.testing import CliRunner

from omnistream.cli import app
from omnistream.kafka.clients import admin
from omnistream.settings import Settings
from tests.support.sink import AvroProducer, new_topic, order, read_topic

pytestmark = pytest.mark.integration


def _json_lines(*args: str) -> list[dict[str, Any]]:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


@pytest.fixture
def topic(stack_settings: Settings, unique: str) -> str:
    """A 3-partition topic: 12 Avro orders, a delete and a garbage record, in that order."""
    name = new_topic(stack_settings, f"topicstest.{unique}.orders")
    producer = AvroProducer(stack_settings, name)
    for i in range(12):
        producer.send(order(i), key=f"k{i}", headers=[("trace", f"t{i}".encode())])
    producer.send(None, key="k3")
    producer.raw(b"\x01\x02 not avro", key="junk")
    producer.flush()
    return name


def test_list_shows_partitions_and_records(stack_settings: Settings, topic: str) -> None:
    (listed,) = _json_lines("topics", "list", "--match", topic, "--json")
    assert listed == {"topic": topic, "partitions": 3, "offsets": 14, "records": 14, "exact": True}
    result = CliRunner().invoke(app, ["topics", "list", "--match", topic])
    assert result.exit_code == 0 and topic in result.stdout


def test_describe_shows_offsets_and_each_groups_lag(
    stack_settings: Settings, topic: str, unique: str
) -> None:
    records = read_topic(stack_settings, topic)
    ends = {p: 1 + max(r.offset for r in records if r.partition == p) for p in {r.partition for r in records}}
    group = f"inspect-{unique}"
    committed = {p: end // 2 for p, end in ends.items()}
    request = ConsumerGroupTopicPartitions(group, [TopicPartition(topic, p, o) for p, o in committed.items()])
    client = admin(stack_settings)  # kept: a collected AdminClient never resolves its futures
    client.alter_consumer_group_offsets([request])[group].result(timeout=30)

    (described,) = _json_lines("topics", "describe", topic, "--json")

    parts = {p["partition"]: p for p in described["partitions"]}
    assert sorted(parts) == [0, 1, 2]
    for p, end in ends.items():
        assert (parts[p]["start"], parts[p]["end"], parts[p]["offsets"]) == (0, end, end)
        assert (parts[p]["records"], parts[p]["exact"]) == (end, True)
    lags = {g["partition"]: g for g in described["groups"] if g["group"] == group}
    for p, end in ends.items():
        assert (lags[p]["topic"], lags[p]["committed"], lags[p]["end"], lags[p]["lag"], lags[p]["exact"]) == (
            topic,
            committed[p],
            end,
            end - committed[p],
            True,
        )

    missing = CliRunner().invoke(app, ["topics", "describe", f"{topic}.absent"])
    assert missing.exit_code == 2 and f"no such topic: {topic}.absent" in missing.output


def test_tail_decodes_the_last_records_through_the_registry(stack_settings: Settings, topic: str) -> None:
    tail = _json_lines("topics", "tail", topic, "-n", "3")
    assert [t["key"] for t in tail] == ["k11", "k3", "junk"]  # the last three, oldest first

    avro, delete, junk = tail
    want = order(11)
    assert avro["value"]["total"] == str(want["total"])  # exact, as a string
    assert avro["value"]["placed_at"] == want["placed_at"].isoformat()
    assert avro["value"]["lines"][0] == {"sku": "SKU-11", "price": "0.99"}
    assert avro["value"]["address"] == want["address"]
    assert avro["headers"] == {"trace": "t11"}
    assert isinstance(avro["schema_id"], int)
    assert avro["timestamp"].endswith("+00:00")
    assert delete["value"] is None and "error" not in delete
    assert junk["value"] is None and junk["error"].startswith("not-wire-format")

    one_partition = _json_lines("topics", "tail", topic, "-n", "50", "--partition", str(avro["partition"]))
    assert {t["partition"] for t in one_partition} == {avro["partition"]}
    assert [t["offset"] for t in one_partition] == sorted(t["offset"] for t in one_partition)


def test_describe_and_tail_print_for_people(stack_settings: Settings, topic: str) -> None:
    for args in (["topics", "describe", topic], ["topics", "tail", topic, "-n", "1", "--pretty"]):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
        assert topic in result.stdout
