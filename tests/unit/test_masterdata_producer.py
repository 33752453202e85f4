"""The master-data producer's parts that need no server: schemas, record fitting, retry waits, durations."""

from __future__ import annotations

import io
import json
import logging
import socket
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from email.utils import format_datetime
from typing import Any

import fastavro
import pytest
from tenacity import RetryCallState, Retrying

from omnistream import topics
from omnistream.http_retry import parse_retry_after
from omnistream.kafka.serde import load_schema
from producers.masterdata.client import (
    ApiClient,
    ApiUnavailable,
    RetryPolicy,
    TransientApiError,
    wait_retry_after_or_backoff,
)
from producers.masterdata.entities import ENTITY_SPECS, select_entities, topic_names
from producers.masterdata.producer import new_snapshot_id
from producers.masterdata.records import SNAPSHOT_FIELDS, InvalidRecord, RecordConverter
from producers.masterdata.run import parse_duration
from producers.masterdata.state import TopicState
from simulators.api import load_openapi
from simulators.masterdata import ENTITIES, public_view, reference_tables
from simulators.reference import build_reference

SNAPSHOT_AT = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
OPENAPI_SCHEMA = {"customers": "Customer", "products": "Product", "stores": "Store"}


@pytest.fixture(scope="module")
def api_items() -> dict[str, list[dict[str, Any]]]:
    """The reference data exactly as the API serves it (JSON types)."""
    tables = reference_tables(build_reference(42))
    items: dict[str, list[dict[str, Any]]] = {}
    for name, rows in tables.items():
        items[name] = [json.loads(json.dumps(public_view(ENTITIES[name], r))) for r in rows.values()]
    return items


def converter(entity: str) -> RecordConverter:
    spec = ENTITY_SPECS[entity]
    return RecordConverter(load_schema(spec.schema), spec.key_field)


# --- schemas ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("entity", list(ENTITY_SPECS))
def test_each_schema_holds_the_api_fields_plus_the_snapshot_fields(entity: str) -> None:
    contract = json.loads(load_openapi())["components"]["schemas"][OPENAPI_SCHEMA[entity]]
    schema = json.loads(load_schema(ENTITY_SPECS[entity].schema))
    fields = {f["name"]: f["type"] for f in schema["fields"]}

    assert list(fields) == [*contract["properties"], *SNAPSHOT_FIELDS]
    for name, prop in contract["properties"].items():
        if prop.get("format") == "date-time":
            assert fields[name] == {"type": "long", "logicalType": "timestamp-micros"}
        elif prop["type"] == "string" and "pattern" in prop and r"\." in prop["pattern"]:
            assert fields[name]["logicalType"] == "decimal"
    assert fields["snapshot_id"] == "string"
    assert fields["snapshot_at"] == {"type": "long", "logicalType": "timestamp-micros"}


def test_money_is_decimal_12_2() -> None:
    schema = json.loads(load_schema("product"))
    [price] = [f["type"] for f in schema["fields"] if f["name"] == "unit_price"]
    assert price == {"type": "bytes", "logicalType": "decimal", "precision": 12, "scale": 2}


# --- records ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("entity", list(ENTITY_SPECS))
def test_every_api_item_becomes_a_record_that_round_trips_through_avro_exactly(
    entity: str, api_items: dict[str, list[dict[str, Any]]]
) -> None:
    conv = converter(entity)
    schema = fastavro.parse_schema(json.loads(load_schema(ENTITY_SPECS[entity].schema)))
    for item in api_items[entity]:
        record = conv.convert(item, "snap-1", SNAPSHOT_AT)
        buffer = io.BytesIO()
        fastavro.schemaless_writer(buffer, schema, record)
        buffer.seek(0)
        decoded = fastavro.schemaless_reader(buffer, schema, schema)
        assert isinstance(decoded, dict)

        assert decoded == record
        assert conv.key(item) == str(item[ENTITY_SPECS[entity].key_field])
        for name, value in item.items():
            got = decoded[name]
            if isinstance(got, Decimal):
                assert got == Decimal(value)
            elif isinstance(got, datetime):
                assert got == datetime.fromisoformat(value) and got.tzinfo is not None
            else:
                assert got == value


def test_prices_and_rates_stay_exact() -> None:
    product = converter("products").convert(_product(unit_price="27.17"), "s", SNAPSHOT_AT)
    store = converter("stores").convert(_store(tax_rate="0.055"), "s", SNAPSHOT_AT)
    assert product["unit_price"] == Decimal("27.17") and str(product["unit_price"]) == "27.17"
    assert store["tax_rate"] == Decimal("0.055") and str(store["tax_rate"]) == "0.0550"


def test_a_timestamp_in_another_zone_becomes_the_same_utc_instant() -> None:
    record = converter("products").convert(_product(updated_at="2024-05-01T14:30:00+02:00"), "s", SNAPSHOT_AT)
    assert record["updated_at"] == datetime(2024, 5, 1, 12, 30, tzinfo=UTC)
    assert record["updated_at"].utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"unit_price": "12.345"}, "more than 2 decimals"),
        ({"unit_price": 12.34}, "decimal string"),
        ({"unit_price": "12,34"}, "not a decimal"),
        ({"unit_price": "NaN"}, "not a finite decimal"),
        ({"unit_price": "12345678901.00"}, "more than 12 digits"),
        ({"updated_at": "2024-05-01T12:00:00"}, "no zone"),
        ({"updated_at": "yesterday"}, "not an RFC 3339"),
        ({"active": "true"}, "expected boolean"),
        ({"name": None}, "expected string"),
    ],
)
def test_values_that_do_not_fit_the_schema_are_invalid(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidRecord, match=message):
        converter("products").convert(_product(**changes), "s", SNAPSHOT_AT)


def test_a_missing_field_is_invalid_and_an_unknown_one_is_dropped_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    conv = converter("products")
    item = _product()
    del item["category"]
    with pytest.raises(InvalidRecord, match="missing category"):
        conv.convert(item, "s", SNAPSHOT_AT)

    with caplog.at_level(logging.WARNING):
        record = conv.convert(_product(colour="red"), "s", SNAPSHOT_AT)
    assert "colour" not in record
    assert "colour" in caplog.text


@pytest.mark.parametrize("value", [None, True, "", 1.5, ["1"]])
def test_an_unusable_id_gives_no_key(value: Any) -> None:
    assert converter("customers").key({"customer_id": value}) is None


def test_the_fingerprint_covers_content_but_not_the_snapshot() -> None:
    conv = converter("products")
    first = conv.convert(_product(), "snap-1", SNAPSHOT_AT)
    again = conv.convert(_product(), "snap-2", SNAPSHOT_AT + timedelta(hours=1))
    repriced = conv.convert(_product(unit_price="27.18"), "snap-2", SNAPSHOT_AT)
    assert conv.fingerprint(first) == conv.fingerprint(again)
    assert conv.fingerprint(first) != conv.fingerprint(repriced)
    # What Avro decodes (scale-many decimals) fingerprints like what the API sent.
    assert conv.fingerprint({**first, "unit_price": Decimal("27.170")}) == conv.fingerprint(first)


def test_tombstones_are_the_live_keys_a_complete_walk_did_not_see() -> None:
    state = TopicState("t", {"1": b"a", "2": b"b", "3": b"c"})
    assert state.missing_from({"1", "3", "4"}) == ["2"]
    assert state.missing_from({"1", "2", "3"}) == []


# --- retries ------------------------------------------------------------------------------------------


def test_retry_after_is_read_as_seconds_or_an_http_date() -> None:
    now = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(format_datetime(now + timedelta(seconds=30), usegmt=True), now) == 30.0
    assert parse_retry_after(format_datetime(now - timedelta(seconds=30), usegmt=True), now) == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


def _state_after(exc: BaseException, attempt: int = 1) -> RetryCallState:
    state = RetryCallState(Retrying(), None, (), {})
    state.attempt_number = attempt
    state.set_exception((type(exc), exc, None))
    return state


def test_the_wait_honours_retry_after_and_otherwise_backs_off() -> None:
    policy = RetryPolicy(initial_s=0.5, max_backoff_s=4.0, max_retry_after_s=60.0)
    wait = wait_retry_after_or_backoff(policy)

    assert wait(_state_after(TransientApiError(429, "slow down", 7.0))) == 7.0
    assert wait(_state_after(TransientApiError(503, "busy", 3600.0))) == 60.0
    first = wait(_state_after(TransientApiError(500, "oops", None), attempt=1))
    later = wait(_state_after(TransientApiError(500, "oops", None), attempt=6))
    assert 0.5 <= first <= 1.0  # the initial wait plus up to as much jitter
    assert later == 4.0  # 0.5 * 2**5 and more, capped


def test_connection_errors_are_retried_then_reported_with_what_to_check() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # Nothing listens on the port any more: every connection is refused.
    policy = RetryPolicy(max_attempts=3, initial_s=0.0, max_backoff_s=0.0, timeout_s=2.0)
    with ApiClient(f"http://127.0.0.1:{port}", "token", policy) as client:
        with pytest.raises(ApiUnavailable, match=r"after 3 attempts.*OMNISTREAM_API__HOST"):
            list(client.walk("customers"))
        assert client.stats.requests == 3
        assert client.stats.retries == {"ConnectError": 2}


def test_a_retry_policy_needs_at_least_one_attempt() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        RetryPolicy(max_attempts=0)


# --- entities, topics, durations, ids -----------------------------------------------------------------


def test_entities_are_chosen_by_name_and_topics_can_be_prefixed() -> None:
    assert [s.name for s in select_entities(["stores", " customers", "stores"])] == ["stores", "customers"]
    with pytest.raises(ValueError, match="warehouses"):
        select_entities(["customers", "warehouses"])
    assert topic_names() == {
        "customers": topics.CUSTOMERS,
        "products": topics.PRODUCTS,
        "stores": topics.STORES,
    }
    assert topic_names("test.1.")["stores"] == f"test.1.{topics.STORES}"
    assert topic_names(overrides={"stores": "s"})["stores"] == "s"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("5m", 300), ("1h30m", 5400), ("250ms", 0.25), ("90", 90), ("1.5h", 5400), ("2d", 172800)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5 minutes", "m5", "0s", "-5", "5x", "1h-5m"])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_snapshot_ids_sort_by_time_and_are_unique() -> None:
    first, second = new_snapshot_id(SNAPSHOT_AT), new_snapshot_id(SNAPSHOT_AT)
    later = new_snapshot_id(SNAPSHOT_AT + timedelta(seconds=1))
    assert first.startswith("20240501T120000Z-") and first != second
    assert sorted([later, first]) == [first, later]


def _product(**changes: Any) -> dict[str, Any]:
    item = {
        "sku": "SKU-00001",
        "name": "Continuo apparel 1",
        "category": "apparel",
        "unit_price": "27.17",
        "active": True,
        "created_at": "2016-01-17T00:00:00.000000+00:00",
        "updated_at": "2016-01-17T00:00:00.000000+00:00",
    }
    return {**item, **changes}


def _store(**changes: Any) -> dict[str, Any]:
    item = {
        "store_id": "S001",
        "name": "omnistream Berlin",
        "city": "Berlin",
        "country": "DE",
        "locale": "de_DE",
        "timezone": "Europe/Berlin",
        "tax_rate": "0.19",
        "opened_at": "2016-02-02T00:00:00.000000+00:00",
        "active": True,
        "updated_at": "2016-02-02T00:00:00.000000+00:00",
    }
    return {**item, **changes}
