"""Latency with IDLE: from APPEND to the acknowledgement accepted by the SMTP server.

The real daemon (``helpdesk -c CONFIG run``) watches a Dovecot INBOX with IDLE and
delivers to the local aiosmtpd server. Messages (new requests from the corpus)
are appended one at a time, at a random pause of 50-250 ms after the previous
acknowledgement; each latency runs from just before the APPEND command to the
moment the SMTP server accepted the acknowledgement to that customer (the mail
whose In-Reply-To is the request's Message-ID).

The floor is the server's own IDLE notification delay, measured with two bare
imapclient sessions (APPEND in one, time to ``EXISTS`` in the other): Dovecot
batches mailbox change notifications for about half a second.
"""
from __future__ import annotations

import random
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imapclient import IMAPClient

from bench.ingest import ROOT, make_desk, python_env
from bench.servers import TimingMTA
from tests.servers.dovecot import DovecotServer
from tests.servers.helpdesk import stop_process

START_TIMEOUT = 30.0
ACK_TIMEOUT = 60.0


@dataclass
class LatencyRun:
    samples: list[float]  # seconds
    idle_notify: list[float]  # bare IDLE: APPEND to the server's EXISTS, seconds

    @property
    def median_ms(self) -> float:
        return statistics.median(self.samples) * 1000

    @property
    def p95_ms(self) -> float:
        ordered = sorted(self.samples)
        return ordered[max(0, round(0.95 * len(ordered)) - 1)] * 1000

    @property
    def max_ms(self) -> float:
        return max(self.samples) * 1000

    @property
    def idle_notify_ms(self) -> float:
        return statistics.median(self.idle_notify) * 1000


def idle_notification(account: Any, count: int = 5) -> list[float]:
    """The floor: how long this server takes to tell an IDLE client about an APPEND."""
    samples = []
    with IMAPClient(account.host, account.server.port, ssl=False, timeout=30) as watcher, \
            IMAPClient(account.host, account.server.port, ssl=False, timeout=30) as writer:
        watcher.login(account.user, account.password)
        writer.login(account.user, account.password)
        writer.create_folder("IdleProbe")
        watcher.select_folder("IdleProbe")
        for _ in range(count):
            watcher.idle()
            time.sleep(0.1)
            started = time.monotonic()
            writer.append("IdleProbe", b"Subject: probe\r\n\r\nprobe\r\n")
            while not any(len(r) > 1 and r[1] == b"EXISTS" for r in watcher.idle_check(1)):
                if time.monotonic() - started > 10:
                    raise RuntimeError("the IDLE session heard nothing of an APPEND in 10 s")
            samples.append(time.monotonic() - started)
            watcher.idle_done()
    return samples


def _wait_for_log(log: Path, needle: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists() and needle in log.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            raise RuntimeError(f"helpdesk run exited {proc.returncode}:\n"
                               f"{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.05)
    raise RuntimeError(f"helpdesk run did not log {needle!r} within {timeout}s")


# The shipped sample articles, every article that shares a word with the mail suggested
# (up to the configured number): a search in every ack, and a list in most of them.
SAMPLE_KB = {"path": str(ROOT / "helpdesk" / "samples" / "kb"),
             "base_url": "http://127.0.0.1:8080/kb", "min_score": 0.0}


def measure(server: DovecotServer, handler: TimingMTA, smtp_port: int,
            messages: list[tuple[bytes, str, str]], folder: Path, seed: int = 7,
            knowledge_base: bool = False) -> LatencyRun:
    """*messages*: (raw, Message-ID without brackets, sender address), new requests;
    *knowledge_base*: the desk suggests the sample articles (``SAMPLE_KB``)."""
    folder = folder.resolve()
    folder.mkdir(parents=True, exist_ok=True)
    account = server.new_account()
    handler.reset()  # the acks of an earlier run of the same messages must not count
    extra = {"knowledge_base": SAMPLE_KB} if knowledge_base else {}
    config = make_desk(folder, smtp_port, account, timers={"sweep_interval": "1h"}, **extra)
    log = folder / "run.log"
    rng = random.Random(seed)
    samples: list[float] = []
    with open(log, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "helpdesk", "-c", str(config), "run"],
                                stdout=subprocess.DEVNULL, stderr=err, env=python_env(), cwd=ROOT)
    try:
        _wait_for_log(log, "watching (IDLE)", proc, START_TIMEOUT)
        with IMAPClient(account.host, account.server.port, ssl=False, timeout=30) as client:
            client.login(account.user, account.password)
            for raw, message_id, sender in messages:
                def acked(acks: list, mid: str = message_id, to: str = sender) -> bool:
                    return any(a.in_reply_to == mid and to in a.rcpt_tos for a in acks)
                time.sleep(rng.uniform(0.05, 0.25))
                started = time.monotonic()
                client.append("INBOX", raw)
                if not handler.wait_for(acked, ACK_TIMEOUT):
                    raise RuntimeError(f"no acknowledgement for {message_id} within {ACK_TIMEOUT}s;"
                                       f" see {log}")
                ack = next(a for a in handler.acks if acked([a]))
                samples.append(ack.at - started)
    finally:
        stop_process(proc, timeout=30)
    return LatencyRun(samples, idle_notification(server.new_account()))
