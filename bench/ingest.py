"""Ingest throughput: ``helpdesk fetch`` against the limit of this machine.

For each size N: a fresh Dovecot account gets the first N messages of the corpus
(APPEND), then

1. the limit (``bench.limit``) reads them read-only: FETCH, mail-parser, one INSERT
   each;
2. ``helpdesk -c CONFIG fetch``, the real command in its own process
   (``bench.probe``), on a fresh SQLite database: every message is fetched,
   parsed, decided and committed, moved to ``Processed``, and the outbox is then
   delivered to a local aiosmtpd server. Timed from its first FETCH to the last
   acknowledgement the SMTP server accepted.

Both run with the same corpus, server, batch size and SQLite settings. Peak RSS of
the helpdesk process is noted too (the memory benchmark uses it).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from bench.servers import TimingMTA, append_all, imap_config
from helpdesk.app import App
from helpdesk.store import db
from helpdesk.store.orm import Case, Inbound, Outbox
from tests.servers.dovecot import DovecotAccount, DovecotServer
from tests.servers.helpdesk import base_config, merge, write_config

ROOT = Path(__file__).resolve().parent.parent


def python_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.pop("HELPDESK_CONFIG", None)
    return env


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


def run_limit(account: DovecotAccount, folder: str, url: str, out: Path) -> dict[str, Any]:
    args = [sys.executable, "-m", "bench.limit", str(out), account.host, str(account.server.port),
            account.user, account.password, folder, url, "50"]
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
class IngestRun:
    n: int
    mb: float
    append_s: float
    limit_s: float
    helpdesk_s: float
    acks: int
    counts: dict[str, int]
    idle_rss_kb: int
    hwm_kb: int
    runs: int = 1  # `helpdesk fetch` runs it took to deliver everything
    profile: dict[str, Any] | None = None

    @property
    def limit_rate(self) -> float:
        return self.n / self.limit_s

    @property
    def helpdesk_rate(self) -> float:
        return self.n / self.helpdesk_s

    @property
    def ratio(self) -> float:
        return self.helpdesk_rate / self.limit_rate

    @property
    def peak_above_idle_mb(self) -> float:
        return (self.hwm_kb - self.idle_rss_kb) / 1024


def measure(server: DovecotServer, handler: TimingMTA, smtp_port: int, raws: list[bytes],
            work: Path, *, profile: bool = False, with_limit: bool = True,
            label: str | None = None) -> IngestRun:
    n = len(raws)
    name = label or f"ingest-{n}"
    folder = work.resolve() / name
    folder.mkdir(parents=True, exist_ok=True)
    account = server.new_account()
    append_s = append_all(account, raws)

    limit_s = float("nan")
    if with_limit:
        settle()
        limit = run_limit(account, "INBOX", f"sqlite:///{folder / 'limit.db'}",
                          folder / "limit.json")
        if limit["count"] != n:
            raise RuntimeError(f"limit run read {limit['count']} of {n} messages")
        limit_s = limit["end"] - limit["first_fetch"]

    config = make_desk(folder, smtp_port, account)
    handler.reset()
    settle()
    facts = run_probe(config, folder / "fetch.json", "fetch",
                      profile=folder / "profile" if profile else None)
    first_fetch, hwm_kb, runs = facts["first_fetch"], facts["hwm_kb"], 1
    counts = db_counts(config)
    # One `helpdesk fetch` delivers at most 10,000 mails (deliver_all: 100 passes of
    # 100); cron would run it again a minute later. We run it again at once.
    while counts["queued"] and runs < 10:
        runs += 1
        more = run_probe(config, folder / f"fetch-{runs}.json", "fetch")
        hwm_kb = max(hwm_kb, more["hwm_kb"])
        counts = db_counts(config)
    acks = len(handler.acks)
    if counts["inbound"] != n or counts["failed"] or acks != counts["sent"] or counts["queued"]:
        raise RuntimeError(f"{name}: unexpected result {counts}, {acks} acknowledgements")
    last_ack = max(a.at for a in handler.acks)
    summary = None
    if profile:
        summary = json.loads((folder / "profile.json").read_text())
    return IngestRun(n=n, mb=sum(map(len, raws)) / 1e6, append_s=append_s,
                     limit_s=limit_s,
                     helpdesk_s=last_ack - first_fetch, acks=acks, counts=counts,
                     idle_rss_kb=facts["idle_rss_kb"], hwm_kb=hwm_kb, runs=runs,
                     profile=summary)

