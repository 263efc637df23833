"""Scaling: is the time per message flat in the number of cases already stored?

Fetching 100,000 messages through IMAP does not fit the time budget (the 10,000
run alone takes minutes), so this measures the ingest pipeline itself
(``ingest_raw``: parse, decide, one transaction with the acknowledgement and the
staff notice rendered into the outbox, nothing delivered) on a database that
already holds N cases with their history (``bench.dbfill.fill_history``: request
and acknowledgement messages, participant, address, raw inbound mail, sent
outbox row, rate-limit row, event), for N = 1k, 10k, 100k. The same corpus
messages go through each time; any query that grows with the number of cases
would show as a growing time per message.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from bench.dbfill import fill_history
from bench.ingest import make_desk, settle
from helpdesk.app import App
from helpdesk.inbound.ingest import ingest_raw


@dataclass
class ScalingRun:
    existing: int
    messages: int
    fill_s: float
    ingest_s: float
    median_ms: float
    p95_ms: float

    @property
    def per_message_ms(self) -> float:
        return self.ingest_s * 1000 / self.messages


def measure(folder: Path, existing: int, raws: list[bytes]) -> ScalingRun:
    folder = folder.resolve()
    config = make_desk(folder, None, None)  # a Maildir outbox: nothing is delivered here
    started = time.perf_counter()
    fill_history(folder / "helpdesk.db", existing, datetime.now(UTC))
    fill_s = time.perf_counter() - started
    settle()
    app = App.from_config(config)
    times: list[float] = []
    try:
        started = time.perf_counter()
        for number, raw in enumerate(raws):
            t0 = time.perf_counter()
            outcome = ingest_raw(app, raw, source="bench", source_key=str(number))
            times.append(time.perf_counter() - t0)
            if outcome.quarantined:
                raise RuntimeError(f"message {number} quarantined: {outcome.reason}")
        ingest_s = time.perf_counter() - started
    finally:
        app.close()
    times.sort()
    return ScalingRun(existing=existing, messages=len(raws), fill_s=fill_s, ingest_s=ingest_s,
                      median_ms=statistics.median(times) * 1000,
                      p95_ms=times[int(0.95 * (len(times) - 1))] * 1000)
