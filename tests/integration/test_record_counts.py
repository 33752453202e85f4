"""Record counts and lag in records on the real Kafka, with transaction markers and an aborted transaction.

A transactional producer (as the email producer is) writes committed transactions and one aborted one to
a 2-partition topic: every transaction leaves a marker per partition it wrote to, and the aborted records
stay in the log. Offsets then overstate the records; the counts here must not.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import ConsumerGroupTopicPartitions, KafkaError, Message, Producer, TopicPartition
from typer.testing import CliRunner

from omnistream.cli import app
from omnistream.inspect.records import (
    PartitionLag,
    consumer_groups,
    dlq_depths,
    group_lag,
    partition_counts,
    record_counts,
)
from omnistream.kafka.clients import admin, producer_config
from omnistream.kafka.offsets import partition_offsets
from omnistream.settings import Settings
from tests.support.sink import new_topic, read_topic

pytestmark = pytest.mark.integration

# (records per partition, committed?) of each transaction, in order; the last one writes partition 0
# only, so both partitions end in a marker.
TRANSACTIONS = [({0: 4, 1: 3}, True), ({0: 2, 1: 5}, True), ({0: 3, 1: 3}, False), ({0: 1, 1: 2}, True)]
LAST = ({0: 3}, True)
RECORDS = {0: 4 + 2 + 1 + 3, 1: 3 + 5 + 2}


class Transactions:
    """A transactional producer of raw records to explicit partitions, one transaction per ``write``."""

    def __init__(self, settings: Settings, topic: str, transactional_id: str) -> None:
        self.topic = topic
        self.producer = Producer(producer_config(settings, **{"transactional.id": transactional_id}))
        self.producer.init_transactions(30)
        self.committed: list[tuple[int, int]] = []  # (partition, offset) of every committed record
        self._sent: list[tuple[int, int]] = []
        self._errors: list[KafkaError] = []

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self._errors.append(err)
        else:
            self._sent.append((msg.partition(), msg.offset()))  # type: ignore[arg-type]

    def begin(self, per_partition: dict[int, int]) -> None:
        self.producer.begin_transaction()
        self._sent = []
        for partition, n in per_partition.items():
            for i in range(n):
                self.producer.produce(
                    self.topic, b"record %d" % i, b"k", partition=partition, on_delivery=self._on_delivery
                )
                self.producer.poll(0)
        assert self.producer.flush(30) == 0 and not self._errors, self._errors

    def end(self, commit: bool) -> None:
        if commit:
            self.producer.commit_transaction(30)
            self.committed.extend(self._sent)
        else:
            self.producer.abort_transaction(30)

    def write(self, per_partition: dict[int, int], commit: bool = True) -> None:
        self.begin(per_partition)
        self.end(commit)

    def committed_in(self, partition: int) -> list[int]:
        return sorted(o for p, o in self.committed if p == partition)


@pytest.fixture
def txn(stack_settings: Settings, unique: str) -> Transactions:
    """The topic ``counts.<unique>.txn`` written by :data:`TRANSACTIONS` and :data:`LAST`."""
    topic = new_topic(stack_settings, f"counts.{unique}.txn", partitions=2)
    writer = Transactions(stack_settings, topic, f"counts-{unique}")
    for per_partition, commit in [*TRANSACTIONS, LAST]:
        writer.write(per_partition, commit)
    assert {p: len(writer.committed_in(p)) for p in (0, 1)} == RECORDS
    return writer


def ends(settings: Settings, topic: str) -> dict[int, int]:
    return {p.partition: p.end for p in partition_offsets(admin(settings), [topic])}


def commit(settings: Settings, group: str, topic: str, offsets: dict[int, int]) -> None:
    """Commit ``offsets`` (partition → offset) for ``group``, as a consumer of the group would."""
    request = ConsumerGroupTopicPartitions(group, [TopicPartition(topic, p, o) for p, o in offsets.items()])
    client = admin(settings)  # kept: a collected AdminClient never resolves its futures
    client.alter_consumer_group_offsets([request])[group].result(timeout=30)


def _json_lines(*args: str) -> list[dict[str, Any]]:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


def test_counts_are_the_records_a_read_committed_consumer_gets(
    stack_settings: Settings, txn: Transactions
) -> None:
    total = sum(RECORDS.values())
    assert record_counts(stack_settings, [txn.topic, f"{txn.topic}.absent"]) == {txn.topic: (total, True)}
    assert len(read_topic(stack_settings, txn.topic)) == total  # a plain read_committed consumer agrees

    per_partition = {
        p.partition: (p.offsets, c.records, c.exact) for p, c in partition_counts(stack_settings, [txn.topic])
    }
    # Markers (one per partition per transaction) and the aborted records take offsets, not records.
    assert per_partition == {0: (10 + 5 + 3, 10, True), 1: (10 + 4 + 3, 10, True)}


def test_a_group_that_has_every_record_has_no_lag_though_markers_follow(
    stack_settings: Settings, txn: Transactions, unique: str
) -> None:
    group = f"counts-{unique}"
    # As the sink commits: the offset after the last record it landed, which is the marker's.
    done = {p: txn.committed_in(p)[-1] + 1 for p in (0, 1)}
    commit(stack_settings, group, txn.topic, done)
    end = ends(stack_settings, txn.topic)
    assert {p: end[p] - done[p] for p in (0, 1)} == {0: 1, 1: 1}  # what offsets alone would call lag

    expected = [PartitionLag(txn.topic, p, done[p], end[p], 0, True) for p in (0, 1)]
    assert group_lag(stack_settings, group, [txn.topic]) == expected
    assert group_lag(stack_settings, group) == expected  # the topics it has committed on

    commit(stack_settings, group, txn.topic, end)
    assert [(g.lag, g.exact) for g in group_lag(stack_settings, group)] == [(0, True), (0, True)]


def test_a_group_partway_lags_by_the_records_left(
    stack_settings: Settings, txn: Transactions, unique: str
) -> None:
    group = f"counts-{unique}"
    records = txn.committed_in(0)
    commit(stack_settings, group, txn.topic, {0: records[6]})  # 6 records of partition 0 done
    end = ends(stack_settings, txn.topic)

    expected = [
        PartitionLag(txn.topic, 0, records[6], end[0], RECORDS[0] - 6, True),
        PartitionLag(txn.topic, 1, None, end[1], RECORDS[1], True),  # nothing committed: all is lag
    ]
    assert group_lag(stack_settings, group, [txn.topic]) == expected
    assert group_lag(stack_settings, group) == expected
    assert group_lag(stack_settings, f"{group}-never", [txn.topic]) == [
        PartitionLag(txn.topic, p, None, end[p], RECORDS[p], True) for p in (0, 1)
    ]


def test_beyond_the_cap_a_count_is_an_upper_bound(
    stack_settings: Settings, txn: Transactions, unique: str
) -> None:
    cap = 5
    end = ends(stack_settings, txn.topic)
    # The last `cap` offsets are read; the offsets before them count as records.
    bound = sum(end[p] - cap + sum(o >= end[p] - cap for o in txn.committed_in(p)) for p in (0, 1))
    assert sum(RECORDS.values()) < bound < sum(end.values())
    assert record_counts(stack_settings, [txn.topic], cap=cap) == {txn.topic: (bound, False)}

    group = f"counts-{unique}"
    commit(stack_settings, group, txn.topic, {0: txn.committed_in(0)[-2]})
    lags = {g.partition: (g.lag, g.exact) for g in group_lag(stack_settings, group, cap=cap)}
    in_last = sum(o >= end[1] - cap for o in txn.committed_in(1))
    assert lags == {0: (2, True), 1: (end[1] - cap + in_last, False)}  # partition 1: nothing committed

    (listed,) = _json_lines("topics", "list", "--match", txn.topic, "--cap", str(cap), "--json")
    assert (listed["records"], listed["exact"]) == (bound, False)
    table = CliRunner().invoke(app, ["topics", "list", "--match", txn.topic, "--cap", str(cap)])
    assert table.exit_code == 0 and f"≤ {bound}" in table.stdout


def test_an_open_transaction_is_not_counted_until_it_commits(
    stack_settings: Settings, txn: Transactions
) -> None:
    total = sum(RECORDS.values())
    txn.begin({0: 3})
    # Past the last stable offset only offsets are known: an upper bound, until the transaction ends.
    assert record_counts(stack_settings, [txn.topic]) == {txn.topic: (total + 3, False)}
    txn.end(commit=True)
    assert record_counts(stack_settings, [txn.topic]) == {txn.topic: (total + 3, True)}


def test_dlq_depths_and_consumer_groups(stack_settings: Settings, unique: str) -> None:
    topic = new_topic(stack_settings, f"counts.{unique}.orders", partitions=1)
    dead = new_topic(stack_settings, f"{topic}.dlq", partitions=2)
    writer = Transactions(stack_settings, dead, f"counts-dlq-{unique}")
    writer.write({0: 2, 1: 1})
    writer.write({0: 5}, commit=False)
    writer.write({1: 1})

    depths = dlq_depths(stack_settings)
    assert depths[dead] == 4 and topic not in depths
    assert all(name.endswith(".dlq") for name in depths)
    # Only the named topics (status asks for the pipeline's DLQs, not every DLQ on the broker).
    assert dlq_depths(stack_settings, among={dead, "no.such.topic.dlq"}) == {dead: 4}

    group = f"counts-{unique}"
    assert group not in consumer_groups(stack_settings)
    commit(stack_settings, group, topic, {0: 0})
    assert group in consumer_groups(stack_settings)


def test_topics_list_describe_and_sink_status_show_records(
    stack_settings: Settings, txn: Transactions, unique: str, tmp_path: Path
) -> None:
    end = ends(stack_settings, txn.topic)
    (listed,) = _json_lines("topics", "list", "--match", txn.topic, "--json")
    assert listed == {
        "topic": txn.topic,
        "partitions": 2,
        "offsets": sum(end.values()),
        "records": sum(RECORDS.values()),
        "exact": True,
    }
    table = CliRunner().invoke(app, ["topics", "list", "--match", txn.topic])
    assert table.exit_code == 0
    (row,) = [line for line in table.stdout.splitlines() if txn.topic in line]
    assert [cell.strip() for cell in row.split("│")[1:-1]] == [txn.topic, "2", str(sum(end.values())), "20"]

    group = f"counts-{unique}"
    done = {p: txn.committed_in(p)[-1] + 1 for p in (0, 1)}  # each group is at its last record
    commit(stack_settings, group, txn.topic, done)
    (described,) = _json_lines("topics", "describe", txn.topic, "--json")
    assert [(p["partition"], p["records"], p["exact"]) for p in described["partitions"]] == [
        (0, RECORDS[0], True),
        (1, RECORDS[1], True),
    ]
    assert [(g["partition"], g["committed"], g["lag"], g["exact"]) for g in described["groups"]] == [
        (0, done[0], 0, True),
        (1, done[1], 0, True),
    ]
    assert all(g["group"] == group for g in described["groups"])  # no other group read this topic

    status = _json_lines(
        "sink", "status", "-t", txn.topic, "--group", group, "--dir", str(tmp_path), "--json"
    )
    assert [(s["partition"], s["lag"], s["unlanded"], s["exact"]) for s in status] == [
        (0, 0, RECORDS[0], True),  # nothing landed in tmp_path: every record is unlanded
        (1, 0, RECORDS[1], True),
    ]
