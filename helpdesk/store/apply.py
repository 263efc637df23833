"""Apply a ``Decision`` inside the caller's transaction: rows, events, outbox.

Never commits: the caller's ``with sessions.begin()`` owns the transaction, so a
failure anywhere here leaves no half-made case behind.
"""
from __future__ import annotations

import hashlib
import os
from datetime import datetime
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from helpdesk.app import App
from helpdesk.core import timers
from helpdesk.core.decide import Decision
from helpdesk.core.lifecycle import Lifecycle, Transition
from helpdesk.core.model import Direction, InboundMessage, MailKind
from helpdesk.core.refs import reply_token
from helpdesk.outbound.personal import queue_caseless
from helpdesk.outbound.queue import Extras, RecipientBudget, queue_mail
from helpdesk.store import cases
from helpdesk.store.orm import (
    Attachment,
    Case,
    CaseAddress,
    CaseLink,
    Event,
    HookRun,
    Message,
    Participant,
    Suggestion,
)


def apply_decision(session: Session, app: App, decision: Decision, msg: InboundMessage | None,
                   inbound_id: int | None, now: datetime, actor: str = "") -> Case | None:
    if decision.new_case is not None:
        case = _create_case(session, app, decision, now)
    elif decision.case is not None:
        case = session.get_one(Case, decision.case.id)
    else:
        for mail in decision.mails:  # about no case (`#cases`): to the sender alone
            queue_caseless(session, app, mail, msg, now)
        return None
    if msg is not None and decision.store_as is not None:
        store_message(session, app, case, msg, decision.store_as, inbound_id, now)
    for address, name in decision.add_participants:
        if cases.add_participant(session, case, address, name,
                                 "requester" if address == case.requester else "cc", now):
            if decision.new_case is None:
                _event(session, case, now, "participant_added", {"address": address})
    for address in decision.addresses:
        _record_address(session, case, address)
    for step in decision.transitions:
        change_status(session, app, case, step, now, by=actor or (msg.sender if msg else "system"))
    if decision.assign:
        case.assignee = decision.assign
    for type_, detail in decision.events:
        _event(session, case, now, type_, dict(detail))
    if decision.bounce is not None:
        _mark_undeliverable(session, case, decision, now)
    if decision.drop_held_notice and case.notice_due_at is not None:
        case.notice_due_at = None
        _event(session, case, now, "staff_notice_dropped", {"reason": decision.drop_held_notice})
    extras = _extras(session, decision, msg)
    budget = None if decision.recipient_limit is None else RecipientBudget(decision.recipient_limit)
    for mail in decision.mails:
        queue_mail(session, app, case, mail, now,
                   extras if mail.kind is not MailKind.DUPLICATE else
                   Extras(message=msg, existing_case=case), budget=budget)
    if decision.run_activation:
        session.add(HookRun(case_id=case.id, attempt=1, status="pending"))
    case.updated_at = now
    session.flush()
    return case


def _create_case(session: Session, app: App, decision: Decision, now: datetime) -> Case:
    new = decision.new_case
    assert new is not None
    prefix = app.settings.categories[new.category].prefix
    ref = cases.next_ref(session, prefix)
    secret = app.settings.helpdesk.secret
    key = cases.reply_secret(session, secret.get_secret_value() if secret else None)
    case = Case(ref=ref, category=new.category, status=new.status, subject=new.subject or "(no subject)",
                requester=new.requester, requester_name=new.requester_name,
                requester_domain=new.requester.rpartition("@")[2], reply_token=reply_token(key, ref),
                duplicate_key=new.duplicate_key, created_at=now, updated_at=now, status_since=now,
                reminders_sent=0, opened_by=new.opened_by or new.requester,
                opened_by_domain=(new.opened_by or new.requester).rpartition("@")[2])
    session.add(case)
    session.flush()
    _event(session, case, now, "created", {"category": new.category, "status": new.status,
                                           "requester": new.requester})
    session.add_all(Suggestion(case_id=case.id, rank=rank, slug=s.slug, title=s.title, url=s.url,
                               summary=s.summary, score=s.score)
                    for rank, s in enumerate(new.suggestions, start=1))
    if new.hold_notice:
        case.notice_due_at = now + app.settings.knowledge_base.hold_staff_notice
        _event(session, case, now, "staff_notice_held", {"until": case.notice_due_at.isoformat()})
    if new.linked_to is not None:
        old = session.get_one(Case, new.linked_to.id)
        session.add(CaseLink(case_id=case.id, linked_case_id=old.id, reason=new.link_reason or ""))
        _event(session, case, now, "linked", {"ref": old.ref, "reason": new.link_reason})
        _event(session, old, now, "linked", {"ref": case.ref, "reason": new.link_reason})
    return case


def change_status(session: Session, app: App, case: Case, step: Transition, now: datetime,
                  by: str) -> None:
    lc = Lifecycle(app.settings.categories[case.category].lifecycle)
    if step.status != case.status:
        _event(session, case, now, "status_changed", {"from": case.status, "to": step.status, "by": by})
        case.status, case.status_since = step.status, now
    case.clock_started_at, case.reminders_sent = timers.clock_after(
        step.clock, now, case.clock_started_at, case.reminders_sent)
    case.due_at = timers.next_due_at(lc, case.status, case.clock_started_at, case.reminders_sent,
                                     app.timer_policy)


def store_message(session: Session, app: App, case: Case, msg: InboundMessage, kind: MailKind,
                  inbound_id: int | None, now: datetime) -> Message:
    row = Message(case_id=case.id, direction=str(Direction.IN), kind=str(kind),
                  message_id=msg.message_id or f"sha256:{msg.content_hash}",
                  dedupe_key=msg.message_id or f"sha256:{msg.content_hash}",
                  from_addr=msg.sender, to_addrs=list(msg.to), cc_addrs=list(msg.cc),
                  subject=msg.subject, date=msg.date or now,
                  headers={k: list(v) for k, v in msg.headers.items()},
                  text=msg.text, html=msg.html, inbound_id=inbound_id)
    session.add(row)
    session.flush()
    for type_, detail in msg.parse_events:  # what reading it left out or cut
        _event(session, case, now, type_, dict(detail))
    limit = app.settings.limits.max_attachment_size
    for attachment in msg.attachments:
        if len(attachment.data) > limit:
            _event(session, case, now, "attachment_dropped", {
                "filename": attachment.filename, "size": len(attachment.data), "limit": limit})
            continue
        digest = hashlib.sha256(attachment.data).hexdigest()
        in_db = app.settings.helpdesk.attachment_store == "database"
        if not in_db:
            _write_blob(app.settings.resolve(app.settings.helpdesk.attachments), digest, attachment.data)
        session.add(Attachment(message_id=row.id, filename=attachment.filename,
                               content_type=attachment.content_type, size=len(attachment.data),
                               sha256=digest, data=attachment.data if in_db else None))
    return row


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


def _record_address(session: Session, case: Case, address: str) -> None:
    exists = session.scalar(select(CaseAddress.id).where(CaseAddress.case_id == case.id,
                                                         CaseAddress.address == address))
    if not exists:
        session.add(CaseAddress(case_id=case.id, address=address))
        session.flush()


def _mark_undeliverable(session: Session, case: Case, decision: Decision, now: datetime) -> None:
    assert decision.bounce is not None
    for recipient in decision.bounce.recipients:
        if recipient.permanent:
            changed = session.execute(update(Participant).where(
                Participant.case_id == case.id, Participant.address == recipient.address,
                Participant.undeliverable.is_(False)).values(undeliverable=True)).rowcount
            if changed:
                _event(session, case, now, "participant_undeliverable",
                       {"address": recipient.address, "status": recipient.status})


def _extras(session: Session, decision: Decision, msg: InboundMessage | None) -> Extras:
    old = None
    new = decision.new_case
    if new is not None and new.linked_to is not None and new.link_reason == "reopened":
        old = session.get(Case, new.linked_to.id)  # a stranger's new case never sees the old one
    # Relays go out as our own HTML rendering of the staff text: the staff member's
    # HTML would carry the #command lines and the quoted thread along. A note given on
    # the command line has no author: the helpdesk says it.
    author = (msg.sender, msg.sender_name) if msg is not None else None
    return Extras(message=msg, old_case=old, author=author)


def _event(session: Session, case: Case, now: datetime, type_: str, detail: dict) -> None:
    session.add(Event(case_id=case.id, at=now, type=type_, detail=detail))

