"""The real servers the benchmarks run against, reusing the test fixtures' code.

- Dovecot: ``tests.servers.dovecot.DovecotServer`` (config writing, start, stop,
  accounts), started outside pytest.
- The upstream MTA: ``tests.servers.smtp.MTAServer`` (aiosmtpd) with a handler that
  also notes *when* it accepted each mail, on the monotonic clock, which on Linux
  is the same clock in every process (the helpdesk runs in a subprocess).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imapclient import IMAPClient

from tests.servers.dovecot import DovecotAccount, DovecotServer, dovecot_binary
from tests.servers.smtp import MTAServer, RecordingMTA, free_port

_IN_REPLY_TO = re.compile(rb"^In-Reply-To:\s*<([^>\r\n]+)>", re.MULTILINE | re.IGNORECASE)


@dataclass(frozen=True)
class Ack:
    at: float  # time.monotonic() when the server answered 250 to DATA
    rcpt_tos: tuple[str, ...]
    in_reply_to: str | None


class TimingMTA(RecordingMTA):
    """Accepts everything, keeps only what the benchmarks need (no message bodies)."""

    def __init__(self) -> None:
        super().__init__()
        self.acks: list[Ack] = []
        self.changed = threading.Condition()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        content = bytes(envelope.original_content or b"")
        head = content.split(b"\r\n\r\n", 1)[0]
        m = _IN_REPLY_TO.search(head)
        ack = Ack(time.monotonic(), tuple(envelope.rcpt_tos), m[1].decode() if m else None)
        with self.changed:
            self.acks.append(ack)
            self.changed.notify_all()
        return "250 2.0.0 OK queued"

    def reset(self) -> None:
        with self.changed:
            self.acks.clear()

    def wait_for(self, predicate: Any, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self.changed:
            while not predicate(self.acks):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.changed.wait(left)
        return True


@contextmanager
def mta() -> Iterator[MTAServer]:
    server = MTAServer(TimingMTA(), free_port(), auth_require_tls=False)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def dovecot() -> Iterator[DovecotServer]:
    binary = dovecot_binary()
    if binary is None:
        raise SystemExit("bench: dovecot is not installed (apt-get install dovecot-imapd, "
                         "or `make system-deps` as root)")
    # Not under /root or a 0700 tmp: Dovecot's auth process may run as nobody.
    base = Path(tempfile.mkdtemp(prefix="helpdesk-bench-dovecot-"))
    base.chmod(0o755)
    server = DovecotServer.create(binary, base / "dovecot")
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


def append_all(account: DovecotAccount, raws: list[bytes], folder: str = "INBOX",
               chunk_bytes: int = 32 * 2**20, chunk_count: int = 500) -> float:
    """APPEND every message (MULTIAPPEND in chunks when offered); returns seconds."""
    started = time.perf_counter()
    with IMAPClient(account.host, account.server.port, ssl=False, timeout=120) as client:
        client.login(account.user, account.password)
        if not client.folder_exists(folder):
            client.create_folder(folder)
        if client.has_capability("MULTIAPPEND"):
            chunk: list[bytes] = []
            size = 0
            for raw in raws:
                chunk.append(raw)
                size += len(raw)
                if size >= chunk_bytes or len(chunk) >= chunk_count:
                    client.multiappend(folder, chunk)
                    chunk, size = [], 0
            if chunk:
                client.multiappend(folder, chunk)
        else:
            for raw in raws:
                client.append(folder, raw)
    return time.perf_counter() - started


def imap_config(account: DovecotAccount, **overrides: Any) -> dict[str, Any]:
    return account.mailbox_config(timeout="120s", **overrides)


@contextmanager
def postgres() -> Iterator[str]:
    """A PostgreSQL server in a temp dir on a loopback port (as the tests' fixture, but
    with fsync on: a production setting); yields its URL without a database name."""
    bins = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    initdb = next((b / "initdb" for b in bins if (b / "initdb").exists()), None)
    if initdb is None:
        raise SystemExit("bench: PostgreSQL is not installed (apt-get install postgresql)")
    pg_ctl = str(initdb.parent / "pg_ctl")
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    base = Path(tempfile.mkdtemp(prefix="helpdesk-bench-postgres-"))
    base.chmod(0o777)  # the server runs as `postgres` when we are root
    data = base / "data"
    subprocess.run([*as_user, str(initdb), "-D", str(data), "-A", "trust", "-U", "postgres"],
                   check=True, capture_output=True)
    port = free_port()
    options = f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c max_connections=200"
    subprocess.run([*as_user, pg_ctl, "-D", str(data), "-o", options, "-l", str(base / "log"),
                    "-w", "start"], check=True, capture_output=True)
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}"
    finally:
        subprocess.run([*as_user, pg_ctl, "-D", str(data), "-m", "fast", "stop"],
                       capture_output=True)
        shutil.rmtree(base, ignore_errors=True)
