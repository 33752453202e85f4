"""Which in-store purchases the branch stores confirm by email, and which of those emails are anomalies.

Everything here is fixed by the seed: the purchases (store, order number, customer, payment, cashier, lines)
and the anomaly of each email. Only the purchase time is left open; it is the real time of sending.

Anomalies are exact, not sampled: ``round(share x count)`` emails are anomalous, at positions drawn by the
seed, the kinds dealt out in turn so each kind gets within one of the others. The first email is always an
ordinary one, so a duplicate always has an original to repeat. A plan without end (no count) deals its
anomalies the same way in blocks of ``ANOMALY_BLOCK`` emails, each block exact.

Order numbers run per store from a first number (1 unless given; a later run continues a series after the
highest number the earlier ones used, since downstream an order number is an order's identity).

Kinds:

- ``duplicate``: a recent well-formed confirmation sent again, identical body, new Message-ID and Date
  header; the order counts once.
- ``quoted_printable`` / ``base64``: a genuine order whose parts use that transfer encoding (the others use
  ``8bit``).
- ``non_ascii``: a genuine order whose cashier's name has letters outside Latin-1 (Ł, Ş, Ő, …) and whose item
  names carry a non-ASCII suffix ("· Größe L", "· “Premium”").
- ``missing_total``: the Total line is missing.
- ``garbled_line``: one item line is cut short and garbled.

The last two are malformed: not counted as orders, reported separately so reconciliation can account for
them.
"""

from __future__ import annotations

import itertools
import random
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal

from simulators.reference import Reference, Store, build_reference, money

ANOMALY_KINDS = ("duplicate", "quoted_printable", "base64", "non_ascii", "missing_total", "garbled_line")
MALFORMED_KINDS = frozenset({"missing_total", "garbled_line"})
ENCODING_OF_KIND = {"quoted_printable": "quoted-printable", "base64": "base64"}
DEFAULT_ENCODING = "8bit"
# A store re-sends one of its last few confirmations, never one from long ago.
DUPLICATE_WINDOW = 50
ANOMALY_BLOCK = 1000
WALK_IN_SHARE = 0.4
PAYMENT_METHODS = (("card", 0.55), ("contactless", 0.20), ("cash", 0.20), ("gift card", 0.05))
MAX_LINES = 6
MAX_QUANTITY = 4
CASHIERS = ("Anna K.", "Ben M.", "Clara D.", "David R.", "Emma L.", "Finn O.", "Grace T.", "Hugo B.")
# Every one outside Latin-1 on purpose (Ł, Ş, Ő, Ř, Œ, …): a parser that guesses ISO-8859-1 gets them wrong.
# (Ordinary emails are not ASCII either: "€", and product or store names such as "München".)
NON_ASCII_CASHIERS = ("Łucja Ż.", "Gülşen Ş.", "Ödön Ő.", "Jiří Ř.", "Zoë Œ.", "Tomasz Ś.", "Ilze Ķ.")
NON_ASCII_NAME_SUFFIXES = ("Größe L", "édition été", "½ prijs", "“Premium”", "Łódź", "niño", "Ærø")


@dataclass(frozen=True)
class PurchaseLine:
    line_number: int
    sku: str
    name: str
    quantity: int
    unit_price: Decimal

    @property
    def line_total(self) -> Decimal:
        return self.unit_price * self.quantity


@dataclass(frozen=True)
class StorePurchase:
    """A completed purchase at a branch store's till."""

    store: Store
    order_number: str
    customer_id: int | None  # None: a walk-in customer
    payment_method: str
    cashier: str
    lines: tuple[PurchaseLine, ...]

    @property
    def subtotal(self) -> Decimal:
        return sum((line.line_total for line in self.lines), Decimal("0.00"))

    @property
    def tax(self) -> Decimal:
        return money(self.subtotal * self.store.tax_rate)

    @property
    def total(self) -> Decimal:
        return self.subtotal + self.tax


@dataclass(frozen=True)
class PlannedEmail:
    """One email to send: a purchase's confirmation, possibly with an anomaly."""

    seq: int
    purchase: StorePurchase
    anomaly: str | None = None
    encoding: str = DEFAULT_ENCODING
    duplicate_of: int | None = None  # seq of the original a duplicate repeats
    garbled_line: int | None = None  # index into purchase.lines

    @property
    def malformed(self) -> bool:
        return self.anomaly in MALFORMED_KINDS

    @property
    def genuine(self) -> bool:
        """A well-formed first confirmation: the ones that count as orders."""
        return self.duplicate_of is None and not self.malformed


def order_number(store_id: str, number: int) -> str:
    """The POS's order number, e.g. ``S003-000123``."""
    return f"{store_id}-{number:06d}"


def anomaly_slots(seed: int, count: int, share: float, block: int = 0) -> dict[int, str]:
    """Email position → anomaly kind for ``round(share x count)`` positions (never position 0).

    ``block`` > 0: the positions of that block of an endless plan, relative to the block's start (its first
    position can be an anomaly too: there are earlier emails to repeat).
    """
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"anomaly share must be within [0, 1], not {share}")
    rng = random.Random(f"anomalies:{seed}" if block == 0 else f"anomalies:{seed}:{block}")
    positions = list(range(1 if block == 0 else 0, count))
    k = min(round(share * count), len(positions))
    for i in range(k):  # a partial Fisher-Yates shuffle: the first k are a uniform sample
        j = i + min(int(rng.random() * (len(positions) - i)), len(positions) - i - 1)
        positions[i], positions[j] = positions[j], positions[i]
    return {position: ANOMALY_KINDS[i % len(ANOMALY_KINDS)] for i, position in enumerate(positions[:k])}


class EmailPlanner:
    """Generates the emails of one run, deterministically for the seed."""

    def __init__(
        self,
        seed: int,
        count: int | None,
        anomaly_share: float,
        start_number: int = 1,
        reference: Reference | None = None,
        start_numbers: Mapping[str, int] | None = None,
    ) -> None:
        """``count`` None: without end; ``start_numbers``: first number per store (else ``start_number``)."""
        self._seed = seed
        self._rng = random.Random(seed)
        self._reference = reference or build_reference(seed)
        self._count = count
        self._share = anomaly_share
        anomaly_slots(seed, 0, anomaly_share)  # refuse a share out of range now, not at the first email
        starts = start_numbers or {}
        self._next_number = {s.store_id: starts.get(s.store_id, start_number) for s in self._reference.stores}
        self._recent: deque[PlannedEmail] = deque(maxlen=DUPLICATE_WINDOW)

    def _anomalies(self) -> Iterator[str | None]:
        """The anomaly kind (or None) of each email in turn."""
        if self._count is not None:
            slots = anomaly_slots(self._seed, self._count, self._share)
            yield from (slots.get(seq) for seq in range(self._count))
            return
        for block in itertools.count():
            slots = anomaly_slots(self._seed, ANOMALY_BLOCK, self._share, block)
            yield from (slots.get(i) for i in range(ANOMALY_BLOCK))

    def emails(self) -> Iterator[PlannedEmail]:
        for seq, kind in enumerate(self._anomalies()):
            if kind == "duplicate":
                original = self._recent[self._draw(len(self._recent))]
                yield PlannedEmail(
                    seq=seq,
                    purchase=original.purchase,
                    anomaly=kind,
                    encoding=original.encoding,
                    duplicate_of=original.seq,
                )
                continue
            purchase = self._purchase(non_ascii=kind == "non_ascii")
            planned = PlannedEmail(
                seq=seq,
                purchase=purchase,
                anomaly=kind,
                encoding=ENCODING_OF_KIND.get(kind or "", DEFAULT_ENCODING),
                garbled_line=self._draw(len(purchase.lines)) if kind == "garbled_line" else None,
            )
            if planned.genuine:
                self._recent.append(planned)
            yield planned

    def _draw(self, n: int) -> int:
        """A uniform integer in [0, n)."""
        return min(int(self._rng.random() * n), n - 1)

    def _purchase(self, non_ascii: bool) -> StorePurchase:
        ref = self._reference
        store = ref.stores[self._draw(len(ref.stores))]
        number = self._next_number[store.store_id]
        self._next_number[store.store_id] = number + 1
        walk_in = self._rng.random() < WALK_IN_SHARE
        customer = ref.customers[self._draw(len(ref.customers))]
        payment = self._payment_method(self._rng.random())
        cashiers = NON_ASCII_CASHIERS if non_ascii else CASHIERS
        cashier = cashiers[self._draw(len(cashiers))]
        chosen: list[int] = []
        for _ in range(1 + self._draw(MAX_LINES)):
            i = self._draw(len(ref.products))
            if i not in chosen:  # a repeated product is the same line, not a second one
                chosen.append(i)
        lines = []
        for n, i in enumerate(chosen):
            product = ref.products[i]
            name = product.name
            if non_ascii:
                name = f"{name} · {NON_ASCII_NAME_SUFFIXES[self._draw(len(NON_ASCII_NAME_SUFFIXES))]}"
            lines.append(
                PurchaseLine(
                    line_number=n + 1,
                    sku=product.sku,
                    name=name,
                    quantity=1 + int(self._rng.random() ** 2 * MAX_QUANTITY),
                    unit_price=product.unit_price,
                )
            )
        return StorePurchase(
            store=store,
            order_number=order_number(store.store_id, number),
            customer_id=None if walk_in else customer.customer_id,
            payment_method=payment,
            cashier=cashier,
            lines=tuple(lines),
        )

    @staticmethod
    def _payment_method(u: float) -> str:
        for method, weight in PAYMENT_METHODS:
            if u < weight:
                return method
            u -= weight
        return PAYMENT_METHODS[-1][0]
