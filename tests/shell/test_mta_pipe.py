"""What an MTA sees when it pipes mail to `helpdesk ingest` (SPEC, Round 2, Trust: exit
codes for MTAs, bounded work): 0 once the mail is stored, quarantined or answered as
too large; 75 (EX_TEMPFAIL) whenever it could not be stored for a reason that may
pass, and the MTA's retry then stores it exactly once. Every test pipes raw bytes to
the real command in a subprocess, as Postfix's pipe(8) would, and makes the trouble
real: a second process holding SQLite's write lock, PostgreSQL stopped, a full disk."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import select

from helpdesk.store.orm import Inbound
from tests.servers.helpdesk import Desk, base_config, make_mail, write_config

EX_TEMPFAIL = 75
ANA = "Ana Garcia <ana@customer.example>"


def pipe(desk: Desk, raw: bytes) -> subprocess.CompletedProcess[str]:
    return desk.cli("ingest", input=raw)


def assert_arrived_once(desk: Desk, raw: bytes, subject: str) -> None:
    """One case, the bytes stored as received, one acknowledgement."""
    cases = json.loads(desk.cli("cases", "list", "--json", check=True).stdout)
    assert [c["subject"] for c in cases] == [subject]
    with desk.app.reads() as session:
        assert [r.raw for r in session.scalars(select(Inbound))] == [raw]
    assert [m["Subject"] for m in desk.sent_to("ana@customer.example")] == [
        f"[{cases[0]['ref']}] {subject}"]


def sqlite_path(desk: Desk) -> Path:
    return Path(desk.app.settings.database_url.removeprefix("sqlite:///"))


_HOLD_WRITE_LOCK = """
import sqlite3, sys
connection = sqlite3.connect(sys.argv[1], isolation_level=None)
connection.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
sys.stdin.read()
"""


@contextmanager
def write_lock_held(database: Path, holding: str = _HOLD_WRITE_LOCK) -> Iterator[None]:
    """Another process (an admin's sqlite3 shell, a stuck writer) holds the write lock
    (or, with another *holding* script, whatever lock that takes)."""
    with subprocess.Popen([sys.executable, "-c", holding, str(database)],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as holder:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        try:
            yield
        finally:
            holder.communicate(timeout=10)  # closes its stdin: it lets go and exits


def test_a_locked_database_exits_75_within_the_lock_timeout_and_the_retry_stores_once(
        desk_factory):
    desk = desk_factory(database={"lock_timeout": "1s"})
    raw = make_mail(ANA, "support@example.com", "Locked out")
    with write_lock_held(sqlite_path(desk)):
        started = time.monotonic()
        locked = pipe(desk, raw)
        assert locked.returncode == EX_TEMPFAIL, locked.stdout + locked.stderr
        assert "database unavailable" in locked.stderr and "locked" in locked.stderr
        assert time.monotonic() - started < 20  # an MTA pipe does not hang for minutes
    stored = pipe(desk, raw)  # the MTA tries again later
    assert stored.returncode == 0 and "new_case CC-000001" in stored.stdout
    assert pipe(desk, raw).returncode == 0  # one more retry changes nothing
    assert_arrived_once(desk, raw, "Locked out")


def test_reads_never_wait_for_the_write_lock(desk_factory):
    desk = desk_factory(database={"lock_timeout": "1s"})
    desk.ingest(make_mail(ANA, "support@example.com", "Printer on fire"))
    desk.ingest(b"")  # one message in the quarantine
    with write_lock_held(sqlite_path(desk)):
        listed = desk.cli("cases", "list")
        shown = desk.cli("cases", "show", "CC-000001", "--json")
        status = desk.cli("status")
        failed = desk.cli("failed", "list", "--json")
    for result in (listed, shown, status, failed):
        assert result.returncode == 0, result.args[3:] + [result.stderr]
    assert "CC-000001" in listed.stdout and "Printer on fire" in listed.stdout
    assert json.loads(shown.stdout)["subject"] == "Printer on fire"
    assert "quarantine: 1 message(s)" in status.stdout
    assert len(json.loads(failed.stdout)) == 1


def test_postgresql_down_exits_75_from_the_schema_check_and_the_retry_stores_once(
        desk_factory, private_postgres):
    desk = desk_factory(database={"url": private_postgres.create_database(),
                                  "lock_timeout": "2s"})
    raw = make_mail(ANA, "support@example.com", "Database down")
    private_postgres.stop()
    try:
        down = pipe(desk, raw)
    finally:
        private_postgres.start()
    assert down.returncode == EX_TEMPFAIL, down.stdout + down.stderr
    assert "database unavailable" in down.stderr and "Traceback" not in down.stderr
    stored = pipe(desk, raw)
    assert stored.returncode == 0, stored.stdout + stored.stderr
    assert_arrived_once(desk, raw, "Database down")


# Locks that keep even a reader out, so that the schema check (one SELECT, before the
# mail is read) is what meets them: an admin's sqlite3 shell in exclusive locking mode,
# and a writer's exclusive lock on a database put back in rollback-journal mode (say,
# restored from a backup), which our first connection must switch to WAL.
_HOLD_EVERY_LOCK = """
import sqlite3, sys
connection = sqlite3.connect(sys.argv[1], isolation_level=None)
connection.execute("PRAGMA {pragma}")
connection.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.read()
"""
_SHUTTING_OUT_READERS = {"exclusive-locking-mode": "locking_mode=EXCLUSIVE",
                         "rollback-journal": "journal_mode=DELETE"}


@pytest.mark.parametrize("holding", sorted(_SHUTTING_OUT_READERS))
def test_sqlite_locked_at_the_schema_check_exits_75_and_the_retry_stores_once(
        desk_factory, holding):
    desk = desk_factory(database={"lock_timeout": "1s"})
    desk.app.engine.dispose()  # the test's own connection would keep the holder out
    raw = make_mail(ANA, "support@example.com", "Locked at the door")
    with write_lock_held(sqlite_path(desk),
                         _HOLD_EVERY_LOCK.format(pragma=_SHUTTING_OUT_READERS[holding])):
        started = time.monotonic()
        locked = pipe(desk, raw)
        assert time.monotonic() - started < 20
    assert locked.returncode == EX_TEMPFAIL, locked.stdout + locked.stderr
    # open_app's words, not ingest's ("-: database unavailable"): the schema check met it
    assert locked.stderr.startswith("Error: database unavailable: database is locked")
    assert "Traceback" not in locked.stderr and locked.stdout == ""
    stored = pipe(desk, raw)  # the MTA tries again later
    assert stored.returncode == 0 and "new_case CC-000001" in stored.stdout, stored.stderr
    assert pipe(desk, raw).returncode == 0  # one more retry changes nothing
    assert_arrived_once(desk, raw, "Locked at the door")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 16 MB filesystem of the test's own (a tmpfs; mounting needs root)."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def fill(disk: Path, leave: int) -> Path:
    """Fill *disk* with one file until only about *leave* bytes are free."""
    stat = os.statvfs(disk)
    filler = disk / "filler"
    with open(filler, "wb") as f:
        f.write(bytes(max(0, stat.f_bavail * stat.f_frsize - leave)))
    return filler


def test_a_full_disk_exits_75_and_the_retry_stores_the_mail_once_there_is_room(
        desk_factory, small_disk):
    desk = desk_factory(database={"url": f"sqlite:///{small_disk / 'helpdesk.db'}"})
    raw = make_mail(ANA, "support@example.com", "Disk full",
                    body="The scanner log follows.\n" + "0123456789abcdef " * 10_000)
    filler = fill(small_disk, leave=64 * 1024)
    full = pipe(desk, raw)
    assert full.returncode == EX_TEMPFAIL, full.stdout + full.stderr
    assert "database unavailable" in full.stderr and "full" in full.stderr
    filler.unlink()  # the admin makes room
    stored = pipe(desk, raw)
    assert stored.returncode == 0, stored.stdout + stored.stderr
    assert_arrived_once(desk, raw, "Disk full")


def test_a_schema_not_yet_upgraded_exits_75_until_db_upgrade_runs(tmp_path, mta):
    path = write_config(tmp_path, base_config(tmp_path, mta.port))
    command = [sys.executable, "-m", "helpdesk", "-c", str(path)]
    raw = make_mail(ANA, "support@example.com", "Deployed, not migrated")
    early = subprocess.run([*command, "ingest"], input=raw, capture_output=True)
    assert early.returncode == EX_TEMPFAIL and b"helpdesk db upgrade" in early.stderr
    subprocess.run([*command, "db", "upgrade"], check=True, capture_output=True)
    stored = subprocess.run([*command, "ingest"], input=raw, capture_output=True)
    assert stored.returncode == 0 and b"new_case CC-000001" in stored.stdout


# VmHWM, not getrusage(): ru_maxrss keeps the high-water mark of the process that
# forked the command (this test, holding the big mail) across exec.
_REPORT_PEAK_MEMORY = """
import atexit, sys
def peak():
    with open("/proc/self/status") as status:
        hwm = next(line.split()[1] for line in status if line.startswith("VmHWM:"))
    print(f"maxrss_kb={hwm}", file=sys.stderr)
atexit.register(peak)
sys.argv = ["helpdesk", *sys.argv[1:]]
from helpdesk.cli import main
main()
"""


def ingest_measured(desk: Desk, raw: bytes) -> tuple[subprocess.CompletedProcess[str], int]:
    """`helpdesk ingest` fed *raw* on stdin; its result and its peak resident set (KB)."""
    env = {**os.environ, "HELPDESK_CONFIG": str(desk.config_path)}
    result = subprocess.run([sys.executable, "-c", _REPORT_PEAK_MEMORY, "ingest"], input=raw,
                            capture_output=True, env=env, timeout=120)
    out = subprocess.CompletedProcess(result.args, result.returncode, result.stdout.decode(),
                                      result.stderr.decode())
    [peak] = [int(line.split("=")[1]) for line in out.stderr.splitlines()
              if line.startswith("maxrss_kb=")]
    return out, peak


def test_a_mail_over_max_message_size_is_answered_politely_and_never_held_whole(desk_factory):
    desk = desk_factory(limits={"max_message_size": "1MB"})
    normal, normal_peak = ingest_measured(desk, make_mail(ANA, "support@example.com", "Hello"))
    assert normal.returncode == 0
    head = make_mail(ANA, "support@example.com", "Scan of the contract").split(b"\r\n\r\n")[0]
    huge = head + b"\r\n\r\n" + b"".join([b"B" * 76 + b"\r\n"] * 500_000)
    assert len(huge) > 38_000_000

    result, peak = ingest_measured(desk, huge)
    assert result.returncode == 0, result.stderr
    assert "too_large" in result.stdout and f"{len(huge)} bytes" in result.stdout
    # read up to the limit and no further: far less than the 38 MB it was sent
    assert peak - normal_peak < 12 * 1024, (normal_peak, peak)
    [notice] = desk.sent_to("ana@customer.example")[1:]  # after the ack of "Hello"
    assert notice["Subject"] == "Re: Scan of the contract"
    assert "1000000 bytes" in notice.get_body(("plain",)).get_content()
    with desk.app.reads() as session:
        row = session.scalars(select(Inbound).where(Inbound.outcome == "too_large")).one()
    assert row.raw == head  # the headers are kept, as the IMAP path keeps them
    cases = json.loads(desk.cli("cases", "list", "--json", check=True).stdout)
    assert [c["subject"] for c in cases] == ["Hello"]  # no case for it
