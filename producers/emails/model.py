"""The records the email producer writes: an in-store order as confirmed by email, and where it came from."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any


@dataclass(frozen=True)
class Provenance:
    """Which email a record was read from."""

    mailbox: str  # imap://user@host:port/folder
    uidvalidity: int
    uid: int
    received_at: datetime  # the server's INTERNALDATE, zone-aware


@dataclass(frozen=True)
class OrderLine:
    line_number: int
    sku: str
    name: str
    quantity: int
    unit_price: Decimal
    line_total: Decimal


@dataclass(frozen=True)
class StoreOrder:
    """One in-store order (schemas/store_order.avsc), its money checked for consistency."""

    order_number: str
    store_id: str
    store_name: str
    ordered_at: datetime  # zone-aware, in the store's offset as printed
    customer_id: int | None  # None: a walk-in customer
    payment_method: str
    cashier: str
    lines: tuple[OrderLine, ...]
    subtotal: Decimal
    tax_rate: Decimal
    tax: Decimal
    total: Decimal
    currency: str
    message_id: str | None  # None only if the POS sent no Message-ID header
    provenance: Provenance

    def to_avro(self) -> dict[str, Any]:
        """The Avro record (field names as in schemas/store_order.avsc)."""
        p = self.provenance
        return {
            "order_number": self.order_number,
            "store_id": self.store_id,
            "store_name": self.store_name,
            "ordered_at": self.ordered_at.astimezone(UTC),
            "ordered_at_local": self.ordered_at.isoformat(),
            "customer_id": self.customer_id,
            "payment_method": self.payment_method,
            "cashier": self.cashier,
            "lines": [
                {
                    "line_number": line.line_number,
                    "sku": line.sku,
                    "name": line.name,
                    "quantity": line.quantity,
                    "unit_price": line.unit_price,
                    "line_total": line.line_total,
                }
                for line in self.lines
            ],
            "subtotal": self.subtotal,
            # The schema's scale is 4; a rate such as 0.19 is written as 0.1900.
            "tax_rate": self.tax_rate.quantize(Decimal("0.0001")),
            "tax": self.tax,
            "total": self.total,
            "currency": self.currency,
            "message_id": self.message_id,
            "mailbox": p.mailbox,
            "uidvalidity": p.uidvalidity,
            "imap_uid": p.uid,
            "received_at": p.received_at.astimezone(UTC),
        }
