"""The email producer's cursor: the last UID handled per mailbox folder, kept in a compacted Kafka topic.

Each batch's checkpoint record is produced in the batch's Kafka transaction, so it becomes visible to a
``read_committed`` reader exactly when the batch's records do, and never without them. On start the producer
first fences any earlier instance (``init_transactions`` aborts its open transaction), then reads the topic
to its end with ``isolation.level=read_committed``: what it finds is the cursor of the last committed batch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer

from omnistream.errors import Unreachable
from omnistream.kafka.clients import reader_config
from omnistream.kafka.offsets import ReadTimedOut, read_to_end, topic_partitions
from omnistream.settings import Settings

log = logging.getLogger(__name__)


class CheckpointUnavailable(Unreachable):
    """The checkpoint topic could not be read to its end."""


@dataclass(frozen=True)
class Checkpoint:
    """Every email of ``mailbox`` with a UID up to ``last_uid`` (under ``uidvalidity``) is in Kafka."""

    mailbox: str
    uidvalidity: int
    last_uid: int
    sequence: int
    transactional_id: str
    written_at: datetime

    def to_avro(self) -> dict[str, Any]:
        return {
            "mailbox": self.mailbox,
            "uidvalidity": self.uidvalidity,
            "last_uid": self.last_uid,
            "sequence": self.sequence,
            "transactional_id": self.transactional_id,
            "written_at": self.written_at.astimezone(UTC),
        }

    @classmethod
    def from_avro(cls, record: dict[str, Any]) -> Checkpoint:
        return cls(
            mailbox=record["mailbox"],
            uidvalidity=record["uidvalidity"],
            last_uid=record["last_uid"],
            sequence=record["sequence"],
            transactional_id=record["transactional_id"],
            written_at=record["written_at"],
        )


def checkpoint_to_dict(checkpoint: Checkpoint, _ctx: object) -> dict[str, Any]:
    """``to_dict`` for confluent-kafka's ``AvroSerializer``."""
    return checkpoint.to_avro()


def read_checkpoint(
    settings: Settings,
    topic: str,
    mailbox: str,
    decode: Callable[[bytes], dict[str, Any]],
    timeout_s: float = 120.0,
) -> Checkpoint | None:
    """The last committed checkpoint of ``mailbox`` in ``topic`` (None: none, or reset by a tombstone).

    Reads every partition from the beginning to its last stable offset: a key always lands in the same
    partition, where the last record is the latest; should a topic have been repartitioned, the highest
    ``sequence`` wins. ``CheckpointUnavailable`` if the end is not reached within ``timeout_s`` (another
    producer's transaction left open on the topic holds the end back until it times out).
    """
    consumer = Consumer(
        reader_config(
            settings,
            "checkpoint-reader",
            **{
                "isolation.level": "read_committed",
                # The end of a small topic is all it waits for; no need to hold each empty fetch 500 ms.
                "fetch.wait.max.ms": 50,
            },
        )
    )
    key = mailbox.encode()
    latest: dict[int, Checkpoint | None] = {}
    try:
        partitions = topic_partitions(consumer, topic)
        # No end offsets: under read_committed the end is the last stable offset, which the EOF event marks.
        records = read_to_end(
            consumer, topic, dict.fromkeys(partitions, OFFSET_BEGINNING), timeout_s=timeout_s
        )
        for msg in records:
            if msg.key() != key:
                continue
            value = msg.value()
            partition: int = msg.partition()  # type: ignore[assignment]  # set on every consumed record
            latest[partition] = None if value is None else Checkpoint.from_avro(decode(value))
    except ReadTimedOut as exc:
        raise CheckpointUnavailable(
            f"checkpoint topic {topic} not read to its end within {timeout_s:.0f} s (partitions "
            f"{exc.partitions}): an open transaction of another producer holds back its last stable "
            "offset; it ends when that producer commits or its transaction.timeout.ms passes"
        ) from exc
    finally:
        consumer.close()
    found = [c for c in latest.values() if c is not None]
    return max(found, key=lambda c: c.sequence) if found else None
