"""Where landing files live: a local directory or a GCS bucket, behind one small interface.

A commit is atomic and never replaces anything. Locally the file is written under a temporary dot-name,
fsynced, then hard-linked to its final name (which, unlike ``rename``, fails if the name exists) and the
temporary name unlinked; a crash leaves at most a temporary file, which recovery removes. In GCS an object
upload is atomic by itself and is made conditional on the object not existing (``ifGenerationMatch=0``).

Before committing, the partition is listed again and a file that would overlap one already there is
refused: two sinks that both believe they own a partition (a zombie after a rebalance) cannot both land
the same offsets. A merged file (:mod:`omnistream.sink.compaction`) is the one exception: it is committed
the same atomic way over a range that the live files it replaces tile exactly, and covers them until
they are deleted.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import itertools
import logging
import os
import uuid
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Protocol

import pyarrow as pa
import pyarrow.parquet as pq

from omnistream.errors import OmnistreamError
from omnistream.settings import Settings
from omnistream.sink.layout import (
    LandedFile,
    is_temp_name,
    live_files,
    parse_file_name,
    partition_dir,
    temp_name,
)

if TYPE_CHECKING:  # the GCS client takes seconds to import: only a sink landing in a bucket loads it
    from google.cloud import storage

log = logging.getLogger(__name__)

GCS_PREFIX = "landing"
PARQUET_CONTENT_TYPE = "application/vnd.apache.parquet"
COMPRESSION = "zstd"


class OverlapError(OmnistreamError):
    """A file would overlap offsets another committed file already accounts for."""


class LandingStore(Protocol):
    """The landing zone: committed files per topic partition."""

    @property
    def root(self) -> str:
        """Where the zone is, for messages (a directory or ``gs://bucket/landing``)."""
        ...

    def list_files(self, topic: str, partition: int) -> list[LandedFile]:
        """The committed files of one partition, in offset order."""
        ...

    def list_topic(self, topic: str) -> list[LandedFile]:
        """The committed files of every partition of a topic."""
        ...

    def remove_temporaries(self, topic: str, partition: int) -> int:
        """Delete files a crashed writer left half-written; returns how many."""
        ...

    def commit(self, file: LandedFile, table: pa.Table) -> None:
        """Write ``table`` as ``file`` atomically; OverlapError if it overlaps a committed file."""
        ...

    def commit_merged(self, file: LandedFile, table: pa.Table, parts: list[LandedFile]) -> None:
        """Write ``table`` as ``file``, which replaces ``parts``: OverlapError unless they tile it, live."""
        ...

    def committed_at(self, file: LandedFile) -> float | None:
        """When ``file`` was committed (unix seconds), None if it is gone."""
        ...

    def delete(self, file: LandedFile) -> None: ...

    def read(self, file: LandedFile) -> pa.Table: ...

    def uri(self, file: LandedFile) -> str: ...


def _clash(existing: list[LandedFile], file: LandedFile) -> LandedFile | None:
    """A committed file that reaches ``file``'s start or beyond. Landing only ever appends at the end."""
    return next((f for f in existing if f.end >= file.start), None)


def _check_merge(existing: list[LandedFile], file: LandedFile, parts: list[LandedFile]) -> None:
    """OverlapError unless ``parts`` are exactly the live files within ``file``'s range, tiling it.

    Anything else (a part already replaced, a file straddling the range's edges, a gap) means another
    writer changed the partition since the merge was planned, and the merge must not land.
    """
    live = live_files(existing)
    inside = [f for f in live if f.end >= file.start and f.start <= file.end]
    tiles = bool(parts) and parts[0].start == file.start and parts[-1].end == file.end
    tiles = tiles and all(b.start == a.end + 1 for a, b in itertools.pairwise(parts))
    if inside != sorted(parts) or not tiles:
        raise OverlapError(f"{file.name} does not replace exactly the live files {[f.name for f in parts]}")


def parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression=COMPRESSION)
    return bytes(sink.getvalue().to_pybytes())


class LocalStore:
    """Landing files in a local directory."""

    def __init__(self, root: Path) -> None:
        self.path = root

    @property
    def root(self) -> str:
        return str(self.path)

    def _dir(self, topic: str, partition: int) -> Path:
        return self.path / partition_dir(topic, partition)

    def list_files(self, topic: str, partition: int) -> list[LandedFile]:
        try:
            entries = list(os.scandir(self._dir(topic, partition)))
        except FileNotFoundError:
            return []
        files = [f for e in entries if (f := parse_file_name(e.name)) is not None]
        return sorted(f for f in files if f.topic == topic and f.partition == partition)

    def list_topic(self, topic: str) -> list[LandedFile]:
        base = self.path / topic
        if not base.is_dir():
            return []
        files: list[LandedFile] = []
        for sub in base.glob("partition=*"):
            suffix = sub.name.removeprefix("partition=")
            if suffix.isdigit():
                files.extend(self.list_files(topic, int(suffix)))
        return sorted(files)

    def remove_temporaries(self, topic: str, partition: int) -> int:
        removed = 0
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self._dir(topic, partition)):
                if is_temp_name(entry.name):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)
                        removed += 1
        if removed:
            log.warning("removed %d unfinished file(s) from %s", removed, self._dir(topic, partition))
        return removed

    def commit(self, file: LandedFile, table: pa.Table) -> None:
        directory = self._dir(file.topic, file.partition)
        directory.mkdir(parents=True, exist_ok=True)
        if (clash := _clash(self.list_files(file.topic, file.partition), file)) is not None:
            raise OverlapError(f"{file.name} would overlap {clash.name} in {directory}")
        self._write(file, table)

    def commit_merged(self, file: LandedFile, table: pa.Table, parts: list[LandedFile]) -> None:
        _check_merge(self.list_files(file.topic, file.partition), file, parts)
        self._write(file, table)

    def committed_at(self, file: LandedFile) -> float | None:
        try:
            return (self._dir(file.topic, file.partition) / file.name).stat().st_mtime
        except FileNotFoundError:
            return None

    def _write(self, file: LandedFile, table: pa.Table) -> None:
        directory = self._dir(file.topic, file.partition)
        final = directory / file.name
        tmp = directory / temp_name(file.name, f"{os.getpid()}-{uuid.uuid4().hex[:8]}")
        try:
            with open(tmp, "wb") as fh:
                pq.write_table(table, fh, compression=COMPRESSION)
                fh.flush()
                os.fsync(fh.fileno())
            self._publish(tmp, final)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        _fsync_dir(directory)

    @staticmethod
    def _publish(tmp: Path, final: Path) -> None:
        """Give ``tmp`` its final name, refusing to replace an existing file."""
        try:
            os.link(tmp, final)
        except FileExistsError as exc:
            raise OverlapError(f"{final} already exists") from exc
        except OSError as exc:  # a filesystem without hard links: rename, after the overlap check above
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EXDEV, errno.EMLINK):
                raise
            os.replace(tmp, final)

    def delete(self, file: LandedFile) -> None:
        path = self._dir(file.topic, file.partition) / file.name
        path.unlink(missing_ok=True)
        _fsync_dir(path.parent)

    def read(self, file: LandedFile) -> pa.Table:
        return pq.read_table(self._dir(file.topic, file.partition) / file.name)

    def uri(self, file: LandedFile) -> str:
        return str(self._dir(file.topic, file.partition) / file.name)


def _fsync_dir(directory: Path) -> None:
    """Make a rename or unlink in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class GcsStore:
    """Landing files as objects ``landing/<topic>/partition=<p>/<name>`` in a GCS bucket."""

    def __init__(self, bucket: storage.Bucket, prefix: str = GCS_PREFIX) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")

    @property
    def root(self) -> str:
        return f"gs://{self.bucket.name}/{self.prefix}"

    def _object(self, file: LandedFile) -> str:
        return f"{self.prefix}/{file.path}"

    def _list(self, prefix: str) -> list[LandedFile]:
        blobs = self.bucket.client.list_blobs(self.bucket, prefix=prefix)
        files = [f for blob in blobs if (f := parse_file_name(blob.name.rsplit("/", 1)[-1])) is not None]
        return sorted(files)

    def list_files(self, topic: str, partition: int) -> list[LandedFile]:
        files = self._list(f"{self.prefix}/{partition_dir(topic, partition)}/")
        return [f for f in files if f.topic == topic and f.partition == partition]

    def list_topic(self, topic: str) -> list[LandedFile]:
        return [f for f in self._list(f"{self.prefix}/{topic}/") if f.topic == topic]

    def remove_temporaries(self, topic: str, partition: int) -> int:
        return 0  # an object upload is atomic: there is nothing half-written to remove

    def commit(self, file: LandedFile, table: pa.Table) -> None:
        if (clash := _clash(self.list_files(file.topic, file.partition), file)) is not None:
            raise OverlapError(f"{file.name} would overlap {clash.name} in {self.root}")
        self._upload(file, table)

    def commit_merged(self, file: LandedFile, table: pa.Table, parts: list[LandedFile]) -> None:
        _check_merge(self.list_files(file.topic, file.partition), file, parts)
        self._upload(file, table)

    def committed_at(self, file: LandedFile) -> float | None:
        blob = self.bucket.get_blob(self._object(file))
        return None if blob is None or blob.time_created is None else blob.time_created.timestamp()

    def _upload(self, file: LandedFile, table: pa.Table) -> None:
        data = parquet_bytes(table)
        blob = self.bucket.blob(self._object(file))
        blob.md5_hash = _b64_md5(data)
        try:
            blob.upload_from_string(data, content_type=PARQUET_CONTENT_TYPE, if_generation_match=0)
        except _gcs_errors().PreconditionFailed as exc:
            # A retried upload whose first attempt succeeded finds its own object: same bytes, done.
            existing = self.bucket.get_blob(self._object(file))
            if existing is not None and existing.md5_hash == _b64_md5(data):
                return
            raise OverlapError(f"{self.uri(file)} already exists") from exc

    def delete(self, file: LandedFile) -> None:
        with contextlib.suppress(_gcs_errors().NotFound):
            self.bucket.blob(self._object(file)).delete()

    def read(self, file: LandedFile) -> pa.Table:
        try:
            data = self.bucket.blob(self._object(file)).download_as_bytes()
        except _gcs_errors().NotFound as exc:
            raise FileNotFoundError(self.uri(file)) from exc
        return pq.read_table(pa.BufferReader(data))

    def uri(self, file: LandedFile) -> str:
        return f"gs://{self.bucket.name}/{self._object(file)}"


def _gcs_errors() -> ModuleType:
    """google.api_core.exceptions, imported when a GCS store first needs it."""
    from google.api_core import exceptions

    return exceptions


def _b64_md5(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


def landing_dir(settings: Settings) -> Path:
    """The local landing directory: ``settings.landing.dir`` or ``<state dir>/landing``."""
    return settings.landing.dir or settings.stack.state_dir / "landing"


def open_store(
    settings: Settings, *, directory: Path | None = None, bucket: str | None = None
) -> LandingStore:
    """The configured landing zone: the GCS bucket if one is set, else the local directory."""
    bucket_name = settings.landing.bucket if bucket is None else bucket
    if bucket_name:
        from omnistream.gcs import ensure_bucket, storage_client

        return GcsStore(ensure_bucket(storage_client(settings.gcs), bucket_name))
    return LocalStore(directory or landing_dir(settings))
