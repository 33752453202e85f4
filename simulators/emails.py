"""Order-confirmation emails as a branch store's POS writes them.

Each email is ``multipart/alternative``: a plain-text part and an HTML part with the same content. The data
lives only in the body, as on a real POS email: the headers carry no machine-friendly copy of it (Subject,
From, Date and Message-ID are the only ones a reader could use, and they are what a mail client shows).

The plain-text body, field by field (amounts in the store's format, see omnistream/money.py)::

    omnistream Berlin
    Order confirmation

    Store: S001 omnistream Berlin
    Order number: S001-000123
    Date: 2026-11-25T18:04:05+01:00
    Customer: 1234
    Payment: card
    Cashier: Anna K.

    SKU       | Item             | Qty | Unit price | Line total
    SKU-00012 | Amet apparel 12  |   2 |    12,99 € |    25,98 €

    Subtotal: 25,98 €
    Tax (19%): 4,94 €
    Total: 30,92 €

    Thank you for shopping at omnistream Berlin.
"""

from __future__ import annotations

import html
import uuid
from datetime import datetime
from email.charset import BASE64, QP, Charset
from email.mime.multipart import MIMEMultipart
from email.mime.nonmultipart import MIMENonMultipart
from email.utils import format_datetime, formataddr

from omnistream.money import format_money, format_percent
from simulators.email_plan import PlannedEmail, PurchaseLine, StorePurchase

WALK_IN = "walk-in"
COLUMNS = ("SKU", "Item", "Qty", "Unit price", "Line total")
GARBLE = "\ufffd\ufffd"  # what a broken POS printer driver leaves where the bytes went wrong
# Transfer encoding → the email package's body encoding for it (None: the UTF-8 bytes as they are, 8bit).
BODY_ENCODINGS: dict[str, int | None] = {"8bit": None, "quoted-printable": QP, "base64": BASE64}


def store_address(store_id: str, domain: str) -> str:
    """A store's sending address, e.g. ``s003@stores.omnistream.local``."""
    return f"{store_id.lower()}@{domain}"


def new_message_id(domain: str) -> str:
    """A globally unique Message-ID (a re-sent confirmation gets a new one too)."""
    return f"<{uuid.uuid4().hex}@{domain}>"


def subject(purchase: StorePurchase) -> str:
    return f"Order confirmation {purchase.order_number}"


def _line_cells(purchase: StorePurchase, line: PurchaseLine) -> list[str]:
    locale = purchase.store.locale
    return [
        line.sku,
        line.name,
        str(line.quantity),
        format_money(line.unit_price, locale),
        format_money(line.line_total, locale),
    ]


def _garbled(cells: list[str]) -> list[str]:
    """A line cut off in the unit price column, the line total lost."""
    unit_price = cells[3]
    return [*cells[:3], unit_price[: len(unit_price) // 2] + GARBLE]


def _header_fields(purchase: StorePurchase, purchased_at: datetime) -> list[tuple[str, str]]:
    store = purchase.store
    return [
        ("Store", f"{store.store_id} {store.name}"),
        ("Order number", purchase.order_number),
        ("Date", purchased_at.isoformat()),
        ("Customer", WALK_IN if purchase.customer_id is None else str(purchase.customer_id)),
        ("Payment", purchase.payment_method),
        ("Cashier", purchase.cashier),
    ]


def _total_fields(purchase: StorePurchase, missing_total: bool) -> list[tuple[str, str]]:
    locale = purchase.store.locale
    fields = [
        ("Subtotal", format_money(purchase.subtotal, locale)),
        (f"Tax ({format_percent(purchase.store.tax_rate)})", format_money(purchase.tax, locale)),
        ("Total", format_money(purchase.total, locale)),
    ]
    return fields[:-1] if missing_total else fields


def _rows(planned: PlannedEmail) -> list[list[str]]:
    purchase = planned.purchase
    rows = [_line_cells(purchase, line) for line in purchase.lines]
    if planned.garbled_line is not None:
        rows[planned.garbled_line] = _garbled(rows[planned.garbled_line])
    return rows


def render_text(planned: PlannedEmail, purchased_at: datetime) -> str:
    """The plain-text body (the format in this module's docstring)."""
    purchase = planned.purchase
    rows = _rows(planned)
    widths = [max(len(row[i]) for row in [list(COLUMNS), *rows] if i < len(row)) for i in range(len(COLUMNS))]

    def table_line(cells: list[str]) -> str:
        # SKU and item name left-aligned, numbers right-aligned, as a till receipt does.
        out = [cell.ljust(widths[i]) if i < 2 else cell.rjust(widths[i]) for i, cell in enumerate(cells)]
        return " | ".join(out).rstrip()

    out = [purchase.store.name, "Order confirmation", ""]
    out += [f"{label}: {value}" for label, value in _header_fields(purchase, purchased_at)]
    out += ["", table_line(list(COLUMNS))]
    out += [table_line(row) for row in rows]
    out += [""]
    out += [
        f"{label}: {value}" for label, value in _total_fields(purchase, planned.anomaly == "missing_total")
    ]
    out += ["", f"Thank you for shopping at {purchase.store.name}.", ""]
    return "\n".join(out)


def render_html(planned: PlannedEmail, purchased_at: datetime) -> str:
    """The HTML body: the same fields, the lines as a table."""
    purchase = planned.purchase
    e = html.escape
    lang = purchase.store.locale.replace("_", "-")
    details = "".join(
        f"<tr><th>{e(label)}</th><td>{e(value)}</td></tr>"
        for label, value in _header_fields(purchase, purchased_at)
    )
    head = "".join(f"<th>{e(c)}</th>" for c in COLUMNS)
    body = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in _rows(planned))
    foot = "".join(
        f'<tr><th colspan="4">{e(label)}</th><td>{e(value)}</td></tr>'
        for label, value in _total_fields(purchase, planned.anomaly == "missing_total")
    )
    return (
        f'<!DOCTYPE html>\n<html lang="{lang}">\n<head><meta charset="utf-8">'
        f"<title>{e(subject(purchase))}</title></head>\n<body>\n"
        f"<h1>{e(purchase.store.name)}</h1>\n<p>Order confirmation</p>\n"
        f'<table class="order">{details}</table>\n'
        f'<table class="lines">\n<thead><tr>{head}</tr></thead>\n<tbody>{body}</tbody>\n'
        f"<tfoot>{foot}</tfoot>\n</table>\n"
        f"<p>Thank you for shopping at {e(purchase.store.name)}.</p>\n</body>\n</html>\n"
    )


def _charset(encoding: str) -> Charset:
    """UTF-8 with the body transfer encoding of ``encoding`` (8bit, quoted-printable or base64)."""
    charset = Charset("utf-8")
    # None is the documented "no encoding" value; typeshed declares the attribute as a plain int.
    charset.body_encoding = BODY_ENCODINGS[encoding]  # type: ignore[assignment]
    return charset


def _text_part(subtype: str, text: str, charset: Charset) -> MIMENonMultipart:
    part = MIMENonMultipart("text", subtype)
    part.set_payload(text, charset)  # sets the charset parameter and the transfer encoding
    return part


def build_message(
    planned: PlannedEmail,
    purchased_at: datetime,
    sent_at: datetime,
    recipient: str,
    domain: str,
    message_id: str,
) -> MIMEMultipart:
    """The email for ``planned``: ``purchased_at`` goes in the body, ``sent_at`` in the Date header.

    Built with the ``email.mime`` classes (the compat32 policy): they write the same standard MIME as
    ``EmailMessage`` at several times the speed, which is what the sending rate is bound by.
    """
    purchase = planned.purchase
    msg = MIMEMultipart("alternative")
    msg["From"] = formataddr((purchase.store.name, store_address(purchase.store.store_id, domain)), "utf-8")
    msg["To"] = recipient
    msg["Subject"] = subject(purchase)
    msg["Date"] = format_datetime(sent_at)
    msg["Message-ID"] = message_id
    charset = _charset(planned.encoding)
    msg.attach(_text_part("plain", render_text(planned, purchased_at), charset))
    msg.attach(_text_part("html", render_html(planned, purchased_at), charset))
    return msg
