"""The forever loop per mailbox (``helpdesk run``) and the one-shot pass (``fetch``).

``watch`` first takes the mailbox's lock (``mailbox_lock``): with several daemons on
one database only the holder fetches, the others stand by and try again every
``LOCK_RETRY`` seconds, so a dead holder's mailbox moves to another daemon within
seconds. The holder connects, fetches, then waits with IDLE (renewed well before the
29-minute limit, and a full pass at each renewal) or sleeps ``poll_interval``;
it checks ``stop`` at least every second. Any error ends the session: it is
logged once per change of state, recorded in ``mailbox_state``, and the watcher
tries again after an exponential backoff with jitter, letting go of the lock
meanwhile, so that a daemon that can reach the mailbox takes it over. Nothing
escapes a watcher, so one failing mailbox never stops the others.
"""
from __future__ import annotations

import logging
import random
import ssl
import threading
import time
from collections.abc import Callable

from imapclient import IMAPClient

from helpdesk.app import App
from helpdesk.config import ImapMailbox
from helpdesk.inbound.imap_fetch import MailboxLost, fetch_once
from helpdesk.inbound.imap_session import close_quietly, connect, describe
from helpdesk.inbound.imap_state import record_error
from helpdesk.inbound.mailbox_lock import MailboxLock, holder, mailbox_lock

log = logging.getLogger(__name__)

IDLE_CHECK = 1.0  # seconds between looks at `stop` while idling
IDLE_RENEW_MAX = 600.0  # RFC 2177: servers may drop an IDLE after 29 minutes
MAX_PASSES_IN_A_ROW = 5  # then IDLE anyway: a server that repeats EXISTS must not spin us
WAKE_RESPONSES = frozenset({b"EXISTS", b"RECENT"})
LOCK_RETRY = 2.0  # seconds between a standing-by watcher's tries for the mailbox lock


def backoff_delay(failures: int, base: float = 1.0, cap: float = 300.0) -> float:
    """Exponential in the number of consecutive failures, with jitter (50–100 %)."""
    return min(cap, base * 2 ** max(0, failures - 1)) * random.uniform(0.5, 1.0)


def fetch_all(app: App) -> int:
    """One pass over every configured mailbox; returns how many failed. A mailbox a
    daemon (or another ``fetch``) is fetching right now is left to it."""
    failed = 0
    for mailbox in app.settings.inbound.imap:
        lock = mailbox_lock(app, mailbox.name)
        try:
            if not lock.acquire():
                found = holder(app, mailbox.name)
                log.info("mailbox %s: fetched by %s right now; skipped", mailbox.name,
                         found.describe() if found else "another process")
                continue
            client = connect(mailbox, cwd=app.settings.config_dir)
            try:
                result = fetch_once(app, mailbox, client, still_ours=lock.held)
            finally:
                close_quietly(client)
            log.info("mailbox %s: fetched: %s", mailbox.name, result.summary())
        except Exception as exc:
            failed += 1
            reason = describe(exc, mailbox)
            log.error("mailbox %s: fetch failed: %s", mailbox.name, reason)
            record_error(app, mailbox.name, reason)
        finally:
            lock.release()
    return failed


def start_watchers(app: App, stop: threading.Event, on_fetched: Callable[[], None],
                   **options: float) -> list[threading.Thread]:
    """One daemon thread per configured mailbox, each running ``watch``."""
    threads = [threading.Thread(target=watch, args=(app, mailbox, stop, on_fetched),
                                kwargs=options, name=f"imap-{mailbox.name}", daemon=True)
               for mailbox in app.settings.inbound.imap]
    for thread in threads:
        thread.start()
    return threads


class _Health:
    """Logs each change of state once, not every retry."""

    def __init__(self, app: App, mailbox: ImapMailbox) -> None:
        self.app, self.name = app, mailbox.name
        self.failures = 0
        self.reason: str | None = None
        self.mode: str | None = None

    def ok(self, mode: str) -> None:
        if self.reason is not None:
            log.info("mailbox %s: working again (%s) after %d failed attempt(s)",
                        self.name, mode, self.failures)
        elif mode != self.mode:
            log.info("mailbox %s: watching (%s)", self.name, mode)
        self.failures, self.reason, self.mode = 0, None, mode

    def failed(self, reason: str) -> None:
        self.failures += 1
        if reason != self.reason:
            log.error("mailbox %s: %s (will retry with backoff)", self.name, reason)
        else:
            log.debug("mailbox %s: still failing (attempt %d): %s",
                      self.name, self.failures, reason)
        self.reason = reason
        record_error(self.app, self.name, reason)


class _Turn:
    """The mailbox lock as a watcher sees it: whose turn it is, each change logged once."""

    def __init__(self, app: App, mailbox: ImapMailbox) -> None:
        self.app, self.name = app, mailbox.name
        self.lock: MailboxLock = mailbox_lock(app, mailbox.name)
        self.standing_by = False

    def mine(self) -> bool:
        if self.lock.held() or self.lock.acquire():
            if self.standing_by:
                log.info("mailbox %s: this process fetches it now", self.name)
            self.standing_by = False
            return True
        if not self.standing_by:
            found = holder(self.app, self.name)
            log.info("mailbox %s: fetched by %s; standing by", self.name,
                     found.describe() if found else "another process")
        self.standing_by = True
        return False


def watch(app: App, mailbox: ImapMailbox, stop: threading.Event,
          on_fetched: Callable[[], None] = lambda: None, *, backoff_base: float = 1.0,
          backoff_cap: float = 300.0, idle_renew: float | None = None) -> None:
    """Watch *mailbox* until *stop* is set; never raises."""
    renew = idle_renew if idle_renew is not None else min(
        IDLE_RENEW_MAX, mailbox.stale_after.total_seconds() / 2)
    health = _Health(app, mailbox)
    turn = _Turn(app, mailbox)
    try:
        while not stop.is_set():
            try:
                if turn.mine():
                    _session(app, mailbox, stop, on_fetched, health, renew, turn.lock)
                else:
                    stop.wait(LOCK_RETRY)
            except MailboxLost as exc:
                log.warning("%s", exc)
            except Exception as exc:
                turn.lock.release()  # another daemon may reach the server while we wait
                try:
                    health.failed(describe(exc, mailbox))
                except Exception:
                    log.exception("mailbox %s: could not record a failure", mailbox.name)
                stop.wait(backoff_delay(health.failures, backoff_base, backoff_cap))
    finally:
        turn.lock.release()
    log.info("mailbox %s: watcher stopped", mailbox.name)


def _session(app: App, mailbox: ImapMailbox, stop: threading.Event,
             on_fetched: Callable[[], None], health: _Health, renew: float,
             lock: MailboxLock) -> None:
    """One connection: passes and waits until *stop*; errors end it, and so does
    losing the mailbox's lock."""
    client = connect(mailbox, cwd=app.settings.config_dir)
    try:
        use_idle = mailbox.idle and client.has_capability("IDLE")
        mode = "IDLE" if use_idle else f"polling every {mailbox.poll_interval.total_seconds():g}s"
        again = 0
        while not stop.is_set():
            if not lock.held():
                raise MailboxLost(f"mailbox {mailbox.name}: lost its lock; "
                                  "another process may fetch it now")
            result = fetch_once(app, mailbox, client, stop=stop, still_ours=lock.held)
            health.ok(mode)
            if result.handled:
                _notify(on_fetched, mailbox)
            if _mail_arrived_during_pass(client) and again < MAX_PASSES_IN_A_ROW:
                again += 1  # its EXISTS came with another answer: IDLE would not repeat it
                continue
            again = 0
            if use_idle:
                _idle(client, stop, renew, mailbox.timeout.total_seconds())
            else:
                stop.wait(mailbox.poll_interval.total_seconds())
    finally:
        close_quietly(client)


def _notify(on_fetched: Callable[[], None], mailbox: ImapMailbox) -> None:
    try:
        on_fetched()
    except Exception:
        log.exception("mailbox %s: on_fetched callback failed", mailbox.name)


def _idle(client: IMAPClient, stop: threading.Event, renew: float, timeout: float) -> None:
    """IDLE until new mail, *stop*, or *renew* seconds; then DONE.

    An empty answer long before the check timeout means the socket is readable
    without a full line: usually EOF (server gone). DONE then raises, which is
    what we want; if it was harmless, the caller just does one more pass.
    """
    client.idle()
    deadline = time.monotonic() + renew
    while not stop.is_set() and time.monotonic() < deadline:
        if _buffered_input(client, timeout):
            break  # e.g. "+ idling" and "* 1 EXISTS" arrived in one read
        started = time.monotonic()
        responses = client.idle_check(timeout=IDLE_CHECK)
        if any(_wakes(r) for r in responses):
            break
        if not responses and time.monotonic() - started < IDLE_CHECK / 2:
            break
    client.idle_done()


def _wakes(response: tuple[object, ...]) -> bool:
    if response and response[0] == b"BYE":
        return True
    return len(response) > 1 and response[1] in WAKE_RESPONSES


# Two gaps in imapclient 3.x/4.x that lose IDLE wake-ups, bridged through imaplib's
# state (``client._imap``). Without that state both answer False: we lose nothing
# but latency, because every IDLE renewal does a full pass anyway.
def _mail_arrived_during_pass(client: IMAPClient) -> bool:
    """imaplib keeps untagged responses that came with other commands' answers.

    The SELECT of each pass starts the list afresh with its own EXISTS; any further
    EXISTS is mail that arrived during the pass and that IDLE will not announce again.
    """
    untagged = getattr(getattr(client, "_imap", None), "untagged_responses", None) or {}
    return len(untagged.get("EXISTS", ())) > 1


def _buffered_input(client: IMAPClient, timeout: float) -> bool:
    """Data already read from the socket but not parsed: ``idle_check`` polls the
    socket only, so lines sitting in imaplib's buffer would wait for the renewal."""
    reader = getattr(getattr(client, "_imap", None), "file", None)
    if reader is None:
        return False
    sock = client.socket()
    sock.setblocking(False)
    try:
        return bool(reader.peek(1))
    except (BlockingIOError, ssl.SSLWantReadError):
        return False
    finally:
        sock.settimeout(timeout)
