"""Memory: the peak resident set of ``helpdesk fetch`` over its idle size.

- one large message (just under ``limits.max_message_size``, 25 MB): appended to
  Dovecot, then ``helpdesk -c CONFIG fetch`` in its own process (``bench.probe``):
  ``VmHWM`` at the end minus ``VmRSS`` just before the first FETCH (started,
  configured, logged in: the idle process). Target: under 3x the message.
- many messages: the same two numbers from the 1,000 and 10,000 message ingest
  runs (``bench.ingest``): the peak must not grow with the number of messages.
- the warm-up: the same for 20 small messages. A cold process grows by a fixed
  amount the first time it does anything (SQLAlchemy's statement cache, compiled
  templates, the email package's header classes, SQLite's page cache); that part
  does not depend on the mail.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bench.ingest import db_counts, make_desk, run_probe
from bench.servers import TimingMTA, append_all
from tests.servers.dovecot import DovecotServer


@dataclass
class LargeRun:
    size: int
    idle_rss_kb: int
    hwm_kb: int

    @property
    def above_idle_mb(self) -> float:
        return (self.hwm_kb - self.idle_rss_kb) / 1024

    @property
    def ratio(self) -> float:
        return (self.hwm_kb - self.idle_rss_kb) * 1024 / self.size


def measure_fetch(server: DovecotServer, handler: TimingMTA, smtp_port: int, raws: list[bytes],
                  folder: Path) -> LargeRun:
    """``helpdesk fetch`` of *raws*; ``size`` is the largest of them."""
    folder = folder.resolve()
    folder.mkdir(parents=True, exist_ok=True)
    account = server.new_account()
    append_all(account, raws)
    config = make_desk(folder, smtp_port, account)
    handler.reset()
    facts = run_probe(config, folder / "fetch.json", "fetch")
    counts = db_counts(config)
    if counts["inbound"] != len(raws) or counts["failed"] or counts["queued"]:
        raise RuntimeError(f"the messages were not all ingested: {counts}")
    return LargeRun(size=max(map(len, raws)), idle_rss_kb=facts["idle_rss_kb"],
                    hwm_kb=facts["hwm_kb"])
