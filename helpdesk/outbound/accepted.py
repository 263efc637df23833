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

A record is committed (WAL, ``synchronous=FULL``: it survives a crash and a power cut)
before the next mail is sent, as the database record was; it is removed only after
the fold that applied it committed, and a record applied twice (a crash between the two,
or two senders folding at once) changes nothing the second time.
"""
from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import Engine

from helpdesk.outbound.outbox import Accepted
from helpdesk.store.db import create_private_file

_SCHEMA = """CREATE TABLE IF NOT EXISTS accepted (
    outbox_id INTEGER PRIMARY KEY,
    claimed_until TEXT NOT NULL,
    sent_at TEXT NOT NULL,
    forget INTEGER NOT NULL)"""
# Only senders write the file, each a row at a time: a wait is short.
LOCK_TIMEOUT = timedelta(seconds=30)


class AcceptedLog:
    """``add`` a mail the server accepted; ``pending`` and ``remove`` for the fold. Open
    for one pass of a sender (``open_for``), closed at its end."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def add(self, accepted: Accepted) -> None:
        """Record it, durably, before anything else is sent."""
        with self._conn:
            self._conn.execute("INSERT OR REPLACE INTO accepted VALUES (?, ?, ?, ?)", (
                accepted.outbox_id, accepted.claimed_until.isoformat(),
                accepted.sent_at.isoformat(), int(accepted.forget)))

    def pending(self) -> list[Accepted]:
        rows = self._conn.execute(
            "SELECT outbox_id, claimed_until, sent_at, forget FROM accepted ORDER BY outbox_id")
        return [Accepted(oid, datetime.fromisoformat(until), datetime.fromisoformat(sent),
                         bool(forget)) for oid, until, sent, forget in rows]

    def remove(self, applied: Sequence[Accepted]) -> None:
        """Forget records whose fold committed (a newer record of the same row stays)."""
        if applied:
            with self._conn:
                self._conn.executemany(
                    "DELETE FROM accepted WHERE outbox_id = ? AND sent_at = ?",
                    [(a.outbox_id, a.sent_at.isoformat()) for a in applied])


@contextmanager
def open_for(engine: Engine) -> Iterator[AcceptedLog | None]:
    """The log of ``engine``'s SQLite file, or None (PostgreSQL; SQLite in memory)."""
    url = engine.url
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        yield None
        return
    path = Path(url.database)
    path = path.with_name(path.name + "-sent")
    create_private_file(path)
    conn = sqlite3.connect(path, timeout=LOCK_TIMEOUT.total_seconds())
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute(_SCHEMA)
        yield AcceptedLog(conn)
    finally:
        conn.close()
