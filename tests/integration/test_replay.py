"""Replays against the real stack: from the beginning, an offset or a time the landing zone is rebuilt to
the same rows as the live run; a running sink group is refused; dead letters are resent exactly once, and
only once the sink can land them: poison stays in the DLQ, its attempts counted, until given up."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.schema_registry import Schema
from fastavro import parse_schema, schemaless_writer
from typer.testing import CliRunner, Result

from omnistream.cli import app
from omnistream.kafka.clients import admin
from omnistream.kafka.offsets import committed_offsets
from omnistream.kafka.registry import registry_client
from omnistream.replay.dead_letters import default_group
from omnistream.settings import Settings
from omnistream.sink.batch import RejectedRecord
from omnistream.sink.consumer import LandingSink
from omnistream.sink.dlq import ATTEMPTS_HEADER, DeadLetterSender, dead_letter
from omnistream.sink.layout import LandedFile
from omnistream.sink.store import LocalStore
from omnistream.topics import dlq
from tests.support.sink import (
    BASE_TIME,
    ORDER_V1,
    ORDER_V2,
    AvroProducer,
    Record,
    assert_files_tile,
    dead_letters,
    drain,
    landed,
    landed_files,
    new_topic,
    order,
    read_topic,
    sink_config,
)

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


@dataclass(frozen=True)
class Later:
    """A record written with a schema id the registry does not have yet: the sink dead-letters it as
    ``unknown-schema`` until ``register()`` registers that schema (and gets exactly that id)."""

    value: bytes
    schema_id: int
    register: Callable[[], int]


def schema_registered_later(settings: Settings, topic: str, unique: str, attempt: int) -> Later:
    """Predicts the registry's next id (it numbers registrations one after another) and encodes for it.

    The registrations the test makes on the way (the topic's value schema, the DLQ's) are made first, so
    the next one after the probe is the later schema's."""
    AvroProducer(settings, topic).encode(order(0))
    rejected = RejectedRecord(topic, 0, 0, None, None, b"", [], "registering the DLQ's schema")
    DeadLetterSender(settings).encode(dead_letter(rejected), dlq(topic))
    registry = registry_client(settings)
    probe = {"type": "record", "name": f"Probe{unique}{attempt}", "fields": [{"name": "n", "type": "int"}]}
    probe_id = registry.register_schema(f"{topic}-probe", Schema(json.dumps(probe), "AVRO"))
    later: dict[str, Any] = {**ORDER_V1, "name": f"LaterOrder{unique}{attempt}"}  # content never seen
    out = io.BytesIO()
    schemaless_writer(out, parse_schema(later), order(7))
    guess = probe_id + 1
    return Later(
        b"\x00" + guess.to_bytes(4, "big") + out.getvalue(),
        guess,
        lambda: registry.register_schema(f"{topic}-later", Schema(json.dumps(later), "AVRO")),
    )


@dataclass(frozen=True)
class Landed:
    """A topic and the sink group and landing directory that landed it."""

    topic: str
    group: str
    directory: Path


def a_dlq_whose_schema_arrives_later(
    stack_settings: Settings,
    tmp_path: Path,
    unique: str,
    write: Callable[[AvroProducer, Later], None],
    partitions: int = 1,
    sinks: int = 1,
) -> Landed:
    """A topic whose ``later`` record (and whatever else ``write`` sends) ``sinks`` sink groups have landed
    or dead-lettered, after which the later record's schema was registered; the first group is returned.

    Another client registering a schema between the prediction and the registration would take the
    predicted id: then the whole set-up runs again on a fresh topic (a deadline loop, not a skip)."""
    for attempt in range(5):
        topic = new_topic(stack_settings, f"replaytest.{unique}.later{attempt}", partitions=partitions)
        later = schema_registered_later(stack_settings, topic, unique, attempt)
        producer = AvroProducer(stack_settings, topic)
        write(producer, later)
        producer.flush()
        landed_by = Landed(topic, f"sink-{unique}-{attempt}", tmp_path / f"landing{attempt}")
        drain(stack_settings, landed_by.directory, landed_by.group, [topic])
        for n in range(1, sinks):  # another group dead-letters the same record again
            drain(stack_settings, tmp_path / f"landing{attempt}-{n}", f"{landed_by.group}-{n}", [topic])
        reasons = [letter["reason"] for _, letter in dead_letters(stack_settings, topic)]
        assert any(r.startswith(f"unknown-schema: schema id {later.schema_id} ") for r in reasons), reasons
        if later.register() == later.schema_id:
            return landed_by
    raise AssertionError("another client took the predicted schema id five times in a row")


def replay_dlq(topic: str, *options: str) -> str:
    result = cli("replay", "--dlq", topic, *options)
    assert result.exit_code == 0, result.output
    return " ".join(result.output.split())  # the summary line may wrap


def letters_of(settings: Settings, topic: str) -> list[tuple[Record, dict[str, Any]]]:
    return dead_letters(settings, topic)


def test_dead_letters_are_resent_to_their_topic_once(
    stack_settings: Settings, tmp_path: Path, unique: str
) -> None:
    origin_headers = [("origin", b"pos-12"), ("origin", b"dup")]

    def write(producer: AvroProducer, later: Later) -> None:
        producer.send(order(1), key="a")
        producer.raw(later.value, key="later", headers=origin_headers)
        producer.send(order(2), key="b")

    # Landing it twice dead-letters the same record twice (dead letters are at least once).
    landed_by = a_dlq_whose_schema_arrives_later(
        stack_settings, tmp_path, unique, write, partitions=2, sinks=2
    )
    topic = landed_by.topic
    letters = read_topic(stack_settings, dlq(topic))
    assert len(letters) == 2
    before = read_topic(stack_settings, topic)
    (later,) = [r for r in before if r.key == b"later"]

    first = replay_dlq(topic)
    assert f"resent 1 dead letter(s), 1 to {topic}; kept 0 still failing" in first
    assert "skipped 1 duplicate(s)" in first

    after = read_topic(stack_settings, topic)
    (resent,) = [r for r in after if r not in before]
    assert (resent.partition, resent.key, resent.value) == (later.partition, later.key, later.value)
    # The record's own headers, in order, and the count of replay attempts it has had.
    assert resent.headers == (*later.headers, (ATTEMPTS_HEADER, b"1"))
    # The replayer's own group on the DLQ, committed in the resend's transaction: read to the end.
    assert _committed(stack_settings, default_group(stack_settings)).get((dlq(topic), 0)) == len(letters)

    again = replay_dlq(dlq(topic))
    assert "resent 0 dead letter(s)" in again
    assert read_topic(stack_settings, topic) == after
    # The resent record now lands: nothing new in the DLQ.
    drain(stack_settings, landed_by.directory, landed_by.group, [topic])
    rows = landed(landed_by.directory, topic)
    assert [r["order_id"] for r in rows if r["record_metadata"]["key"] == "later"] == [7]
    assert len(read_topic(stack_settings, dlq(topic))) == len(letters)


def test_replay_resends_what_now_passes_and_gives_up_on_poison(
    stack_settings: Settings, tmp_path: Path, unique: str
) -> None:
    def write(producer: AvroProducer, later: Later) -> None:
        producer.raw(later.value, key="later", headers=[("origin", b"pos-7")])
        producer.send(order(1), key="fine")
        producer.raw(b"\x07 never decodable", key="poison", headers=[("origin", b"pos-12")])

    landed_by = a_dlq_whose_schema_arrives_later(stack_settings, tmp_path, unique, write)
    topic = landed_by.topic
    before = read_topic(stack_settings, topic)
    (poison,) = [r for r in before if r.key == b"poison"]
    assert len(letters_of(stack_settings, topic)) == 2

    dry = replay_dlq(topic, "--dry-run")
    assert "dry run, nothing written: would be resent 1 dead letter(s)" in dry
    assert "would be kept 1 still failing" in dry and "would give up on 0" in dry
    assert "not-wire-format" in dry  # the table says why the poison still fails
    assert read_topic(stack_settings, topic) == before
    assert len(letters_of(stack_settings, topic)) == 2
    assert (dlq(topic), 0) not in _committed(stack_settings, default_group(stack_settings))

    first = replay_dlq(topic)
    assert f"resent 1 dead letter(s), 1 to {topic}; kept 1 still failing; gave up on 0 after 3" in first
    after = read_topic(stack_settings, topic)
    (resent,) = [r for r in after if r not in before]
    assert resent.key == b"later" and resent.headers == (("origin", b"pos-7"), (ATTEMPTS_HEADER, b"1"))
    # The resent record lands now; the poison was not sent back, only its dead letter's next copy.
    drain(stack_settings, landed_by.directory, landed_by.group, [topic])
    assert [r["record_metadata"]["key"] for r in landed(landed_by.directory, topic)] == ["fine", "later"]
    letters = letters_of(stack_settings, topic)
    assert len(letters) == 3
    copy, value = letters[-1]
    assert copy.key == letters[1][0].key  # the dead letter's own key: the record's topic/partition/offset
    assert dict(copy.headers)[ATTEMPTS_HEADER] == b"1" and dict(copy.headers)["origin"] == b"pos-12"
    assert value["payload"] == poison.value and value["key"] == b"poison"
    assert value["attributes"]["replay_attempts"] == "1"
    assert value["attributes"]["replay_reason_1"].startswith("not-wire-format: ")
    assert value["reason"] == value["attributes"]["replay_reason_1"]

    second = replay_dlq(topic)
    assert "resent 0 dead letter(s); kept 1 still failing; gave up on 0" in second
    assert "2 of 3" in second
    third = replay_dlq(topic)
    assert "resent 0 dead letter(s); kept 0 still failing; gave up on 1 after 3 attempt(s)" in third
    assert read_topic(stack_settings, topic) == after  # the poison never went back to its topic

    letters = letters_of(stack_settings, topic)
    assert len(letters) == 5
    final = letters[-1][1]["attributes"]
    assert final["replay_gave_up"] == "true" and final["replay_attempts"] == "3"
    assert [final[f"replay_reason_{n}"][:16] for n in (1, 2, 3)] == ["not-wire-format:"] * 3
    assert [dict(r.headers)[ATTEMPTS_HEADER] for r, _ in letters[2:]] == [b"1", b"2", b"3"]

    for options in [(), ("--dry-run",)]:  # and from now on: nothing new, however often
        later_run = replay_dlq(topic, *options)
        assert "resent 0 dead letter(s)" in later_run and "kept 0" in later_run and "up on 0" in later_run
        assert "1 given up before" in later_run
    assert read_topic(stack_settings, topic) == after
    assert len(letters_of(stack_settings, topic)) == 5


def test_a_dead_lettered_record_brings_its_attempt_count_along(
    stack_settings: Settings, tmp_path: Path, unique: str
) -> None:
    """A record replay sent back twice that the sink dead-letters again: the count goes on from 2."""
    topic = new_topic(stack_settings, f"replaytest.{unique}.counted", partitions=1)
    producer = AvroProducer(stack_settings, topic)
    producer.raw(b"\x00\xff\xff\xff\xf0 no such schema", key="k", headers=[(ATTEMPTS_HEADER, b"2")])
    producer.flush()
    drain(stack_settings, tmp_path, f"sink-{unique}", [topic])
    ((record, letter),) = letters_of(stack_settings, topic)
    assert dict(record.headers)[ATTEMPTS_HEADER] == b"2"  # the sink kept the header…
    assert letter["attributes"]["replay_attempts"] == "2"  # …and wrote the count into the dead letter

    kept = replay_dlq(topic, "--max-attempts", "4")
    assert "kept 1 still failing" in kept and "3 of 4" in kept
    gave_up = replay_dlq(topic, "--max-attempts", "4")
    assert "gave up on 1 after 4 attempt(s)" in gave_up
    assert len(read_topic(stack_settings, topic)) == 1  # never sent back
