"""How fast the master-data producer snapshots: records per second for a full snapshot of every entity.

The API is the simulator in a process of its own (as in production, it does not share the producer's
interpreter), serving the reference data (3,000 customers, 400 products, 12 stores); Kafka and the registry
are the local stack's. Three kinds of snapshot, each into fresh topics:

- first: empty topics, every entity published;
- unchanged: a re-run with nothing changed (reads the topics, walks the API, publishes nothing);
- republish: every entity published again over a full topic (``--republish``).

Run: ``.venv/bin/python bench/bench_masterdata_producer.py [--rounds 3] [--page-size 500]``.
Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

from omnistream.kafka.clients import admin
from omnistream.settings import Settings, get_settings
from producers.masterdata.client import ApiClient
from producers.masterdata.entities import ENTITY_SPECS, topic_names
from producers.masterdata.producer import MasterDataProducer, SnapshotOptions, SnapshotReport

TOKEN = "bench-token"
ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_api(data_dir: Path, port: int) -> subprocess.Popen[bytes]:
    """The simulator in its own process; returns once it answers /health."""
    env = {**os.environ, "OMNISTREAM_API__TOKEN": TOKEN}
    process = subprocess.Popen(
        [sys.executable, "-m", "omnistream", "simulate", "api", "--out", str(data_dir), "--port", str(port)],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        if process.poll() is not None:
            raise RuntimeError("the API simulator exited before answering")
        time.sleep(0.2)
    process.kill()
    raise RuntimeError("the API simulator did not answer within 120 s")


def timed(producer: MasterDataProducer) -> tuple[SnapshotReport, float]:
    started = time.perf_counter()
    report = producer.snapshot(list(ENTITY_SPECS.values()))
    return report, time.perf_counter() - started


def drop_topics(settings: Settings, prefix: str) -> None:
    client = admin(settings)
    mine = [t for t in client.list_topics(timeout=30).topics if t.startswith(prefix)]
    if mine:
        for future in client.delete_topics(mine, operation_timeout=30).values():
            future.result(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3, help="snapshots of each kind")
    parser.add_argument("--page-size", type=int, default=500)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    settings = get_settings()
    port = free_port()

    with tempfile.TemporaryDirectory() as tmp:
        api = start_api(Path(tmp), port)
        prefixes: list[str] = []
        try:
            print(f"{'snapshot':<10} {'records':>8} {'published':>9} {'seconds':>8} {'records/s':>10}")
            for _ in range(args.rounds):
                prefix = f"bench.{uuid.uuid4().hex[:8]}."
                prefixes.append(prefix)
                options = SnapshotOptions(page_size=args.page_size, topics=topic_names(prefix))
                with ApiClient(f"http://127.0.0.1:{port}", TOKEN) as client:
                    with MasterDataProducer(settings, client, options) as producer:
                        producer.prepare(list(ENTITY_SPECS.values()))  # topics and schemas: not timed
                        runs = [("first", *timed(producer)), ("unchanged", *timed(producer))]
                    republishing = SnapshotOptions(
                        page_size=args.page_size, topics=topic_names(prefix), republish=True
                    )
                    with MasterDataProducer(settings, client, republishing) as producer:
                        producer.prepare(list(ENTITY_SPECS.values()))
                        runs.append(("republish", *timed(producer)))
                for kind, report, seconds in runs:
                    records = sum(e.fetched for e in report.entities)
                    published = sum(e.published for e in report.entities)
                    rate = records / seconds
                    print(f"{kind:<10} {records:>8,} {published:>9,} {seconds:>8.2f} {rate:>10,.0f}")
        finally:
            api.terminate()
            api.wait(timeout=30)
            for prefix in prefixes:
                drop_topics(settings, prefix)


if __name__ == "__main__":
    main()
