"""The master-data REST API: customers, products and stores served from the CSV files, over real HTTP.

The contract is ``simulators/openapi.json`` (served at ``/openapi.json``). In short:

- ``GET /api/v1/{customers|products|stores}`` lists live entities in ascending id order, one page at a time
  (``page_size``, default 100, 1..1000). Paging is keyset on the id: the opaque ``cursor`` from
  ``next_cursor`` says "after this id", so a walk stays complete and duplicate-free while the data drifts.
  ``updated_since`` (RFC 3339, zone required) keeps entities with ``updated_at >= updated_since``; the cursor
  carries that filter and the walk's ``as_of`` instant, which a client stores as its next ``updated_since``.
- ``GET /api/v1/{entity}/{id}`` returns one entity; deleted or unknown ids are 404.
- Errors are RFC 9457 problem documents (``application/problem+json``).
- Every ``/api/`` request needs ``Authorization: Bearer <token>``.

Opt-in fault mode answers a seeded random share of authorised requests with 500, 429 (``Retry-After``) or a
slow response. Opt-in drift changes the data in a background thread (see ``simulators.masterdata``).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
import random
import re
import signal
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from importlib import resources
from pathlib import Path
from typing import Any

from flask import Flask, Response, current_app, jsonify, request, url_for
from werkzeug.exceptions import HTTPException, MethodNotAllowed
from werkzeug.serving import make_server

from omnistream.errors import UsageError
from simulators.masterdata import (
    ENTITIES,
    DriftConfig,
    DriftLoop,
    Entity,
    Key,
    MasterData,
    ensure_reference,
    format_timestamp,
    public_view,
)

logger = logging.getLogger(__name__)

API_PREFIX = "/api/v1"
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
LIST_PARAMETERS = frozenset({"page_size", "cursor", "updated_since"})
PROBLEM_TYPE = "urn:omnistream:problem:"
PROBLEM_MEDIA_TYPE = "application/problem+json"
STATE_KEY = "omnistream.masterdata"

_DIGITS = re.compile(r"^[0-9]{1,18}$")
# RFC 3339 date-time; the zone is required, the separator may be T or t.
_TIMESTAMP = re.compile(
    r"^(?P<date>\d{4}-\d{2}-\d{2})[Tt](?P<h>\d{2}):(?P<m>\d{2}):(?P<s>\d{2})(?P<frac>\.\d+)?"
    r"(?P<zone>[Zz]|[+-]\d{2}:\d{2})$"
)


class BadParameter(UsageError, ValueError):
    """A query parameter the API cannot use; answered with a 400 problem naming the parameter."""

    def __init__(self, parameter: str, detail: str) -> None:
        super().__init__(detail)
        self.parameter = parameter
        self.detail = detail


@dataclass(frozen=True)
class FaultConfig:
    """Share of authorised API requests answered with 500, with 429 or slowly; decided by a seeded RNG."""

    error_rate: float = 0.0
    throttle_rate: float = 0.0
    slow_rate: float = 0.0
    slow_s: float = 2.0
    retry_after_s: int = 1
    seed: int = 42

    def __post_init__(self) -> None:
        rates = (self.error_rate, self.throttle_rate, self.slow_rate)
        if any(r < 0 for r in rates) or sum(rates) > 1:
            raise ValueError("fault rates must be >= 0 and add up to at most 1")
        if self.slow_s < 0 or self.retry_after_s < 0:
            raise ValueError("slow_s and retry_after_s must not be negative")

    def describe(self) -> str:
        return (
            f"500 {self.error_rate:.1%}, 429 {self.throttle_rate:.1%} (Retry-After {self.retry_after_s} s), "
            f"slow {self.slow_rate:.1%} ({self.slow_s} s), seed {self.seed}"
        )

    @classmethod
    def from_rate(cls, rate: float, seed: int = 42) -> FaultConfig:
        """``rate`` of requests disturbed in all, split evenly between 500s, 429s and slow responses."""
        return cls(error_rate=rate / 3, throttle_rate=rate / 3, slow_rate=rate / 3, seed=seed)


class FaultInjector:
    """Draws one fault decision per request from a seeded RNG: same seed, same sequence."""

    def __init__(self, config: FaultConfig) -> None:
        self.config = config
        self._rng = random.Random(config.seed)
        self._lock = threading.Lock()

    def draw(self) -> str | None:
        """``"error"``, ``"throttle"``, ``"slow"`` or None for the next request."""
        with self._lock:
            u = self._rng.random()
        c = self.config
        if u < c.error_rate:
            return "error"
        if u < c.error_rate + c.throttle_rate:
            return "throttle"
        if u < c.error_rate + c.throttle_rate + c.slow_rate:
            return "slow"
        return None


@dataclass(frozen=True)
class Cursor:
    """Where a walk is: after which id, with which ``updated_since`` filter, started at which instant."""

    entity: str
    after: Key
    as_of: datetime
    since: datetime | None

    def encode(self) -> str:
        payload = {
            "v": 1,
            "e": self.entity,
            "k": self.after,
            "a": format_timestamp(self.as_of),
            "s": format_timestamp(self.since) if self.since is not None else None,
        }
        raw = json.dumps(payload, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str, entity: Entity) -> Cursor:
        """Parse a cursor issued for ``entity``; BadParameter if it is not one."""
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            payload = json.loads(raw)
            if not isinstance(payload, dict) or payload.get("v") != 1 or payload.get("e") != entity.name:
                raise ValueError("not a cursor for this collection")
            after = payload["k"]
            key_type = int if entity.key_kind == "int" else str
            if type(after) is not key_type:
                raise ValueError("cursor key has the wrong type")
            as_of = datetime.fromisoformat(payload["a"])
            since = datetime.fromisoformat(payload["s"]) if payload["s"] is not None else None
            if as_of.tzinfo is None or (since is not None and since.tzinfo is None):
                raise ValueError("cursor timestamps lack a zone")
        except (binascii.Error, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
            raise BadParameter("cursor", f"not a cursor issued by {API_PREFIX}/{entity.name}: {exc}") from exc
        return cls(entity.name, after, as_of, since)


def parse_timestamp(text: str) -> datetime:
    """An RFC 3339 date-time with zone, in UTC. Out-of-range instants clamp to the earliest/latest one."""
    match = _TIMESTAMP.match(text)
    if match is None:
        raise ValueError(
            f"{text!r} is not an ISO 8601 / RFC 3339 date-time with zone, e.g. 2024-05-01T12:00:00Z "
            "(encode '+' as %2B in a query string)"
        )
    year, month, day = (int(p) for p in match["date"].split("-"))
    hour, minute, second = int(match["h"]), int(match["m"]), int(match["s"])
    micro = int((match["frac"] or ".0")[1:7].ljust(6, "0"))
    if second == 60:  # a leap second: the last instant of its minute is as close as datetime gets
        second, micro = 59, 999_999
    zone = match["zone"].upper()
    offset = (
        timedelta(0)
        if zone == "Z"
        else int(zone[0] + "1") * timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6]))
    )
    if offset >= timedelta(hours=24):
        raise ValueError(f"{text!r} has a zone offset beyond ±23:59")
    if year == 0:  # RFC 3339 allows year 0000; datetime does not, and nothing is older anyway
        return datetime.min.replace(tzinfo=UTC)
    local = datetime(year, month, day, hour, minute, second, micro, tzinfo=timezone(offset))
    try:
        return local.astimezone(UTC)
    except OverflowError:
        return (datetime.min if offset > timedelta(0) else datetime.max).replace(tzinfo=UTC)


def parse_page_size(text: str | None) -> int:
    """The ``page_size`` parameter: absent means the default, anything but 1..1000 is a BadParameter."""
    if text is None:
        return DEFAULT_PAGE_SIZE
    if not _DIGITS.match(text) or not 1 <= int(text) <= MAX_PAGE_SIZE:
        raise BadParameter(
            "page_size", f"page_size must be an integer from 1 to {MAX_PAGE_SIZE}, got {text!r}"
        )
    return int(text)


def problem(status: int, kind: str, title: str, detail: str, **extra: Any) -> Response:
    """An RFC 9457 problem response."""
    body = {
        "type": PROBLEM_TYPE + kind,
        "title": title,
        "status": status,
        "detail": detail,
        "instance": request.path,
    }
    body.update(extra)
    return current_app.response_class(json.dumps(body), status=status, mimetype=PROBLEM_MEDIA_TYPE)


@dataclass
class ApiState:
    """What one app serves from and how it misbehaves; kept in ``app.extensions``."""

    store: MasterData
    token: str
    faults: FaultInjector | None
    drift_loop: DriftLoop | None


def api_state(app: Flask) -> ApiState:
    """The store, token, faults and drift thread ``create_app`` attached to ``app``."""
    state: ApiState = app.extensions[STATE_KEY]
    return state


def _state() -> ApiState:
    return api_state(current_app)


def _authorize_and_disturb() -> Response | None:
    """Before every ``/api/`` request: check the bearer token, then maybe inject a fault."""
    if not request.path.startswith("/api/"):
        return None
    state = _state()
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not presented:
        response = problem(401, "unauthorized", "Unauthorized", "send Authorization: Bearer <token>")
        response.headers["WWW-Authenticate"] = 'Bearer realm="omnistream"'
        return response
    if not hmac.compare_digest(presented.strip().encode(), state.token.encode()):
        response = problem(401, "unauthorized", "Unauthorized", "the bearer token is not valid")
        response.headers["WWW-Authenticate"] = 'Bearer realm="omnistream", error="invalid_token"'
        return response
    return _disturb(state.faults) if state.faults is not None else None


def _disturb(faults: FaultInjector) -> Response | None:
    """Fault mode: answer 500 or 429 instead of the real response, or delay it."""
    fault = faults.draw()
    if fault == "error":
        return problem(500, "simulated-fault", "Internal Server Error", "simulated server fault (fault mode)")
    if fault == "throttle":
        retry_after = faults.config.retry_after_s
        response = problem(
            429, "rate-limited", "Too Many Requests", f"rate limited; retry after {retry_after} s"
        )
        response.headers["Retry-After"] = str(retry_after)
        return response
    if fault == "slow":
        time.sleep(faults.config.slow_s)  # the point of a slow response is to be slow
    return None


def _list(entity: Entity) -> Response:
    args = request.args
    unknown = sorted(set(args) - LIST_PARAMETERS)
    if unknown:  # a misspelt `updated_since` would otherwise silently turn into a full walk
        known = ", ".join(sorted(LIST_PARAMETERS))
        raise BadParameter(unknown[0], f"unknown query parameter {unknown[0]!r}; known: {known}")
    page_size = parse_page_size(args.get("page_size"))
    since_text = args.get("updated_since")
    try:
        since = parse_timestamp(since_text) if since_text is not None else None
    except ValueError as exc:
        raise BadParameter("updated_since", str(exc)) from exc
    cursor_text = args.get("cursor")
    store = _state().store
    after: Key | None = None
    if cursor_text is not None:
        cursor = Cursor.decode(cursor_text, entity)
        if since_text is not None and since != cursor.since:
            raise BadParameter(
                "updated_since", "updated_since differs from the cursor's; follow `next` as given"
            )
        after, as_of, since = cursor.after, cursor.as_of, cursor.since
    else:
        as_of = store.now()
    records, more = store.page(entity.name, after, since, page_size)
    next_cursor = (
        Cursor(entity.name, records[-1][entity.key], as_of, since).encode() if more and records else None
    )
    next_link = (
        url_for(f"list_{entity.name}", page_size=page_size, cursor=next_cursor)
        if next_cursor is not None
        else None
    )
    return jsonify(
        {
            "items": [public_view(entity, r) for r in records],
            "count": len(records),
            "next_cursor": next_cursor,
            "next": next_link,
            "as_of": format_timestamp(as_of),
        }
    )


def _get(entity: Entity, raw_id: str) -> Response:
    key: Key | None = raw_id
    if entity.key_kind == "int":
        key = int(raw_id) if _DIGITS.match(raw_id) else None
    record = _state().store.get(entity.name, key) if key is not None else None
    if record is None:
        singular = entity.name.removesuffix("s")
        return problem(404, "not-found", "Not Found", f"no {singular} with id {raw_id!r}")
    return jsonify(public_view(entity, record))


def _register_entity(app: Flask, entity: Entity) -> None:
    app.add_url_rule(
        f"{API_PREFIX}/{entity.name}", f"list_{entity.name}", lambda: _list(entity), methods=["GET"]
    )
    app.add_url_rule(
        f"{API_PREFIX}/{entity.name}/<path:raw_id>",
        f"get_{entity.name}",
        lambda raw_id: _get(entity, raw_id),
        methods=["GET"],
    )


def _handle_bad_parameter(exc: BadParameter) -> Response:
    return problem(400, "invalid-parameter", "Bad Request", exc.detail, parameter=exc.parameter)


def _handle_http_error(exc: HTTPException) -> Response:
    status = exc.code or 500
    kind = {404: "not-found", 405: "method-not-allowed"}.get(status, "http-error")
    response = problem(status, kind, exc.name, exc.description or exc.name)
    if isinstance(exc, MethodNotAllowed) and exc.valid_methods:
        response.headers["Allow"] = ", ".join(exc.valid_methods)
    return response


def _handle_unexpected(exc: Exception) -> Response:
    logger.exception("unhandled error serving %s", request.path)
    return problem(500, "internal-error", "Internal Server Error", "unexpected server error")


def load_openapi() -> str:
    """The OpenAPI document, as stored next to this module."""
    return resources.files("simulators").joinpath("openapi.json").read_text(encoding="utf-8")


def create_app(
    data_dir: Path, token: str, drift: DriftConfig | None = None, faults: FaultConfig | None = None
) -> Flask:
    """The API over the CSV files in ``data_dir``.

    With ``drift``, a background thread applies a drift step every ``drift.every_s`` seconds (0: never by
    itself; steps can still be applied through ``api_state(app).store``). With ``faults``, a seeded share
    of requests fail or slow down.
    """
    app = Flask(__name__)
    app.json.sort_keys = False  # type: ignore[attr-defined]
    store = MasterData.load(Path(data_dir))
    loop = DriftLoop(store, drift).start() if drift is not None and drift.every_s > 0 else None
    app.extensions[STATE_KEY] = ApiState(
        store=store,
        token=token,
        faults=FaultInjector(faults) if faults is not None else None,
        drift_loop=loop,
    )
    openapi = load_openapi()

    app.before_request(_authorize_and_disturb)
    for entity in ENTITIES.values():
        _register_entity(app, entity)
    app.add_url_rule(
        "/openapi.json", "openapi", lambda: Response(openapi, mimetype="application/json"), methods=["GET"]
    )
    app.add_url_rule("/health", "health", lambda: jsonify({"status": "ok"}), methods=["GET"])
    app.register_error_handler(BadParameter, _handle_bad_parameter)
    app.register_error_handler(HTTPException, _handle_http_error)
    app.register_error_handler(Exception, _handle_unexpected)
    return app


def stop_app(app: Flask) -> None:
    """Stop the app's drift thread, if it runs one."""
    loop = api_state(app).drift_loop
    if loop is not None:
        loop.stop()


def serve(
    data_dir: Path,
    host: str,
    port: int,
    token: str,
    seed: int,
    drift: DriftConfig | None = None,
    faults: FaultConfig | None = None,
    duration_s: float = 0.0,
) -> None:
    """Write the reference CSVs if missing, then serve the API until ``duration_s`` passes (0: forever)."""
    ensure_reference(data_dir, seed)
    app = create_app(data_dir, token, drift=drift, faults=faults)
    server = make_server(host, port, app, threaded=True)
    url = f"http://{host}:{server.server_port}"
    logger.info(
        "master-data API on %s (contract: %s/openapi.json; data: %s; drift: %s; faults: %s)",
        url,
        url,
        data_dir,
        f"every {drift.every_s} s" if drift is not None else "off",
        faults.describe() if faults is not None else "off",
    )

    def shutdown() -> None:
        # shutdown() waits for serve_forever to return, so it must run off the serving thread.
        threading.Thread(target=server.shutdown, name="api-shutdown").start()

    timer = threading.Timer(duration_s, shutdown) if duration_s > 0 else None
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: shutdown())
    if timer is not None:
        timer.start()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        logger.info("interrupted")
    finally:
        if timer is not None:
            timer.cancel()
        stop_app(app)
        server.server_close()
        logger.info("master-data API stopped")
