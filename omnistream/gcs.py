"""Google Cloud Storage for the history files: a client for the settings and an idempotent upload.

The client is the real ``google-cloud-storage`` one. Pointed at the local emulator (any endpoint that is not
Google's own) it sends anonymous credentials; pointed at ``https://storage.googleapis.com`` it uses the
application-default credentials.

An upload compares each local file's MD5 and CRC32C with the object already in the bucket (one listing,
no download) and sends only the files that are new or changed, with both checksums declared so the server
rejects a corrupted transfer. Writes are conditional on the generation seen in the listing, which makes them
safe to retry and refuses to overwrite an object someone else changed in between.
"""

from __future__ import annotations

import base64
import hashlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import google_crc32c
from google.api_core.exceptions import Conflict
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

from omnistream.settings import GcsSettings

logger = logging.getLogger(__name__)

DEFAULT_PREFIX = "history/"
CHUNK = 1 << 20
CONTENT_TYPES = {".parquet": "application/vnd.apache.parquet", ".json": "application/json"}


@dataclass(frozen=True)
class UploadReport:
    """What an upload did: files sent, files already there unchanged, bytes sent."""

    uploaded: int
    skipped: int
    bytes_uploaded: int


@dataclass(frozen=True)
class Checksums:
    """Base64 digests, as the GCS JSON API reports them (``md5Hash``, ``crc32c``)."""

    md5: str
    crc32c: str
    size: int


def uses_emulator(gcs: GcsSettings) -> bool:
    """True unless the endpoint is Google's own storage API."""
    host = urlsplit(gcs.endpoint).hostname or ""
    return not host.endswith("googleapis.com")


def storage_client(gcs: GcsSettings) -> storage.Client:
    """A storage client for ``gcs``: anonymous against the emulator, default credentials against Google."""
    options = {"api_endpoint": gcs.endpoint}
    if uses_emulator(gcs):
        return storage.Client(project=gcs.project, credentials=AnonymousCredentials(), client_options=options)
    return storage.Client(project=gcs.project, client_options=options)


def ensure_bucket(client: storage.Client, name: str) -> storage.Bucket:
    """The bucket ``name``, created if it does not exist yet."""
    bucket = client.lookup_bucket(name)
    if bucket is not None:
        return bucket
    try:
        bucket = client.create_bucket(name)
        logger.info("created bucket %s", name)
    except Conflict:  # created by someone else since the lookup
        bucket = client.bucket(name)
    return bucket


def file_checksums(path: Path) -> Checksums:
    """MD5 and CRC32C of a local file, read once in chunks."""
    md5 = hashlib.md5(usedforsecurity=False)
    crc = google_crc32c.Checksum()
    size = 0
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            md5.update(chunk)
            crc.update(chunk)
            size += len(chunk)
    return Checksums(
        md5=base64.b64encode(md5.digest()).decode("ascii"),
        crc32c=base64.b64encode(crc.digest()).decode("ascii"),
        size=size,
    )


def object_name(root: Path, path: Path, prefix: str) -> str:
    """The object name for ``path``: its path relative to ``root``, under ``prefix``."""
    return prefix + path.relative_to(root).as_posix()


def upload_tree(
    bucket: storage.Bucket,
    root: Path,
    *,
    prefix: str = DEFAULT_PREFIX,
    pattern: str = "**/*.parquet",
    on_file: Callable[[Path, bool], None] | None = None,
) -> UploadReport:
    """Upload the files under ``root`` matching ``pattern`` to ``bucket`` as ``prefix + relative path``.

    Files whose object already exists with the same size, MD5 and CRC32C are skipped. ``on_file(path, sent)``
    is called after each file.
    """
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    remote = {blob.name: blob for blob in bucket.client.list_blobs(bucket, prefix=prefix)}
    uploaded = skipped = sent_bytes = 0
    for path in _files(root, pattern):
        name = object_name(root, path, prefix)
        local = file_checksums(path)
        existing = remote.get(name)
        send = existing is None or not _same(existing, local)
        if send:
            _upload(bucket, path, name, local, generation=existing.generation if existing else 0)
            uploaded += 1
            sent_bytes += local.size
        else:
            skipped += 1
            logger.debug("unchanged: gs://%s/%s", bucket.name, name)
        if on_file is not None:
            on_file(path, send)
    logger.info(
        "gs://%s/%s: %d uploaded (%d bytes), %d unchanged", bucket.name, prefix, uploaded, sent_bytes, skipped
    )
    return UploadReport(uploaded=uploaded, skipped=skipped, bytes_uploaded=sent_bytes)


def _files(root: Path, pattern: str) -> Iterator[Path]:
    return (path for path in sorted(root.glob(pattern)) if path.is_file())


def _same(blob: storage.Blob, local: Checksums) -> bool:
    """Same size and every checksum the server reports equal (a composite object has no MD5)."""
    reported = [(blob.md5_hash, local.md5), (blob.crc32c, local.crc32c)]
    known = [(remote, mine) for remote, mine in reported if remote]
    return blob.size == local.size and bool(known) and all(remote == mine for remote, mine in known)


def _upload(bucket: storage.Bucket, path: Path, name: str, local: Checksums, generation: int | None) -> None:
    blob = bucket.blob(name)
    blob.md5_hash = local.md5  # declared, so the server verifies what it received
    blob.crc32c = local.crc32c
    blob.upload_from_filename(
        str(path),
        content_type=CONTENT_TYPES.get(path.suffix, "application/octet-stream"),
        if_generation_match=generation,
    )
    logger.debug("uploaded %s to gs://%s/%s", path, bucket.name, name)
