"""The master-data API over real HTTP: paging, incremental filters, auth, problems, faults, drift, contract.

Each test serves the Flask app with werkzeug's threaded server on a free loopback port and talks to it
with httpx (and schemathesis for the contract). Drift is applied between requests through the app's store,
so "drift during a walk" is deterministic.
"""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from werkzeug.serving import make_server

from simulators.api import (
    Cursor,
    FaultConfig,
    FaultInjector,
    api_state,
    create_app,
    load_openapi,
    parse_timestamp,
    stop_app,
)
from simulators.masterdata import ENTITIES, DriftConfig, MasterData, format_timestamp
from simulators.reference import build_reference

pytestmark = pytest.mark.integration

SEED = 42
TOKEN = "test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PROBLEM = "application/problem+json"
BIG_DRIFT = DriftConfig(seed=SEED, moves=40, price_changes=20, new_products=3, deactivations=10, deletions=15)


@dataclass
class Served:
    app: Flask
    url: str
    client: httpx.Client

    @property
    def store(self) -> MasterData:
        return api_state(self.app).store


@contextmanager
def serving(app: Flask) -> Iterator[Served]:
    """Serve ``app`` on a free loopback port in a background thread for the duration of the block."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="api-under-test", daemon=True
    )
    thread.start()
    url = f"http://127.0.0.1:{server.server_port}"
    try:
        with httpx.Client(base_url=url, headers=AUTH) as client:
            yield Served(app, url, client)
    finally:
        server.shutdown()
        thread.join()
        server.server_close()
        stop_app(app)


@pytest.fixture
def api(data_dir: Path) -> Iterator[Served]:
    """A server of its own, for tests that drift the data."""
    with serving(create_app(data_dir, TOKEN)) as served:
        yield served


@pytest.fixture(scope="module")
def shared(reference_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One server for the tests that only read; nothing drifts it."""
    data = tmp_path_factory.mktemp("masterdata-shared") / "data"
    shutil.copytree(reference_dir, data)
    with serving(create_app(data, TOKEN)) as served:
        yield served


def walk(
    client: httpx.Client, entity: str, between: Callable[[], object] | None = None, **params: Any
) -> tuple[list[dict[str, Any]], str]:
    """Follow ``next`` links to the end; return every item and the walk's ``as_of``."""
    response = client.get(f"/api/v1/{entity}", params=params)
    items: list[dict[str, Any]] = []
    as_of = response.json()["as_of"]
    while True:
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["count"] == len(body["items"])
        assert body["as_of"] == as_of
        items.extend(body["items"])
        if body["next"] is None:
            assert body["next_cursor"] is None
            return items, as_of
        if between is not None:
            between()
        response = client.get(body["next"])


def ids(entity: str, items: list[dict[str, Any]]) -> list[Any]:
    return [item[ENTITIES[entity].key] for item in items]


def assert_problem(response: httpx.Response, status: int, kind: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body: dict[str, Any] = response.json()
    assert {"type", "title", "status", "detail"} <= set(body)
    assert body["status"] == status
    assert body["type"] == f"urn:omnistream:problem:{kind}"
    assert body["title"] and body["detail"]
    return body


# --- paging -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("entity", "page_size"), [("customers", 250), ("products", 64), ("stores", 5)])
def test_a_walk_returns_every_entity_exactly_once(shared: Served, entity: str, page_size: int) -> None:
    ref = build_reference(SEED)
    expected = {
        "customers": [c.customer_id for c in ref.customers],
        "products": [p.sku for p in ref.products],
        "stores": [s.store_id for s in ref.stores],
    }[entity]

    items, _ = walk(shared.client, entity, page_size=page_size)

    assert ids(entity, items) == expected


def test_the_default_page_size_is_100(shared: Served) -> None:
    body = shared.client.get("/api/v1/customers").json()
    assert body["count"] == 100
    assert body["next"].startswith("/api/v1/customers?page_size=100&cursor=")


@pytest.mark.parametrize(("entity", "page_size"), [("customers", 150), ("products", 25)])
def test_a_walk_stays_complete_while_the_data_drifts(api: Served, entity: str, page_size: int) -> None:
    before = set(api.store.live_keys(entity))
    steps = []

    items, _ = walk(
        api.client, entity, between=lambda: steps.append(api.store.drift_once(BIG_DRIFT)), page_size=page_size
    )

    after = set(api.store.live_keys(entity))
    seen = ids(entity, items)
    assert len(steps) >= 5
    assert len(seen) == len(set(seen)), "an entity was served twice"
    assert before & after <= set(seen), "an entity alive throughout the walk was missed"
    assert set(seen) <= before | after
    if entity == "customers":
        assert before - after, "the walk should have raced with deletions"
    else:
        assert after - before <= set(seen), "products added during the walk have higher ids and are seen"


def test_as_of_lets_the_next_walk_catch_every_change_made_during_a_walk(api: Served) -> None:
    items, as_of = walk(
        api.client, "customers", between=lambda: api.store.drift_once(BIG_DRIFT), page_size=300
    )
    api.store.drift_once(BIG_DRIFT)  # and more after the walk
    latest = {item["customer_id"]: item for item in items}

    changed, _ = walk(api.client, "customers", updated_since=as_of, page_size=300)
    latest.update({item["customer_id"]: item for item in changed})

    current, _ = walk(api.client, "customers", page_size=1000)
    assert changed
    assert all(latest[item["customer_id"]] == item for item in current)


# --- updated_since ------------------------------------------------------------------------------------


def test_updated_since_returns_exactly_the_entities_updated_at_or_after_it(api: Served) -> None:
    instant = datetime.now(UTC) + timedelta(days=1)
    report = api.store.drift_once(BIG_DRIFT, now=instant)

    customers, _ = walk(api.client, "customers", updated_since=format_timestamp(instant))
    products, _ = walk(api.client, "products", updated_since=instant.isoformat().replace("+00:00", "Z"))
    just_after, _ = walk(
        api.client, "customers", updated_since=format_timestamp(instant + timedelta(microseconds=1))
    )

    assert set(ids("customers", customers)) == {*report.moved, *report.deactivated} - set(report.deleted)
    assert set(ids("products", products)) == {*report.repriced, *report.added}
    assert just_after == []


@pytest.mark.parametrize(
    "zone", [UTC, timezone(timedelta(hours=2)), timezone(timedelta(hours=-7, minutes=-30))]
)
def test_updated_since_matches_the_data_in_any_zone(shared: Served, zone: timezone) -> None:
    stamps = sorted(r["updated_at"] for r in shared.store.records("customers"))
    instant = stamps[len(stamps) // 2]
    expected = [r["customer_id"] for r in shared.store.records("customers") if r["updated_at"] >= instant]

    items, _ = walk(
        shared.client, "customers", updated_since=instant.astimezone(zone).isoformat(), page_size=500
    )

    assert ids("customers", items) == expected
    assert all(datetime.fromisoformat(i["updated_at"]) >= instant for i in items)


def test_the_cursor_carries_the_filter_and_a_different_one_is_rejected(shared: Served) -> None:
    since = "2020-01-01T00:00:00Z"
    first = shared.client.get("/api/v1/customers", params={"updated_since": since, "page_size": 10}).json()
    cursor = first["next_cursor"]

    same = shared.client.get(
        "/api/v1/customers", params={"cursor": cursor, "updated_since": "2020-01-01T01:00:00+01:00"}
    )
    other = shared.client.get(
        "/api/v1/customers", params={"cursor": cursor, "updated_since": "2021-01-01T00:00:00Z"}
    )

    assert same.status_code == 200
    assert all(
        datetime.fromisoformat(i["updated_at"]) >= parse_timestamp(since) for i in same.json()["items"]
    )
    assert assert_problem(other, 400, "invalid-parameter")["parameter"] == "updated_since"


# --- lookups and deletion -----------------------------------------------------------------------------


def test_lookup_by_id_returns_the_listed_entity(shared: Served) -> None:
    for entity, key in (("customers", 1), ("products", "SKU-00001"), ("stores", "S001")):
        listed = shared.client.get(f"/api/v1/{entity}", params={"page_size": 1}).json()["items"][0]
        response = shared.client.get(f"/api/v1/{entity}/{key}")
        assert response.status_code == 200
        assert response.json() == listed


def test_prices_are_exact_decimal_strings(shared: Served) -> None:
    product = shared.client.get("/api/v1/products/SKU-00001").json()
    store = shared.client.get("/api/v1/stores/S001").json()
    assert product["unit_price"] == str(build_reference(SEED).products[0].unit_price) == "27.17"
    assert store["tax_rate"] == "0.19"


def test_deleted_customers_are_404_and_deactivated_ones_stay(api: Served) -> None:
    report = api.store.drift_once(DriftConfig(seed=SEED, deactivations=3, deletions=3))
    listed = set(ids("customers", walk(api.client, "customers", page_size=1000)[0]))

    for cid in report.deleted:
        assert_problem(api.client.get(f"/api/v1/customers/{cid}"), 404, "not-found")
        assert cid not in listed
    for cid in report.deactivated:
        response = api.client.get(f"/api/v1/customers/{cid}")
        assert response.status_code == 200 and response.json()["active"] is False
        assert cid in listed


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/customers/999999",
        "/api/v1/customers/abc",
        "/api/v1/customers/-1",
        "/api/v1/products/SKU-99999",
        "/api/v1/stores/S999",
        "/api/v1/stores/S001/extra",
        "/api/v1/warehouses",
    ],
)
def test_unknown_ids_and_paths_are_404_problems(shared: Served, path: str) -> None:
    assert_problem(shared.client.get(path), 404, "not-found")


def test_other_methods_are_405_problems(shared: Served) -> None:
    response = shared.client.post("/api/v1/customers", json={})
    assert_problem(response, 405, "method-not-allowed")
    assert "GET" in response.headers["allow"]


# --- auth ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": f"Basic {TOKEN}"}, {"Authorization": "Bearer wrong"}, {"Authorization": "Bearer"}],
)
@pytest.mark.parametrize("path", ["/api/v1/customers", "/api/v1/products/SKU-00001", "/api/v1/nothing"])
def test_requests_without_the_right_token_are_401_problems(
    shared: Served, headers: dict[str, str], path: str
) -> None:
    response = httpx.get(shared.url + path, headers=headers)
    assert_problem(response, 401, "unauthorized")
    assert response.headers["www-authenticate"].startswith("Bearer")


def test_the_contract_and_health_need_no_token(shared: Served) -> None:
    contract = httpx.get(f"{shared.url}/openapi.json")
    health = httpx.get(f"{shared.url}/health")
    assert contract.status_code == 200 and contract.json() == json.loads(load_openapi())
    assert health.status_code == 200 and health.json() == {"status": "ok"}


# --- bad parameters -----------------------------------------------------------------------------------


def _cursor_for(entity: str) -> str:
    return Cursor(entity, "SKU-00010" if entity == "products" else 10, datetime.now(UTC), None).encode()


@pytest.mark.parametrize(
    ("params", "parameter"),
    [
        ({"page_size": "0"}, "page_size"),
        ({"page_size": "1001"}, "page_size"),
        ({"page_size": "ten"}, "page_size"),
        ({"page_size": "-5"}, "page_size"),
        ({"updated_since": "yesterday"}, "updated_since"),
        ({"updated_since": "2024-01-01T00:00:00"}, "updated_since"),
        ({"updated_since": "2024-01-01"}, "updated_since"),
        ({"updated_since": "2024-02-30T00:00:00Z"}, "updated_since"),
        ({"updated_since": "2024-01-01T00:00:00 02:00"}, "updated_since"),
        ({"cursor": "garbage"}, "cursor"),
        ({"cursor": ""}, "cursor"),
        ({"cursor": _cursor_for("products")}, "cursor"),
        ({"updatedSince": "2024-01-01T00:00:00Z"}, "updatedSince"),
    ],
)
def test_bad_parameters_are_400_problems_naming_the_parameter(
    shared: Served, params: dict[str, str], parameter: str
) -> None:
    body = assert_problem(shared.client.get("/api/v1/customers", params=params), 400, "invalid-parameter")
    assert body["parameter"] == parameter


def test_a_cursor_issued_for_the_collection_is_accepted(shared: Served) -> None:
    response = shared.client.get(
        "/api/v1/customers", params={"cursor": _cursor_for("customers"), "page_size": 2}
    )
    assert ids("customers", response.json()["items"]) == [11, 12]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-05-01T12:00:00Z", datetime(2024, 5, 1, 12, tzinfo=UTC)),
        ("2024-05-01t14:00:00.5+02:00", datetime(2024, 5, 1, 12, 0, 0, 500_000, tzinfo=UTC)),
        ("2024-05-01T12:00:00.123456789-00:00", datetime(2024, 5, 1, 12, 0, 0, 123_456, tzinfo=UTC)),
        ("2016-12-31T23:59:60Z", datetime(2016, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC)),
        ("0001-01-01T00:00:00+01:00", datetime.min.replace(tzinfo=UTC)),
        ("9999-12-31T23:59:59-01:00", datetime.max.replace(tzinfo=UTC)),
    ],
)
def test_updated_since_accepts_rfc3339(text: str, expected: datetime) -> None:
    assert parse_timestamp(text) == expected


# --- fault mode ---------------------------------------------------------------------------------------


def test_fault_mode_answers_500s_and_429s_at_the_configured_rates(data_dir: Path) -> None:
    faults = FaultConfig(error_rate=0.1, throttle_rate=0.15, slow_rate=0.0, retry_after_s=3, seed=7)
    n = 400
    with serving(create_app(data_dir, TOKEN, faults=faults)) as served:
        responses = [served.client.get("/api/v1/stores", params={"page_size": 3}) for _ in range(n)]
        health = [httpx.get(f"{served.url}/health").status_code for _ in range(20)]

    errors = [r for r in responses if r.status_code == 500]
    throttled = [r for r in responses if r.status_code == 429]
    assert abs(len(errors) / n - 0.10) < 0.05
    assert abs(len(throttled) / n - 0.15) < 0.05
    assert len(errors) + len(throttled) + sum(r.status_code == 200 for r in responses) == n
    for r in errors:
        assert_problem(r, 500, "simulated-fault")
    for r in throttled:
        assert_problem(r, 429, "rate-limited")
        assert r.headers["retry-after"] == "3"
    assert set(health) == {200}


def test_fault_mode_is_deterministic_per_seed(reference_dir: Path, tmp_path: Path) -> None:
    faults = FaultConfig(error_rate=0.2, throttle_rate=0.2, slow_rate=0.2, slow_s=0.01, seed=11)
    sequences = []
    for run in ("a", "b"):
        shutil.copytree(reference_dir, tmp_path / run)
        with serving(create_app(tmp_path / run, TOKEN, faults=faults)) as served:
            sequences.append([served.client.get("/api/v1/stores/S001").status_code for _ in range(60)])
    assert sequences[0] == sequences[1]
    assert {200, 429, 500} <= set(sequences[0])


def test_fault_mode_still_refuses_a_wrong_token_first(data_dir: Path) -> None:
    with serving(create_app(data_dir, TOKEN, faults=FaultConfig(error_rate=1.0))) as served:
        assert_problem(httpx.get(f"{served.url}/api/v1/stores"), 401, "unauthorized")
        assert_problem(served.client.get("/api/v1/stores"), 500, "simulated-fault")


def test_fault_draws_split_by_the_configured_rates() -> None:
    injector = FaultInjector(FaultConfig(error_rate=0.05, throttle_rate=0.1, slow_rate=0.2, seed=3))
    draws = [injector.draw() for _ in range(20_000)]
    for kind, rate in (("error", 0.05), ("throttle", 0.1), ("slow", 0.2)):
        assert abs(draws.count(kind) / len(draws) - rate) < 0.01


def test_one_fault_rate_splits_evenly_and_rates_are_validated() -> None:
    split = FaultConfig.from_rate(0.3, seed=5)
    assert split.error_rate == split.throttle_rate == split.slow_rate == pytest.approx(0.1)
    with pytest.raises(ValueError, match="add up"):
        FaultConfig(error_rate=0.6, throttle_rate=0.6)


# --- drift while serving ------------------------------------------------------------------------------


def test_drift_runs_in_the_background_is_persisted_and_survives_a_restart(data_dir: Path) -> None:
    app = create_app(data_dir, TOKEN, drift=DriftConfig(seed=SEED, every_s=0.01, deletions=2))
    with serving(app) as served:
        assert served.store.wait_for_drift_steps(3, timeout=120)
        stop_app(app)
        steps = served.store.drift_steps
        live = ids("customers", walk(served.client, "customers", page_size=1000)[0])
        products = walk(served.client, "products", page_size=1000)[0]

    deleted = sorted(set(range(1, 3001)) - set(live))
    assert len(deleted) == 2 * steps
    with serving(create_app(data_dir, TOKEN)) as restarted:
        assert restarted.store.drift_steps == steps
        assert ids("customers", walk(restarted.client, "customers", page_size=1000)[0]) == live
        assert walk(restarted.client, "products", page_size=1000)[0] == products
        assert_problem(restarted.client.get(f"/api/v1/customers/{deleted[0]}"), 404, "not-found")


# --- contract -----------------------------------------------------------------------------------------

CONTRACT = json.loads(load_openapi())
OPERATIONS = [(method, path) for path, item in CONTRACT["paths"].items() for method in item]
CONTRACT_CASES = [(m, p, GenerationMode.POSITIVE) for m, p in OPERATIONS] + [
    (m, p, GenerationMode.NEGATIVE)
    for m, p in OPERATIONS
    if p.startswith("/api/")  # others take no input
]


@pytest.mark.parametrize(("method", "path", "mode"), CONTRACT_CASES)
def test_the_api_conforms_to_its_openapi_document(
    shared: Served, method: str, path: str, mode: GenerationMode
) -> None:
    """Schemathesis checks status codes, content types, headers and bodies against /openapi.json."""
    contract_url = shared.url
    config = schemathesis.Config.from_dict({"auth": {"openapi": {"bearerAuth": {"bearer": TOKEN}}}})
    schema = schemathesis.openapi.from_url(f"{contract_url}/openapi.json", config=config)
    operation = schema[path][method]
    statuses: list[int] = []

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=25, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def check(case: schemathesis.Case) -> None:
        if mode is GenerationMode.POSITIVE and case.query and "cursor" in case.query:
            # A random string is a valid `string` but no cursor; use a real one for the same filter.
            first = httpx.get(
                contract_url + path,
                params={k: v for k, v in case.query.items() if k == "updated_since"} | {"page_size": 1},
                headers=AUTH,
            ).json()
            if first["next_cursor"]:
                case.query["cursor"] = first["next_cursor"]
            else:
                del case.query["cursor"]
        statuses.append(case.call_and_validate().status_code)

    check()
    if mode is GenerationMode.POSITIVE and "{" in path:
        # Random ids are mostly unknown (404); check an existing one's body too.
        name = path.rsplit("{", 1)[1].rstrip("}")
        listed = httpx.get(
            contract_url + path.rsplit("/", 1)[0], params={"page_size": 1}, headers=AUTH
        ).json()
        existing = operation.Case(path_parameters={name: listed["items"][0][name]})
        # A Case built by hand gets no auth from the config (only generated ones do): send the token.
        statuses.append(existing.call_and_validate(headers=AUTH).status_code)
    if mode is GenerationMode.POSITIVE:
        assert 200 in statuses, "no request succeeded, so no success body was checked"
    else:
        assert any(400 <= s < 500 for s in statuses)
