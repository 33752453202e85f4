"""The master-data entities: API collection, id field, Avro schema and topic of each."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from omnistream import topics


@dataclass(frozen=True)
class EntitySpec:
    """One collection of the API and where its snapshot goes."""

    name: str  # collection in /api/v1/<name>
    key_field: str
    schema: str  # schemas/<schema>.avsc
    topic: str


ENTITY_SPECS: dict[str, EntitySpec] = {
    spec.name: spec
    for spec in (
        EntitySpec("customers", "customer_id", "customer", topics.CUSTOMERS),
        EntitySpec("products", "sku", "product", topics.PRODUCTS),
        EntitySpec("stores", "store_id", "store", topics.STORES),
    )
}


def select_entities(names: Iterable[str]) -> list[EntitySpec]:
    """The specs for ``names`` in the order given; ValueError naming any unknown one."""
    chosen = [n.strip() for n in names if n.strip()]
    unknown = [n for n in chosen if n not in ENTITY_SPECS]
    if unknown or not chosen:
        raise ValueError(f"unknown entities {unknown or chosen}; choose from {', '.join(ENTITY_SPECS)}")
    return [ENTITY_SPECS[n] for n in dict.fromkeys(chosen)]


def topic_names(prefix: str = "", overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    """Topic per entity: the pipeline's names, each with ``prefix`` in front, unless overridden by entity."""
    names = {name: prefix + spec.topic for name, spec in ENTITY_SPECS.items()}
    names.update(overrides or {})
    return names
