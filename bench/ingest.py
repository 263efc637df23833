"""Ingest throughput side by side: the bare loop, ``helpdesk fetch``, django-helpdesk.

For each size N, in one run and against the same Dovecot and aiosmtpd servers:

1. the bare loop (``bench.limit``) reads the N messages of a fresh account
   read-only: FETCH, mail-parser, one INSERT, one acknowledgement over one SMTP
   connection, each;
2. ``helpdesk -c CONFIG fetch``, the real command in its own process
   (``bench.probe``), on a fresh SQLite database and a fresh account holding the
   same N messages: every message is fetched, parsed, decided and committed, moved
   to ``Processed``, and the outbox is then delivered to the SMTP server;
3. django-helpdesk 2.6.1 (``bench.peer``), its ``get_email`` command on its own
   SQLite database and a third account with the same N messages (skipped with
   ``--no-peer``).

Each is timed from its first FETCH to the last mail the SMTP server accepted from
it, and its CPU is the user+sys time of its process (``RUSAGE_CHILDREN``), start-up
included. Mails out are what the SMTP server accepted. Peak RSS of the helpdesk
process is noted too (the memory benchmark uses it).
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from bench import peer
from bench.servers import TimingMTA, append_all, imap_config
from helpdesk.app import App
from helpdesk.store import db
from helpdesk.store.orm import Case, Inbound, Outbox
from tests.servers.dovecot import DovecotAccount, DovecotServer
from tests.servers.helpdesk import base_config, merge, write_config

ROOT = Path(__file__).resolve().parent.parent
PYCACHE = ROOT / "bench" / "out" / "pycache"


def python_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.pop("HELPDESK_CONFIG", None)
    # Compiled once, as an installed package is: not from source in every process.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(PYCACHE)
    return env


def cpu_of(run: Callable[[], Any]) -> tuple[Any, float]:
    """*run*'s result and the user+sys seconds of the child processes it waited for."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = run()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return result, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def settle() -> None:
    """Flush dirty pages before a timed run: on a VM the host's write-back of what the
    previous step wrote (hundreds of MB of APPENDed mail) makes fsync slow for a while."""
    os.sync()
    time.sleep(1.0)


def make_desk(folder: Path, smtp_port: int | None, account: DovecotAccount | None,
              **changes: Any) -> Path:
    """A config (and a migrated SQLite database) in *folder*, as an admin would set it up."""
    folder.mkdir(parents=True, exist_ok=True)
    config = base_config(folder, smtp_port)
    # A throughput measure: the corpus's customers write far faster than a real
    # desk's, and the new-case limit (limits.new_cases_per_sender) would hold most.
    config["limits"] = {"new_cases_per_sender": "1000000/1h"}
    if smtp_port:
        config["outbound"]["smtp"]["timeout"] = "60s"
    if account is not None:
        config["inbound"] = {"imap": imap_config(account)}
    path = write_config(folder, merge(config, changes))
    app = App.from_config(path)
    db.upgrade(app.engine)
    app.close()
    return path


def run_probe(config: Path, out: Path, *command: str, profile: Path | None = None,
              timeout: float = 1800) -> dict[str, Any]:
    """``helpdesk -c CONFIG COMMAND`` under ``bench.probe``; returns its facts."""
    args = [sys.executable, "-m", "bench.probe", str(out)]
    if profile is not None:
        args += ["--profile", str(profile)]
    args += ["--", "-c", str(config), *command]
    log = out.with_suffix(".log")
    with open(log, "wb") as err:
        done = subprocess.run(args, check=False, stdout=subprocess.DEVNULL, stderr=err,
                              env=python_env(),
                              timeout=timeout, cwd=ROOT)
    if done.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"helpdesk {' '.join(command)} exited {done.returncode}:\n{tail}")
    return json.loads(out.read_text())


def run_limit(account: DovecotAccount, folder: str, url: str, out: Path,
              smtp_port: int) -> dict[str, Any]:
    args = [sys.executable, "-m", "bench.limit", str(out), account.host, str(account.server.port),
            account.user, account.password, folder, url, "50", str(smtp_port)]
    subprocess.run(args, check=True, env=python_env(), timeout=1800, cwd=ROOT)
    return json.loads(out.read_text())


def db_counts(config: Path) -> dict[str, int]:
    app = App.from_config(config)
    try:
        with app.sessions() as session:
            return {
                "inbound": session.scalar(select(func.count()).select_from(Inbound)) or 0,
                "failed": session.scalar(select(func.count()).select_from(Inbound)
                                         .where(Inbound.status == "failed")) or 0,
                "cases": session.scalar(select(func.count()).select_from(Case)) or 0,
                "sent": session.scalar(select(func.count()).select_from(Outbox)
                                       .where(Outbox.status == "sent")) or 0,
                "queued": session.scalar(select(func.count()).select_from(Outbox)
                                         .where(Outbox.status != "sent")) or 0,
            }
    finally:
        app.close()


@dataclass
class Contender:
    """One program's run over the N messages."""

    seconds: float  # first FETCH to the last mail the SMTP server accepted from it
    cpu_s: float  # user + sys of its process(es), start-up included
    mails_out: int

    def rate(self, n: int) -> float:
        return n / self.seconds


@dataclass
class IngestRun:
    n: int
    mb: float
    append_s: float
    helpdesk_s: float
    acks: int
    counts: dict[str, int]
    idle_rss_kb: int
    hwm_kb: int
    runs: int = 1  # `helpdesk fetch` runs it took to deliver everything
    profile: dict[str, Any] | None = None
    helpdesk_cpu_s: float = float("nan")
    bare: Contender | None = None
    peer: Contender | None = None
    peer_counts: dict[str, int] | None = None

    @property
    def helpdesk(self) -> Contender:
        return Contender(self.helpdesk_s, self.helpdesk_cpu_s, self.acks)

    @property
    def helpdesk_rate(self) -> float:
        return self.n / self.helpdesk_s

    @property
    def ratio(self) -> float:
        """helpdesk / bare loop, in messages per second."""
        return self.helpdesk_rate / self.bare.rate(self.n) if self.bare else float("nan")

    @property
    def peak_above_idle_mb(self) -> float:
        return (self.hwm_kb - self.idle_rss_kb) / 1024


def measure(server: DovecotServer, handler: TimingMTA, smtp_port: int, raws: list[bytes],
            work: Path, *, profile: bool = False, with_limit: bool = True,
            with_peer: bool = False, label: str | None = None) -> IngestRun:
    n = len(raws)
    name = label or f"ingest-{n}"
    folder = work.resolve() / name
    folder.mkdir(parents=True, exist_ok=True)

    bare = None
    if with_limit:
        account = server.new_account()
        append_all(account, raws)
        handler.reset()
        settle()
        limit, cpu = cpu_of(lambda: run_limit(account, "INBOX", f"sqlite:///{folder / 'limit.db'}",
                                              folder / "limit.json", smtp_port))
        if limit["count"] != n or len(handler.acks) != limit["mails"]:
            raise RuntimeError(f"bare loop: {limit['count']} of {n} messages, "
                               f"{len(handler.acks)} of {limit['mails']} mails accepted")
        bare = Contender(max(a.at for a in handler.acks) - limit["first_fetch"], cpu,
                         limit["mails"])

    account = server.new_account()
    append_s = append_all(account, raws)
    config = make_desk(folder, smtp_port, account)
    handler.reset()
    settle()
    facts, cpu = cpu_of(lambda: run_probe(config, folder / "fetch.json", "fetch",
                                          profile=folder / "profile" if profile else None))
    first_fetch, hwm_kb, runs = facts["first_fetch"], facts["hwm_kb"], 1
    counts = db_counts(config)
    # One `helpdesk fetch` delivers at most 10,000 mails (deliver_all: 100 passes of
    # 100); cron would run it again a minute later. We run it again at once.
    while counts["queued"] and runs < 10:
        runs += 1
        more, more_cpu = cpu_of(lambda: run_probe(config, folder / f"fetch-{runs}.json", "fetch"))
        cpu += more_cpu
        hwm_kb = max(hwm_kb, more["hwm_kb"])
        counts = db_counts(config)
    acks = len(handler.acks)
    if counts["inbound"] != n or counts["failed"] or acks != counts["sent"] or counts["queued"]:
        raise RuntimeError(f"{name}: unexpected result {counts}, {acks} acknowledgements")
    last_ack = max(a.at for a in handler.acks)
    summary = None
    if profile:
        summary = json.loads((folder / "profile.json").read_text())
    run = IngestRun(n=n, mb=sum(map(len, raws)) / 1e6, append_s=append_s,
                    helpdesk_s=last_ack - first_fetch, acks=acks, counts=counts,
                    idle_rss_kb=facts["idle_rss_kb"], hwm_kb=hwm_kb, runs=runs,
                    profile=summary, helpdesk_cpu_s=cpu, bare=bare)
    if with_peer:
        run.peer, run.peer_counts = measure_peer(server, handler, smtp_port, raws, folder / "peer")
    return run


def measure_peer(server: DovecotServer, handler: TimingMTA, smtp_port: int, raws: list[bytes],
                 folder: Path) -> tuple[Contender, dict[str, int]]:
    """django-helpdesk's ``get_email`` over the same messages (bench.peer)."""
    account = server.new_account()
    append_all(account, raws)
    project = peer.make_project(folder, smtp_port, account)
    handler.reset()
    settle()
    facts, cpu = cpu_of(lambda: peer.run_get_email(project, folder / "get_email.json"))
    counts = peer.counts(project)
    if not counts.followups:
        raise RuntimeError(f"django-helpdesk took none of the {len(raws)} messages")
    last = max(a.at for a in handler.acks) if handler.acks else facts["end"]
    # Every message it takes becomes a follow-up (the first one of a new ticket too).
    return (Contender(last - facts["first_fetch"], cpu, len(handler.acks)),
            {"tickets": counts.tickets, "messages": counts.followups})
