"""Load the history's Parquet files into the warehouse, idempotently, one file at a time.

- Snowflake: an external stage over the bucket and ``COPY INTO`` with the files named. Snowflake's own load
  metadata (per table and file) skips a file already loaded, so re-running loads nothing twice. The stage
  reaches the bucket through a storage integration (the default, ``history.storage_integration``); a GCS
  external stage takes no other credentials. The fallback for an account without one is an internal stage:
  the loader reads the bucket with its own Google credentials (a service-account key) and PUTs each file
  there, then runs the same COPY (``history.stage_access = internal``).
- DuckDB (the local warehouse): each file is loaded in its own transaction, replacing whatever an earlier
  load of the same file left, and recorded with its checksum in ``raw.history_files``; an unchanged file is
  skipped, a changed one (same name, new checksum) is reloaded. The writer holds the warehouse lock
  (:mod:`omnistream.warehouse.lock`), so a dbt build started meanwhile waits instead of failing.

Files come from a local directory or from ``gs://``/``gcs://`` bucket prefixes. A bucket is listed and read
with the google-cloud-storage client: each object is downloaded whole (one request, its MD5 checked against
the listing) and DuckDB reads the local copy. DuckDB reading through gcsfs instead costs several range
requests per file and, from gcsfs 2026.8 on, leaves its background prefetcher's tasks pending by the
hundred (``Task was destroyed but it is pending!``).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import duckdb

from omnistream.errors import OmnistreamError, Unreachable, UsageError
from omnistream.settings import STAGE_ACCESS, GcsSettings, HistorySettings, Settings
from omnistream.warehouse.lock import warehouse_lock

logger = logging.getLogger(__name__)

SQL_DIR = Path(__file__).with_name("sql")
PATTERN = "year=*/month=*/*.parquet"
COPY_FILES_LIMIT = 1000  # Snowflake's limit on FILES = (...) in one COPY
SAFE_STAGE_PATH = re.compile(r"[A-Za-z0-9_=./-]+")
DEFAULT_STORAGE_INTEGRATION: str = HistorySettings.model_fields["storage_integration"].default


@dataclass(frozen=True)
class HistoryFile:
    """One Parquet file of the dataset: its name relative to the dataset root, full URI and checksum
    (base64 MD5, as GCS reports it)."""

    name: str
    uri: str
    checksum: str


@dataclass(frozen=True)
class LoadReport:
    """What a load did: files loaded, files skipped as already loaded, rows loaded."""

    loaded: int
    skipped: int
    rows: int


# Called after each file (DuckDB) or each COPY of up to COPY_FILES_LIMIT files (Snowflake), with the number
# of files it covered: what a progress bar needs.
OnFiles = Callable[[int], None]


class ChecksumMismatch(OmnistreamError):
    """A file's content is not what its listing said (changed in between, or corrupted on the way)."""


class StageConfigError(UsageError, ValueError):
    """The Snowflake stage was asked for something that cannot be (an unknown access, no integration)."""


class UnstageableName(OmnistreamError, ValueError):
    """A history file's name has characters an unquoted stage path cannot hold."""


def is_bucket_uri(root: str) -> bool:
    return urlsplit(root).scheme in ("gs", "gcs")


def list_history_files(root: str, gcs: GcsSettings | None = None) -> list[HistoryFile]:
    """The dataset's files under ``root`` (a directory or gs://bucket/prefix), sorted by name."""
    if is_bucket_uri(root):
        from omnistream.gcs import storage_client

        if gcs is None:
            raise ValueError(f"listing {root} needs the GCS settings")
        from google.api_core.exceptions import GoogleAPIError, NotFound
        from requests.exceptions import ConnectionError as HttpConnectionError

        parts = urlsplit(root)
        prefix = parts.path.strip("/") + "/"
        # Every caller (load-history, dbt's bucket load, the DAG) gets the same one-line errors.
        try:
            files = [
                HistoryFile(blob.name[len(prefix) :], f"gcs://{parts.netloc}/{blob.name}", str(blob.md5_hash))
                for blob in storage_client(gcs).list_blobs(parts.netloc, prefix=prefix)
                if blob.name.endswith(".parquet") and Path(blob.name[len(prefix) :]).match(PATTERN)
            ]
        except NotFound as exc:
            raise OmnistreamError(f"{root}: no such bucket at {gcs.endpoint}") from exc
        except HttpConnectionError as exc:
            reason = str(exc).splitlines()[0][:300]
            raise Unreachable(f"listing {root} at {gcs.endpoint} failed: {reason}") from exc
        except GoogleAPIError as exc:
            reason = str(exc).splitlines()[0][:300]
            raise OmnistreamError(f"listing {root} at {gcs.endpoint} failed: {reason}") from exc
    else:
        from omnistream.gcs import file_checksums

        base = Path(root)
        files = [
            HistoryFile(str(path.relative_to(base)), str(path.resolve()), file_checksums(path).md5)
            for path in base.glob(PATTERN)
            if path.is_file()
        ]
    return sorted(files, key=lambda f: f.name)


def _md5(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode("ascii")


def _statements(name: str, **params: str) -> list[str]:
    # Comments go before the parameters are filled in: a parameter may span lines.
    lines = [line for line in (SQL_DIR / name).read_text().splitlines() if not line.lstrip().startswith("--")]
    text = "\n".join(lines).format(**params)
    return [s.strip() for s in text.split(";") if s.strip()]


class FileFetcher:
    """Local copies of history files: a local file is used where it lies; an object is downloaded with the
    storage client into a private temporary directory, its MD5 checked, and deleted once used."""

    def __init__(self, gcs: GcsSettings | None = None) -> None:
        self._gcs = gcs
        self._client: Any = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    def __enter__(self) -> FileFetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()

    @contextlib.contextmanager
    def local_copy(self, file: HistoryFile) -> Iterator[Path]:
        if not is_bucket_uri(file.uri):
            yield Path(file.uri)
            return
        if self._gcs is None:
            raise ValueError(f"reading {file.uri} needs the GCS settings")
        if self._client is None:
            from omnistream.gcs import storage_client

            self._client = storage_client(self._gcs)
            self._tmp = tempfile.TemporaryDirectory(prefix="omnistream-history-")
        assert self._tmp is not None
        parts = urlsplit(file.uri)
        data = self._client.bucket(parts.netloc).blob(parts.path.lstrip("/")).download_as_bytes()
        if _md5(data) != file.checksum:
            raise ChecksumMismatch(
                f"{file.uri}: MD5 {_md5(data)} but the listing said {file.checksum}; the object changed "
                "since it was listed: run the load again"
            )
        path = Path(self._tmp.name) / file.name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        try:
            yield path
        finally:
            path.unlink(missing_ok=True)


# --- DuckDB --------------------------------------------------------------------------------------------


def register_gcs(con: duckdb.DuckDBPyConnection, gcs: GcsSettings) -> None:
    """Let DuckDB read gcs:// paths through gcsfs (anonymous against the emulator); for ad-hoc queries,
    the loader itself downloads with the storage client."""
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
    con: duckdb.DuckDBPyConnection,
    files: Iterable[HistoryFile],
    gcs: GcsSettings | None = None,
    on_files: OnFiles | None = None,
) -> LoadReport:
    """Load ``files`` into ``raw.history_order_lines``: once per checksum, each in one transaction."""
    files = list(files)
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
    with FileFetcher(gcs) as fetcher:
        for file in files:
            if loaded_before.get(file.uri) == file.checksum:
                skipped += 1
            else:
                with fetcher.local_copy(file) as path:
                    rows += _load_one(con, file, path)
                loaded += 1
            if on_files is not None:
                on_files(1)
    logger.info("history: %d files loaded (%d rows), %d already loaded", loaded, rows, skipped)
    return LoadReport(loaded, skipped, rows)


def _load_one(con: duckdb.DuckDBPyConnection, file: HistoryFile, path: Path) -> int:
    """Replace what an earlier load of ``file`` left with the rows of ``path``, and record it, atomically."""
    con.execute("begin transaction")
    try:
        con.execute("delete from raw.history_order_lines where source_file = ?", [file.uri])
        con.execute(
            "insert into raw.history_order_lines by name"
            " select *, ? as source_file from read_parquet(?, hive_partitioning = false)",
            [file.uri, str(path)],
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
    logger.debug("loaded %s (%d rows)", file.name, count)
    return int(count)


def load_history_into(
    database: Path,
    files: Iterable[HistoryFile],
    gcs: GcsSettings | None = None,
    on_files: OnFiles | None = None,
) -> LoadReport:
    """:func:`load_history_duckdb` into the DuckDB file ``database``, holding the warehouse lock."""
    database.parent.mkdir(parents=True, exist_ok=True)
    with warehouse_lock(database), duckdb.connect(str(database)) as con:
        return load_history_duckdb(con, files, gcs, on_files)


# --- Snowflake -----------------------------------------------------------------------------------------


class Cursor(Protocol):
    """The part of a DB-API cursor (snowflake-connector-python's) this module uses."""

    def execute(self, command: str, *args: Any, **kwargs: Any) -> Any: ...
    def fetchall(self) -> Sequence[Any]: ...

    @property
    def description(self) -> Any: ...


@dataclass(frozen=True)
class SnowflakeTarget:
    """Where the history goes in Snowflake and how Snowflake reaches the files.

    ``stage_access="integration"`` (the default): an external stage on ``stage_url`` with
    ``STORAGE_INTEGRATION = <storage_integration>``, the one way a GCS external stage is granted access to a
    private bucket. ``stage_access="internal"``: an internal stage the loader PUTs the files into, reading
    the bucket with its own Google credentials; for an account where no integration can be created.
    """

    stage_url: str  # gcs://bucket/history/; the internal stage has none
    storage_integration: str = DEFAULT_STORAGE_INTEGRATION
    stage_access: str = "integration"
    # Upper case, as Snowflake stores unquoted names (and as its load metadata reports them).
    schema: str = "RAW"
    table: str = "HISTORY_ORDER_LINES"
    stage: str = "HISTORY_STAGE"
    internal_stage: str = "HISTORY_INTERNAL_STAGE"
    # Record each row's file (INCLUDE_METADATA). Off only for stand-ins that lack the option (fakesnow).
    include_source_file: bool = True

    def __post_init__(self) -> None:
        if self.stage_access not in STAGE_ACCESS:
            raise StageConfigError(f"stage_access must be one of {STAGE_ACCESS}, not {self.stage_access!r}")
        if self.stage_access == "integration" and not self.storage_integration:
            raise StageConfigError(
                "the external stage needs a storage integration (OMNISTREAM_HISTORY__STORAGE_INTEGRATION); "
                "without one, use the internal stage (OMNISTREAM_HISTORY__STAGE_ACCESS=internal)"
            )

    @property
    def stage_name(self) -> str:
        return self.stage if self.stage_access == "integration" else self.internal_stage

    @property
    def stage_params(self) -> str:
        """The CREATE STAGE clauses that say where the files are and what grants access to them."""
        if self.stage_access == "internal":
            return ""  # Snowflake's own storage: the loader's PUT is what reads the bucket
        url = self.stage_url.replace("'", "''")
        return f"url = '{url}'\n    storage_integration = {self.storage_integration}"


def snowflake_setup_statements(target: SnowflakeTarget) -> list[str]:
    """The schema, the table and the stage, as executed (idempotent)."""
    return _statements(
        "snowflake_history_setup.sql",
        schema=target.schema,
        table=target.table,
        stage=target.stage_name,
        stage_params=target.stage_params,
    )


def snowflake_copy_statements(target: SnowflakeTarget, files: Sequence[str]) -> list[str]:
    """The COPYs for ``files`` (names relative to the stage): one per ``COPY_FILES_LIMIT`` files named, on
    the external stage; one for the whole internal stage, which holds only the files the loader PUT."""
    include = "include_metadata = (source_file = metadata$filename)" if target.include_source_file else ""
    params = {"schema": target.schema, "table": target.table, "stage": target.stage_name}
    if target.stage_access == "internal":
        return _statements("snowflake_history_copy.sql", files_clause="", include_metadata=include, **params)
    statements = []
    for start in range(0, len(files), COPY_FILES_LIMIT):
        names = ", ".join(_quote(name) for name in files[start : start + COPY_FILES_LIMIT])
        (copy,) = _statements(
            "snowflake_history_copy.sql",
            files_clause=f"files = ({names})",
            include_metadata=include,
            **params,
        )
        statements.append(copy)
    return statements


def snowflake_put_statement(target: SnowflakeTarget, local: Path, name: str) -> str:
    """PUT one local file into the internal stage under its dataset name (``year=…/month=…/part-0.parquet``).

    Uncompressed (Parquet compresses itself), and never over a file already staged under that name. The
    stage path stays unquoted (fakesnow reads no quoted one), so names are held to plain characters."""
    if not SAFE_STAGE_PATH.fullmatch(name):
        raise UnstageableName(f"history file name {name!r} has characters an unquoted stage path cannot hold")
    directory = name.rpartition("/")[0]
    location = f"@{target.schema}.{target.internal_stage}/" + (f"{directory}/" if directory else "")
    source = _quote("file://" + local.resolve().as_posix())
    return f"put {source} {location} auto_compress = false overwrite = false"


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def load_history_snowflake(
    cursor: Cursor,
    target: SnowflakeTarget,
    files: Sequence[HistoryFile],
    gcs: GcsSettings | None = None,
    on_files: OnFiles | None = None,
) -> LoadReport:
    """COPY ``files`` into the history table; files Snowflake has loaded already are skipped.

    On the internal stage, files not staged yet are downloaded (``gcs``) and PUT there first."""
    for statement in snowflake_setup_statements(target):
        # Skipped when the table exists: a no-op on Snowflake anyway, and fakesnow forgets a table's load
        # history on any CREATE TABLE, even one that creates nothing.
        if statement.lower().startswith("create table") and _table_exists(cursor, target):
            continue
        cursor.execute(statement)
    if target.stage_access == "internal":
        _stage_files(cursor, target, files, gcs, on_files)
    loaded = rows = 0
    names = [f.name for f in files]
    for number, copy in enumerate(snowflake_copy_statements(target, names)):
        cursor.execute(copy)
        columns = [c[0].lower() for c in cursor.description]
        for row in cursor.fetchall():
            result = dict(zip(columns, row, strict=False))
            if str(result.get("status", "")).upper() == "LOADED":
                loaded += 1
                rows += int(result.get("rows_loaded") or 0)
        if on_files is not None and target.stage_access == "integration":
            on_files(len(names[number * COPY_FILES_LIMIT : (number + 1) * COPY_FILES_LIMIT]))
    # ON_ERROR = ABORT_STATEMENT: a file that failed fails the COPY, so what was not loaded was skipped
    # (Snowflake reports those as LOAD_SKIPPED rows, or, when none is left, one "0 files processed" row).
    skipped = max(len(files) - loaded, 0)
    logger.info("history COPY: %d files loaded (%d rows), %d skipped", loaded, rows, skipped)
    return LoadReport(loaded, skipped, rows)


def _stage_files(
    cursor: Cursor,
    target: SnowflakeTarget,
    files: Sequence[HistoryFile],
    gcs: GcsSettings | None,
    on_files: OnFiles | None,
) -> None:
    """PUT the files the internal stage does not hold yet (LIST names them ``<stage>/<path>``)."""
    cursor.execute(f"list @{target.schema}.{target.internal_stage}")
    staged = {str(row[0]).split("/", 1)[-1] for row in cursor.fetchall()}
    with FileFetcher(gcs) as fetcher:
        for file in files:
            if file.name not in staged:
                with fetcher.local_copy(file) as path:
                    cursor.execute(snowflake_put_statement(target, path, file.name))
            if on_files is not None:
                on_files(1)


def _table_exists(cursor: Cursor, target: SnowflakeTarget) -> bool:
    cursor.execute(
        "select count(*) from information_schema.tables where table_schema = %s and table_name = %s",
        (target.schema.upper(), target.table.upper()),
    )
    ((count,),) = cursor.fetchall()
    return int(count) > 0


# --- The configured warehouse --------------------------------------------------------------------------


def configured_history_files(settings: Settings) -> list[HistoryFile]:
    """The files of the configured dataset (``history.root``, else the bucket's ``history/``)."""
    return list_history_files(settings.history.dataset(settings.gcs), settings.gcs)


def configured_stage(settings: Settings) -> SnowflakeTarget:
    """The Snowflake stage the ``history`` settings describe."""
    history = settings.history
    return SnowflakeTarget(
        stage_url=history.stage(settings.gcs),
        storage_integration=history.storage_integration,
        stage_access=history.stage_access,
    )


def load_history(
    files: Sequence[HistoryFile],
    settings: Settings,
    *,
    target: str | None = None,
    duckdb_path: Path | None = None,
    stage: SnowflakeTarget | None = None,
    on_files: OnFiles | None = None,
) -> LoadReport:
    """Load ``files`` into the warehouse of the dbt target ``target`` (default: ``dbt.target``): COPY INTO on
    Snowflake (through ``stage``, default: the configured one), else the DuckDB file (``duckdb_path``,
    default: the configured one)."""
    from omnistream.warehouse.dbt import adapter, check_target, default_duckdb_path

    target = check_target(target or settings.dbt.target)
    if adapter(target) == "snowflake":
        from omnistream.warehouse.snowflake import connect

        with connect(settings.snowflake) as con:
            return load_history_snowflake(
                con.cursor(), stage or configured_stage(settings), files, settings.gcs, on_files
            )
    return load_history_into(duckdb_path or default_duckdb_path(settings), files, settings.gcs, on_files)
