"""The email producer: the stores' mailbox → ``stores.order_confirmations``, exactly once.

How exactly once holds:

- One transactional producer per mailbox folder (``transactional.id`` derived from the folder's URL, stable
  across restarts). ``init_transactions`` on start fences any earlier instance and aborts the transaction it
  left open, so a batch cut off by a crash is invisible to ``read_committed`` consumers.
- Each batch of UIDs is one transaction: the parsed orders (keyed by order number), the dead letters of the
  emails that could not be made into records, and the checkpoint record (mailbox, UIDVALIDITY, last UID of
  the batch), committed together: every email of a committed batch is in it exactly once, as an order or as
  a dead letter.
- On start the cursor is read back from the checkpoint topic with ``read_committed``; reading resumes with
  the first UID above it. A crash anywhere therefore either loses the whole batch (re-read) or commits all of
  it (skipped): no email is lost and none is produced twice.

A re-sent confirmation (same order, new Message-ID) is a separate email and is produced as it is; consumers
keep the first record per order number. If the folder's UIDVALIDITY changes, its UIDs mean something else
and the checkpoint is void: the folder is read again from UID 1, and the orders produced before reappear
under their order numbers (with the new UIDVALIDITY), which downstream drops like any re-send. Every email
of the renumbered folder is produced, each once under the new UIDVALIDITY (the same email twice in Kafka,
under two UIDVALIDITYs, is allowed: staging flags all but the first record per order number as re-sends and
the intermediate layer drops them).

What stops it, and what does not: an email is data, so nothing about one email stops the producer. An email
that cannot be parsed or breaks the confirmation rule (producers/emails/parser.py), an order its schema
cannot hold (an amount beyond decimal(12,2)), or an order record larger than Kafka takes (checked before
producing against the producer's ``message.max.bytes`` and the topic's ``max.message.bytes``, see
``limits``) becomes a dead letter in ``<topic>.dlq``: the reason, the raw email (capped so the dead letter
fits its topic) and its coordinates, in the same transaction as its batch's orders. Fatal, and left to the
supervisor, are only: Kafka, the registry or the mailbox unreachable after retries, and being fenced.

Should the broker refuse a record all the same (a topic's limit lowered while the producer runs), the
transaction cannot commit: one failed delivery dooms it. It is aborted, so ``read_committed`` consumers
see none of it, and made again without the refused record's fault: a record refused alongside others is
produced on its own in the next transaction (a broker refuses a whole record batch at once), and one
refused on its own is replaced by its dead letter. The good records of the batch are then committed once,
in the transaction that commits; these rounds do not count against ``batch_attempts``.

Mail stays bounded: after a batch's transaction commits, its emails are moved to the archive folder
(``ProducerOptions.archive_folder``, ``Archive``; None keeps them). Only after: a crash between the commit
and the move leaves emails in the folder with UIDs up to the checkpoint, which the next drain does not
produce again (they are at or below the cursor) and moves first. The move checks UIDVALIDITY, so it never
moves emails of a renumbered folder that were not produced. A failed move (the server refuses it) is
logged and counted (``errors_total{kind="archive"}``) and tried again at the next drain; it never holds
up production.

Metrics (:class:`EmailMetrics`) count what committed: emails fetched as records in, the orders and dead
letters of committed transactions as records out and dead letters, and the backlog as the UIDs above the
cursor that the last search found and no committed batch has covered yet.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from confluent_kafka import KafkaError, KafkaException, Message
from prometheus_client import CollectorRegistry

from omnistream.dead_letter import DeadLetter, capped
from omnistream.errors import OmnistreamError
from omnistream.kafka import transactions
from omnistream.kafka.clients import TopicSpec, ensure_topics, producer_config
from omnistream.kafka.registry import registry_client
from omnistream.kafka.transactions import TransactionAbortable, TransactionalProducer, TransactionFailed
from omnistream.metrics import ABORTED, COMMITTED, PipelineMetrics, gauge, transactions_counter
from omnistream.settings import MailSettings, Settings
from omnistream.topics import EMAIL_CHECKPOINTS, STORE_ORDERS, dlq
from producers.emails.checkpoint import Checkpoint, read_checkpoint
from producers.emails.imap import FetchedEmail, MailboxError, MailboxReader, UidValidityChanged
from producers.emails.limits import LIBRDKAFKA_MESSAGE_MAX_BYTES, RecordLimits, read_limits
from producers.emails.model import Provenance
from producers.emails.parser import ParseError, message_id_of, parse_email, read_message
from producers.emails.serde import EmailSerde, RecordDoesNotFit

log = logging.getLogger(__name__)

ORDER = "order"
# A dead letter keeps at most this much of the raw email, and leaves room in its topic's limit for the rest
# of the dead letter (a reason of up to REASON_LIMIT characters, ids and attributes).
DEAD_LETTER_PAYLOAD_LIMIT = 512 * 1024
DEAD_LETTER_ROOM = 64 * 1024
DEAD_LETTER = "dead_letter"
CHECKPOINT = "checkpoint"
DEFAULT_ARCHIVE_FOLDER = "Archive"
# Reason classes of dead letters (the metrics' label; the dead letter itself says precisely why).
UNPARSEABLE = "unparseable"  # not a complete, consistent order confirmation within the confirmation rule
SCHEMA_MISMATCH = "schema-mismatch"  # parsed, but does not fit schemas/store_order.avsc
PARSER_FAILED = "parser-failed"  # the parser raised something else than ParseError: a bug, shown as one
TOO_LARGE = "too-large"  # an order record larger than its topic takes
REFUSED = "refused"  # an order record the broker refused on its own for another reason
# Error kinds besides librdkafka's own (kafka_<code>); the transaction's own retries are named by
# omnistream.kafka.transactions.
TRANSACTION_RETRY = transactions.TRANSACTION_RETRY  # a batch's transaction aborted and tried again
COMMIT_RETRY = transactions.COMMIT_RETRY  # a retriable commit error, committed again
INIT_RETRY = transactions.INIT_RETRY  # a retriable error initialising transactions
DELIVERY_FAILED = "delivery"  # a record's delivery report failed (its batch is aborted and retried)
RECORD_REFUSED = "record_refused"  # the broker refused a record itself (its size); the batch is made again
ARCHIVE_FAILED = "archive"  # committed emails could not be moved to the archive folder (tried again later)
# What the broker (or librdkafka) says about a record itself, not about the cluster.
RECORD_FAULTS = frozenset(
    {KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.RECORD_LIST_TOO_LARGE, KafkaError.INVALID_RECORD}
)
# Delivery reports of the records an abort purged: the abort's doing, nothing to report.
PURGED = frozenset({KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT})


class RecordTooLarge(OmnistreamError, ValueError):
    """An order record larger than its topic takes (the dead letter's error class)."""


class RecordRefused(OmnistreamError):
    """The broker refused an order record produced on its own (the dead letter's error class)."""


class EmailMetrics(PipelineMetrics):
    """The email producer's Prometheus metrics: the shared ones, its transactions and the mailbox backlog."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        super().__init__(
            registry,
            error_kinds=[
                TRANSACTION_RETRY,
                COMMIT_RETRY,
                INIT_RETRY,
                DELIVERY_FAILED,
                RECORD_REFUSED,
                ARCHIVE_FAILED,
            ],
        )
        self.transactions = transactions_counter(
            self.registry, "Kafka transactions (a batch of emails with its checkpoint) committed and aborted."
        )
        self.backlog = gauge(
            self.registry,
            "email_mailbox_backlog_messages",
            "Emails above the committed checkpoint that the last search of the folder found and no committed "
            "batch has produced yet.",
        )


@dataclass(frozen=True)
class EmailTopics:
    """Where the producer writes; overridable so tests and side-by-side runs keep to their own topics."""

    orders: str = STORE_ORDERS
    dead_letters: str = dlq(STORE_ORDERS)
    checkpoints: str = EMAIL_CHECKPOINTS

    @classmethod
    def for_orders(cls, orders: str, checkpoints: str = EMAIL_CHECKPOINTS) -> EmailTopics:
        """``orders`` with its dead-letter topic beside it."""
        return cls(orders, dlq(orders), checkpoints)

    def specs(self) -> list[TopicSpec]:
        # One partition for the checkpoints: a handful of keys, and one place to read them back from.
        return [
            TopicSpec(self.orders),
            TopicSpec(self.dead_letters),
            TopicSpec.compacted(self.checkpoints, 1),
        ]


@dataclass(frozen=True)
class ProducerOptions:
    folder: str = "INBOX"
    batch_size: int = 500  # per transaction; fewer, larger IMAP fetches and commits are much faster
    transactional_id: str | None = None  # default: derived from the mailbox folder
    max_rate: float = 0.0  # emails per second at most, 0: unlimited
    use_idle: bool = True  # --follow: IMAP IDLE when the server has it, else polling
    poll_interval_s: float = 5.0
    imap_retry_for_s: float = 300.0
    transaction_timeout_ms: int = 60_000
    batch_attempts: int = 5  # transactions aborted and retried before giving up
    archive_folder: str | None = DEFAULT_ARCHIVE_FOLDER  # committed emails go here; None: they stay

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError("batch size must be at least 1")
        archive = self.archive_folder
        # INBOX is the one folder name IMAP compares without case (RFC 3501).
        if archive is not None and (
            archive in ("", self.folder) or archive.upper() == self.folder.upper() == "INBOX"
        ):
            raise ValueError(
                f"the archive folder must be another folder than the one read ({self.folder!r}), "
                "or none (--no-archive)"
            )
        if self.max_rate > 0 and self.batch_size / self.max_rate > 0.8 * self.transaction_timeout_ms / 1000:
            # A paced batch would outlive its transaction, which the broker would then abort.
            raise ValueError(
                f"a batch of {self.batch_size} at {self.max_rate}/s takes longer than the transaction "
                f"timeout ({self.transaction_timeout_ms} ms) allows; lower --batch-size or raise --max-rate"
            )


@dataclass(frozen=True)
class BatchReport:
    first_uid: int
    last_uid: int
    produced: int
    dead_lettered: int
    skipped: int  # expunged before they could be read


@dataclass
class Progress:
    """Totals since start; counts only committed batches."""

    batches: int = 0
    produced: int = 0
    dead_lettered: int = 0
    skipped: int = 0
    last_uid: int = 0
    uidvalidity: int = 0
    seconds: float = 0.0

    def add(self, report: BatchReport) -> None:
        self.batches += 1
        self.produced += report.produced
        self.dead_lettered += report.dead_lettered
        self.skipped += report.skipped
        self.last_uid = report.last_uid


@dataclass(frozen=True)
class _Record:
    kind: str
    topic: str
    key: bytes
    value: bytes
    reason_class: str = ""  # dead letters only
    email: FetchedEmail | None = None  # the email it stands for; None: the checkpoint
    message_id: str | None = None
    order_number: str | None = None
    letter: DeadLetter | None = None  # dead letters only
    alone: bool = False  # produced in a batch of its own: it was refused together with others before


@dataclass
class _Cursor:
    uidvalidity: int
    last_uid: int
    sequence: int


def default_transactional_id(mailbox: str) -> str:
    """One stable transactional.id per mailbox folder: a restarted producer fences its predecessor."""
    return f"omnistream.emails:{mailbox}"


def _chunks(items: list[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@dataclass
class EmailProducer:
    """Reads new emails by UID, parses them, and produces each batch in one Kafka transaction."""

    settings: Settings
    mail: MailSettings
    topics: EmailTopics = EmailTopics()
    options: ProducerOptions = ProducerOptions()
    on_batch: Callable[[BatchReport, Progress], None] | None = None
    progress: Progress = field(default_factory=Progress)
    metrics: EmailMetrics = field(default_factory=EmailMetrics)

    def __post_init__(self) -> None:
        self.reader = MailboxReader(
            self.mail,
            self.options.folder,
            retry_for_s=self.options.imap_retry_for_s,
            use_idle=self.options.use_idle,
            readonly=self.options.archive_folder is None,
        )
        self.mailbox = self.reader.url
        self.transactional_id = self.options.transactional_id or default_transactional_id(self.mailbox)
        self._transactions: TransactionalProducer | None = None
        self._serde: EmailSerde | None = None
        self._cursor: _Cursor | None = None
        self._attempt = 0  # of the current transaction: delivery reports of earlier ones are stale
        self._delivery_errors: list[KafkaError] = []
        self._refused: dict[int, KafkaError] = {}  # record index → what the broker said about it
        self._limits = RecordLimits(LIBRDKAFKA_MESSAGE_MAX_BYTES, {})
        self._next_send = 0.0
        self._started = 0.0

    def __enter__(self) -> EmailProducer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- lifecycle -------------------------------------------------------------------------------------

    def start(self) -> None:
        """Topics and schemas in place, earlier instances fenced, the committed cursor read back."""
        self._started = time.monotonic()
        self.metrics.track_topics(self.topics.orders)
        ensure_topics(self.settings, self.topics.specs())
        self._serde = EmailSerde.registered(
            registry_client(self.settings),
            self.topics.orders,
            self.topics.dead_letters,
            self.topics.checkpoints,
        )
        config = producer_config(
            self.settings,
            **{
                "transactional.id": self.transactional_id,
                "transaction.timeout.ms": self.options.transaction_timeout_ms,
                "linger.ms": 5,  # a batch is committed right after it is produced; no point waiting
                "error_cb": self.metrics.kafka_error_callback("email producer", log),
            },
        )
        self._limits = read_limits(
            self.settings,
            [self.topics.orders, self.topics.dead_letters, self.topics.checkpoints],
            int(config.get("message.max.bytes", LIBRDKAFKA_MESSAGE_MAX_BYTES)),
        )
        config["batch.size"] = self._limits.batch_size
        self._transactions = TransactionalProducer(
            config, attempts=self.options.batch_attempts, on_event=self._on_transaction_event
        )
        # Fences any earlier producer with this transactional.id and aborts the transaction it left open,
        # which is what makes the checkpoint read below the last committed one.
        self._transactions.init()
        checkpoint = read_checkpoint(
            self.settings, self.topics.checkpoints, self.mailbox, self._serde.read_checkpoint
        )
        uidvalidity = self.reader.open()
        if self.options.archive_folder is not None:
            self.reader.ensure_folder(self.options.archive_folder)
        if checkpoint is None:
            log.info("no checkpoint for %s: reading from UID 1", self.mailbox)
            self._cursor = _Cursor(uidvalidity, 0, 0)
        else:
            log.info(
                "checkpoint for %s: UIDVALIDITY %d, last UID %d (batch %d, written %s by %s)",
                self.mailbox,
                checkpoint.uidvalidity,
                checkpoint.last_uid,
                checkpoint.sequence,
                checkpoint.written_at.isoformat(),
                checkpoint.transactional_id,
            )
            self._cursor = _Cursor(checkpoint.uidvalidity, checkpoint.last_uid, checkpoint.sequence)
            self._reconcile_uidvalidity(uidvalidity)
        self.progress.uidvalidity = self._cursor.uidvalidity
        self.progress.last_uid = self._cursor.last_uid

    def close(self) -> None:
        """Abort a transaction cut short (by an error or a stop request), flush, log out."""
        try:
            if self._transactions is not None:
                self._transactions.close()
        finally:
            self.reader.close()
            self.progress.seconds = time.monotonic() - self._started

    # -- the loop --------------------------------------------------------------------------------------

    def drain(self, stop: threading.Event | None = None) -> Progress:
        """Produce every email above the cursor, batch by batch, until none is left (or ``stop`` is set)."""
        stop = stop or threading.Event()
        cursor = self._require_cursor()
        swept = False
        while not stop.is_set():
            try:
                self._reconcile_uidvalidity(self.reader.uidvalidity)
                if not swept:
                    self._archive_leftovers(cursor)
                    swept = True
                uids = self.reader.new_uids(after=cursor.last_uid)
                self.metrics.backlog.set(len(uids))
                if not uids:
                    break
                self._produce_batches(uids, stop)
            except UidValidityChanged as exc:
                log.debug("UIDVALIDITY changed while reading (%s); starting over", exc)
                continue  # the reader holds the new value; _reconcile_uidvalidity resets the cursor
        self.progress.seconds = time.monotonic() - self._started
        return self.progress

    def follow(self, stop: threading.Event, wait_s: float = 60.0) -> Progress:
        """Drain, then wait for new mail (IDLE or polling) and drain again, until ``stop`` is set."""
        while not stop.is_set():
            self.drain(stop)
            if stop.is_set():
                break
            try:
                self.reader.wait_for_mail(wait_s, stop, self.options.poll_interval_s)
            except UidValidityChanged as exc:
                log.debug("UIDVALIDITY changed while waiting (%s); the next drain starts over", exc)
        return self.progress

    def _require_cursor(self) -> _Cursor:
        if self._cursor is None:
            raise RuntimeError("EmailProducer.start() first")
        return self._cursor

    def _reconcile_uidvalidity(self, uidvalidity: int) -> None:
        cursor = self._require_cursor()
        if cursor.uidvalidity == uidvalidity:
            return
        log.error(
            "UIDVALIDITY of %s changed from %d to %d: the server renumbered the folder, so the "
            "checkpoint (last UID %d) no longer says which emails were read. Reading the folder again from "
            "UID 1; orders already produced will be produced again under the same order numbers, which "
            "downstream de-duplication drops.",
            self.mailbox,
            cursor.uidvalidity,
            uidvalidity,
            cursor.last_uid,
        )
        cursor.uidvalidity, cursor.last_uid = uidvalidity, 0
        self.progress.uidvalidity, self.progress.last_uid = uidvalidity, 0

    def _produce_batches(self, uids: list[int], stop: threading.Event) -> None:
        """Produce ``uids`` batch by batch, the mailbox work of the next batch overlapping this one's.

        One thread does all the IMAP work, in order, on the reader's one session: the fetch of batch n+1 is
        queued before batch n is parsed and produced, the move of batch n to the archive right after its
        commit. So the mail server's time (and the network's) overlaps the parsing and producing instead of
        adding to it. Exactly once is untouched: each transaction holds the same records and checkpoint as
        before and commits at the same point; an email fetched ahead goes only into its own batch's
        transaction, and a crash loses a fetch, never an email. The moves are done before this returns.
        """
        batches = list(_chunks(uids, self.options.batch_size))
        uidvalidity = self._require_cursor().uidvalidity
        moves: list[Future[None]] = []
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="imap") as mailbox:
            fetched = mailbox.submit(self._fetch, batches[0], uidvalidity)
            done = 0
            for n, batch in enumerate(batches):
                emails = fetched.result()
                if n + 1 < len(batches) and not stop.is_set():
                    fetched = mailbox.submit(self._fetch, batches[n + 1], uidvalidity)
                self._run_batch(batch, emails, uidvalidity)
                moves.append(mailbox.submit(self._archive, batch, uidvalidity))
                done += len(batch)
                self.metrics.backlog.set(len(uids) - done)
                if stop.is_set():
                    break
        for move in moves:
            move.result()  # a renumbered folder (UidValidityChanged) or an outage, as if moved here

    def _fetch(self, uids: list[int], uidvalidity: int) -> list[FetchedEmail]:
        emails = self.reader.fetch(uids)
        if self.reader.uidvalidity != uidvalidity:
            # Reconnected mid-fetch into a renumbered folder: these UIDs are not the ones searched for.
            raise UidValidityChanged(uidvalidity, self.reader.uidvalidity)
        return emails

    def _run_batch(self, uids: list[int], emails: list[FetchedEmail], uidvalidity: int) -> None:
        """Parse and produce the fetched ``emails`` of ``uids`` and their checkpoint in one transaction."""
        cursor = self._require_cursor()
        self.metrics.records_in.labels(self.topics.orders).inc(len(emails))
        records = [self._record_for(fetched, uidvalidity) for fetched in emails]  # each email once
        checkpoint = Checkpoint(
            mailbox=self.mailbox,
            uidvalidity=uidvalidity,
            last_uid=uids[-1],
            sequence=cursor.sequence + 1,
            transactional_id=self.transactional_id,
            written_at=datetime.now(UTC),
        )
        serde = self._require_serde()
        records.append(
            _Record(CHECKPOINT, self.topics.checkpoints, self.mailbox.encode(), serde.checkpoint(checkpoint))
        )
        self._produce_in_transaction(records, uids, uidvalidity)
        cursor.last_uid, cursor.sequence = checkpoint.last_uid, checkpoint.sequence
        report = BatchReport(
            first_uid=uids[0],
            last_uid=uids[-1],
            produced=sum(1 for r in records if r.kind == ORDER),
            dead_lettered=sum(1 for r in records if r.kind == DEAD_LETTER),
            skipped=len(uids) - len(emails),
        )
        self.metrics.records_out.labels(self.topics.orders).inc(report.produced)
        for record in records:
            if record.kind == DEAD_LETTER:
                self.metrics.dead_letters.labels(self.topics.orders, record.reason_class).inc()
        self.progress.add(report)
        self.progress.seconds = time.monotonic() - self._started
        log.debug("committed UIDs %d-%d: %s", report.first_uid, report.last_uid, report)
        if self.on_batch is not None:
            self.on_batch(report, self.progress)

    # -- the archive -----------------------------------------------------------------------------------

    def _archive(self, uids: list[int], uidvalidity: int) -> None:
        """Move committed emails to the archive folder; a refusal is logged and the next drain tries again."""
        folder = self.options.archive_folder
        if folder is None or not uids:
            return
        try:
            self.reader.archive(uids, folder, uidvalidity)
        except MailboxError as exc:
            self.metrics.errors.labels(ARCHIVE_FAILED).inc()
            log.error(
                "could not move UIDs %d-%d of %s to %r (%s); they are in Kafka already and stay in the "
                "folder until the next drain moves them",
                uids[0],
                uids[-1],
                self.mailbox,
                folder,
                exc,
            )

    def _archive_leftovers(self, cursor: _Cursor) -> None:
        """Move emails at or below the cursor still in the folder: committed, but not moved before a stop."""
        if self.options.archive_folder is None:
            return
        leftovers = self.reader.uids_through(cursor.last_uid)
        if leftovers:
            log.info(
                "%d emails of %s up to UID %d are in Kafka already but not archived yet (a stop between "
                "commit and move): moving them to %r",
                len(leftovers),
                self.mailbox,
                cursor.last_uid,
                self.options.archive_folder,
            )
            self._archive(leftovers, cursor.uidvalidity)

    def _require_serde(self) -> EmailSerde:
        if self._serde is None:
            raise RuntimeError("EmailProducer.start() first")
        return self._serde

    def _record_for(self, fetched: FetchedEmail, uidvalidity: int) -> _Record:
        """The order record for ``fetched``, or its dead letter if it cannot be parsed, serialized or sent."""
        serde = self._require_serde()
        provenance = Provenance(self.mailbox, uidvalidity, fetched.uid, fetched.received_at)
        try:
            order = parse_email(fetched.raw, provenance)
        except ParseError as exc:
            return self._dead_letter(
                fetched, uidvalidity, exc, exc.reason, UNPARSEABLE, exc.message_id, exc.order_number
            )
        except Exception as exc:  # a parser bug met an email nobody foresaw: one email, not an outage
            log.exception("the parser failed on UID %d of %s", fetched.uid, self.mailbox)
            reason = f"the parser failed on this email ({type(exc).__name__}: {exc}); a bug to report"
            return self._dead_letter(fetched, uidvalidity, exc, reason, PARSER_FAILED, None, None)
        try:
            value = serde.order(order)
        except RecordDoesNotFit as exc:  # e.g. an amount beyond the schema's 12 digits
            return self._dead_letter(
                fetched, uidvalidity, exc, str(exc), SCHEMA_MISMATCH, order.message_id, order.order_number
            )
        record = _Record(
            ORDER,
            self.topics.orders,
            order.order_number.encode(),
            value,
            email=fetched,
            message_id=order.message_id,
            order_number=order.order_number,
        )
        return self._sized(record, uidvalidity)

    def _sized(self, record: _Record, uidvalidity: int) -> _Record:
        """``record``, or the dead letter of an order larger than its topic takes."""
        if record.kind != ORDER or self._limits.fits(record.topic, record.key, record.value):
            return record
        reason = (
            f"the order record is {len(record.key) + len(record.value):,} bytes serialized (key and value), "
            f"more than {record.topic} takes: {self._limits.explain(record.topic)}"
        )
        return self._dead_letter_of(record, uidvalidity, RecordTooLarge(reason), TOO_LARGE)

    def _dead_letter_of(
        self, record: _Record, uidvalidity: int, error: Exception, reason_class: str
    ) -> _Record:
        """The dead letter for the order ``record`` stands for."""
        assert record.email is not None
        return self._dead_letter(
            record.email, uidvalidity, error, str(error), reason_class, record.message_id, record.order_number
        )

    def _dead_letter(
        self,
        fetched: FetchedEmail,
        uidvalidity: int,
        error: Exception,
        reason: str,
        reason_class: str,
        message_id: str | None,
        order_number: str | None,
    ) -> _Record:
        if message_id is None:
            message_id = message_id_of(read_message(fetched.raw))
        log.warning("UID %d (%s) dead-lettered: %s", fetched.uid, message_id, reason[:1000])
        # Keyed by Message-ID: the one id every email has (a synthetic one for the rare email without).
        key = (message_id or f"{self.mailbox}#{uidvalidity}:{fetched.uid}").encode()
        attributes = {
            "mailbox": self.mailbox,
            "uidvalidity": str(uidvalidity),
            "imap_uid": str(fetched.uid),
            "received_at": fetched.received_at.isoformat(),
            "payload_size": str(len(fetched.raw)),
        }
        # A record over the topic's limit would fail the batch on every retry; the whole email stays in the
        # folder under its UID, or in the archive folder, found by its Message-ID.
        room = self._limits.limit(self.topics.dead_letters) - DEAD_LETTER_ROOM
        payload_limit = min(DEAD_LETTER_PAYLOAD_LIMIT, max(0, room))
        payload, truncated = capped(fetched.raw, payload_limit)
        if truncated:
            attributes["payload_truncated"] = "true"
        letter = DeadLetter.from_error(
            error,
            topic=self.topics.orders,
            source=self.mailbox,
            payload=payload,
            reason=reason,
            key=order_number.encode() if order_number else None,
            source_id=message_id,
            attributes=attributes,
        )
        record = _Record(
            DEAD_LETTER,
            self.topics.dead_letters,
            key,
            self._require_serde().dead_letter(letter),
            reason_class,
            email=fetched,
            message_id=message_id,
            order_number=order_number,
            letter=letter,
        )
        if not self._limits.fits(record.topic, record.key, record.value):
            return self._without_payload(record) or record
        return record

    def _without_payload(self, record: _Record) -> _Record | None:
        """The dead letter ``record`` without its payload (the email stays in the mailbox); None: had none."""
        letter = record.letter
        if letter is None or letter.payload is None:
            return None
        letter = replace(letter, payload=None, attributes={**letter.attributes, "payload_truncated": "true"})
        return replace(record, value=self._require_serde().dead_letter(letter), letter=letter)

    # -- Kafka transactions ----------------------------------------------------------------------------

    def _on_transaction_event(self, event: str) -> None:
        if event in (COMMITTED, ABORTED):
            self.metrics.transactions.labels(event).inc()
            if event == COMMITTED:
                self.metrics.last_commit.set_to_current_time()
        else:
            self.metrics.errors.labels(event).inc()

    def _produce_in_transaction(self, records: list[_Record], uids: list[int], uidvalidity: int) -> None:
        """Produce ``records`` in one transaction; abort and make it again on abortable errors.

        A record the broker refused is set aside first (``_set_aside``), so ``records`` is what committed.
        """

        def fill() -> None:
            self._attempt += 1
            self._delivery_errors.clear()
            self._refused.clear()
            for index in range(len(records)):
                if records[index].kind != CHECKPOINT:
                    self._pace()
                self._produce(records, index, uidvalidity)

        def remake(_: TransactionAbortable) -> bool:
            # No outage: the next transaction holds what the broker takes.
            return bool(self._refused) and self._set_aside(records, uidvalidity)

        self._require_transactions().run(f"UIDs {uids[0]}-{uids[-1]}", fill, remake)
        if self._delivery_errors:  # cannot happen after a successful commit; checked all the same
            raise TransactionFailed(
                f"records failed delivery in a committed transaction: {self._delivery_errors}"
            )

    def _produce(self, records: list[_Record], index: int, uidvalidity: int) -> None:
        transaction = self._require_transactions()
        producer = transaction.producer
        record = records[index]
        if record.alone:
            transaction.flush(f"the records before {record.topic} record {index}")  # not in its batch
        on_delivery = functools.partial(self._on_delivery, self._attempt, index)
        while True:
            try:
                producer.produce(record.topic, record.value, record.key, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.1)  # the local queue is full: serve delivery reports, then try again
            except KafkaException as exc:
                error = exc.args[0] if exc.args else None
                replacement = None
                if isinstance(error, KafkaError) and error.code() in RECORD_FAULTS:
                    # Refused before it was queued (librdkafka's own size check): the transaction is
                    # untouched, and the record's place goes to its dead letter.
                    replacement = self._refused_record(record, error, uidvalidity)
                elif isinstance(error, KafkaError) and error.code() == KafkaError._STATE:
                    # The transaction failed under it (a delivery failed, or the producer needs a new
                    # epoch after one did): abort it; if the producer itself is broken, the abort says so.
                    raise TransactionAbortable(f"producing to {record.topic}: {error}") from exc
                if replacement is None:
                    transaction.raise_classified(exc, f"producing to {record.topic}")
                records[index] = record = replacement
        producer.poll(0)
        if record.alone:
            transaction.flush(f"{record.topic} record {index}")
            if index in self._refused:
                raise TransactionAbortable(
                    f"{record.topic} refused a record on its own: {self._refused[index]}"
                )

    def _on_delivery(self, attempt: int, index: int, err: KafkaError | None, msg: Message) -> None:
        if err is None or attempt != self._attempt or err.code() in PURGED:
            return  # delivered, or a report of a transaction already aborted
        # The commit that follows fails for it, and the batch is aborted and made again.
        log.warning("delivery to %s failed: %s", msg.topic(), err)
        self.metrics.errors.labels(DELIVERY_FAILED).inc()
        self._delivery_errors.append(err)
        if err.code() in RECORD_FAULTS:
            self.metrics.errors.labels(RECORD_REFUSED).inc()
            self._refused[index] = err

    def _set_aside(self, records: list[_Record], uidvalidity: int) -> bool:
        """Make the batch again without what the broker refused; False if nothing changed (it would again).

        Sizes are checked again against the topics' limits as they are now; a record refused together with
        others is produced on its own next time, one refused on its own is replaced by its dead letter.
        """
        self._refresh_limits()
        changed = False
        for index, record in enumerate(records):
            replacement = self._sized(record, uidvalidity)
            error = self._refused.get(index)
            if replacement is record and error is not None:
                if record.alone:
                    replacement = self._refused_record(record, error, uidvalidity) or record
                else:
                    replacement = replace(record, alone=True)
            if replacement is not record:
                records[index] = replacement
                changed = True
        return changed

    def _refused_record(self, record: _Record, error: KafkaError, uidvalidity: int) -> _Record | None:
        """What to produce in place of ``record``, which Kafka refused on its own; None: nothing will do."""
        if record.kind == ORDER:
            reason = (
                f"Kafka refused the order record ({len(record.key) + len(record.value):,} bytes) for "
                f"{record.topic}: {error.str()}"
            )
            return self._dead_letter_of(record, uidvalidity, RecordRefused(reason), REFUSED)
        if record.kind == DEAD_LETTER:
            return self._without_payload(record)
        return None

    def _refresh_limits(self) -> None:
        try:
            self._limits = read_limits(self.settings, self._limits.topic_max, self._limits.producer_max)
        except KafkaException as exc:  # the broker that just answered is away again: the old limits do
            log.warning("could not read the topics' max.message.bytes again: %s", exc)

    def _require_transactions(self) -> TransactionalProducer:
        if self._transactions is None:
            raise RuntimeError("EmailProducer.start() first")
        return self._transactions

    def _pace(self) -> None:
        """Hold to ``max_rate`` emails per second, if one is set."""
        if self.options.max_rate <= 0:
            return
        now = time.monotonic()
        if self._next_send > now:
            time.sleep(self._next_send - now)
            now = self._next_send
        self._next_send = now + 1.0 / self.options.max_rate
