"""A real Dovecot IMAP server for tests (a pytest plugin, see tests/conftest.py).

One Dovecot process serves the whole session; every test gets a fresh account
(user, password, empty mailbox), so tests cannot see each other's mail and
nothing has to be cleaned up. Accounts are lines in a passwd-file that Dovecot
re-reads (at most once a second, so they are written ahead in blocks).

The server listens on two loopback ports: ``imap`` (plain, STARTTLS offered) and
``imaps`` (implicit TLS) with a certificate from a throwaway trustme CA.

Fixtures:

``dovecot``
    a ``DovecotAccount`` on the plain port (``security: none``).
``dovecot_tls``
    a ``DovecotAccount`` on the imaps port (``security: ssl``) with ``ca_file``.
``dovecot_server``
    the session's ``DovecotServer``: ``new_account(tls=False)``, ``stop()`` (SIGTERM:
    clients get a BYE), ``kill()`` (SIGKILL: connections just drop), ``start()``
    (again, same ports, same mail), ``log`` (the server's log text).
``dovecot_factory``
    ``dovecot_factory(**settings) -> DovecotServer``: a server with extra
    dovecot.conf settings, e.g. ``imap_capability="IMAP4rev1 LITERAL+"`` for a
    server without MOVE, UIDPLUS and IDLE; one per distinct settings, shared by
    the session (take a ``new_account()``), stopped at its end.

Without a ``dovecot`` binary the fixtures skip, or fail when ``CI=true``
(``HELPDESK_TEST_DOVECOT=/path/to/dovecot`` picks another binary).
Tests that use a Dovecot fixture get the ``imap`` marker automatically.
"""
from __future__ import annotations

import contextlib
import ctypes
import grp
import itertools
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trustme
from imapclient import IMAPClient

DOVECOT_FIXTURES = frozenset({"dovecot", "dovecot_tls", "dovecot_server", "dovecot_factory"})
START_TIMEOUT = 15.0
ACCOUNT_BLOCK = 300

_CONF = """\
# Written by tests/servers/dovecot.py for one test session.
protocols = imap
listen = 127.0.0.1
base_dir = {dir}/run
state_dir = {dir}/state
instance_name = helpdesk-test-{port}
log_path = {dir}/dovecot.log
info_log_path = {dir}/dovecot.log
ssl = yes
ssl_cert = <{dir}/server.pem
ssl_key = <{dir}/server.key
ssl_min_protocol = TLSv1.2
disable_plaintext_auth = no
auth_mechanisms = plain login xoauth2
auth_failure_delay = 0
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {dir}/passwd
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={dir}/home/%u
}}
mail_location = maildir:~/Maildir
mail_fsync = never
mail_max_userip_connections = 200
default_internal_user = {user}
default_login_user = {user}
first_valid_uid = 1
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {tls_port}
    ssl = yes
  }}
}}
{extra}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def dovecot_binary() -> str | None:
    """``$HELPDESK_TEST_DOVECOT`` if set, else ``dovecot`` on PATH or in an sbin."""
    if (override := os.environ.get("HELPDESK_TEST_DOVECOT")) is not None:
        return shutil.which(override)
    return shutil.which("dovecot") or shutil.which("dovecot", path="/usr/sbin:/usr/local/sbin")


def _require_dovecot() -> str:
    binary = dovecot_binary()
    if binary:
        return binary
    message = "dovecot is not installed (apt-get install dovecot-imapd); IMAP tests need it"
    if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
        pytest.fail(f"CI=true: {message}", pytrace=False)
    pytest.skip(message)


def _die_with_parent() -> None:
    """In the child: SIGKILL when pytest dies (even SIGKILLed), so no Dovecot outlives
    its session; Dovecot's children exit by themselves once their master is gone."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG (Linux)
    except (OSError, AttributeError):
        pass


def _mail_user() -> tuple[str, int, int]:
    """Who owns the mail files: Dovecot's userdb may not return uid 0."""
    if os.geteuid() != 0:
        entry = pwd.getpwuid(os.geteuid())
        return entry.pw_name, entry.pw_uid, os.getegid()
    entry = pwd.getpwnam("nobody")
    try:
        gid = grp.getgrnam("nogroup").gr_gid
    except KeyError:
        gid = entry.pw_gid
    return entry.pw_name, entry.pw_uid, gid


@dataclass
class DovecotServer:
    """One ``dovecot -F`` process (and its children, in their own process group)."""

    binary: str
    dir: Path
    ca_file: Path
    extra: dict[str, str] = field(default_factory=dict)
    host: str = "127.0.0.1"
    port: int = field(default_factory=free_port)
    tls_port: int = field(default_factory=free_port)
    _proc: subprocess.Popen[bytes] | None = None
    _users: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _spare: list[tuple[str, str]] = field(default_factory=list)

    @classmethod
    def create(cls, binary: str, base: Path, extra: dict[str, str] | None = None) -> DovecotServer:
        """Config, certificate and passwd-file in *base* (whose parents must be
        traversable by ``nobody`` when we are root); ``start()`` runs it."""
        base.mkdir(mode=0o755, parents=True, exist_ok=True)
        base.chmod(0o755)  # the auth process may run as nobody: 0700 breaks it
        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1", "localhost")
        ca_file = base / "ca.pem"
        ca.cert_pem.write_to_path(str(ca_file))
        cert.private_key_pem.write_to_path(str(base / "server.key"))
        (base / "server.pem").write_bytes(b"".join(p.bytes() for p in cert.cert_chain_pems))
        server = cls(binary=binary, dir=base, ca_file=ca_file, extra=dict(extra or {}))
        server._write_config()
        server._add_accounts(ACCOUNT_BLOCK)  # before Dovecot first reads the file
        return server

    @property
    def conf(self) -> Path:
        return self.dir / "dovecot.conf"

    @property
    def log(self) -> str:
        path = self.dir / "dovecot.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def _write_config(self) -> None:
        user, uid, gid = _mail_user()
        for sub in ("run", "state", "home"):
            (self.dir / sub).mkdir(mode=0o755, exist_ok=True)
        if os.geteuid() == 0:
            os.chown(self.dir / "home", uid, gid)
        (self.dir / "passwd").touch(mode=0o644)
        extra = "\n".join(f"{key} = {value}" for key, value in self.extra.items())
        self.conf.write_text(_CONF.format(
            dir=self.dir, port=self.port, tls_port=self.tls_port, user=user, uid=uid, gid=gid,
            extra=extra))
        self.conf.chmod(0o644)

    # -- process -------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Start (again) on the same ports; returns when the greeting arrives."""
        if self.running:
            return
        with open(self.dir / "dovecot.out", "ab") as out:  # the child keeps its own copy
            self._proc = subprocess.Popen(
                [self.binary, "-F", "-c", str(self.conf)], start_new_session=True,
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent)
        deadline = time.monotonic() + START_TIMEOUT
        while not (self._greets(self.port) and self._accepts(self.tls_port)):
            if self._proc.poll() is not None:
                self._reap()
                raise RuntimeError(f"dovecot exited at start:\n{self._output()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"dovecot did not listen within {START_TIMEOUT}s:\n"
                                   f"{self._output()}")
            time.sleep(0.05)

    def _output(self) -> str:
        out = (self.dir / "dovecot.out").read_text(errors="replace")
        return f"{out[-2000:]}\n{self.log[-2000:]}"

    def stop(self) -> None:
        """Stop the master and every child (the whole process group)."""
        if self._proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._proc.pid, signal.SIGTERM)
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._proc.pid, signal.SIGKILL)  # children that outlived the master
        self._reap()

    def kill(self) -> None:
        """SIGKILL the master and every child: connections drop without a BYE."""
        if self._proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._proc.pid, signal.SIGKILL)
        self._reap()

    def _reap(self) -> None:
        if self._proc is None:
            return
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(timeout=10)
        self._proc = None

    def _greets(self, port: int) -> bool:
        try:
            with socket.create_connection((self.host, port), timeout=1) as sock:
                return sock.recv(64).startswith(b"* OK")
        except OSError:
            return False

    def _accepts(self, port: int) -> bool:
        try:
            with socket.create_connection((self.host, port), timeout=1):
                return True
        except OSError:
            return False

    # -- accounts ------------------------------------------------------------
    def new_account(self, *, tls: bool = False) -> DovecotAccount:
        """A fresh user with an empty mailbox.

        Dovecot re-reads the passwd-file at most once a second, so accounts are
        written ahead in blocks; a new block is waited for until it can log in.
        """
        if not self._spare:
            self._add_accounts(ACCOUNT_BLOCK)
            if self.running:
                self._wait_for_login(*self._spare[-1])
        user, password = self._spare.pop(0)
        return DovecotAccount(server=self, user=user, password=password, tls=tls)

    def _add_accounts(self, count: int) -> None:
        block = [(f"user{next(self._users)}-{secrets.token_hex(3)}", secrets.token_urlsafe(12))
                 for _ in range(count)]
        with open(self.dir / "passwd", "a", encoding="utf-8") as f:
            f.writelines(f"{user}:{{PLAIN}}{password}::::::\n" for user, password in block)
        self._spare.extend(block)

    def _wait_for_login(self, user: str, password: str) -> None:
        deadline = time.monotonic() + 5
        while True:
            with IMAPClient(self.host, self.port, ssl=False, timeout=5) as client:
                try:
                    client.login(user, password)
                    return
                except IMAPClient.Error:
                    if time.monotonic() > deadline:
                        raise
            time.sleep(0.2)


@dataclass
class DovecotAccount:
    """What a test needs: where to connect, as whom, and helpers to look inside."""

    server: DovecotServer
    user: str
    password: str
    tls: bool = False

    @property
    def host(self) -> str:
        return self.server.host

    @property
    def port(self) -> int:
        return self.server.tls_port if self.tls else self.server.port

    @property
    def ca_file(self) -> Path:
        return self.server.ca_file

    @property
    def security(self) -> str:
        return "ssl" if self.tls else "none"

    def mailbox_config(self, **overrides: Any) -> dict[str, Any]:
        """An ``inbound.imap`` entry for helpdesk.yaml / ``ImapMailbox(**...)``."""
        config: dict[str, Any] = {
            "host": self.host, "port": self.port, "security": self.security,
            "username": self.user, "password": self.password, "timeout": "5s",
        }
        if self.tls:
            config["ca_file"] = str(self.ca_file)
        config.update(overrides)
        return config

    def stop(self) -> None:
        self.server.stop()

    def start(self) -> None:
        self.server.start()

    def kill(self) -> None:
        self.server.kill()

    # -- looking inside (always over the plain port, as the same user) --------
    @contextlib.contextmanager
    def client(self) -> Iterator[IMAPClient]:
        with IMAPClient(self.host, self.server.port, ssl=False, timeout=10) as client:
            client.login(self.user, self.password)
            yield client

    def append(self, raw: bytes, folder: str = "INBOX", flags: tuple[bytes, ...] = ()) -> None:
        self.append_many([raw], folder, flags)

    def append_many(self, raws: list[bytes], folder: str = "INBOX",
                    flags: tuple[bytes, ...] = ()) -> None:
        with self.client() as client:
            if not client.folder_exists(folder):
                client.create_folder(folder)
            for raw in raws:
                client.append(folder, raw, flags)

    def count(self, folder: str = "INBOX") -> int:
        """Messages in *folder*; 0 when the folder does not exist."""
        with self.client() as client:
            if not client.folder_exists(folder):
                return 0
            return int(client.folder_status(folder, [b"MESSAGES"])[b"MESSAGES"])

    def messages(self, folder: str = "INBOX") -> list[bytes]:
        """The raw messages in *folder*, in UID order."""
        with self.client() as client:
            if not client.folder_exists(folder):
                return []
            client.select_folder(folder, readonly=True)
            uids = client.search("ALL")
            data = client.fetch(uids, ["BODY.PEEK[]"]) if uids else {}
            return [data[uid][b"BODY[]"] for uid in sorted(data)]

    def flags(self, folder: str = "INBOX") -> dict[int, tuple[bytes, ...]]:
        with self.client() as client:
            client.select_folder(folder, readonly=True)
            uids = client.search("ALL")
            data = client.fetch(uids, ["FLAGS"]) if uids else {}
            return {uid: tuple(item[b"FLAGS"]) for uid, item in data.items()}

    def uidvalidity(self, folder: str = "INBOX") -> int:
        with self.client() as client:
            return int(client.folder_status(folder, [b"UIDVALIDITY"])[b"UIDVALIDITY"])

    def folders(self) -> list[str]:
        with self.client() as client:
            return sorted(name for _flags, _sep, name in client.list_folders())

    def create_folder(self, folder: str) -> None:
        with self.client() as client:
            client.create_folder(folder)

    def delete_folder(self, folder: str) -> None:
        with self.client() as client:
            client.delete_folder(folder)


# -- fixtures ------------------------------------------------------------------
class _Servers:
    """The session's servers, one per distinct set of extra settings."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.started: dict[tuple[tuple[str, str], ...], DovecotServer] = {}

    def make(self, **extra: str) -> DovecotServer:
        key = tuple(sorted(extra.items()))
        if key not in self.started:
            binary = _require_dovecot()
            self.started[key] = DovecotServer.create(
                binary, self.base / f"dovecot{len(self.started)}", extra)
        server = self.started[key]
        server.start()  # a test before may have stopped it
        return server

    def stop_all(self) -> None:
        for server in self.started.values():
            server.stop()


@pytest.fixture(scope="session")
def _dovecot_servers() -> Iterator[_Servers]:
    # Not tmp_path_factory: concurrent pytest runs prune each other's basetemp, and
    # Dovecot's auth process (nobody, when we are root) must traverse the path.
    base = Path(tempfile.mkdtemp(prefix="helpdesk-dovecot-"))
    base.chmod(0o755)
    servers = _Servers(base)
    try:
        yield servers
    finally:
        servers.stop_all()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def _dovecot_session_server(_dovecot_servers: _Servers) -> DovecotServer:
    return _dovecot_servers.make()


@pytest.fixture
def dovecot_server(_dovecot_session_server: DovecotServer) -> DovecotServer:
    """The session's server, running (a test before may have stopped it)."""
    _dovecot_session_server.start()
    return _dovecot_session_server


@pytest.fixture
def dovecot(dovecot_server: DovecotServer) -> DovecotAccount:
    """A fresh account on the plain (``security: none``) port."""
    return dovecot_server.new_account()


@pytest.fixture
def dovecot_tls(dovecot_server: DovecotServer) -> DovecotAccount:
    """A fresh account on the imaps port; trust ``dovecot_tls.ca_file``."""
    return dovecot_server.new_account(tls=True)


@pytest.fixture
def dovecot_factory(_dovecot_servers: _Servers) -> Any:
    """``dovecot_factory(**conf_settings) -> DovecotServer``, e.g. without MOVE."""
    return _dovecot_servers.make


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if DOVECOT_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.imap)
