"""Run the lifecycle timers that are due: reminders, closures.

Due cases are found by the indexed ``case.due_at`` column, never by scanning
every case. Each case is handled in its own short transaction that re-reads its
due time under the write lock, so a sweep run twice, or two processes sweeping
at once, send each reminder once.
"""
from __future__ import annotations

import logging
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from helpdesk.app import App
from helpdesk.core import lifecycle, timers
from helpdesk.core.decide import Audience
from helpdesk.core.lifecycle import Lifecycle
from helpdesk.core.model import MailKind
from helpdesk.outbound.queue import Extras
from helpdesk.policy import timer_policy
from helpdesk.store.apply import change_status, notify
from helpdesk.store.orm import Case, Event

log = logging.getLogger(__name__)


def due_case_ids(session: Session, now: datetime, limit: int = 500) -> list[int]:
    return list(session.scalars(select(Case.id).where(Case.due_at <= now)
                                .order_by(Case.due_at).limit(limit)))


def sweep(app: App, now: datetime) -> int:
    """Apply every due step as of ``now``; returns how many cases moved."""
    done = 0
    while True:
        with app.sessions.begin() as session:
            ids = due_case_ids(session, now)
        if not ids:
            return done
        for case_id in ids:
            with app.sessions.begin() as session:
                done += run_due_step(session, app, case_id, now)
        if len(ids) < 500:
            return done


def run_due_step(session: Session, app: App, case_id: int, now: datetime,
                 closing_only: bool = False) -> bool:
    """Apply the most advanced due step of one case, inside the caller's transaction.

    ``closing_only``: only a due closure, not a reminder (for a mail that is about to
    answer the case: a reminder sent at that moment would ask for what just arrived).
    """
    query = select(Case).where(Case.id == case_id)
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update()
    case = session.scalar(query)
    if case is None or case.due_at is None or case.due_at > now:
        return False  # not due, or another sweeper got there first
    lc = Lifecycle(app.settings.categories[case.category].lifecycle)
    policy = timer_policy(app.settings)
    step = timers.due_step(lc, case.status, case.clock_started_at, case.reminders_sent, policy, now)
    if step is None:  # stale due time (e.g. config changed): recompute and move on
        case.due_at = timers.next_due_at(lc, case.status, case.clock_started_at,
                                         case.reminders_sent, policy)
        return False
    if closing_only and step.kind != "close":
        return False
    transition = lifecycle.transition(lc, case.status, timers.event_for(step))
    started = case.clock_started_at
    change_status(session, app, case, transition, now, by="timer")
    if step.kind == "reminder":
        case.reminders_sent = step.number
        case.due_at = timers.next_due_at(lc, case.status, case.clock_started_at,
                                         case.reminders_sent, policy)
    reminder = None
    if step.kind == "reminder" and started is not None:
        reminder = {"number": step.number, "total": len(policy.reminders),
                    "closes_at": started + policy.close_after}
    session.add(Event(case_id=case.id, at=now, type="timer",
                      detail={"step": step.kind, "number": step.number}))
    for kind in transition.sends:
        audience = Audience.STAFF if kind in lifecycle.TO_STAFF else Audience.PARTICIPANTS
        notify(session, app, case, MailKind(kind), now, audience, extras=Extras(reminder=reminder))
    case.updated_at = now
    log.info("TIMER case=%s step=%s%s status=%s", case.ref, step.kind,
             step.number or "", case.status)
    return True
