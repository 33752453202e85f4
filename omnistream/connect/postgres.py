"""The PostgreSQL side of the Debezium connector: the captured schema before it starts, its slot after.

A logical replication slot keeps every WAL segment from its position on until a consumer confirms it, so a
slot whose connector was deleted holds WAL (disk) forever: :func:`drop_slot` is how a deletion finishes.
"""

from __future__ import annotations

import logging
import time

import psycopg

from omnistream.errors import OmnistreamError
from omnistream.settings import Settings
from omnistream.shop_schema import ensure_shop_schema

log = logging.getLogger(__name__)

POSTGRES_CONNECTOR = "io.debezium.connector.postgresql.PostgresConnector"


class SlotBusy(OmnistreamError):
    """The slot is still in use by a replication connection."""


def ensure_captured_schemas(settings: Settings, schemas: list[str]) -> None:
    """Create the shop's tables in each schema (as the application role) so the connector captures them
    from its first event; idempotent."""
    if not schemas:
        return
    with psycopg.connect(settings.postgres.app_dsn(), connect_timeout=10) as conn:
        for schema in schemas:
            ensure_shop_schema(conn, schema)


def drop_slot(settings: Settings, slot: str, *, dbname: str | None = None, timeout_s: float = 60.0) -> bool:
    """Drop replication slot ``slot`` once no connection uses it; False if there was no such slot.

    Connects as the replication role, which may drop slots without being a superuser. A deleted
    connector's task lets go of its slot a moment after the REST call returns, hence the wait.
    """
    pg = settings.postgres
    dsn = pg.dsn(pg.replication_user, pg.replication_password.get_secret_value(), dbname=dbname)
    deadline = time.monotonic() + timeout_s
    with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
        while True:
            row = conn.execute(
                "select active, active_pid from pg_replication_slots where slot_name = %s", [slot]
            ).fetchone()
            if row is None:
                return False
            active, pid = row
            if not active:
                try:
                    conn.execute("select pg_drop_replication_slot(%s)", [slot])
                except psycopg.errors.UndefinedObject:
                    return False  # dropped by someone else in the meantime
                except psycopg.errors.ObjectInUse:
                    pass  # taken again between the check and the drop: wait on
                else:
                    log.info("dropped replication slot %s", slot)
                    return True
            if time.monotonic() > deadline:
                raise SlotBusy(
                    f"replication slot {slot} is still used by backend {pid} after {timeout_s:.0f} s; "
                    "stop the connector that reads it (omnistream connect delete) and drop it again"
                )
            time.sleep(0.5)


def wait_until_slots_confirm_wal_end(settings: Settings, timeout_s: float) -> bool:
    """Wait until every logical slot of the shop database confirmed the WAL end as of this call, that is
    until Debezium has every change committed so far in Kafka; False if not within ``timeout_s``."""
    pg = settings.postgres
    deadline = time.monotonic() + timeout_s
    with psycopg.connect(pg.dsn(), autocommit=True, connect_timeout=10) as conn:
        row = conn.execute("select pg_current_wal_lsn()").fetchone()
        target = row[0] if row else None
        while time.monotonic() < deadline:
            caught_up = conn.execute(
                "select bool_and(confirmed_flush_lsn >= %s) from pg_replication_slots "
                "where database = %s and slot_type = 'logical'",
                [target, pg.database],
            ).fetchone()
            if caught_up and caught_up[0]:
                return True
            time.sleep(0.5)
    return False
