"""The online shop's database contract: schema ``shop``, its tables (sql/shop_schema.sql), idempotently.

The contract belongs to the core because both sides of it need it: the web shop (the order simulator) writes
to these tables, and the Debezium connector must find them in every captured schema before it starts.
"""

from __future__ import annotations

import logging
from importlib import resources

import psycopg
from psycopg import sql

log = logging.getLogger(__name__)

SHOP_SCHEMA = "shop"
# Serialises concurrent schema set-ups (the stack and a simulator starting together).
_DDL_LOCK_KEY = "omnistream.ensure_shop_schema"


def schema_ddl() -> str:
    """The DDL of the shop's tables (omnistream/sql/shop_schema.sql)."""
    return resources.files("omnistream").joinpath("sql/shop_schema.sql").read_text(encoding="utf-8")


def ensure_shop_schema(conn: psycopg.Connection, schema: str = SHOP_SCHEMA) -> None:
    """Create ``schema`` if it is missing and its tables, indexes and replica identity; idempotent.

    Runs in one transaction, committed on return unless ``conn`` is already inside one. The schema is
    created only when missing, so a role that owns an existing schema but may not create schemas in the
    database (the application role) can run it.
    """
    with conn.transaction(), conn.cursor() as cur:
        cur.execute("select pg_advisory_xact_lock(hashtext(%s))", (_DDL_LOCK_KEY,))
        cur.execute("select 1 from pg_namespace where nspname = %s", (schema,))
        if cur.fetchone() is None:
            log.info("creating schema %s", schema)
            cur.execute(sql.SQL("create schema {}").format(sql.Identifier(schema)))
        cur.execute(sql.SQL("set local search_path to {}").format(sql.Identifier(schema)))
        cur.execute(schema_ddl().encode())
    log.info("schema %s is ready", schema)


def use_schema(conn: psycopg.Connection, schema: str) -> None:
    """Point the session's unqualified names at ``schema``."""
    conn.execute(sql.SQL("set search_path to {}").format(sql.Identifier(schema)))
    conn.commit()
