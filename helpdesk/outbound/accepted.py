"""The senders' own record of mail the server accepted, on SQLite: a file beside the
database that nobody else writes.

SQLite has one write lock per database, and a fetch holds it while it writes each group
of mail. A sender that recorded every accepted mail in the database waited for that
lock (6.2 s of a 13 s fetch of 5,000 messages, bench/README.md), and the window
between the server's 250 and our record, the one honest duplicate, waited with it.
So on SQLite a sender records the common outcome (every recipient accepted, the claim
still ours) here, at once, and ``outbound.sender`` folds these records into the outbox
a pass at a time, under the database's write lock it takes anyway to claim a batch.
The file is ``<database>-sent``, next to SQLite's own ``-wal`` and ``-shm``: back it up
with them. PostgreSQL needs none of this: there a record waits only for its own row.

Why no mail goes out twice because of it:

- ``add`` writes a record only while its claim holds, checked under this file's write
  lock; a fold reads the records under the same lock and keeps it until the database
  committed what it applied (``fold_begin`` / ``fold_end``). So a claim, which folds
  first, either sees a record or comes after the record's claim ran out, and then the
  record is refused and the mail recorded in the database instead, as before.
- A record is committed (WAL, ``synchronous=FULL``: it survives a crash and a power
  cut) before the next mail is sent, as the database record was; it is removed only
  after the fold that applied it committed, and a record applied twice (a crash
  between the two) changes nothing the second time.
- A log that cannot be written (locked, a full disk) stops the claims too, since they
  take its lock: the mail in hand is recorded in the database, and nothing new is sent.
  A fold waits for the log's lock only briefly while it holds the database's
  (``FOLD_WAIT``); past that it lets the database go, so a stuck log never stops a
  fetch.

The file belongs to the database file's owner (a command run as root beside a daemon
run as a service user), and is closed before a fork (a child must not inherit an
open SQLite file).
"""
from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import Engine

from helpdesk.outbound.outbox import Accepted
from helpdesk.store.db import create_private_file

_SCHEMA = """CREATE TABLE IF NOT EXISTS accepted (
    outbox_id INTEGER NOT NULL,
    claimed_until TEXT NOT NULL,
    sent_at TEXT NOT NULL,
    forget INTEGER NOT NULL,
    PRIMARY KEY (outbox_id, claimed_until))"""
# Only senders write the file, a row or a fold at a time: a wait is short.
LOCK_TIMEOUT = timedelta(seconds=30)
# How long a fold, which holds the database's write lock, waits for the log's.
FOLD_WAIT = timedelta(milliseconds=200)


class AcceptedLog:
    """``add`` a mail the server accepted; ``fold_begin`` / ``fold_end`` around the
    database transaction that applies them."""

    def __init__(self, database: Path) -> None:
        self.database = database
        self.path = database.with_name(database.name + "-sent")
        self.unfolded = False  # this process added records no fold has taken yet
        self._conn: sqlite3.Connection | None = None
        self._pid = 0

    def add(self, accepted: Accepted, now: Callable[[], datetime]) -> bool:
        """Record it, durably, if its claim still holds as of ``now()`` under the lock;
        False when it does not (the caller records it in the database)."""
        conn = self._locked()
        try:
            if now() >= accepted.claimed_until:
                conn.execute("ROLLBACK")
                return False
            conn.execute("INSERT INTO accepted VALUES (?, ?, ?, ?)", (
                accepted.outbox_id, accepted.claimed_until.isoformat(),
                accepted.sent_at.isoformat(), int(accepted.forget)))
            conn.execute("COMMIT")
        except BaseException:
            _rollback(conn)
            raise
        self.unfolded = True
        return True

    def fold_begin(self) -> list[Accepted] | None:
        """The records, with the log locked until ``fold_end`` or ``fold_abort``: call
        it inside the database's write transaction that applies them. None when the
        log stays busy past ``FOLD_WAIT``: the caller lets go of the database's lock
        (nobody waits on it for this log), ``wait_free``, and tries again."""
        conn = self._connection()
        conn.execute(f"PRAGMA busy_timeout={int(FOLD_WAIT.total_seconds() * 1000)}")
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY:
                raise
            return None
        finally:
            conn.execute(f"PRAGMA busy_timeout={int(LOCK_TIMEOUT.total_seconds() * 1000)}")
        try:
            rows = conn.execute("SELECT outbox_id, claimed_until, sent_at, forget "
                                "FROM accepted ORDER BY outbox_id").fetchall()
        except BaseException:
            _rollback(conn)
            raise
        return [Accepted(oid, datetime.fromisoformat(until), datetime.fromisoformat(sent),
                         bool(forget)) for oid, until, sent, forget in rows]

    def wait_free(self) -> None:
        """Wait (up to ``LOCK_TIMEOUT``, then raise) until nobody writes the log."""
        conn = self._locked()
        conn.execute("ROLLBACK")

    def fold_end(self, applied: Sequence[Accepted]) -> None:
        """The database committed: forget what it applied, and unlock."""
        conn = self._connection()
        try:
            conn.executemany("DELETE FROM accepted WHERE outbox_id = ? AND claimed_until = ?",
                             [(a.outbox_id, a.claimed_until.isoformat()) for a in applied])
            conn.execute("COMMIT")
        finally:
            _rollback(conn)
        self.unfolded = False

    def fold_abort(self) -> None:
        """The database did not commit: keep every record, and unlock."""
        if self._conn is not None and self._pid == os.getpid():
            _rollback(self._conn)

    def _locked(self) -> sqlite3.Connection:
        conn = self._connection()
        conn.execute("BEGIN IMMEDIATE")
        return conn

    def _connection(self) -> sqlite3.Connection:
        # Opened in the process that uses it: the sending process is forked, and an
        # SQLite connection must not cross a fork (``_close_before_fork``).
        if self._conn is None or self._pid != os.getpid():
            _create_owned_like(self.path, self.database)
            conn = sqlite3.connect(self.path, timeout=LOCK_TIMEOUT.total_seconds(),
                                   isolation_level=None)  # we say BEGIN and COMMIT
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute(_SCHEMA)
            self._conn, self._pid = conn, os.getpid()
        return self._conn

    def close(self) -> None:
        if self._conn is not None and self._pid == os.getpid():
            self._conn.close()
        self._conn = None


def _rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        conn.execute("ROLLBACK")


def _real_path(database: str) -> Path:
    """The file SQLite really opens (a symbolic link to the database leads every
    sender to the same log)."""
    return Path(os.path.realpath(database))


def _create_owned_like(path: Path, database: Path) -> None:
    """Create the log readable by its owner only, and owned as the database is: a
    command run as root beside a daemon run as a service user must not leave a log
    that daemon cannot open (SQLite gives ``-wal`` and ``-shm`` the log's owner)."""
    if path.exists():
        return
    create_private_file(path)
    if os.geteuid() == 0:
        try:
            owner = database.stat()
            os.chown(path, owner.st_uid, owner.st_gid)
        except FileNotFoundError:
            pass


_OPEN = threading.local()  # per thread, the last log used: it sends to one database


def _sqlite_file(engine: Engine) -> str | None:
    url = engine.url
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    return url.database


def accepted_log(engine: Engine) -> AcceptedLog | None:
    """The log of ``engine``'s SQLite file, or None (PostgreSQL; SQLite in memory). Each
    thread has its own connection to it (an SQLite connection is one transaction)."""
    database = _sqlite_file(engine)
    if database is None:
        return None
    path = _real_path(database)
    last: AcceptedLog | None = getattr(_OPEN, "log", None)
    if last is None or last.database != path:
        if last is not None:
            last.close()
        last = _OPEN.log = AcceptedLog(path)
    return last


def _close_before_fork() -> None:
    """A forked child must not inherit an open SQLite file: its locks would not be its
    own, and closing the inherited handle would drop the parent's. The thread that
    forks closes its log first (it opens again when next used)."""
    last: AcceptedLog | None = getattr(_OPEN, "log", None)
    if last is not None:
        last.close()


os.register_at_fork(before=_close_before_fork)


def pending_ids(engine: Engine) -> set[int]:
    """The outbox rows recorded as accepted and not folded yet, read without a lock
    (``helpdesk status``: they are not waiting to go out). Empty when the log cannot
    be read: they are then counted as waiting, which they may be."""
    database = _sqlite_file(engine)
    if database is None:
        return set()
    path = AcceptedLog(_real_path(database)).path
    if not path.exists():
        return set()
    try:
        conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
    except sqlite3.Error:
        return set()
    try:
        return {oid for (oid,) in conn.execute("SELECT outbox_id FROM accepted")}
    except sqlite3.Error:  # no table yet, or not ours to read
        return set()
    finally:
        conn.close()
