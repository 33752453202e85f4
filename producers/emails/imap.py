"""The stores' mailbox over IMAP, read incrementally by UID, through outages.

A folder's UIDs only grow, so "every UID above the last one handled" is an exact cursor, as long as the
folder's UIDVALIDITY stays the same; when the server renumbers a folder it changes UIDVALIDITY, and this
reader reports it (``UidValidityChanged``) instead of quietly handing out UIDs from another numbering.

Messages are fetched with ``BODY.PEEK[]``, so reading sets no \\Seen flag. The folder is opened read-only
unless the reader archives (``readonly=False``): ``archive`` moves messages the producer has committed to
another folder, which keeps the folder bounded. It uses IMAP MOVE (RFC 6851) when the server has it, else
COPY, STORE \\Deleted and UID EXPUNGE (RFC 4315; plain EXPUNGE on a server without UIDPLUS, which also
removes messages another client marked \\Deleted). Moving is idempotent (a UID already moved matches
nothing), except that the COPY fallback, interrupted before its EXPUNGE, copies those messages again next
time: an archive may then hold a message twice; the folder read never does. Removing messages does not
disturb the UID cursor: a server never hands out a UID twice under one UIDVALIDITY.

Connection errors and dropped sessions are retried with exponential backoff (tenacity) for up to
``retry_for_s`` seconds, reconnecting each time; a refused login, or a folder missing when first opened,
is not retried. A folder that disappears once it has been open (deleted and made again, as a migration or
a server restored empty does) is waited for within the same window; it comes back under a new UIDVALIDITY.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from imapclient import DELETED, IMAPClient
from imapclient.exceptions import IMAPClientAbortError, IMAPClientError, LoginError
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_delay, wait_exponential

from omnistream.errors import OmnistreamError, Unreachable
from omnistream.settings import MailSettings

log = logging.getLogger(__name__)

T = TypeVar("T")
# A refused connection, a timeout, a reset socket or a session the server dropped: worth reconnecting.
TRANSIENT_IMAP_ERRORS: tuple[type[BaseException], ...] = (OSError, IMAPClientAbortError)
# The longest an IDLE command stays open before it is renewed (RFC 2177 asks for less than 29 minutes).
IDLE_RENEW_S = 300.0


class MailboxError(OmnistreamError):
    """A mailbox problem a person has to fix (credentials, folder); retrying will not help."""


class ImapUnavailable(Unreachable):
    """The IMAP server stayed unreachable for the whole retry window."""


class FolderGone(OmnistreamError):
    """The folder, open before, cannot be selected now: waited for like an outage (it may be made again)."""


class UidValidityChanged(OmnistreamError):
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
        readonly: bool = True,
        use_move: bool = True,
    ) -> None:
        """``readonly=False`` to ``archive``; ``use_move=False`` archives by COPY even where MOVE exists."""
        self._mail = mail
        self.folder = folder
        self.url = mailbox_url(mail, folder)
        self._retry_for_s = retry_for_s
        self._timeout_s = timeout_s
        self._use_idle = use_idle
        self._readonly = readonly
        self._use_move = use_move
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

    def uids_through(self, last: int) -> list[int]:
        """The UIDs of the folder up to ``last``, ascending (none if ``last`` is 0)."""
        if last < 1:
            return []
        return self._call(
            f"searching for UIDs up to {last}",
            lambda imap: sorted(uid for uid in imap.search(["UID", f"1:{last}"]) if uid <= last),
        )

    def ensure_folder(self, folder: str) -> None:
        """Create ``folder`` in the mailbox unless it exists."""

        def ensure(imap: IMAPClient) -> None:
            if not imap.folder_exists(folder):
                self._create(imap, folder)

        self._call(f"checking folder {folder!r}", ensure)

    def archive(self, uids: list[int], folder: str, uidvalidity: int) -> None:
        """Move the messages ``uids`` (read under ``uidvalidity``) to ``folder``; UIDs already gone: no-ops.

        ``UidValidityChanged`` if the folder is not under ``uidvalidity`` any more: its UIDs would then name
        other messages, which must stay. ``MailboxError`` if the server refuses the move.
        """
        if self._readonly:
            raise RuntimeError("a read-only MailboxReader cannot archive; open it with readonly=False")

        def move(imap: IMAPClient) -> None:
            if self._uidvalidity != uidvalidity:
                raise UidValidityChanged(uidvalidity, self._uidvalidity or 0)
            try:
                self._move(imap, uids, folder)
            except IMAPClientAbortError:
                raise
            except IMAPClientError as exc:
                if "TRYCREATE" not in str(exc):
                    raise MailboxError(
                        f"moving {len(uids)} emails of {self.url} to {folder!r}: {exc}"
                    ) from exc
                self._create(imap, folder)  # removed since start: make it again, as the server suggests
                self._move(imap, uids, folder)

        self._call(f"moving {len(uids)} emails to {folder!r}", move)

    def _move(self, imap: IMAPClient, uids: list[int], folder: str) -> None:
        if self._use_move and imap.has_capability("MOVE"):
            imap.move(uids, folder)
            return
        imap.copy(uids, folder)
        imap.add_flags(uids, [DELETED], silent=True)
        if imap.has_capability("UIDPLUS"):
            imap.uid_expunge(uids)
        else:
            imap.expunge()

    def _create(self, imap: IMAPClient, folder: str) -> None:
        try:
            imap.create_folder(folder)
        except IMAPClientAbortError:
            raise
        except IMAPClientError as exc:
            if not imap.folder_exists(folder):  # else made by someone else just now
                raise MailboxError(f"cannot create folder {folder!r} in {self.url}: {exc}") from exc
        log.info("created folder %r in %s", folder, self.url)

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
            try:
                imap.idle()
            except IMAPClientAbortError:
                raise
            except IMAPClientError as exc:
                # The server flushed a pending untagged response (new mail's EXISTS) before its "+ idling",
                # which imapclient takes for a failure. Mail may have arrived; the session is mid-command,
                # so it is dropped and the next call reconnects.
                log.debug("IDLE on %s answered early (%s): new mail may be there", self.url, exc)
                self._drop(logout=False)
                return
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
            retry=retry_if_exception_type((*TRANSIENT_IMAP_ERRORS, FolderGone)),
            wait=wait_exponential(multiplier=0.5, max=30),
            stop=stop_after_delay(self._retry_for_s),
            before_sleep=lambda state: self._log_retry(what, state),
            reraise=True,
        )
        try:
            return retrying(self._attempt, operation)
        except FolderGone as exc:
            raise MailboxError(
                f"folder {self.folder!r} of {self.url} has been gone for {self._retry_for_s:.0f} s ({exc})"
            ) from exc
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
            selected = imap.select_folder(self.folder, readonly=self._readonly)
        except IMAPClientAbortError:
            raise
        except IMAPClientError as exc:
            imap.shutdown()
            if self._uidvalidity is not None:
                raise FolderGone(str(exc)) from exc
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
