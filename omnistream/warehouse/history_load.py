"""Load the history's Parquet files into the warehouse, idempotently, one file at a time.

- Snowflake: an external stage over the bucket and ``COPY INTO`` with the files named. Snowflake's own load
  metadata (per table and file) skips a file already loaded, so re-running loads nothing twice.
- DuckDB (the local warehouse): each file is loaded in its own transaction, replacing whatever an earlier
  load of the same file left, and recorded with its checksum in ``raw.history_files``; an unchanged file is
  skipped, a changed one (same name, new checksum) is reloaded.

Files come from a local directory or from ``gs://``/``gcs://`` bucket prefixes (listed with the
google-cloud-storage client, read through gcsfs).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import duckdb

from omnistream.settings import GcsSettings

logger = logging.getLogger(__name__)

SQL_DIR = Path(__file__).with_name("sql")
PATTERN = "year=*/month=*/*.parquet"
COPY_FILES_LIMIT = 1000  # Snowflake's limit on FILES = (...) in one COPY


@dataclass(frozen=True)
class HistoryFile:
    """One Parquet file of the dataset: its name relative to the dataset root, full URI and checksum."""

    name: str
    uri: str
    checksum: str


@dataclass(frozen=True)
class LoadReport:
    """What a load did: files loaded, files skipped as already loaded, rows loaded."""

    loaded: int
    skipped: int
    rows: int


def is_bucket_uri(root: str) -> bool:
    return urlsplit(root).scheme in ("gs", "gcs")


def list_history_files(root: str, gcs: GcsSettings | None = None) -> list[HistoryFile]:
    """The dataset's files under ``root`` (a directory or gs://bucket/prefix), sorted by name."""
    if is_bucket_uri(root):
        from simulators.gcs import storage_client

        if gcs is None:
            raise ValueError(f"listing {root} needs the GCS settings")
        parts = urlsplit(root)
        prefix = parts.path.strip("/") + "/"
        blobs = storage_client(gcs).list_blobs(parts.netloc, prefix=prefix)
        files = [
            HistoryFile(blob.name[len(prefix) :], f"gcs://{parts.netloc}/{blob.name}", str(blob.md5_hash))
            for blob in blobs
            if blob.name.endswith(".parquet") and Path(blob.name[len(prefix) :]).match(PATTERN)
        ]
    else:
        base = Path(root)
        files = [
            HistoryFile(str(path.relative_to(base)), str(path.resolve()), _md5(path))
            for path in base.glob(PATTERN)
            if path.is_file()
        ]
    return sorted(files, key=lambda f: f.name)


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _statements(name: str, **params: str) -> list[str]:
    text = (SQL_DIR / name).read_text().format(**params)
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


# --- DuckDB --------------------------------------------------------------------------------------------


def register_gcs(con: duckdb.DuckDBPyConnection, gcs: GcsSettings) -> None:
    """Let DuckDB read gcs:// paths through gcsfs (anonymous against the emulator)."""
    # gcsfs otherwise probes each bucket over the storage-control gRPC API, which an emulator does not serve.
    os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
    import gcsfs

    if {"gs", "gcs"} & set(con.list_filesystems()):
        return  # registered on this connection already (gcsfs answers to both names)
    emulated = not gcs.endpoint.rstrip("/").endswith("googleapis.com")
    fs = gcsfs.GCSFileSystem(
        project=gcs.project,
        token="anon" if emulated else "google_default",
        endpoint_url=gcs.endpoint if emulated else None,
    )
    con.register_filesystem(fs)


def load_history_duckdb(
    con: duckdb.DuckDBPyConnection, files: Iterable[HistoryFile], gcs: GcsSettings | None = None
) -> LoadReport:
    """Load ``files`` into ``raw.history_order_lines``: once per checksum, each in one transaction."""
    files = list(files)
    if gcs is not None and any(is_bucket_uri(f.uri) for f in files):
        register_gcs(con, gcs)
    # A raw view left by a dbt run over the files stands where the loaded table goes.
    views = con.execute(
        "select count(*) from information_schema.tables"
        " where table_schema = 'raw' and table_name = 'history_order_lines' and table_type = 'VIEW'"
    ).fetchall()
    if views[0][0]:
        con.execute("drop view raw.history_order_lines")
    for statement in _statements("duckdb_history_setup.sql"):
        con.execute(statement)
    loaded_before = dict(con.execute("select source_file, checksum from raw.history_files").fetchall())
    loaded = skipped = rows = 0
    for file in files:
        if loaded_before.get(file.uri) == file.checksum:
            skipped += 1
            continue
        con.execute("begin transaction")
        try:
            con.execute("delete from raw.history_order_lines where source_file = ?", [file.uri])
            con.execute(
                "insert into raw.history_order_lines by name"
                " select *, ? as source_file from read_parquet(?, hive_partitioning = false)",
                [file.uri, file.uri],
            )
            ((count,),) = con.execute(
                "select count(*) from raw.history_order_lines where source_file = ?", [file.uri]
            ).fetchall()
            con.execute(
                "insert or replace into raw.history_files values (?, ?, ?, ?)",
                [file.uri, file.checksum, count, datetime.now(UTC)],
            )
            con.execute("commit")
        except Exception:
            con.execute("rollback")
            raise
        loaded += 1
        rows += count
        logger.info("loaded %s (%d rows)", file.name, count)
    return LoadReport(loaded, skipped, rows)


# --- Snowflake -----------------------------------------------------------------------------------------


class Cursor(Protocol):
    """The part of a DB-API cursor (snowflake-connector-python's) this module uses."""

    def execute(self, command: str, *args: Any, **kwargs: Any) -> Any: ...
    def fetchall(self) -> Sequence[Any]: ...

    @property
    def description(self) -> Any: ...


@dataclass(frozen=True)
class SnowflakeTarget:
    """Where the history goes in Snowflake and the stage it comes from."""

    stage_url: str  # gcs://bucket/history/ (a storage integration grants access)
    storage_integration: str | None = None
    # Upper case, as Snowflake stores unquoted names (and as its load metadata reports them).
    schema: str = "RAW"
    table: str = "HISTORY_ORDER_LINES"
    stage: str = "HISTORY_STAGE"
    # Record each row's file (INCLUDE_METADATA). Off only for stand-ins that lack the option (fakesnow).
    include_source_file: bool = True


def load_history_snowflake(cursor: Cursor, target: SnowflakeTarget, files: Sequence[str]) -> LoadReport:
    """COPY the named files (relative to the stage URL) into the history table; loaded files are skipped."""
    credentials = f"storage_integration = {target.storage_integration}" if target.storage_integration else ""
    params = {"schema": target.schema, "table": target.table, "stage": target.stage}
    for statement in _statements(
        "snowflake_history_setup.sql", stage_url=target.stage_url, stage_credentials=credentials, **params
    ):
        # Skipped when the table exists: a no-op on Snowflake anyway, and fakesnow forgets a table's load
        # history on any CREATE TABLE, even one that creates nothing.
        if statement.lower().startswith("create table") and _table_exists(cursor, target):
            continue
        cursor.execute(statement)
    loaded = skipped = rows = 0
    for start in range(0, len(files), COPY_FILES_LIMIT):
        chunk = files[start : start + COPY_FILES_LIMIT]
        names = ", ".join("'" + name.replace("'", "''") + "'" for name in chunk)
        include = "include_metadata = (source_file = metadata$filename)" if target.include_source_file else ""
        (copy,) = _statements("snowflake_history_copy.sql", files=names, include_metadata=include, **params)
        cursor.execute(copy)
        columns = [c[0].lower() for c in cursor.description]
        for row in cursor.fetchall():
            result = dict(zip(columns, row, strict=False))
            if str(result.get("status", "")).upper() == "LOADED":
                loaded += 1
                rows += int(result.get("rows_loaded") or 0)
            elif "status" in result:
                skipped += 1
    logger.info("history COPY: %d files loaded (%d rows), %d skipped", loaded, rows, skipped)
    return LoadReport(loaded, skipped, rows)


def _table_exists(cursor: Cursor, target: SnowflakeTarget) -> bool:
    cursor.execute(
        "select count(*) from information_schema.tables where table_schema = %s and table_name = %s",
        (target.schema.upper(), target.table.upper()),
    )
    ((count,),) = cursor.fetchall()
    return int(count) > 0
