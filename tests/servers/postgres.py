"""A real PostgreSQL server for the tests, started in a temp dir on a loopback port.

The production database may be PostgreSQL, so the pipeline's tests run on it too
(nothing SQLite-only may hide in the models or queries). ``postgres_url`` is a fresh
database on the session's server; ``private_postgres`` a server of the test's own,
which it may stop and start (a database that is down). With CI=true a missing
server fails the run; elsewhere the PostgreSQL tests skip with the reason.
"""
from __future__ import annotations

import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
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


_numbers = itertools.count(1)


class PostgresServer:
    """One PostgreSQL server in its own folder on a loopback port; ``stop()`` and
    ``start()`` bring it down and back on the same port (a database that is down)."""

    def __init__(self) -> None:
        initdb, pg_ctl = _binary("initdb"), _binary("pg_ctl")
        if not initdb or not pg_ctl:
            _unavailable("PostgreSQL server binaries (initdb, pg_ctl) not found")
        self.user = _as_user()
        # Not under pytest's base temp: the server runs as `postgres`, and every pytest
        # session started as root (another checkout's too) makes /tmp/pytest-of-root 0700.
        base = Path(tempfile.mkdtemp(prefix="helpdesk-test-postgres-"))
        base.chmod(0o777)
        self.base, self.data, self.pg_ctl = base, base / "data", str(pg_ctl)
        subprocess.run([*self.user, str(initdb), "-D", str(self.data), "-A", "trust", "-U",
                        "postgres", "--no-sync"], check=True, capture_output=True)
        self.port = free_port()
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}"

    def start(self) -> None:
        options = f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 -c fsync=off"
        started = subprocess.run([*self.user, self.pg_ctl, "-D", str(self.data), "-o", options,
                                  "-l", str(self.base / "log"), "-w", "start"],
                                 capture_output=True, text=True)
        if started.returncode != 0:
            raise RuntimeError(f"pg_ctl start failed: {started.stdout}{started.stderr}")

    def stop(self) -> None:
        subprocess.run([*self.user, self.pg_ctl, "-D", str(self.data), "-m", "immediate",
                        "-w", "stop"], capture_output=True)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)

    def create_database(self) -> str:
        """A fresh, empty database on this server; its URL."""
        name = f"helpdesk_test_{next(_numbers)}"
        admin = create_engine(f"{self.url}/postgres", isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.execute(text(f"CREATE DATABASE {name}"))
        admin.dispose()
        return f"{self.url}/{name}"


def _running() -> Iterator[PostgresServer]:
    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.remove()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    yield from _running()


@pytest.fixture
def private_postgres() -> Iterator[PostgresServer]:
    """A server of the test's own, started, which the test may stop and start."""
    yield from _running()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """A fresh, empty database on the session's server."""
    return postgres_server.create_database()
