"""The stores' mailbox over IMAP, read incrementally by UID, through outages.

A folder's UIDs only grow, so "every UID above the last one handled" is an exact cursor, as long as the
folder's UIDVALIDITY stays the same; when the server renumbers a folder it changes UIDVALIDITY, and this
reader reports it (``UidValidityChanged``) instead of quietly handing out UIDs from another numbering.

The folder is opened read-only and messages are fetched with ``BODY.PEEK[]``: the producer never changes the
mailbox (no \\Seen flags, no deletes), so other readers and a re-read see it as it was.

Connection errors and dropped sessions are retried with exponential backoff (tenacity) for up to
``retry_for_s`` seconds, reconnecting each time; a refused login or a missing folder is not retried.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientAbortError, IMAPClientError, LoginError
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_delay, wait_exponential

from omnistream.settings import MailSettings

log = logging.getLogger(__name__)

T = TypeVar("T")
# A refused connection, a timeout, a reset socket or a session the server dropped: worth reconnecting.
TRANSIENT_IMAP_ERRORS: tuple[type[BaseException], ...] = (OSError, IMAPClientAbortError)
# The longest an IDLE command stays open before it is renewed (RFC 2177 asks for less than 29 minutes).
IDLE_RENEW_S = 300.0


class MailboxError(RuntimeError):
    """A mailbox problem a person has to fix (credentials, folder); retrying will not help."""


class ImapUnavailable(RuntimeError):
    """The IMAP server stayed unreachable for the whole retry window."""


class UidValidityChanged(RuntimeError):
    """The folder's UIDVALIDITY is not the one its UIDs were read under: each UID means another email now."""

    def __init__(self, old: int, new: int) -> None:
        super().__init__(f"UIDVALIDITY changed from {old} to {new}")
        self.old = old
        self.new = new


@dataclass(frozen=True)
class FetchedEmail:
    uid: int
    raw: bytes  # the whole message, RFC 822
    received_at: datetime  # INTERNALDATE: when the server received it


def mailbox_url(mail: MailSettings, folder: str) -> str:
    """The mailbox folder's name in checkpoints and records: ``imap://user@host:port/folder``."""
    return f"imap://{mail.mailbox_user}@{mail.host}:{mail.imap_port}/{folder}"


class MailboxReader:
    """One folder of one mailbox, read-only; reconnects (and re-checks UIDVALIDITY) after an outage."""

    def __init__(
        self,
        mail: MailSettings,
        folder: str = "INBOX",
        retry_for_s: float = 300.0,
        timeout_s: float = 30.0,
        use_idle: bool = True,
    ) -> None:
        self._mail = mail
        self.folder = folder
        self.url = mailbox_url(mail, folder)
        self._retry_for_s = retry_for_s
        self._timeout_s = timeout_s
        self._use_idle = use_idle
        self._imap: IMAPClient | None = None
        self._uidvalidity: int | None = None
        self._idle_supported = False

    def __enter__(self) -> MailboxReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def uidvalidity(self) -> int:
        """The folder's UIDVALIDITY as of the last (re)connect; connects first if needed."""
        if self._uidvalidity is None:
            self.open()
        assert self._uidvalidity is not None
        return self._uidvalidity

    def open(self) -> int:
        """Connect, log in and select the folder (retried); returns its UIDVALIDITY."""
        self._call("connecting", lambda imap: None)
        assert self._uidvalidity is not None
        return self._uidvalidity

    def new_uids(self, after: int) -> list[int]:
        """The UIDs above ``after``, ascending."""

        def search(imap: IMAPClient) -> list[int]:
            # "n:*" always matches the highest UID, even when it is below n (RFC 3501), hence the filter.
            return sorted(uid for uid in imap.search(["UID", f"{after + 1}:*"]) if uid > after)

        return self._call(f"searching for UIDs above {after}", search)

    def fetch(self, uids: list[int]) -> list[FetchedEmail]:
        """The emails with ``uids`` that still exist, in UID order (expunged ones are logged, left out)."""

        def fetch(imap: IMAPClient) -> dict[int, dict[bytes, Any]]:
            return imap.fetch(uids, ["BODY.PEEK[]", "INTERNALDATE"])

        response = self._call(f"fetching {len(uids)} emails", fetch)
        out = []
        for uid in uids:
            data = response.get(uid)
            if data is None or b"BODY[]" not in data:
                log.warning("UID %d of %s was expunged before it could be read; skipped", uid, self.url)
                continue
            received = data.get(b"INTERNALDATE")
            if not isinstance(received, datetime) or received.tzinfo is None:
                received = datetime.now(UTC)  # a server that gives no usable date: when we read it
            out.append(FetchedEmail(uid=uid, raw=bytes(data[b"BODY[]"]), received_at=received))
        return out

    def wait_for_mail(self, timeout_s: float, stop: threading.Event, poll_interval_s: float = 5.0) -> None:
        """Return when new mail may have arrived, after ``timeout_s``, or soon after ``stop`` is set.

        Uses IMAP IDLE (the server pushes EXISTS) when the server has it, else sleeps ``poll_interval_s``.
        """
        deadline = time.monotonic() + timeout_s
        if not (self._use_idle and self._call("checking IDLE", lambda imap: self._idle_supported)):
            stop.wait(max(0.0, min(poll_interval_s, deadline - time.monotonic())))
            return

        def idle(imap: IMAPClient) -> None:
            imap.idle()
            try:
                renew_at = time.monotonic() + IDLE_RENEW_S
                while not stop.is_set() and time.monotonic() < min(deadline, renew_at):
                    # Short checks so a stop request is seen within a second.
                    if imap.idle_check(timeout=1.0):
                        return
            finally:
                imap.idle_done()

        self._call("waiting for new mail (IDLE)", idle)

    def close(self) -> None:
        """Log out (best effort: the session may already be gone)."""
        self._drop(logout=True)

    def _call(self, what: str, operation: Callable[[IMAPClient], T]) -> T:
        retrying = Retrying(
            retry=retry_if_exception_type(TRANSIENT_IMAP_ERRORS),
            wait=wait_exponential(multiplier=0.5, max=30),
            stop=stop_after_delay(self._retry_for_s),
            before_sleep=lambda state: self._log_retry(what, state),
            reraise=True,
        )
        try:
            return retrying(self._attempt, operation)
        except TRANSIENT_IMAP_ERRORS as exc:
            raise ImapUnavailable(
                f"IMAP server {self._mail.host}:{self._mail.imap_port} unreachable for "
                f"{self._retry_for_s:.0f} s while {what} ({type(exc).__name__}: {exc}); check that it is "
                "running (omnistream stack status) and OMNISTREAM_MAIL__HOST / OMNISTREAM_MAIL__IMAP_PORT"
            ) from exc

    def _attempt(self, operation: Callable[[IMAPClient], T]) -> T:
        try:
            return operation(self._connected())
        except TRANSIENT_IMAP_ERRORS:
            self._drop(logout=False)  # the session is unusable; the next attempt reconnects
            raise

    def _log_retry(self, what: str, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        log.warning(
            "IMAP %s:%s unavailable while %s (%s: %s); retry %d in %.1f s",
            self._mail.host,
            self._mail.imap_port,
            what,
            type(exc).__name__,
            exc,
            state.attempt_number,
            wait,
        )

    def _connected(self) -> IMAPClient:
        if self._imap is not None:
            return self._imap
        mail = self._mail
        imap = IMAPClient(mail.host, mail.imap_port, ssl=False, timeout=self._timeout_s)
        imap.normalise_times = False  # INTERNALDATE as zone-aware datetimes, not naive local time
        try:
            imap.login(mail.mailbox_user, mail.mailbox_password.get_secret_value())
        except LoginError as exc:
            imap.shutdown()
            raise MailboxError(
                f"IMAP login as {mail.mailbox_user!r} at {mail.host}:{mail.imap_port} refused ({exc}); check "
                "OMNISTREAM_MAIL__MAILBOX_USER and OMNISTREAM_MAIL__MAILBOX_PASSWORD"
            ) from exc
        try:
            selected = imap.select_folder(self.folder, readonly=True)
        except IMAPClientAbortError:
            raise
        except IMAPClientError as exc:
            imap.shutdown()
            raise MailboxError(f"cannot open folder {self.folder!r} of {self.url}: {exc}") from exc
        uidvalidity = int(selected[b"UIDVALIDITY"])
        self._idle_supported = imap.has_capability("IDLE")
        self._imap = imap
        log.info(
            "connected to %s (UIDVALIDITY %d, %s messages)", self.url, uidvalidity, selected.get(b"EXISTS")
        )
        previous, self._uidvalidity = self._uidvalidity, uidvalidity
        if previous is not None and previous != uidvalidity:
            raise UidValidityChanged(previous, uidvalidity)
        return imap

    def _drop(self, logout: bool) -> None:
        imap, self._imap = self._imap, None
        if imap is None:
            return
        try:
            if logout:
                imap.logout()
            else:
                imap.shutdown()
        except (*TRANSIENT_IMAP_ERRORS, IMAPClientError):
            log.debug("IMAP session to %s already gone", self.url)
