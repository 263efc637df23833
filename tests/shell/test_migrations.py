"""The Alembic migrations build exactly the schema the models describe, on both
databases, and `db upgrade` is safe to run twice."""
from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from helpdesk.store import db
from helpdesk.store.orm import Base


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    if request.param == "postgresql":
        return request.getfixturevalue("postgres_url")
    return f"sqlite:///{tmp_path / 'schema.db'}"


def test_migrations_match_the_models_and_rerun_harmlessly(database_url):
    engine = db.make_engine(database_url)
    try:
        with pytest.raises(db.SchemaOutOfDate, match="helpdesk db upgrade"):
            db.check_schema(engine)
        db.upgrade(engine)
        db.upgrade(engine)
        db.check_schema(engine)
        with engine.connect() as connection:
            assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []
    finally:
        engine.dispose()


def test_the_schema_check_finds_the_head_alembic_finds(tmp_path):
    """`check_schema` reads the migration files itself rather than loading Alembic (it
    runs before every command); it must name the very revision `db upgrade` leads to."""
    from alembic.script import ScriptDirectory

    engine = db.make_engine(f"sqlite:///{tmp_path / 'head.db'}")
    try:
        assert db.head_revision() == ScriptDirectory.from_config(
            db._alembic_config(engine)).get_current_head()
        assert db.current_revision(engine) is None
        db.upgrade(engine)
        assert db.current_revision(engine) == db.head_revision()
    finally:
        engine.dispose()
