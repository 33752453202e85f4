"""The store-email simulator against the stack's GreenMail, read back over IMAP like the producer will.

Each test gets a mailbox of its own (created and removed through GreenMail's API). The bodies are parsed
from the text part only, the way a parser of real POS emails has to.
"""

from __future__ import annotations

import email
import json
import re
import signal
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from email import policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from imapclient import IMAPClient
from typer.testing import CliRunner

from omnistream.manifest import read_totals
from omnistream.money import parse_money
from omnistream.reconcile import journal_paths, read_journal, source_truth
from omnistream.settings import MailSettings, get_settings
from simulators.cli import simulate_app
from simulators.email_plan import ANOMALY_KINDS
from simulators.email_sender import MANIFEST_NAME, EmailsConfig, highest_numbers, send_emails
from simulators.reference import build_reference, money
from simulators.runs import EarlierRuns
from tests.support.outage_relay import OutageRelay
from tests.support.simulator_runs import records_by_run, start, stop, wait_for_log, wait_for_records

pytestmark = pytest.mark.integration

SERVER_HEADERS = {"Received", "Return-Path"}  # added by the mail server, not by the store
STORE_HEADERS = {"Content-Type", "MIME-Version", "From", "To", "Subject", "Date", "Message-ID"}


def fetch_all(mail: MailSettings, expected: int, deadline_s: float = 60.0) -> list[EmailMessage]:
    """Every message in the mailbox's INBOX, once ``expected`` of them have arrived (IMAP IDLE wakes us)."""
    deadline = time.monotonic() + deadline_s
    with IMAPClient(mail.host, mail.imap_port, ssl=False, timeout=30) as imap:
        imap.login(mail.mailbox_user, mail.mailbox_password.get_secret_value())
        imap.select_folder("INBOX", readonly=True)
        uids = imap.search("ALL")
        while len(uids) < expected and time.monotonic() < deadline:
            imap.idle()
            imap.idle_check(timeout=max(0.1, min(5.0, deadline - time.monotonic())))
            imap.idle_done()
            uids = imap.search("ALL")
        assert len(uids) == expected, f"{len(uids)} messages arrived, expected {expected}"
        raw = imap.fetch(uids, ["RFC822"])
    return [email.message_from_bytes(raw[uid][b"RFC822"], policy=policy.default) for uid in uids]


class Malformed(ValueError):
    """The body is not a complete confirmation."""


@dataclass(frozen=True)
class ParsedOrder:
    store_id: str
    order_number: str
    purchased_at: datetime
    customer: str
    cashier: str
    lines: list[tuple[str, int, Decimal, Decimal]]
    subtotal: Decimal
    tax: Decimal
    total: Decimal


FIELD = re.compile(
    r"^(Store|Order number|Date|Customer|Payment|Cashier|Subtotal|Tax \([\d.]+%\)|Total): (.*)$"
)
REQUIRED = {"Store", "Order number", "Date", "Customer", "Payment", "Cashier", "Subtotal", "Tax", "Total"}


def parse_body(text: str, locales: dict[str, str]) -> ParsedOrder:
    """A strict reading of the text part: every field present, every item line complete.

    ``locales`` maps store id to the store's locale (master data), which says how amounts are written.
    """
    fields: dict[str, str] = {}
    cells: list[list[str]] = []
    in_table = False
    for line in text.splitlines():
        if line.startswith("SKU ") and line.endswith("Line total"):
            in_table = True
        elif in_table and not line:
            in_table = False
        elif in_table:
            cells.append([cell.strip() for cell in line.split(" | ")])
        elif match := FIELD.match(line):
            fields[match.group(1).split(" (")[0]] = match.group(2)
    if REQUIRED - fields.keys():
        raise Malformed(f"missing {sorted(REQUIRED - fields.keys())}")
    store_id = fields["Store"].split(" ", 1)[0]
    locale = locales[store_id]
    lines = []
    for row in cells:
        if len(row) != 5:
            raise Malformed(f"an item line with {len(row)} columns: {' | '.join(row)!r}")
        lines.append((row[0], int(row[2]), parse_money(row[3], locale), parse_money(row[4], locale)))
    return ParsedOrder(
        store_id=store_id,
        order_number=fields["Order number"],
        purchased_at=datetime.fromisoformat(fields["Date"]),
        customer=fields["Customer"],
        cashier=fields["Cashier"],
        lines=lines,
        subtotal=parse_money(fields["Subtotal"], locale),
        tax=parse_money(fields["Tax"], locale),
        total=parse_money(fields["Total"], locale),
    )


def text_of(msg: EmailMessage) -> str:
    part = msg.get_body(("plain",))
    assert part is not None
    return str(part.get_content())


def encoding_of(msg: EmailMessage) -> str:
    encodings = {str(part["Content-Transfer-Encoding"]) for part in msg.iter_parts()}
    assert len(encodings) == 1, encodings  # both parts of an email use the same encoding
    return encodings.pop()


def totals_of(orders: list[ParsedOrder]) -> dict[tuple[str, str | None, str], dict[str, Any]]:
    out: dict[tuple[str, str | None, str], dict[str, Any]] = {}
    for order in orders:
        key = ("in_store", order.store_id, order.purchased_at.astimezone(UTC).date().isoformat())
        row = out.setdefault(key, {"orders": 0, "lines": 0, "net": Decimal("0.00"), "tax": Decimal("0.00")})
        row["orders"] += 1
        row["lines"] += len(order.lines)
        row["net"] += order.subtotal
        row["tax"] += order.tax
    for row in out.values():
        row["gross"] = row["net"] + row["tax"]
    return out


def test_mailbox_holds_what_the_manifest_says(mailbox: MailSettings, tmp_path: Path) -> None:
    count, share = 240, 0.25
    run = send_emails(mailbox, EmailsConfig(seed=11, rate=0, count=count, anomaly_share=share))
    path = run.finish().write(tmp_path / MANIFEST_NAME)
    facts = json.loads(path.read_text())["facts"]
    messages = fetch_all(mailbox, expected=count)

    # Every email once, and only the headers a POS sets.
    assert facts["emails_sent"] == count == facts["orders"] + facts["duplicates"] + facts["malformed_count"]
    stores = {store.store_id: store for store in build_reference(11).stores}
    locales = {store_id: store.locale for store_id, store in stores.items()}
    by_id = {str(m["Message-ID"]): m for m in messages}
    assert len(by_id) == count
    assert set(by_id) == {m["message_id"] for m in facts["messages"]}
    for msg in messages:
        assert set(msg.keys()) - SERVER_HEADERS == STORE_HEADERS
        assert msg.get_content_type() == "multipart/alternative"
        assert [p.get_content_type() for p in msg.iter_parts()] == ["text/plain", "text/html"]

    # The parser rejects exactly the malformed emails, and accepts the rest.
    parsed: dict[str, ParsedOrder] = {}
    rejected: dict[str, str] = {}
    for message_id, msg in by_id.items():
        try:
            parsed[message_id] = parse_body(text_of(msg), locales)
        except Malformed as exc:
            rejected[message_id] = str(exc)
    malformed = {m["message_id"]: m for m in facts["malformed"]}
    assert rejected.keys() == malformed.keys()
    for message_id, reason in rejected.items():
        expected = "missing ['Total']" if malformed[message_id]["kind"] == "missing_total" else "4 columns"
        assert expected in reason

    # Each order is internally exact, dated in its store's zone, and sent from its store.
    for message_id, order in parsed.items():
        store = stores[order.store_id]
        assert order.order_number.startswith(f"{order.store_id}-")
        assert (
            by_id[message_id]["From"].addresses[0].addr_spec == f"{order.store_id.lower()}@{mailbox.domain}"
        )
        assert by_id[message_id]["Subject"] == f"Order confirmation {order.order_number}"
        assert (
            order.purchased_at.utcoffset()
            == order.purchased_at.astimezone(ZoneInfo(store.timezone)).utcoffset()
        )
        for _, qty, unit, line_total in order.lines:
            assert line_total == unit * qty
        assert order.subtotal == sum(line[3] for line in order.lines)
        assert order.tax == money(order.subtotal * store.tax_rate)
        assert order.total == order.subtotal + order.tax

    # Duplicates: the same order number under a new Message-ID, the same body; counted once.
    by_number: dict[str, list[str]] = {}
    for message_id, order in parsed.items():
        by_number.setdefault(order.order_number, []).append(message_id)
    repeats = {n: ids for n, ids in by_number.items() if len(ids) > 1}
    assert sum(len(ids) - 1 for ids in repeats.values()) == facts["duplicates"]
    for dup in facts["anomalies"]["duplicate"]:
        assert text_of(by_id[dup["message_id"]]) == text_of(by_id[dup["original_message_id"]])
        assert dup["order_number"] in repeats
    first_sent = [parsed[ids[0]] for ids in by_number.values()]
    assert len(first_sent) == facts["orders"]

    # The manifest's totals are what the bodies say, to the cent.
    assert totals_of(first_sent) == read_totals(path)

    # Anomalies, observed in the mailbox, at exactly the configured share (the simulator deals out
    # round(share x count) of them, a sixth of each kind, rather than sampling), encodings as planned.
    encodings = Counter(encoding_of(m) for m in messages)
    duplicate_ids = {d["message_id"] for d in facts["anomalies"]["duplicate"]}
    non_ascii = [i for i, o in parsed.items() if not o.cashier.isascii() and i not in duplicate_ids]
    observed = {
        "duplicate": facts["duplicates"],
        "malformed": len(rejected),
        "non_ascii": len(non_ascii),
        "encoded": encodings["quoted-printable"] + encodings["base64"],
    }
    duplicated_encoded = sum(
        1 for d in facts["anomalies"]["duplicate"] if encoding_of(by_id[d["message_id"]]) != "8bit"
    )
    per_kind = round(share * count) // len(ANOMALY_KINDS)
    assert observed == {
        "duplicate": per_kind,
        "malformed": 2 * per_kind,
        "non_ascii": per_kind,
        "encoded": 2 * per_kind + duplicated_encoded,
    }
    assert dict(encodings) == {k: v for k, v in facts["transfer_encodings"].items() if v}
    for kind, encoding in (("quoted_printable", "quoted-printable"), ("base64", "base64")):
        assert {encoding_of(by_id[a["message_id"]]) for a in facts["anomalies"][kind]} == {encoding}
    for a in facts["anomalies"]["non_ascii"]:
        assert not parsed[a["message_id"]].cashier.isascii()
        with pytest.raises(UnicodeEncodeError):
            parsed[a["message_id"]].cashier.encode("latin-1")


def test_cli_sends_clean_emails_at_the_rate(
    mailbox: MailSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in (("HOST", mailbox.host), ("SMTP_PORT", mailbox.smtp_port), ("DOMAIN", mailbox.domain)):
        monkeypatch.setenv(f"OMNISTREAM_MAIL__{key}", str(value))
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(
            simulate_app,
            [
                *("emails", "--seed", "4", "--rate", "20", "--duration", "1", "--anomaly-share", "0"),
                *("--to", mailbox.mailbox_address, "--out", str(tmp_path)),
            ],
        )
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    manifest = tmp_path / MANIFEST_NAME
    facts = json.loads(manifest.read_text())["facts"]
    assert facts["emails_sent"] == facts["orders"] == 20
    assert facts["run"]["seconds"] >= 19 / 20  # the 20th email is due 0.95 s after the first
    messages = fetch_all(mailbox, expected=20)
    assert {encoding_of(m) for m in messages} == {"8bit"}
    locales = {store.store_id: store.locale for store in build_reference(4).stores}
    assert totals_of([parse_body(text_of(m), locales) for m in messages]) == read_totals(manifest)


# -- runs under a supervisor: SIGTERM, kill -9 and restarts, outages ---------------------------------------


def start_emails(out: Path, mail: MailSettings, log: Path, env: dict[str, str] | None = None) -> Any:
    args = ["simulate", "emails", "--seed", "7", "--rate", "20", "--duration", "0", "--anomaly-share", "0.1"]
    return start([*args, "--to", mail.mailbox_address, "--out", str(out)], log, env)


def fetch_ids(mail: MailSettings, wanted: set[str], deadline_s: float = 60.0) -> list[EmailMessage]:
    """Every message in the mailbox once all of ``wanted`` (Message-IDs) have arrived."""
    deadline = time.monotonic() + deadline_s
    while True:
        with IMAPClient(mail.host, mail.imap_port, ssl=False, timeout=30) as imap:
            imap.login(mail.mailbox_user, mail.mailbox_password.get_secret_value())
            imap.select_folder("INBOX", readonly=True)
            uids = imap.search("ALL")
            raw = imap.fetch(uids, ["RFC822"]) if uids else {}
        messages = [email.message_from_bytes(raw[uid][b"RFC822"], policy=policy.default) for uid in uids]
        missing = wanted - {str(m["Message-ID"]) for m in messages}
        if not missing:
            return messages
        assert time.monotonic() < deadline, (
            f"{len(missing)} accepted emails never arrived: {sorted(missing)[:3]}"
        )
        time.sleep(0.5)


def journal_truth(out: Path) -> dict[tuple[str, str | None, str], dict[str, Any]]:
    """The journals' truth, read the way reconciliation reads it, in ``totals_of``'s shape."""
    return {
        key: {"orders": t.orders, "lines": t.lines, "net": t.net, "tax": t.tax, "gross": t.gross}
        for key, t in source_truth(out).totals.items()
    }


def mailbox_truth(messages: list[EmailMessage], seed: int, leave_out: set[str] = frozenset()) -> Any:
    """The first well-formed email of each order number, totalled (as staging dedups them)."""
    locales = {store.store_id: store.locale for store in build_reference(seed).stores}
    first: dict[str, ParsedOrder] = {}
    for msg in messages:
        if str(msg["Message-ID"]) in leave_out:
            continue
        try:
            order = parse_body(text_of(msg), locales)
        except Malformed:
            continue
        first.setdefault(order.order_number, order)
    return totals_of(list(first.values()))


def outcomes(records: list[dict[str, Any]]) -> tuple[set[str], set[str]]:
    """Message-IDs accepted, and reserved with no outcome (in doubt)."""
    accepted = {r["message_id"] for r in records if r["type"] == "email"}
    settled = {r["seq"] for r in records if r["type"] in ("email", "unsent")}
    doubt = {r["message_id"] for r in records if r["type"] == "sending" and r["seq"] not in settled}
    return accepted, doubt


def test_sigterm_stops_between_emails_and_the_journal_is_the_mailbox(
    mailbox: MailSettings, tmp_path: Path
) -> None:
    out, log = tmp_path / "emails", tmp_path / "emails.log"
    process = start_emails(out, mailbox, log)
    try:
        wait_for_records(out, "email", 40, process, log)
    finally:
        stop(process, signal.SIGTERM, log)
    assert process.returncode == 0, log.read_text()

    (records,) = records_by_run(out).values()
    assert records[-1]["type"] == "end" and records[-1]["reason"] == "stopped by SIGTERM"
    accepted, doubt = outcomes(records)
    assert doubt == set() and not any(r["type"] == "unsent" for r in records)
    messages = fetch_all(mailbox, expected=len(accepted))
    assert {str(m["Message-ID"]) for m in messages} == accepted
    assert mailbox_truth(messages, 7) == journal_truth(out)
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert manifest["journals"] == {p.stem: len(records) for p in journal_paths(out)}
    assert manifest["facts"]["emails_sent"] == len(accepted)
    assert manifest["facts"]["in_doubt"] == []
    assert read_totals(out / MANIFEST_NAME) == journal_truth(out)


def test_kill_9_then_a_restart_continues_the_order_numbers_and_the_truth_is_the_mailbox(
    mailbox: MailSettings, tmp_path: Path
) -> None:
    out, log = tmp_path / "emails", tmp_path / "emails.log"
    first = start_emails(out, mailbox, log)
    try:
        wait_for_records(out, "email", 30, first, log)
    finally:
        stop(first, signal.SIGKILL, log)
    assert first.returncode == -signal.SIGKILL
    second = start_emails(out, mailbox, log)
    try:
        wait_for_records(out, "email", 30, second, log, run=1)
    finally:
        stop(second, signal.SIGTERM, log)
    assert second.returncode == 0, log.read_text()

    killed, restarted = records_by_run(out).values()
    assert killed[-1]["type"] != "end"
    header = restarted[0]
    assert (header["run_index"], header["seed"], header["base_seed"]) == (1, 8, 7)
    # The restart begins every store after the highest number the killed run reserved (sent or not).
    reserved: dict[str, int] = {}
    for r in killed:
        if r["type"] == "sending":
            store_id, number = r["order_number"].split("-")
            reserved[store_id] = max(reserved.get(store_id, 0), int(number))
    assert header["start_numbers"] == {store_id: n + 1 for store_id, n in reserved.items()}
    genuine = [r["order_number"] for r in killed + restarted if r["type"] == "email" and r["genuine"]]
    assert len(genuine) == len(set(genuine))  # no order number twice: staging's dedup drops no order

    # The mailbox holds what both journals accepted, plus at most the email in flight when the kill came,
    # which the journal lists as in doubt; both runs together are the mailbox, to the cent.
    accepted, doubt = outcomes(killed)
    accepted |= outcomes(restarted)[0]
    assert len(doubt) <= 1
    messages = fetch_ids(mailbox, accepted)
    arrived = {str(m["Message-ID"]) for m in messages}
    assert accepted <= arrived <= accepted | doubt
    assert mailbox_truth(messages, 7, leave_out=arrived & doubt) == journal_truth(out)
    facts = json.loads((out / MANIFEST_NAME).read_text())["facts"]
    assert {d["message_id"] for d in facts["in_doubt"]} == doubt
    assert [r["ended"] for r in facts["runs"]] == [None, "stopped by SIGTERM"]


def test_emails_sent_while_the_mail_server_is_down_are_retried_not_lost(
    mailbox: MailSettings, tmp_path: Path
) -> None:
    out, log = tmp_path / "emails", tmp_path / "emails.log"
    relay = OutageRelay((mailbox.host, mailbox.smtp_port))
    process = start_emails(out, mailbox, log, env={"OMNISTREAM_MAIL__SMTP_PORT": str(relay.port)})
    try:
        before = wait_for_records(out, "email", 20, process, log)
        relay.cut()  # GreenMail is gone: the session reset, new connections refused
        wait_for_log(log, "retrying in", process)
        sent = sum(r["type"] == "email" for r in read_journal(journal_paths(out)[0]))
        time.sleep(3)
        assert sum(r["type"] == "email" for r in read_journal(journal_paths(out)[0])) == sent
        relay.restore()
        wait_for_records(out, "email", sum(r["type"] == "email" for r in before) + 20, process, log)
    finally:
        stop(process, signal.SIGTERM, log)
        relay.close()
    assert process.returncode == 0, log.read_text()

    (records,) = records_by_run(out).values()
    accepted, doubt = outcomes(records)
    assert doubt == set() and not any(r["type"] == "unsent" for r in records)
    # The email in hand when the server went away was sent again and accepted, not skipped.
    reserved = [r["seq"] for r in records if r["type"] == "sending"]
    assert reserved == [r["seq"] for r in records if r["type"] == "email"] == list(range(len(reserved)))
    messages = fetch_ids(mailbox, accepted)
    # A server that took an email but lost the session before its "250" gets it twice, same Message-ID.
    assert {str(m["Message-ID"]) for m in messages} == accepted
    assert mailbox_truth(messages, 7) == journal_truth(out)


def test_sigterm_while_the_server_is_away_stops_at_once_and_records_the_email_as_unsent_or_in_doubt(
    mailbox: MailSettings, tmp_path: Path
) -> None:
    out, log = tmp_path / "emails", tmp_path / "emails.log"
    relay = OutageRelay((mailbox.host, mailbox.smtp_port))
    process = start_emails(out, mailbox, log, env={"OMNISTREAM_MAIL__SMTP_PORT": str(relay.port)})
    try:
        wait_for_records(out, "email", 10, process, log)
        relay.cut()
        wait_for_log(log, "retrying in", process)
        began = time.monotonic()
        stop(process, signal.SIGTERM, log)
        stopped_in = time.monotonic() - began
    finally:
        relay.close()
    assert process.returncode == 0, log.read_text()
    assert stopped_in < 30, f"the back-off held up the stop for {stopped_in:.0f} s"  # a supervisor waits 60 s
    (records,) = records_by_run(out).values()
    # The email in hand when the cut came: ``unsent`` if the cut came before DATA, ``in_doubt`` if the
    # server had been handed the message (it may have kept it though its "250" never came back).
    (given_up,) = [r for r in records if r["type"] in ("unsent", "in_doubt")]
    assert "Stopping" in given_up["reason"]
    assert records[-1]["reason"] == "stopped by SIGTERM"
    (its_id,) = [r["message_id"] for r in records if r["type"] == "sending" and r["seq"] == given_up["seq"]]
    accepted, doubt = outcomes(records)
    in_mailbox = {str(m["Message-ID"]) for m in fetch_ids(mailbox, accepted)}
    if given_up["type"] == "unsent":
        assert doubt == set()
        assert in_mailbox == accepted  # the unsent one never came
    else:
        assert doubt == {its_id}
        assert accepted <= in_mailbox <= accepted | {its_id}
    # Its order number stays reserved: the next run does not use it again.
    store_id, _, number = given_up["order_number"].rpartition("-")
    assert highest_numbers(EarlierRuns.read(out))[store_id] >= int(number)
