"""Ten years of order lines for both channels, as Hive-partitioned Parquet with a ground-truth manifest.

Everything is sampled with numpy from the reference pools of ``build_reference(seed)`` (the same store ids,
SKUs and customer ids as every other source) and assembled into pyarrow tables one month at a time, so
millions of lines take seconds. Money never passes through float: prices, line totals and taxes are integer
cents in int64 arrays, which become ``decimal128(12, 2)`` by using the cents as the decimal's unscaled value.

The shape is meant to look like a retailer's: volume grows year on year and the online share with it;
weekdays and months weigh differently per channel (stores peak on Saturday and mostly shut on Sunday);
Black Friday peaks, stores close on Christmas and New Year's Day. A store sells only once it has opened,
a product only once it exists and a customer orders only once signed up (never fewer than the oldest
``MIN_POOL`` of each, so a window that starts before the reference data still sells something). In-store
customers are often walk-ins (no customer id). A basket may repeat a SKU on two lines, as a till does when
an item is scanned twice.

Layout under the output directory (object names in the bucket mirror ``history/…``)::

    history/year=YYYY/month=MM/part-0.parquet
    manifest.json

Orders are cut at the end of a (channel, day), so every order lies in one UTC day and one partition.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from omnistream.manifest import CHANNELS, Manifest, Totals
from simulators.reference import ONLINE_TAX_RATE, Reference, build_reference

logger = logging.getLogger(__name__)

Ints = npt.NDArray[np.int64]
Floats = npt.NDArray[np.float64]

HISTORY_YEARS = 10
DATASET_DIR = "history"
PART_FILE = "part-0.parquet"
MANIFEST_FILE = "manifest.json"

MONEY = pa.decimal128(12, 2)
SCHEMA = pa.schema(
    [
        pa.field("order_id", pa.string(), nullable=False),
        pa.field("line_number", pa.int32(), nullable=False),
        pa.field("channel", pa.string(), nullable=False),
        pa.field("store_id", pa.string()),
        pa.field("customer_id", pa.int64()),
        pa.field("sku", pa.string(), nullable=False),
        pa.field("quantity", pa.int32(), nullable=False),
        pa.field("unit_price", MONEY, nullable=False),
        pa.field("line_total", MONEY, nullable=False),
        pa.field("tax", MONEY, nullable=False),
        pa.field("ordered_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ]
)

ONLINE, IN_STORE = CHANNELS.index("online"), CHANNELS.index("in_store")
ORDER_PREFIXES = {ONLINE: "H-O-", IN_STORE: "H-S-"}
ORDER_DIGITS = 9

# --- the shape of the business ------------------------------------------------------------------------
ANNUAL_GROWTH = 1.15
ONLINE_SHARE = (0.10, 0.45)  # at the start and at the end of the window
DAILY_NOISE = 0.12  # sigma of a lognormal factor per (day, channel)
# Monday first; rows are channels in CHANNELS order.
WEEKDAY_FACTORS = np.array(
    [
        [1.10, 1.00, 0.98, 0.97, 0.92, 0.88, 1.15],
        [0.80, 0.85, 0.90, 1.00, 1.20, 1.55, 0.30],
    ]
)
MONTH_FACTORS = np.array([0.85, 0.78, 0.90, 0.95, 1.00, 0.97, 0.95, 0.92, 0.96, 1.02, 1.18, 1.50])
# Relative orders per UTC hour: online all day with an evening peak; stores open 08:00-20:00 UTC.
HOUR_WEIGHTS = np.array(
    [
        [2, 1, 1, 1, 1, 2, 3, 5, 6, 6, 6, 7, 8, 7, 6, 6, 7, 8, 10, 12, 12, 10, 7, 4],
        [0, 0, 0, 0, 0, 0, 0, 0, 4, 6, 8, 9, 10, 10, 9, 9, 10, 11, 9, 6, 0, 0, 0, 0],
    ],
    dtype=np.float64,
)
LINES_P = 0.45  # lines per order: 1 + geometric, mean about 2.2
MAX_LINES = 12
QUANTITY_P = 0.75  # quantity per line: geometric, mostly 1
MAX_QUANTITY = 12
WALK_IN_SHARE = 0.6  # in-store orders without a known customer
MIN_POOL = 25

TAX_SCALE = 10_000  # tax rates are exact to four decimals
US_PER_DAY = 86_400_000_000
US_PER_SECOND = 1_000_000


@dataclass(frozen=True)
class HistoryResult:
    """What one generation wrote."""

    root: Path  # the dataset directory, ``<out>/history``
    files: tuple[Path, ...]
    rows: int
    orders: int
    start: date  # first day, inclusive
    end: date  # end day, exclusive
    manifest_path: Path


@dataclass(frozen=True)
class _Pools:
    """Reference data as numpy arrays; products and customers sorted by the day they appeared."""

    store_ids: tuple[str, ...]
    store_opened: Ints  # days since 1970-01-01
    store_size: Floats
    store_tax: Ints  # rate * TAX_SCALE
    online_tax: int
    skus: pa.Array
    price_cents: Ints
    product_created: Ints
    product_cumw: Floats
    customer_ids: Ints
    customer_created: Ints
    customer_cumw: Floats


def history_window(end: date, years: int = HISTORY_YEARS) -> tuple[date, date]:
    """The days ``[start, end)`` that ``years`` of history cover, ending the day before ``end``."""
    try:
        start = end.replace(year=end.year - years)
    except ValueError:  # 29 February
        start = end.replace(year=end.year - years, day=28)
    return start, end


def generate_history(
    out: Path,
    *,
    seed: int,
    rows: int,
    end: date,
    on_month: Callable[[int, int], None] | None = None,
) -> HistoryResult:
    """Write exactly ``rows`` order lines for the ten years before ``end`` under ``out``, plus the manifest.

    Deterministic: the same ``seed``, ``rows`` and ``end`` give byte-identical files. Partitions in
    ``out/history`` that this run did not write (left by an earlier run) are removed.
    ``on_month(done, total)`` reports progress.
    """
    if rows < 1:
        raise ValueError(f"rows must be at least 1, not {rows}")
    start, end = history_window(end)
    ref = build_reference(seed)
    pools = _pools(ref, np.random.default_rng([seed, 1]))
    days = np.arange(_day_number(start), _day_number(end), dtype=np.int64)
    weights = _day_weights(days, pools, np.random.default_rng([seed, 2]))
    lines = _apportion(weights.T.ravel(), rows).reshape(len(CHANNELS), len(days)).T  # (day, channel)

    root = out / DATASET_DIR
    manifest = Manifest(source="history", seed=seed)
    month_of_day = days.astype("datetime64[D]").astype("datetime64[M]").astype(np.int64)
    bounds = np.flatnonzero(np.diff(month_of_day)) + 1
    spans = list(zip(np.r_[0, bounds], np.r_[bounds, len(days)], strict=True))
    next_order = [0] * len(CHANNELS)
    files: list[Path] = []
    # One writer thread: Parquet encoding (which releases the GIL) overlaps the next month's sampling.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="history-writer") as writer:
        pending: Future[None] | None = None
        for done, (lo, hi) in enumerate(spans, start=1):
            month = int(month_of_day[lo])
            rng = np.random.default_rng([seed, 3, month])
            table, order_counts = _month_table(days[lo:hi], lines[lo:hi], pools, next_order, rng, manifest)
            for channel, count in enumerate(order_counts):
                next_order[channel] += count
            if pending is not None:
                pending.result()  # at most one table waits, and a write error surfaces here
                pending = None
            if table.num_rows:
                year, month0 = divmod(month, 12)
                path = root / f"year={1970 + year:04d}" / f"month={month0 + 1:02d}" / PART_FILE
                pending = writer.submit(_write_parquet, table, path)
                files.append(path)
            if on_month is not None:
                on_month(done, len(spans))
        if pending is not None:
            pending.result()
    _remove_stale(root, set(files))

    manifest.facts.update(
        {
            "start": start.isoformat(),
            "end_exclusive": end.isoformat(),
            "rows": rows,
            "orders": dict(zip(CHANNELS, next_order, strict=True)),
            "files": len(files),
            "dataset": DATASET_DIR,
        }
    )
    manifest_path = manifest.write(out / MANIFEST_FILE)
    logger.info("history: %d lines, %d orders in %d files under %s", rows, sum(next_order), len(files), root)
    return HistoryResult(root, tuple(files), rows, sum(next_order), start, end, manifest_path)


# --- reference pools and the calendar ------------------------------------------------------------------


def _day_number(day: date) -> int:
    return (day - date(1970, 1, 1)).days


def _scaled_rate(rate: Decimal) -> int:
    scaled = rate * TAX_SCALE
    if scaled != scaled.to_integral_value():
        raise ValueError(f"tax rate {rate} has more than four decimals")
    return int(scaled)


def _pools(ref: Reference, rng: np.random.Generator) -> _Pools:
    product_created = np.array([_day_number(p.created_at.date()) for p in ref.products], dtype=np.int64)
    customer_created = np.array([_day_number(c.created_at.date()) for c in ref.customers], dtype=np.int64)
    by_product_age = np.argsort(product_created, kind="stable")
    by_customer_age = np.argsort(customer_created, kind="stable")
    # Popularity and activity are skewed: a few products and customers account for much of the volume.
    popularity = rng.lognormal(0.0, 1.0, len(ref.products))[by_product_age]
    activity = rng.lognormal(0.0, 1.2, len(ref.customers))[by_customer_age]
    prices = np.array([int(p.unit_price.scaleb(2)) for p in ref.products], dtype=np.int64)
    return _Pools(
        store_ids=tuple(s.store_id for s in ref.stores),
        store_opened=np.array([_day_number(s.opened_at.date()) for s in ref.stores], dtype=np.int64),
        store_size=rng.lognormal(0.0, 0.35, len(ref.stores)),
        store_tax=np.array([_scaled_rate(s.tax_rate) for s in ref.stores], dtype=np.int64),
        online_tax=_scaled_rate(ONLINE_TAX_RATE),
        skus=pa.array([ref.products[i].sku for i in by_product_age], pa.string()),
        price_cents=prices[by_product_age],
        product_created=product_created[by_product_age],
        product_cumw=np.cumsum(popularity),
        customer_ids=np.array([ref.customers[i].customer_id for i in by_customer_age], dtype=np.int64),
        customer_created=customer_created[by_customer_age],
        customer_cumw=np.cumsum(activity),
    )


def _open_store_sizes(days: Ints, pools: _Pools) -> Floats:
    """Store sizes per (day, store), zero before a store opened."""
    return np.where(pools.store_opened[None, :] <= days[:, None], pools.store_size[None, :], 0.0)


def _day_weights(days: Ints, pools: _Pools, rng: np.random.Generator) -> Floats:
    """Relative volume per (day, channel)."""
    dt = days.astype("datetime64[D]")
    month = dt.astype("datetime64[M]").astype(np.int64) % 12  # 0 = January
    dom = (dt - dt.astype("datetime64[M]")).astype(np.int64) + 1
    weekday = (days + 3) % 7  # 1970-01-01 was a Thursday; 0 = Monday
    years = (days - days[0]) / 365.25
    span = max(float(years[-1]), 1.0)

    level = ANNUAL_GROWTH**years
    online_share = ONLINE_SHARE[0] + (ONLINE_SHARE[1] - ONLINE_SHARE[0]) * years / span
    capacity = _open_store_sizes(days, pools).sum(axis=1) / pools.store_size.sum()

    special = np.ones((len(days), len(CHANNELS)))
    black_friday = (month == 10) & (weekday == 4) & (dom >= 23) & (dom <= 29)
    special[black_friday] = (3.0, 2.2)
    special[(month == 11) & (dom == 24)] = (0.5, 0.6)
    special[(month == 11) & ((dom == 25) | (dom == 26))] = (0.6, 0.0)
    special[(month == 0) & (dom == 1)] = (0.8, 0.0)

    base = np.stack([level * online_share, level * (1.0 - online_share) * capacity], axis=1)
    noise = rng.lognormal(0.0, DAILY_NOISE, base.shape)
    return base * WEEKDAY_FACTORS.T[weekday] * MONTH_FACTORS[month][:, None] * special * noise


def _apportion(weights: Floats, total: int) -> Ints:
    """Split ``total`` into integers proportional to ``weights`` (largest remainder; exact sum)."""
    share = weights / weights.sum() * total
    counts = np.floor(share).astype(np.int64)
    short = total - int(counts.sum())
    if short:
        candidates = np.flatnonzero(weights > 0)
        order = np.argsort(-(share[candidates] - counts[candidates]), kind="stable")
        counts[candidates[order[:short]]] += 1
    return counts


def _pick_available(created: Ints, cumw: Floats, days: Ints, rng: np.random.Generator) -> Ints:
    """Weighted draw per day from the prefix of a pool (sorted by creation) that exists on that day."""
    available = np.searchsorted(created, days, side="right")
    available = np.maximum(available, min(MIN_POOL, len(created)))
    target = rng.random(len(days)) * cumw[available - 1]
    picked = np.searchsorted(cumw, target, side="right")
    return np.minimum(picked, available - 1)


# --- one month -----------------------------------------------------------------------------------------


def _month_table(
    days: Ints,
    lines: Ints,
    pools: _Pools,
    first_order: list[int],
    rng: np.random.Generator,
    manifest: Manifest,
) -> tuple[pa.Table, list[int]]:
    """One month's lines as a table sorted by time; adds the month to ``manifest``; orders per channel."""
    n_days = len(days)
    cell_lines = lines.T.ravel()  # cells channel-major, then day: orders are numbered in time per channel
    n_lines = int(cell_lines.sum())
    if n_lines == 0:
        return SCHEMA.empty_table(), [0] * len(CHANNELS)
    cell_of_line = np.repeat(np.arange(len(cell_lines)), cell_lines)

    # Orders: consecutive runs of lines, cut at every (channel, day) boundary.
    sizes = np.minimum(rng.geometric(LINES_P, n_lines), MAX_LINES)
    starts = np.cumsum(sizes) - sizes
    first_line = np.zeros(n_lines, dtype=bool)
    first_line[starts[starts < n_lines]] = True
    first_line[(np.cumsum(cell_lines) - cell_lines)[cell_lines > 0]] = True
    order_of_line = np.cumsum(first_line) - 1
    order_start = np.flatnonzero(first_line)
    line_number = (np.arange(n_lines) - order_start[order_of_line] + 1).astype(np.int32)

    # Per order: channel, day, time, store, customer.
    order_cell = cell_of_line[order_start]
    channel = (order_cell // n_days).astype(np.int64)
    day = days[order_cell % n_days]
    n_orders = len(order_start)
    ordered_at = day * US_PER_DAY + _time_of_day(channel, rng)
    ordered_at = _sort_within_channel(ordered_at, channel)
    store = _pick_store(day, channel, pools, rng)
    customer = pools.customer_ids[_pick_available(pools.customer_created, pools.customer_cumw, day, rng)]
    known = (channel == ONLINE) | (rng.random(n_orders) >= WALK_IN_SHARE)
    order_counts = [int(np.count_nonzero(channel == c)) for c in range(len(CHANNELS))]
    number = np.empty(n_orders, dtype=np.int64)
    for c in range(len(CHANNELS)):
        number[channel == c] = np.arange(first_order[c] + 1, first_order[c] + order_counts[c] + 1)

    # Per line: product, quantity, money in cents.
    line_day = day[order_of_line]
    product = _pick_available(pools.product_created, pools.product_cumw, line_day, rng)
    quantity = np.minimum(rng.geometric(QUANTITY_P, n_lines), MAX_QUANTITY)
    price = pools.price_cents[product]
    line_total = quantity * price
    line_store = store[order_of_line]
    rate = np.where(line_store >= 0, pools.store_tax[line_store], pools.online_tax)  # -1 is online
    tax = (2 * line_total * rate + TAX_SCALE) // (2 * TAX_SCALE)  # half-up; amounts are never negative

    line_channel = channel[order_of_line]
    _add_to_manifest(manifest, line_channel, line_store, line_day, line_number, line_total, tax, pools)

    order_ids = pc.binary_join_element_wise(
        pa.array([ORDER_PREFIXES[c] for c in range(len(CHANNELS))]).take(pa.array(channel)),
        pc.utf8_lpad(pc.cast(pa.array(number), pa.string()), ORDER_DIGITS, "0"),
        "",
    )
    customer_ids = pa.array(customer, pa.int64(), mask=~known)
    table = pa.Table.from_arrays(
        [
            order_ids.take(pa.array(order_of_line)),
            pa.array(line_number, pa.int32()),
            pa.array(CHANNELS, pa.string()).take(pa.array(line_channel)),
            pa.array((None, *pools.store_ids), pa.string()).take(pa.array(line_store + 1)),
            customer_ids.take(pa.array(order_of_line)),
            pools.skus.take(pa.array(product)),
            pa.array(quantity.astype(np.int32), pa.int32()),
            _decimal(price),
            _decimal(line_total),
            _decimal(tax),
            pa.array(ordered_at[order_of_line], SCHEMA.field("ordered_at").type),
        ],
        schema=SCHEMA,
    )
    # Time order across channels (then order number, then line) makes the row groups' statistics useful.
    by_time = np.lexsort((line_number, number[order_of_line], line_channel, ordered_at[order_of_line]))
    return table.take(pa.array(by_time)), order_counts


def _time_of_day(channel: Ints, rng: np.random.Generator) -> Ints:
    """Microseconds into the UTC day, whole seconds, drawn from each channel's hourly pattern."""
    cumw = np.cumsum(HOUR_WEIGHTS, axis=1)
    cumw /= cumw[:, -1:]
    hour = np.minimum((rng.random(len(channel))[:, None] >= cumw[channel]).sum(axis=1), 23)
    second = rng.integers(0, 3600, len(channel))
    return (hour * 3600 + second) * US_PER_SECOND


def _sort_within_channel(ordered_at: Ints, channel: Ints) -> Ints:
    """Sort times within each channel so order numbers rise with time (orders are channel-major, by day)."""
    out = ordered_at.copy()
    for c in range(len(CHANNELS)):
        mask = channel == c
        out[mask] = np.sort(ordered_at[mask])
    return out


def _pick_store(day: Ints, channel: Ints, pools: _Pools, rng: np.random.Generator) -> Ints:
    """Store index per order among the stores open that day (by size); -1 for online orders."""
    cumw = np.cumsum(_open_store_sizes(day, pools), axis=1)
    total = cumw[:, -1:]
    cumw = cumw / np.where(total > 0, total, 1.0)
    picked = (rng.random(len(day))[:, None] >= cumw).sum(axis=1)
    return np.where(channel == IN_STORE, np.minimum(picked, len(pools.store_ids) - 1), -1)


def _decimal(cents: Ints) -> pa.Array:
    """Integer cents as decimal128(12, 2): the cents are the unscaled value, two's complement."""
    if len(cents) and int(np.abs(cents).max()) >= 10**MONEY.precision:
        raise ValueError(f"an amount does not fit {MONEY}")
    words = np.empty((len(cents), 2), dtype=np.int64)
    words[:, 0] = cents
    words[:, 1] = cents >> 63  # sign extension into the high word
    return pa.Array.from_buffers(MONEY, len(cents), [None, pa.py_buffer(words)])


def _add_to_manifest(
    manifest: Manifest,
    channel: Ints,
    store: Ints,
    day: Ints,
    line_number: npt.NDArray[np.int32],
    line_total: Ints,
    tax: Ints,
    pools: _Pools,
) -> None:
    """Sum orders, lines and cents per (channel, store, day) with numpy and add them to ``manifest``."""
    n_stores = len(pools.store_ids) + 1
    key = (channel * n_stores + store + 1) * (1 << 32) + day
    cells, inverse = np.unique(key, return_inverse=True)
    sums = np.zeros((4, len(cells)), dtype=np.int64)
    np.add.at(sums[0], inverse, (line_number == 1).astype(np.int64))
    np.add.at(sums[1], inverse, 1)
    np.add.at(sums[2], inverse, line_total)
    np.add.at(sums[3], inverse, tax)
    epoch = date(1970, 1, 1)
    for cell, orders, n_lines, net, cell_tax in zip(cells.tolist(), *sums.tolist(), strict=True):
        group, day_number = divmod(cell, 1 << 32)
        channel_code, store_code = divmod(group, n_stores)
        store_id = pools.store_ids[store_code - 1] if store_code else None
        totals = manifest.totals.setdefault(
            (CHANNELS[channel_code], store_id, epoch + timedelta(days=day_number)), Totals()
        )
        totals.orders += orders
        totals.lines += n_lines
        totals.net += Decimal(net).scaleb(-2)
        totals.tax += Decimal(cell_tax).scaleb(-2)


# --- files ---------------------------------------------------------------------------------------------


def _write_parquet(table: pa.Table, path: Path) -> None:
    """Write atomically, so an upload never picks up half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, path)


def _remove_stale(root: Path, keep: set[Path]) -> None:
    """Delete what an earlier (or interrupted) run left in the partitions and this run did not write."""
    for path in sorted(root.glob("year=*/month=*/*")):
        if path.is_file() and path not in keep:
            logger.info("removing stale file %s", path)
            path.unlink()
    for directory in sorted(root.glob("year=*/month=*"), reverse=True) + sorted(root.glob("year=*")):
        if directory.is_dir() and not any(directory.iterdir()):
            directory.rmdir()
