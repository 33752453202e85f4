"""In-store order confirmations: send the planned emails over SMTP and record exactly what was accepted.

Emails go out at ``rate`` per second (duplicates included) for ``duration`` seconds, or ``count`` of them,
or until stopped (``duration`` 0), to the stores' confirmations mailbox, over one SMTP connection that is
re-opened if the server drops it.

Runs that may not end (simulators/runs.py): every run appends to its own journal under ``<out>/runs/``.
Before an email goes out, a ``sending`` line reserves its order number; once the server has accepted it,
an ``email`` line records it (with its ``truth`` if it is a genuine order); if it was never accepted (the
run was stopped or gave up), an ``unsent`` line says so, or an ``in_doubt`` line if the server had been
handed the message (the session dropped during DATA, before its reply) and so may have kept it. A new run
continues every store's order numbers after the highest one any earlier journal reserved (downstream, an
order number is the order's identity, so a number used twice would silently drop an order), and run ``n``
plays seed ``seed + n``. SIGTERM or SIGINT
stops the run between two emails. A bounded run, and a run that was stopped, ends by writing
``manifest.json``, summing up every journal in the out dir.

The manifest counts each genuine order once (channel ``in_store``, the store, UTC day of the purchase);
duplicates and malformed emails are not orders. Facts list every Message-ID sent, the anomalies by kind with
their Message-IDs and order numbers, the transfer encodings used, each malformed email's store, day and
amounts, so reconciliation can account for what a parser has to reject, and the emails in doubt.

Outages: a refused or dropped connection (or a 421 "closing channel") is retried with backoff, the same
email again, for ``retry_for_s`` seconds; then the run fails and its supervisor restarts it. An email the
server did not accept is never recorded as sent.

The known gaps: the ``email`` line is written just after the server's "250 OK". A ``kill -9`` in the
microseconds between the two leaves an accepted email out of the truth; its ``sending`` line stays without
an outcome, and the manifest lists it under ``in_doubt``, as it lists an email given up on after the server
had been handed it. (A server that takes an email but drops the
session before acknowledging it makes the retry deliver it twice; downstream dedups by order number.)
"""

from __future__ import annotations

import logging
import os
import smtplib
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import Message
from pathlib import Path
from types import TracebackType
from typing import Any
from zoneinfo import ZoneInfo

from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_delay, wait_exponential

from omnistream.errors import Unreachable
from omnistream.manifest import Manifest, journal_paths, read_journal, truth_change
from omnistream.settings import MailSettings
from simulators.email_plan import (
    ANOMALY_KINDS,
    DEFAULT_ENCODING,
    DUPLICATE_WINDOW,
    ENCODING_OF_KIND,
    EmailPlanner,
    PlannedEmail,
)
from simulators.emails import build_message, new_message_id, store_address
from simulators.reference import build_reference
from simulators.runs import EarlierRuns, RunJournal, Stopping, StopSignal

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
CHANNEL = "in_store"
SOURCE = "emails"


@dataclass(frozen=True)
class EmailsConfig:
    """One run of the store-email simulator."""

    seed: int = 42
    rate: float = 5.0  # emails per second; 0 or less: as fast as the server takes them
    duration: float = 60.0  # seconds; 0: until stopped (SIGTERM/SIGINT)
    count: int | None = None  # emails; overrides rate x duration
    anomaly_share: float = 0.05
    start_number: int = 1  # first order number of every store (a later run continues after the last)
    recipient: str | None = None  # default: the confirmations mailbox from the settings
    retry_for_s: float = 60.0  # how long a mail-server outage is ridden out before the run fails

    @property
    def emails(self) -> int | None:
        """Emails to send; None: until stopped."""
        if self.count is not None:
            return self.count
        if self.rate <= 0:
            raise ValueError("an unthrottled run (rate <= 0) needs a count")
        if self.duration == 0:
            return None
        return round(self.rate * self.duration)


class SmtpUnavailable(Unreachable):
    """The mail server cannot be reached, or dropped the session."""


def _is_transient(exc: BaseException) -> bool:
    """A connection problem worth a reconnect and another try; anything else is for a person to fix."""
    if isinstance(exc, smtplib.SMTPServerDisconnected | smtplib.SMTPConnectError):
        return True
    if isinstance(exc, smtplib.SMTPResponseException):
        return exc.smtp_code == 421  # "service not available, closing transmission channel"
    if isinstance(exc, smtplib.SMTPException):
        return False  # a refused sender or recipient, a 5xx
    return isinstance(exc, OSError)  # refused, reset, timed out, unreachable


class _Session(smtplib.SMTP):
    """An SMTP session that remembers whether a message was handed over (DATA began) on it."""

    handed_over = False

    def data(self, msg: Any) -> tuple[int, bytes]:  # smtplib types it with a 3.12-only Buffer
        self.handed_over = True
        return super().data(msg)


class SmtpSender:
    """One SMTP session to the mail server, re-opened when it drops.

    ``handed_over`` says whether the last ``send`` gave the server the message on some attempt: a session
    that drops during DATA, before the server's reply, may still have delivered it.
    """

    def __init__(
        self,
        mail: MailSettings,
        timeout: float = 30.0,
        retry_for_s: float = 10.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._mail = mail
        self._timeout = timeout
        self._retry_for_s = retry_for_s
        self._sleep = sleep
        self._smtp: _Session | None = None
        self.handed_over = False

    def __enter__(self) -> SmtpSender:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._smtp is not None:
            try:
                self._smtp.quit()
            except (smtplib.SMTPException, OSError):
                log.debug("SMTP session already gone at close")
            self._smtp = None

    @staticmethod
    def _log_retry(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        log.warning("%s; retrying in %.1f s", error, wait)

    def send(self, msg: Message, sender: str, recipient: str) -> None:
        """Send ``msg`` from ``sender`` to ``recipient``, connecting if needed; returns once accepted."""
        retrying = Retrying(
            retry=retry_if_exception_type(SmtpUnavailable),
            stop=stop_after_delay(self._retry_for_s),
            wait=wait_exponential(multiplier=0.2, max=5),
            sleep=self._sleep,
            before_sleep=self._log_retry,
            reraise=True,
        )
        # CRLF line endings: smtplib dot-stuffs lines that start with "." and the server undoes that only
        # after CRLF, so bare LF would leave a doubled dot in a wrapped quoted-printable body.
        data = msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))
        self.handed_over = False
        for attempt in retrying:
            with attempt:
                try:
                    if self._smtp is None:
                        log.debug("connecting to SMTP %s:%s", self._mail.host, self._mail.smtp_port)
                        self._smtp = _Session(self._mail.host, self._mail.smtp_port, timeout=self._timeout)
                    self._smtp.handed_over = False  # the session outlives the emails it carried
                    self._smtp.sendmail(sender, [recipient], data)
                except Exception as exc:
                    if not _is_transient(exc):
                        raise  # the server answered: a refusal, not a message in doubt
                    if self._smtp is not None:
                        # Dropped during DATA, before the reply: the server may have kept the message.
                        self.handed_over |= self._smtp.handed_over
                        self._smtp.close()
                        self._smtp = None
                    where = f"{self._mail.host}:{self._mail.smtp_port}"
                    raise SmtpUnavailable(f"SMTP {where}: {str(exc) or type(exc).__name__}") from exc


def sent_record(
    planned: PlannedEmail, message_id: str, purchased_at: datetime, original_id: str | None
) -> dict[str, Any]:
    """The journal record of an email the server accepted."""
    purchase = planned.purchase
    day = purchased_at.astimezone(UTC).date()
    store_id = purchase.store.store_id
    lines, net, tax = len(purchase.lines), purchase.subtotal, purchase.tax
    return {
        "type": "email",
        "seq": planned.seq,
        "message_id": message_id,
        "order_number": purchase.order_number,
        "store_id": store_id,
        "anomaly": planned.anomaly,
        "encoding": planned.encoding,
        "original_message_id": original_id,
        "genuine": planned.genuine,
        "malformed": planned.malformed,
        "day": day.isoformat(),
        "lines": lines,
        "net": str(net),
        "tax": str(tax),
        "gross": str(purchase.total),
        "truth": truth_change(CHANNEL, store_id, day, lines, net, tax) if planned.genuine else None,
    }


@dataclass
class EmailsRun:
    """What was sent: the manifest rows and facts, built up email by email (or journal line by line)."""

    config: EmailsConfig
    recipient: str
    manifest: Manifest = field(init=False)
    messages: list[dict[str, Any]] = field(default_factory=list)
    anomalies: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: {k: [] for k in ANOMALY_KINDS})
    malformed: list[dict[str, Any]] = field(default_factory=list)
    encodings: Counter[str] = field(default_factory=Counter)
    orders: int = 0
    started_at: datetime | None = None
    seconds: float = 0.0
    interrupted: bool = False
    seed: int | None = None  # the seed this run's plan was drawn with (config.seed + run index)
    run_id: str | None = None
    start_numbers: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.manifest = Manifest(source=SOURCE, seed=self.config.seed)

    def record(
        self, planned: PlannedEmail, message_id: str, purchased_at: datetime, original_id: str | None
    ) -> dict[str, Any]:
        """Count an email the server accepted; returns its journal record."""
        entry = sent_record(planned, message_id, purchased_at, original_id)
        self.add(entry)
        return entry

    def add(self, entry: dict[str, Any]) -> None:
        """Fold in the record of one accepted email."""
        message_id, number, anomaly = entry["message_id"], entry["order_number"], entry["anomaly"]
        self.messages.append({"message_id": message_id, "order_number": number, "anomaly": anomaly})
        self.encodings[entry["encoding"]] += 1
        if anomaly is not None:
            listed = {"message_id": message_id, "order_number": number}
            if entry["original_message_id"] is not None:
                listed["original_message_id"] = entry["original_message_id"]
            self.anomalies[anomaly].append(listed)
        if entry["malformed"]:
            self.malformed.append(
                {
                    "message_id": message_id,
                    "order_number": number,
                    "kind": anomaly,
                    **{k: entry[k] for k in ("store_id", "day", "lines", "net", "tax", "gross")},
                }
            )
        elif entry["genuine"]:
            self.orders += 1
        self.manifest.apply(entry)

    def finish(self, run: EmailsRun | None = None) -> Manifest:
        """The manifest with the facts; ``run`` (default: this) is the run the ``run`` section describes."""
        run = run or self
        self.manifest.facts = {
            "recipient": self.recipient,
            "emails_sent": len(self.messages),
            "orders": self.orders,
            "duplicates": len(self.anomalies["duplicate"]),
            "malformed_count": len(self.malformed),
            "anomaly_share": self.config.anomaly_share,
            "anomaly_counts": {kind: len(entries) for kind, entries in self.anomalies.items()},
            "anomalies": self.anomalies,
            "transfer_encodings": {
                encoding: self.encodings[encoding]
                for encoding in (DEFAULT_ENCODING, *ENCODING_OF_KIND.values())
            },
            "malformed": self.malformed,
            "messages": self.messages,
            "run": run.run_facts(),
        }
        return self.manifest

    def run_facts(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "seed": self.seed if self.seed is not None else self.config.seed,
            "interrupted": self.interrupted,
            "rate": self.config.rate,
            "duration": self.config.duration,
            "start_number": self.config.start_number,
            "start_numbers": self.start_numbers or None,
            "started_at": self.started_at.isoformat() if self.started_at else None,
            "seconds": round(self.seconds, 3),
            "emails_per_second": round(len(self.messages) / self.seconds, 1) if self.seconds else None,
        }


class _RecentOriginals:
    """Purchase time and Message-ID of the last genuine emails: what a duplicate repeats."""

    def __init__(self, size: int) -> None:
        self._order: deque[int] = deque()
        self._size = size
        self._sent: dict[int, tuple[datetime, str]] = {}

    def add(self, seq: int, purchased_at: datetime, message_id: str) -> None:
        if len(self._order) == self._size:
            del self._sent[self._order.popleft()]
        self._order.append(seq)
        self._sent[seq] = (purchased_at, message_id)

    def get(self, seq: int) -> tuple[datetime, str]:
        return self._sent[seq]


def _local_now(now: Callable[[], datetime], timezone: str) -> datetime:
    """The current time at the store, to the second (a till prints no fractions)."""
    return now().astimezone(ZoneInfo(timezone)).replace(microsecond=0)


def send_emails(
    mail: MailSettings,
    config: EmailsConfig,
    clock: Callable[[], float] = time.monotonic,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
    *,
    stop: StopSignal | None = None,
    journal: RunJournal | None = None,
    start_numbers: Mapping[str, int] | None = None,
) -> EmailsRun:
    """Send the run's emails, paced at ``config.rate``, until done or stopped; returns what was accepted.

    With a ``journal``, the run is its next run (seed ``config.seed`` + its index) and every email is
    journalled; ``start_numbers`` are the stores' first order numbers.
    """
    stop = stop or StopSignal()
    recipient = config.recipient or mail.mailbox_address
    total = config.emails
    seed = config.seed + (journal.index if journal is not None else 0)
    planner = EmailPlanner(
        seed,
        total,
        config.anomaly_share,
        config.start_number,
        reference=build_reference(config.seed),  # master data is the base seed's, whatever the run
        start_numbers=start_numbers,
    )
    run = EmailsRun(
        config=config,
        recipient=recipient,
        seed=seed,
        run_id=journal.run_id if journal is not None else None,
        start_numbers=dict(start_numbers or {}),
    )
    write = journal.write if journal is not None else (lambda _record: None)
    originals = _RecentOriginals(DUPLICATE_WINDOW)
    interval = 1.0 / config.rate if config.rate > 0 else 0.0
    what = f"{total} emails" if total is not None else "emails until stopped"
    log.info("sending %s to %s at %s/s", what, recipient, config.rate or "max")
    run.started_at = now()
    start = clock()
    try:
        with SmtpSender(mail, retry_for_s=config.retry_for_s, sleep=stop.sleep) as smtp:
            for planned in planner.emails():
                if stop.wait(start + planned.seq * interval - clock()):
                    break
                store = planned.purchase.store
                sent_at = _local_now(now, store.timezone)
                original_id = None
                if planned.duplicate_of is not None:
                    purchased_at, original_id = originals.get(planned.duplicate_of)
                else:
                    purchased_at = sent_at
                message_id = new_message_id(mail.domain)
                msg = build_message(planned, purchased_at, sent_at, recipient, mail.domain, message_id)
                number = planned.purchase.order_number
                write(
                    {"type": "sending", "seq": planned.seq, "order_number": number, "message_id": message_id}
                )
                try:
                    smtp.send(msg, store_address(store.store_id, mail.domain), recipient)
                except BaseException as exc:
                    # Given up on after the server had the message: it may be in the mailbox, so in doubt.
                    outcome = "in_doubt" if smtp.handed_over else "unsent"
                    write({"type": outcome, "seq": planned.seq, "order_number": number, "reason": repr(exc)})
                    raise
                if planned.genuine:
                    originals.add(planned.seq, purchased_at, message_id)
                write(run.record(planned, message_id, purchased_at, original_id))
    except Stopping:
        pass  # asked to stop while the server was away; the email in hand was not accepted
    run.interrupted = stop.is_set()
    if run.interrupted:
        log.info("stopped (%s); the truth covers the emails accepted so far", stop.received)
    run.seconds = clock() - start
    log.info("sent %d emails (%d orders) in %.1f s", len(run.messages), run.orders, run.seconds)
    return run


def highest_numbers(earlier: EarlierRuns) -> dict[str, int]:
    """The highest order number per store that any earlier run reserved or sent."""
    numbers: dict[str, int] = {}
    for record in earlier.records:
        store_id, _, number = str(record.get("order_number", "")).rpartition("-")
        if store_id and number.isdigit():
            numbers[store_id] = max(numbers.get(store_id, 0), int(number))
    return numbers


def next_start_numbers(highest: Mapping[str, int], floor: int) -> dict[str, int]:
    """Each store's first order number for a new run: after its highest, and never below ``floor``."""
    return {store_id: max(floor, number + 1) for store_id, number in highest.items()}


def manifest_from_journals(out: Path, current: EmailsRun) -> Manifest:
    """The summary of every journal in ``out``: accepted emails, their truth and facts, emails in doubt."""
    everything = EmailsRun(config=current.config, recipient=current.recipient)
    journals: dict[str, int] = {}
    runs: list[dict[str, Any]] = []
    in_doubt: list[dict[str, Any]] = []
    for path in journal_paths(out):
        records = read_journal(path)
        journals[path.stem] = len(records)
        reserved: dict[int, dict[str, Any]] = {}
        ended = None
        for record in records:
            kind = record["type"]
            if kind == "run":
                runs.append({k: record.get(k) for k in ("run_id", "seed", "recipient", "started_at")})
            elif kind == "sending":
                reserved[record["seq"]] = record
            elif kind == "unsent":
                reserved.pop(record["seq"], None)
            elif kind == "in_doubt":
                pass  # stays reserved: perhaps accepted, so listed under in_doubt
            elif kind == "email":
                reserved.pop(record["seq"], None)
                everything.add(record)
            elif kind == "end":
                ended = record
            else:
                everything.manifest.apply(record)  # an adopted manifest's totals
        if runs and runs[-1]["run_id"] == path.stem:
            runs[-1]["ended"] = ended["reason"] if ended else None  # None: killed, or still running
        in_doubt += [
            {
                "run_id": path.stem,
                "seq": r["seq"],
                "order_number": r["order_number"],
                "message_id": r["message_id"],
            }
            for r in reserved.values()
        ]
    manifest = everything.finish(run=current)
    manifest.facts["runs"] = runs
    # Sent just before a kill -9, accepted or not: a mismatch of one order here is this, not a lost email.
    manifest.facts["in_doubt"] = in_doubt
    manifest.journals = journals
    return manifest


def simulate_emails(
    mail: MailSettings, config: EmailsConfig, out: Path, stop: StopSignal | None = None
) -> Path:
    """Send with a journal in ``out/runs``, then write ``out/manifest.json``; returns the manifest's path.

    Stops at the end of a bounded run, or on SIGTERM/SIGINT (or ``stop``) between two emails.
    """
    stop = stop or StopSignal()
    recipient = config.recipient or mail.mailbox_address

    def same_mailbox(earlier: EarlierRuns) -> None:
        earlier.check_same("recipient", recipient, "recipient", out)

    with stop.installed(), RunJournal.open_next(out, SOURCE, check=same_mailbox) as journal:
        starts = next_start_numbers(highest_numbers(journal.earlier), config.start_number)
        journal.write(
            {
                "type": "run",
                "source": SOURCE,
                "run_id": journal.run_id,
                "run_index": journal.index,
                "seed": config.seed + journal.index,
                "base_seed": config.seed,
                "recipient": recipient,
                "start_numbers": starts,
                "started_at": datetime.now(UTC),
                "pid": os.getpid(),
                "config": {
                    "rate": config.rate,
                    "duration": config.duration,
                    "count": config.count,
                    "anomaly_share": config.anomaly_share,
                },
            }
        )
        try:
            run = send_emails(mail, config, stop=stop, journal=journal, start_numbers=starts)
        except BaseException as exc:
            journal.write({"type": "end", "at": datetime.now(UTC), "reason": f"failed: {exc!r}"})
            raise
        reason = f"stopped by {stop.received}" if run.interrupted else "done"
        journal.write(
            {"type": "end", "at": datetime.now(UTC), "reason": reason, "seconds": round(run.seconds, 3)}
        )
        path = manifest_from_journals(out, run).write(out / MANIFEST_NAME)
    log.info("manifest written to %s", path)
    return path
