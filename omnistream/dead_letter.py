"""Dead letters (schemas/dead_letter.avsc): an input that could not be delivered, the bytes as given, and why.

Nothing here is about email: any producer or sink can reject a record this way, into ``dlq(topic)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any


def error_class(exc: BaseException) -> str:
    """The error's fully qualified type name, e.g. ``producers.emails.parser.ParseError``."""
    kind = type(exc)
    return f"{kind.__module__}.{kind.__qualname__}"


@dataclass(frozen=True)
class DeadLetter:
    topic: str  # meant for (producers) or read from (sinks)
    reason: str
    error_class: str
    source: str
    payload: bytes | None
    key: bytes | None = None
    source_id: str | None = None
    attributes: Mapping[str, str] = field(default_factory=dict)
    failed_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @classmethod
    def from_error(
        cls,
        exc: BaseException,
        *,
        topic: str,
        source: str,
        payload: bytes | None,
        reason: str | None = None,
        key: bytes | None = None,
        source_id: str | None = None,
        attributes: Mapping[str, str] | None = None,
    ) -> DeadLetter:
        """A dead letter for ``exc``; ``reason`` defaults to the error's message."""
        return cls(
            topic=topic,
            reason=reason or str(exc) or error_class(exc),
            error_class=error_class(exc),
            source=source,
            payload=payload,
            key=key,
            source_id=source_id,
            attributes=dict(attributes or {}),
        )

    def to_avro(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "key": self.key,
            "reason": self.reason,
            "error_class": self.error_class,
            "payload": self.payload,
            "source": self.source,
            "source_id": self.source_id,
            "attributes": dict(self.attributes),
            "failed_at": self.failed_at,
        }


def dead_letter_to_dict(letter: DeadLetter, _ctx: object) -> dict[str, Any]:
    """``to_dict`` for confluent-kafka's ``AvroSerializer``."""
    return letter.to_avro()
