"""The email producer: the stores' mailbox → ``stores.order_confirmations``, exactly once.

How exactly once holds:

- One transactional producer per mailbox folder (``transactional.id`` derived from the folder's URL, stable
  across restarts). ``init_transactions`` on start fences any earlier instance and aborts the transaction it
  left open, so a batch cut off by a crash is invisible to ``read_committed`` consumers.
- Each batch of UIDs is one transaction: the parsed orders (keyed by order number), the dead letters of the
  emails that could not be parsed, and the checkpoint record (mailbox, UIDVALIDITY, last UID of the batch),
  committed together.
- On start the cursor is read back from the checkpoint topic with ``read_committed``; reading resumes with
  the first UID above it. A crash anywhere therefore either loses the whole batch (re-read) or commits all of
  it (skipped): no email is lost and none is produced twice.

A re-sent confirmation (same order, new Message-ID) is a separate email and is produced as it is; consumers
keep the first record per order number. If the folder's UIDVALIDITY changes, its UIDs mean something else
and the checkpoint is void: the folder is read again from UID 1, and the orders produced before reappear
under their order numbers (with the new UIDVALIDITY), which downstream drops like any re-send.

Metrics (:class:`EmailMetrics`) count what committed: emails fetched as records in, the orders and dead
letters of committed transactions as records out and dead letters, and the backlog as the UIDs above the
cursor that the last search found and no committed batch has covered yet.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NoReturn

from confluent_kafka import KafkaError, KafkaException, Message, Producer
from confluent_kafka.serialization import SerializationError
from prometheus_client import CollectorRegistry

from omnistream.dead_letter import DeadLetter
from omnistream.kafka import TopicSpec, ensure_topics, producer_config, registry_client
from omnistream.metrics import ABORTED, COMMITTED, PipelineMetrics, gauge, transactions_counter
from omnistream.settings import MailSettings, Settings
from omnistream.topics import EMAIL_CHECKPOINTS, STORE_ORDERS, dlq
from producers.emails.checkpoint import Checkpoint, read_checkpoint
from producers.emails.imap import FetchedEmail, MailboxReader, UidValidityChanged
from producers.emails.model import Provenance
from producers.emails.parser import ParseError, message_id_of, parse_email, read_message
from producers.emails.serde import EmailSerde

log = logging.getLogger(__name__)

ORDER = "order"
# Kafka's default message.max.bytes is 1 MiB; a dead letter keeps at most this much of the raw email.
DEAD_LETTER_PAYLOAD_LIMIT = 512 * 1024
DEAD_LETTER = "dead_letter"
CHECKPOINT = "checkpoint"
# Reason classes of dead letters (the metrics' label; the dead letter itself says precisely why).
UNPARSEABLE = "unparseable"  # not a complete, consistent order confirmation
SCHEMA_MISMATCH = "schema-mismatch"  # parsed, but does not fit schemas/store_order.avsc
# Error kinds besides librdkafka's own (kafka_<code>).
TRANSACTION_RETRY = "transaction_retry"  # a batch's transaction aborted and tried again
COMMIT_RETRY = "commit_retry"  # a retriable commit error, committed again
INIT_RETRY = "init_retry"  # a retriable error initialising transactions
DELIVERY_FAILED = "delivery"  # a record's delivery report failed (its batch is aborted and retried)


class FatalProducerError(RuntimeError):
    """The producer cannot go on; the message says what to fix. Nothing uncommitted is visible."""


class EmailMetrics(PipelineMetrics):
    """The email producer's Prometheus metrics: the shared ones, its transactions and the mailbox backlog."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        super().__init__(registry, error_kinds=[TRANSACTION_RETRY, COMMIT_RETRY, INIT_RETRY, DELIVERY_FAILED])
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

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError("batch size must be at least 1")
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
        )
        self.mailbox = self.reader.url
        self.transactional_id = self.options.transactional_id or default_transactional_id(self.mailbox)
        self._producer: Producer | None = None
        self._serde: EmailSerde | None = None
        self._cursor: _Cursor | None = None
        self._in_transaction = False
        self._delivery_errors: list[KafkaError] = []
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
        self._producer = Producer(
            producer_config(
                self.settings,
                **{
                    "transactional.id": self.transactional_id,
                    "transaction.timeout.ms": self.options.transaction_timeout_ms,
                    "linger.ms": 5,  # a batch is committed right after it is produced; no point waiting
                    "error_cb": self.metrics.kafka_error_callback("email producer", log),
                },
            )
        )
        # Fences any earlier producer with this transactional.id and aborts the transaction it left open,
        # which is what makes the checkpoint read below the last committed one.
        self._init_transactions()
        checkpoint = read_checkpoint(
            self.settings, self.topics.checkpoints, self.mailbox, self._serde.read_checkpoint
        )
        uidvalidity = self.reader.open()
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
            if self._producer is not None:
                if self._in_transaction:
                    try:
                        self._abort("the producer is closing")
                    except FatalProducerError as exc:
                        # Fenced or broken: the broker aborts the transaction on its own (timeout or the
                        # next instance's init_transactions), so nothing uncommitted becomes visible.
                        log.warning("could not abort the open transaction: %s", exc)
                self._producer.flush(30)
        finally:
            self.reader.close()
            self.progress.seconds = time.monotonic() - self._started

    # -- the loop --------------------------------------------------------------------------------------

    def drain(self, stop: threading.Event | None = None) -> Progress:
        """Produce every email above the cursor, batch by batch, until none is left (or ``stop`` is set)."""
        stop = stop or threading.Event()
        cursor = self._require_cursor()
        while not stop.is_set():
            try:
                self._reconcile_uidvalidity(self.reader.uidvalidity)
                uids = self.reader.new_uids(after=cursor.last_uid)
                self.metrics.backlog.set(len(uids))
                if not uids:
                    break
                done = 0
                for batch in _chunks(uids, self.options.batch_size):
                    self._run_batch(batch)
                    done += len(batch)
                    self.metrics.backlog.set(len(uids) - done)
                    if stop.is_set():
                        break
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

    def _run_batch(self, uids: list[int]) -> None:
        cursor = self._require_cursor()
        uidvalidity = cursor.uidvalidity
        emails = self.reader.fetch(uids)
        if self.reader.uidvalidity != uidvalidity:
            # Reconnected mid-fetch into a renumbered folder: these UIDs are not the ones searched for.
            raise UidValidityChanged(uidvalidity, self.reader.uidvalidity)
        self.metrics.records_in.labels(self.topics.orders).inc(len(emails))
        records = [self._record_for(fetched, uidvalidity) for fetched in emails]
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
        self._produce_in_transaction(records, uids)
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

    def _require_serde(self) -> EmailSerde:
        if self._serde is None:
            raise RuntimeError("EmailProducer.start() first")
        return self._serde

    def _record_for(self, fetched: FetchedEmail, uidvalidity: int) -> _Record:
        """The order record for ``fetched``, or its dead letter if it cannot be parsed or serialized."""
        serde = self._require_serde()
        provenance = Provenance(self.mailbox, uidvalidity, fetched.uid, fetched.received_at)
        try:
            order = parse_email(fetched.raw, provenance)
        except ParseError as exc:
            return self._dead_letter(fetched, uidvalidity, exc, exc.reason, exc.message_id, exc.order_number)
        try:
            value = serde.order(order)
        except SerializationError as exc:  # e.g. an amount beyond the schema's 12 digits
            reason = f"the order does not fit schemas/store_order.avsc: {exc}"
            return self._dead_letter(fetched, uidvalidity, exc, reason, order.message_id, order.order_number)
        return _Record(ORDER, self.topics.orders, order.order_number.encode(), value)

    def _dead_letter(
        self,
        fetched: FetchedEmail,
        uidvalidity: int,
        error: Exception,
        reason: str,
        message_id: str | None,
        order_number: str | None,
    ) -> _Record:
        if message_id is None:
            message_id = message_id_of(read_message(fetched.raw))
        log.warning("UID %d (%s) dead-lettered: %s", fetched.uid, message_id, reason)
        attributes = {
            "mailbox": self.mailbox,
            "uidvalidity": str(uidvalidity),
            "imap_uid": str(fetched.uid),
            "received_at": fetched.received_at.isoformat(),
            "payload_size": str(len(fetched.raw)),
        }
        payload = fetched.raw
        if len(payload) > DEAD_LETTER_PAYLOAD_LIMIT:
            # A record over the broker's size limit would fail the batch on every retry; the whole email
            # stays in the mailbox under its UID.
            payload = payload[:DEAD_LETTER_PAYLOAD_LIMIT]
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
        # Keyed by Message-ID: the one id every email has (a synthetic one for the rare email without).
        key = message_id or f"{self.mailbox}#{uidvalidity}:{fetched.uid}"
        return _Record(
            DEAD_LETTER,
            self.topics.dead_letters,
            key.encode(),
            self._require_serde().dead_letter(letter),
            UNPARSEABLE if isinstance(error, ParseError) else SCHEMA_MISMATCH,
        )

    # -- Kafka transactions ----------------------------------------------------------------------------

    def _init_transactions(self) -> None:
        producer = self._require_producer()
        for attempt in range(1, self.options.batch_attempts + 1):
            try:
                producer.init_transactions(60)
                return
            except KafkaException as exc:
                error = exc.args[0]
                if (
                    not (isinstance(error, KafkaError) and error.retriable())
                    or attempt == self.options.batch_attempts
                ):
                    self._raise_classified(exc, "initialising transactions", abortable_ok=False)
                self.metrics.errors.labels(INIT_RETRY).inc()
                log.warning("initialising transactions: %s; trying again (attempt %d)", error, attempt)
                time.sleep(min(0.5 * 2 ** (attempt - 1), 10.0))

    def _produce_in_transaction(self, records: list[_Record], uids: list[int]) -> None:
        """Produce ``records`` in one transaction; abort and retry it on abortable errors."""
        what = f"UIDs {uids[0]}-{uids[-1]}"
        for attempt in range(1, self.options.batch_attempts + 1):
            try:
                self._kafka("beginning a transaction", lambda p: p.begin_transaction(), abortable_ok=False)
                self._in_transaction = True
                self._delivery_errors.clear()
                for record in records:
                    if record.kind != CHECKPOINT:
                        self._pace()
                    self._produce(record)
                self._commit()
                self._in_transaction = False
                return
            except _AbortableError as exc:
                self.metrics.errors.labels(TRANSACTION_RETRY).inc()
                log.warning(
                    "transaction for %s failed (%s); aborting it and retrying (attempt %d of %d)",
                    what,
                    exc,
                    attempt,
                    self.options.batch_attempts,
                )
                self._abort(str(exc))
                time.sleep(min(0.5 * 2 ** (attempt - 1), 10.0))
        raise FatalProducerError(
            f"the transaction for {what} failed {self.options.batch_attempts} times; is the Kafka cluster "
            f"at {self.settings.kafka.bootstrap_servers} healthy? Nothing of this batch was committed."
        )

    def _produce(self, record: _Record) -> None:
        producer = self._require_producer()
        while True:
            try:
                producer.produce(record.topic, record.value, record.key, on_delivery=self._on_delivery)
                break
            except BufferError:
                producer.poll(0.1)  # the local queue is full: serve delivery reports, then try again
            except KafkaException as exc:
                self._raise_classified(exc, f"producing to {record.topic}")
        producer.poll(0)

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            # The commit that follows fails for it, and the batch is aborted and retried as a whole.
            log.warning("delivery to %s failed: %s", msg.topic(), err)
            self.metrics.errors.labels(DELIVERY_FAILED).inc()
            self._delivery_errors.append(err)

    def _commit(self) -> None:
        producer = self._require_producer()
        attempts = self.options.batch_attempts
        for attempt in range(1, attempts + 1):
            try:
                producer.commit_transaction(60)
            except KafkaException as exc:
                error = exc.args[0]
                # A retriable commit error leaves the transaction as it was: committing again is safe.
                if (
                    error.retriable()
                    and not error.txn_requires_abort()
                    and not error.fatal()
                    and attempt < attempts
                ):
                    self.metrics.errors.labels(COMMIT_RETRY).inc()
                    log.warning("committing the transaction: %s; trying again", error)
                    continue
                self._raise_classified(exc, "committing the transaction")
            self.metrics.transactions.labels(COMMITTED).inc()
            self.metrics.last_commit.set_to_current_time()
            if self._delivery_errors:  # cannot happen after a successful commit; checked all the same
                raise FatalProducerError(
                    f"records failed delivery in a committed transaction: {self._delivery_errors}"
                )
            return

    def _abort(self, why: str) -> None:
        producer = self._require_producer()
        try:
            producer.abort_transaction(60)
        except KafkaException as exc:
            self._raise_classified(exc, f"aborting the transaction ({why})", abortable_ok=False)
        finally:
            # Counted even when the abort request fails: the broker aborts it then (timeout or fencing).
            self.metrics.transactions.labels(ABORTED).inc()
            self._in_transaction = False

    def _kafka(self, what: str, call: Callable[[Producer], Any], abortable_ok: bool = True) -> Any:
        try:
            return call(self._require_producer())
        except KafkaException as exc:
            self._raise_classified(exc, what, abortable_ok)

    def _raise_classified(self, exc: KafkaException, what: str, abortable_ok: bool = True) -> NoReturn:
        error = exc.args[0] if exc.args else None
        if not isinstance(error, KafkaError):
            raise FatalProducerError(f"Kafka error while {what}: {exc}") from exc
        if error.code() == KafkaError._FENCED or error.code() == KafkaError.PRODUCER_FENCED:
            raise FatalProducerError(
                f"another producer with transactional.id {self.transactional_id!r} took over while {what}: "
                "only one producer may run per mailbox folder. Stop the other one (or give this one its own "
                "--transactional-id if it reads another mailbox)."
            ) from exc
        if error.fatal():
            raise FatalProducerError(f"fatal Kafka error while {what}: {error}") from exc
        if abortable_ok and (error.txn_requires_abort() or error.retriable()):
            raise _AbortableError(f"{what}: {error}") from exc
        if error.code() == KafkaError._TIMED_OUT:
            raise FatalProducerError(
                f"timed out {what}: is the Kafka cluster at {self.settings.kafka.bootstrap_servers} up?"
            ) from exc
        raise FatalProducerError(f"Kafka error while {what}: {error}") from exc

    def _require_producer(self) -> Producer:
        if self._producer is None:
            raise RuntimeError("EmailProducer.start() first")
        return self._producer

    def _pace(self) -> None:
        """Hold to ``max_rate`` emails per second, if one is set."""
        if self.options.max_rate <= 0:
            return
        now = time.monotonic()
        if self._next_send > now:
            time.sleep(self._next_send - now)
            now = self._next_send
        self._next_send = now + 1.0 / self.options.max_rate


class _AbortableError(Exception):
    """The current transaction failed but a new one may succeed."""
