"""Run the lifecycle timers that are due: reminders, closures, held staff notices.

Due cases are found by the indexed ``case.due_at`` column, never by scanning
every case. They are handled in chunks, each in one transaction that takes the
chunk's cases with their due time re-checked under the write lock (SQLite's
``BEGIN IMMEDIATE``; on PostgreSQL ``FOR UPDATE SKIP LOCKED``), so a sweep run
twice, or two processes sweeping at once, send each reminder once. A chunk reads
what its mails need with a few grouped queries and writes its rows in bulk
(``ChunkFacts``), and the mails are rendered later by the sender: that is what
makes a thousand due cases a fraction of a second.
"""
from __future__ import annotations

import logging
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from helpdesk.app import App
from helpdesk.core import lifecycle, timers
from helpdesk.core.decide import Audience, Mail
from helpdesk.core.lifecycle import Lifecycle
from helpdesk.core.model import MailKind
from helpdesk.outbound.facts import ChunkFacts, Facts
from helpdesk.outbound.queue import Extras, limit_windows, queue_mail
from helpdesk.store.apply import change_status
from helpdesk.store.orm import Case, Event

log = logging.getLogger(__name__)

HELD_NOTE = ("A new case. Its notice was held while the customer tried the articles we "
             "suggested; they have not said that one of them solved it.")
CHUNK = 200  # due cases per transaction: long enough to amortise, short enough to hold a lock


def due_case_ids(session: Session, now: datetime, limit: int = 500) -> list[int]:
    return list(session.scalars(select(Case.id).where(Case.due_at <= now)
                                .order_by(Case.due_at).limit(limit)))


def sweep(app: App, now: datetime) -> int:
    """Apply every due step as of ``now``; returns how many cases moved."""
    return _sweep_timers(app, now) + send_held_notices(app, now)


def _sweep_timers(app: App, now: datetime) -> int:
    done = 0
    while True:
        with app.sessions.begin() as session:
            query = select(Case).where(Case.due_at <= now).order_by(Case.due_at).limit(CHUNK)
            if _postgresql(session):  # another sweeper's chunk is its own; take the next
                query = query.with_for_update(skip_locked=True)
            cases = list(session.scalars(query))
            if not cases:
                return done
            facts = ChunkFacts(session, [c.id for c in cases], limit_windows(app, now))
            done += sum(_step(session, app, case, now, facts) for case in cases)
            facts.write()
        if len(cases) < CHUNK:
            return done


def send_held_notices(app: App, now: datetime) -> int:
    """Queue the new-case staff notices held for self-service (``hold_staff_notice``)
    whose time has come; the case's ``notice_due_at`` is cleared in the same
    transaction, so each goes once. A case solved first has none left to send."""
    sent = 0
    while True:
        with app.sessions.begin() as session:
            query = (select(Case).where(Case.notice_due_at <= now).order_by(Case.notice_due_at)
                     .limit(CHUNK))
            if _postgresql(session):
                query = query.with_for_update(skip_locked=True)
            cases = list(session.scalars(query))
            if not cases:
                return sent
            facts = ChunkFacts(session, [c.id for c in cases], limit_windows(app, now))
            for case in cases:
                queue_mail(session, app, case, Mail(MailKind.STAFF_NOTICE, Audience.STAFF,
                                                    note=HELD_NOTE), now, Extras(), facts)
                facts.add(Event, case_id=case.id, at=now, type="staff_notice_sent",
                          detail={"held_since": case.created_at.isoformat()})
                case.notice_due_at = None
                log.info("HELD NOTICE case=%s sent", case.ref)
            sent += len(cases)
            facts.write()
        if len(cases) < CHUNK:
            return sent


def run_due_step(session: Session, app: App, case_id: int, now: datetime,
                 closing_only: bool = False) -> bool:
    """Apply the most advanced due step of one case, inside the caller's transaction.

    ``closing_only``: only a due closure, not a reminder (for a mail that is about to
    answer the case: a reminder sent at that moment would ask for what just arrived).
    """
    query = select(Case).where(Case.id == case_id, Case.due_at <= now)
    if _postgresql(session):
        query = query.with_for_update()
    case = session.scalar(query)
    if case is None:
        return False  # not due, or another sweeper got there first
    return _step(session, app, case, now, Facts(session), closing_only)


def _postgresql(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def _step(session: Session, app: App, case: Case, now: datetime, facts: Facts,
          closing_only: bool = False) -> bool:
    """The due step of a case that was found due under the write lock."""
    lc = Lifecycle(app.settings.categories[case.category].lifecycle)
    policy = app.timer_policy
    step = timers.due_step(lc, case.status, case.clock_started_at, case.reminders_sent, policy, now)
    if step is None:  # stale due time (e.g. config changed): recompute and move on
        case.due_at = timers.next_due_at(lc, case.status, case.clock_started_at,
                                         case.reminders_sent, policy)
        return False
    if closing_only and step.kind != "close":
        return False
    transition = lifecycle.transition(lc, case.status, timers.event_for(step))
    started = case.clock_started_at
    change_status(facts, app, case, transition, now, by="timer")
    if step.kind == "reminder":
        case.reminders_sent = step.number
        case.due_at = timers.next_due_at(lc, case.status, case.clock_started_at,
                                         case.reminders_sent, policy)
    reminder = None
    if step.kind == "reminder" and started is not None:
        reminder = {"number": step.number, "total": len(policy.reminders),
                    "closes_at": started + policy.close_after}
    facts.add(Event, case_id=case.id, at=now, type="timer",
              detail={"step": step.kind, "number": step.number})
    for kind in transition.sends:
        audience = Audience.STAFF if kind in lifecycle.TO_STAFF else Audience.PARTICIPANTS
        queue_mail(session, app, case, Mail(MailKind(kind), audience), now,
                   Extras(reminder=reminder), facts)
    case.updated_at = now
    log.info("TIMER case=%s step=%s%s status=%s", case.ref, step.kind,
             step.number or "", case.status)
    return True
