"""How fast the master-data API serves records: full customer walks over real HTTP, per page size.

Run: ``.venv/bin/python bench/bench_api.py [--walks 3]``. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import threading
import time
from pathlib import Path

import httpx
from werkzeug.serving import make_server

from simulators.api import create_app
from simulators.masterdata import write_reference

TOKEN = "bench-token"


def walk(client: httpx.Client, page_size: int) -> tuple[int, int]:
    """One full walk of /api/v1/customers; returns (records, pages)."""
    records = pages = 0
    response = client.get("/api/v1/customers", params={"page_size": page_size})
    while True:
        response.raise_for_status()
        body = response.json()
        records += body["count"]
        pages += 1
        if body["next"] is None:
            return records, pages
        response = client.get(body["next"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--walks", type=int, default=3, help="full walks per page size")
    args = parser.parse_args()
    logging.getLogger("werkzeug").setLevel(logging.WARNING)

    with tempfile.TemporaryDirectory() as tmp:
        write_reference(Path(tmp), 42)
        server = make_server("127.0.0.1", 0, create_app(Path(tmp), TOKEN), threaded=True)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        url = f"http://127.0.0.1:{server.server_port}"
        try:
            with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
                print(f"{'page_size':>9} {'records/s':>10} {'pages/s':>8} {'ms/page':>8}")
                for page_size in (100, 500, 1000):
                    started = time.perf_counter()
                    records = pages = 0
                    for _ in range(args.walks):
                        r, p = walk(client, page_size)
                        records, pages = records + r, pages + p
                    elapsed = time.perf_counter() - started
                    print(
                        f"{page_size:>9} {records / elapsed:>10,.0f} {pages / elapsed:>8.1f} "
                        f"{1000 * elapsed / pages:>8.1f}"
                    )
        finally:
            server.shutdown()
            server.server_close()


if __name__ == "__main__":
    main()
