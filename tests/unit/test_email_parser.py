"""The email producer's parser and records, without a mail server: every locale, every anomaly, every check.

Emails are built by the store-email simulator (what the POS sends); edits of its text body make the
inconsistent ones a real POS could send.
"""

from __future__ import annotations

import io
import json
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from email.message import EmailMessage
from email.mime.multipart import MIMEMultipart
from typing import Any
from zoneinfo import ZoneInfo

import fastavro
import pytest

from omnistream.dead_letter import REASON_LIMIT, DeadLetter, capped
from omnistream.kafka.serde import load_schema
from omnistream.money import FORMATS, format_money, parse_percent, round_cents
from producers.emails.checkpoint import Checkpoint
from producers.emails.limits import RECORD_FRAMING_BYTES, RecordLimits
from producers.emails.model import Provenance, StoreOrder
from producers.emails.parser import ParseError, parse_email, read_message, receipt_from_html
from producers.emails.producer import ProducerOptions
from producers.emails.serde import RecordCheck, RecordDoesNotFit
from simulators.email_plan import NON_ASCII_CASHIERS, PlannedEmail, PurchaseLine, StorePurchase
from simulators.emails import GARBLE, build_message, render_html, render_text
from simulators.reference import Store, build_reference

D = Decimal
REFERENCE = build_reference(42)
STORE_OF_LOCALE: dict[str, Store] = {}
for _store in REFERENCE.stores:
    STORE_OF_LOCALE.setdefault(_store.locale, _store)
PROVENANCE = Provenance(
    mailbox="imap://confirmations@127.0.0.1:13143/INBOX",
    uidvalidity=1795647231,
    uid=17,
    received_at=datetime(2026, 11, 25, 17, 4, 7, tzinfo=UTC),
)
MESSAGE_ID = "<0123456789abcdef@stores.omnistream.local>"


def purchase(store: Store, cashier: str = "Anna K.", suffix: str = "") -> StorePurchase:
    """Three lines, one of them over a thousand euros so that group separators show."""
    return StorePurchase(
        store=store,
        order_number=f"{store.store_id}-000123",
        customer_id=1234,
        payment_method="card",
        cashier=cashier,
        lines=(
            PurchaseLine(1, "SKU-00012", f"Lampe home 12{suffix}", 2, D("12.99")),
            PurchaseLine(2, "SKU-00388", f"Mantel apparel 388{suffix}", 1, D("1234.50")),
            PurchaseLine(3, "SKU-00007", f"Tasse kitchen 7{suffix}", 4, D("0.05")),
        ),
    )


def local_time(store: Store) -> datetime:
    return datetime(2026, 11, 25, 18, 4, 5, tzinfo=ZoneInfo(store.timezone))


def raw_email(planned: PlannedEmail, message_id: str = MESSAGE_ID) -> bytes:
    at = local_time(planned.purchase.store)
    domain = "stores.omnistream.local"
    return build_message(planned, at, at, f"confirmations@{domain}", domain, message_id).as_bytes()


def text_email(text: str, message_id: str | None = MESSAGE_ID) -> bytes:
    """A plain-text-only email with ``text`` as its body."""
    msg = EmailMessage()
    msg["Subject"] = "Order confirmation"
    if message_id is not None:
        msg["Message-ID"] = message_id
    msg.set_content(text, charset="utf-8")
    return msg.as_bytes()


def body_of(p: StorePurchase, **planned: Any) -> str:
    return render_text(PlannedEmail(seq=0, purchase=p, **planned), local_time(p.store))


def assert_order_matches(order: StoreOrder, p: StorePurchase) -> None:
    assert order.order_number == p.order_number
    assert order.store_id == p.store.store_id
    assert order.store_name == p.store.name
    assert order.ordered_at == local_time(p.store)
    assert order.ordered_at.utcoffset() == local_time(p.store).utcoffset()
    assert order.customer_id == p.customer_id
    assert order.payment_method == p.payment_method
    assert order.cashier == p.cashier
    assert [(x.line_number, x.sku, x.name, x.quantity, x.unit_price, x.line_total) for x in order.lines] == [
        (x.line_number, x.sku, x.name, x.quantity, x.unit_price, x.line_total) for x in p.lines
    ]
    assert (order.subtotal, order.tax_rate, order.tax, order.total) == (
        p.subtotal,
        p.store.tax_rate,
        p.tax,
        p.total,
    )
    assert order.currency == "EUR"
    assert order.provenance == PROVENANCE


# -- every locale, every transfer encoding ----------------------------------------------------------------


def test_every_locale_has_a_store() -> None:
    assert set(STORE_OF_LOCALE) == set(FORMATS)


@pytest.mark.parametrize("locale", sorted(FORMATS))
@pytest.mark.parametrize("encoding", ["8bit", "quoted-printable", "base64"])
def test_confirmation_is_read_exactly_in_every_locale_and_encoding(locale: str, encoding: str) -> None:
    p = purchase(STORE_OF_LOCALE[locale])
    assert format_money(p.total, locale) in body_of(p)  # amounts really are in the store's format
    order = parse_email(raw_email(PlannedEmail(seq=0, purchase=p, encoding=encoding)), PROVENANCE)
    assert_order_matches(order, p)
    assert order.message_id == MESSAGE_ID
    assert order.subtotal == D("1260.68")


@pytest.mark.parametrize("locale", sorted(FORMATS))
def test_html_part_is_read_when_there_is_no_text_part(locale: str) -> None:
    p = purchase(STORE_OF_LOCALE[locale], cashier=NON_ASCII_CASHIERS[0], suffix=" · “Premium”")
    html_only = MIMEMultipart("alternative")
    html_only["Message-ID"] = MESSAGE_ID
    full = read_message(raw_email(PlannedEmail(seq=0, purchase=p, encoding="quoted-printable")))
    html_only.attach(next(part for part in full.walk() if part.get_content_type() == "text/html"))
    assert_order_matches(parse_email(html_only.as_bytes(), PROVENANCE), p)


def test_walk_in_customer_has_no_customer_id() -> None:
    p = replace(purchase(STORE_OF_LOCALE["de_DE"]), customer_id=None)
    order = parse_email(raw_email(PlannedEmail(seq=0, purchase=p)), PROVENANCE)
    assert order.customer_id is None


# -- anomalies ------------------------------------------------------------------------------------------


def test_non_ascii_names_survive_every_encoding() -> None:
    for encoding in ("8bit", "quoted-printable", "base64"):
        for cashier in NON_ASCII_CASHIERS:
            p = purchase(STORE_OF_LOCALE["fr_FR"], cashier=cashier, suffix=" · Größe L")
            order = parse_email(raw_email(PlannedEmail(seq=0, purchase=p, encoding=encoding)), PROVENANCE)
            assert order.cashier == cashier
            assert order.lines[0].name == "Lampe home 12 · Größe L"


def test_a_resent_duplicate_parses_to_the_same_order_under_its_own_message_id() -> None:
    p = purchase(STORE_OF_LOCALE["nl_NL"])
    original = parse_email(raw_email(PlannedEmail(seq=0, purchase=p)), PROVENANCE)
    resent_email = raw_email(
        PlannedEmail(seq=9, purchase=p, anomaly="duplicate", duplicate_of=0), "<other@x>"
    )
    resent = parse_email(resent_email, replace(PROVENANCE, uid=18))
    assert resent.message_id == "<other@x>" != original.message_id
    assert replace(resent, message_id=None, provenance=PROVENANCE) == replace(original, message_id=None)


@pytest.mark.parametrize("locale", sorted(FORMATS))
@pytest.mark.parametrize("encoding", ["8bit", "base64"])
def test_missing_total_is_rejected_with_its_reason(locale: str, encoding: str) -> None:
    p = purchase(STORE_OF_LOCALE[locale])
    planned = PlannedEmail(seq=0, purchase=p, anomaly="missing_total", encoding=encoding)
    with pytest.raises(ParseError) as caught:
        parse_email(raw_email(planned), PROVENANCE)
    assert caught.value.reason == "missing field(s) in the text/plain part: Total"
    assert caught.value.message_id == MESSAGE_ID
    assert caught.value.order_number == p.order_number


@pytest.mark.parametrize("locale", sorted(FORMATS))
@pytest.mark.parametrize("garbled_line", [0, 1, 2])
def test_garbled_item_line_is_rejected_with_its_reason(locale: str, garbled_line: int) -> None:
    p = purchase(STORE_OF_LOCALE[locale])
    planned = PlannedEmail(seq=0, purchase=p, anomaly="garbled_line", garbled_line=garbled_line)
    with pytest.raises(ParseError) as caught:
        parse_email(raw_email(planned), PROVENANCE)
    reason = caught.value.reason
    assert reason.startswith(f"item line {garbled_line + 1} is garbled: cut off after 4 of 5 columns")
    assert "ending in U+FFFD replacement characters" in reason
    assert p.lines[garbled_line].sku in reason
    assert caught.value.order_number == p.order_number


def test_garbled_html_is_rejected_too() -> None:
    p = purchase(STORE_OF_LOCALE["en_IE"])
    planned = PlannedEmail(seq=0, purchase=p, anomaly="garbled_line", garbled_line=1)
    receipt = receipt_from_html(render_html(planned, local_time(p.store)))
    assert receipt.rows[1][-1].endswith(GARBLE)
    html_only = EmailMessage()
    html_only.set_content(render_html(planned, local_time(p.store)), subtype="html")
    with pytest.raises(ParseError, match=r"item line 2 is garbled: cut off after 4 of 5 columns"):
        parse_email(html_only.as_bytes(), PROVENANCE)


# -- inconsistent or incomplete bodies -------------------------------------------------------------------

GERMAN = purchase(STORE_OF_LOCALE["de_DE"])
GERMAN_TEXT = body_of(GERMAN)


@pytest.mark.parametrize(
    ("old", "new", "reason"),
    [
        (
            "Subtotal: 1.260,68 €",
            "Subtotal: 1.260,69 €",
            "Subtotal 1.260,69 € is not the sum of the line totals, 1.260,68 €",
        ),
        (
            "Tax (19%): 239,53 €",
            "Tax (19%): 239,54 €",
            "Tax 239,54 € is not 19% of 1.260,68 € rounded half-up to the cent, 239,53 €",
        ),
        (
            "Total: 1.500,21 €",
            "Total: 1.500,22 €",
            "Total 1.500,22 € is not Subtotal + Tax, 1.260,68 € + 239,53 € = 1.500,21 €",
        ),
        (
            "|   2 |    12,99 € |    25,98 €",
            "|   2 |    12,99 € |    25,99 €",
            "item line 1 (SKU-00012): 2 x 12,99 € is 25,98 €, not 25,99 €",
        ),
        ("Tax (19%):", "Tax:", "the Tax field has no rate (expected e.g. 'Tax (19%)'): Tax '239,53 €'"),
        ("Tax (19%):", "Tax (19 pct):", "the tax rate '19 pct' is not a percentage such as '19%'"),
        (
            "Date: 2026-11-25T18:04:05+01:00",
            "Date: 2026-11-25T18:04:05",
            "Date '2026-11-25T18:04:05' has no UTC offset, so it names no instant",
        ),
        (
            "Date: 2026-11-25T18:04:05+01:00",
            "Date: 25.11.2026 18:04",
            "Date '25.11.2026 18:04' is not an ISO 8601 date and time",
        ),
        ("Customer: 1234", "Customer: guest", "Customer 'guest' is neither a customer number nor 'walk-in'"),
        ("Cashier: Anna K.", "Cashier: ", "the Cashier field is empty"),
        ("Store: S001 omnistream Berlin", "Store: S001", "Store 'S001' is not '<store id> <store name>'"),
        (
            "Order number: S001-000123",
            "Order number: S001 000123",
            "Order number 'S001 000123' is empty or has spaces",
        ),
        (
            "|   2 |    12,99 €",
            "|   0 |    12,99 €",
            "item line 1 quantity '0' is not a positive whole number",
        ),
        (
            "|   2 |    12,99 €",
            "| two |    12,99 €",
            "item line 1 quantity 'two' is not a positive whole number",
        ),
        (
            "Cashier: Anna K.",
            "Cashier: Anna K.\nCashier: Ben M.",
            "the Cashier field appears twice in the text/plain part",
        ),
        (
            "Cashier: Anna K.",
            f"Cashier: Anna {GARBLE}",
            f"the Cashier field is garbled (U+FFFD replacement characters): 'Anna {GARBLE}'",
        ),
        ("Store: S001 omnistream Berlin\n", "", "missing field(s) in the text/plain part: Store"),
        (
            "Subtotal: 1.260,68 €\nTax (19%): 239,53 €\n",
            "",
            "missing field(s) in the text/plain part: Subtotal, Tax",
        ),
    ],
)
def test_inconsistent_or_incomplete_bodies_are_rejected_precisely(old: str, new: str, reason: str) -> None:
    assert old in GERMAN_TEXT
    with pytest.raises(ParseError) as caught:
        parse_email(text_email(GERMAN_TEXT.replace(old, new, 1)), PROVENANCE)
    assert caught.value.reason == reason
    assert caught.value.message_id == MESSAGE_ID


def test_amounts_must_be_in_one_known_format() -> None:
    mixed = GERMAN_TEXT.replace("Total: 1.500,21 €", "Total: €1,531.15")
    with pytest.raises(ParseError, match=r"^the amounts are not all written in one format: "):
        parse_email(text_email(mixed), PROVENANCE)
    unknown = GERMAN_TEXT.replace("Total: 1.500,21 €", "Total: 1531.15 EUR")
    with pytest.raises(ParseError, match=r"^Total '1531.15 EUR' is not an amount in any store format"):
        parse_email(text_email(unknown), PROVENANCE)


def test_a_dot_left_by_smtp_dot_stuffing_is_named_in_the_reason() -> None:
    # Seen when a sender writes bare LF line ends: a quoted-printable soft break before ".18" makes a line
    # start with "." that SMTP doubles and the server, looking for CRLF, never undoes.
    irish = body_of(purchase(STORE_OF_LOCALE["en_IE"])).replace("€25.98", "€25..98")
    with pytest.raises(ParseError) as caught:
        parse_email(text_email(irish), PROVENANCE)
    assert caught.value.reason.startswith(
        "item line 1 Line total '€25..98' is not an amount in any store format"
    )
    assert caught.value.reason.endswith("a doubled '.' is what SMTP dot-stuffing leaves when not undone")


def test_a_row_short_of_columns_without_garbage_is_rejected() -> None:
    short = GERMAN_TEXT.replace("|    12,99 € |    25,98 €", "|    25,98 €")
    with pytest.raises(
        ParseError, match=r"^item line 1 has 4 of 5 columns \(SKU \| Item .*\): 'SKU-00012 \|"
    ):
        parse_email(text_email(short), PROVENANCE)


def test_a_confirmation_without_items_or_text_is_rejected() -> None:
    header, _, rest = GERMAN_TEXT.partition("SKU       |")
    no_items = header + rest.split("\n\n", 1)[1]
    with pytest.raises(ParseError, match=r"^no item lines in the text/plain part$"):
        parse_email(text_email(no_items), PROVENANCE)
    not_text = EmailMessage()
    not_text["Message-ID"] = MESSAGE_ID
    not_text.set_content(b"\x89PNG", maintype="image", subtype="png")
    with pytest.raises(ParseError, match=r"^no text/plain or text/html part \(the email is image/png\)$"):
        parse_email(not_text.as_bytes(), PROVENANCE)
    with pytest.raises(ParseError) as caught:
        parse_email(text_email("Hello, is this the shop?", message_id=None), PROVENANCE)
    assert caught.value.message_id is None
    assert caught.value.order_number is None


def test_an_item_name_with_a_bar_keeps_it() -> None:
    text = GERMAN_TEXT.replace("Lampe home 12      ", "Lampe | home 12    ")
    assert parse_email(text_email(text), PROVENANCE).lines[0].name == "Lampe | home 12"


def test_tax_is_checked_rounded_half_up_not_half_even() -> None:
    # 2.50 x 21 % = 0.525: half-up makes 0.53 (a till's rounding), half-even would make 0.52.
    store = STORE_OF_LOCALE["es_ES"]
    p = replace(purchase(store), lines=(PurchaseLine(1, "SKU-00001", "Vaso kitchen 1", 1, D("2.50")),))
    assert p.tax == D("0.53") == round_cents(D("0.525"))
    assert parse_email(raw_email(PlannedEmail(seq=0, purchase=p)), PROVENANCE).tax == D("0.53")
    half_even = (
        body_of(p).replace("Tax (21%): 0,53 €", "Tax (21%): 0,52 €").replace("Total: 3,03", "Total: 3,02")
    )
    with pytest.raises(
        ParseError, match=r"^Tax 0,52 € is not 21% of 2,50 € rounded half-up to the cent, 0,53 €$"
    ):
        parse_email(text_email(half_even), PROVENANCE)


# -- the confirmation rule: quantity at least 1, unit price 0 or more -----------------------------------


def test_a_negative_unit_price_is_rejected_whatever_the_lines_add_up_to() -> None:
    # A "return" written as a negative line, everything else consistent: the order would total -23,80 €.
    store = STORE_OF_LOCALE["de_DE"]
    p = replace(purchase(store), lines=(PurchaseLine(1, "SKU-00002", "Tasse kitchen 2", 2, D("-10.00")),))
    assert p.total == D("-23.80")
    with pytest.raises(ParseError) as caught:
        parse_email(raw_email(PlannedEmail(seq=0, purchase=p)), PROVENANCE)
    assert caught.value.reason == (
        "item line 1 (SKU-00002) unit price -10,00 € is negative: an order confirmation confirms a sale, so "
        "every line has a quantity of at least 1 and a unit price of 0 or more (returns and refunds are "
        "documents of their own, not negative lines)"
    )
    assert caught.value.order_number == p.order_number


@pytest.mark.parametrize("locale", sorted(FORMATS))
def test_a_negative_line_among_positive_ones_is_rejected_in_every_format(locale: str) -> None:
    p = purchase(STORE_OF_LOCALE[locale])
    lines = (*p.lines, PurchaseLine(4, "SKU-00009", "Rabatt", 1, D("-1234.50")))
    with pytest.raises(ParseError, match=r"^item line 4 \(SKU-00009\) unit price .* is negative"):
        parse_email(raw_email(PlannedEmail(seq=0, purchase=replace(p, lines=lines))), PROVENANCE)


def test_a_free_item_is_an_ordinary_line() -> None:
    p = purchase(STORE_OF_LOCALE["fr_FR"])
    free = replace(p, lines=(*p.lines, PurchaseLine(4, "SKU-00010", "Sac cadeau", 1, D("0.00"))))
    order = parse_email(raw_email(PlannedEmail(seq=0, purchase=free)), PROVENANCE)
    assert (order.lines[-1].unit_price, order.lines[-1].line_total) == (D("0.00"), D("0.00"))
    assert (order.subtotal, order.total) == (p.subtotal, p.total)


def test_a_quantity_below_one_is_rejected_as_printed() -> None:
    for printed in ("0", "-2", "00"):
        text = GERMAN_TEXT.replace("|   2 |    12,99 €", f"| {printed:>3} |    12,99 €", 1)
        with pytest.raises(ParseError, match=rf"^item line 1 quantity '{printed}' is not a positive whole"):
            parse_email(text_email(text), PROVENANCE)


def test_fractional_tax_rates_are_exact() -> None:
    assert parse_percent("5.5%") == D("0.055")
    assert parse_percent("19%") == D("0.19")
    with pytest.raises(ValueError, match="percentage"):
        parse_percent("19")


# -- the Avro records -----------------------------------------------------------------------------------


def avro_round_trip(schema_name: str, record: dict[str, Any]) -> dict[str, Any]:
    schema = fastavro.parse_schema(json.loads(load_schema(schema_name)))
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, schema, record)
    buffer.seek(0)
    decoded = fastavro.schemaless_reader(buffer, schema, schema)
    assert isinstance(decoded, dict)
    return decoded


def test_order_record_round_trips_through_its_schema_exactly() -> None:
    order = parse_email(
        raw_email(PlannedEmail(seq=0, purchase=purchase(STORE_OF_LOCALE["it_IT"]))), PROVENANCE
    )
    decoded = avro_round_trip("store_order", order.to_avro())
    assert decoded["ordered_at"] == datetime(2026, 11, 25, 17, 4, 5, tzinfo=UTC)
    assert decoded["ordered_at_local"] == "2026-11-25T18:04:05+01:00"
    assert decoded["tax_rate"] == D("0.2200")
    assert (decoded["subtotal"], decoded["tax"], decoded["total"]) == (
        D("1260.68"),
        D("277.35"),
        D("1538.03"),
    )
    assert decoded["lines"][1] == {
        "line_number": 2,
        "sku": "SKU-00388",
        "name": "Mantel apparel 388",
        "quantity": 1,
        "unit_price": D("1234.50"),
        "line_total": D("1234.50"),
    }
    assert (decoded["message_id"], decoded["imap_uid"], decoded["uidvalidity"]) == (
        MESSAGE_ID,
        17,
        1795647231,
    )
    assert decoded["mailbox"] == PROVENANCE.mailbox
    assert decoded["received_at"] == PROVENANCE.received_at
    assert decoded["customer_id"] == 1234


def test_dead_letter_and_checkpoint_records_round_trip() -> None:
    raw = text_email("not a confirmation")
    letter = DeadLetter.from_error(
        ParseError("missing field(s) in the text/plain part: Total"),
        topic="stores.order_confirmations",
        source=PROVENANCE.mailbox,
        payload=raw,
        key=b"S001-000123",
        source_id=MESSAGE_ID,
        attributes={"imap_uid": "17", "uidvalidity": "1795647231"},
    )
    decoded = avro_round_trip("dead_letter", letter.to_avro())
    assert decoded["error_class"] == "producers.emails.parser.ParseError"
    assert decoded["reason"] == "missing field(s) in the text/plain part: Total"
    assert decoded["payload"] == raw
    assert decoded["attributes"] == {"imap_uid": "17", "uidvalidity": "1795647231"}
    checkpoint = Checkpoint(PROVENANCE.mailbox, 1795647231, 120, 3, "tx", datetime(2026, 11, 25, tzinfo=UTC))
    assert Checkpoint.from_avro(avro_round_trip("email_checkpoint", checkpoint.to_avro())) == checkpoint


# -- what the order schema cannot hold, named ------------------------------------------------------------


def test_an_amount_beyond_the_schemas_precision_is_named_not_written() -> None:
    store = STORE_OF_LOCALE["de_DE"]
    p = replace(purchase(store), lines=(PurchaseLine(1, "SKU-00001", "Vitrine", 1, D("99999999999.99")),))
    email_bytes = raw_email(PlannedEmail(seq=0, purchase=p))
    assert "99.999.999.999,99 €".encode() in email_bytes  # as the till prints it
    order = parse_email(email_bytes, PROVENANCE)  # a consistent confirmation
    check = RecordCheck.of("store_order")
    record = order.to_avro()
    with pytest.raises(ValueError, match="decimal precision"):  # what fastavro says, unwrapped
        avro_round_trip("store_order", record)
    with pytest.raises(RecordDoesNotFit) as caught:
        check.refuse(record)
    assert str(caught.value) == (
        "the order does not fit schemas/store_order.avsc: lines[0].unit_price = 99999999999.99 does not fit "
        "decimal(12,2), at most 10 digits before the point; lines[0].line_total = 99999999999.99 does not "
        "fit decimal(12,2), at most 10 digits before the point; subtotal = 99999999999.99 does not fit "
        "decimal(12,2), at most 10 digits before the point (and 2 more)"
    )


def test_an_int_beyond_32_bits_is_refused_before_fastavro_writes_it_silently() -> None:
    order = parse_email(
        raw_email(PlannedEmail(seq=0, purchase=purchase(STORE_OF_LOCALE["de_DE"]))), PROVENANCE
    )
    record = order.to_avro()
    check = RecordCheck.of("store_order")
    check.integers_in_range(record)  # an ordinary order fits
    record["lines"][2]["quantity"] = 2**31
    assert avro_round_trip("store_order", record)["lines"][2]["quantity"] == 2**31  # no error from fastavro
    with pytest.raises(
        RecordDoesNotFit, match=r"lines\[2\]\.quantity = 2147483648 does not fit int \(32 bits\)"
    ):
        check.integers_in_range(record)


def test_a_dead_letter_reason_is_cut_to_its_limit_saying_so() -> None:
    reason = "item line 1 is garbled: " + "x" * 10_000
    letter = DeadLetter.from_error(ParseError(reason), topic="t", source="s", payload=None)
    assert len(letter.reason) < REASON_LIMIT + 40
    assert letter.reason.startswith(reason[:REASON_LIMIT])
    assert letter.reason.endswith(f"… ({len(reason) - REASON_LIMIT:,} more characters cut)")
    assert capped(b"abcdef", 4) == (b"abcd", True)
    assert capped(b"abc", 4) == (b"abc", False)


def test_record_limits_are_the_smaller_of_producer_and_topic_less_framing() -> None:
    limits = RecordLimits(1_000_000, {"orders": 1_048_588, "orders.dlq": 200_000})
    assert limits.limit("orders") == 1_000_000 - RECORD_FRAMING_BYTES
    assert limits.limit("orders.dlq") == 200_000 - RECORD_FRAMING_BYTES
    assert limits.fits("orders", b"k" * 10, b"v" * (limits.limit("orders") - 10))
    assert not limits.fits("orders", b"k" * 10, b"v" * (limits.limit("orders") - 9))
    assert limits.batch_size == 200_000 - RECORD_FRAMING_BYTES  # no topic refuses a whole batch
    assert limits.explain("orders.dlq") == (
        "199,488 bytes (the producer's message.max.bytes 1,000,000; the topic's max.message.bytes 200,000; "
        "less 512 for framing)"
    )


def test_the_archive_folder_is_another_folder_than_the_one_read() -> None:
    assert ProducerOptions().archive_folder == "Archive"
    assert ProducerOptions(archive_folder=None).archive_folder is None
    for folder, archive in (("INBOX", "INBOX"), ("INBOX", "inbox"), ("Stores", "Stores"), ("INBOX", "")):
        with pytest.raises(ValueError, match="another folder than the one read"):
            ProducerOptions(folder=folder, archive_folder=archive)
    assert ProducerOptions(folder="Stores", archive_folder="stores").archive_folder == "stores"
