"""In-store order confirmations: send the planned emails over SMTP and record what was sent.

Emails go out at ``rate`` per second (duplicates included) for ``duration`` seconds, or ``count`` of them,
to the stores' confirmations mailbox, over one SMTP connection that is re-opened if the server drops it.

The manifest counts each genuine order once (channel ``in_store``, the store, UTC day of the purchase);
duplicates and malformed emails are not orders. Facts list every Message-ID sent, the anomalies by kind with
their Message-IDs and order numbers, the transfer encodings used, and each malformed email's store, day and
amounts, so reconciliation can account for what a parser has to reject.
"""

from __future__ import annotations

import logging
import smtplib
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import Message
from pathlib import Path
from types import TracebackType
from typing import Any
from zoneinfo import ZoneInfo

from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_exponential

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
from simulators.manifest import Manifest

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
CHANNEL = "in_store"
# Worth a reconnect and another try; anything else (a refused recipient, a 5xx) is for a person to fix.
TRANSIENT_SMTP_ERRORS = (
    smtplib.SMTPServerDisconnected,
    smtplib.SMTPConnectError,
    ConnectionError,
    TimeoutError,
)


@dataclass(frozen=True)
class EmailsConfig:
    """One run of the store-email simulator."""

    seed: int = 42
    rate: float = 5.0  # emails per second; 0 or less: as fast as the server takes them
    duration: float = 60.0  # seconds
    count: int | None = None  # emails; overrides rate x duration
    anomaly_share: float = 0.05
    start_number: int = 1  # first order number of every store (a later run can continue a series)
    recipient: str | None = None  # default: the confirmations mailbox from the settings

    @property
    def emails(self) -> int:
        if self.count is not None:
            return self.count
        if self.rate <= 0:
            raise ValueError("an unthrottled run (rate <= 0) needs a count")
        return round(self.rate * self.duration)


class SmtpSender:
    """One SMTP session to the mail server, re-opened when it drops."""

    def __init__(self, mail: MailSettings, timeout: float = 30.0) -> None:
        self._mail = mail
        self._timeout = timeout
        self._smtp: smtplib.SMTP | None = None

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

    # A message can be delivered twice only if the server drops the session after taking its data and before
    # acknowledging it; a local server does not, and a dropped idle session fails before any data is sent.
    @retry(
        retry=retry_if_exception_type(TRANSIENT_SMTP_ERRORS),
        stop=stop_after_attempt(5),
        wait=wait_exponential(multiplier=0.2, max=5),
        reraise=True,
    )
    def send(self, msg: Message, sender: str, recipient: str) -> None:
        """Send ``msg`` from ``sender`` to ``recipient``, connecting first if needed."""
        if self._smtp is None:
            log.debug("connecting to SMTP %s:%s", self._mail.host, self._mail.smtp_port)
            self._smtp = smtplib.SMTP(self._mail.host, self._mail.smtp_port, timeout=self._timeout)
        try:
            # CRLF line endings: smtplib dot-stuffs lines that start with "." and the server undoes that
            # only after CRLF, so bare LF would leave a doubled dot in a wrapped quoted-printable body.
            self._smtp.sendmail(sender, [recipient], msg.as_bytes(policy=msg.policy.clone(linesep="\r\n")))
        except TRANSIENT_SMTP_ERRORS:
            log.warning("SMTP session dropped; reconnecting")
            self._smtp.close()
            self._smtp = None
            raise


@dataclass
class EmailsRun:
    """What was sent: the manifest rows and facts, built up email by email."""

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

    def __post_init__(self) -> None:
        self.manifest = Manifest(source="emails", seed=self.config.seed)

    def record(
        self, planned: PlannedEmail, message_id: str, purchased_at: datetime, original_id: str | None
    ) -> None:
        purchase = planned.purchase
        day = purchased_at.astimezone(UTC).date()
        self.messages.append(
            {"message_id": message_id, "order_number": purchase.order_number, "anomaly": planned.anomaly}
        )
        self.encodings[planned.encoding] += 1
        if planned.anomaly is not None:
            entry = {"message_id": message_id, "order_number": purchase.order_number}
            if original_id is not None:
                entry["original_message_id"] = original_id
            self.anomalies[planned.anomaly].append(entry)
        if planned.malformed:
            self.malformed.append(
                {
                    "message_id": message_id,
                    "order_number": purchase.order_number,
                    "kind": planned.anomaly,
                    "store_id": purchase.store.store_id,
                    "day": day.isoformat(),
                    "lines": len(purchase.lines),
                    "net": str(purchase.subtotal),
                    "tax": str(purchase.tax),
                    "gross": str(purchase.total),
                }
            )
        elif planned.genuine:
            self.orders += 1
            self.manifest.add_order(
                CHANNEL, purchase.store.store_id, day, len(purchase.lines), purchase.subtotal, purchase.tax
            )

    def finish(self) -> Manifest:
        """The manifest with this run's facts."""
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
            "run": {
                "interrupted": self.interrupted,
                "rate": self.config.rate,
                "duration": self.config.duration,
                "start_number": self.config.start_number,
                "started_at": self.started_at.isoformat() if self.started_at else None,
                "seconds": round(self.seconds, 3),
                "emails_per_second": round(len(self.messages) / self.seconds, 1) if self.seconds else None,
            },
        }
        return self.manifest


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
    sleep: Callable[[float], None] = time.sleep,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> EmailsRun:
    """Send the run's emails, paced at ``config.rate``; returns what was sent."""
    recipient = config.recipient or mail.mailbox_address
    total = config.emails
    planner = EmailPlanner(config.seed, total, config.anomaly_share, config.start_number)
    run = EmailsRun(config=config, recipient=recipient)
    originals = _RecentOriginals(DUPLICATE_WINDOW)
    interval = 1.0 / config.rate if config.rate > 0 else 0.0
    log.info("sending %d emails to %s at %s/s", total, recipient, config.rate or "max")
    run.started_at = now()
    start = clock()
    try:
        with SmtpSender(mail) as smtp:
            for planned in planner.emails():
                wait = start + planned.seq * interval - clock()
                if wait > 0:
                    sleep(wait)
                store = planned.purchase.store
                sent_at = _local_now(now, store.timezone)
                original_id = None
                if planned.duplicate_of is not None:
                    purchased_at, original_id = originals.get(planned.duplicate_of)
                else:
                    purchased_at = sent_at
                message_id = new_message_id(mail.domain)
                msg = build_message(planned, purchased_at, sent_at, recipient, mail.domain, message_id)
                smtp.send(msg, store_address(store.store_id, mail.domain), recipient)
                if planned.genuine:
                    originals.add(planned.seq, purchased_at, message_id)
                run.record(planned, message_id, purchased_at, original_id)
    except KeyboardInterrupt:
        # An email cut off before the server acknowledged it is not recorded (nor, usually, delivered).
        log.warning("interrupted; the manifest covers the emails sent so far")
        run.interrupted = True
    run.seconds = clock() - start
    log.info("sent %d emails (%d orders) in %.1f s", len(run.messages), run.orders, run.seconds)
    return run


def simulate_emails(mail: MailSettings, config: EmailsConfig, out: Path) -> Path:
    """Send, then write the manifest into directory ``out``; returns the manifest's path."""
    path = send_emails(mail, config).finish().write(out / MANIFEST_NAME)
    log.info("manifest written to %s", path)
    return path
