"""The landing sink's consumer loop: buffer per partition, flush to one file per offset range, recover.

Exactly once per (topic, partition, offset) rests on three rules:

1. The files are the truth. On every assignment, recovery lists the partition's committed files, removes
   half-written temporaries, and seeks to the highest ``endOffset`` + 1. Committed consumer offsets are
   written too, after each file, but only so lag can be shown; they are never read back.
2. A file is committed atomically and never overlaps another (the store refuses one that would), and the
   consumer offset is committed only after it. A crash before the file commit loses nothing (the records are
   read again from the files' end); a crash after it duplicates nothing (recovery starts past the file).
3. Buffers never outlive ownership: on revoke every buffer of the revoked partitions is flushed (so the next
   owner starts past them), on a lost assignment they are dropped (the next owner reads them again), and a
   record of a partition no longer assigned, or below the recovery point, is ignored.

Metrics (:class:`SinkMetrics`) follow the same accounting: a record counts as consumed once it is buffered,
as landed once its file is committed (a file commit is the sink's transaction; a dropped buffer an aborted
one), and lag is what librdkafka's statistics say, refreshed every few seconds without asking the broker.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)
from prometheus_client import CollectorRegistry

from omnistream.errors import OmnistreamError
from omnistream.kafka.clients import client_config
from omnistream.kafka.offsets import watermarks
from omnistream.kafka.registry import registry_client
from omnistream.kafka.serde import (
    CORRUPT_AVRO,
    HEADER_SIZE,
    MAGIC,
    NOT_WIRE_FORMAT,
    UNKNOWN_SCHEMA,
    UNSUPPORTED_SCHEMA,
    SchemaCache,
    UndecodableRecord,
)
from omnistream.metrics import (
    ABORTED,
    COMMITTED,
    PipelineMetrics,
    counter,
    gauge,
    transactions_counter,
)
from omnistream.settings import Settings
from omnistream.sink.batch import build_batch
from omnistream.sink.compaction import CompactionPolicy, Compactor
from omnistream.sink.dlq import DeadLetterSender
from omnistream.sink.landing_schemas import NOT_REPRESENTABLE, LandingSchemas
from omnistream.sink.layout import FILE_METADATA_KEY, LandedFile, resume_offset
from omnistream.sink.store import LandingStore

log = logging.getLogger(__name__)

POLL_TIMEOUT_S = 0.5
MAX_BATCH = 10_000
# How often librdkafka hands over its statistics, from which the lag gauges are set.
LAG_REFRESH_MS = 5_000
# The reason classes of dead letters: the first word of every reason the sink gives.
REASON_CLASSES = frozenset(
    {NOT_WIRE_FORMAT, UNKNOWN_SCHEMA, UNSUPPORTED_SCHEMA, CORRUPT_AVRO, NOT_REPRESENTABLE}
)
OFFSET_COMMIT_FAILED = "offset_commit"


class LandingAheadError(OmnistreamError):
    """The landing zone holds offsets the topic does not have: it was recreated or truncated."""


@dataclass(frozen=True)
class SinkConfig:
    """What to land and how often to flush."""

    group_id: str
    topics: Sequence[str] = ()
    # A regex subscription (librdkafka's syntax, starting with "^"); used instead of `topics` when set.
    pattern: str | None = None
    flush_records: int = 10_000
    flush_seconds: float = 1.0  # as landing.flush_seconds
    # Exit once every assigned partition has been landed up to its end (for backfills, tests, benches).
    drain: bool = False
    # Static group membership: a sink restarted under the same id (after a crash) takes its partitions
    # back at once instead of waiting out the dead member's session; one distinct id per running sink.
    instance_id: str | None = None

    # Merging small files (the CLI sets it from settings.landing); None: files stay as flushed.
    compaction: CompactionPolicy | None = None

    def subscription(self) -> list[str]:
        if self.pattern:
            return [self.pattern if self.pattern.startswith("^") else f"^{self.pattern}"]
        if not self.topics:
            raise ValueError("nothing to land: give topics or a pattern")
        return list(self.topics)


@dataclass
class PartitionBuffer:
    """Records of one partition consumed since its last file."""

    topic: str
    partition: int
    # Where the next file starts: the last file's end + 1 (so files tile the offsets, skipped ones
    # included), or None before this partition's first file.
    range_start: int | None
    # Records below this offset are landed or buffered already; a stale fetch of them is ignored.
    next_offset: int
    msgs: list[Message] = field(default_factory=list)
    opened: float = 0.0
    schema_key: bytes | None = None
    schema: pa.Schema | None = None

    def reset(self, next_start: int) -> None:
        self.range_start = next_start
        self.msgs = []
        self.schema_key = None
        self.schema = None


@dataclass
class SinkStats:
    records: int = 0
    files: int = 0
    dead_letters: int = 0
    started: float = field(default_factory=time.monotonic)


class SinkMetrics(PipelineMetrics):
    """The landing sink's Prometheus metrics: the shared ones, its file commits, lag and buffers."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        super().__init__(registry, error_kinds=[OFFSET_COMMIT_FAILED])
        self.transactions = transactions_counter(
            self.registry,
            "Landing files committed, and buffers dropped unlanded (a lost partition, a failed run).",
        )
        self.lag = gauge(
            self.registry,
            "sink_lag_records",
            "Records in the partition the sink has not read yet: the consumer's last stable offset minus "
            "its position (transaction markers are not lag), as of librdkafka's last statistics.",
            ["topic", "partition"],
        )
        self.buffered = gauge(
            self.registry,
            "sink_buffered_records",
            "Records read and held in memory until their file is committed, per topic.",
            ["topic"],
        )
        self.merged = counter(
            self.registry,
            "sink_merged_files",
            "Small landing files merged into larger ones by compaction, per topic.",
            ["topic"],
        )


def reason_class(reason: str) -> str:
    """The bounded class of a dead letter's reason: its first word, e.g. ``corrupt-avro``."""
    head = reason.split(":", 1)[0]
    return head if head in REASON_CLASSES else "other"


def partition_lags(
    stats: Mapping[str, Any], positions: Mapping[tuple[str, int], int]
) -> dict[tuple[str, int], int]:
    """Records behind per owned partition, from librdkafka's statistics (``stats_cb`` JSON, parsed).

    The end is the last stable offset (``read_committed``: records of open transactions are not readable
    yet), the position the consumer's (``app_offset``, which steps over transaction markers); before the
    first record it is ``positions``' entry (where the sink resumes), raised to the log start. A partition
    the statistics do not know an end for yet is left out.
    """
    topics = stats.get("topics") or {}
    out: dict[tuple[str, int], int] = {}
    for (topic, partition), resume in positions.items():
        p = ((topics.get(topic) or {}).get("partitions") or {}).get(str(partition))
        if not p:
            continue
        end = p.get("ls_offset", -1)
        if end < 0:
            end = p.get("hi_offset", -1)
        if end < 0:
            continue
        position = p.get("app_offset", -1)
        if position < 0:
            position = max(resume, p.get("lo_offset", -1))
        out[(topic, partition)] = max(end - position, 0)
    return out


class LandingSink:
    """A member of the landing consumer group."""

    def __init__(
        self,
        settings: Settings,
        store: LandingStore,
        config: SinkConfig,
        *,
        schemas: LandingSchemas | None = None,
        metrics: SinkMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.config = config
        self.schemas = schemas or LandingSchemas(SchemaCache(registry_client(settings)))
        self.metrics = metrics or SinkMetrics()
        self._lag_labels: set[tuple[str, str]] = set()
        self._buffered_topics: set[str] = set()
        self.dead_letters = DeadLetterSender(settings)
        self.stats = SinkStats()
        self._stop = threading.Event()
        # Set once the group has given this sink partitions and recovery has positioned them.
        self.assigned = threading.Event()
        self._buffers: dict[tuple[str, int], PartitionBuffer] = {}
        self._eof: set[tuple[str, int]] = set()
        self._warned_topics: set[str] = set()
        self._consumer: Consumer | None = None
        # Without a policy the compactor only sweeps: files a past merge covers still go after their grace.
        self.compactor = Compactor(
            store, config.compaction or CompactionPolicy(min_files=0), on_merge=self._on_merge
        )
        # Owned partitions that landed a file or hold covered files since the last compaction pass.
        self._to_compact: set[tuple[str, int]] = set()
        self._next_compact = 0.0

    def consumer_config(self) -> dict[str, object]:
        static = {"group.instance.id": self.config.instance_id} if self.config.instance_id else {}
        return client_config(
            self.settings,
            **static,
            **{
                "group.id": self.config.group_id,
                "client.id": f"omnistream-sink-{socket.gethostname()}-{os.getpid()}",
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "earliest",
                # Records of aborted transactions (the email producer's) never land.
                "isolation.level": "read_committed",
                "enable.partition.eof": self.config.drain,
                "partition.assignment.strategy": "roundrobin",
                # A regex subscription notices new topics this soon.
                "topic.metadata.refresh.interval.ms": 10_000,
                # Lag for the metrics, from what the consumer knows already (no requests to the broker).
                "statistics.interval.ms": LAG_REFRESH_MS,
                "stats_cb": self._on_stats,
                "error_cb": self.metrics.kafka_error_callback("landing consumer", log),
            },
        )

    @property
    def assignment(self) -> list[tuple[str, int]]:
        """The (topic, partition)s this sink owns right now."""
        return sorted(self._buffers)

    def request_stop(self) -> None:
        """Ask the loop to flush what it has and exit (signal-handler safe)."""
        self._stop.set()

    def run(self) -> SinkStats:
        """Land until stopped (or, with ``drain``, until caught up); flush on the way out."""
        consumer = Consumer(self.consumer_config())
        self._consumer = consumer
        clean = False
        try:
            consumer.subscribe(
                self.config.subscription(),
                on_assign=self._on_assign,
                on_revoke=self._on_revoke,
                on_lost=self._on_lost,
            )
            log.info(
                "landing %s into %s as group %s",
                ", ".join(self.config.subscription()),
                self.store.root,
                self.config.group_id,
            )
            while not self._stop.is_set():
                self._handle(consumer.consume(num_messages=MAX_BATCH, timeout=self._poll_timeout()))
                self._flush_due()
                self._compact_due()
                if self.config.drain and self._caught_up():
                    break
            self._flush_all()
            clean = True
        finally:
            if not clean:
                # After a failure nothing more is written: whatever was buffered is read again on restart.
                for buf in self._buffers.values():
                    if buf.msgs:
                        self.metrics.transactions.labels(ABORTED).inc()
                self._buffers.clear()
            owned = list(self._buffers) if clean else []
            try:
                consumer.close()
            finally:
                self._consumer = None
                self.dead_letters.close()
        if self.config.drain:
            self._finish_sweeps(owned)
        elapsed = time.monotonic() - self.stats.started
        log.info(
            "landed %d record(s) in %d file(s), %d dead letter(s), in %.1f s",
            self.stats.records,
            self.stats.files,
            self.stats.dead_letters,
            elapsed,
        )
        return self.stats

    # -- the loop --------------------------------------------------------------------------------------

    def _handle(self, msgs: list[Message]) -> None:
        buffers = self._buffers
        limit = self.config.flush_records
        drain = self.config.drain
        # Records buffered per topic, added to the metric once per batch: a metric update per record
        # would be a measurable share of the time.
        consumed: dict[str, int] = {}
        for msg in msgs:
            err = msg.error()
            if err is not None:
                self._on_error(msg, err)
                continue
            key = (msg.topic(), msg.partition())
            buf = buffers.get(key)  # type: ignore[arg-type]
            if buf is None:
                continue  # fetched before its partition was revoked
            offset: int = msg.offset()  # type: ignore[assignment]
            if offset < buf.next_offset:
                continue  # landed already: a fetch from before the last recovery
            if drain:
                self._eof.discard(key)  # type: ignore[arg-type]
            value = msg.value()
            if value is not None and len(value) >= HEADER_SIZE and value[0] == MAGIC:
                schema_key = value[1:HEADER_SIZE]
                if schema_key != buf.schema_key:
                    self._schema_change(buf, schema_key)
            if not buf.msgs:
                buf.opened = time.monotonic()
                if buf.range_start is None:
                    buf.range_start = offset
            buf.msgs.append(msg)
            buf.next_offset = offset + 1
            consumed[buf.topic] = consumed.get(buf.topic, 0) + 1
            if len(buf.msgs) >= limit:
                self._flush(buf)
        for topic, count in consumed.items():
            self.metrics.records_in.labels(topic).inc(count)

    def _on_error(self, msg: Message, err: KafkaError) -> None:
        code = err.code()
        if code == KafkaError._PARTITION_EOF:
            self._eof.add((msg.topic(), msg.partition()))  # type: ignore[arg-type]
            return
        if code == KafkaError.UNKNOWN_TOPIC_OR_PART:
            # A pipeline topic nobody has created yet: it is picked up once it exists.
            topic = msg.topic() or str(err)
            if topic not in self._warned_topics:
                self._warned_topics.add(topic)
                log.warning("topic %s does not exist (yet): %s", topic, err.str())
            return
        raise KafkaException(err)

    def _schema_change(self, buf: PartitionBuffer, schema_key: bytes) -> None:
        """A record written with another schema: flush first unless its columns merge with the buffer's."""
        try:
            schema = self.schemas.by_id(int.from_bytes(schema_key, "big")).arrow_schema
        except UndecodableRecord:
            return  # it will be dead-lettered at the flush; the buffer's columns are unaffected
        merged = schema
        if buf.schema is not None and buf.msgs:
            try:
                merged = pa.unify_schemas([buf.schema, schema], promote_options="permissive")
            except (pa.ArrowInvalid, pa.ArrowTypeError):
                self._flush(buf)
        buf.schema = merged
        buf.schema_key = schema_key

    def _poll_timeout(self) -> float:
        """At most POLL_TIMEOUT_S, less when a buffer's flush is due sooner: a file is never held up by a
        poll waiting for records that do not come."""
        opened = [buf.opened for buf in self._buffers.values() if buf.msgs]
        if not opened:
            return POLL_TIMEOUT_S
        due = min(opened) + self.config.flush_seconds - time.monotonic()
        return min(POLL_TIMEOUT_S, max(due, 0.01))

    def _compact_due(self) -> None:
        """One compaction pass over the partitions that landed files, every ``every_seconds``."""
        now = time.monotonic()
        if not self._to_compact or now < self._next_compact:
            return
        self._next_compact = now + self.compactor.policy.every_seconds
        for key in sorted(self._to_compact):
            if key not in self._buffers:
                self._to_compact.discard(key)  # no longer ours: its owner compacts it
                continue
            merged, waiting = self.compactor.compact(*key)
            if merged is None and not waiting:
                self._to_compact.discard(key)

    def _on_merge(self, file: LandedFile, parts: int) -> None:
        self.metrics.merged.labels(file.topic).inc(parts)

    def _finish_sweeps(self, partitions: list[tuple[str, int]]) -> None:
        """A drain leaves no covered files behind: wait out their grace, then delete them."""
        for key in partitions:
            while waiting := self.compactor.sweep(*key):
                log.info("%s[%d]: waiting out the grace of %d merged file(s)", *key, len(waiting))
                time.sleep(min(1.0, self.compactor.policy.grace_seconds))

    def _flush_due(self) -> None:
        deadline = time.monotonic() - self.config.flush_seconds
        for buf in list(self._buffers.values()):
            if buf.msgs and buf.opened <= deadline:
                self._flush(buf)

    def _flush_all(self, sync_commit: bool = True) -> None:
        for buf in list(self._buffers.values()):
            if buf.msgs:
                self._flush(buf, sync_commit=sync_commit)

    def _flush(self, buf: PartitionBuffer, sync_commit: bool = False) -> None:
        """Land the buffer as one file: dead letters acknowledged, file committed, then the offset."""
        assert buf.range_start is not None and buf.msgs
        end: int = buf.msgs[-1].offset()  # type: ignore[assignment]
        file = LandedFile(buf.topic, buf.partition, buf.range_start, end)
        batch = build_batch(buf.topic, buf.partition, buf.msgs, self.schemas)
        self.dead_letters.send(batch.rejected)
        note = {
            "topic": file.topic,
            "partition": file.partition,
            "start_offset": file.start,
            "end_offset": file.end,
            "rows": batch.table.num_rows,
            "dead_lettered_offsets": [r.offset for r in batch.rejected],
        }
        table = batch.table.replace_schema_metadata(
            {**(batch.table.schema.metadata or {}), FILE_METADATA_KEY: json.dumps(note).encode()}
        )
        self.store.commit(file, table)
        self.stats.records += batch.table.num_rows
        self.stats.dead_letters += len(batch.rejected)
        self.stats.files += 1
        metrics = self.metrics
        metrics.records_out.labels(buf.topic).inc(batch.table.num_rows)
        for rejected in batch.rejected:
            metrics.dead_letters.labels(buf.topic, reason_class(rejected.reason)).inc()
        metrics.transactions.labels(COMMITTED).inc()
        metrics.last_commit.set_to_current_time()
        log.debug(
            "landed %s (%d rows, %d dead letters)", file.name, batch.table.num_rows, len(batch.rejected)
        )
        buf.reset(end + 1)
        self._to_compact.add((buf.topic, buf.partition))
        self._commit_offset(file, sync_commit)

    def _commit_offset(self, file: LandedFile, sync: bool) -> None:
        """The group's committed offset, for lag only: recovery never reads it."""
        if self._consumer is None:
            return
        try:
            offsets = [TopicPartition(file.topic, file.partition, file.end + 1)]
            if sync:
                self._consumer.commit(offsets=offsets, asynchronous=False)
            else:
                self._consumer.commit(offsets=offsets, asynchronous=True)
        except KafkaException as exc:
            self.metrics.errors.labels(OFFSET_COMMIT_FAILED).inc()
            log.warning("could not commit the offset after %s (lag only): %s", file.name, exc)

    def _caught_up(self) -> bool:
        return bool(self._buffers) and all(key in self._eof for key in self._buffers)

    def _on_stats(self, stats_json: str) -> None:
        """librdkafka's statistics (every ``LAG_REFRESH_MS``, from ``consume``): lag and buffer gauges."""
        try:
            stats = json.loads(stats_json)
        except ValueError:
            log.debug("unreadable librdkafka statistics; lag not refreshed")
            return
        buffers = self._buffers
        lags = partition_lags(stats, {key: buf.next_offset for key, buf in buffers.items()})
        labels = {(topic, str(partition)): lag for (topic, partition), lag in lags.items()}
        for partition_label in self._lag_labels - labels.keys():
            self.metrics.lag.remove(*partition_label)
        for label, lag in labels.items():
            self.metrics.lag.labels(*label).set(lag)
        self._lag_labels = set(labels)
        buffered: dict[str, int] = {}
        for buf in buffers.values():
            buffered[buf.topic] = buffered.get(buf.topic, 0) + len(buf.msgs)
        for topic in self._buffered_topics - buffered.keys():
            self.metrics.buffered.remove(topic)
        for topic, count in buffered.items():
            self.metrics.buffered.labels(topic).set(count)
        self._buffered_topics = set(buffered)

    # -- rebalancing -----------------------------------------------------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self.store.remove_temporaries(tp.topic, tp.partition)
            files = self.store.list_files(tp.topic, tp.partition)
            # A merge a crash interrupted: the covered files go once their grace is over (now or later).
            if self.compactor.sweep(tp.topic, tp.partition, files):
                self._to_compact.add((tp.topic, tp.partition))
            resume = resume_offset(files)
            range_start = resume
            if resume is None:
                tp.offset = OFFSET_BEGINNING
            else:
                low, high = watermarks(consumer, tp.topic, [tp.partition], timeout_s=10)[tp.partition]
                if resume > high:
                    raise LandingAheadError(
                        f"{self.store.root} has {tp.topic}[{tp.partition}] landed up to offset {resume - 1}, "
                        f"but the topic ends at {high}: it was recreated. Run `omnistream replay --topic "
                        f"{tp.topic} --from-beginning` to land it again."
                    )
                if resume < low:
                    log.error(
                        "%s[%d]: offsets %d..%d were deleted by retention before they were landed",
                        tp.topic,
                        tp.partition,
                        resume,
                        low - 1,
                    )
                    range_start = None  # the next file starts where records exist; the gap stays visible
                tp.offset = resume
            self._buffers[(tp.topic, tp.partition)] = PartitionBuffer(
                tp.topic, tp.partition, range_start=range_start, next_offset=resume or 0
            )
            self.metrics.track_topics(tp.topic)
            self._eof.discard((tp.topic, tp.partition))
            log.info(
                "assigned %s[%d], resuming at %s",
                tp.topic,
                tp.partition,
                "the beginning" if resume is None else resume,
            )
        consumer.assign(partitions)
        if partitions:
            self.assigned.set()

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            key = (tp.topic, tp.partition)
            buf = self._buffers.get(key)
            if buf is not None and buf.msgs:
                self._flush(buf, sync_commit=True)
            self._buffers.pop(key, None)
            self._eof.discard(key)
        if partitions:
            log.info("revoked %d partition(s)", len(partitions))

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            buf = self._buffers.pop((tp.topic, tp.partition), None)
            self._eof.discard((tp.topic, tp.partition))
            if buf is not None and buf.msgs:
                self.metrics.transactions.labels(ABORTED).inc()
                log.warning(
                    "lost %s[%d]: dropping %d buffered record(s) for its next owner to land",
                    tp.topic,
                    tp.partition,
                    len(buf.msgs),
                )
