"""The embedded SMTP listener on a public address (SPEC, Round 2, Trust: listener
limits, bounded work, exit codes' spirit): real sockets and smtplib against the
listener, in-process or in the real `helpdesk run`."""
from __future__ import annotations

import json
import os
import smtplib
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import select

from helpdesk.inbound.smtp_listener import Listener, start_listener
from helpdesk.store.orm import Inbound
from tests.servers.helpdesk import Desk, attachment_mail, make_mail, stop_process
from tests.servers.smtp import TimedSend, free_port, send_timed, wait_for
from tests.shell.test_mta_pipe import sqlite_path, write_lock_held

ANA = "Ana Garcia <ana@customer.example>"


@pytest.fixture
def listening(desk_factory) -> Iterator[Callable[..., tuple[Desk, Listener]]]:
    """``listening(smtp_listener={...}, **config)``: a desk and its listener, started."""
    started: list[Listener] = []

    def start(smtp_listener: dict | None = None, **changes) -> tuple[Desk, Listener]:
        desk = desk_factory(inbound={"smtp_listener": {
            "host": "127.0.0.1", "port": free_port(), **(smtp_listener or {})}}, **changes)
        started.append(start_listener(desk.app))
        return desk, started[-1]

    yield start
    for listener in started:
        listener.stop()


def client(listener: Listener, timeout: float = 10) -> smtplib.SMTP:
    smtp = smtplib.SMTP(listener.hostname, listener.port, timeout=timeout)
    smtp.ehlo("client.example")
    return smtp


def stored(desk: Desk) -> list[Inbound]:
    with desk.app.reads() as session:
        return list(session.scalars(select(Inbound).order_by(Inbound.id)))


# --- SIZE, recipients ------------------------------------------------------------------


def test_ehlo_announces_the_size_limit_and_a_larger_mail_is_refused_with_552(listening):
    desk, listener = listening(limits={"max_message_size": "100KB"})
    big = make_mail(ANA, "support@example.com", "Scan", body="x" * 70 + "\n" * 1500 +
                    ("y" * 75 + "\n") * 1500)
    assert len(big) > 100_000
    with client(listener) as smtp:
        assert smtp.esmtp_features["size"] == "100000"
        with pytest.raises(smtplib.SMTPSenderRefused) as announced:  # MAIL FROM ... SIZE=
            smtp.sendmail("ana@customer.example", ["support@example.com"], big)
        assert announced.value.smtp_code == 552
        smtp.rset()
        smtp.mail("ana@customer.example")  # a client that does not say the size first
        smtp.rcpt("support@example.com")
        code, _ = smtp.data(big)
        assert code == 552
        smtp.rset()
        assert smtp.sendmail("ana@customer.example", ["support@example.com"],
                             make_mail(ANA, "support@example.com", "Small")) == {}
    assert [r.outcome for r in stored(desk)] == ["new_case"]


def test_only_our_addresses_and_their_reply_addresses_are_taken(listening):
    desk, listener = listening()
    reply_address = "support+CC-000042.abcdefgh@example.com"
    with client(listener) as smtp:
        smtp.mail("ana@customer.example")
        code, reply = smtp.rcpt("victim@elsewhere.example")
        assert (code, reply[:5]) == (550, b"5.1.1")
        assert smtp.rcpt("Support@Example.com")[0] == 250
        assert smtp.rcpt(reply_address)[0] == 250
        assert smtp.rcpt("support@example.com.evil.example")[0] == 550
        assert smtp.data(make_mail(ANA, "support@example.com", "Hello"))[0] == 250
    [row] = stored(desk)
    assert row.envelope_recipients == ["support@example.com", reply_address.lower()]
    with client(listener) as smtp:  # nobody may relay through us
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            smtp.sendmail("spammer@evil.example", ["victim@elsewhere.example"], b"Subject: x\r\n\r\nx")


def test_recipients_beyond_max_recipients_get_452(listening):
    desk, listener = listening({"max_recipients": 3})
    addresses = ["support@example.com", "billing@example.com", "connections@example.com",
                 "support+more@example.com"]
    with client(listener) as smtp:
        smtp.mail("ana@customer.example")
        replies = [smtp.rcpt(a) for a in addresses]
        assert [code for code, _ in replies] == [250, 250, 250, 452]
        assert replies[-1][1] == b"4.5.3 Too many recipients"
        assert smtp.data(make_mail(ANA, addresses, "Hello"))[0] == 250
    assert stored(desk)[0].envelope_recipients == addresses[:3]


# --- storage trouble: 451, never 5xx ----------------------------------------------------


def test_a_locked_database_gets_451_and_the_senders_retry_is_stored_once(listening):
    desk, listener = listening(database={"lock_timeout": "1s"})
    raw = make_mail(ANA, "support@example.com", "Locked out")
    with write_lock_held(sqlite_path(desk)), client(listener) as smtp:
        with pytest.raises(smtplib.SMTPDataError) as refused:
            smtp.sendmail("ana@customer.example", ["support@example.com"], raw)
        assert refused.value.smtp_code == 451
    with client(listener) as smtp:  # the sending MTA tries again
        assert smtp.sendmail("ana@customer.example", ["support@example.com"], raw) == {}
    assert [r.raw for r in stored(desk)] == [raw]


def test_postgresql_down_gets_451_and_the_senders_retry_is_stored_once(
        listening, private_postgres):
    desk, listener = listening(database={"url": private_postgres.create_database(),
                                         "lock_timeout": "2s"})
    raw = make_mail(ANA, "support@example.com", "Database down")
    private_postgres.stop()
    try:
        with client(listener) as smtp, pytest.raises(smtplib.SMTPDataError) as refused:
            smtp.sendmail("ana@customer.example", ["support@example.com"], raw)
    finally:
        private_postgres.start()
    assert refused.value.smtp_code == 451
    with client(listener) as smtp:
        assert smtp.sendmail("ana@customer.example", ["support@example.com"], raw) == {}
    assert [r.raw for r in stored(desk)] == [raw]


# --- the real daemon: sessions, idle time, file descriptors, the log ----------------------


@contextmanager
def daemon(desk: Desk, log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`helpdesk run` with the desk's config, its log in *log_path*; stopped at the end."""
    conf = desk.app.settings.inbound.smtp_listener
    assert conf is not None
    with open(log_path, "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "helpdesk", "-c", str(desk.config_path),
                                    "run"], stdout=log, stderr=subprocess.STDOUT)
    try:
        def greets() -> bool:
            try:
                with socket.create_connection((conf.host, conf.port), timeout=1) as s:
                    return s.recv(100).startswith(b"220")
            except OSError:
                return False
        wait_for(greets, timeout=30, interval=0.2)
        yield process
    finally:
        stop_process(process)


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def greeting(sock: socket.socket) -> bytes:
    sock.settimeout(10)
    return sock.recv(200)


def test_sessions_beyond_max_sessions_get_421_and_idle_ones_are_dropped(desk_factory, tmp_path):
    port = free_port()
    desk = desk_factory(inbound={"smtp_listener": {"host": "127.0.0.1", "port": port,
                                                   "idle_timeout": "3s"}})
    with daemon(desk, tmp_path / "daemon.log") as process:
        idle_fds = open_fds(process.pid)
        started = time.monotonic()
        sockets = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(150)]
        try:
            greetings = [greeting(s) for s in sockets]
            assert sum(g.startswith(b"220") for g in greetings) == 100  # max_sessions: 100
            refused = [g for g in greetings if not g.startswith(b"220")]
            assert len(refused) == 50 and all(g.startswith(b"421 4.7.0") for g in refused)
            wait_for(lambda: open_fds(process.pid) <= idle_fds + 100 + 5)  # refused: closed
            # the 100 idle sessions are told why and dropped after idle_timeout
            dropped = [s.recv(200) for s, g in zip(sockets, greetings) if g[:3] == b"220"]
            assert all(d.startswith(b"421 4.4.2") for d in dropped), set(dropped)
            assert 3 <= time.monotonic() - started < 15
        finally:
            for s in sockets:
                s.close()
        wait_for(lambda: open_fds(process.pid) <= idle_fds + 2, timeout=10)
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:  # room again
            assert smtp.sendmail("ana@customer.example", ["support@example.com"],
                                 make_mail(ANA, "support@example.com", "After the flood")) == {}


def test_a_thousand_bad_connections_write_a_handful_of_log_lines(desk_factory, tmp_path):
    port = free_port()
    desk = desk_factory(inbound={"smtp_listener": {"host": "127.0.0.1", "port": port,
                                                   "max_sessions": 2}})
    log_path = tmp_path / "daemon.log"
    with daemon(desk, log_path):
        before = log_path.read_text().count("\n")
        for _ in range(500):  # a dictionary attack on recipients
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
                smtp.ehlo("attacker.example")
                smtp.mail("x@attacker.example")
                assert smtp.rcpt("guess@example.com")[0] == 550
        with socket.create_connection(("127.0.0.1", port)) as one, \
                socket.create_connection(("127.0.0.1", port)) as two:
            assert greeting(one)[:3] == greeting(two)[:3] == b"220"
            for _ in range(500):  # and a connection flood past max_sessions
                with socket.create_connection(("127.0.0.1", port), timeout=10) as extra:
                    assert greeting(extra).startswith(b"421 4.7.0")
        during = log_path.read_text().splitlines()[before:]
    assert 2 <= len(during) <= 6, during
    log = log_path.read_text()
    # stopping the daemon logs how many were held back, once per kind
    assert "refused RCPT to <guess@example.com>" in log
    assert "[and 499 more like this in the last" in log
    assert log.count("refused a connection from 127.0.0.1") == 2


# --- bounded work: a huge mail never holds up the others ----------------------------------


def folded_header(name: str, size: int) -> bytes:
    """A header of about *size* bytes, folded into lines as a mail client would."""
    line = b" " + b"word " * 14
    return name.encode() + b":" + (line + b"\r\n") * (size // (len(line) + 2))


def envelope_headers(subject: str | None) -> bytes:
    """From, To, Subject (unless None), Date, Message-ID (and the text/plain MIME
    headers) of a mail."""
    head = make_mail(ANA, "support@example.com", subject or "-").split(b"\r\n\r\n", 1)[0]
    return b"".join(h + b"\r\n" for h in head.split(b"\r\n")
                    if subject is not None or not h.startswith(b"Subject:"))


def mail_with(head: bytes, body: bytes, subject: str | None) -> bytes:
    return envelope_headers(subject) + head + b"\r\n" + body


def test_other_clients_get_their_250_promptly_while_huge_mails_are_stored(desk_factory,
                                                                             tmp_path):
    port = free_port()
    limit = 10_000_000
    desk = desk_factory(inbound={"smtp_listener": {"host": "127.0.0.1", "port": port}},
                        limits={"max_message_size": limit, "new_cases_per_sender": "1000/1h"})
    huge = [mail_with(folded_header("X-Padding", 1_000_000), b"A 1 MB header.\r\n", "Header"),
            mail_with(folded_header("Subject", 1_000_000), b"A 1 MB subject.\r\n", None),
            attachment_mail(ANA, limit)]
    assert len(huge[-1]) > limit * 0.99 and all(len(h) > 1_000_000 for h in huge[:2])
    with daemon(desk, tmp_path / "daemon.log"):
        small: list[TimedSend] = []
        done = threading.Event()

        def others(n: int) -> None:
            i = 0
            while not done.is_set():
                i += 1
                raw = make_mail(f"client{n}@customer.example", "support@example.com",
                                f"Small {n}-{i}")
                small.append(send_timed(port, raw, timeout=120))

        threads = [threading.Thread(target=others, args=(n,)) for n in range(3)]
        for thread in threads:
            thread.start()
        time.sleep(1)
        big = [send_timed(port, raw, timeout=120) for raw in huge]
        time.sleep(1)
        done.set()
        for thread in threads:
            thread.join()
    assert [b.code for b in big] == [250, 250, 250]
    assert small and all(s.code == 250 for s in small), [s.code for s in small]
    during = [s for s in small if big[0].started <= s.started <= big[-1].ended]
    assert len(during) >= 5, (len(during), [b.seconds for b in big])
    latencies = sorted(s.seconds for s in during)
    p95 = latencies[int(0.95 * (len(latencies) - 1))]
    assert p95 < 5, (p95, statistics.median(latencies), [b.seconds for b in big])
    cases = json.loads(desk.cli("cases", "list", "--json", check=True).stdout)
    assert len(cases) == len(small) + 3
