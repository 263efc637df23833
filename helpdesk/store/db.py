"""Engine, sessions and schema migrations (Alembic).

Two kinds of session: ``make_sessions`` for work that writes (on SQLite each
transaction takes the write lock up front), ``make_read_sessions`` for work that
only reads (``cases list``, ``status``...), which never waits for that lock nor
holds it. ``lock_timeout`` bounds every wait for a lock (or, on PostgreSQL, for a
connection): past it the operation fails with ``OperationalError``, which
``is_storage_trouble`` calls temporary, so the mail waits at its sender instead of
a process hanging.

The daemon refuses to start on an out-of-date schema: ``check_schema`` says what
to run instead of letting a missing column surface later as a confusing error.

Every command runs that check, so it must be cheap: it reads the ``alembic_version``
row with one SELECT and finds the head revision by reading the ``revision`` /
``down_revision`` lines of the migration files, without importing Alembic (about
70 ms of imports, plus loading every migration module). Only ``db upgrade`` loads
Alembic. A test keeps ``head_revision`` in step with Alembic's own answer.
"""
from __future__ import annotations

import ast
import errno
import os
import re
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


class SchemaOutOfDate(Exception):
    pass


DEFAULT_LOCK_TIMEOUT = timedelta(seconds=30)
_READ_ONLY = "helpdesk_read_only"  # an execution option: this session only reads


def make_engine(url: str, lock_timeout: timedelta = DEFAULT_LOCK_TIMEOUT) -> Engine:
    seconds = lock_timeout.total_seconds()
    if url.startswith("sqlite"):
        if url.startswith("sqlite:///") and not url.endswith(":memory:"):
            create_private_file(Path(url.removeprefix("sqlite:///")))
        engine = create_engine(url, connect_args={"timeout": seconds})
        event.listen(engine, "connect", _sqlite_pragmas(int(seconds * 1000)))
        event.listen(engine, "begin", _sqlite_begin(int(seconds * 1000)))
        return engine
    milliseconds = int(seconds * 1000)
    return create_engine(url, pool_pre_ping=True, connect_args={
        "connect_timeout": max(2, int(seconds)), "options": f"-c lock_timeout={milliseconds}"})


def create_private_file(path: Path) -> None:
    """Create the SQLite file readable by its owner only (and its folder, when we make
    it). SQLite gives the -wal and -shm files the mode of the database file."""
    if path.exists():
        return
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        pass  # another process made it first


def _sqlite_pragmas(busy_ms: int) -> Any:
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        # WAL lets readers (status, cases list) run while the daemon writes.
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves, below
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={busy_ms}")
        cursor.close()
    return on_connect


def _sqlite_begin(busy_ms: int) -> Any:
    def on_begin(connection: Any) -> None:
        if connection.get_execution_options().get(_READ_ONLY):
            # A read transaction: in WAL mode it sees a snapshot and takes no lock.
            connection.exec_driver_sql("BEGIN")
        else:
            # Take the write lock up front: two writers then queue instead of failing
            # half-way with "database is locked" when a read lock cannot be upgraded.
            _begin_immediate(connection.connection.driver_connection, busy_ms)
    return on_begin


# SQLite's own busy handler sleeps 1, 2, 5, 10, 15, 20, 25 ... 100 ms between tries for
# the lock. Against another process's stream of write transactions with short gaps
# between them (a fetch deciding mail after mail), such a writer gets the lock late,
# or hardly ever: the outbox sender recorded ~40 mails a second beside a fetch. So a
# writer first tries often (sleeps from 0.2 to 1 ms) for a short while, then waits
# as SQLite does, up to the lock timeout.
_POLL_FOR = 0.5  # seconds
_POLL_SLEEPS = (0.0002, 0.001)  # the first and the longest sleep between tries


def _begin_immediate(dbapi_connection: sqlite3.Connection, busy_ms: int) -> None:
    deadline = time.monotonic() + _POLL_FOR
    sleep, longest = _POLL_SLEEPS
    dbapi_connection.execute("PRAGMA busy_timeout=0")
    try:
        while True:
            try:
                dbapi_connection.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                busy = exc.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY  # or one of its kinds
                if not busy or time.monotonic() > deadline:
                    break
            time.sleep(sleep)
            sleep = min(2 * sleep, longest)
    finally:
        dbapi_connection.execute(f"PRAGMA busy_timeout={busy_ms}")
    dbapi_connection.execute("BEGIN IMMEDIATE")  # SQLite's own wait; its error if it fails


def make_sessions(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def make_read_sessions(engine: Engine) -> sessionmaker[Session]:
    """Sessions for work that only reads: on SQLite they never take the write lock,
    so ``cases list`` or ``status`` neither waits for the daemon nor holds it up."""
    return sessionmaker(read_only(engine), expire_on_commit=False)


def read_only(engine: Engine) -> Engine:
    """``engine`` for work that only reads (``make_read_sessions``), as Core connections."""
    return engine.execution_options(**{_READ_ONLY: True})


@contextmanager
def orm_session(connection: Connection) -> Iterator[Session]:
    """An ORM session inside ``connection``'s transaction, for the rare steps of the Core
    hot path that work on ORM objects (a due closure, the answer to ``#cases``). It
    neither commits nor rolls back that transaction; what it holds is flushed at the end."""
    session = Session(bind=connection, join_transaction_mode="rollback_only")
    try:
        yield session
        session.flush()
    finally:
        session.close()


#: errno values of a full disk or quota: writing may work again later.
_DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})


def is_storage_trouble(exc: BaseException) -> bool:
    """Whether *exc* means the database (or the disk under it) could not take a write
    just now, for a reason that may pass: unreachable, locked past ``lock_timeout``,
    full. The caller keeps the work and tries again later."""
    if isinstance(exc, sa_exc.OperationalError | sa_exc.TimeoutError | sa_exc.DisconnectionError
                  | sqlite3.OperationalError):  # the last: from a blob handle, unwrapped
        return True
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return True  # the connection broke (whatever the driver calls it)
    return isinstance(exc, OSError) and exc.errno in _DISK_FULL


def _alembic_config(engine: Engine) -> AlembicConfig:
    from alembic.config import Config as AlembicConfig
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["engine"] = engine
    return cfg


def upgrade(engine: Engine) -> None:
    from alembic import command
    command.upgrade(_alembic_config(engine), "head")


# A migration file names itself and its parent(s) in two module-level assignments.
_ASSIGNMENT = re.compile(r"^(revision|down_revision)\s*(?::[^=]*)?=\s*(.+?)\s*$", re.MULTILINE)


def _revision_graph() -> dict[str, tuple[str, ...]]:
    """Each revision of ``migrations/versions`` -> its parents (Alembic's file format)."""
    graph: dict[str, tuple[str, ...]] = {}
    for path in sorted((MIGRATIONS / "versions").glob("*.py")):
        values = {name: ast.literal_eval(value)
                  for name, value in _ASSIGNMENT.findall(path.read_text(encoding="utf-8"))}
        if "revision" not in values:
            continue
        parents = values.get("down_revision")
        graph[values["revision"]] = (() if parents is None else
                                     (parents,) if isinstance(parents, str) else tuple(parents))
    return graph


def head_revision() -> str | None:
    """The revision no other revision builds on (what ``db upgrade`` leads to)."""
    graph = _revision_graph()
    parents = {parent for revision_parents in graph.values() for parent in revision_parents}
    heads = sorted(set(graph) - parents)
    if len(heads) > 1:
        raise RuntimeError(f"the migrations have several heads: {', '.join(heads)}")
    return heads[0] if heads else None


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at (the ``alembic_version`` row), None when it has none."""
    with engine.execution_options(**{_READ_ONLY: True}).connect() as connection:
        try:
            rows = connection.execute(text("SELECT version_num FROM alembic_version")).all()
        except DBAPIError as exc:
            if _is_missing_table(exc):
                return None
            raise
    return ",".join(sorted(row[0] for row in rows)) or None  # several rows: branches


def _is_missing_table(exc: DBAPIError) -> bool:
    # SQLite: "no such table"; PostgreSQL: SQLSTATE 42P01 (undefined_table).
    return ("no such table" in str(exc.orig)
            or getattr(exc.orig, "sqlstate", None) == "42P01")


def check_schema(engine: Engine) -> None:
    current, head = current_revision(engine), head_revision()
    if current != head:
        state = "has no schema yet" if current is None else f"is at revision {current}"
        raise SchemaOutOfDate(
            f"the database {state}, the code needs {head}: run `helpdesk db upgrade`")
