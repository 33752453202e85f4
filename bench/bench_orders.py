"""Benchmark the online-order simulator: new orders (with their lifecycle updates) per second, sustained.

    .venv/bin/python bench/bench_orders.py --count 5000

Runs unthrottled against the local stack's PostgreSQL (started if needed), in a schema of its own that is
dropped afterwards, as the application role, one transaction per operation as the simulator always does.
Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import time

import psycopg
from psycopg import sql

from omnistream.settings import get_settings
from omnistream.stack.manager import Stack
from simulators.order_plan import OrderPlanner
from simulators.orders import OrdersConfig, run_orders
from simulators.reference import build_reference


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=5000, help="New orders to write.")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()

    settings = get_settings()
    Stack(settings).up(["postgres"])
    pg = settings.postgres
    schema = f"bench_orders_{os.getpid()}"
    build_reference(args.seed)  # generated once per process; not part of the figures

    started = time.perf_counter()
    operations = sum(len(batch) for batch in OrderPlanner(args.seed).operations(args.count))
    plan_s = time.perf_counter() - started
    print(
        f"plan only           {plan_s:8.2f} s  {args.count / plan_s:10,.0f} orders/s  "
        f"({operations:,} operations)"
    )

    with psycopg.connect(pg.dsn(), autocommit=True) as admin:
        admin.execute(
            sql.SQL("create schema {} authorization {}").format(
                sql.Identifier(schema), sql.Identifier(pg.app_user)
            )
        )
    try:
        with psycopg.connect(pg.app_dsn()) as conn:
            run = run_orders(conn, OrdersConfig(seed=args.seed, rate=0, count=args.count, schema=schema))
        done = sum(run.operations.values())
        print(
            f"into PostgreSQL     {run.seconds:8.2f} s  {args.count / run.seconds:10,.0f} orders/s  "
            f"{done / run.seconds:8,.0f} transactions/s  ({done:,} operations: "
            + ", ".join(f"{kind} {n:,}" for kind, n in run.operations.items())
            + f") at {pg.host}:{pg.port}"
        )
    finally:
        with psycopg.connect(pg.dsn(), autocommit=True) as admin:
            admin.execute(sql.SQL("drop schema {} cascade").format(sql.Identifier(schema)))


if __name__ == "__main__":
    main()
