"""What the web shop does, decided ahead of the database: new orders and their lifecycle, fixed by the seed.

The plan is a pure function of the seed and the number of new orders (or none: a plan can go on without end,
and a longer plan starts with a shorter one). Orders are referred to by their position in the plan (``ref``,
0 for the first new order), never by the database's identity value, so the same seed gives the same
operations whatever the table already holds, and a plan only ever moves orders it created itself. Only
``random.random()`` is used: its sequence for a seed is the one part of the ``random`` module Python promises
to keep.

Lifecycle: pending → paid → shipped → delivered; pending or paid → cancelled; delivered → refunded; any
order can be hard-deleted (a GDPR erasure or an operator's clean-up).
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal

from simulators.reference import ONLINE_TAX_RATE, Reference, build_reference, money

CURRENCY = "EUR"
STATUSES = ("pending", "paid", "shipped", "delivered", "cancelled", "refunded")
LEGAL_TRANSITIONS = frozenset(
    {
        ("pending", "paid"),
        ("paid", "shipped"),
        ("shipped", "delivered"),
        ("pending", "cancelled"),
        ("paid", "cancelled"),
        ("delivered", "refunded"),
    }
)
# Operation kind → (statuses it applies to, status it leads to); "delete" applies to any status.
STATUS_CHANGES: dict[str, tuple[tuple[str, ...], str]] = {
    "pay": (("pending",), "paid"),
    "ship": (("paid",), "shipped"),
    "deliver": (("shipped",), "delivered"),
    "cancel": (("pending", "paid"), "cancelled"),
    "refund": (("delivered",), "refunded"),
}
OPERATIONS = ("create", *STATUS_CHANGES, "delete")
# How often each follow-up operation is drawn. Each new order is followed by 0-4 of them (2 on average), so
# orders keep moving while some stay open at the end of any run.
FOLLOW_UP_WEIGHTS: tuple[tuple[str, float], ...] = (
    ("pay", 0.33),
    ("ship", 0.29),
    ("deliver", 0.26),
    ("cancel", 0.06),
    ("refund", 0.03),
    ("delete", 0.03),
)
MAX_FOLLOW_UPS = 4
MAX_LINES = 5


@dataclass(frozen=True)
class OrderLine:
    line_number: int
    sku: str
    quantity: int
    unit_price: Decimal

    @property
    def line_total(self) -> Decimal:
        return self.unit_price * self.quantity


@dataclass(frozen=True)
class NewOrder:
    """Insert an order and its lines in one transaction."""

    ref: int
    customer_id: int
    lines: tuple[OrderLine, ...]
    currency: str = CURRENCY

    @property
    def subtotal(self) -> Decimal:
        return sum((line.line_total for line in self.lines), Decimal("0.00"))

    @property
    def tax(self) -> Decimal:
        return money(self.subtotal * ONLINE_TAX_RATE)

    @property
    def total(self) -> Decimal:
        return self.subtotal + self.tax


@dataclass(frozen=True)
class StatusChange:
    """Move order ``ref`` from ``from_status`` to ``to_status``."""

    ref: int
    kind: str
    from_status: str
    to_status: str


@dataclass(frozen=True)
class DeleteOrder:
    """Hard-delete order ``ref`` (its lines go with it)."""

    ref: int
    status: str


Operation = NewOrder | StatusChange | DeleteOrder


class _Pool:
    """A set of refs with O(1) indexing and removal; its order depends only on the adds and removes."""

    def __init__(self) -> None:
        self._items: list[int] = []
        self._index: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self._items)

    def add(self, ref: int) -> None:
        self._index[ref] = len(self._items)
        self._items.append(ref)

    def remove(self, ref: int) -> None:
        i = self._index.pop(ref)
        last = self._items.pop()
        if last != ref:  # move the last member into the hole
            self._items[i] = last
            self._index[last] = i

    def __getitem__(self, i: int) -> int:
        return self._items[i]


class OrderPlanner:
    """Generates the operations of one run; also the reference model of every order's status."""

    def __init__(self, seed: int, reference: Reference | None = None) -> None:
        self._rng = random.Random(seed)
        self._reference = reference or build_reference(seed)
        self._by_status = {status: _Pool() for status in STATUSES}
        self._status: dict[int, str] = {}
        self._next_ref = 0

    def operations(self, new_orders: int | None) -> Iterator[list[Operation]]:
        """One batch per new order: the order itself, then the lifecycle operations that follow it.

        ``new_orders`` None: without end.
        """
        for _ in range(new_orders) if new_orders is not None else itertools.count():
            batch: list[Operation] = [self._new_order()]
            for _ in range(self._draw(MAX_FOLLOW_UPS + 1)):
                op = self._follow_up()
                if op is not None:
                    batch.append(op)
            yield batch

    def _draw(self, n: int) -> int:
        """A uniform integer in [0, n)."""
        return min(int(self._rng.random() * n), n - 1)

    def _new_order(self) -> NewOrder:
        products = self._reference.products
        customer = self._reference.customers[self._draw(len(self._reference.customers))]
        n_lines = 1 + self._draw(MAX_LINES)
        chosen: list[int] = []
        while len(chosen) < n_lines:
            i = self._draw(len(products))
            if i not in chosen:
                chosen.append(i)
        lines = tuple(
            OrderLine(
                line_number=n + 1,
                sku=products[i].sku,
                quantity=1 + int(self._rng.random() ** 2 * 3),  # mostly one of a thing
                unit_price=products[i].unit_price,
            )
            for n, i in enumerate(chosen)
        )
        ref = self._next_ref
        self._next_ref += 1
        self._set(ref, "pending")
        return NewOrder(ref=ref, customer_id=customer.customer_id, lines=lines)

    def _follow_up(self) -> StatusChange | DeleteOrder | None:
        kind = self._pick_kind(self._rng.random())
        if kind == "delete":
            candidates = [s for s in STATUSES if len(self._by_status[s])]
        else:
            candidates = [s for s in STATUS_CHANGES[kind][0] if len(self._by_status[s])]
        size = sum(len(self._by_status[s]) for s in candidates)
        if not size:
            return None  # nothing in a state this operation applies to yet
        at = self._draw(size)
        for status in candidates:
            pool = self._by_status[status]
            if at < len(pool):
                ref = pool[at]
                break
            at -= len(pool)
        else:  # pragma: no cover - at < size always lands in a pool
            raise AssertionError("draw outside the candidate pools")
        if kind == "delete":
            self._set(ref, None)
            return DeleteOrder(ref=ref, status=status)
        to_status = STATUS_CHANGES[kind][1]
        self._set(ref, to_status)
        return StatusChange(ref=ref, kind=kind, from_status=status, to_status=to_status)

    @staticmethod
    def _pick_kind(u: float) -> str:
        for kind, weight in FOLLOW_UP_WEIGHTS:
            if u < weight:
                return kind
            u -= weight
        return FOLLOW_UP_WEIGHTS[-1][0]

    def _set(self, ref: int, status: str | None) -> None:
        old = self._status.pop(ref, None)
        if old is not None:
            self._by_status[old].remove(ref)
        if status is not None:
            self._status[ref] = status
            self._by_status[status].add(ref)
