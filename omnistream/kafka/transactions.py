"""A transactional producer: begin, produce, send offsets or a checkpoint, commit or abort — exactly once.

What a transaction carries is the caller's: the records and, in the same transaction, what says how far
the input was read (consumer offsets with :meth:`TransactionalProducer.send_offsets`, or a checkpoint
record produced like any other). A reader with ``isolation.level=read_committed`` then sees all of it or
none of it.

Kafka's errors are sorted the way the broker means them:

- fencing (another producer took over the ``transactional.id``) and fatal errors end the producer
  (:class:`Fenced`, :class:`TransactionFailed`): nothing uncommitted is visible, and the supervisor starts
  the next instance, whose ``init_transactions`` aborts what was left open;
- an abortable or retriable error fails the current transaction only (:class:`TransactionAbortable`):
  :meth:`TransactionalProducer.run` aborts it and makes it again, with exponential backoff by tenacity,
  at most ``attempts`` times;
- a retriable error of ``init_transactions`` or of a commit is retried by tenacity in place: it leaves the
  transaction as it was, so committing again is safe.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, NoReturn

from confluent_kafka import KafkaError, KafkaException, Producer
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)

from omnistream.errors import OmnistreamError

log = logging.getLogger(__name__)

# What happened, as told to ``on_event`` (the callers' metrics).
COMMITTED = "committed"
ABORTED = "aborted"
TRANSACTION_RETRY = "transaction_retry"  # a transaction aborted and made again after a backoff
COMMIT_RETRY = "commit_retry"  # a retriable commit error, committed again
INIT_RETRY = "init_retry"  # a retriable error initialising transactions
REQUEST_TIMEOUT_S = 60.0


class TransactionFailed(OmnistreamError):
    """The producer cannot go on; the message says what to fix. Nothing uncommitted is visible."""


class Fenced(TransactionFailed):
    """Another producer with the same ``transactional.id`` took over."""


class TransactionAbortable(OmnistreamError):
    """The current transaction failed, but a new one may succeed."""


def _retriable(exc: BaseException) -> bool:
    """A KafkaException that leaves the transaction as it was (no abort needed, not fatal)."""
    if not isinstance(exc, KafkaException) or not exc.args or not isinstance(exc.args[0], KafkaError):
        return False
    error: KafkaError = exc.args[0]
    return bool(error.retriable() and not error.txn_requires_abort() and not error.fatal())


def _backoff() -> wait_exponential:
    return wait_exponential(multiplier=0.5, max=10)


class TransactionalProducer:
    """One ``transactional.id``'s producer: transactions made, retried and classified as above."""

    def __init__(
        self,
        config: dict[str, Any],
        *,
        attempts: int = 5,
        on_event: Callable[[str], None] | None = None,
    ) -> None:
        self.transactional_id: str = config["transactional.id"]
        self.bootstrap_servers: str = config["bootstrap.servers"]
        self.attempts = attempts
        self.producer = Producer(config)
        self.in_transaction = False
        self._on_event = on_event or (lambda _event: None)

    # -- the lifecycle ---------------------------------------------------------------------------------

    def init(self) -> None:
        """Fence any earlier producer with this ``transactional.id``; abort the transaction it left open."""
        retrying = Retrying(
            retry=retry_if_exception(_retriable),
            stop=stop_after_attempt(self.attempts),
            wait=_backoff(),
            before_sleep=self._counting(INIT_RETRY, "initialising transactions"),
            reraise=True,
        )
        try:
            retrying(self.producer.init_transactions, REQUEST_TIMEOUT_S)
        except KafkaException as exc:
            self.raise_classified(exc, "initialising transactions", abortable_ok=False)

    def run(
        self,
        what: str,
        fill: Callable[[], None],
        remake: Callable[[TransactionAbortable], bool] | None = None,
    ) -> None:
        """One transaction: begin, ``fill()`` (which produces everything it carries), commit.

        An abortable failure aborts it; it is made again at once if ``remake(error)`` says the next one
        differs (the caller set aside what failed it: no outage), else after a backoff, ``attempts`` times
        at most, and then ``TransactionFailed``.
        """
        retrying = Retrying(
            retry=retry_if_exception_type(TransactionAbortable),
            stop=stop_after_attempt(self.attempts),
            wait=_backoff(),
            before_sleep=self._counting(TRANSACTION_RETRY, f"the transaction for {what}"),
            reraise=True,
        )
        try:
            retrying(self._once, fill, remake, what)
        except TransactionAbortable as exc:
            self._on_event(TRANSACTION_RETRY)
            raise TransactionFailed(
                f"the transaction for {what} failed {self.attempts} times (last: {exc}); is the Kafka "
                f"cluster at {self.bootstrap_servers} healthy? Nothing of it was committed."
            ) from exc

    def _once(
        self, fill: Callable[[], None], remake: Callable[[TransactionAbortable], bool] | None, what: str
    ) -> None:
        while True:
            try:
                self.call("beginning a transaction", lambda p: p.begin_transaction(), abortable_ok=False)
                self.in_transaction = True
                fill()
                self.commit()
                return
            except TransactionAbortable as exc:
                self.abort(str(exc))
                if remake is None or not remake(exc):
                    raise
                log.warning("transaction for %s aborted: %s; making it again without the refusal", what, exc)

    def send_offsets(self, positions: list[Any], group_metadata: Any) -> None:
        """The consumer's next positions, committed with the transaction (consume-transform-produce)."""
        self.call(
            "sending the consumer offsets",
            lambda p: p.send_offsets_to_transaction(positions, group_metadata, REQUEST_TIMEOUT_S),
        )

    def flush(self, what: str, timeout_s: float = REQUEST_TIMEOUT_S) -> None:
        """Wait for every record produced so far; ``TransactionAbortable`` if some are not delivered."""
        left = self.producer.flush(timeout_s)
        if left:
            raise TransactionAbortable(f"{left} records not delivered within {timeout_s:.0f} s ({what})")

    def commit(self) -> None:
        retrying = Retrying(
            retry=retry_if_exception(_retriable),
            stop=stop_after_attempt(self.attempts),
            wait=_backoff(),
            before_sleep=self._counting(COMMIT_RETRY, "committing the transaction"),
            reraise=True,
        )
        try:
            retrying(self.producer.commit_transaction, REQUEST_TIMEOUT_S)
        except KafkaException as exc:
            self.raise_classified(exc, "committing the transaction")
        self.in_transaction = False
        self._on_event(COMMITTED)

    def abort(self, why: str) -> None:
        try:
            self.producer.abort_transaction(REQUEST_TIMEOUT_S)
        except KafkaException as exc:
            self.raise_classified(exc, f"aborting the transaction ({why})", abortable_ok=False)
        finally:
            # Counted even when the abort request fails: the broker aborts it then (timeout or fencing).
            self._on_event(ABORTED)
            self.in_transaction = False

    def close(self, timeout_s: float = 30.0) -> None:
        """Abort a transaction cut short (by an error or a stop request), then flush."""
        if self.in_transaction:
            try:
                self.abort("the producer is closing")
            except TransactionFailed as exc:
                # Fenced or broken: the broker aborts the transaction on its own (timeout or the next
                # instance's init_transactions), so nothing uncommitted becomes visible.
                log.warning("could not abort the open transaction: %s", exc)
        self.producer.flush(timeout_s)

    # -- errors ----------------------------------------------------------------------------------------

    def call(self, what: str, call: Callable[[Producer], Any], abortable_ok: bool = True) -> Any:
        """``call(producer)``, its KafkaException classified (see the module docstring)."""
        try:
            return call(self.producer)
        except KafkaException as exc:
            self.raise_classified(exc, what, abortable_ok)

    def raise_classified(self, exc: KafkaException, what: str, abortable_ok: bool = True) -> NoReturn:
        """``Fenced``, ``TransactionFailed`` or (if ``abortable_ok``) ``TransactionAbortable`` for ``exc``."""
        error = exc.args[0] if exc.args else None
        if not isinstance(error, KafkaError):
            raise TransactionFailed(f"Kafka error while {what}: {exc}") from exc
        if error.code() in (KafkaError._FENCED, KafkaError.PRODUCER_FENCED):
            raise Fenced(
                f"another producer with transactional.id {self.transactional_id!r} took over while {what}: "
                "only one producer may run per transactional.id. Stop the other one (or give this one its "
                "own --transactional-id if it reads another source)."
            ) from exc
        if error.fatal():
            raise TransactionFailed(f"fatal Kafka error while {what}: {error}") from exc
        if abortable_ok and (error.txn_requires_abort() or error.retriable()):
            raise TransactionAbortable(f"{what}: {error}") from exc
        if error.code() == KafkaError._TIMED_OUT:
            raise TransactionFailed(
                f"timed out {what}: is the Kafka cluster at {self.bootstrap_servers} up?"
            ) from exc
        raise TransactionFailed(f"Kafka error while {what}: {error}") from exc

    def _counting(self, event: str, what: str) -> Callable[[RetryCallState], None]:
        def before_sleep(state: RetryCallState) -> None:
            self._on_event(event)
            error = state.outcome.exception() if state.outcome is not None else None
            log.warning(
                "%s failed (%s); trying again (attempt %d of %d)",
                what,
                error,
                state.attempt_number + 1,
                self.attempts,
            )

        return before_sleep
