"""Engine, sessions and schema migrations (Alembic).

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
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


class SchemaOutOfDate(Exception):
    pass


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        if url.startswith("sqlite:///") and not url.endswith(":memory:"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin_immediate)
        return engine
    return create_engine(url, pool_pre_ping=True)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets readers (status, cases list) run while the daemon writes.
    dbapi_connection.isolation_level = None  # we issue BEGIN ourselves, below
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def _sqlite_begin_immediate(connection: Any) -> None:
    # Take the write lock up front: two writers then queue instead of failing
    # half-way with "database is locked" when a read lock cannot be upgraded.
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def make_sessions(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


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
    with engine.connect() as connection:
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
