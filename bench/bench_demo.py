"""Wall time and peak memory of the demo: `omnistream demo --scale full` (or --scale small).

Memory is the machine's memory in use (MemTotal - MemAvailable) above what was in use before the demo
started, sampled every second: the stack's servers, the simulators, producers, sink and dbt together.
Run it with no stack up, so the stack's start is counted too.

    .venv/bin/python bench/bench_demo.py [--scale full]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path


def memory_in_use_mib() -> float:
    fields = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    kib = int(fields["MemTotal"].split()[0]) - int(fields["MemAvailable"].split()[0])
    return kib / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scale", default="full")
    args = parser.parse_args()
    baseline = peak = memory_in_use_mib()
    began = time.monotonic()
    demo = subprocess.Popen(
        [sys.executable, "-m", "omnistream", "demo", "--scale", args.scale],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    while demo.poll() is None:
        peak = max(peak, memory_in_use_mib())
        time.sleep(1)
    wall = time.monotonic() - began
    output = demo.stdout.read() if demo.stdout else ""
    print(output[-4000:])
    print(f"demo --scale {args.scale}: exit {demo.returncode}, wall time {wall:.0f} s")
    print(f"peak memory above the idle machine: {peak - baseline:,.0f} MiB (baseline {baseline:,.0f} MiB)")


if __name__ == "__main__":
    main()
