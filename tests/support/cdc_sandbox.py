"""An isolated copy of the online-shop capture, for tests and benchmarks on a shared stack.

Its own schema (the shop's tables, owned by the application role), publication, replication slot,
connector name and topic prefix, all named from one suffix, so it never touches the shop's own
connector, slot or topics. :func:`cdc_sandbox` removes everything it made, the slot above all: an orphaned
slot would keep WAL on the shared server forever.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import psycopg
from psycopg import sql

from omnistream.connect import deploy, postgres
from omnistream.connect.client import ConnectClient, ConnectorNotFound
from omnistream.connect.config import CONNECT_DIR, ConnectorFile, load_file
from omnistream.kafka.clients import admin
from omnistream.settings import Settings
from omnistream.shop_schema import ensure_shop_schema

log = logging.getLogger(__name__)

BASE_CONNECTOR = "onlinedb-postgres"


@dataclass(frozen=True)
class CdcSandbox:
    """Names of one isolated capture; see the module docstring."""

    suffix: str

    @property
    def schema(self) -> str:
        return f"shop_{self.suffix}"

    @property
    def publication(self) -> str:
        return f"omnistream_{self.suffix}"

    @property
    def slot(self) -> str:
        return f"omnistream_{self.suffix}"

    @property
    def prefix(self) -> str:
        return f"cdc_{self.suffix}"

    @property
    def connector(self) -> str:
        return f"cdc-{self.suffix}"

    @property
    def orders_topic(self) -> str:
        return f"{self.prefix}.{self.schema}.orders"

    @property
    def items_topic(self) -> str:
        return f"{self.prefix}.{self.schema}.order_items"

    @property
    def heartbeat_topic(self) -> str:
        return f"__debezium-heartbeat.{self.prefix}"

    @property
    def topics(self) -> tuple[str, ...]:
        return (self.orders_topic, self.items_topic, self.heartbeat_topic)

    def connector_file(self, base: ConnectorFile | None = None) -> ConnectorFile:
        """``connect/onlinedb-postgres.json`` pointed at the sandbox: placeholders kept, names replaced."""
        base = base or load_file(CONNECT_DIR / f"{BASE_CONNECTOR}.json")
        config = {
            **base.config,
            "publication.name": self.publication,
            "slot.name": self.slot,
            "topic.prefix": self.prefix,
            "table.include.list": f"{self.schema}.orders,{self.schema}.order_items",
        }
        return ConnectorFile(self.connector, config, base.path.with_name(f"{self.connector}.json"))

    def file_json(self) -> dict[str, Any]:
        """The sandbox connector as a connect/*.json document."""
        connector = self.connector_file()
        return {"name": connector.name, "config": connector.config}


def create(settings: Settings, sandbox: CdcSandbox) -> None:
    """The schema with the shop's tables, readable by the replication role, and a publication of them."""
    pg = settings.postgres
    schema = sql.Identifier(sandbox.schema)
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        conn.execute(sql.SQL("create schema {} authorization {}").format(schema, sql.Identifier(pg.app_user)))
    with psycopg.connect(pg.app_dsn()) as conn:
        ensure_shop_schema(conn, sandbox.schema)
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        replicator = sql.Identifier(pg.replication_user)
        conn.execute(sql.SQL("grant usage on schema {} to {}").format(schema, replicator))
        conn.execute(sql.SQL("grant select on all tables in schema {} to {}").format(schema, replicator))
        conn.execute(
            sql.SQL("create publication {} for table {}, {}").format(
                sql.Identifier(sandbox.publication),
                sql.Identifier(sandbox.schema, "orders"),
                sql.Identifier(sandbox.schema, "order_items"),
            )
        )


def remove(settings: Settings, sandbox: CdcSandbox) -> None:
    """Delete the connector, then drop its slot, publication, schema, topics and registry subjects.

    Each step runs even if an earlier one failed; the first failure is raised at the end.
    """
    failures: list[BaseException] = []

    def attempt(step: str, action: Any) -> None:
        try:
            action()
        except Exception as exc:
            log.warning("sandbox %s: %s failed: %s", sandbox.suffix, step, exc)
            failures.append(exc)

    def delete_connector() -> None:
        with ConnectClient(settings.connect.url) as client, contextlib.suppress(ConnectorNotFound):
            deploy.delete(client, settings, sandbox.connector, drop_slot=False)

    def drop_database_objects() -> None:
        with psycopg.connect(settings.postgres.dsn(), autocommit=True) as conn:
            conn.execute(sql.SQL("drop publication if exists {}").format(sql.Identifier(sandbox.publication)))
            conn.execute(sql.SQL("drop schema if exists {} cascade").format(sql.Identifier(sandbox.schema)))

    def delete_topics() -> None:
        client = admin(settings)  # kept referenced until the futures resolve
        existing = set(client.list_topics(timeout=10).topics)
        doomed = [t for t in sandbox.topics if t in existing]
        if doomed:
            for future in client.delete_topics(doomed, operation_timeout=30).values():
                future.result(timeout=60)

    def delete_subjects() -> None:
        url = settings.registry.url
        subjects = httpx.get(f"{url}/subjects", timeout=10).raise_for_status().json()
        for subject in subjects:
            if any(subject.startswith(f"{topic}-") for topic in sandbox.topics):
                httpx.delete(f"{url}/subjects/{subject}", timeout=10).raise_for_status()

    attempt("delete connector", delete_connector)
    attempt("drop slot", lambda: postgres.drop_slot(settings, sandbox.slot))
    attempt("drop publication and schema", drop_database_objects)
    attempt("delete topics", delete_topics)
    attempt("delete subjects", delete_subjects)
    if failures:
        raise failures[0]


@contextlib.contextmanager
def cdc_sandbox(settings: Settings, suffix: str) -> Iterator[CdcSandbox]:
    """Create a sandbox, yield its names, remove it afterwards (the connector is the caller's to apply)."""
    sandbox = CdcSandbox(suffix)
    create(settings, sandbox)
    try:
        yield sandbox
    finally:
        remove(settings, sandbox)
