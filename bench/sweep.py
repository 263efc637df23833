"""Sweep cost: one ``sweep(app, now)`` over a big table with a few due cases.

The table is filled by ``bench.dbfill.fill_for_sweep`` (bulk SQL). We time the
whole ``sweep`` (the due cases in chunks of ``helpdesk.sweep.CHUNK``, one
transaction each: the steps applied, the reminders queued unrendered and
committed), and separately the query that finds the due cases. The rendering the
sweep leaves to the sender is timed after it: the sender's pass over the queued
reminders, with a transport that discards what it is given. The SQL
``sweep`` actually ran is captured, and its ``EXPLAIN QUERY PLAN`` printed: it
must search ``ix_case_due_at``, never scan ``case``. "Touched only the due ones"
is checked by counting the cases whose ``updated_at`` moved and the statements
per due case.

The same sweep over a small table with the same number of due cases shows that
the cost does not depend on the size of the table.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import event, func, select

from bench.dbfill import fill_for_sweep
from bench.ingest import make_desk, settle
from bench.profile import summarise
from helpdesk.app import App
from helpdesk.clock import FixedClock
from helpdesk.outbound.render import outbox_renderer
from helpdesk.outbound.sender import send_due
from helpdesk.store.orm import Case, Outbox
from helpdesk.sweep import due_case_ids, sweep

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


@dataclass
class SweepRun:
    total: int
    due: int
    fill_s: float
    query_ms: float
    sweep_s: float
    moved: int
    changed_cases: int
    reminders: int
    statements: int
    render_s: float = 0.0  # the sender afterwards: claim, render, "send", record
    rendered: int = 0
    plan: list[str] = field(default_factory=list)
    due_sql: str = ""
    profile: dict[str, Any] | None = None

    @property
    def per_due_ms(self) -> float:
        return self.sweep_s * 1000 / max(1, self.moved)


class _Discard:
    """A transport that accepts everything and sends nothing."""

    def send(self, mail_from: str, recipients: Any, raw: bytes) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        pass


def measure(folder: Path, total: int, due: int, *, profile: bool = False) -> SweepRun:
    folder = folder.resolve()
    config = make_desk(folder, None, None)
    started = time.perf_counter()
    fill_for_sweep(folder / "helpdesk.db", total, due, NOW)
    fill_s = time.perf_counter() - started
    settle()

    app = App.from_config(config, clock=FixedClock(NOW))
    summary = None
    try:
        with app.sessions() as session:  # warm the connection, as a running daemon has it
            session.scalar(select(func.count()).select_from(Outbox))
        with app.sessions() as session:
            started = time.perf_counter()
            found = due_case_ids(session, NOW)
            query_ms = (time.perf_counter() - started) * 1000
        assert found, "no due case found"

        statements: list[tuple[str, Any]] = []

        def note(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any,
                 executemany: bool) -> None:
            statements.append((statement, parameters))

        event.listen(app.engine, "before_cursor_execute", note)
        profiler = None
        if profile:
            from pyinstrument import Profiler
            profiler = Profiler(interval=0.001)
            profiler.start()
        started = time.perf_counter()
        moved = sweep(app, NOW)
        sweep_s = time.perf_counter() - started
        if profiler is not None:
            profiler.stop()
            (folder / "profile.txt").write_text(profiler.output_text(color=False))
            summary = summarise(profiler.last_session)
        event.remove(app.engine, "before_cursor_execute", note)

        due_sql = next((s, p) for s, p in statements if "due_at <=" in s)
        with app.engine.connect() as connection:
            plan = [row[-1] for row in connection.exec_driver_sql(
                "EXPLAIN QUERY PLAN " + due_sql[0], due_sql[1])]
        with app.sessions() as session:
            changed = session.scalar(select(func.count()).select_from(Case)
                                     .where(Case.updated_at == NOW)) or 0
            reminders = session.scalar(select(func.count()).select_from(Outbox)
                                       .where(Outbox.kind == "reminder")) or 0
            left = len(due_case_ids(session, NOW))
        if left:
            raise RuntimeError(f"sweep left {left} due cases")
        render_s, rendered = _render_queued(app)
    finally:
        app.close()
    return SweepRun(total=total, due=due, fill_s=fill_s, query_ms=query_ms, sweep_s=sweep_s,
                    moved=moved, changed_cases=changed, reminders=reminders,
                    render_s=render_s, rendered=rendered,
                    statements=len(statements), plan=plan, due_sql=" ".join(due_sql[0].split()),
                    profile=summary)



def _render_queued(app: App) -> tuple[float, int]:
    """The sender's passes over what the sweep queued: seconds, mails."""
    render = outbox_renderer(app)
    started = time.perf_counter()
    sent = 0
    while done := send_due(app.sessions, app.clock, _Discard(), limit=1000, render=render,
                          reads=app.reads).sent:
        sent += done
    return time.perf_counter() - started, sent
