"""Local stack start-up times and memory, measured on a second stack beside any running one.

Prints: `stack up` from nothing (cluster creation, KRaft format, registry and Connect boot), `stack up`
again with the data in place (a restart), and the resident memory of every service once up.
Downloads are shared with the default state directory, so run `omnistream stack install` first.

    PYTHONPATH=. .venv/bin/python bench/bench_stack.py [--port-offset 400]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from omnistream.settings import get_settings
from omnistream.stack.manager import Stack
from tests.support.second_stack import second_stack_settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port-offset", type=int, default=400)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="omnistream-bench-") as tmp:
        stack = Stack(second_stack_settings(get_settings(), Path(tmp) / "state", args.port_offset))
        try:
            began = time.monotonic()
            stack.up(progress=lambda _: None)
            cold = time.monotonic() - began
            rows = [(s.name, s.rss_kib) for s in stack.status()]
            stack.down()
            began = time.monotonic()
            stack.up(progress=lambda _: None)
            restart = time.monotonic() - began
        finally:
            stack.down(purge=True)
    print(f"stack up, new data dirs:      {cold:6.1f} s")
    print(f"stack up, existing data dirs: {restart:6.1f} s")
    for name, rss in rows:
        print(f"  {name:<10} {rss / 1024:8.0f} MiB resident")
    print(f"  {'total':<10} {sum(r for _, r in rows) / 1024:8.0f} MiB resident")


if __name__ == "__main__":
    main()
