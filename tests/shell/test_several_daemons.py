"""Several `helpdesk run` daemons on one database: each mailbox is fetched by one of
them at a time (mailbox_lock.py), and taken over when that one dies."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import pytest

from helpdesk.app import App
from helpdesk.config import ImapMailbox
from helpdesk.inbound.imap import watch
from helpdesk.store.orm import MailboxState
from tests.servers.helpdesk import make_mail, stop_process, stop_processes
from tests.servers.smtp import free_port, wait_for

pytestmark = pytest.mark.imap

_FETCHER = re.compile(r"mailbox default: fetched by [^:\s]+:(\d+) since")


def start_daemon(desk, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "HELPDESK_CONFIG": str(desk.config_path)}
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "helpdesk", "run"], env=env,
                                stdout=out, stderr=subprocess.STDOUT)


def fetcher_pid(desk) -> int | None:
    m = _FETCHER.search(desk.cli("status").stdout)
    return int(m[1]) if m else None


def requests(first: int, count: int) -> list[bytes]:
    return [make_mail(f"c{n}@customer.example", "support@example.com", f"Request {n}")
            for n in range(first, first + count)]


def acks(desk) -> Counter[str]:
    """Distinct acknowledgements per subject. A SIGKILL between the SMTP server's 250
    and our record of it resends the same mail, Message-ID included (the one honest
    duplicate, SPEC); that is not a second acknowledgement."""
    return Counter(subject for subject, _ in {
        (m["Subject"], m["Message-ID"]) for m in desk.sent()
        if m["Auto-Submitted"] == "auto-replied"})


@pytest.mark.slow
def test_three_daemons_on_postgresql_move_each_message_once_and_take_over_a_killed_fetcher(
        dovecot, desk_factory, postgres_url, tmp_path):
    desk = desk_factory(database={"url": postgres_url},
                        inbound={"imap": dovecot.mailbox_config(batch_size=10)},
                        limits={"new_cases_per_sender": "1000/1h"})  # 100 cases from one domain
    logs = [tmp_path / f"daemon{n}.log" for n in range(3)]
    daemons = [start_daemon(desk, log) for log in logs]
    try:
        holder = wait_for(lambda: fetcher_pid(desk), timeout=30, interval=0.3)
        assert holder in {d.pid for d in daemons}
        dovecot.append_many(requests(0, 40))
        dovecot.append_many(requests(40, 40))
        wait_for(lambda: dovecot.count("INBOX") == 0, timeout=60, interval=0.3)

        killed = next(d for d in daemons if d.pid == holder)
        killed.send_signal(signal.SIGKILL)
        killed.wait(timeout=10)
        dovecot.append_many(requests(80, 20))
        # another daemon takes the mailbox over and empties the inbox within 30 s
        wait_for(lambda: dovecot.count("INBOX") == 0, timeout=30, interval=0.3)
        successor = fetcher_pid(desk)
        assert successor in {d.pid for d in daemons if d is not killed}
        # a mail the killed daemon had claimed waits out its claim (30 s here), then goes
        wait_for(lambda: "outbox: 0 queued" in desk.cli("status").stdout, timeout=90,
                 interval=1.0)
    finally:
        codes = stop_processes(*daemons, timeout=30)
    assert sorted(codes) == [-signal.SIGKILL, 0, 0]
    assert dovecot.count("Processed") == 100  # each message MOVEd exactly once
    assert dovecot.count("Failed") == 0
    text = "".join(log.read_text() for log in logs)
    assert "EXPUNGEISSUED" not in text
    assert text.count("standing by") >= 2  # the others waited their turn
    cases = json.loads(desk.cli("cases", "list", "--json").stdout)
    assert len(cases) == 100
    assert set(acks(desk).values()) == {1} and len(acks(desk)) == 100


def test_a_cron_fetch_leaves_a_mailbox_the_daemon_holds_and_status_names_the_daemon(
        dovecot, desk_factory, tmp_path):
    desk = desk_factory(inbound={"imap": dovecot.mailbox_config()})  # SQLite: a file lock
    daemon = start_daemon(desk, tmp_path / "daemon.log")
    try:
        assert wait_for(lambda: fetcher_pid(desk), timeout=30, interval=0.3) == daemon.pid
        fetch = desk.cli("fetch")
        assert fetch.returncode == 0
        assert f":{daemon.pid} since" in fetch.stderr and "skipped" in fetch.stderr
    finally:
        assert stop_process(daemon) == 0
    assert "no process is fetching it right now" in desk.cli("status").stdout
    fetch = desk.cli("fetch")  # nobody holds it now: the cron pass fetches
    assert fetch.returncode == 0 and "skipped" not in fetch.stderr


def test_a_daemon_that_cannot_reach_the_server_lets_another_fetch_the_mailbox(
        dovecot, desk_factory):
    """Two watchers of one mailbox on one database: the first to take the lock cannot
    reach the IMAP server (its network is broken; here: a port nobody listens on). It
    lets go of the lock while it waits to try again, and the other one fetches."""
    desk = desk_factory(inbound={"imap": dovecot.mailbox_config()})
    reachable = desk.app.settings.inbound.imap[0]
    cut_off = ImapMailbox(**{**reachable.model_dump(), "port": free_port()})
    other = App.from_settings(desk.app.settings, clock=desk.clock)
    stop = threading.Event()
    backoff = {"backoff_base": 1.0, "backoff_cap": 4.0}
    first = threading.Thread(target=watch, args=(other, cut_off, stop), kwargs=backoff)
    second = threading.Thread(target=watch, args=(desk.app, reachable, stop), kwargs=backoff)
    try:
        first.start()

        def failed_once() -> bool:
            with desk.app.sessions() as session:
                state = session.get(MailboxState, "default")
                return state is not None and state.last_error_at is not None
        wait_for(failed_once, timeout=15, interval=0.1)
        second.start()
        dovecot.append(make_mail("ana@customer.example", "support@example.com", "Printer"))
        wait_for(lambda: dovecot.count("Processed") == 1, timeout=30, interval=0.3)
    finally:
        stop.set()
        for thread in (first, second):
            if thread.ident is not None:  # started
                thread.join(timeout=15)
        other.close()
    assert dovecot.count("INBOX") == 0
