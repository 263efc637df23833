"""Several daemons on one PostgreSQL: throughput of 1 vs 2 ``helpdesk run`` processes.

For each count k: a fresh database on the bench's PostgreSQL server (fsync on), a
fresh Dovecot account holding the same N messages, and k daemons with the same
config started at once. Timed from their start to the last mail the SMTP server
accepted (start-up included, about a second); CPU is the user+sys time of all k
processes, which are stopped with SIGTERM once the inbox is empty and the outbox
drained.

What to expect: one mailbox is fetched by one daemon at a time (mailbox_lock.py),
so a second daemon can only share the sending, the sweep and the hooks; ingest
from one mailbox does not get faster. More ingest needs more mailboxes, or LMTP
(the MTA spreads its connections over the daemons' listeners).
"""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import create_engine, text

from bench.ingest import ROOT, cpu_of, db_counts, make_desk, python_env, settle
from bench.servers import TimingMTA, append_all
from tests.servers.dovecot import DovecotServer
from tests.servers.helpdesk import stop_processes

TIMEOUT = 3600.0


@dataclass
class DaemonsRun:
    daemons: int
    n: int
    seconds: float  # daemons' start to the last mail accepted by the SMTP server
    cpu_s: float  # all daemons, user + sys
    mails_out: int

    @property
    def rate(self) -> float:
        return self.n / self.seconds


def measure(server: DovecotServer, handler: TimingMTA, smtp_port: int, postgres: str,
            raws: list[bytes], folder: Path, daemons: int) -> DaemonsRun:
    folder = folder.resolve()
    name = f"bench_daemons_{daemons}"
    admin = create_engine(f"{postgres}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f"DROP DATABASE IF EXISTS {name}"))
        connection.execute(text(f"CREATE DATABASE {name}"))
    admin.dispose()
    account = server.new_account()
    append_all(account, raws)
    config = make_desk(folder, smtp_port, account, database={"url": f"{postgres}/{name}"})
    handler.reset()
    settle()

    def run() -> float:
        started = time.monotonic()
        logs = [open(folder / f"run-{k}.log", "wb") for k in range(daemons)]  # noqa: SIM115
        procs = [subprocess.Popen([sys.executable, "-m", "helpdesk", "-c", str(config), "run"],
                                  stdout=subprocess.DEVNULL, stderr=log, env=python_env(),
                                  cwd=ROOT) for log in logs]
        try:
            _wait_until_done(config, len(raws), procs)
        finally:
            codes = stop_processes(*procs, timeout=60)
            for log in logs:
                log.close()
        if -signal.SIGKILL in codes:
            raise RuntimeError(f"a daemon did not stop within 60 s of SIGTERM; see "
                               f"{folder}/run-*.log")
        return started

    started, cpu = cpu_of(run)
    return DaemonsRun(daemons=daemons, n=len(raws),
                      seconds=max(a.at for a in handler.acks) - started, cpu_s=cpu,
                      mails_out=len(handler.acks))


def _wait_until_done(config: Path, n: int, procs: list[subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        if any(proc.poll() is not None for proc in procs):
            raise RuntimeError(f"a daemon exited early; see {config.parent}/run-*.log")
        counts = db_counts(config)
        if counts["inbound"] == n and not counts["queued"]:
            return
        time.sleep(0.5)
    raise RuntimeError(f"the daemons did not finish {n} messages within {TIMEOUT:.0f} s")
