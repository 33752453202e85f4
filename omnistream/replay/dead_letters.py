"""Send dead letters back to the topic they came from, once the cause is fixed — and only then.

A dead letter (schemas/dead_letter.avsc) of a Kafka record holds its value bytes (``payload``), key and
origin (``source`` ``kafka://<topic>``, partition and offset in ``attributes``), and the dead-letter record
carries the original headers. Before anything is sent back, each record is checked the way its consumer
reads it: the landing sink's own decode (:func:`omnistream.sink.batch.build_batch`, through the registry).

- A record that now passes goes back unchanged — value, key and headers, to its origin topic and
  partition — plus the header ``omnistream.replay.attempts`` counting this attempt.
- A record that still fails is **kept**: it is not sent (a resend would only be dead-lettered again), and
  a copy of its dead letter is appended to the DLQ with the attempt counted (header and the
  ``replay_attempts`` attribute), this attempt's reason (``reason``, and ``replay_reason_<n>`` beside the
  earlier attempts' reasons in ``attributes``), so the next run tries it again and the DLQ keeps its history.
- After ``max_attempts`` attempts a record is **given up**: its last copy is marked ``replay_gave_up`` and
  no later run checks or sends it again. A record that passed the check but was dead-lettered again by the
  sink brings its count along in the header (:mod:`omnistream.sink.dlq` keeps it), so the count goes on.

The resends, the copies and the replayer's own consumer-group offsets on the DLQ commit in one Kafka
transaction (:mod:`omnistream.kafka.transactions`): each dead letter is handled once, even across crashes,
and the next run starts after the last one handled. With ``dry_run`` the same checks run and nothing is
written.

The sink dead-letters a record at least once (a crash between the dead letter and its file sends it
again, and a landing replay sends it again), so several dead letters can share an origin. Per origin only
the dead letter with the most attempts counts; one whose count is not above what an earlier run already
handled for that origin is a duplicate. Dead letters of inputs that were never Kafka records (an email a
producer could not parse) cannot be resent by this and are counted as skipped.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    TIMESTAMP_CREATE_TIME,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from omnistream.kafka.clients import client_config, producer_config
from omnistream.kafka.offsets import NoSuchTopic, read_to_end, topic_partitions, watermarks
from omnistream.kafka.registry import registry_client
from omnistream.kafka.serde import SchemaCache, UndecodableRecord, headers_of
from omnistream.kafka.transactions import TransactionalProducer
from omnistream.settings import Settings
from omnistream.sink.batch import build_batch
from omnistream.sink.dlq import (
    ATTEMPTS_ATTRIBUTE,
    ATTEMPTS_HEADER,
    ERROR_CLASS,
    DeadLetterSender,
    attempts_in,
    origin_of,
)
from omnistream.sink.landing_schemas import LandingSchemas
from omnistream.topics import dlq

log = logging.getLogger(__name__)

READ_TIMEOUT_S = 120.0
DEFAULT_MAX_ATTEMPTS = 3
GAVE_UP_ATTRIBUTE = "replay_gave_up"
REASON_ATTRIBUTE = "replay_reason_{}"

RESENT, KEPT, GAVE_UP = "resent", "kept", "gave up"

Origin = tuple[str, int, int]
Headers = list[tuple[str, bytes | None]]


@dataclass(frozen=True)
class Outcome:
    """What happened to one dead letter's record in this run."""

    origin: Origin  # (topic, partition, offset) of the record
    dlq_partition: int
    dlq_offset: int
    action: str  # RESENT, KEPT or GAVE_UP
    attempt: int  # the attempt this run counted (for GAVE_UP without a new check: the last one)
    reason: str = ""  # why the record still fails (empty for RESENT)


@dataclass
class DeadLetterReplay:
    """What a ``replay --dlq`` run did (or, with ``dry_run``, would do)."""

    dlq_topic: str
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    dry_run: bool = False
    outcomes: list[Outcome] = field(default_factory=list)
    duplicates: int = 0
    not_resendable: int = 0
    given_up_before: int = 0  # records given up by earlier runs, left alone

    def count(self, action: str) -> int:
        return sum(o.action == action for o in self.outcomes)

    @property
    def resent(self) -> int:
        return self.count(RESENT)

    @property
    def kept(self) -> int:
        return self.count(KEPT)

    @property
    def gave_up(self) -> int:
        return self.count(GAVE_UP)

    @property
    def resent_to(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for o in self.outcomes:
            if o.action == RESENT:
                out[o.origin[0]] = out.get(o.origin[0], 0) + 1
        return out


@dataclass
class _Letter:
    """One dead letter as read from the DLQ."""

    msg: Message
    letter: dict[str, Any]
    origin: Origin
    headers: Headers
    attempts: int
    gave_up: bool

    @property
    def position(self) -> tuple[int, int]:
        return self.msg.partition(), self.msg.offset()  # type: ignore[return-value]


def dlq_topic_of(name: str) -> str:
    """``name`` if it is a DLQ topic already, else the DLQ beside it."""
    return name if name.endswith(".dlq") else dlq(name)


def default_group(settings: Settings) -> str:
    return f"{settings.landing.group_id}.dlq-replay"


def replay_dead_letters(
    settings: Settings,
    topic: str,
    group: str | None = None,
    *,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    dry_run: bool = False,
) -> DeadLetterReplay:
    """Resend the dead letters of ``topic`` (or of DLQ topic ``topic``) whose records now pass; keep the
    others, counting the attempt, and give up on a record after ``max_attempts``."""
    if max_attempts < 1:
        raise ValueError(f"max_attempts must be at least 1, not {max_attempts}")
    source = dlq_topic_of(topic)
    group_id = group or default_group(settings)
    report = DeadLetterReplay(source, max_attempts=max_attempts, dry_run=dry_run)
    consumer = Consumer(
        client_config(
            settings,
            **{
                "group.id": group_id,
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "isolation.level": "read_committed",
                "auto.offset.reset": "earliest",
                # The end of a partition written transactionally is a marker no record reaches.
                "enable.partition.eof": True,
            },
        )
    )
    try:
        try:
            partitions = topic_partitions(consumer, source)
        except NoSuchTopic:
            log.info("%s does not exist: nothing dead-lettered", source)
            return report
        committed = {
            tp.partition: max(tp.offset, 0)
            for tp in consumer.committed([TopicPartition(source, p) for p in partitions], timeout=30)
        }
        ends = {p: high for p, (_, high) in watermarks(consumer, source, partitions).items()}
        cache = LandingSchemas(SchemaCache(registry_client(settings)))
        pending = _read_dead_letters(consumer, source, committed, ends, cache, report)
        if not pending and all(committed[p] >= ends[p] for p in partitions):
            log.info("%s: every dead letter was handled already", source)
            return report
        plan = [_decide(letters, cache, report) for letters in pending.values()]
        if not dry_run:
            _write(settings, consumer, group_id, source, partitions, ends, plan, max_attempts)
    finally:
        consumer.close()
    log.info(
        "%s: resent %d, kept %d, gave up on %d, skipped %d duplicate(s)%s",
        source,
        report.resent,
        report.kept,
        report.gave_up,
        report.duplicates,
        " (dry run)" if dry_run else "",
    )
    return report


def _read_dead_letters(
    consumer: Consumer,
    source: str,
    committed: dict[int, int],
    ends: dict[int, int],
    cache: LandingSchemas,
    report: DeadLetterReplay,
) -> dict[Origin, list[_Letter]]:
    """The dead letters after the committed offsets still to handle, by origin in order of appearance.

    Dead letters before the committed offsets were handled by earlier runs: per origin, the highest
    attempt count among them and whether it was given up decide which later ones are duplicates."""
    pending: dict[Origin, list[_Letter]] = {}
    handled: dict[Origin, tuple[int, bool]] = {}
    # From the beginning: the dead letters before the committed offsets tell which origins are done.
    starts = dict.fromkeys(ends, OFFSET_BEGINNING)
    for msg in read_to_end(consumer, source, starts, ends, timeout_s=READ_TIMEOUT_S):
        offset: int = msg.offset()  # type: ignore[assignment]
        partition: int = msg.partition()  # type: ignore[assignment]
        letter = _dead_letter(msg, cache.cache)
        origin = origin_of(letter) if letter is not None else None
        if letter is None or origin is None:
            if offset >= committed.get(partition, 0):
                report.not_resendable += 1
                log.warning(
                    "%s[%d]@%d is not a dead letter of a Kafka record; skipped", source, partition, offset
                )
            continue
        headers = headers_of(msg)
        attributes = letter.get("attributes") or {}
        attempts = max(attempts_in(headers), _int(attributes.get(ATTEMPTS_ATTRIBUTE)))
        gave_up = attributes.get(GAVE_UP_ATTRIBUTE) == "true"
        if offset < committed.get(partition, 0):
            before = handled.get(origin, (0, False))
            handled[origin] = (max(before[0], attempts), before[1] or gave_up)
            continue
        pending.setdefault(origin, []).append(_Letter(msg, letter, origin, headers, attempts, gave_up))
    for origin in list(pending):
        letters = pending[origin]
        done = handled.get(origin)
        # Letters no newer than what an earlier run handled for their origin are duplicates.
        fresh = [d for d in letters if done is None or d.attempts > done[0]]
        if fresh and not all(d.gave_up for d in fresh):
            report.duplicates += len(letters) - len(fresh)
            pending[origin] = fresh
            continue
        del pending[origin]
        if fresh:  # the copy an earlier run marked as given up: left alone
            report.given_up_before += 1
            report.duplicates += len(letters) - 1
        else:
            report.duplicates += len(letters)
    report.given_up_before += sum(
        gave_up for origin, (_, gave_up) in handled.items() if origin not in pending
    )
    return pending


@dataclass(frozen=True)
class _Step:
    """What to write for one origin: the record to resend, or the dead letter's next copy."""

    outcome: Outcome
    dead: _Letter
    headers: Headers  # the record's own headers with the attempt count set


def _decide(letters: list[_Letter], cache: LandingSchemas, report: DeadLetterReplay) -> _Step:
    """Check the newest dead letter of one origin the way the sink reads its record; say what to do."""
    newest = max(letters, key=lambda d: d.attempts)  # the first of the highest count
    report.duplicates += len(letters) - 1
    target, partition, _ = newest.origin
    dlq_partition, dlq_offset = newest.position
    if newest.attempts >= report.max_attempts:  # sent back as often as allowed and dead-lettered again
        reason = str(newest.letter.get("reason") or "")
        outcome = Outcome(newest.origin, dlq_partition, dlq_offset, GAVE_UP, newest.attempts, reason)
        report.outcomes.append(outcome)
        return _Step(outcome, newest, _with_attempts(newest.headers, newest.attempts))
    attempt = newest.attempts + 1
    failing = _still_failing(newest, cache)
    last_chance = attempt >= report.max_attempts
    action = RESENT if failing is None else (GAVE_UP if last_chance else KEPT)
    outcome = Outcome(newest.origin, dlq_partition, dlq_offset, action, attempt, failing or "")
    report.outcomes.append(outcome)
    log.info(
        "%s/%d/%d: %s, attempt %d of %d %s",
        target,
        partition,
        newest.origin[2],
        action,
        attempt,
        report.max_attempts,
        failing or "",
    )
    return _Step(outcome, newest, _with_attempts(newest.headers, attempt))


def _still_failing(dead: _Letter, cache: LandingSchemas) -> str | None:
    """None if the landing sink would land the record now; else the sink's reason for rejecting it."""
    target, partition, offset = dead.origin
    attributes = dead.letter.get("attributes") or {}
    headers: list[tuple[str, str | bytes | None]] = list(dead.headers)
    timestamp = _int(attributes.get("timestamp_ms")) or int(time.time() * 1000)
    record = Message(
        topic=target,
        partition=partition,
        offset=offset,
        key=dead.letter["key"],
        value=dead.letter["payload"],
        headers=headers or None,
        timestamp=(TIMESTAMP_CREATE_TIME, timestamp),
    )
    batch = build_batch(target, partition, [record], cache)
    return batch.rejected[0].reason if batch.rejected else None


def _with_attempts(headers: Headers, attempts: int) -> Headers:
    """The record's own headers, in order, with the attempt count (replacing an earlier one) at the end."""
    return [(k, v) for k, v in headers if k != ATTEMPTS_HEADER] + [(ATTEMPTS_HEADER, str(attempts).encode())]


def _next_copy(step: _Step, max_attempts: int) -> dict[str, Any]:
    """The dead letter appended for a record kept (or given up): this attempt counted, its reason added."""
    outcome, letter = step.outcome, step.dead.letter
    attributes = dict(letter.get("attributes") or {})
    attributes[ATTEMPTS_ATTRIBUTE] = str(outcome.attempt)
    attributes[REASON_ATTRIBUTE.format(outcome.attempt)] = outcome.reason
    if outcome.action == GAVE_UP:
        attributes[GAVE_UP_ATTRIBUTE] = "true"
        attributes["replay_max_attempts"] = str(max_attempts)
    return {
        **letter,
        "reason": outcome.reason,
        "error_class": ERROR_CLASS,
        "attributes": attributes,
        "failed_at": datetime.now(UTC),
    }


def _write(
    settings: Settings,
    consumer: Consumer,
    group_id: str,
    source: str,
    partitions: list[int],
    ends: dict[int, int],
    plan: list[_Step],
    max_attempts: int,
) -> None:
    """Resends, copies and the group's offsets on the DLQ, in one transaction."""
    # One transactional id per group and DLQ: a second replayer of the same DLQ fences the first.
    config = producer_config(settings, **{"transactional.id": f"{group_id}:{source}"})
    transaction = TransactionalProducer(config)
    letters = DeadLetterSender(settings)
    failures: list[KafkaError] = []

    def delivered(err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            failures.append(err)

    def fill() -> None:
        failures.clear()  # of an earlier, aborted attempt
        for step in plan:
            outcome = step.outcome
            if outcome.action == RESENT:
                target, partition, _ = outcome.origin
                value, key = step.dead.letter["payload"], step.dead.letter["key"]
            else:  # kept or given up: the next copy of its dead letter, beside the one just handled
                target, partition = source, outcome.dlq_partition
                value = letters.encode(_next_copy(step, max_attempts), source)
                key = step.dead.msg.key()
            _produce(transaction.producer, target, partition, key, value, step.headers, delivered)
        positions = [TopicPartition(source, p, ends[p]) for p in partitions]
        transaction.send_offsets(positions, consumer.consumer_group_metadata())

    transaction.init()
    try:
        transaction.run(f"the dead letters of {source}", fill)
    finally:
        transaction.close()
    if failures:  # the commit fails first if any delivery failed; kept as a guard
        raise KafkaException(failures[0])


def _produce(
    producer: Producer,
    topic: str,
    partition: int,
    key: bytes | None,
    value: bytes | None,
    headers: Headers,
    on_delivery: Any,
) -> None:
    sent: list[tuple[str, str | bytes | None]] = list(headers)
    while True:
        try:
            producer.produce(
                topic, value=value, key=key, partition=partition, headers=sent, on_delivery=on_delivery
            )
            break
        except BufferError:
            producer.poll(0.5)
    producer.poll(0)


def _int(text: object) -> int:
    return int(text) if isinstance(text, str) and text.isdigit() else 0


def _dead_letter(msg: Message, cache: SchemaCache) -> dict[str, Any] | None:
    """The DeadLetter record in ``msg``, or None if it holds something else."""
    data = msg.value()
    if data is None:
        return None
    try:
        _, letter = cache.decode(data)
    except UndecodableRecord:
        return None
    return letter if isinstance(letter, dict) and {"payload", "key", "source"} <= letter.keys() else None
