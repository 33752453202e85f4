"""One order-confirmation email → a checked ``StoreOrder``, or a ``ParseError`` that says what is wrong.

The data is read from the ``text/plain`` part (the HTML part, ``table.order`` and ``table.lines``, only when
there is no text part). Both are first reduced to the receipt as printed (labelled fields and item rows of
cells), then interpreted and checked the same way:

- every field present: Store, Order number, Date (ISO 8601 with a UTC offset), Customer (a number or
  ``walk-in``), Payment, Cashier, Subtotal, Tax (with its rate, ``Tax (19%)``), Total;
- every item row complete: five columns, no U+FFFD (what a broken encoder leaves where bytes were lost);
- money exact: amounts are read as ``Decimal`` in the till's format, which the amounts themselves identify
  (``1.234,56 €``, ``1 234,56 €``, ``€ 1.234,56``, ``€1,234.56``; see omnistream.money), all in one format;
- money consistent: line total = unit price x quantity, subtotal = sum of line totals,
  tax = subtotal x rate rounded half-up to the cent, total = subtotal + tax;
- every item line within the confirmation rule below.

The confirmation rule (what a store's POS can really send; ``check_line`` is the one place it is applied):
a confirmation confirms a sale. Returns and refunds arrive as documents of their own, never as negative
lines on an order confirmation, so every item line has a quantity of at least 1 (a whole number) and a
unit price of 0 or more (0: a free item, e.g. a promotion's gift). With the consistency checks above, no
amount on a confirmation is then negative: line totals, subtotal, tax and total are all 0 or more, and the
total is the sum of the lines plus their tax. An email that breaks the rule is a ``ParseError`` naming the
line, so the producer dead-letters it instead of landing an order that takes money off a store's revenue.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from email.message import Message
from html.parser import HTMLParser
from typing import NamedTuple

from omnistream.errors import OmnistreamError
from omnistream.money import FORMATS, MoneyFormat, format_percent, parse_percent, round_cents
from producers.emails import mime
from producers.emails.model import OrderLine, Provenance, StoreOrder

WALK_IN = "walk-in"
COLUMNS = ("SKU", "Item", "Qty", "Unit price", "Line total")
REQUIRED_FIELDS = (
    "Store",
    "Order number",
    "Date",
    "Customer",
    "Payment",
    "Cashier",
    "Subtotal",
    "Tax",
    "Total",
)
REPLACEMENT_CHARACTER = "\ufffd"
# The confirmation rule (module docstring): the least quantity and unit price an item line can have.
MIN_QUANTITY = 1
MIN_UNIT_PRICE = Decimal("0.00")
# "Tax (19%)" → label "Tax", note "19%"; other labels have no note.
_LABEL = re.compile(r"(?P<label>[^():]+?)(?: \((?P<note>[^()]*)\))?")
_TEXT_FIELD = re.compile(r"(?P<label>[^:|]+?): (?P<value>.*)")
_TABLE_HEADER = re.compile(r"SKU\s*\|")
_QUANTITY = re.compile(r"[1-9]\d*")  # a whole number of at least MIN_QUANTITY, as printed
_ORDER_NUMBER = re.compile(r"\S+")
# Distinct formats only (es_ES and it_IT write amounts exactly as de_DE does), in a stable order.
_DISTINCT_FORMATS: tuple[MoneyFormat, ...] = tuple(dict.fromkeys(FORMATS.values()))


class ParseError(OmnistreamError, ValueError):
    """An email that is not a complete, consistent order confirmation; ``reason`` says precisely why."""

    def __init__(self, reason: str, message_id: str | None = None, order_number: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.message_id = message_id
        self.order_number = order_number


@dataclass
class Receipt:
    """A confirmation as printed, before interpretation: labelled fields and item rows of cells."""

    part: str  # the MIME type it was read from
    fields: dict[str, str] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)  # label → the bracketed note, e.g. Tax → 19%
    rows: list[list[str]] = field(default_factory=list)

    def add_field(self, label_text: str, value: str) -> None:
        match = _LABEL.fullmatch(label_text.strip())
        if match is None:
            return
        label = match["label"]
        if label not in REQUIRED_FIELDS:
            return  # a line the producer does not need (a POS may add some); not an error
        if label in self.fields:
            raise ParseError(f"the {label} field appears twice in the {self.part} part")
        self.fields[label] = value.strip()
        if match["note"] is not None:
            self.notes[label] = match["note"]


def read_message(raw: bytes) -> Message:
    """The email in ``raw`` (RFC 822 bytes).

    Read as the compat32 policy reads it: the producer needs two body parts and one header, and the modern
    policy's header objects make reading several times slower (they parse every header in full). The
    common shape is read by a line scan that gives the standard parser's result (``mime``).
    """
    return mime.read_message(raw)


def message_id_of(msg: Message) -> str | None:
    """The Message-ID header, or None if the email has none."""
    value = str(msg.get("Message-ID", "")).strip()
    return value or None


def parse_email(raw: bytes, provenance: Provenance) -> StoreOrder:
    """The order confirmed by the email ``raw``; ``ParseError`` (with the Message-ID) if it is not one."""
    msg = read_message(raw)
    message_id = message_id_of(msg)
    receipt: Receipt | None = None
    try:
        receipt = read_receipt(msg)
        return build_order(receipt, message_id, provenance)
    except ParseError as exc:
        order_number = receipt.fields.get("Order number") if receipt is not None else None
        raise ParseError(exc.reason, message_id, order_number or None) from None


def _body_part(msg: Message) -> Message | None:
    """The first text/plain part that is not an attachment, else the first such text/html part."""
    found: dict[str, Message] = {}
    for part in msg.walk():
        kind = part.get_content_type()
        if kind in ("text/plain", "text/html") and kind not in found:
            if str(part.get("Content-Disposition", "")).strip().lower().startswith("attachment"):
                continue
            found[kind] = part
    return found.get("text/plain") or found.get("text/html")


def read_receipt(msg: Message) -> Receipt:
    """The receipt from the text part, or from the HTML part if there is no text part."""
    part = _body_part(msg)
    if part is None:
        raise ParseError(f"no text/plain or text/html part (the email is {msg.get_content_type()})")
    kind = part.get_content_type()
    payload = part.get_payload(decode=True)  # undoes quoted-printable and base64
    if not isinstance(payload, bytes):
        raise ParseError(f"the {kind} part has no body")
    # No charset: UTF-8, which reads ASCII as it is and is what a POS without one most likely wrote.
    charset = part.get_content_charset() or "utf-8"
    try:
        content = payload.decode(charset, errors="replace")
    except LookupError as exc:
        raise ParseError(f"the {kind} part is in an unknown charset {charset!r}") from exc
    if kind == "text/plain":
        return receipt_from_text(content)
    return receipt_from_html(content)


def receipt_from_text(text: str) -> Receipt:
    """The plain-text body: ``Label: value`` lines, and a ``|``-separated table under a ``SKU | …`` header."""
    receipt = Receipt("text/plain")
    in_table = False
    for line in text.splitlines():
        if in_table:
            if not line.strip():
                in_table = False
            else:
                receipt.rows.append([cell.strip() for cell in line.split("|")])
        # The substring tests are what the patterns need at the least: most lines are let go without one.
        elif line.startswith("SKU") and _TABLE_HEADER.match(line):
            in_table = True
        elif ": " in line and (match := _TEXT_FIELD.fullmatch(line)):
            receipt.add_field(match["label"], match["value"])
    return receipt


class _HtmlTables(HTMLParser):
    """Collects the cells of ``table.order`` and ``table.lines`` (head, body and foot rows)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.rows: dict[tuple[str, str], list[list[tuple[str, str]]]] = {}
        self._table: str | None = None
        self._section = "tbody"
        self._row: list[tuple[str, str]] | None = None
        self._cell: tuple[str, list[str]] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table":
            classes = (dict(attrs).get("class") or "").split()
            self._table = next((c for c in classes if c in ("order", "lines")), None)
            self._section = "tbody"
        elif tag in ("thead", "tbody", "tfoot"):
            self._section = tag
        elif tag == "tr" and self._table is not None:
            self._row = []
        elif tag in ("th", "td") and self._row is not None:
            self._cell = (tag, [])

    def handle_endtag(self, tag: str) -> None:
        if tag in ("th", "td") and self._cell is not None and self._row is not None:
            self._row.append((self._cell[0], "".join(self._cell[1]).strip()))
            self._cell = None
        elif tag == "tr" and self._row is not None and self._table is not None:
            self.rows.setdefault((self._table, self._section), []).append(self._row)
            self._row = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell[1].append(data)


def receipt_from_html(markup: str) -> Receipt:
    """The HTML body: ``table.order`` rows of ``<th>label</th><td>value</td>``, then ``table.lines``."""
    tables = _HtmlTables()
    tables.feed(markup)
    tables.close()
    receipt = Receipt("text/html")
    labelled = tables.rows.get(("order", "tbody"), []) + tables.rows.get(("lines", "tfoot"), [])
    for row in labelled:
        if len(row) >= 2 and row[0][0] == "th":
            receipt.add_field(row[0][1], row[-1][1])
    receipt.rows = [[text for _, text in row] for row in tables.rows.get(("lines", "tbody"), [])]
    return receipt


def _amounts_format(amounts: list[tuple[str, str]]) -> tuple[MoneyFormat, tuple[Decimal, ...]]:
    """The one money format every amount is written in, and the amounts read in it, in the same order.

    ``amounts`` are (where, text) pairs.
    """
    matching = []
    for fmt in _DISTINCT_FORMATS:
        try:
            values = tuple(fmt.parse(text) for _, text in amounts)
        except ValueError:
            continue
        matching.append((fmt, values))
    if not matching:
        for where, text in amounts:
            if not any(_parses(fmt, text) for fmt in _DISTINCT_FORMATS):
                examples = ", ".join(repr(f.format(Decimal("1234.56"))) for f in _DISTINCT_FORMATS)
                # A line that starts with "." is sent as ".." (SMTP dot-stuffing); a mail path that does
                # not undo it (e.g. a sender using bare LF line ends) leaves the extra dot in the body.
                hint = (
                    "; a doubled '.' is what SMTP dot-stuffing leaves when not undone" if ".." in text else ""
                )
                raise ParseError(f"{where} {text!r} is not an amount in any store format ({examples}){hint}")
        listed = "; ".join(f"{where} {text!r}" for where, text in amounts)
        raise ParseError(f"the amounts are not all written in one format: {listed}")
    # Two formats can both read every amount only if none has a group separator (1,00 € in de_DE and
    # fr_FR); they then read the same values. Different values would be a real ambiguity.
    if len({values for _, values in matching}) > 1 or len({fmt.currency for fmt, _ in matching}) > 1:
        raise ParseError(f"the amounts can be read in more than one way: {[text for _, text in amounts]}")
    return matching[0]


def _parses(fmt: MoneyFormat, text: str) -> bool:
    try:
        fmt.parse(text)
    except ValueError:
        return False
    return True


def _check_not_garbled(receipt: Receipt) -> None:
    for label, value in receipt.fields.items():
        if REPLACEMENT_CHARACTER in value:
            raise ParseError(f"the {label} field is garbled (U+FFFD replacement characters): {value!r}")
    for n, cells in enumerate(receipt.rows, start=1):
        printed = " | ".join(cells)
        garbled = REPLACEMENT_CHARACTER in printed
        if len(cells) < len(COLUMNS):
            columns = f"{len(cells)} of {len(COLUMNS)} columns ({' | '.join(COLUMNS)})"
            if garbled:
                where = "ending in" if printed.endswith(REPLACEMENT_CHARACTER) else "with"
                raise ParseError(
                    f"item line {n} is garbled: cut off after {columns}, {where} U+FFFD replacement "
                    f"characters: {printed!r}"
                )
            raise ParseError(f"item line {n} has {columns}: {printed!r}")
        if garbled:
            raise ParseError(f"item line {n} is garbled (U+FFFD replacement characters): {printed!r}")


def build_order(receipt: Receipt, message_id: str | None, provenance: Provenance) -> StoreOrder:
    """Interpret and check ``receipt``; ``ParseError`` names the first thing missing or inconsistent."""
    missing = [label for label in REQUIRED_FIELDS if label not in receipt.fields]
    if missing:
        raise ParseError(f"missing field(s) in the {receipt.part} part: {', '.join(missing)}")
    _check_not_garbled(receipt)
    if not receipt.rows:
        raise ParseError(f"no item lines in the {receipt.part} part")
    f = receipt.fields

    store_id, _, store_name = f["Store"].partition(" ")
    if not store_id or not store_name.strip():
        raise ParseError(f"Store {f['Store']!r} is not '<store id> <store name>'")
    order_number = f["Order number"]
    if not _ORDER_NUMBER.fullmatch(order_number):
        raise ParseError(f"Order number {order_number!r} is empty or has spaces")
    ordered_at = _parse_date(f["Date"])
    customer_id = _parse_customer(f["Customer"])
    for label in ("Payment", "Cashier"):
        if not f[label]:
            raise ParseError(f"the {label} field is empty")
    rate_text = receipt.notes.get("Tax")
    if rate_text is None:
        raise ParseError(f"the Tax field has no rate (expected e.g. 'Tax (19%)'): Tax {f['Tax']!r}")
    try:
        tax_rate = parse_percent(rate_text)
    except ValueError as exc:
        raise ParseError(f"the tax rate {rate_text!r} is not a percentage such as '19%'") from exc

    rows = [_ItemRow.from_cells(cells) for cells in receipt.rows]
    amounts = [(f"item line {n} {col}", text) for n, row in enumerate(rows, 1) for col, text in row.amounts()]
    amounts += [(label, f[label]) for label in ("Subtotal", "Tax", "Total")]
    fmt, values = _amounts_format(amounts)  # read once: unit price and line total per line, then the sums
    money = fmt.format

    lines = []
    for n, row in enumerate(rows, start=1):
        if not row.sku or not row.name:
            raise ParseError(f"item line {n} has an empty SKU or item name: {row.printed!r}")
        if not _QUANTITY.fullmatch(row.quantity):
            raise ParseError(f"item line {n} quantity {row.quantity!r} is not a positive whole number")
        quantity, unit_price, line_total = int(row.quantity), values[2 * n - 2], values[2 * n - 1]
        check_line(n, row.sku, quantity, unit_price, money)
        if line_total != unit_price * quantity:
            raise ParseError(
                f"item line {n} ({row.sku}): {quantity} x {money(unit_price)} is "
                f"{money(unit_price * quantity)}, not {money(line_total)}"
            )
        lines.append(OrderLine(n, row.sku, row.name, quantity, unit_price, line_total))

    subtotal, tax, total = values[-3:]
    lines_sum = sum((line.line_total for line in lines), Decimal("0.00"))
    if subtotal != lines_sum:
        raise ParseError(f"Subtotal {money(subtotal)} is not the sum of the line totals, {money(lines_sum)}")
    expected_tax = round_cents(subtotal * tax_rate)
    if tax != expected_tax:
        raise ParseError(
            f"Tax {money(tax)} is not {format_percent(tax_rate)} of {money(subtotal)} rounded half-up to "
            f"the cent, {money(expected_tax)}"
        )
    if total != subtotal + tax:
        raise ParseError(
            f"Total {money(total)} is not Subtotal + Tax, {money(subtotal)} + {money(tax)} = "
            f"{money(subtotal + tax)}"
        )
    return StoreOrder(
        order_number=order_number,
        store_id=store_id,
        store_name=store_name.strip(),
        ordered_at=ordered_at,
        customer_id=customer_id,
        payment_method=f["Payment"],
        cashier=f["Cashier"],
        lines=tuple(lines),
        subtotal=subtotal,
        tax_rate=tax_rate,
        tax=tax,
        total=total,
        currency=fmt.currency,
        message_id=message_id,
        provenance=provenance,
    )


def check_line(n: int, sku: str, quantity: int, unit_price: Decimal, money: Callable[[Decimal], str]) -> None:
    """The confirmation rule for item line ``n``: quantity at least 1, unit price 0 or more."""
    if quantity < MIN_QUANTITY:
        raise ParseError(f"item line {n} ({sku}) quantity {quantity} is below {MIN_QUANTITY}")
    if unit_price < MIN_UNIT_PRICE:
        raise ParseError(
            f"item line {n} ({sku}) unit price {money(unit_price)} is negative: an order confirmation "
            "confirms a sale, so every line has a quantity of at least 1 and a unit price of 0 or more "
            "(returns and refunds are documents of their own, not negative lines)"
        )


class _ItemRow(NamedTuple):
    """One item row's cells as printed."""

    sku: str
    name: str
    quantity: str
    unit_price: str
    line_total: str
    printed: str

    @classmethod
    def from_cells(cls, cells: list[str]) -> _ItemRow:
        # A name with a "|" in it splits into more cells; the SKU is first and the numbers are last.
        sku, *name, quantity, unit_price, line_total = cells
        return cls(sku, " | ".join(name), quantity, unit_price, line_total, " | ".join(cells))

    def amounts(self) -> list[tuple[str, str]]:
        return [("Unit price", self.unit_price), ("Line total", self.line_total)]


def _parse_date(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError as exc:
        raise ParseError(f"Date {text!r} is not an ISO 8601 date and time") from exc
    if value.utcoffset() is None:
        raise ParseError(f"Date {text!r} has no UTC offset, so it names no instant")
    return value


def _parse_customer(text: str) -> int | None:
    if text == WALK_IN:
        return None
    if not text.isascii() or not text.isdigit():
        raise ParseError(f"Customer {text!r} is neither a customer number nor {WALK_IN!r}")
    return int(text)
