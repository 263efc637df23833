"""The outbox sender in a process of its own (helpdesk/outbound/sending.py): `helpdesk run`
sends from a child and stops it with itself; a daemon whose child dies exits 1 so that
systemd restarts it whole; `helpdesk fetch` delivers while it fetches, and its child
does not outlive it."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import func, select

from helpdesk.store.orm import Outbox

from tests.servers.helpdesk import make_mail, stop_process
from tests.servers.smtp import wait_for

pytestmark = pytest.mark.imap


def helpdesk(desk, *args: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "HELPDESK_CONFIG": str(desk.config_path)}
    log = open(desk.config_path.parent / "helpdesk.log", "ab")  # noqa: SIM115 - the child has it
    proc = subprocess.Popen([sys.executable, "-m", "helpdesk", *args], env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    log.close()
    return proc


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split(") ")[-1].startswith("Z")  # a zombie


def requests(count: int) -> list[bytes]:
    return [make_mail(f"c{n}@customer{n % 7}.example", "support@example.com", f"Request {n}")
            for n in range(count)]


def acks(desk) -> Counter[str]:
    """Acknowledgements per subject, a mail sent again with its Message-ID (the honest
    duplicate of a kill between the server's 250 and our record) counted once."""
    return Counter(subject for subject, _ in {
        (m["Subject"], m["Message-ID"]) for m in desk.sent()
        if m["Auto-Submitted"] == "auto-replied" and "support" not in str(m["To"])})


def test_run_sends_from_a_child_and_sigterm_stops_both(dovecot, desk_factory):
    desk = desk_factory(inbound={"imap": dovecot.mailbox_config(idle=True)})
    proc = helpdesk(desk, "run")
    try:
        wait_for(lambda: children(proc.pid), timeout=30, interval=0.1)
        [child] = children(proc.pid)
        dovecot.append_many(requests(3))
        wait_for(lambda: len(acks(desk)) == 3, timeout=20, interval=0.2)
    finally:
        assert stop_process(proc) == 0
    wait_for(lambda: gone(child), timeout=5, interval=0.1)
    log = (desk.config_path.parent / "helpdesk.log").read_text()
    assert "sending process: 6 sent" in log  # 3 acknowledgements, 3 staff notices


def test_a_daemon_whose_sending_process_dies_exits_1(dovecot, desk_factory):
    desk = desk_factory(inbound={"imap": dovecot.mailbox_config(idle=True)})
    proc = helpdesk(desk, "run")
    try:
        wait_for(lambda: children(proc.pid), timeout=30, interval=0.1)
        os.kill(children(proc.pid)[0], signal.SIGKILL)
        assert proc.wait(timeout=20) == 1
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log = (desk.config_path.parent / "helpdesk.log").read_text()
    assert "the sending process ended on its own" in log


@pytest.mark.slow
def test_a_killed_fetch_takes_its_sender_along_and_the_next_fetch_sends_the_rest_once(
        dovecot, desk_factory):
    desk = desk_factory(inbound={"imap": dovecot.mailbox_config(batch_size=10)},
                        limits={"new_cases_per_sender": "1000/1h"})
    dovecot.append_many(requests(120))
    proc = helpdesk(desk, "fetch")
    wait_for(lambda: len(desk.sent()) >= 20, timeout=60, interval=0.05)
    [child] = children(proc.pid)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    started = time.monotonic()
    wait_for(lambda: gone(child), timeout=5, interval=0.05)
    assert time.monotonic() - started < 3  # it noticed, and finished the mail in hand

    with desk.app.sessions() as session:  # it recorded its last mail and gave back the rest
        assert not session.scalar(select(func.count()).select_from(Outbox).where(
            Outbox.status == "queued", Outbox.claimed_until.is_not(None)))
    assert desk.cli("fetch").returncode == 0
    assert dovecot.count("INBOX") == 0
    assert "outbox: 0 queued" in desk.cli("status").stdout
    sent = acks(desk)
    assert len(sent) == 120 and set(sent.values()) == {1}
