"""API items → Avro-ready records, driven by the entity's ``schemas/*.avsc`` (the one list of fields).

The API sends money and rates as decimal strings and timestamps as RFC 3339 with a zone; the records carry
``Decimal`` quantized to the schema's scale and UTC ``datetime`` (Avro decimal bytes / timestamp-micros).
Anything that does not fit the schema exactly is an ``InvalidRecord``, never a silent rounding.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from omnistream.errors import OmnistreamError

log = logging.getLogger(__name__)

SNAPSHOT_FIELDS = ("snapshot_id", "snapshot_at")
_SIMPLE_KINDS = {"string": str, "long": int, "int": int, "boolean": bool}


class InvalidRecord(OmnistreamError, ValueError):
    """An API item that does not fit the entity's schema."""


@dataclass(frozen=True)
class FieldSpec:
    """One schema field: name and kind (string, long, int, boolean, decimal, timestamp)."""

    name: str
    kind: str
    precision: int = 0
    scale: int = 0


def field_specs(schema: dict[str, Any]) -> tuple[FieldSpec, ...]:
    """The fields of a record schema, as the converter needs them; ValueError for a type it cannot fill."""
    specs = []
    for f in schema["fields"]:
        avro_type = f["type"]
        if isinstance(avro_type, str) and avro_type in _SIMPLE_KINDS:
            specs.append(FieldSpec(f["name"], avro_type))
        elif isinstance(avro_type, dict) and avro_type.get("logicalType") == "decimal":
            specs.append(FieldSpec(f["name"], "decimal", avro_type["precision"], avro_type.get("scale", 0)))
        elif isinstance(avro_type, dict) and avro_type.get("logicalType") == "timestamp-micros":
            specs.append(FieldSpec(f["name"], "timestamp"))
        else:
            raise ValueError(f"{schema['name']}.{f['name']}: no conversion for Avro type {avro_type!r}")
    return tuple(specs)


def _decimal(spec: FieldSpec, value: Any) -> Decimal:
    # A JSON number would already have been through a float; money must arrive as a string.
    if not isinstance(value, str):
        raise InvalidRecord(f"{spec.name}: expected a decimal string, got {value!r}")
    try:
        number = Decimal(value)
    except InvalidOperation as exc:
        raise InvalidRecord(f"{spec.name}: {value!r} is not a decimal") from exc
    if not number.is_finite():
        raise InvalidRecord(f"{spec.name}: {value!r} is not a finite decimal")
    exponent = number.as_tuple().exponent
    if isinstance(exponent, int) and -exponent > spec.scale:
        raise InvalidRecord(f"{spec.name}: {value!r} has more than {spec.scale} decimals")
    scaled = number.quantize(Decimal(1).scaleb(-spec.scale))
    if len(scaled.as_tuple().digits) > spec.precision:
        raise InvalidRecord(f"{spec.name}: {value!r} has more than {spec.precision} digits")
    return scaled


def _timestamp(spec: FieldSpec, value: Any) -> datetime:
    if not isinstance(value, str):
        raise InvalidRecord(f"{spec.name}: expected an RFC 3339 string, got {value!r}")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise InvalidRecord(f"{spec.name}: {value!r} is not an RFC 3339 date-time") from exc
    if parsed.tzinfo is None:
        raise InvalidRecord(f"{spec.name}: {value!r} has no zone, so it is no instant")
    return parsed.astimezone(UTC)


def convert_value(spec: FieldSpec, value: Any) -> Any:
    """One API value as the record holds it; InvalidRecord if it does not fit ``spec``."""
    if spec.kind == "decimal":
        return _decimal(spec, value)
    if spec.kind == "timestamp":
        return _timestamp(spec, value)
    expected = _SIMPLE_KINDS[spec.kind]
    # bool is an int in Python; an id of `true` is as wrong as a flag of `1`.
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise InvalidRecord(f"{spec.name}: expected {spec.kind}, got {value!r}")
    return value


class RecordConverter:
    """Turns one entity's API items into records for its schema, and fingerprints their content."""

    def __init__(self, schema_text: str, key_field: str) -> None:
        schema = json.loads(schema_text)
        self.name: str = schema["name"]
        specs = field_specs(schema)
        self.fields = tuple(s for s in specs if s.name not in SNAPSHOT_FIELDS)
        names = {s.name for s in specs}
        if not set(SNAPSHOT_FIELDS) <= names or key_field not in names:
            raise ValueError(f"schema {self.name} lacks {key_field} or the snapshot fields")
        self.key_field = key_field
        self._specs = {s.name: s for s in specs}
        self._known = names
        self._warned: set[str] = set()

    def key(self, item: dict[str, Any]) -> str | None:
        """The record key (the id as a string), or None if the item has no usable id."""
        value = item.get(self.key_field)
        if value is None or isinstance(value, bool) or not isinstance(value, int | str) or value == "":
            return None
        return str(value)

    def convert(self, item: dict[str, Any], snapshot_id: str, snapshot_at: datetime) -> dict[str, Any]:
        """The record for ``item`` in this snapshot; InvalidRecord if a field is missing or does not fit."""
        missing = [s.name for s in self.fields if s.name not in item]
        if missing:
            raise InvalidRecord(f"missing {', '.join(missing)}")
        extra = set(item) - self._known - self._warned
        if extra:
            # A field the schema does not know yet is dropped, not fatal; say so once, so it gets added.
            log.warning("%s: the API sends fields the schema lacks: %s", self.name, ", ".join(sorted(extra)))
            self._warned |= extra
        record = {s.name: convert_value(s, item[s.name]) for s in self.fields}
        record["snapshot_id"] = snapshot_id
        record["snapshot_at"] = snapshot_at
        return record

    def fingerprint(self, record: dict[str, Any]) -> bytes:
        """A digest of the entity's content (snapshot fields left out): equal content, equal digest."""
        parts = []
        for spec in self.fields:
            value = record.get(spec.name)
            if isinstance(value, Decimal):
                value = str(value.quantize(Decimal(1).scaleb(-spec.scale)))
            elif isinstance(value, datetime):
                value = value.astimezone(UTC).isoformat(timespec="microseconds")
            parts.append(value)
        return hashlib.blake2b(repr(parts).encode(), digest_size=16).digest()
