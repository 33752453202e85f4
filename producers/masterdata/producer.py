"""Full snapshots of the master-data API into compacted topics, with tombstones for what disappeared.

One snapshot, per entity:

1. read the entity's compacted topic to its end: the live keys and a fingerprint of each latest value;
2. walk the whole collection (no ``updated_since``: only a full walk reveals deletions) and publish every
   entity that is new or whose content changed (all of them with ``republish``), keyed by id;
3. only once the walk has reached its last page and every record is acknowledged: publish a tombstone for
   each key alive in the topic that the walk did not see.

A snapshot that fails or is killed anywhere before step 3 has published only real entities and no
tombstone; the next one starts over with a fresh full walk. A re-run with no change publishes nothing.

Metrics (:class:`MasterDataMetrics`) count API items read as records in and what Kafka acknowledged as
records out (entities and tombstones) and dead letters, per entity topic.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import KafkaError, Message, Producer
from confluent_kafka.schema_registry import topic_subject_name_strategy
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext
from prometheus_client import CollectorRegistry

from omnistream.dead_letter import DeadLetter, dead_letter_to_dict
from omnistream.errors import OmnistreamError
from omnistream.kafka.clients import TopicSpec, ensure_topics, producer_config
from omnistream.kafka.registry import register_schema, registry_client, value_subject
from omnistream.kafka.serde import load_schema
from omnistream.metrics import PipelineMetrics, counter, gauge
from omnistream.settings import Settings
from omnistream.topics import dlq
from producers.masterdata.client import API_PREFIX, ApiClient
from producers.masterdata.entities import EntitySpec, topic_names
from producers.masterdata.records import InvalidRecord, RecordConverter
from producers.masterdata.state import TopicState, read_topic_state

log = logging.getLogger(__name__)

# Subjects are `<topic>-value` (Confluent's TopicNameStrategy), named explicitly so that no serializer asks
# the registry for topic associations first, which Confluent-compatible registries do not all serve.
SERDE_CONF = {"subject.name.strategy": topic_subject_name_strategy}
DEAD_LETTER_SCHEMA = "dead_letter"  # shared by every producer and sink
# Reason classes of dead letters (the metrics' label; the dead letter itself says precisely why).
INVALID_RECORD = "invalid-record"  # the item breaks the contract (no id, a value out of its range)
SCHEMA_MISMATCH = "schema-mismatch"  # what fastavro refused: a value that does not fit the schema
# Error kinds besides librdkafka's own (kafka_<code>).
API_RETRY = "api_retry"  # an API request retried: 408, 429, 5xx, a connection error or a timeout
DELIVERY_FAILED = "delivery"  # a record Kafka did not take (its snapshot fails)
COMPLETE = "complete"
FAILED = "failed"


class SnapshotFailed(OmnistreamError):
    """Kafka did not take the snapshot's records; the snapshot is incomplete and published no tombstone."""


class MasterDataMetrics(PipelineMetrics):
    """The master-data producer's Prometheus metrics: the shared ones, tombstones and snapshots."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        super().__init__(registry, error_kinds=[API_RETRY, DELIVERY_FAILED])
        self.tombstones = counter(
            self.registry,
            "masterdata_tombstones",
            "Tombstones acknowledged by Kafka (also counted in records out), per topic.",
            ["topic"],
        )
        self.snapshots = counter(
            self.registry, "masterdata_snapshots", "Snapshots taken, by outcome.", ["outcome"]
        )
        for outcome in (COMPLETE, FAILED):
            self.snapshots.labels(outcome)
        self.last_snapshot = gauge(
            self.registry,
            "masterdata_last_snapshot_timestamp_seconds",
            "Unix time the last complete snapshot finished: its topics mirrored the API then.",
        )

    def track_topics(self, *topics: str) -> None:
        super().track_topics(*topics)
        for topic in topics:
            self.tombstones.labels(topic)


@dataclass(frozen=True)
class SnapshotOptions:
    """How snapshots are taken and where they go."""

    page_size: int = 500
    topics: Mapping[str, str] = field(default_factory=topic_names)
    # Publish every entity, changed or not: to re-seed a topic's consumers from scratch.
    republish: bool = False
    partitions: int = 3
    state_timeout_s: float = 120.0
    flush_timeout_s: float = 60.0


@dataclass
class EntityReport:
    """How far one entity's snapshot got; passed to the progress callback as it changes."""

    entity: str
    topic: str
    phase: str = "pending"  # pending, reading topic, walking, tombstoning, done, failed
    previously_live: int = 0
    pages: int = 0
    fetched: int = 0
    published: int = 0
    unchanged: int = 0
    invalid: int = 0
    tombstones: int = 0

    @property
    def complete(self) -> bool:
        return self.phase == "done"


@dataclass
class SnapshotReport:
    """One snapshot: its id and start, and a report per entity."""

    snapshot_id: str
    snapshot_at: datetime
    entities: list[EntityReport] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return bool(self.entities) and all(e.complete for e in self.entities)


ProgressCallback = Callable[[EntityReport], None]


def new_snapshot_id(at: datetime) -> str:
    """Sortable by time, unique across producers: ``20240501T120000Z-1a2b3c4d``."""
    return f"{at.astimezone(UTC):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"


@dataclass
class _Channel:
    """Everything needed to publish one entity to its topic, and what it rejects to its dead-letter topic."""

    spec: EntitySpec
    topic: str
    converter: RecordConverter
    serializer: AvroSerializer
    deserializer: AvroDeserializer
    dead_letters: AvroSerializer


class MasterDataProducer:
    """Publishes snapshots of master-data collections; use as a context manager so it always flushes."""

    def __init__(
        self,
        settings: Settings,
        client: ApiClient,
        options: SnapshotOptions | None = None,
        metrics: MasterDataMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.client = client
        self.options = options or SnapshotOptions()
        self.metrics = metrics or MasterDataMetrics()
        self._registry = registry_client(settings)
        self._producer = Producer(
            producer_config(settings, error_cb=self.metrics.kafka_error_callback("master-data producer", log))
        )
        self._channels: dict[str, _Channel] = {}
        self._failures: list[str] = []
        self._retries_counted = 0
        self._unflushed = 0  # records produced since the last flush

    def __enter__(self) -> MasterDataProducer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Deliver what is still queued (bounded by the flush timeout)."""
        left = self._producer.flush(self.options.flush_timeout_s)
        if left:
            log.error("%d master-data records were still undelivered at close", left)

    def prepare(self, specs: list[EntitySpec]) -> None:
        """Create the topics (compacted, plus dead-letter topics) and register the schemas; idempotent."""
        todo = [s for s in specs if s.name not in self._channels]
        if not todo:
            return
        topics = {s.name: self.options.topics[s.name] for s in todo}
        parts = self.options.partitions
        ensure_topics(
            self.settings,
            [TopicSpec.compacted(t, parts) for t in topics.values()]
            + [TopicSpec(dlq(t), parts) for t in topics.values()],
        )
        dead_letter_text = load_schema(DEAD_LETTER_SCHEMA)
        self.metrics.track_topics(*topics.values())
        for spec in todo:
            topic = topics[spec.name]
            text = load_schema(spec.schema)
            register_schema(self._registry, value_subject(topic), spec.schema)
            register_schema(self._registry, value_subject(dlq(topic)), DEAD_LETTER_SCHEMA)
            serializer_conf = {"auto.register.schemas": False, **SERDE_CONF}
            self._channels[spec.name] = _Channel(
                spec,
                topic,
                RecordConverter(text, spec.key_field),
                AvroSerializer(self._registry, text, conf=serializer_conf),
                # Older versions are read into the current shape, so content compares field by field.
                AvroDeserializer(self._registry, text, conf=SERDE_CONF),
                AvroSerializer(self._registry, dead_letter_text, dead_letter_to_dict, conf=serializer_conf),
            )

    def snapshot(
        self,
        specs: list[EntitySpec],
        on_progress: ProgressCallback | None = None,
        snapshot_at: datetime | None = None,
    ) -> SnapshotReport:
        """One full snapshot of ``specs``, entity after entity; raises at the first entity that fails."""
        if not specs:
            raise ValueError("a snapshot needs at least one entity")
        try:
            report = self._snapshot(specs, on_progress, snapshot_at)
        except BaseException:
            self.metrics.snapshots.labels(FAILED).inc()
            raise
        finally:
            self._count_api_retries()
        self.metrics.snapshots.labels(COMPLETE).inc()
        self.metrics.last_snapshot.set_to_current_time()
        return report

    def _snapshot(
        self, specs: list[EntitySpec], on_progress: ProgressCallback | None, snapshot_at: datetime | None
    ) -> SnapshotReport:
        self.client.check(specs[0].name)
        self.prepare(specs)
        at = (snapshot_at or datetime.now(UTC)).astimezone(UTC)
        report = SnapshotReport(new_snapshot_id(at), at)
        report.entities = [EntityReport(s.name, self._channels[s.name].topic) for s in specs]
        notify = on_progress or (lambda _: None)
        for spec, entity_report in zip(specs, report.entities, strict=True):
            try:
                self._snapshot_entity(self._channels[spec.name], report, entity_report, notify)
            except BaseException:
                entity_report.phase = "failed"
                notify(entity_report)
                raise
        log.info("snapshot %s complete: %s", report.snapshot_id, _summary(report))
        return report

    def _count_api_retries(self) -> None:
        """Bring the retry counter up to the API client's own count (the client knows no metrics)."""
        total = sum(self.client.stats.retries.values())
        if total > self._retries_counted:
            self.metrics.errors.labels(API_RETRY).inc(total - self._retries_counted)
            self._retries_counted = total

    def _snapshot_entity(
        self, channel: _Channel, snapshot: SnapshotReport, report: EntityReport, notify: ProgressCallback
    ) -> None:
        report.phase = "reading topic"
        notify(report)
        state = self._read_state(channel)
        report.previously_live = len(state.live)
        report.phase = "walking"
        notify(report)
        seen: set[str] = set()
        for page in self.client.walk(channel.spec.name, self.options.page_size):
            report.pages += 1
            self.metrics.records_in.labels(channel.topic).inc(len(page.items))
            self._count_api_retries()
            for item in page.items:
                self._publish_item(channel, item, snapshot, state, seen, report)
            notify(report)
        self._flush(f"{channel.topic} records")
        # The walk reached its last page and every record is acknowledged: only now is absence meaningful.
        report.phase = "tombstoning"
        notify(report)
        for key in state.missing_from(seen):
            self._produce(channel.topic, key.encode(), None)
            report.tombstones += 1
        self._flush(f"{channel.topic} tombstones")
        report.phase = "done"
        notify(report)
        log.info("%s: %s", channel.spec.name, _entity_summary(report))

    def _read_state(self, channel: _Channel) -> TopicState:
        ctx = SerializationContext(channel.topic, MessageField.VALUE)

        def fingerprint(key: str, value: bytes) -> bytes:
            record = channel.deserializer(value, ctx)
            return channel.converter.fingerprint(record) if isinstance(record, dict) else b""

        return read_topic_state(self.settings, channel.topic, fingerprint, self.options.state_timeout_s)

    def _publish_item(
        self,
        channel: _Channel,
        item: Any,
        snapshot: SnapshotReport,
        state: TopicState,
        seen: set[str],
        report: EntityReport,
    ) -> None:
        report.fetched += 1
        key = channel.converter.key(item) if isinstance(item, dict) else None
        if key is not None:
            # The API served it, so it exists: never tombstone it, even if its record is rejected below.
            seen.add(key)
        try:
            if key is None:
                raise InvalidRecord(f"no usable {channel.spec.key_field}")
            record = channel.converter.convert(item, snapshot.snapshot_id, snapshot.snapshot_at)
            if not self.options.republish and state.live.get(key) == channel.converter.fingerprint(record):
                report.unchanged += 1
                return
            value = channel.serializer(record, SerializationContext(channel.topic, MessageField.VALUE))
        except (InvalidRecord, ValueError, TypeError) as exc:
            # ValueError/TypeError: what fastavro says about a value that does not fit the schema.
            report.invalid += 1
            self._dead_letter(channel, key, item, exc, snapshot.snapshot_id)
            return
        self._produce(channel.topic, key.encode(), value)
        report.published += 1

    def _dead_letter(
        self, channel: _Channel, key: str | None, item: Any, exc: Exception, snapshot_id: str
    ) -> None:
        target = dlq(channel.topic)
        log.warning("%s %s rejected to %s: %s", channel.spec.name, key, target, exc)
        raw_key = key.encode() if key is not None else None
        letter = DeadLetter.from_error(
            exc,
            topic=channel.topic,
            source=f"{self.client.base_url}{API_PREFIX}/{channel.spec.name}",
            # The item as the API sent it: JSON keeps its decimal strings exactly.
            payload=json.dumps(item, ensure_ascii=False).encode(),
            key=raw_key,
            source_id=key,
            attributes={"entity": channel.spec.name, "snapshot_id": snapshot_id},
        )
        value = channel.dead_letters(letter, SerializationContext(target, MessageField.VALUE))
        reason = INVALID_RECORD if isinstance(exc, InvalidRecord) else SCHEMA_MISMATCH

        def delivered(err: KafkaError | None, msg: Message) -> None:
            if err is not None:
                self._delivery_failed(err, msg)
            else:
                self.metrics.dead_letters.labels(channel.topic, reason).inc()

        self._produce(target, raw_key, value, delivered)

    def _produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        on_delivery: Callable[[KafkaError | None, Message], None] | None = None,
    ) -> None:
        while True:
            try:
                self._producer.produce(topic, value, key, on_delivery=on_delivery or self._on_delivery)
                break
            except BufferError:
                # The local queue is full: serve delivery reports until there is room, then try again.
                self._producer.poll(0.5)
        self._unflushed += 1
        self._producer.poll(0)

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        """An entity's or tombstone's delivery report."""
        if err is not None:
            self._delivery_failed(err, msg)
            return
        topic: str = msg.topic()  # type: ignore[assignment]  # always set on a delivery report
        self.metrics.records_out.labels(topic).inc()
        if msg.value() is None:
            self.metrics.tombstones.labels(topic).inc()

    def _delivery_failed(self, err: KafkaError, msg: Message) -> None:
        self.metrics.errors.labels(DELIVERY_FAILED).inc()
        self._failures.append(f"{msg.topic()} key {msg.key()!r}: {err.str()}")

    def _flush(self, what: str) -> None:
        left = self._producer.flush(self.options.flush_timeout_s)
        if left or self._failures:
            failures, self._failures = self._failures, []
            raise SnapshotFailed(
                f"Kafka did not acknowledge {what}: {left} still queued after "
                f"{self.options.flush_timeout_s:.0f} s, {len(failures)} failed"
                + (f" (first: {failures[0]})" if failures else "")
                + f"; is the broker at {self.settings.kafka.bootstrap_servers} up?"
            )
        if self._unflushed:
            self.metrics.last_commit.set_to_current_time()
            self._unflushed = 0


def _entity_summary(r: EntityReport) -> str:
    return (
        f"{r.fetched} fetched in {r.pages} pages, {r.published} published, {r.unchanged} unchanged, "
        f"{r.invalid} rejected, {r.tombstones} tombstones"
    )


def _summary(report: SnapshotReport) -> str:
    return "; ".join(f"{e.entity}: {_entity_summary(e)}" for e in report.entities)
