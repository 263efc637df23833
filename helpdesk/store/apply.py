"""Apply a ``Decision`` inside the caller's transaction: rows, events, outbox.

Never commits: the caller owns the transaction, so a failure anywhere here leaves
no half-made case behind. It runs on a Core connection (``db``), as the hot path of
every inbound mail: the case is a ``CaseRecord`` written back once with what
changed, and the other rows are held in ``CaseFacts`` and inserted with one
statement per table at the end. The web and the commands call it through
``apply_in_session``.
"""
from __future__ import annotations

import hashlib
import os
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import insert
from sqlalchemy.orm import Session

from helpdesk.app import App
from helpdesk.core import timers
from helpdesk.core.decide import Decision
from helpdesk.core.lifecycle import Lifecycle, Transition
from helpdesk.core.model import Direction, InboundMessage, MailKind
from helpdesk.core.refs import reply_token
from helpdesk.outbound.facts import CaseFacts
from helpdesk.outbound.personal import queue_caseless
from helpdesk.outbound.queue import Extras, RecipientBudget, limit_windows, queue_mail
from helpdesk.store import cases, tables
from helpdesk.store.cases import CaseRecord
from helpdesk.store.db import orm_session
from helpdesk.store.orm import Attachment, CaseLink, Event, HookRun, Suggestion

if TYPE_CHECKING:
    from sqlalchemy import Connection

    from helpdesk.outbound.facts import ChunkFacts, Facts
    from helpdesk.store.orm import Case


def apply_decision(db: Connection, app: App, decision: Decision, msg: InboundMessage | None,
                   inbound_id: int | None, now: datetime, actor: str = "") -> CaseRecord | None:
    windows = limit_windows(app, now)
    if decision.new_case is not None:
        case = _create_case(db, app, decision, now)
        facts = CaseFacts(db, case.id, windows, new=True)
        _created(facts, app, decision, case, now)
    elif decision.case is not None:
        case = cases.load(db, decision.case.id)
        facts = CaseFacts(db, case.id, windows)
    else:
        with orm_session(db) as session:  # about no case (`#cases`): to the sender alone
            for mail in decision.mails:
                queue_caseless(session, app, mail, msg, now)
        return None
    if msg is not None and decision.store_as is not None:
        store_message(db, app, case, msg, decision.store_as, inbound_id, now, facts)
    for address, name in decision.add_participants:
        if facts.add_participant(address, name, "requester" if address == case.requester
                                 else "cc", now):
            if decision.new_case is None:
                _event(facts, case, now, "participant_added", {"address": address})
    for address in decision.addresses:
        facts.add_address(address)
    for step in decision.transitions:
        change_status(facts, app, case, step, now, by=actor or (msg.sender if msg else "system"))
    if decision.assign:
        case.assignee = decision.assign
    for type_, detail in decision.events:
        _event(facts, case, now, type_, dict(detail))
    if decision.bounce is not None:
        _mark_undeliverable(facts, case, decision, now)
    if decision.drop_held_notice and case.notice_due_at is not None:
        case.notice_due_at = None
        _event(facts, case, now, "staff_notice_dropped", {"reason": decision.drop_held_notice})
    extras = _extras(decision, msg)
    budget = None if decision.recipient_limit is None else RecipientBudget(decision.recipient_limit)
    for mail in decision.mails:
        queue_mail(db, app, case, mail, now,
                   extras if mail.kind is not MailKind.DUPLICATE else
                   Extras(message=msg, existing_case=case), facts, budget=budget)
    if decision.run_activation:
        facts.add(HookRun, case_id=case.id, attempt=1, status="pending")
    case.updated_at = now
    cases.save(db, case)
    facts.write()
    return case


def apply_in_session(session: Session, app: App, decision: Decision, msg: InboundMessage | None,
                     now: datetime, actor: str = "") -> CaseRecord | None:
    """``apply_decision`` in an ORM session's transaction (the web, the commands): what
    the session holds goes in first, and it reads the case afresh afterwards."""
    session.flush()
    case = apply_decision(session.connection(), app, decision, msg, None, now, actor)
    session.expire_all()
    return case


def _create_case(db: Connection, app: App, decision: Decision, now: datetime) -> CaseRecord:
    new = decision.new_case
    assert new is not None
    ref = cases.next_ref(db, app.settings.categories[new.category].prefix)
    opened_by = new.opened_by or new.requester
    return cases.create(
        db, ref=ref, category=new.category, status=new.status,
        subject=new.subject or "(no subject)", requester=new.requester,
        requester_name=new.requester_name, requester_domain=new.requester.rpartition("@")[2],
        reply_token=reply_token(cases.secret_key(db, app), ref), duplicate_key=new.duplicate_key,
        assignee=None, opened_by=opened_by, opened_by_domain=opened_by.rpartition("@")[2],
        created_at=now, updated_at=now, status_since=now, clock_started_at=None,
        reminders_sent=0, due_at=None,
        notice_due_at=now + app.settings.knowledge_base.hold_staff_notice if new.hold_notice
        else None)


def _created(facts: CaseFacts, app: App, decision: Decision, case: CaseRecord,
             now: datetime) -> None:
    """The rows that come with a new case: its events, suggestions and link."""
    new = decision.new_case
    assert new is not None
    _event(facts, case, now, "created", {"category": new.category, "status": new.status,
                                         "requester": new.requester})
    for rank, s in enumerate(new.suggestions, start=1):
        facts.add(Suggestion, case_id=case.id, rank=rank, slug=s.slug, title=s.title, url=s.url,
                  summary=s.summary, score=s.score)
    if case.notice_due_at is not None:
        _event(facts, case, now, "staff_notice_held", {"until": case.notice_due_at.isoformat()})
    if new.linked_to is not None:
        old = new.linked_to
        facts.add(CaseLink, case_id=case.id, linked_case_id=old.id, reason=new.link_reason or "")
        _event(facts, case, now, "linked", {"ref": old.ref, "reason": new.link_reason})
        facts.add(Event, case_id=old.id, at=now, type="linked",
                  detail={"ref": case.ref, "reason": new.link_reason})


def change_status(facts: CaseFacts | ChunkFacts | Facts, app: App, case: CaseRecord | Case,
                  step: Transition, now: datetime, by: str) -> None:
    lc = Lifecycle(app.settings.categories[case.category].lifecycle)
    if step.status != case.status:
        _event(facts, case, now, "status_changed", {"from": case.status, "to": step.status,
                                                    "by": by})
        case.status, case.status_since = step.status, now
    case.clock_started_at, case.reminders_sent = timers.clock_after(
        step.clock, now, case.clock_started_at, case.reminders_sent)
    case.due_at = timers.next_due_at(lc, case.status, case.clock_started_at, case.reminders_sent,
                                     app.timer_policy)


_INSERT_MESSAGE = insert(tables.message)


def store_message(db: Connection, app: App, case: CaseRecord, msg: InboundMessage,
                  kind: MailKind, inbound_id: int | None, now: datetime,
                  facts: CaseFacts) -> int:
    """Store an inbound mail on its case (at once: its attachments refer to it); its id."""
    key = msg.dedupe_key
    message_id = db.execute(_INSERT_MESSAGE, {
        "case_id": case.id, "direction": str(Direction.IN), "kind": str(kind), "message_id": key,
        "dedupe_key": key, "from_addr": msg.sender, "to_addrs": list(msg.to),
        "cc_addrs": list(msg.cc), "subject": msg.subject, "date": msg.date or now,
        "headers": {k: list(v) for k, v in msg.headers.items()},
        "text": msg.text, "html": msg.html, "inbound_id": inbound_id}).inserted_primary_key[0]
    facts.saw_message(str(Direction.IN), str(kind), key)
    for type_, detail in msg.parse_events:  # what reading it left out or cut
        _event(facts, case, now, type_, dict(detail))
    limit = app.settings.limits.max_attachment_size
    for attachment in msg.attachments:
        if len(attachment.data) > limit:
            _event(facts, case, now, "attachment_dropped", {
                "filename": attachment.filename, "size": len(attachment.data), "limit": limit})
            continue
        digest = hashlib.sha256(attachment.data).hexdigest()
        in_db = app.settings.helpdesk.attachment_store == "database"
        if not in_db:
            _write_blob(app.settings.resolve(app.settings.helpdesk.attachments), digest, attachment.data)
        facts.add(Attachment, message_id=message_id, filename=attachment.filename,
                  content_type=attachment.content_type, size=len(attachment.data),
                  sha256=digest, data=attachment.data if in_db else None)
    return message_id


def _write_blob(root: Path, digest: str, data: bytes) -> None:
    """Content-addressed: the name is the hash, so the same file is stored once and a
    crafted file name can never choose where it lands. Readable by the owner only
    (folders 0700, files 0600), never executable."""
    path = root / digest[:2] / digest
    if path.exists():
        return
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.parent.mkdir(mode=0o700, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
        f.write(data)
    tmp.replace(path)


def _mark_undeliverable(facts: CaseFacts, case: CaseRecord, decision: Decision,
                        now: datetime) -> None:
    assert decision.bounce is not None
    for recipient in decision.bounce.recipients:
        if recipient.permanent and facts.mark_undeliverable(recipient.address):
            _event(facts, case, now, "participant_undeliverable",
                   {"address": recipient.address, "status": recipient.status})


def _extras(decision: Decision, msg: InboundMessage | None) -> Extras:
    old = None
    new = decision.new_case
    if new is not None and new.linked_to is not None and new.link_reason == "reopened":
        old = new.linked_to  # a stranger's new case never sees the old one
    # Relays go out as our own HTML rendering of the staff text: the staff member's
    # HTML would carry the #command lines and the quoted thread along. A note given on
    # the command line has no author: the helpdesk says it.
    author = (msg.sender, msg.sender_name) if msg is not None else None
    return Extras(message=msg, old_case=old, author=author)


def _event(facts: CaseFacts | ChunkFacts | Facts, case: CaseRecord | Case, now: datetime,
           type_: str, detail: dict[str, Any]) -> None:
    facts.add(Event, case_id=case.id, at=now, type=type_, detail=detail)
