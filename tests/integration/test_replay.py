"""Replays against the real stack: from the beginning, an offset or a time the landing zone is rebuilt to
the same rows as the live run; a running sink group is refused; dead letters are resent exactly once."""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path

import pytest
from test_sink_support import (
    BASE_TIME,
    ORDER_V2,
    AvroProducer,
    assert_files_tile,
    drain,
    landed,
    landed_files,
    new_topic,
    order,
    read_topic,
    sink_config,
)
from typer.testing import CliRunner, Result

from omnistream.cli import app
from omnistream.inspect.offsets import committed_offsets
from omnistream.kafka import admin
from omnistream.replay.dead_letters import default_group
from omnistream.settings import Settings
from omnistream.sink.consumer import LandingSink
from omnistream.sink.layout import LandedFile
from omnistream.sink.store import LocalStore
from omnistream.topics import dlq

pytestmark = pytest.mark.integration


def cli(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


def _committed(settings: Settings, group: str) -> dict[tuple[str, int], int]:
    return committed_offsets(admin(settings), group)


def test_a_replay_from_the_beginning_rebuilds_the_same_rows(
    stack_settings: Settings, tmp_path: Path, unique: str
) -> None:
    topic = new_topic(stack_settings, f"replaytest.{unique}.all")
    group = f"sink-{unique}"
    v1, v2 = AvroProducer(stack_settings, topic), AvroProducer(stack_settings, topic, ORDER_V2)
    for i in range(90):
        v1.send(order(i), key=str(i % 30))
    v1.send(None, key="7")
    v1.raw(b"\x01 garbage", key="x")
    for i in range(90, 120):
        v2.send(order(i, channel="app"), key=str(i % 30))
    v1.flush()
    v2.flush()
    drain(stack_settings, tmp_path, group, [topic], flush_records=7)
    live = landed(tmp_path, topic)
    assert len(live) == 121

    result = cli("replay", "--topic", topic, "--from-beginning", "--dir", str(tmp_path), "--group", group)
    assert result.exit_code == 0, result.output
    assert landed_files(tmp_path, topic) == {}
    assert _committed(stack_settings, group) == {(topic, p): 0 for p in range(3)}

    drain(stack_settings, tmp_path, group, [topic], flush_records=1000)
    assert landed(tmp_path, topic) == live
    assert_files_tile(tmp_path, topic)


def test_a_replay_from_an_offset_snaps_down_to_the_file_holding_it(
    stack_settings: Settings, tmp_path: Path, unique: str
) -> None:
    topic = new_topic(stack_settings, f"replaytest.{unique}.offset", partitions=1)
    group = f"sink-{unique}"
    producer = AvroProducer(stack_settings, topic)
    for i in range(50):
        producer.send(order(i), key=str(i))
    producer.flush()
    drain(stack_settings, tmp_path, group, [topic], flush_records=10)
    live = landed(tmp_path, topic)
    files = [LandedFile(topic, 0, s, s + 9) for s in range(0, 50, 10)]
    assert landed_files(tmp_path, topic) == {0: files}

    common = (
        "--topic",
        topic,
        "--offset",
        "25",
        "--partition",
        "0",
        "--dir",
        str(tmp_path),
        "--group",
        group,
    )
    dry = cli("replay", *common, "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert landed_files(tmp_path, topic) == {0: files}

    result = cli("replay", *common)
    assert result.exit_code == 0, result.output
    assert landed_files(tmp_path, topic) == {0: files[:2]}  # 20..29 straddles 25: it goes too
    assert _committed(stack_settings, group) == {(topic, 0): 20}

    drain(stack_settings, tmp_path, group, [topic], flush_records=4)
    assert landed(tmp_path, topic) == live
    assert_files_tile(tmp_path, topic)


def test_a_replay_from_a_time_starts_at_the_first_record_of_that_time(
    stack_settings: Settings, tmp_path: Path, unique: str
) -> None:
    topic = new_topic(stack_settings, f"replaytest.{unique}.time", partitions=1)
    group = f"sink-{unique}"
    producer = AvroProducer(stack_settings, topic)
    for i in range(30):
        at = BASE_TIME + timedelta(minutes=i)
        producer.send(order(i), key=str(i), timestamp=int(at.timestamp() * 1000))
    producer.flush()
    drain(stack_settings, tmp_path, group, [topic], flush_records=10)
    live = landed(tmp_path, topic)

    since = (BASE_TIME + timedelta(minutes=20)).isoformat()
    result = cli("replay", "--topic", topic, "--from-time", since, "--dir", str(tmp_path), "--group", group)
    assert result.exit_code == 0, result.output
    assert landed_files(tmp_path, topic) == {0: [LandedFile(topic, 0, 0, 9), LandedFile(topic, 0, 10, 19)]}
    assert _committed(stack_settings, group) == {(topic, 0): 20}

    naive = cli("replay", "--topic", topic, "--from-time", "2026-11-20T09:00:00", "--dir", str(tmp_path))
    assert naive.exit_code != 0 and "time zone" in naive.output

    drain(stack_settings, tmp_path, group, [topic])
    assert landed(tmp_path, topic) == live


def test_a_replay_is_refused_while_the_sink_group_has_members(
    stack_settings: Settings, tmp_path: Path, unique: str
) -> None:
    topic = new_topic(stack_settings, f"replaytest.{unique}.busy", partitions=1)
    group = f"sink-{unique}"
    producer = AvroProducer(stack_settings, topic)
    producer.send(order(1))
    producer.flush()
    drain(stack_settings, tmp_path, group, [topic])
    before = landed_files(tmp_path, topic)

    sink = LandingSink(stack_settings, LocalStore(tmp_path), sink_config(group, [topic]))
    runner = threading.Thread(target=sink.run, name="sink")
    runner.start()
    try:
        assert sink.assigned.wait(60), "the sink never got its partition"
        result = cli("replay", "--topic", topic, "--from-beginning", "--dir", str(tmp_path), "--group", group)
    finally:
        sink.request_stop()
        runner.join(60)
    assert result.exit_code == 1
    assert f"consumer group '{group}' is active" in result.output
    assert "Stop every `omnistream sink` of this group" in result.output
    assert landed_files(tmp_path, topic) == before


def test_dead_letters_are_resent_to_their_topic_once(
    stack_settings: Settings, tmp_path: Path, unique: str
) -> None:
    topic = new_topic(stack_settings, f"replaytest.{unique}.letters", partitions=2)
    group = f"sink-{unique}"
    producer = AvroProducer(stack_settings, topic)
    producer.send(order(1), key="a")
    producer.raw(b"\x07 not yet decodable", key="poison", headers=[("origin", b"pos-12"), ("origin", b"dup")])
    producer.send(order(2), key="b")
    producer.flush()
    drain(stack_settings, tmp_path, group, [topic])
    # Landing it all again dead-letters the same record a second time (dead letters are at least once).
    again_from_zero = ("--topic", topic, "--from-beginning", "--dir", str(tmp_path), "--group", group)
    assert cli("replay", *again_from_zero).exit_code == 0
    drain(stack_settings, tmp_path, group, [topic])
    letters = read_topic(stack_settings, dlq(topic))
    assert len(letters) == 2
    before = read_topic(stack_settings, topic)
    (poison,) = [r for r in before if r.key == b"poison"]

    first = cli("replay", "--dlq", topic)
    assert first.exit_code == 0, first.output
    assert f"resent 1 dead letter(s), 1 to {topic}; skipped 1 duplicate(s)" in first.output

    after = read_topic(stack_settings, topic)
    (resent,) = [r for r in after if r not in before]
    assert (resent.partition, resent.key, resent.value) == (poison.partition, poison.key, poison.value)
    assert resent.headers == poison.headers  # the record's own headers, in order, nothing added
    # The replayer's own group on the DLQ, committed in the resend's transaction: read to the end.
    assert _committed(stack_settings, default_group(stack_settings)).get((dlq(topic), 0)) == len(letters)

    again = cli("replay", "--dlq", dlq(topic))
    assert again.exit_code == 0, again.output
    assert "resent 0 dead letter(s)" in again.output
    assert read_topic(stack_settings, topic) == after
