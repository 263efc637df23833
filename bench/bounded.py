"""Bounded work per mail: what one huge mail costs, and what it costs everyone else.

1. ``helpdesk -c CONFIG ingest FILE``, the real command under ``bench.probe``, each
   on a fresh SQLite database with the Maildir outbox: a normal mail, mails whose
   Subject is 0.25, 0.5 and 1 MB long (folded, as a mail client sends it), and mails
   with one base64 attachment of 0.25, 0.5 and 1 times ``limits.max_message_size``.
   Time from the first ``ingest_raw`` to the end of the command (stored, its
   acknowledgement rendered and written), and the peak resident set above the idle
   process; each also as a multiple of the normal mail. Linear: doubling the mail
   costs at most about twice the time.
2. The SMTP listener of ``helpdesk run`` (Maildir outbox): three clients send small
   mails one after another; the 95th percentile of their DATA-to-250 latency, while
   nothing else happens and while the 1 MB-Subject mail and the mail at
   ``max_message_size`` are sent in by a fourth client.
"""
from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.ingest import ROOT, db_counts, make_desk, python_env, run_probe
from tests.servers.helpdesk import attachment_mail as shared_attachment_mail
from tests.servers.helpdesk import make_mail, stop_process
from tests.servers.smtp import TimedSend, free_port, send_timed

SENDER = "Ana Garcia <ana@customer.example>"
_WORDS = b" " + b"word " * 14


def normal_mail() -> bytes:
    return make_mail(SENDER, "support@example.com", "The printer is on fire",
                     "Since this morning it smokes.\n" * 20)


def _headers(subject: bytes | None) -> bytes:
    head = make_mail(SENDER, "support@example.com", "-").split(b"\r\n\r\n", 1)[0]
    lines = [h for h in head.split(b"\r\n") if not h.startswith(b"Subject:")]
    if subject is not None:
        lines.append(subject)
    return b"".join(line + b"\r\n" for line in lines)


def subject_mail(size: int) -> bytes:
    """A mail whose Subject is about *size* bytes, folded into 72-byte lines."""
    subject = b"Subject:" + b"\r\n".join([_WORDS] * (size // (len(_WORDS) + 2)))
    return _headers(subject) + b"\r\nA very long subject.\r\n"


def attachment_mail(size: int) -> bytes:
    """A mail of about *size* bytes: a line of text and one base64 attachment."""
    return shared_attachment_mail(SENDER, size)


@dataclass
class Cost:
    label: str
    size: int
    seconds: float
    peak_kb: int  # above the idle process


def ingest_cost(work: Path, label: str, raw: bytes, max_size: int) -> Cost:
    folder = work / label
    config = make_desk(folder, None, None, limits={"max_message_size": max_size})
    mail = folder / "mail.eml"
    mail.write_bytes(raw)
    facts = run_probe(config, folder / "ingest.json", "ingest", str(mail))
    counts = db_counts(config)
    if (counts["cases"], counts["failed"], counts["queued"]) != (1, 0, 0):
        raise RuntimeError(f"{label}: not stored and answered as a new case: {counts}")
    return Cost(label, len(raw), facts["end"] - facts["first_ingest"],
                facts["hwm_kb"] - facts["idle_rss_kb"])


def p95(samples: list[TimedSend]) -> float:
    ordered = sorted(s.seconds for s in samples)
    return ordered[max(0, round(0.95 * len(ordered)) - 1)] if ordered else float("nan")


@dataclass
class ListenerRun:
    quiet: list[TimedSend] = field(default_factory=list)
    during: list[TimedSend] = field(default_factory=list)
    big: list[TimedSend] = field(default_factory=list)

    @property
    def refused(self) -> int:
        return sum(s.code != 250 for s in (*self.quiet, *self.during, *self.big))


def listener_latency(work: Path, big: list[bytes], max_size: int,
                     quiet_seconds: float = 3.0) -> ListenerRun:
    port = free_port()
    folder = work / "listener"
    config = make_desk(folder, None, None, limits={"max_message_size": max_size},
                       inbound={"smtp_listener": {"host": "127.0.0.1", "port": port}})
    log = open(folder / "daemon.log", "wb")
    daemon = subprocess.Popen([sys.executable, "-m", "helpdesk", "-c", str(config), "run"],
                              stdout=log, stderr=subprocess.STDOUT, env=python_env(), cwd=ROOT)
    run = ListenerRun()
    samples: list[TimedSend] = []
    stop = threading.Event()
    try:
        _wait_for_greeting(port)

        def small_mails(n: int) -> None:
            i = 0
            while not stop.is_set():
                i += 1
                samples.append(send_timed(port, make_mail(f"client{n}@customer.example",
                                                     "support@example.com", f"Small {n}-{i}")))

        clients = [threading.Thread(target=small_mails, args=(n,)) for n in range(3)]
        for client in clients:
            client.start()
        time.sleep(quiet_seconds)
        big_started = time.monotonic()
        run.big = [send_timed(port, raw) for raw in big]
        big_ended = time.monotonic()
        stop.set()
        for client in clients:
            client.join()
    finally:
        code = stop_process(daemon, timeout=60)
        log.close()
    if code == -signal.SIGKILL:
        raise RuntimeError(f"helpdesk run did not stop within 60 s of SIGTERM; see {log.name}")
    run.quiet = [s for s in samples if s.started < big_started]
    run.during = [s for s in samples if big_started <= s.started <= big_ended]
    return run


def _wait_for_greeting(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                if s.recv(100).startswith(b"220"):
                    return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"helpdesk run: no SMTP greeting on port {port} within {timeout} s")
