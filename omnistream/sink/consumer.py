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
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import pyarrow as pa
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)

from omnistream.kafka import client_config, registry_client
from omnistream.settings import Settings
from omnistream.sink.avro import HEADER_SIZE, MAGIC, SchemaCache, UndecodableRecord
from omnistream.sink.batch import build_batch
from omnistream.sink.dlq import DeadLetterSender
from omnistream.sink.layout import LandedFile, resume_offset
from omnistream.sink.store import LandingStore

log = logging.getLogger(__name__)

POLL_TIMEOUT_S = 0.5
MAX_BATCH = 10_000
FILE_METADATA_KEY = b"omnistream.landing"


class LandingAheadError(RuntimeError):
    """The landing zone holds offsets the topic does not have: it was recreated or truncated."""


@dataclass(frozen=True)
class SinkConfig:
    """What to land and how often to flush."""

    group_id: str
    topics: Sequence[str] = ()
    # A regex subscription (librdkafka's syntax, starting with "^"); used instead of `topics` when set.
    pattern: str | None = None
    flush_records: int = 10_000
    flush_seconds: float = 5.0
    # Exit once every assigned partition has been landed up to its end (for backfills, tests, benches).
    drain: bool = False
    # Static group membership: a sink restarted under the same id (after a crash) takes its partitions
    # back at once instead of waiting out the dead member's session; one distinct id per running sink.
    instance_id: str | None = None

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


class LandingSink:
    """A member of the landing consumer group."""

    def __init__(
        self,
        settings: Settings,
        store: LandingStore,
        config: SinkConfig,
        *,
        cache: SchemaCache | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.config = config
        self.cache = cache or SchemaCache(registry_client(settings))
        self.dead_letters = DeadLetterSender(settings)
        self.stats = SinkStats()
        self._stop = threading.Event()
        # Set once the group has given this sink partitions and recovery has positioned them.
        self.assigned = threading.Event()
        self._buffers: dict[tuple[str, int], PartitionBuffer] = {}
        self._eof: set[tuple[str, int]] = set()
        self._warned_topics: set[str] = set()
        self._consumer: Consumer | None = None

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
                self._handle(consumer.consume(num_messages=MAX_BATCH, timeout=POLL_TIMEOUT_S))
                self._flush_due()
                if self.config.drain and self._caught_up():
                    break
            self._flush_all()
            clean = True
        finally:
            if not clean:
                # After a failure nothing more is written: whatever was buffered is read again on restart.
                self._buffers.clear()
            try:
                consumer.close()
            finally:
                self._consumer = None
                self.dead_letters.close()
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
            if len(buf.msgs) >= limit:
                self._flush(buf)

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
            schema = self.cache.get(int.from_bytes(schema_key, "big")).arrow_schema
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
        batch = build_batch(buf.topic, buf.partition, buf.msgs, self.cache)
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
        log.debug(
            "landed %s (%d rows, %d dead letters)", file.name, batch.table.num_rows, len(batch.rejected)
        )
        buf.reset(end + 1)
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
            log.warning("could not commit the offset after %s (lag only): %s", file.name, exc)

    def _caught_up(self) -> bool:
        return bool(self._buffers) and all(key in self._eof for key in self._buffers)

    # -- rebalancing -----------------------------------------------------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self.store.remove_temporaries(tp.topic, tp.partition)
            resume = resume_offset(self.store.list_files(tp.topic, tp.partition))
            range_start = resume
            if resume is None:
                tp.offset = OFFSET_BEGINNING
            else:
                low, high = consumer.get_watermark_offsets(tp, timeout=10, cached=False)
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
                log.warning(
                    "lost %s[%d]: dropping %d buffered record(s) for its next owner to land",
                    tp.topic,
                    tp.partition,
                    len(buf.msgs),
                )
