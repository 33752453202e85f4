"""Benchmark the history simulator: lines generated and written per second, then upload times.

    .venv/bin/python bench/bench_history.py --rows 6000000

Uploads go to a GCS emulator this script starts on a free port (``--use-settings`` uploads to the endpoint
and bucket of the settings instead). Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime
from pathlib import Path

import httpx

from omnistream.gcs import ensure_bucket, storage_client, upload_tree
from omnistream.settings import GcsSettings, get_settings
from simulators.history import generate_history
from simulators.reference import build_reference


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=6_000_000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--end-date", type=date.fromisoformat, default=datetime.now(UTC).date())
    parser.add_argument("--out", type=Path, default=None, help="Output directory (default: a temporary one).")
    parser.add_argument("--use-settings", action="store_true", help="Upload to the configured GCS endpoint.")
    args = parser.parse_args()

    out = args.out or Path(tempfile.mkdtemp(prefix="bench-history-"))
    try:
        started = time.perf_counter()
        build_reference(args.seed)
        reference_s = time.perf_counter() - started

        started = time.perf_counter()
        result = generate_history(out, seed=args.seed, rows=args.rows, end=args.end_date)
        generate_s = time.perf_counter() - started
        size = sum(path.stat().st_size for path in result.files)
        print(f"reference pools          {reference_s:8.2f} s")
        print(
            f"generated and written    {generate_s:8.2f} s  {result.rows / generate_s:12,.0f} rows/s  "
            f"({result.rows:,} lines, {result.orders:,} orders, {len(result.files)} files, "
            f"{size / 1e6:,.1f} MB, manifest included)"
        )

        with _gcs(args.use_settings) as gcs:
            bucket_name = gcs.bucket if args.use_settings else f"bench-history-{uuid.uuid4().hex[:8]}"
            bucket = ensure_bucket(storage_client(gcs), bucket_name)
            for label in ("upload (all new)", "upload again (unchanged)"):
                started = time.perf_counter()
                report = upload_tree(bucket, result.root)
                upload_s = time.perf_counter() - started
                rate = (
                    f"{report.bytes_uploaded / 1e6 / upload_s:12,.1f} MB/s"
                    if report.bytes_uploaded
                    else " " * 17
                )
                print(
                    f"{label:<24} {upload_s:8.2f} s  {rate}  "
                    f"({report.uploaded} sent, {report.skipped} unchanged) to {gcs.endpoint}"
                )
    finally:
        if args.out is None:
            shutil.rmtree(out, ignore_errors=True)


@contextmanager
def _gcs(use_settings: bool) -> Iterator[GcsSettings]:
    """The configured GCS, or a private in-memory emulator for the length of the benchmark."""
    if use_settings:
        yield get_settings().gcs
        return
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    emulator = Path(sys.executable).parent / "gcp-storage-emulator"
    command = [str(emulator), "start", "--host", "127.0.0.1", "--port", str(port), "--in-memory"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        gcs = GcsSettings(host="127.0.0.1", port=port)
        _wait_until_up(gcs.endpoint)
        yield gcs
    finally:
        process.terminate()
        process.wait(timeout=10)


def _wait_until_up(endpoint: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            httpx.get(f"{endpoint}/storage/v1/b", timeout=1.0)
            return
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


if __name__ == "__main__":
    main()
