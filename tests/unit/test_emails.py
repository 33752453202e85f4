"""Store confirmation emails: money formats, the anomaly plan, and the messages, without a mail server."""

from __future__ import annotations

import email
from collections import Counter
from datetime import UTC, datetime
from decimal import Decimal
from email import policy
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from omnistream.money import FORMATS, format_money, format_percent, parse_money
from omnistream.reconcile import journal_paths, read_journal, source_truth
from producers.emails.model import Provenance
from producers.emails.parser import ParseError, parse_email
from simulators.email_plan import (
    ANOMALY_BLOCK,
    ANOMALY_KINDS,
    CASHIERS,
    DUPLICATE_WINDOW,
    EmailPlanner,
    PlannedEmail,
    PurchaseLine,
    StorePurchase,
    anomaly_slots,
)
from simulators.email_sender import (
    EmailsConfig,
    EmailsRun,
    highest_numbers,
    manifest_from_journals,
    next_start_numbers,
    sent_record,
)
from simulators.emails import GARBLE, build_message, render_html, render_text
from simulators.reference import build_reference, money
from simulators.runs import EarlierRuns, OutDirInUse, RunJournal

D = Decimal


@pytest.mark.parametrize(
    ("locale", "amount", "text"),
    [
        ("de_DE", "1234.56", "1.234,56 €"),
        ("es_ES", "1234.56", "1.234,56 €"),
        ("it_IT", "1234.56", "1.234,56 €"),
        ("fr_FR", "1234.56", "1 234,56 €"),
        ("nl_NL", "1234.56", "€ 1.234,56"),
        ("en_IE", "1234.56", "€1,234.56"),
        ("de_DE", "0.05", "0,05 €"),
        ("fr_FR", "999.00", "999,00 €"),
        ("en_IE", "1000000.00", "€1,000,000.00"),
        ("nl_NL", "-12.30", "€ -12,30"),
        ("en_IE", "-12.30", "-€12.30"),
    ],
)
def test_money_is_formatted_per_locale(locale: str, amount: str, text: str) -> None:
    assert format_money(D(amount), locale) == text
    assert parse_money(text, locale) == D(amount)


@pytest.mark.parametrize("locale", sorted(FORMATS))
def test_money_round_trips(locale: str) -> None:
    for cents in (0, 1, 99, 100, 99_999, 100_000, 123_456_789):
        amount = D(cents) / 100
        assert parse_money(format_money(amount, locale), locale) == amount


def test_money_refuses_fractions_of_a_cent_and_foreign_formats() -> None:
    with pytest.raises(ValueError, match="cents"):
        format_money(D("1.005"), "de_DE")
    with pytest.raises(ValueError):
        parse_money("€1,234.56", "de_DE")
    with pytest.raises(ValueError):
        parse_money("1234,56 €", "de_DE")  # a grouped format needs its group separator
    with pytest.raises(KeyError, match="known"):
        format_money(D("1.00"), "pt_PT")


def test_tax_rates_print_as_percentages() -> None:
    assert format_percent(D("0.19")) == "19%"
    assert format_percent(D("0.20")) == "20%"
    assert format_percent(D("0.055")) == "5.5%"


def test_anomalies_are_an_exact_share_dealt_evenly() -> None:
    slots = anomaly_slots(seed=3, count=600, share=0.1)
    assert len(slots) == 60
    assert 0 not in slots
    assert Counter(slots.values()) == dict.fromkeys(ANOMALY_KINDS, 10)
    assert slots == anomaly_slots(seed=3, count=600, share=0.1)
    assert slots != anomaly_slots(seed=4, count=600, share=0.1)
    assert anomaly_slots(seed=3, count=10, share=0.0) == {}
    assert len(anomaly_slots(seed=3, count=10, share=1.0)) == 9  # all but the first
    with pytest.raises(ValueError, match="share"):
        anomaly_slots(seed=3, count=10, share=1.5)


def plan(seed: int = 5, count: int = 400, share: float = 0.3) -> list[PlannedEmail]:
    return list(EmailPlanner(seed, count, share).emails())


def test_plan_is_deterministic() -> None:
    assert plan() == plan()
    assert plan(seed=6) != plan()


def test_every_planned_line_is_within_the_confirmation_rule_and_genuine_emails_parse() -> None:
    # The producer's rule (producers/emails/parser.py): quantity at least 1, unit price 0 or more. The
    # simulator's malformed kinds break other things (a missing Total, a garbled line), never this.
    emails = plan(seed=11, count=600, share=0.3)
    for planned in emails:
        for line in planned.purchase.lines:
            assert line.quantity >= 1 and line.unit_price >= 0, (planned.seq, line)
    provenance = Provenance("imap://confirmations@127.0.0.1:13143/INBOX", 1, 1, datetime.now(UTC))
    at = datetime(2026, 11, 25, 18, 4, 5, tzinfo=UTC)
    for planned in emails:
        raw = build_message(planned, at, at, "to@example.com", "example.com", "<m@example.com>").as_bytes()
        if planned.malformed:
            with pytest.raises(ParseError, match=r"missing field|garbled"):
                parse_email(raw, provenance)
        else:
            assert parse_email(raw, provenance).total == planned.purchase.total


def test_order_numbers_run_per_store() -> None:
    seen: dict[str, list[int]] = {}
    for e in plan():
        if e.duplicate_of is None:
            store_id, number = e.purchase.order_number.split("-")
            assert store_id == e.purchase.store.store_id
            assert len(number) == 6
            seen.setdefault(store_id, []).append(int(number))
    assert len(seen) == len(build_reference(5).stores)
    for numbers in seen.values():
        assert numbers == list(range(1, len(numbers) + 1))
    first = next(iter(EmailPlanner(5, 1, 0.0, start_number=500).emails()))
    assert first.purchase.order_number.endswith("-000500")


def test_duplicates_repeat_a_recent_genuine_email() -> None:
    emails = plan()
    by_seq = {e.seq: e for e in emails}
    duplicates = [e for e in emails if e.anomaly == "duplicate"]
    assert duplicates
    for dup in duplicates:
        assert dup.duplicate_of is not None
        original = by_seq[dup.duplicate_of]
        assert original.genuine
        assert original.seq < dup.seq
        assert dup.purchase == original.purchase
        assert dup.encoding == original.encoding
        genuine_between = [e for e in emails[original.seq : dup.seq] if e.genuine]
        assert len(genuine_between) <= DUPLICATE_WINDOW


def test_each_anomaly_kind_is_shaped_as_described() -> None:
    encodings = {"quoted_printable": "quoted-printable", "base64": "base64"}
    for e in plan():
        if e.anomaly != "duplicate":  # a duplicate keeps its original's encoding (tested above)
            assert e.encoding == encodings.get(e.anomaly or "", "8bit")
        assert e.malformed == (e.anomaly in {"missing_total", "garbled_line"})
        assert (e.garbled_line is not None) == (e.anomaly == "garbled_line")
        if e.anomaly == "non_ascii":
            with pytest.raises(UnicodeEncodeError):
                e.purchase.cashier.encode("latin-1")
            assert all(not line.name.isascii() for line in e.purchase.lines)
        elif e.anomaly != "duplicate":
            assert e.purchase.cashier in CASHIERS


STORE = build_reference(42).stores[0]  # S001, Berlin, de_DE, 19 %
PURCHASE = StorePurchase(
    store=STORE,
    order_number="S001-000123",
    customer_id=1234,
    payment_method="card",
    cashier="Anna K.",
    lines=(
        PurchaseLine(1, "SKU-00012", "Lampe home 12", 2, D("12.99")),
        PurchaseLine(2, "SKU-00388", "Mantel apparel 388", 1, D("1234.50")),
    ),
)
BERLIN_TIME = datetime(2026, 11, 25, 18, 4, 5, tzinfo=ZoneInfo("Europe/Berlin"))

EXPECTED_TEXT = """\
omnistream Berlin
Order confirmation

Store: S001 omnistream Berlin
Order number: S001-000123
Date: 2026-11-25T18:04:05+01:00
Customer: 1234
Payment: card
Cashier: Anna K.

SKU       | Item               | Qty | Unit price | Line total
SKU-00012 | Lampe home 12      |   2 |    12,99 € |    25,98 €
SKU-00388 | Mantel apparel 388 |   1 | 1.234,50 € | 1.234,50 €

Subtotal: 1.260,48 €
Tax (19%): 239,49 €
Total: 1.499,97 €

Thank you for shopping at omnistream Berlin.
"""


def test_text_body_has_every_field() -> None:
    assert STORE.store_id == "S001"
    assert PURCHASE.tax == money(D("1260.48") * D("0.19"))
    assert render_text(PlannedEmail(seq=0, purchase=PURCHASE), BERLIN_TIME) == EXPECTED_TEXT


def test_walk_in_customers_are_named_so() -> None:
    walk_in = StorePurchase(**{**PURCHASE.__dict__, "customer_id": None})
    assert "\nCustomer: walk-in\n" in render_text(PlannedEmail(seq=0, purchase=walk_in), BERLIN_TIME)


def test_malformed_bodies_lose_the_total_or_garble_a_line() -> None:
    no_total = render_text(PlannedEmail(seq=0, purchase=PURCHASE, anomaly="missing_total"), BERLIN_TIME)
    assert "Total:" not in no_total.replace("Subtotal:", "")
    assert "Subtotal: 1.260,48 €" in no_total
    garbled = render_text(
        PlannedEmail(seq=0, purchase=PURCHASE, anomaly="garbled_line", garbled_line=1), BERLIN_TIME
    )
    line = next(x for x in garbled.splitlines() if x.startswith("SKU-00388"))
    assert line.endswith(GARBLE)
    assert line.count(" | ") == 3  # the line total column is gone
    assert "Total: 1.499,97 €" in garbled


def test_html_body_tables_the_lines() -> None:
    body = render_html(PlannedEmail(seq=0, purchase=PURCHASE), BERLIN_TIME)
    assert '<html lang="de-DE">' in body
    cells = ("SKU-00388", "Mantel apparel 388", "1", "1.234,50 €", "1.234,50 €")
    assert "<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>" in body
    assert '<tr><th colspan="4">Total</th><td>1.499,97 €</td></tr>' in body
    assert "<tr><th>Order number</th><td>S001-000123</td></tr>" in body


@pytest.mark.parametrize("encoding", ["8bit", "quoted-printable", "base64"])
def test_message_carries_the_body_in_the_planned_encoding(encoding: str) -> None:
    planned = PlannedEmail(seq=0, purchase=PURCHASE, encoding=encoding)
    sent_at = BERLIN_TIME.replace(minute=10)
    msg = build_message(
        planned,
        BERLIN_TIME,
        sent_at,
        "confirmations@stores.omnistream.local",
        "stores.omnistream.local",
        "<a@b>",
    )
    parsed = email.message_from_bytes(msg.as_bytes(), policy=policy.default)
    assert set(parsed.keys()) == {
        "Content-Type",
        "MIME-Version",
        "From",
        "To",
        "Subject",
        "Date",
        "Message-ID",
    }
    assert parsed["From"].addresses[0].addr_spec == "s001@stores.omnistream.local"
    assert parsed["Subject"] == "Order confirmation S001-000123"
    assert parsed["Message-ID"] == "<a@b>"
    assert parsed["Date"].datetime == sent_at
    assert parsed.get_content_type() == "multipart/alternative"
    text, html = parsed.get_body(("plain",)), parsed.get_body(("html",))
    assert text is not None and html is not None
    assert text["Content-Transfer-Encoding"] == html["Content-Transfer-Encoding"] == encoding
    assert text.get_content() == EXPECTED_TEXT
    assert "<td>1.234,50 €</td>" in html.get_content()


def test_non_ascii_store_names_are_encoded_in_the_from_header() -> None:
    munich = build_reference(42).stores[2]
    assert munich.city == "München"
    purchase = StorePurchase(**{**PURCHASE.__dict__, "store": munich, "order_number": "S003-000001"})
    msg = build_message(PlannedEmail(seq=0, purchase=purchase), BERLIN_TIME, BERLIN_TIME, "x@y", "d", "<a@b>")
    raw = msg.as_bytes()
    assert raw.split(b"\n\n", 1)[0].isascii()
    parsed = email.message_from_bytes(raw, policy=policy.default)
    assert parsed["From"].addresses[0].display_name == "omnistream München"


def test_run_counts_genuine_orders_once_and_reports_the_rest() -> None:
    run = EmailsRun(config=EmailsConfig(seed=5, count=400, anomaly_share=0.3), recipient="x@y")
    emails = plan()
    for e in emails:
        run.record(e, f"<{e.seq}@t>", datetime(2026, 11, 25, 23, 30, tzinfo=UTC), None)
    facts = run.finish().facts
    kinds = Counter(e.anomaly for e in emails)
    assert facts["emails_sent"] == 400
    assert facts["anomaly_counts"] == {k: kinds[k] for k in ANOMALY_KINDS} == dict.fromkeys(ANOMALY_KINDS, 20)
    assert facts["orders"] == 400 - 20 * 3  # duplicates and the two malformed kinds are not orders
    assert sum(t.orders for t in run.manifest.totals.values()) == facts["orders"]
    assert len(facts["malformed"]) == 40
    assert {m["day"] for m in facts["malformed"]} == {"2026-11-25"}
    genuine = [e for e in emails if e.genuine]
    assert sum(t.net for t in run.manifest.totals.values()) == sum(e.purchase.subtotal for e in genuine)
    assert sum(facts["transfer_encodings"].values()) == 400


# -- runs that may not end: endless plans, journals, order numbers across runs -----------------------------


def test_an_endless_plan_deals_anomalies_exactly_per_block() -> None:
    share = 0.06
    endless = EmailPlanner(8, None, share).emails()
    emails = [next(endless) for _ in range(3 * ANOMALY_BLOCK)]
    # Its first block is the bounded plan of one block's length, email for email.
    assert emails[:ANOMALY_BLOCK] == list(EmailPlanner(8, ANOMALY_BLOCK, share).emails())
    for block in range(3):
        kinds = Counter(e.anomaly for e in emails[block * ANOMALY_BLOCK : (block + 1) * ANOMALY_BLOCK])
        assert {k: kinds[k] for k in ANOMALY_KINDS} == dict.fromkeys(ANOMALY_KINDS, 10)
    by_seq = {e.seq: e for e in emails}
    for dup in (e for e in emails if e.anomaly == "duplicate"):
        assert dup.duplicate_of is not None and by_seq[dup.duplicate_of].genuine


def journal_emails(
    out: Path, seed: int, count: int, starts: dict[str, int] | None = None
) -> list[PlannedEmail]:
    """Journal a run as if the server had accepted every email, the way simulate_emails does."""
    with RunJournal.open_next(out, "emails") as journal:
        planner = EmailPlanner(
            seed + journal.index, count, 0.3, reference=build_reference(seed), start_numbers=starts
        )
        journal.write({"type": "run", "run_id": journal.run_id, "recipient": "x@y"})
        planned = list(planner.emails())
        for e in planned:
            message_id = f"<{journal.index}.{e.seq}@t>"
            journal.write(
                {
                    "type": "sending",
                    "seq": e.seq,
                    "order_number": e.purchase.order_number,
                    "message_id": message_id,
                }
            )
            journal.write(sent_record(e, message_id, datetime(2026, 11, 25, 23, 30, tzinfo=UTC), None))
    return planned


def test_a_new_run_continues_every_store_after_the_numbers_already_used(tmp_path: Path) -> None:
    first = journal_emails(tmp_path, 5, 200)
    highest = highest_numbers(EarlierRuns.read(tmp_path))
    used: dict[str, int] = {}
    for e in first:
        store_id, number = e.purchase.order_number.split("-")
        used[store_id] = max(used.get(store_id, 0), int(number))
    assert highest == used
    starts = next_start_numbers(highest, floor=1)
    assert starts == {store_id: n + 1 for store_id, n in used.items()}
    assert next_start_numbers(highest, floor=500) == dict.fromkeys(used, 500)

    second = journal_emails(tmp_path, 5, 200, starts)
    numbers = [e.purchase.order_number for e in first + second if e.duplicate_of is None]
    assert len(numbers) == len(set(numbers))  # no order number twice, so downstream dedup drops nothing
    # The second run draws other purchases (seed + 1), from the same master data.
    assert [e.purchase.lines for e in first[:20]] != [e.purchase.lines for e in second[:20]]
    skus = {p.sku: p.unit_price for p in build_reference(5).products}
    assert all(line.unit_price == skus[line.sku] for e in second for line in e.purchase.lines)


def test_a_number_reserved_before_a_kill_is_not_used_again(tmp_path: Path) -> None:
    with RunJournal.open_next(tmp_path, "emails") as journal:
        journal.write({"type": "run", "run_id": journal.run_id, "recipient": "x@y"})
        # kill -9 after the sending line: the email may or may not have reached the server.
        journal.write({"type": "sending", "seq": 0, "order_number": "S004-000017", "message_id": "<m@t>"})
    assert highest_numbers(EarlierRuns.read(tmp_path)) == {"S004": 17}
    current = EmailsRun(config=EmailsConfig(seed=5), recipient="x@y")
    facts = manifest_from_journals(tmp_path, current).facts
    assert facts["in_doubt"] == [
        {"run_id": journal.run_id, "seq": 0, "order_number": "S004-000017", "message_id": "<m@t>"}
    ]
    assert facts["emails_sent"] == 0
    assert facts["runs"][0]["ended"] is None  # killed: no end line


def test_the_email_manifest_of_journals_equals_their_truth_and_leaves_out_a_torn_line(tmp_path: Path) -> None:
    first = journal_emails(tmp_path, 5, 150)
    second = journal_emails(
        tmp_path, 5, 100, next_start_numbers(highest_numbers(EarlierRuns.read(tmp_path)), 1)
    )
    last = journal_paths(tmp_path)[-1]
    with last.open("ab") as f:  # a line cut short by kill -9: not a record (see read_journal)
        f.write(b'{"type":"email","seq":100,"message_id":"<x@t>","order_num')
    current = EmailsRun(config=EmailsConfig(seed=5), recipient="x@y", run_id="now")
    manifest = manifest_from_journals(tmp_path, current)
    truth = source_truth(tmp_path)
    assert {k: (t.orders, t.lines, t.net, t.tax) for k, t in truth.totals.items()} == {
        (c, s, d.isoformat()): (t.orders, t.lines, t.net, t.tax) for (c, s, d), t in manifest.totals.items()
    }
    facts = manifest.facts
    genuine = sum(1 for r in journal_records(tmp_path) if r.get("genuine"))
    assert facts["orders"] == genuine == sum(t.orders for t in truth.totals.values())
    assert facts["emails_sent"] == 250
    assert facts["in_doubt"] == []
    planned = Counter(e.anomaly for e in first + second)
    assert facts["anomaly_counts"] == {kind: planned[kind] for kind in ANOMALY_KINDS}
    assert facts["run"]["run_id"] == "now"


def journal_records(out: Path) -> list[dict[str, object]]:
    return [r for p in journal_paths(out) for r in read_journal(p)]


def test_config_without_an_end() -> None:
    assert EmailsConfig(rate=1, duration=0).emails is None
    assert EmailsConfig(rate=1, duration=0, count=4).emails == 4
    with pytest.raises(ValueError, match="needs a count"):
        _ = EmailsConfig(rate=0, duration=0).emails


def test_a_manifest_from_before_journals_is_adopted_not_lost_nor_counted_twice(tmp_path: Path) -> None:
    legacy = EmailsRun(config=EmailsConfig(seed=5, count=60, anomaly_share=0.3), recipient="x@y")
    for e in list(EmailPlanner(5, 60, 0.3).emails()):
        legacy.record(e, f"<{e.seq}@old>", datetime(2026, 11, 20, 12, tzinfo=UTC), None)
    legacy.finish().write(tmp_path / "manifest.json")
    before = source_truth(tmp_path)
    assert before.manifest_counted

    with RunJournal.open_next(tmp_path, "emails") as journal:
        assert journal.index == 1  # the old manifest became run 0
        numbers = highest_numbers(journal.earlier)
    assert numbers == highest_numbers(EarlierRuns.read(tmp_path))
    old = [m["order_number"] for m in legacy.messages]
    for store_id, n in numbers.items():
        assert n == max(int(o.split("-")[1]) for o in old if o.startswith(store_id))
    after = source_truth(tmp_path)
    assert not after.manifest_counted  # the journal counts, and only once
    assert after.totals == before.totals
    with pytest.raises(OutDirInUse, match="holds the runs of recipient 'x@y'"):
        RunJournal.open_next(
            tmp_path, "emails", check=lambda runs: runs.check_same("recipient", "z@y", "recipient", tmp_path)
        )
