"""One fetcher per IMAP mailbox, however many daemons share the database.

Several ``helpdesk run`` daemons on one database share the outbox, the sweep and the
hooks (each claims its rows), but two of them fetching the same mailbox would both
download every message and both MOVE it: a copy too many in ``Processed`` and
``NO [EXPUNGEISSUED]`` for the slower one. So each mailbox has a lock, taken without
waiting; the watcher that gets it fetches, the others stand by and try again every
few seconds.

- **PostgreSQL**: a session-level advisory lock (``pg_try_advisory_lock``) held on a
  connection of its own (autocommit, outside the pool, TCP keepalives on). The lock
  lives exactly as long as that connection: when the holder dies, even by SIGKILL,
  the kernel closes its socket, the server ends the session and the lock is free at
  once; a host that vanishes is noticed by the keepalives (about 25 s). Nothing to
  renew, no clock to trust, and no second holder while the first is alive, which a
  lease row with a heartbeat cannot promise (a holder paused past its lease, by a
  slow IMAP command or a stopped VM, resumes still believing it holds it). The
  holder's name and since when are its connection's ``application_name``, which
  ``helpdesk status`` reads from ``pg_stat_activity``.
- **SQLite** (one host by nature): ``flock`` on a file beside the database, which the
  kernel releases when the process ends; the file holds the holder's name and time.

Before it acknowledges a batch on the server the holder checks its lock is still
there (one ``SELECT 1``), so a holder whose lock connection broke stops rather than
racing the daemon that took over.
"""
from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import re
import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from sqlalchemy import Connection, create_engine, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

from helpdesk.app import App

log = logging.getLogger(__name__)

_APPLICATION_NAME = re.compile(r"^helpdesk (?P<who>\S+) since (?P<since>\S+)$")


@dataclass(frozen=True)
class Holder:
    who: str  # host:pid
    since: datetime | None

    def describe(self) -> str:
        return self.who + (f" since {self.since.isoformat(timespec='seconds')}"
                           if self.since else "")


class MailboxLock(Protocol):
    def acquire(self) -> bool:
        """Take the lock if it is free (never waits); True while this process holds it.
        Raises ``SQLAlchemyError`` when the database cannot be asked."""

    def held(self) -> bool:
        """Whether this process still holds it (False after a lost lock connection)."""

    def release(self) -> None:
        """Let go of it, if held; ``acquire`` may take it again later."""


def this_process() -> str:
    """``host:pid``, short enough that PostgreSQL's 63-byte ``application_name`` keeps
    it whole with the time it took the lock (``_label``)."""
    return f"{socket.gethostname().split('.')[0][:18]}:{os.getpid()}"


def _label() -> str:
    return f"helpdesk {this_process()} since {datetime.now(UTC):%Y-%m-%dT%H:%M:%SZ}"


def mailbox_lock(app: App, mailbox: str) -> MailboxLock:
    if app.engine.dialect.name == "postgresql":
        return AdvisoryLock(app, mailbox)
    return FileLock(_lock_path(app, mailbox))


def holder(app: App, mailbox: str) -> Holder | None:
    """Who fetches *mailbox* right now, if anyone (for ``helpdesk status``)."""
    if app.engine.dialect.name == "postgresql":
        return AdvisoryLock.holder(app, mailbox)
    return FileLock.holder(_lock_path(app, mailbox))


# -- PostgreSQL ----------------------------------------------------------------------
def _advisory_key(mailbox: str) -> int:
    """A signed 64-bit key from the mailbox name (another helpdesk or application on the
    same database would need the same 64 bits to collide)."""
    digest = hashlib.blake2b(f"helpdesk mailbox {mailbox}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class AdvisoryLock:
    #: libpq: probe an idle lock connection after 10 s, 3 probes 5 s apart.
    KEEPALIVES = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5,
                  "keepalives_count": 3}

    def __init__(self, app: App, mailbox: str) -> None:
        self._engine = create_engine(app.engine.url, poolclass=NullPool,
                                     isolation_level="AUTOCOMMIT",
                                     connect_args={**self.KEEPALIVES,
                                                   "application_name": "helpdesk standby"})
        self._key = _advisory_key(mailbox)
        self._connection: Connection | None = None
        self._held = False

    def acquire(self) -> bool:
        if self._held:
            return self.held()
        try:
            if self._connection is None:
                self._connection = self._engine.connect()
            if not self._connection.scalar(text("SELECT pg_try_advisory_lock(:key)"),
                                           {"key": self._key}):
                return False
            self._connection.execute(text("SELECT set_config('application_name', :name, false)"),
                                     {"name": _label()})
        except SQLAlchemyError:
            self._drop()
            raise
        self._held = True
        return True

    def held(self) -> bool:
        if not self._held or self._connection is None:
            return False
        try:
            self._connection.execute(text("SELECT 1"))
        except SQLAlchemyError:
            self._drop()  # the session is gone, and the lock with it
            return False
        return True

    def release(self) -> None:
        if self._held and self._connection is not None:
            try:
                self._connection.execute(text("SELECT pg_advisory_unlock(:key)"),
                                         {"key": self._key})
            except SQLAlchemyError:
                pass  # closing the connection below releases it anyway
        self._drop()
        self._engine.dispose()

    def _drop(self) -> None:
        self._held = False
        if self._connection is not None:
            try:
                self._connection.close()
            except SQLAlchemyError:
                pass
            self._connection = None

    @staticmethod
    def holder(app: App, mailbox: str) -> Holder | None:
        key = _advisory_key(mailbox)
        with app.engine.connect() as connection:
            name = connection.scalar(text(
                "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
                " WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1"
                " AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
                " AND l.classid::bigint = :high AND l.objid::bigint = :low"),
                {"high": (key >> 32) & 0xFFFFFFFF, "low": key & 0xFFFFFFFF})
        return _parse_holder(name) if name is not None else None


# -- SQLite --------------------------------------------------------------------------
def _lock_path(app: App, mailbox: str) -> Path:
    database = app.engine.url.database
    if not database or database == ":memory:":
        raise ValueError("several processes cannot share an in-memory database: no lock to take")
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", mailbox)
    if safe != mailbox:  # keep names that differ only in such characters apart
        safe += "." + hashlib.sha256(mailbox.encode()).hexdigest()[:8]
    return Path(f"{database}-mailbox-{safe}.lock")


class FileLock:
    def __init__(self, path: Path) -> None:
        self._path = path
        self._fd: int | None = None

    def acquire(self) -> bool:
        if self._fd is not None:
            return True
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{_label()}\n".encode(), 0)
        self._fd = fd
        return True

    def held(self) -> bool:
        return self._fd is not None  # an flock lasts as long as the process

    def release(self) -> None:
        # The file stays: deleting it while another process waits to lock it would let
        # a third lock a new file of the same name next to it.
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.close(self._fd)
            self._fd = None

    @staticmethod
    def holder(path: Path) -> Holder | None:
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return _parse_holder(os.pread(fd, 200, 0).decode(errors="replace").strip())
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)


def _parse_holder(label: str) -> Holder:
    m = _APPLICATION_NAME.match(label)
    if not m:
        return Holder(label or "unknown", None)
    return Holder(m["who"], datetime.strptime(m["since"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC))
