"""A real PostgreSQL server for the tests, started in a temp dir on a loopback port.

The production database may be PostgreSQL, so the pipeline's tests run on it too
(nothing SQLite-only may hide in the models or queries). With CI=true a missing
server fails the run; elsewhere the PostgreSQL tests skip with the reason.
"""
from __future__ import annotations

import itertools
import os
import pwd
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from tests.servers.smtp import free_port

_BIN_DIRS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)


def _binary(name: str) -> str | None:
    for folder in _BIN_DIRS:
        if (folder / name).exists():
            return str(folder / name)
    return shutil.which(name)


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"PostgreSQL is required under CI=true: {reason}")
    pytest.skip(reason)


def _as_user() -> list[str]:
    """PostgreSQL refuses to run as root: run it as the `postgres` system user."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        _unavailable("running as root and there is no `postgres` user to run the server")
    return ["runuser", "-u", "postgres", "--"]


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    initdb, pg_ctl = _binary("initdb"), _binary("pg_ctl")
    if not initdb or not pg_ctl:
        _unavailable("PostgreSQL server binaries (initdb, pg_ctl) not found")
    base = tmp_path_factory.mktemp("postgres")
    base.chmod(0o777)  # the server runs as `postgres`, the temp base belongs to root
    for parent in base.parents:
        if str(parent).startswith("/tmp/pytest-of-"):
            parent.chmod(0o755)
    data = base / "data"
    user = _as_user()
    subprocess.run([*user, initdb, "-D", str(data), "-A", "trust", "-U", "postgres",
                    "--no-sync"], check=True, capture_output=True)
    port = free_port()
    options = f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off"
    subprocess.run([*user, pg_ctl, "-D", str(data), "-o", options, "-l", str(base / "log"),
                    "-w", "start"], check=True, capture_output=True)
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}"
    finally:
        subprocess.run([*user, pg_ctl, "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True)


_numbers = itertools.count(1)


@pytest.fixture
def postgres_url(postgres_server: str) -> str:
    """A fresh, empty database on the session's server."""
    name = f"helpdesk_test_{next(_numbers)}"
    admin = create_engine(f"{postgres_server}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f"CREATE DATABASE {name}"))
    admin.dispose()
    return f"{postgres_server}/{name}"
