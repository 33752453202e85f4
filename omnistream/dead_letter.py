"""Dead letters (schemas/dead_letter.avsc): an input that could not be delivered, the bytes as given, and why.

Nothing here is about email: any producer or sink can reject a record this way, into ``dlq(topic)``.

A dead letter must itself fit in a Kafka record, whatever it is about: its reason is cut to
``REASON_LIMIT`` characters (a parser's reason may quote the offending line, and a line can be megabytes);
callers cap the payload to what the dead-letter topic takes (``capped``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

# Enough for any reason a person reads; a longer one is cut, saying how much was left out.
REASON_LIMIT = 4000


def capped(payload: bytes, limit: int) -> tuple[bytes, bool]:
    """``payload`` cut to at most ``limit`` bytes, and whether it was cut."""
    if len(payload) <= limit:
        return payload, False
    return payload[: max(0, limit)], True


def _capped_reason(reason: str) -> str:
    if len(reason) <= REASON_LIMIT:
        return reason
    cut = len(reason) - REASON_LIMIT
    return f"{reason[:REASON_LIMIT]}… ({cut:,} more characters cut)"


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
        """A dead letter for ``exc``; ``reason`` defaults to the error's message (cut to ``REASON_LIMIT``)."""
        return cls(
            topic=topic,
            reason=_capped_reason(reason or str(exc) or error_class(exc)),
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
